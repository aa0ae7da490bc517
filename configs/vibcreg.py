"""VIbCReg VQ-VAE (NC-VQVAE) and its MaskGIT prior: the README's main command."""

from tsgen_jax.config import base_config


def get_config():
  c = base_config()
  c.stage1.ssl.method = "vibcreg"
  c.stage1.ssl.weight = 0.01
  return c
