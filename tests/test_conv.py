"""models/conv.py: the convolution whose weight gradient is summed over batch chunks."""

import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax import lax

from conftest import all_eqns
from tsgen_jax.config import ConfigError, base_config, validate
from tsgen_jax.models import conv as conv_lib
from tsgen_jax.models.vqvae import VQVAE

NHWC = ("NHWC", "HWIO", "NHWC")
NCHW = ("NCHW", "OIHW", "NCHW")


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
  # lhs gradient: XLA's own for stride 1, by phases (strided_conv_input_grad) for stride 2.
  np.testing.assert_allclose(g_new[0], g_ref[0], rtol=1e-5, atol=1e-5 * np.abs(g_ref[0]).max())
  if strides == (1, 1):
    np.testing.assert_array_equal(g_new[0], g_ref[0])
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
  ref = _conv_fn(lax.conv_general_dilated, (1, 1), ((1, 1), (1, 1)), NCHW)
  new = _conv_fn(conv_lib.chunked_wgrad_conv(10), (1, 1), ((1, 1), (1, 1)), NCHW)
  g_ref = jax.grad(lambda w_: jnp.sum(jnp.sin(ref(x, w_))))(w)
  g_new = jax.grad(lambda w_: jnp.sum(jnp.sin(new(x, w_))))(w)
  np.testing.assert_allclose(g_new, g_ref, rtol=1e-5, atol=1e-5 * np.abs(g_ref).max())


def test_chunking_only_with_enough_rows():
  """Below MIN_CHUNKS * rows rows the weight gradient is one chunk (XLA's own): the plain
  convolution unless it is strided, where the custom gradient stays for the phase input
  gradient. rows = 0: the plain convolution always."""
  fn = conv_lib.chunked_wgrad_conv(16)
  w = jnp.ones((3, 4, 2, 4))

  def jaxpr(b, strides=(1, 1), f=fn):
    return str(jax.make_jaxpr(lambda x: f(x, w, strides, ((1, 1), (1, 1)),
                                          dimension_numbers=NHWC))(jnp.ones((b, 5, 9, 2))))

  assert "custom_vjp" in jaxpr(conv_lib.MIN_CHUNKS * 16)
  assert "custom_vjp" not in jaxpr(conv_lib.MIN_CHUNKS * 16 - 1)
  assert "custom_vjp" in jaxpr(conv_lib.MIN_CHUNKS * 16 - 1, (1, 2))
  assert "custom_vjp" not in jaxpr(256, (1, 2), conv_lib.chunked_wgrad_conv(0))
  # One chunk of 63 rows: a single weight-gradient convolution, and the input gradient by
  # phases (no lhs-dilated convolution); with 64 rows, four weight gradients.
  def grad_text(b):
    x = jnp.ones((b, 5, 9, 2))
    return jax.jit(jax.grad(lambda x, w: jnp.sum(fn(x, w, (1, 2), ((1, 1), (1, 1)),
                                                    dimension_numbers=NHWC) ** 2),
                            argnums=(0, 1))).lower(x, w).as_text()
  one, four = grad_text(63), grad_text(64)
  assert "lhs_dilation" not in one and "lhs_dilation" not in four
  # forward 1 + two input-gradient phases + weight gradients
  assert one.count("stablehlo.convolution") == 1 + 2 + 1
  assert four.count("stablehlo.convolution") == 1 + 2 + 4


def test_resolve_rows():
  on_cpu = jax.default_backend() == "cpu" and jax.device_count() == 1
  assert conv_lib.resolve_rows(-1) == (16 if on_cpu else 0)
  assert conv_lib.resolve_rows(-1, auto=128) == (128 if on_cpu else 0)
  assert conv_lib.resolve_rows(0, auto=128) == 0
  assert conv_lib.resolve_rows(32, auto=128) == 32
  with pytest.raises(ValueError, match="conv_wgrad_chunk"):
    conv_lib.resolve_rows(-2)


