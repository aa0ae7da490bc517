"""models/conv.py: the convolution whose weight gradient is summed over batch chunks."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax import lax

from tsgen_jax.config import ConfigError, base_config, validate
from tsgen_jax.models import conv as conv_lib
from tsgen_jax.models.vqvae import VQVAE

NHWC = ("NHWC", "HWIO", "NHWC")


def _conv_fn(fn, strides, padding, dn=NHWC):
  return lambda x, w: fn(x, w, strides, padding, dimension_numbers=dn)


@pytest.mark.parametrize("batch,kernel,strides,padding", [
    (64, (3, 4), (1, 2), ((1, 1), (1, 1))),  # the encoder's downsampling conv
    (70, (3, 2), (1, 1), ((1, 1), (1, 0))),  # UpsampleTime's phase conv; last chunk of 6 rows
    (48, (1, 1), (1, 1), ((0, 0), (0, 0))),
])
def test_gradients_equal_autodiff(batch, kernel, strides, padding):
  kx, kw, kg = jax.random.split(jax.random.key(0), 3)
  x = jax.random.normal(kx, (batch, 5, 9, 6))
  w = jax.random.normal(kw, (*kernel, 6, 7)) * 0.3
  ref = _conv_fn(lax.conv_general_dilated, strides, padding)
  new = _conv_fn(conv_lib.chunked_wgrad_conv(8), strides, padding)
  cot = jax.random.normal(kg, ref(x, w).shape)
  np.testing.assert_array_equal(new(x, w), ref(x, w))
  g_ref = jax.jit(lambda x, w, c: jax.vjp(ref, x, w)[1](c))(x, w, cot)
  g_new = jax.jit(lambda x, w, c: jax.vjp(new, x, w)[1](c))(x, w, cot)
  np.testing.assert_array_equal(g_new[0], g_ref[0])  # lhs gradient: XLA's own
  np.testing.assert_allclose(g_new[1], g_ref[1], rtol=1e-5, atol=1e-5 * np.abs(g_ref[1]).max())
  # And against an independent float64 numpy sum of per-sample weight gradients.
  one = lambda xi, ci: jax.vjp(lambda w_: ref(xi[None], w_), w)[1](ci[None])[0]
  per_sample = jax.jit(jax.vmap(one))(x, cot)
  np.testing.assert_allclose(g_new[1], np.sum(np.asarray(per_sample, np.float64), axis=0),
                             rtol=1e-4, atol=1e-4 * np.abs(g_ref[1]).max())


def test_batch_axis_from_dimension_numbers():
  """NCHW layout: the batch is still axis 0 of lhs/out, features axis 1 (chunks by batch)."""
  kx, kw = jax.random.split(jax.random.key(1))
  x = jax.random.normal(kx, (40, 3, 5, 8))
  w = jax.random.normal(kw, (4, 3, 3, 3))
  dn = ("NCHW", "OIHW", "NCHW")
  ref = _conv_fn(lax.conv_general_dilated, (1, 1), ((1, 1), (1, 1)), dn)
  new = _conv_fn(conv_lib.chunked_wgrad_conv(10), (1, 1), ((1, 1), (1, 1)), dn)
  g_ref = jax.grad(lambda w_: jnp.sum(jnp.sin(ref(x, w_))))(w)
  g_new = jax.grad(lambda w_: jnp.sum(jnp.sin(new(x, w_))))(w)
  np.testing.assert_allclose(g_new, g_ref, rtol=1e-5, atol=1e-5 * np.abs(g_ref).max())


def test_chunking_only_with_enough_rows():
  """Below MIN_CHUNKS * rows rows (and with rows = 0) the plain convolution is used."""
  fn = conv_lib.chunked_wgrad_conv(16)
  w = jnp.ones((3, 3, 2, 4))
  jaxpr = lambda b: str(jax.make_jaxpr(
      lambda x: fn(x, w, (1, 1), "SAME", dimension_numbers=NHWC))(jnp.ones((b, 5, 9, 2))))
  assert "custom_vjp" in jaxpr(conv_lib.MIN_CHUNKS * 16)
  assert "custom_vjp" not in jaxpr(conv_lib.MIN_CHUNKS * 16 - 1)
  off = str(jax.make_jaxpr(lambda x: conv_lib.chunked_wgrad_conv(0)(
      x, w, (1, 1), "SAME", dimension_numbers=NHWC))(jnp.ones((256, 5, 9, 2))))
  assert "custom_vjp" not in off


def test_resolve_rows():
  auto = 16 if jax.default_backend() == "cpu" and jax.device_count() == 1 else 0
  assert conv_lib.resolve_rows(-1) == auto
  assert conv_lib.resolve_rows(0) == 0
  assert conv_lib.resolve_rows(32) == 32
  with pytest.raises(ValueError, match="conv_wgrad_chunk"):
    conv_lib.resolve_rows(-2)


def test_config_rejects_bad_value():
  cfg = base_config()
  cfg.stage1.conv_wgrad_chunk = -3
  with pytest.raises(ConfigError, match="conv_wgrad_chunk"):
    validate(cfg)


def test_vqvae_gradients_and_variables_unchanged():
  """The VQ-VAE with chunked weight gradients: same variable tree (checkpoints load), same
  outputs, same parameter gradients up to summation order."""
  x = jax.random.normal(jax.random.key(2), (64, 1, 64))
  models = [VQVAE(num_channels=1, length=64, dim=8, n_resnet_blocks=1, codebook_size=8,
                  wgrad_chunk=r) for r in (0, 8)]
  init = lambda m: jax.jit(lambda k: m.init(k, x, train=True))(jax.random.key(3))
  variables = init(models[0])
  assert jax.tree.structure(init(models[1])) == jax.tree.structure(variables)

  def loss(params, model):
    out, _ = model.apply({**variables, "params": params}, x, True,
                         mutable=[k for k in variables if k != "params"])
    return jnp.mean((out["x_hat"] - x) ** 2) + jnp.mean(out["main/z_e"] ** 2)

  (l0, g0), (l1, g1) = [jax.jit(jax.value_and_grad(lambda p, m=m: loss(p, m)))(variables["params"])
                        for m in models]
  assert float(l0) == float(l1)
  flat0, flat1 = jax.tree.leaves(g0), jax.tree.leaves(g1)
  assert len(flat0) == len(flat1) > 10
  for a, b in zip(flat0, flat1):
    np.testing.assert_allclose(b, a, rtol=1e-4, atol=1e-5 * max(float(jnp.abs(a).max()), 1e-3))
