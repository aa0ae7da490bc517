"""Tests for tsgen_jax.models.projector: pooling, IterNorm whitening and the Projector."""

import functools

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from tsgen_jax.models import projector

N, D, GROUPS = 256, 32, 4  # groups of 8 features


def _correlated(seed=0, n=N, d=D):
  """(n, d) features with strong within-group correlations and a non-zero mean."""
  rng = np.random.default_rng(seed)
  mix = np.eye(d) + 0.8 * rng.normal(size=(d, d)) / np.sqrt(d) * 4
  return (rng.normal(size=(n, d)) @ mix * np.linspace(0.5, 3.0, d) + 2.0).astype(np.float32)


def _group_cov(y, groups):
  """(G, d, d) covariance (biased) of each group of y (N, D)."""
  n, d = y.shape
  yc = (y - y.mean(0)).reshape(n, groups, d // groups)
  return np.einsum("ngi,ngj->gij", yc, yc) / n


def _np_zca(x, groups, eps=1e-5):
  """Exact group ZCA whitening (float64) of x (N, D): (y, mean, whitening matrices)."""
  x = x.astype(np.float64)
  n, d = x.shape
  mean = x.mean(0)
  cov = _group_cov(x, groups) + eps * np.eye(d // groups)
  w = []
  for c in cov:
    lam, u = np.linalg.eigh(c)
    w.append(u @ np.diag(lam ** -0.5) @ u.T)
  w = np.stack(w)
  y = np.einsum("gij,ngj->ngi", w, (x - mean).reshape(n, groups, -1)).reshape(n, d)
  return y, mean, w


def _offdiag_corr(y, groups):
  cov = _group_cov(np.asarray(y, np.float64), groups)
  std = np.sqrt(np.einsum("gii->gi", cov))
  corr = cov / std[:, :, None] / std[:, None, :]
  mask = ~np.eye(corr.shape[-1], dtype=bool)
  return np.abs(corr[:, mask]).mean()


def test_pool_latent_matches_numpy():
  z = np.random.default_rng(0).normal(size=(3, 5, 8, 6)).astype(np.float32)
  avg, mx = z.mean((1, 2)), z.max((1, 2))
  np.testing.assert_allclose(projector.pool_latent(jnp.asarray(z), "avg"), avg, rtol=1e-6)
  np.testing.assert_array_equal(projector.pool_latent(jnp.asarray(z), "max"), mx)
  both = projector.pool_latent(jnp.asarray(z))
  chex.assert_shape(both, (3, 12))
  np.testing.assert_allclose(both, np.concatenate([avg, mx], -1), rtol=1e-6)
  with pytest.raises(ValueError, match="avg\\+max"):
    projector.pool_latent(jnp.asarray(z), "sum")


# Jitted wrappers: running flax modules op by op compiles every op separately (slow on CPU).
def _init(module, x):
  return jax.jit(functools.partial(module.init, train=True))(jax.random.PRNGKey(1), x)


def _train(module, variables, x):
  """(y, batch_stats after one training step)."""
  y, upd = jax.jit(functools.partial(module.apply, train=True, mutable=["batch_stats"]))(
      variables, x)
  return y, upd["batch_stats"]


def _eval(module, variables, x):
  return jax.jit(functools.partial(module.apply, train=False))(variables, x)


def _fast_init(model, h, seed=0):
  """Projector variables without compiling flax's random initialisers (slow on CPU): the
  structure and dtypes come from jax.eval_shape(model.init), the values from numpy."""
  shapes = jax.eval_shape(functools.partial(model.init, train=True), jax.random.PRNGKey(0), h)
  rng = np.random.default_rng(seed)

  def fill(path, leaf):
    name = path[-1].key
    if name == "kernel":
      value = rng.normal(size=leaf.shape) / np.sqrt(leaf.shape[0])
    elif name in ("scale", "var"):
      value = np.ones(leaf.shape)
    elif name == "whitening":
      value = np.broadcast_to(np.eye(leaf.shape[-1]), leaf.shape)
    else:  # bias, mean
      value = np.zeros(leaf.shape)
    return jnp.asarray(value, leaf.dtype)

  return jax.tree_util.tree_map_with_path(fill, shapes)


def _iternorm_apply(module, x):
  variables = _init(module, x)
  y, stats = _train(module, variables, x)
  return y, variables, stats


def test_iternorm_converges_to_zca_and_whitens():
  x = _correlated()
  y_zca, _, _ = _np_zca(x, GROUPS)
  y30, _, _ = _iternorm_apply(projector.IterNorm(num_groups=GROUPS, num_iters=30),
                              jnp.asarray(x))
  # Many iterations: the exact ZCA whitening; covariance within each group ~ identity.
  np.testing.assert_allclose(y30, y_zca, atol=2e-3)
  cov30 = _group_cov(np.asarray(y30, np.float64), GROUPS)
  np.testing.assert_allclose(cov30, np.broadcast_to(np.eye(D // GROUPS), cov30.shape),
                             atol=5e-3)
  # T = 5: only approximate, but correlations are much reduced and the output is centred.
  y5, _, _ = _iternorm_apply(projector.IterNorm(num_groups=GROUPS), jnp.asarray(x))
  chex.assert_shape(y5, (N, D))
  assert y5.dtype == jnp.float32
  np.testing.assert_allclose(np.asarray(y5).mean(0), 0.0, atol=1e-4)
  before, after = _offdiag_corr(x, GROUPS), _offdiag_corr(y5, GROUPS)
  assert after < 0.35 * before, (before, after)
  assert np.abs(np.asarray(y5) - y_zca).mean() > 1e-3  # not yet converged at T = 5
  # The eigenvalues of the whitened covariance move towards 1.
  eig_in = np.linalg.eigvalsh(_group_cov(x.astype(np.float64), GROUPS))
  eig5 = np.linalg.eigvalsh(_group_cov(np.asarray(y5, np.float64), GROUPS))
  assert eig5.max() / eig5.min() < 0.1 * eig_in.max() / eig_in.min()
  assert np.all(eig5 < 1.0 + 1e-3)


def test_newton_schulz_follows_the_iternorm_recursion():
  x = _correlated(seed=4)
  cov = _group_cov(x.astype(np.float64), GROUPS) + 1e-5 * np.eye(8)
  assert np.linalg.cond(cov).max() > 9  # where the naive recursion is unstable in float32
  tr = np.trace(cov, axis1=-2, axis2=-1)[:, None, None]
  p = np.broadcast_to(np.eye(8), cov.shape)
  for t in range(1, 31):
    p = 1.5 * p - 0.5 * p @ p @ p @ (cov / tr)  # the literal formula, float64
    if t in (1, 5):
      got = projector.newton_schulz_whitening(jnp.asarray(cov, jnp.float32), t)
      np.testing.assert_allclose(got, p / np.sqrt(tr), rtol=1e-4, atol=1e-6)
  lam, u = np.linalg.eigh(cov)
  zca = np.einsum("gij,gj,gkj->gik", u, lam ** -0.5, u)
  np.testing.assert_allclose(projector.newton_schulz_whitening(jnp.float32(cov), 30), zca,
                             rtol=1e-3, atol=1e-4)


def test_iternorm_running_stats_and_eval():
  x = _correlated(seed=1)
  _, mean, _ = _np_zca(x, GROUPS)
  module = projector.IterNorm(num_groups=GROUPS, num_iters=5, momentum=0.1)
  y_train, variables, stats = _iternorm_apply(module, jnp.asarray(x))
  # Init leaves the running stats at (0, I); one training step moves them by 10%.
  init = variables["batch_stats"]
  np.testing.assert_array_equal(init["mean"], np.zeros(D))
  np.testing.assert_array_equal(init["whitening"],
                                np.broadcast_to(np.eye(D // GROUPS), (GROUPS, 8, 8)))
  wm_batch = projector.newton_schulz_whitening(
      jnp.asarray(_group_cov(x.astype(np.float64), GROUPS) + 1e-5 * np.eye(8), jnp.float32), 5)
  np.testing.assert_allclose(stats["mean"], 0.1 * mean, rtol=1e-4, atol=1e-5)
  np.testing.assert_allclose(stats["whitening"], 0.9 * np.eye(8) + 0.1 * np.asarray(wm_batch),
                             rtol=1e-4, atol=1e-5)
  # Eval mode uses the running statistics and does not change them.
  x_new = _correlated(seed=2)[:16]
  y_eval, upd = jax.jit(functools.partial(module.apply, train=False, mutable=["batch_stats"]))(
      {"batch_stats": stats}, jnp.asarray(x_new))
  chex.assert_trees_all_equal(upd["batch_stats"], stats)
  expected = np.einsum("gij,ngj->ngi", np.asarray(stats["whitening"]),
                       (x_new - np.asarray(stats["mean"])).reshape(16, GROUPS, 8))
  np.testing.assert_allclose(y_eval, expected.reshape(16, D), rtol=1e-4, atol=1e-4)
  # With momentum 1 the running stats are the batch's: eval reproduces train on that batch.
  m1 = projector.IterNorm(num_groups=GROUPS, momentum=1.0)
  y1, _, stats1 = _iternorm_apply(m1, jnp.asarray(x))
  y1_eval = _eval(m1, {"batch_stats": stats1}, jnp.asarray(x))
  np.testing.assert_allclose(y1_eval, y1, rtol=1e-4, atol=1e-4)
  np.testing.assert_allclose(y1, y_train, rtol=1e-6)


def test_iternorm_groups_and_gradients():
  assert projector.iternorm_num_groups(4096, 64) == 64
  assert projector.iternorm_num_groups(32, 64) == 1  # D < num_groups: one group of D
  with pytest.raises(ValueError, match="divisible"):
    projector.iternorm_num_groups(96, 64)
  x = jnp.asarray(_correlated(seed=3, n=64, d=16))
  module = projector.IterNorm(num_groups=64, num_iters=5)  # -> one group of 16
  variables = _init(module, x)
  assert variables["batch_stats"]["whitening"].shape == (1, 16, 16)
  w = jax.random.normal(jax.random.PRNGKey(1), (64, 16))

  def loss(x):
    y, _ = module.apply(variables, x, train=True, mutable=["batch_stats"])
    return jnp.sum(y * w)

  g = jax.jit(jax.grad(loss))(x)
  chex.assert_tree_all_finite(g)
  assert float(jnp.abs(g).sum()) > 0


@pytest.mark.parametrize("iternorm", [False, True])
def test_projector_shapes_and_batch_stats(iternorm):
  model = projector.Projector(hidden_dim=32, out_dim=64, iternorm=iternorm, iternorm_groups=8)
  h = jax.random.normal(jax.random.PRNGKey(0), (48, 20)) * 3.0 + 1.0
  variables = _fast_init(model, h)
  y, stats = _train(model, variables, h)
  chex.assert_shape(y, (48, 64))
  assert y.dtype == jnp.float32
  chex.assert_tree_all_finite(y)
  assert ("IterNorm_0" in stats) == iternorm
  # Training updates every running statistic; BatchNorm uses momentum 0.9.
  for old, new in zip(jax.tree_util.tree_leaves(variables["batch_stats"]),
                      jax.tree_util.tree_leaves(stats)):
    assert not np.allclose(old, new)
  h1 = np.asarray(jnp.dot(h, variables["params"]["Dense_0"]["kernel"]))
  np.testing.assert_allclose(stats["BatchNorm_0"]["mean"], 0.1 * h1.mean(0), rtol=1e-4,
                             atol=1e-5)
  # Eval: deterministic, uses the running averages, differs from train-mode output.
  new_vars = {"params": variables["params"], "batch_stats": stats}
  eval_fn = jax.jit(functools.partial(model.apply, train=False))
  y_eval = eval_fn(new_vars, h)
  np.testing.assert_array_equal(eval_fn(new_vars, h), y_eval)
  assert not np.allclose(y_eval, y, atol=1e-2)


def test_projector_axis_name_matches_full_batch():
  model = projector.Projector(hidden_dim=16, out_dim=32, iternorm=True, iternorm_groups=4,
                              axis_name="batch")
  full = projector.Projector(hidden_dim=16, out_dim=32, iternorm=True, iternorm_groups=4)
  h = jax.random.normal(jax.random.PRNGKey(0), (64, 12))
  variables = _fast_init(full, h)
  y_full, stats_full = _train(full, variables, h)
  shard = jax.jit(jax.vmap(lambda hs: _train(model, variables, hs), axis_name="batch"))
  y_sh, stats_sh = shard(h.reshape(2, 32, 12))
  np.testing.assert_allclose(y_sh.reshape(64, 32), y_full, rtol=2e-4, atol=2e-4)
  chex.assert_trees_all_close(jax.tree_util.tree_map(lambda s: s[0], stats_sh), stats_full,
                              rtol=1e-4, atol=1e-5)


def test_projector_bfloat16_dtype():
  model = projector.Projector(hidden_dim=16, out_dim=16, dtype=jnp.bfloat16)
  h = jax.random.normal(jax.random.PRNGKey(0), (8, 12))
  variables = _fast_init(model, h)
  assert variables["params"]["Dense_0"]["kernel"].dtype == jnp.float32  # params stay f32
  y = _eval(model, variables, h)
  assert y.dtype == jnp.float32 and y.shape == (8, 16)