def test_stage1_model_takes_its_whole_batch_as_one_chunk():
  """stage1.conv_wgrad_chunk auto: the batch size (one chunk) on one CPU device, not the
  evaluator FCN's 16 rows (benchmarks/NOTES.md item 19)."""
  from tsgen_jax.models import stage1 as stage1_model
  cfg = base_config()
  cfg.stage1.batch_size = 96
  got = stage1_model.from_config(cfg, 1, 128).vqvae.wgrad_chunk
  assert got == (96 if jax.default_backend() == "cpu" and jax.device_count() == 1 else 0)


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


def _conv_case(seed, shape, kernel, strides, padding, dn):
  """(x, w, g, fwd, spec): random input of (B, H, W, C) ``shape`` (NCHW: the same sizes in
  its layout), a kernel with 5 outputs, an output cotangent, the forward convolution and its
  dimension numbers."""
  kx, kw, kg = jax.random.split(jax.random.key(seed), 3)
  b, h, w_, c = shape
  x = jax.random.normal(kx, shape if dn == NHWC else (b, c, h, w_))
  w = jax.random.normal(kw, (*kernel, c, 5) if dn == NHWC else (5, c, *kernel))
  fwd = _conv_fn(lax.conv_general_dilated, strides, padding, dn)
  g = jax.random.normal(kg, jax.eval_shape(fwd, x, w).shape)
  return x, w, g, fwd, lax.conv_dimension_numbers(x.shape, w.shape, dn)


@pytest.mark.parametrize("shape,kernel,strides,padding,dn", [
    ((3, 5, 32, 4), (3, 4), (1, 2), ((1, 1), (1, 1)), NHWC),  # the encoder's downsampling conv
    ((3, 5, 33, 4), (3, 4), (1, 2), ((1, 1), (1, 1)), NHWC),  # odd length: last frame unread
    ((3, 7, 17, 4), (3, 3), (2, 2), ((1, 1), (1, 1)), NHWC),
    ((3, 7, 17, 4), (3, 5), (2, 3), ((0, 2), (2, 0)), NHWC),  # uneven padding
    ((3, 7, 18, 4), (2, 4), (3, 2), ((0, 0), (3, 1)), NHWC),
    ((3, 7, 17, 4), (1, 2), (1, 3), ((0, 0), (0, 0)), NHWC),  # kernel < stride: zeros
    ((3, 5, 33, 4), (3, 4), (1, 2), ((1, 1), (1, 1)), NCHW),
    ((3, 7, 17, 4), (3, 5), (2, 3), ((0, 2), (2, 0)), NCHW),
    ((3, 7, 17, 4), (1, 2), (1, 3), ((0, 0), (0, 0)), NCHW),
])
def test_strided_input_grad_equals_autodiff(shape, kernel, strides, padding, dn):
  """(B, H, W, C) shape; NCHW cases use the same sizes in their own layout."""
  x, w, g, fwd, spec = _conv_case(2, shape, kernel, strides, padding, dn)
  b, h, w_, c = shape
  got, ref = jax.jit(lambda x, w, g: (  # one compile; eager ops would compile one by one
      conv_lib.strided_conv_input_grad(g, w, x.shape, strides, padding, spec),
      jax.vjp(lambda a: fwd(a, w), x)[1](g)[0]))(x, w, g)
  assert got.shape == x.shape
  np.testing.assert_allclose(got, ref, rtol=1e-5, atol=1e-5 * np.abs(ref).max())
  # Independently, in float64 numpy: scatter g through every kernel tap (NHWC, HWIO).
  x64, w64, g64 = (np.asarray(a, np.float64) for a in (x, w, g))
  if dn != NHWC:
    x64, g64, w64 = x64.transpose(0, 2, 3, 1), g64.transpose(0, 2, 3, 1), w64.transpose(2, 3, 1, 0)
  (ph, _), (pw, _) = padding
  sh, sw = strides
  oh, ow = g64.shape[1:3]
  dx = np.zeros((b, h + 2 * max(kernel) + ph, w_ + 2 * max(kernel) + pw, c))
  for i in range(kernel[0]):
    for j in range(kernel[1]):
      dx[:, i:i + sh * oh:sh, j:j + sw * ow:sw] += np.einsum("bhwo,co->bhwc", g64, w64[i, j])
  dx = dx[:, ph:ph + h, pw:pw + w_]
  np.testing.assert_allclose(got if dn == NHWC else np.asarray(got).transpose(0, 2, 3, 1), dx,
                             rtol=1e-5, atol=1e-5 * np.abs(dx).max())


