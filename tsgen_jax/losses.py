"""Self-supervised losses on projected embeddings: Barlow Twins and VIbCReg.

All functions take two (N, D) embedding batches (two augmented views of the same N series),
compute in float32 whatever the input dtype (matmuls at HIGHEST precision so accelerators do
not fall back to reduced-precision passes), and return float32 scalars.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

Array = jax.Array
_HIGHEST = jax.lax.Precision.HIGHEST


def _offdiag_mask(d: int) -> Array:
  """(D, D) float mask, 1 off the diagonal and 0 on it."""
  return 1.0 - jnp.eye(d, dtype=jnp.float32)


def barlow_twins_loss_terms(z1: Array, z2: Array, lambda_offdiag: float = 5e-3,
                            eps: float = 1e-5) -> dict[str, Array]:
  """Barlow Twins loss and its two parts.

  Each column is standardised over the batch, ``(z - mean) / sqrt(var_biased + eps)``; with
  the cross-correlation ``C = z1n^T z2n / N`` (D, D) the loss is
  ``sum_i (1 - C_ii)^2 + lambda_offdiag * sum_{i != j} C_ij^2`` (not divided by D; NC-VQVAE
  divides it by D, which callers can do with the SSL weight).

  Args:
    z1, z2: (N, D) embeddings of the two views.
    lambda_offdiag: weight of the redundancy-reduction (off-diagonal) term.
    eps: added to the biased variance before the square root.

  Returns:
    dict of float32 scalars: 'loss', 'on_diag' = sum_i (1 - C_ii)^2 and
    'off_diag' = sum_{i != j} C_ij^2 (unweighted).
  """
  z1 = z1.astype(jnp.float32)
  z2 = z2.astype(jnp.float32)
  n, d = z1.shape

  def standardise(z):
    return (z - z.mean(0)) * jax.lax.rsqrt(z.var(0) + eps)

  c = jnp.matmul(standardise(z1).T, standardise(z2), precision=_HIGHEST) / n
  on_diag = jnp.sum((1.0 - jnp.diagonal(c)) ** 2)
  off_diag = jnp.sum((c * _offdiag_mask(d)) ** 2)
  return {"loss": on_diag + lambda_offdiag * off_diag, "on_diag": on_diag,
          "off_diag": off_diag}


def barlow_twins_loss(z1: Array, z2: Array, lambda_offdiag: float = 5e-3) -> Array:
  """Barlow Twins loss of two (N, D) embedding batches -> float32 scalar.

  See :func:`barlow_twins_loss_terms` for the definition.
  """
  return barlow_twins_loss_terms(z1, z2, lambda_offdiag)["loss"]


def vibcreg_variance_term(z: Array) -> Array:
  """mean_j relu(1 - sqrt(Var_j(z) + 1e-4)), unbiased variance over the batch.

  Args:
    z: (N, D) embeddings, N >= 2.

  Returns:
    float32 scalar.
  """
  z = z.astype(jnp.float32)
  std = jnp.sqrt(z.var(0, ddof=1) + 1e-4)
  return jnp.mean(jax.nn.relu(1.0 - std))


def vibcreg_covariance_term(z: Array) -> Array:
  """Mean squared off-diagonal correlation, as in VIbCReg.

  Columns are centred over the batch and divided by their L2 norm (floored at 1e-12, with a
  finite gradient for a constant column); ``C = z^T z`` (D, D) with the diagonal zeroed;
  returns ``mean(C^2)`` over all D^2 entries.

  Args:
    z: (N, D) embeddings.

  Returns:
    float32 scalar.
  """
  z = z.astype(jnp.float32)
  zc = z - z.mean(0)
  # sqrt(max(|z|^2, 1e-24)) == max(|z|, 1e-12) but its gradient stays finite at 0.
  norm = jnp.sqrt(jnp.maximum(jnp.sum(zc * zc, axis=0), 1e-24))
  zn = zc / norm
  c = jnp.matmul(zn.T, zn, precision=_HIGHEST) * _offdiag_mask(z.shape[1])
  return jnp.mean(c ** 2)


def vibcreg_loss_terms(z1: Array, z2: Array, lam: float = 25.0, mu: float = 25.0,
                       nu: float = 100.0) -> dict[str, Array]:
  """VIbCReg loss and its parts.

  ``loss = lam * mean((z1 - z2)^2) + mu * (v(z1) + v(z2)) + nu * (c(z1) + c(z2))`` with v
  :func:`vibcreg_variance_term` and c :func:`vibcreg_covariance_term`.

  Args:
    z1, z2: (N, D) embeddings of the two views, N >= 2.
    lam, mu, nu: weights of the invariance, variance and covariance terms.

  Returns:
    dict of float32 scalars: 'loss', and the unweighted 'sim' = mean((z1 - z2)^2),
    'var' = v(z1) + v(z2), 'cov' = c(z1) + c(z2).
  """
  z1 = z1.astype(jnp.float32)
  z2 = z2.astype(jnp.float32)
  sim = jnp.mean((z1 - z2) ** 2)
  var = vibcreg_variance_term(z1) + vibcreg_variance_term(z2)
  cov = vibcreg_covariance_term(z1) + vibcreg_covariance_term(z2)
  return {"loss": lam * sim + mu * var + nu * cov, "sim": sim, "var": var, "cov": cov}


def vibcreg_loss(z1: Array, z2: Array, lam: float = 25.0, mu: float = 25.0,
                 nu: float = 100.0) -> Array:
  """VIbCReg loss of two (N, D) embedding batches -> float32 scalar.

  See :func:`vibcreg_loss_terms` for the definition.
  """
  return vibcreg_loss_terms(z1, z2, lam, mu, nu)["loss"]
