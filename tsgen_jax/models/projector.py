"""Pooling of the stage-1 latent and the SSL projector head (with optional IterNorm).

* :func:`pool_latent`: global average / max pooling of an NHWC latent grid.
* :class:`IterNorm`: iterative (Newton-Schulz) group whitening, Huang et al. 2019.
* :class:`Projector`: Linear-BN-ReLU, Linear-BN-ReLU, Linear (+ IterNorm for VIbCReg).

IterNorm details. Features (N, D) are split into G contiguous groups of D / G features,
``G = num_groups`` when D >= num_groups (D must then be divisible by G), and ``G = 1`` (one
group whitening all D features jointly) when D < num_groups. Per group, in training:

  mu = mean_N(x);  xc = x - mu;  S = xc^T xc / N + eps I;  S_N = S / tr(S)
  P_0 = I;  P_{k+1} = 1.5 P_k - 0.5 P_k^3 S_N  (k < T);  W = P_T / sqrt(tr(S))
  y = xc W^T

P_T converges to S_N^{-1/2}, so W to S^{-1/2} (ZCA whitening); with T = 5 it is only an
approximation that whitens the dominant directions most. The iteration is evaluated in its
numerically stable coupled form (see :func:`newton_schulz_whitening`). The running mean and
running W (``batch_stats``: 'mean' (D,), 'whitening' (G, D/G, D/G), initialised to 0 and I)
are updated as ``r <- (1 - momentum) r + momentum * batch_value`` (PyTorch convention, so
momentum 0.1) and used when ``train=False``. Gradients flow through mu, S and the
iterations. Everything is computed in float32. With ``axis_name`` set, the mean and S are
averaged over that mapped axis (equal shard sizes assumed).
"""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

Array = jax.Array
_HIGHEST = jax.lax.Precision.HIGHEST
POOLINGS = ("avg", "max", "avg+max")


def pool_latent(z: Array, method: str = "avg+max") -> Array:
  """Global pooling of a latent grid over its spatial axes.

  Args:
    z: (B, H, W, D) NHWC latent.
    method: 'avg' -> (B, D), 'max' -> (B, D), 'avg+max' -> (B, 2D) ([avg, max]).

  Returns:
    pooled features as described.
  """
  if method == "avg":
    return jnp.mean(z, axis=(1, 2))
  if method == "max":
    return jnp.max(z, axis=(1, 2))
  if method == "avg+max":
    return jnp.concatenate([jnp.mean(z, axis=(1, 2)), jnp.max(z, axis=(1, 2))], axis=-1)
  raise ValueError(f"unknown pooling {method!r}; expected one of {POOLINGS}")


def iternorm_num_groups(num_features: int, num_groups: int) -> int:
  """Effective group count G for D = num_features (see the module docstring).

  Raises:
    ValueError: if D >= num_groups and D is not divisible by num_groups.
  """
  if num_groups < 1:
    raise ValueError(f"num_groups must be >= 1, got {num_groups}")
  if num_features < num_groups:
    return 1
  if num_features % num_groups:
    raise ValueError(f"IterNorm: {num_features} features are not divisible into "
                     f"{num_groups} groups")
  return num_groups