def test_phase_input_grad_only_where_it_applies():
  """Strided, explicitly padded, undilated convs take it; others keep autodiff's gradient."""
  assert conv_lib.phase_grad_applies((1, 2), ((1, 1), (1, 1)))
  assert not conv_lib.phase_grad_applies((1, 1), ((1, 1), (1, 1)))  # no stride: no dilation
  assert not conv_lib.phase_grad_applies((1, 2), "SAME")
  assert not conv_lib.phase_grad_applies((1, 2), ((1, 1), (1, 1)), rhs_dilation=(1, 2))
  assert not conv_lib.phase_grad_applies((1, 2), ((1, 1), (1, 1)), feature_group_count=2)
  fn = conv_lib.chunked_wgrad_conv(4)
  x, w = jnp.ones((16, 5, 8, 2)), jnp.ones((3, 4, 2, 3))
  grad = lambda f: str(jax.make_jaxpr(jax.grad(  # noqa: E731
      lambda a: jnp.sum(f(a, w, (1, 2), ((1, 1), (1, 1)), dimension_numbers=NHWC))))(x))
  assert "lhs_dilation=(1, 2)" not in grad(fn)
  assert "lhs_dilation=(1, 2)" in grad(conv_lib.chunked_wgrad_conv(4, phase_input_grad=False))
  # A requested output dtype (e.g. float32 from bfloat16 operands) keeps autodiff's gradient.
  mixed = lambda *a, **k: fn(*a, **k, preferred_element_type=jnp.float32)  # noqa: E731
  assert "lhs_dilation=(1, 2)" in grad(mixed)


@pytest.mark.parametrize("size,kernel,pad,expected", [
    (1, 3, (1, 1), (1, 2)),  # the LF branch: the middle row only
    (4, 3, (1, 1), (0, 3)),  # every tap reads data somewhere
    (1, 2, (0, 1), (0, 1)),  # UpsampleTime's odd phase along time at width 1
    (2, 5, (2, 2), (1, 4)),
    (1, 4, (1, 2), (1, 2)),
    (3, 1, (0, 0), (0, 1)),
])
def test_live_taps(size, kernel, pad, expected):
  assert conv_lib.live_taps(size, kernel, *pad) == expected
  # Independently: the taps k with some output o reading input o + k - pad_lo in [0, size).
  n_out = size + sum(pad) - kernel + 1
  live = [k for k in range(kernel)
          if any(0 <= o + k - pad[0] < size for o in range(n_out))]
  assert (live[0], live[-1] + 1) == expected


