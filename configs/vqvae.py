"""Plain time-frequency VQ-VAE (TimeVQVAE stage 1) and its MaskGIT prior."""

from tsgen_jax.config import base_config


def get_config():
  return base_config()