def newton_schulz_whitening(cov: Array, num_iters: int) -> Array:
  """Approximate inverse square root of SPD matrices by T Newton-Schulz steps.

  Args:
    cov: (..., d, d) symmetric positive definite matrices S.
    num_iters: number of iterations T.

  Returns:
    (..., d, d) whitening matrices P_T / sqrt(tr(S)), approximately S^{-1/2}.

  The iterates are those of ``P_{k+1} = 1.5 P_k - 0.5 P_k^3 S_N`` (P_0 = I, S_N = S / tr S),
  computed in the coupled form ``T = 1.5 I - 0.5 P_k Y_k, Y_{k+1} = Y_k T, P_{k+1} = T P_k``
  (Y_0 = S_N), identical in exact arithmetic (all iterates are polynomials in S_N) but
  numerically stable: the uncoupled recursion amplifies rounding errors once cond(S) > 9
  and diverges after ~10-15 iterations.
  """
  d = cov.shape[-1]
  eye = jnp.eye(d, dtype=cov.dtype)
  trace = jnp.trace(cov, axis1=-2, axis2=-1)[..., None, None]
  y = cov / trace  # Y_k = S_N P_k
  p = jnp.broadcast_to(eye, cov.shape)
  mm = lambda a, b: jnp.matmul(a, b, precision=_HIGHEST)
  for _ in range(num_iters):
    t = 1.5 * eye - 0.5 * mm(p, y)  # = 1.5 I - 0.5 P_k^2 S_N
    y, p = mm(y, t), mm(t, p)  # p = 1.5 P_k - 0.5 P_k^3 S_N
  return p * jax.lax.rsqrt(trace)


class IterNorm(nn.Module):
  """Iterative group whitening of (N, D) features (see the module docstring).

  Attributes:
    num_groups: requested number of groups (64 in VIbCReg).
    num_iters: Newton-Schulz iterations T (5 in VIbCReg).
    momentum: weight of the new batch value in the running statistics.
    eps: added to the diagonal of each group covariance.
    affine: learn a per-feature scale (init 1) and bias (init 0) after whitening.
    axis_name: mapped axis over which batch statistics are averaged (None: local batch).
  """
  num_groups: int = 64
  num_iters: int = 5
  momentum: float = 0.1
  eps: float = 1e-5
  affine: bool = False
  axis_name: Any = None

  @nn.compact
  def __call__(self, x: Array, train: bool) -> Array:
    """Whitens x (N, D) -> float32 (N, D), batch statistics if train else running ones."""
    n, d = x.shape
    g = iternorm_num_groups(d, self.num_groups)
    gs = d // g
    x = x.astype(jnp.float32)
    eye = jnp.eye(gs, dtype=jnp.float32)
    ra_mean = self.variable("batch_stats", "mean", lambda: jnp.zeros((d,), jnp.float32))
    ra_wm = self.variable("batch_stats", "whitening",
                          lambda: jnp.tile(eye[None], (g, 1, 1)))
    if train:
      mean = jnp.mean(x, axis=0)
      if self.axis_name is not None:
        mean = jax.lax.pmean(mean, self.axis_name)
      xc = (x - mean).reshape(n, g, gs)
      cov = jnp.einsum("ngi,ngj->gij", xc, xc, precision=_HIGHEST) / n
      if self.axis_name is not None:
        cov = jax.lax.pmean(cov, self.axis_name)
      wm = newton_schulz_whitening(cov + self.eps * eye, self.num_iters)
      if not self.is_initializing():
        m = self.momentum
        ra_mean.value = (1 - m) * ra_mean.value + m * jax.lax.stop_gradient(mean)
        ra_wm.value = (1 - m) * ra_wm.value + m * jax.lax.stop_gradient(wm)
    else:
      xc = (x - ra_mean.value).reshape(n, g, gs)
      wm = ra_wm.value
    y = jnp.einsum("gij,ngj->ngi", wm, xc, precision=_HIGHEST).reshape(n, d)
    if self.affine:
      y = y * self.param("scale", nn.initializers.ones, (d,), jnp.float32)
      y = y + self.param("bias", nn.initializers.zeros, (d,), jnp.float32)
    return y