@pytest.mark.parametrize("shape,kernel,strides,padding,dn", [
    ((6, 1, 9, 4), (3, 3), (1, 1), ((1, 1), (1, 1)), NHWC),  # ResBlock conv at height 1
    ((6, 1, 9, 4), (3, 4), (1, 2), ((1, 1), (1, 1)), NHWC),  # encoder conv, strided time
    ((6, 1, 9, 4), (3, 2), (1, 1), ((1, 1), (0, 1)), NHWC),  # UpsampleTime's odd phase
    ((6, 2, 3, 4), (5, 5), (1, 1), ((2, 2), (3, 1)), NHWC),  # both axes trimmed
    ((6, 4, 1, 1), (3, 3), (1, 1), ((1, 1), (1, 1)), NCHW),
    ((6, 4, 9, 4), (3, 3), (1, 1), ((1, 1), (1, 1)), NHWC),  # nothing to trim
])
@pytest.mark.parametrize("chunk", [0, 2])
def test_trim_dead_taps_equals_padded_conv(shape, kernel, strides, padding, dn, chunk):
  kx, kw, kg = jax.random.split(jax.random.key(3), 3)
  x = jax.random.normal(kx, shape)
  c_in = shape[-1] if dn == NHWC else shape[1]
  w_shape = (*kernel, c_in, 5) if dn == NHWC else (5, c_in, *kernel)
  w = jax.random.normal(kw, w_shape)
  inner = conv_lib.chunked_wgrad_conv(chunk) if chunk else lax.conv_general_dilated
  ref = _conv_fn(lax.conv_general_dilated, strides, padding, dn)
  new = _conv_fn(conv_lib.trim_dead_taps(inner), strides, padding, dn)
  y_ref, vjp_ref = jax.vjp(ref, x, w)
  y_new, vjp_new = jax.vjp(new, x, w)
  assert y_new.shape == y_ref.shape
  np.testing.assert_allclose(y_new, y_ref, rtol=1e-5, atol=1e-5 * np.abs(y_ref).max())
  cot = jax.random.normal(kg, y_ref.shape)
  grads = vjp_new(cot)
  for g_new, g_ref in zip(grads, vjp_ref(cot)):
    np.testing.assert_allclose(g_new, g_ref, rtol=1e-5, atol=1e-5 * np.abs(g_ref).max())
  # A dead tap's weight gradient is exactly zero, as through the padded conv.
  if shape[1] == 1 and dn == NHWC:
    w_grad = np.asarray(grads[1])
    assert not w_grad[0].any() and not w_grad[-1].any()


def test_trim_dead_taps_shrinks_the_compiled_convolution():
  """The LF branch's 3 x 3 conv at height 1 reaches XLA with a 1 x 3 window and no padding
  along the height. (XLA's cost analysis already leaves padding out of its FLOP count, so
  the saving shows in the time only: the LF/HF step 277 -> 240 ms, benchmarks/NOTES.md.)"""
  x = jnp.ones((8, 1, 16, 32))
  w = jnp.ones((3, 3, 32, 32))
  args = ((1, 1), ((1, 1), (1, 1)))
  windows = {}
  for name, fn in [("padded", lax.conv_general_dilated),
                   ("trimmed", conv_lib.trim_dead_taps())]:
    f = jax.jit(lambda x, w, fn=fn: fn(x, w, *args, dimension_numbers=NHWC))
    hlo = f.lower(x, w).compile().as_text()
    windows[name] = re.findall(r"window=\{size=(\S+) pad=(\S+)\}", hlo)
  assert windows == {"padded": [("3x3", "1_1x1_1")], "trimmed": [("1x3", "0_0x1_1")]}


def test_vqvae_lfhf_same_with_and_without_trimming(monkeypatch):
  """The LF/HF VQ-VAE (its LF branch has height 1) gives the same outputs and parameter
  gradients with the dead taps trimmed as through the padded convolutions."""
  import tsgen_jax.models.vqvae as vqvae_lib
  x = jax.random.normal(jax.random.key(4), (64, 1, 64))

  def run(trim):
    if not trim:
      monkeypatch.setattr(vqvae_lib, "trim_dead_taps", lambda fn: fn)
    model = VQVAE(num_channels=1, length=64, dim=8, n_resnet_blocks=1, codebook_size=8,
                  lfhf=True, wgrad_chunk=8)
    variables = jax.jit(lambda k: model.init(k, x, train=True))(jax.random.key(5))

    def loss(params):
      out, _ = model.apply({**variables, "params": params}, x, True,
                           mutable=[k for k in variables if k != "params"])
      return jnp.mean((out["x_hat"] - x) ** 2) + jnp.mean(out["lf/z_e"] ** 2), out["x_hat"]

    (l, x_hat), g = jax.jit(jax.value_and_grad(loss, has_aux=True))(variables["params"])
    monkeypatch.undo()
    return l, x_hat, g

  (l0, x0, g0), (l1, x1, g1) = run(False), run(True)
  np.testing.assert_allclose(l1, l0, rtol=1e-5)
  np.testing.assert_allclose(x1, x0, rtol=1e-4, atol=1e-5)
  assert jax.tree.structure(g1) == jax.tree.structure(g0)
  for a, b in zip(jax.tree.leaves(g0), jax.tree.leaves(g1)):
    np.testing.assert_allclose(b, a, rtol=1e-4, atol=1e-5 * max(float(jnp.abs(a).max()), 1e-3))
  kernel = np.asarray(g1["lf"]["encoder"]["ResBlock_0"]["Conv_0"]["kernel"])
  assert kernel.shape[0] == 3 and not kernel[0].any() and not kernel[2].any() and kernel[1].any()


