"""Vector quantiser: nearest code, straight-through estimator, EMA or loss-learned codebook.

Pure helper functions (tested against numpy) plus the linen module that holds the codebook.
With ``ema=True`` the codebook lives in the ``'vq'`` variable collection and is updated by
exponential moving averages (never by the optimiser); with ``ema=False`` it is a parameter
trained by the codebook loss ``mse(sg(z), q)``.
"""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp

EPS = 1e-5


def squared_distances(z, codebook):
  """Squared Euclidean distances: z (N, D), codebook (K, D) -> (N, K) float32."""
  z = z.astype(jnp.float32)
  codebook = codebook.astype(jnp.float32)
  return (jnp.sum(z * z, axis=1, keepdims=True) - 2.0 * z @ codebook.T
          + jnp.sum(codebook * codebook, axis=1)[None, :])


def nearest_code(z, codebook):
  """Index of the nearest code for each row: z (N, D), codebook (K, D) -> int32 (N,)."""
  return jnp.argmin(squared_distances(z, codebook), axis=1).astype(jnp.int32)


def straight_through(z, q):
  """``z + sg(q - z)``: forward value q, gradient the identity with respect to z."""
  return z + jax.lax.stop_gradient(q - z)


def perplexity(onehot):
  """exp(entropy) of the average code assignment; onehot (N, K) -> scalar in [1, K]."""
  p = jnp.mean(onehot.astype(jnp.float32), axis=0)
  return jnp.exp(-jnp.sum(p * jnp.log(p + 1e-10)))


def ema_update(cluster_size, embed_sum, z, onehot, decay):
  """One EMA step of the codebook statistics.

  Args:
    cluster_size: (K,) running count of assignments.
    embed_sum: (K, D) running sum of assigned vectors.
    z: (N, D) encoder outputs; onehot: (N, K) assignments.
    decay: EMA decay in [0, 1).

  Returns:
    (cluster_size (K,), embed_sum (K, D), codebook (K, D)) with Laplace smoothing:
    codebook_k = embed_sum_k / ((n_k + eps) / (n + K eps) * n).
  """
  onehot = onehot.astype(jnp.float32)
  cluster_size = decay * cluster_size + (1 - decay) * jnp.sum(onehot, axis=0)
  embed_sum = decay * embed_sum + (1 - decay) * onehot.T @ z.astype(jnp.float32)
  n = jnp.sum(cluster_size)
  k = cluster_size.shape[0]
  smoothed = (cluster_size + EPS) / (n + k * EPS) * n
  return cluster_size, embed_sum, embed_sum / smoothed[:, None]


def kmeans(key, z, k, iters=10):
  """Lloyd's k-means on z (N, D) -> centroids (K, D), initialised from random rows."""
  n = z.shape[0]
  idx = jax.random.choice(key, n, (k,), replace=n < k)
  centroids = z[idx]

  def body(_, c):
    onehot = jax.nn.one_hot(nearest_code(z, c), k)
    counts = onehot.sum(0)
    means = onehot.T @ z / jnp.maximum(counts, 1.0)[:, None]
    return jnp.where(counts[:, None] > 0, means, c)

  return jax.lax.fori_loop(0, iters, body, centroids)


class VectorQuantizer(nn.Module):
  """Quantises (..., D) latents to the nearest of ``codebook_size`` codes.

  Returns a dict: ``z_q`` (straight-through quantised latent, shape of z), ``indices``
  (int32, z.shape[:-1]), ``commit_loss``, ``codebook_loss`` (0 with EMA), ``perplexity``,
  ``usage`` (fraction of codes used in this batch).
  """
  codebook_size: int
  dim: int
  ema: bool = True
  decay: float = 0.9
  dead_code_restart: bool = False
  dead_code_threshold: float = 1e-3

  def setup(self):
    init = nn.initializers.variance_scaling(1.0, "fan_in", "uniform")
    if self.ema:
      self.codebook_var = self.variable(
          "vq", "codebook", lambda: init(self.make_rng("params"), (self.codebook_size, self.dim)))
      self.cluster_size = self.variable("vq", "cluster_size",
                                        lambda: jnp.zeros((self.codebook_size,)))
      self.embed_sum = self.variable("vq", "embed_sum", lambda: self.codebook_var.value.copy())
    else:
      self.codebook_param = self.param("codebook", init, (self.codebook_size, self.dim))

  @property
  def codebook(self):
    return self.codebook_var.value if self.ema else self.codebook_param

  def lookup(self, indices):
    """Code vectors for integer indices: (...,) -> (..., D)."""
    return jnp.take(self.codebook, indices, axis=0)

  def __call__(self, z, train: bool = False):
    shape = z.shape
    flat = z.reshape(-1, self.dim).astype(jnp.float32)
    codebook = self.codebook
    idx = nearest_code(flat, codebook)
    onehot = jax.nn.one_hot(idx, self.codebook_size, dtype=jnp.float32)
    q = codebook[idx]
    commit = jnp.mean((flat - jax.lax.stop_gradient(q)) ** 2)
    if self.ema:
      codebook_loss = jnp.zeros(())
      if train and self.is_mutable_collection("vq"):
        cs, es, new_codebook = ema_update(self.cluster_size.value, self.embed_sum.value,
                                          jax.lax.stop_gradient(flat), onehot, self.decay)
        if self.dead_code_restart:
          dead = cs < self.dead_code_threshold
          pick = jax.random.randint(self.make_rng("vq"), (self.codebook_size,), 0, flat.shape[0])
          fresh = jax.lax.stop_gradient(flat[pick])
          new_codebook = jnp.where(dead[:, None], fresh, new_codebook)
          es = jnp.where(dead[:, None], fresh * self.dead_code_threshold, es)
          cs = jnp.where(dead, self.dead_code_threshold, cs)
        self.cluster_size.value, self.embed_sum.value = cs, es
        self.codebook_var.value = new_codebook
    else:
      codebook_loss = jnp.mean((jax.lax.stop_gradient(flat) - q) ** 2)
    z_q = straight_through(flat, q).reshape(shape).astype(z.dtype)
    used = jnp.mean((onehot.sum(0) > 0).astype(jnp.float32))
    return {"z_q": z_q, "indices": idx.reshape(shape[:-1]), "commit_loss": commit,
            "codebook_loss": codebook_loss, "perplexity": perplexity(onehot), "usage": used}
