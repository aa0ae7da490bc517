"""Vector quantiser against numpy: nearest code, straight-through, EMA, perplexity."""

import jax
import jax.numpy as jnp
import numpy as np

from tsgen_jax.models import vq


def test_nearest_code_matches_numpy():
  rng = np.random.default_rng(0)
  z, codebook = rng.standard_normal((50, 8)), rng.standard_normal((16, 8))
  expected = np.argmin(((z[:, None, :] - codebook[None]) ** 2).sum(-1), axis=1)
  got = vq.nearest_code(jnp.asarray(z, jnp.float32), jnp.asarray(codebook, jnp.float32))
  np.testing.assert_array_equal(np.asarray(got), expected)
  np.testing.assert_allclose(
      np.asarray(vq.squared_distances(jnp.asarray(z), jnp.asarray(codebook))),
      ((z[:, None, :] - codebook[None]) ** 2).sum(-1), rtol=1e-4, atol=1e-4)


def test_straight_through_gradient_is_identity():
  z = jnp.asarray(np.random.default_rng(1).standard_normal((4, 3)), jnp.float32)
  q = jnp.round(z)
  np.testing.assert_array_equal(np.asarray(vq.straight_through(z, q)), np.asarray(q))
  w = jnp.arange(12.0).reshape(4, 3)
  g = jax.grad(lambda z: jnp.sum(w * vq.straight_through(z, jnp.round(z))))(z)
  np.testing.assert_array_equal(np.asarray(g), np.asarray(w))


def test_module_gradient_to_encoder_output_is_identity():
  m = vq.VectorQuantizer(codebook_size=8, dim=4, ema=True)
  z = jnp.asarray(np.random.default_rng(2).standard_normal((2, 3, 4)), jnp.float32)
  variables = m.init({"params": jax.random.key(0)}, z)
  w = jnp.asarray(np.random.default_rng(3).standard_normal((2, 3, 4)), jnp.float32)
  g = jax.grad(lambda z: jnp.sum(w * m.apply(variables, z)["z_q"]))(z)
  np.testing.assert_allclose(np.asarray(g), np.asarray(w), rtol=1e-6)


def test_ema_update_matches_numpy():
  rng = np.random.default_rng(4)
  k, d, n, decay, eps = 5, 3, 20, 0.9, 1e-5
  cs, es = rng.uniform(0.5, 2, k), rng.standard_normal((k, d))
  z = rng.standard_normal((n, d))
  idx = rng.integers(0, k, n)
  onehot = np.eye(k)[idx]
  cs_np = decay * cs + (1 - decay) * onehot.sum(0)
  es_np = decay * es + (1 - decay) * onehot.T @ z
  total = cs_np.sum()
  cb_np = es_np / ((cs_np + eps) / (total + k * eps) * total)[:, None]
  got = vq.ema_update(jnp.asarray(cs, jnp.float32), jnp.asarray(es, jnp.float32),
                      jnp.asarray(z, jnp.float32), jnp.asarray(onehot, jnp.float32), decay)
  for a, b in zip(got, (cs_np, es_np, cb_np)):
    np.testing.assert_allclose(np.asarray(a), b, rtol=1e-5, atol=1e-6)


def test_module_applies_ema_only_in_training():
  m = vq.VectorQuantizer(codebook_size=4, dim=2, ema=True, decay=0.5)
  z = jnp.asarray(np.random.default_rng(5).standard_normal((6, 2)), jnp.float32)
  v = m.init({"params": jax.random.key(0)}, z)
  _, upd = m.apply(v, z, train=True, mutable=["vq"])
  assert not np.allclose(np.asarray(upd["vq"]["codebook"]), np.asarray(v["vq"]["codebook"]))
  out = m.apply(v, z, train=False)
  idx = np.asarray(out["indices"])
  np.testing.assert_allclose(np.asarray(out["z_q"]), np.asarray(v["vq"]["codebook"])[idx],
                             rtol=1e-6)
  assert "params" not in v  # EMA codebook is never touched by the optimiser


def test_codebook_loss_variant_has_trainable_codebook():
  m = vq.VectorQuantizer(codebook_size=4, dim=2, ema=False)
  z = jnp.asarray(np.random.default_rng(6).standard_normal((6, 2)), jnp.float32)
  v = m.init({"params": jax.random.key(0)}, z)
  g = jax.grad(lambda p: m.apply({"params": p}, z)["codebook_loss"])(v["params"])
  assert np.abs(np.asarray(g["codebook"])).sum() > 0
  cb = np.asarray(v["params"]["codebook"])
  q = cb[np.argmin(((np.asarray(z)[:, None] - cb[None]) ** 2).sum(-1), 1)]
  out = m.apply(v, z)
  np.testing.assert_allclose(float(out["codebook_loss"]), ((np.asarray(z) - q) ** 2).mean(),
                             rtol=1e-5)
  np.testing.assert_allclose(float(out["commit_loss"]), ((np.asarray(z) - q) ** 2).mean(),
                             rtol=1e-5)


def test_perplexity_uniform_equals_codebook_size():
  k = 32
  onehot = jax.nn.one_hot(jnp.arange(4 * k) % k, k)
  np.testing.assert_allclose(float(vq.perplexity(onehot)), k, rtol=1e-4)
  np.testing.assert_allclose(float(vq.perplexity(jax.nn.one_hot(jnp.zeros(10, int), k))), 1.0,
                             rtol=1e-4)


def test_dead_code_restart_moves_unused_codes_to_data():
  m = vq.VectorQuantizer(codebook_size=4, dim=2, ema=True, decay=0.0,
                         dead_code_restart=True, dead_code_threshold=0.5)
  z = jnp.asarray(np.random.default_rng(7).standard_normal((8, 2)) + 10.0, jnp.float32)
  v = m.init({"params": jax.random.key(0)}, z)
  _, upd = m.apply(v, z, train=True, mutable=["vq"], rngs={"vq": jax.random.key(1)})
  cb = np.asarray(upd["vq"]["codebook"])
  # Every code is now either a used cluster mean or a copy of a data point: all near 10.
  assert np.all(np.abs(cb - 10.0) < 4.0)


def test_kmeans_finds_separated_clusters():
  rng = np.random.default_rng(8)
  centers = np.array([[0.0, 0.0], [10.0, 0.0], [0.0, 10.0]])
  z = np.concatenate([c + 0.1 * rng.standard_normal((30, 2)) for c in centers])
  got = np.asarray(vq.kmeans(jax.random.key(0), jnp.asarray(z, jnp.float32), 3, iters=10))
  dist = np.abs(got[:, None, :] - centers[None]).sum(-1).min(0)
  assert np.all(dist < 0.5)