@pytest.mark.parametrize("shape,kernel,strides,padding,dn", [
    ((3, 5, 9, 4), (3, 3), (1, 1), ((1, 1), (1, 1)), NHWC),  # a ResBlock conv
    ((3, 5, 9, 4), (1, 1), (1, 1), ((0, 0), (0, 0)), NHWC),
    ((3, 5, 32, 4), (3, 4), (1, 2), ((1, 1), (1, 1)), NHWC),  # the encoder's downsampling conv
    ((3, 5, 33, 4), (3, 4), (1, 2), ((1, 1), (1, 1)), NHWC),  # odd length: last frame unread
    ((3, 7, 17, 4), (3, 5), (2, 3), ((0, 2), (2, 0)), NHWC),  # uneven padding
    ((3, 7, 17, 4), (1, 2), (1, 3), ((0, 0), (0, 0)), NHWC),  # kernel < stride
    ((3, 5, 33, 4), (3, 4), (1, 2), ((1, 1), (1, 1)), NCHW),
    ((3, 7, 17, 4), (3, 5), (2, 3), ((0, 2), (2, 0)), NCHW),
])
def test_conv_weight_grad_equals_autodiff(shape, kernel, strides, padding, dn):
  """(B, H, W, C) shape; NCHW cases use the same sizes in their own layout."""
  x, w, g, fwd, spec = _conv_case(3, shape, kernel, strides, padding, dn)
  c = shape[3]
  got, ref = jax.jit(lambda x, w, g: (
      conv_lib.conv_weight_grad(x, g, w.shape, strides, padding, spec),
      jax.vjp(lambda k: fwd(x, k), w)[1](g)[0]))(x, w, g)
  assert got.shape == w.shape
  np.testing.assert_allclose(got, ref, rtol=1e-5, atol=1e-5 * np.abs(ref).max())
  # Independently, in float64 numpy: each tap's gradient is x under that tap times g.
  x64, w64, g64 = (np.asarray(a, np.float64) for a in (x, w, g))
  if dn != NHWC:
    x64, g64 = x64.transpose(0, 2, 3, 1), g64.transpose(0, 2, 3, 1)
  (ph, qh), (pw, qw) = padding
  xp = np.pad(x64, ((0, 0), (ph, qh), (pw, qw), (0, 0)))
  sh, sw = strides
  oh, ow = g64.shape[1:3]
  dw = np.zeros((*kernel, c, 5))
  for i in range(kernel[0]):
    for j in range(kernel[1]):
      dw[i, j] = np.einsum("bhwc,bhwo->co", xp[:, i:i + sh * oh:sh, j:j + sw * ow:sw], g64)
  if dn != NHWC:
    dw = dw.transpose(3, 2, 0, 1)
  np.testing.assert_allclose(got, dw, rtol=1e-5, atol=1e-5 * np.abs(dw).max())


CANONICAL = "dim_labels=b01f_01io->b01f"


def _loop_convolutions(conv_fn, padding) -> list[str]:
  """dim_labels of the convolutions XLA:CPU compiles for two gradient steps of a conv stack
  (3 x 3, 1 x 1 'SAME' and strided) inside a rolled ``lax.scan``."""
  def loss(ws, x):
    h = conv_fn(x, ws[0], (1, 1), padding, dimension_numbers=NHWC)
    h = conv_fn(jnp.tanh(h), ws[1], (1, 1), "SAME", dimension_numbers=NHWC)
    h = conv_fn(jnp.tanh(h), ws[2], (1, 2), ((1, 1), (1, 1)), dimension_numbers=NHWC)
    return jnp.sum(h ** 2)

  def steps(ws, xs):
    return lax.scan(lambda w, x: (jax.tree.map(lambda a, d: a - 1e-3 * d, w,
                                               jax.grad(loss)(w, x)), None), ws, xs)[0]

  ws = (jnp.ones((3, 3, 4, 4)), jnp.ones((1, 1, 4, 4)), jnp.ones((3, 4, 4, 4)))
  xs = jnp.ones((2, 8, 5, 16, 4))
  hlo = jax.jit(steps).lower(ws, xs).compile().as_text()
  assert " while(" in hlo  # still a rolled loop
  return re.findall(r" convolution\([^\n]*?(dim_labels=[^,]*)", hlo)