class ViewBatchNorm(nn.Module):
  """BatchNorm over ``num_views`` stacked batches (V * B, D), each normalised with its own
  batch statistics, exactly as V successive calls of ``nn.BatchNorm`` would (same variables:
  params 'scale'/'bias', batch_stats 'mean'/'var'; running averages updated view after view).

  Lets the projector run its Dense layers once on both SSL views (matmuls twice as tall,
  one weight gradient instead of two summed) without changing what BatchNorm computes.
  """
  num_views: int
  momentum: float = 0.9
  epsilon: float = 1e-5
  axis_name: Any = None
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x: Array, train: bool) -> Array:
    n, d = x.shape
    v = self.num_views
    scale = self.param("scale", nn.initializers.ones, (d,), jnp.float32)
    bias = self.param("bias", nn.initializers.zeros, (d,), jnp.float32)
    ra_mean = self.variable("batch_stats", "mean", lambda: jnp.zeros((d,), jnp.float32))
    ra_var = self.variable("batch_stats", "var", lambda: jnp.ones((d,), jnp.float32))
    xf = x.astype(jnp.float32).reshape(v, n // v, d)
    if train:
      mean = jnp.mean(xf, axis=1)  # (V, D)
      mean2 = jnp.mean(xf * xf, axis=1)
      if self.axis_name is not None:
        mean, mean2 = jax.lax.pmean((mean, mean2), self.axis_name)
      var = jnp.maximum(mean2 - mean * mean, 0.0)  # flax's fast variance
      if not self.is_initializing():
        m = self.momentum
        rm, rv = ra_mean.value, ra_var.value
        for i in range(v):
          rm = m * rm + (1 - m) * jax.lax.stop_gradient(mean[i])
          rv = m * rv + (1 - m) * jax.lax.stop_gradient(var[i])
        ra_mean.value, ra_var.value = rm, rv
      mean, var = mean[:, None], var[:, None]
    else:
      mean, var = ra_mean.value, ra_var.value
    mul = jax.lax.rsqrt(var + self.epsilon) * scale
    y = (xf - mean) * mul + bias
    return y.reshape(n, d).astype(self.dtype)


class Projector(nn.Module):
  """SSL projector: Linear-BN-ReLU, Linear-BN-ReLU, Linear, then IterNorm if iternorm.

  Attributes:
    hidden_dim: width of the two hidden layers.
    out_dim: output width.
    iternorm: whiten the output with :class:`IterNorm` (VIbCReg).
    iternorm_groups, iternorm_iters: IterNorm's num_groups and num_iters.
    axis_name: mapped axis for BatchNorm / IterNorm statistics (None: local batch).
    dtype: computation dtype of the Dense (and BatchNorm) layers; the output is float32.
  """
  hidden_dim: int = 4096
  out_dim: int = 4096
  iternorm: bool = False
  iternorm_groups: int = 64
  iternorm_iters: int = 5
  axis_name: Any = None
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, h: Array, train: bool, num_views: int = 1) -> Array:
    """Projects pooled features h (B, F) -> float32 (B, out_dim).

    With ``num_views=V``, h is V batches stacked along axis 0 ((V * B, F)), and the result
    equals V successive calls on the separate batches (batch statistics per view; running
    statistics updated in view order) while every Dense layer runs once on all rows.
    """
    x = h
    for i in range(2):
      x = nn.Dense(self.hidden_dim, use_bias=False, dtype=self.dtype)(x)
      if num_views == 1:
        x = nn.BatchNorm(use_running_average=not train, momentum=0.9, epsilon=1e-5,
                         axis_name=self.axis_name, dtype=self.dtype)(x)
      else:
        x = ViewBatchNorm(num_views, momentum=0.9, epsilon=1e-5, axis_name=self.axis_name,
                          dtype=self.dtype, name=f"BatchNorm_{i}")(x, train)
      x = nn.relu(x)
    # No bias: every SSL loss here (and IterNorm) is invariant to a shift of the embedding, so
    # its gradient would be exactly zero and Adam would only amplify float noise into updates.
    x = nn.Dense(self.out_dim, use_bias=False, dtype=self.dtype)(x)
    if self.iternorm:
      norm = IterNorm(num_groups=self.iternorm_groups, num_iters=self.iternorm_iters,
                      axis_name=self.axis_name)
      if num_views == 1:
        x = norm(x, train)
      else:  # whitening statistics per view, running statistics updated in view order
        x = jnp.concatenate([norm(xv, train) for xv in jnp.split(x, num_views)], axis=0)
    return x.astype(jnp.float32)
