"""Tests for tsgen_jax.losses against independent float64 numpy computations."""

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from tsgen_jax import losses

N, D = 24, 12


def _inputs(seed=0):
  """Two correlated (N, D) views with column scales from 0.1 to 2 (so that the VIbCReg
  variance hinge is active for some columns and not others)."""
  rng = np.random.default_rng(seed)
  base = rng.normal(size=(N, D)) @ (np.eye(D) + 0.3 * rng.normal(size=(D, D)))
  scale = np.linspace(0.1, 2.0, D)
  z1 = (base + 0.3 * rng.normal(size=(N, D))) * scale + rng.normal(size=D)
  z2 = (base + 0.3 * rng.normal(size=(N, D))) * scale
  return z1, z2


def _np_barlow(z1, z2, lam):
  n, d = z1.shape
  a = (z1 - z1.mean(0)) / np.sqrt(z1.var(0) + 1e-5)
  b = (z2 - z2.mean(0)) / np.sqrt(z2.var(0) + 1e-5)
  c = np.zeros((d, d))
  for i in range(d):
    for j in range(d):
      c[i, j] = np.sum(a[:, i] * b[:, j]) / n
  on = sum((1 - c[i, i]) ** 2 for i in range(d))
  off = sum(c[i, j] ** 2 for i in range(d) for j in range(d) if i != j)
  return on + lam * off, on, off


def _np_var(z):
  std = np.sqrt(np.var(z, axis=0, ddof=1) + 1e-4)
  return np.mean(np.maximum(0.0, 1.0 - std))


def _np_cov(z):
  zc = z - z.mean(0)
  zn = zc / np.maximum(np.linalg.norm(zc, axis=0), 1e-12)
  c = zn.T @ zn
  np.fill_diagonal(c, 0.0)
  return np.mean(c ** 2)


def _np_vibcreg(z1, z2, lam, mu, nu):
  sim = np.mean((z1 - z2) ** 2)
  var = _np_var(z1) + _np_var(z2)
  cov = _np_cov(z1) + _np_cov(z2)
  return lam * sim + mu * var + nu * cov, sim, var, cov


@pytest.mark.parametrize("lam", [5e-3, 0.5])
def test_barlow_twins_matches_numpy(lam):
  z1, z2 = _inputs()
  expected, on, off = _np_barlow(z1, z2, lam)
  terms = losses.barlow_twins_loss_terms(jnp.float32(z1), jnp.float32(z2), lam)
  chex.assert_trees_all_close(
      terms, {"loss": expected, "on_diag": on, "off_diag": off}, rtol=1e-4)
  got = losses.barlow_twins_loss(jnp.float32(z1), jnp.float32(z2), lambda_offdiag=lam)
  chex.assert_shape(got, ())
  assert got.dtype == jnp.float32
  np.testing.assert_allclose(got, expected, rtol=1e-4)


def test_barlow_twins_perfect_views():
  # Identical views with orthonormal (decorrelated) columns: C = I (up to eps) -> loss ~ 0.
  basis = np.concatenate([np.ones((N, 1)), np.random.default_rng(1).normal(size=(N, D))], 1)
  q, _ = np.linalg.qr(basis)
  z = q[:, 1:] * np.sqrt(N)  # zero-mean, unit-variance, mutually orthogonal columns
  assert float(losses.barlow_twins_loss(jnp.float32(z), jnp.float32(z))) < 1e-3


@pytest.mark.parametrize("weights", [(25.0, 25.0, 100.0), (1.0, 2.0, 3.0)])
def test_vibcreg_matches_numpy(weights):
  z1, z2 = _inputs(seed=2)
  expected, sim, var, cov = _np_vibcreg(z1, z2, *weights)
  assert var > 0 and _np_var(z2 * 10) == 0  # the hinge is active on these inputs
  terms = losses.vibcreg_loss_terms(jnp.float32(z1), jnp.float32(z2), *weights)
  chex.assert_trees_all_close(
      terms, {"loss": expected, "sim": sim, "var": var, "cov": cov}, rtol=1e-4)
  got = losses.vibcreg_loss(jnp.float32(z1), jnp.float32(z2), *weights)
  np.testing.assert_allclose(got, expected, rtol=1e-4)
  np.testing.assert_allclose(losses.vibcreg_variance_term(jnp.float32(z1)), _np_var(z1),
                             rtol=1e-5)
  np.testing.assert_allclose(losses.vibcreg_covariance_term(jnp.float32(z1)), _np_cov(z1),
                             rtol=1e-4)


def test_vibcreg_default_weights():
  z1, z2 = _inputs(seed=3)
  np.testing.assert_allclose(losses.vibcreg_loss(jnp.float32(z1), jnp.float32(z2)),
                             _np_vibcreg(z1, z2, 25.0, 25.0, 100.0)[0], rtol=1e-4)


@jax.jit
def _all_grads(z1, z2):
  return {name: jax.grad(fn, argnums=(0, 1))(z1, z2)
          for name, fn in (("barlow", losses.barlow_twins_loss),
                           ("vibcreg", losses.vibcreg_loss))}


def test_gradients_are_finite():
  z1, z2 = (jnp.float32(z) for z in _inputs(seed=4))
  grads = _all_grads(z1, z2)
  chex.assert_tree_all_finite(grads)
  for g in jax.tree_util.tree_leaves(grads):
    assert float(jnp.abs(g).sum()) > 0
  # A constant column (zero norm after centring) still gives finite gradients.
  chex.assert_tree_all_finite(_all_grads(z1.at[:, 0].set(3.0), z2))


def test_gradient_matches_finite_difference():
  z1, z2 = _inputs(seed=5)
  grads = _all_grads(jnp.float32(z1), jnp.float32(z2))
  for name, np_fn in (("barlow", lambda a, b: _np_barlow(a, b, 5e-3)[0]),
                      ("vibcreg", lambda a, b: _np_vibcreg(a, b, 25., 25., 100.)[0])):
    g = np.asarray(grads[name][0])
    for idx in [(0, 0), (5, 3), (N - 1, D - 1)]:
      h = 1e-5
      zp, zm = z1.copy(), z1.copy()
      zp[idx] += h
      zm[idx] -= h
      fd = (np_fn(zp, z2) - np_fn(zm, z2)) / (2 * h)
      np.testing.assert_allclose(g[idx], fd, rtol=2e-3, atol=1e-5)


def test_low_precision_inputs_give_float32():
  z1, z2 = _inputs(seed=6)
  for fn in (losses.barlow_twins_loss, losses.vibcreg_loss):
    got = fn(jnp.bfloat16(z1), jnp.bfloat16(z2))
    assert got.dtype == jnp.float32
    np.testing.assert_allclose(got, fn(jnp.float32(z1), jnp.float32(z2)), rtol=5e-2)