@pytest.mark.skipif(jax.default_backend() != "cpu", reason="XLA:CPU's layout rewriting")
def test_canonical_gradients_keep_every_loop_convolution_in_the_eigen_layout():
  """Inside a loop XLA:CPU does not rewrite autodiff's gradient convolutions into NHWC x HWIO
  (so they run in its naive kernels, ~40x slower); ``canonical=True`` writes them so."""
  plain = _loop_convolutions(lax.conv_general_dilated, ((1, 1), (1, 1)))
  assert any(d != CANONICAL for d in plain)  # the problem this guards against
  ours = _loop_convolutions(conv_lib.chunked_wgrad_conv(0, canonical=True), ((1, 1), (1, 1)))
  assert len(ours) >= 6 and all(d == CANONICAL for d in ours), ours


@pytest.mark.parametrize("rows", [0, 4])
@pytest.mark.parametrize("kernel,strides,padding", [
    ((3, 3), (1, 1), ((1, 1), (1, 1))),
    ((1, 1), (1, 1), "SAME"),
    ((3, 3), (1, 1), "SAME"),
    ((3, 4), (1, 2), ((1, 1), (1, 1))),
    ((3, 2), (1, 1), ((1, 1), (1, 0))),
])
def test_canonical_conv_gradients_equal_autodiff(rows, kernel, strides, padding):
  kx, kw, kg = jax.random.split(jax.random.key(4), 3)
  x = jax.random.normal(kx, (16, 5, 9, 6))
  w = jax.random.normal(kw, (*kernel, 6, 7)) * 0.3
  ref = _conv_fn(lax.conv_general_dilated, strides, padding)
  new = _conv_fn(conv_lib.chunked_wgrad_conv(rows, canonical=True), strides, padding)
  cot = jax.random.normal(kg, ref(x, w).shape)
  (y_ref, g_ref), (y_new, g_new) = jax.jit(lambda x, w, c: [
      (f(x, w), jax.vjp(f, x, w)[1](c)) for f in (ref, new)])(x, w, cot)
  np.testing.assert_array_equal(y_new, y_ref)
  for a, b in zip(g_new, g_ref):
    np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-5 * np.abs(b).max())
  assert "custom_vjp" in str(jax.make_jaxpr(new)(x, w))


def _numpy_conv(x, w, padding):
  """Stride-1 convolution of x (B, S..., C) by w (K..., C, O), float64 loops over the taps."""
  nsp = x.ndim - 2
  x, w = np.asarray(x, np.float64), np.asarray(w, np.float64)
  xp = np.pad(x, ((0, 0), *padding, (0, 0)))
  out = [xp.shape[1 + a] - w.shape[a] + 1 for a in range(nsp)]
  y = np.zeros((x.shape[0], *out, w.shape[-1]))
  for tap in np.ndindex(*w.shape[:nsp]):
    window = xp[(slice(None), *(slice(t, t + n) for t, n in zip(tap, out)))]
    y += window @ w[tap]
  return y


