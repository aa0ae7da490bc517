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


def _cross_frobenius_sq(a: Array, b: Array) -> Array:
  """``||a^T b||_F^2`` for a, b (N, D), without forming the (D, D) product when N < D.

  ``||a^T b||_F^2 = tr(b^T a a^T b) = sum((a a^T) * (b b^T))``: two (N, N) Gram matrices
  (2 N^2 D flops each) instead of one (D, D) product (2 N D^2 flops): 32x less work for the
  SSL defaults (N = 128, D = 4096), and likewise for the backward pass.
  """
  n, d = a.shape
  if n < d:
    ga = jnp.matmul(a, a.T, precision=_HIGHEST)
    gb = ga if b is a else jnp.matmul(b, b.T, precision=_HIGHEST)
    return jnp.sum(ga * gb)
  return jnp.sum(jnp.matmul(a.T, b, precision=_HIGHEST) ** 2)


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

  z1n, z2n = standardise(z1), standardise(z2)
  # C = z1n^T z2n / N is (D, D); only its diagonal and its squared Frobenius norm are needed.
  diag = jnp.sum(z1n * z2n, axis=0) / n
  on_diag = jnp.sum((1.0 - diag) ** 2)
  off_diag = _cross_frobenius_sq(z1n, z2n) / (n * n) - jnp.sum(diag ** 2)
  del d
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
  zc = z - jnp.mean(z, axis=0)
  std = jnp.sqrt(jnp.sum(zc * zc, axis=0) / (z.shape[0] - 1) + 1e-4)
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
  # mean over the D^2 entries of (zn^T zn with a zero diagonal)^2, via the (N, N) Gram matrix.
  d = z.shape[1]
  diag = jnp.sum(zn * zn, axis=0)
  return (_cross_frobenius_sq(zn, zn) - jnp.sum(diag ** 2)) / (d * d)


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
