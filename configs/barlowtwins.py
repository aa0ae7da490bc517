"""Barlow Twins VQ-VAE (NC-VQVAE) and its MaskGIT prior."""

from tsgen_jax.config import base_config


def get_config():
  c = base_config()
  c.stage1.ssl.method = "barlowtwins"
  c.stage1.ssl.weight = 1.0
  return c