@pytest.mark.parametrize("shape,kernel,padding", [
    ((4, 5, 9, 6), (3, 2), ((1, 1), (1, 0))),  # UpsampleTime's even phase
    ((4, 5, 9, 6), (3, 2), ((1, 1), (0, 1))),  # and its odd one
    ((4, 5, 9, 6), (3, 3), ((1, 1), (1, 1))),
    ((4, 7, 9, 6), (3, 2), ((0, 2), (2, 0))),  # uneven padding, output larger than input
    ((4, 5, 9, 6), (1, 1), ((0, 0), (0, 0))),
    ((4, 17, 6), (5,), ((2, 2),)),  # one spatial axis
])
def test_tap_products_equal_numpy_convolution_with_autodiff_gradients(shape, kernel, padding):
  """``tap_products`` (one matmul, then shifted sums): values against float64 loops over the
  taps, input and kernel gradients against autodiff through ``lax.conv_general_dilated``."""
  nsp = len(kernel)
  kx, kw, kg = jax.random.split(jax.random.key(7), 3)
  x = jax.random.normal(kx, shape)
  w = jax.random.normal(kw, (*kernel, shape[-1], 2)) * 0.3
  dn = lax.conv_dimension_numbers(x.shape, w.shape, ("NHWC", "HWIO", "NHWC") if nsp == 2
                                  else ("NWC", "WIO", "NWC"))
  ref = lambda x, w: lax.conv_general_dilated(x, w, (1,) * nsp, padding,  # noqa: E731
                                              dimension_numbers=dn)
  new = lambda x, w: conv_lib.tap_products(x, w, padding)  # noqa: E731
  y = jax.jit(new)(x, w)
  expected = _numpy_conv(x, w, padding)
  assert y.shape == expected.shape
  np.testing.assert_allclose(y, expected, rtol=1e-5, atol=1e-5)
  cot = jax.random.normal(kg, y.shape)
  for a, b in zip(jax.jit(lambda x, w, c: jax.vjp(new, x, w)[1](c))(x, w, cot),
                  jax.jit(lambda x, w, c: jax.vjp(ref, x, w)[1](c))(x, w, cot)):
    np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-5 * np.abs(b).max())


@pytest.mark.parametrize("kernel,strides,out,dn,used", [
    ((3, 2), (1, 1), 2, NHWC, True),
    ((3, 2), (1, 1), 4, NHWC, True),  # 6 taps x 4 outputs = 2 x 12 input channels
    ((3, 2), (1, 1), 5, NHWC, False),  # 30 columns > 2 x 12
    ((3, 4), (1, 2), 2, NHWC, False),  # strided
    ((3, 2), (1, 1), 2, NCHW, False),  # not channels-last
])
def test_tap_products_conv_only_for_narrow_unit_stride_channels_last(kernel, strides, out, dn,
                                                                     used):
  """The wrapper takes a convolution only where its products are at most twice as wide as the
  input (taps * O <= 2 * C), with unit strides, channels last; others go to the wrapped
  function, unchanged."""
  x = jnp.ones((2, 5, 8, 12) if dn == NHWC else (2, 12, 5, 8))
  w = jnp.ones((*kernel, 12, out) if dn == NHWC else (out, 12, *kernel))
  f = _conv_fn(conv_lib.tap_products_conv(), strides, ((1, 1), (1, 0)), dn)
  ref = _conv_fn(lax.conv_general_dilated, strides, ((1, 1), (1, 0)), dn)
  prims = {e.primitive.name for e in jax.make_jaxpr(f)(x, w).jaxpr.eqns}
  assert ("conv_general_dilated" not in prims) == used
  np.testing.assert_allclose(f(x, w), ref(x, w), rtol=1e-6)


@pytest.mark.skipif(jax.default_backend() != "cpu", reason="the CPU model's convolutions")
def test_vqvae_decoder_output_convolutions_are_tap_products():
  """On CPU the stage-1 model has no convolution with its 2 output channels left (the
  decoder's last UpsampleTime), and every other convolution still is one."""
  x = jnp.ones((4, 1, 64))
  model = VQVAE(num_channels=1, length=64, dim=8, n_resnet_blocks=1, codebook_size=8)
  variables = model.init(jax.random.key(0), x, train=False)
  jaxpr = jax.make_jaxpr(lambda v: model.apply(v, x, False))(variables)
  outs = [e.outvars[0].aval.shape[-1] for e in all_eqns(jaxpr.jaxpr)
          if e.primitive.name == "conv_general_dilated"]
  assert outs and 2 not in outs and set(outs) == {8}
