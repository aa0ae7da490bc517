"""Stage-1 model: the VQ-VAE, plus (optionally) a projector for two augmented views.

One module serves all three variants: ``ssl_method='none'`` is the plain VQ-VAE;
'barlowtwins' and 'vibcreg' add a projector (with IterNorm for VIbCReg) on the pooled
continuous latents of the two views.
"""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax.numpy as jnp

from tsgen_jax.models.vqvae import VQVAE
from tsgen_jax.models.vqvae import from_config as vqvae_from_config

SSL_METHODS = ("none", "barlowtwins", "vibcreg")


class Stage1Model(nn.Module):
  """VQ-VAE with an optional SSL projector head.

  Attributes:
    vqvae: the tokenizer.
    ssl_method: one of SSL_METHODS.
    proj_dim, pooling, iternorm_groups, iternorm_iters: projector settings.
  """
  vqvae: VQVAE
  ssl_method: str = "none"
  proj_dim: int = 4096
  pooling: str = "avg+max"
  iternorm_groups: int = 64
  iternorm_iters: int = 5
  aug_recon: bool = False
  dtype: Any = jnp.float32

  def setup(self):
    if self.ssl_method != "none":
      from tsgen_jax.models.projector import Projector
      self.projector = Projector(hidden_dim=self.proj_dim, out_dim=self.proj_dim,
                                 iternorm=self.ssl_method == "vibcreg",
                                 iternorm_groups=self.iternorm_groups,
                                 iternorm_iters=self.iternorm_iters, dtype=self.dtype)

  def pool(self, z):
    """{branch: (B, H, W, D)} continuous latents -> (B, P) pooled over all branches."""
    from tsgen_jax.models.projector import pool_latent
    return jnp.concatenate([pool_latent(z[n], self.pooling) for n in self.vqvae.branch_names],
                           axis=-1)

  def pooled(self, x, train: bool):
    """Pooled continuous latent of x (B, C, L): (B, P) over all branches."""
    return self.pool(self.vqvae.encode(x, train))

  def __call__(self, x, x1=None, x2=None, train: bool = False):
    """x, x1, x2 (B, C, L): the series and its two views (views only for SSL).

    Returns the VQ-VAE outputs (see VQVAE.__call__), plus those of :meth:`ssl_views` when
    the model has a projector and views are given.
    """
    out = self.vqvae(x, train)
    if self.ssl_method != "none" and x1 is not None:
      out.update(self.ssl_views(x1, x2, train))
    return out

  def ssl_views(self, x1, x2, train: bool = False):
    """The SSL branch for views x1, x2 (B, C, L): ``proj1``/``proj2`` (B, proj_dim), and
    ``aug/x_hat``, ``aug/s_hat``, ``aug/s`` and the view's VQ losses when reconstructing x1."""
    out = {}
    if self.aug_recon:
      # The view's full VQ-VAE pass also gives its continuous latent: one encoder pass of
      # x1, not two (and one update of the encoder's BatchNorm statistics with it).
      aug = self.vqvae(x1, train)
      out["aug/x_hat"], out["aug/s_hat"], out["aug/s"] = aug["x_hat"], aug["s_hat"], aug["s"]
      for n in self.vqvae.branch_names:
        out[f"aug/{n}/commit_loss"] = aug[f"{n}/commit_loss"]
        out[f"aug/{n}/codebook_loss"] = aug[f"{n}/codebook_loss"]
      p1 = self.pool({n: aug[f"{n}/z_e"] for n in self.vqvae.branch_names})
    else:
      p1 = self.pooled(x1, train)
    p2 = self.pooled(x2, train)
    # Both views through the projector at once (BatchNorm/IterNorm statistics per view):
    # the same result as two calls, with Dense layers twice as tall.
    proj = self.projector(jnp.concatenate([p1, p2], axis=0), train, num_views=2)
    out["proj1"], out["proj2"] = proj[:x1.shape[0]], proj[x1.shape[0]:]
    return out

  # Thin wrappers so callers can use ``model.apply(vars, ..., method=...)``.
  def encode(self, x, train: bool = False):
    return self.vqvae.encode(x, train)

  def tokenize(self, x):
    return self.vqvae.tokenize(x)

  def decode_tokens(self, tokens):
    return self.vqvae.decode_tokens(tokens)

  def codebooks(self):
    return self.vqvae.codebooks()

  def quantize_latents(self, z):
    """{branch: (B, H, W, D)} continuous latents -> same-shaped nearest code vectors."""
    return {n: self.vqvae.branches[n].vq(z[n], False)["z_q"] for n in z}


def from_config(cfg, num_channels: int, length: int) -> Stage1Model:
  """The stage-1 model a full config describes, for (C, L) series."""
  ssl = cfg.stage1.ssl
  if ssl.method not in SSL_METHODS:
    from tsgen_jax.errors import ConfigError
    raise ConfigError(f"stage1.ssl.method={ssl.method!r}; expected one of {list(SSL_METHODS)}")
  vqvae = vqvae_from_config(cfg, num_channels, length)
  return Stage1Model(vqvae=vqvae, ssl_method=ssl.method, proj_dim=ssl.proj_dim,
                     pooling=ssl.pooling, iternorm_groups=ssl.iternorm_groups,
                     iternorm_iters=ssl.iternorm_iters,
                     aug_recon=ssl.method != "none" and ssl.aug_recon_weight > 0,
                     dtype=vqvae.dtype)
