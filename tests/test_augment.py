"""Tests for tsgen_jax.augment: shapes, keys, identities and the statistic each one changes."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from tsgen_jax import augment
from tsgen_jax import stft as stft_lib

L = 128
NAMES = sorted(augment.AUGMENTATIONS)

ZERO_STRENGTH = {
    "flip": dict(p_time=0.0, p_sign=0.0),
    "jitter": dict(sigma=0.0),
    "amplitude_resize": dict(sigma=0.0),
    "slope": dict(max_slope=0.0),
    "window_warp": dict(ratio=0.0),
    "magnitude_warp": dict(sigma=0.0),
    "slice_shuffle": dict(num_segments=1),
    "crop_resize": dict(ratio=0.0),
    "stft_mask": dict(p_band=0.0, p_block=0.0),
    "phase_perturb": dict(sigma=0.0),
}


# Parameters that fix shapes or control flow; every other (float) parameter is passed traced,
# which both checks that it can be and lets one compilation serve all its values.
STATIC = {"ratio", "block_time_ratio", "num_segments", "num_knots", "n_fft", "hop", "window",
          "band_width", "block_freq", "per_channel"}


@functools.lru_cache(maxsize=None)
def _batched(name, frozen_static, dynamic_names):
  fn = functools.partial(augment.AUGMENTATIONS[name], **dict(frozen_static))

  def apply(ks, x, dyn):
    return jax.vmap(lambda k: fn(k, x, **dict(zip(dynamic_names, dyn))))(ks)

  return jax.jit(apply)


def run(name, keys, x, **kw):
  """Applies augmentation `name` to the single series x once per key: (K, C, L).

  Tests use K = 256 keys and x of shape (2, L) throughout so that compilations are shared.
  """
  kw = {**augment.default_params()[name].to_dict(), **kw}
  static = tuple(sorted((k, v) for k, v in kw.items() if k in STATIC))
  dyn_names = tuple(sorted(k for k in kw if k not in STATIC))
  dyn = tuple(jnp.float32(kw[k]) for k in dyn_names)
  return np.asarray(_batched(name, static, dyn_names)(keys, jnp.asarray(x), dyn))


def keys(seed=0, n=256):
  return jax.random.split(jax.random.PRNGKey(seed), n)


def series(c=2, length=L, seed=0):
  """A smooth-ish random series (random walk plus noise), float32 (C, L)."""
  rng = np.random.default_rng(seed)
  x = 0.3 * np.cumsum(rng.normal(size=(c, length)), -1) + rng.normal(size=(c, length))
  return x.astype(np.float32)


def ramp():
  """(2, L): t and -t."""
  t = np.arange(L, dtype=np.float32)
  return np.stack([t, -t])


@pytest.mark.parametrize("name", NAMES)
def test_shape_dtype_and_keys(name):
  x = series()
  k = keys()
  out = run(name, k, x)
  assert out.shape == (256,) + x.shape and out.dtype == np.float32
  assert np.all(np.isfinite(out))
  # Same key -> same output, whatever the key's position in the batch.
  np.testing.assert_array_equal(run(name, k[::-1], x)[::-1], out)
  # Different keys -> different outputs (flip has 4 outcomes, 1 the identity; slice_shuffle
  # 24; crop_resize 52 crop positions; stft_mask has 1/4 no-ops and few mask positions).
  distinct = len({o.tobytes() for o in out})
  few = {"flip": 4, "slice_shuffle": 20, "stft_mask": 100, "crop_resize": 50}
  assert distinct >= few.get(name, 256)
  unchanged = np.mean([np.array_equal(o, x) for o in out])
  if name in ("flip", "stft_mask"):  # p = 0.5 for each of two independent operations
    assert 0.15 < unchanged < 0.35
  else:
    assert unchanged < 0.1


@pytest.mark.parametrize("name", NAMES)
def test_identity_at_zero_strength(name):
  x = series(seed=1)
  np.testing.assert_array_equal(run(name, keys(), x, **ZERO_STRENGTH[name]),
                                np.broadcast_to(x, (256,) + x.shape))


def test_window_warp_unit_scale_is_identity():
  x = series(seed=2)
  out = run("window_warp", keys(), x, scale_low=1.0, scale_high=1.0)
  np.testing.assert_array_equal(out, np.broadcast_to(x, out.shape))


def test_flip():
  x = series(seed=3)
  np.testing.assert_array_equal(run("flip", keys(), x, p_time=1.0, p_sign=0.0),
                                np.broadcast_to(x[:, ::-1], (256,) + x.shape))
  np.testing.assert_array_equal(run("flip", keys(), x, p_time=0.0, p_sign=1.0),
                                np.broadcast_to(-x, (256,) + x.shape))
  out = run("flip", keys(), x)
  rev = np.array([np.array_equal(np.abs(o), np.abs(x[:, ::-1])) for o in out])
  neg = np.array([np.array_equal(o, -x) or np.array_equal(o, -x[:, ::-1]) for o in out])
  assert 0.4 < rev.mean() < 0.6 and 0.4 < neg.mean() < 0.6
  assert 0.15 < (rev & neg).mean() < 0.35  # independent draws


def test_jitter_residual_std():
  x = series(seed=4)
  res = run("jitter", keys(), x) - x
  assert abs(res.std() - 0.05) < 0.001 and abs(res.mean()) < 0.001
  res = run("jitter", keys(), x, sigma=0.3) - x
  assert abs(res.std() - 0.3) < 0.006
  assert abs(np.corrcoef(res[:, 0, :-1].ravel(), res[:, 0, 1:].ravel())[0, 1]) < 0.02


def test_amplitude_resize_factor_spread():
  x = series(seed=5)
  ratio = run("amplitude_resize", keys(), x) / x
  factors = ratio[:, 0, 0]  # one factor per series
  np.testing.assert_allclose(ratio, np.broadcast_to(factors[:, None, None], ratio.shape),
                             rtol=1e-5)
  assert abs(factors.mean() - 1.0) < 0.04 and abs(factors.std() - 0.2) < 0.025
  per_ch = run("amplitude_resize", keys(), x, per_channel=True) / x
  assert np.all(np.abs(per_ch[:, 0, 0] - per_ch[:, 1, 0]) > 0)
  np.testing.assert_allclose(per_ch, np.broadcast_to(per_ch[..., :1], per_ch.shape), rtol=1e-5)


def test_slope_adds_linear_trend_in_range():
  x = series(seed=6)
  t = np.arange(L)
  diff = (run("slope", keys(), x) - x).astype(np.float64)  # (K, C, L)
  s = diff[:, 0, -1] / t[-1]
  # The same linear trend through 0 on both channels.
  np.testing.assert_allclose(diff, np.broadcast_to(s[:, None, None] * t, diff.shape),
                             atol=2e-5)
  assert np.all(np.abs(s) <= 0.005 + 1e-7) and np.abs(s).max() > 0.0045
  assert abs(s.mean()) < 0.0005 and abs(s.std() - 0.005 / np.sqrt(3)) < 0.0004  # uniform


def test_window_warp_is_a_monotone_time_warp():
  x = ramp()
  out = run("window_warp", keys(), x)
  # Endpoints kept, time only moves forward, both channels follow the same warp.
  np.testing.assert_allclose(out[:, :, 0], np.broadcast_to(x[:, 0], (256, 2)), atol=1e-4)
  np.testing.assert_allclose(out[:, :, -1], np.broadcast_to(x[:, -1], (256, 2)), atol=1e-3)
  assert np.all(np.diff(out[:, 0], axis=-1) >= -1e-4)
  np.testing.assert_allclose(out[:, 1], -out[:, 0], atol=1e-4)
  change = np.abs(out - x).max(axis=(1, 2))
  assert np.all(change > 0) and np.median(change) > 5
  # Input samples per output step: r / s inside the window and r outside, where
  # r = (L - 1 + w (s - 1)) / (L - 1) with w = 51, s ~ U(0.9, 2).
  slopes = np.diff(out[:, 0], axis=-1)
  assert 0.7 - 1e-3 < slopes.min() < 0.75 and 1.35 < slopes.max() < 1.41


def test_magnitude_warp_smooth_curve():
  ones = np.ones((2, L), np.float32)
  curves = run("magnitude_warp", keys(), ones)  # (K, 2, L): the curves themselves
  np.testing.assert_array_equal(curves[:, 0], curves[:, 1])  # one curve per series
  c = curves[:, 0]
  assert abs(c[:, 0].std() - 0.2) < 0.03 and abs(c[:, 0].mean() - 1) < 0.03
  knot_t = np.round(np.linspace(0, L - 1, 6)).astype(int)
  assert np.all(np.abs(c[:, knot_t].std(0) - 0.2) < 0.04)
  # Smooth: second differences are tiny compared with the curve's variation.
  assert np.abs(np.diff(c, 2, axis=-1)).max() < 0.03 < np.median(c.std(1))
  per_ch = run("magnitude_warp", keys(), ones, per_channel=True)
  assert np.all(np.abs(per_ch[:, 0] - per_ch[:, 1]).max(-1) > 0)


def test_slice_shuffle_permutes_segments():
  x = series(seed=8)
  out = run("slice_shuffle", keys(), x)
  np.testing.assert_array_equal(np.sort(out, axis=-1),
                                np.broadcast_to(np.sort(x, axis=-1), out.shape))
  out = run("slice_shuffle", keys(), ramp())
  np.testing.assert_array_equal(out[:, 1], -out[:, 0])  # channels shuffled together
  segs = out[:, 0].reshape(256, 4, L // 4)
  assert np.all(np.diff(segs, axis=-1) == 1)  # contiguous runs of 32 samples
  np.testing.assert_array_equal(np.sort(segs[:, :, 0], -1),
                                np.broadcast_to([0, 32, 64, 96], (256, 4)))
  assert len({tuple(s) for s in segs[:, :, 0]}) == 24  # all orders occur
  # Unequal segments (128 = 43 + 42 + 43) still give a permutation of the samples.
  out = run("slice_shuffle", keys(), ramp(), num_segments=3)
  np.testing.assert_array_equal(np.sort(out[:, 0], -1), np.broadcast_to(np.arange(L),
                                                                        (256, L)))


def test_crop_resize_is_a_linear_zoom():
  out = run("crop_resize", keys(), ramp())
  np.testing.assert_array_equal(out[:, 1], -out[:, 0])
  crop = L - round(0.4 * L)  # the crop keeps 60% of the samples
  starts = out[:, 0, 0]
  np.testing.assert_allclose(starts, np.round(starts), atol=1e-4)
  assert starts.min() == 0 and starts.max() == L - crop and len(set(starts)) > 40
  expected = starts[:, None] + np.arange(L) * (crop - 1) / (L - 1)
  np.testing.assert_allclose(out[:, 0], expected, atol=1e-3)


_stft256 = jax.jit(lambda x: stft_lib.stft(x, 8))


def _spectrum(x):
  """(C, L) or (256, C, L) -> (2C, F, T) or (256, 2C, F, T) numpy STFT (n_fft 8)."""
  if x.ndim == 2:
    return np.asarray(_stft256(jnp.broadcast_to(x, (256,) + x.shape)))[0]
  return np.asarray(_stft256(jnp.asarray(x)))


@jax.jit
def _mask_patterns(ks, p_band, p_block):
  return jax.vmap(lambda k: augment.stft_mask_pattern(k, 5, stft_lib.num_frames(L, 8),
                                                      p_band=p_band, p_block=p_block))(ks)


def test_stft_mask_removes_energy_where_masked():
  x = np.random.default_rng(9).normal(size=(2, L)).astype(np.float32)
  n_freq, n_frames = 5, stft_lib.num_frames(L, 8)
  s_in = _spectrum(x) ** 2
  for kw, inside, outside in [(dict(p_band=1.0, p_block=0.0), 0.4, 0.65),
                              (dict(p_band=0.0, p_block=1.0), 0.2, 0.8)]:
    k = keys(seed=1)
    out = run("stft_mask", k, x, **kw)
    s_out = _spectrum(out) ** 2
    masks = np.asarray(_mask_patterns(k, kw["p_band"], kw["p_block"]))
    if kw["p_band"]:
      assert np.all(masks.all(axis=2).sum(1) == 1)  # one whole frequency row
      assert len({m.tobytes() for m in masks}) == n_freq
    else:
      assert np.all(masks.sum((1, 2)) == 2 * round(0.25 * n_frames))  # a 2 x 16 block
    for m, so in zip(masks[:16], s_out[:16]):
      assert (so * m).sum() < inside * (s_in * m).sum()
      assert (so * ~m).sum() > outside * (s_in * ~m).sum()


def test_phase_perturb_keeps_magnitude_approximately():
  x = np.random.default_rng(10).normal(size=(2, L)).astype(np.float32)

  def magnitude(s):
    s = s.reshape(2, 2, *s.shape[1:])
    return np.hypot(s[:, 0], s[:, 1])

  s_in = _spectrum(x)
  for sigma in (0.1, 0.45):
    for s_out in _spectrum(run("phase_perturb", keys(), x, sigma=sigma))[:8]:
      change = np.linalg.norm(s_out - s_in) / np.linalg.norm(s_in)
      mag_change = (np.linalg.norm(magnitude(s_out) - magnitude(s_in))
                    / np.linalg.norm(magnitude(s_in)))
      assert 0.1 * sigma < change < sigma
      assert mag_change < 0.8 * change  # mostly a change of phase


def test_make_view_fn_jit_batch_and_independence():
  x = np.broadcast_to(series(seed=11), (16, 2, L)).copy()  # 16 identical samples
  names = "amplitude_resize,slope,jitter"  # the config's default
  view = jax.jit(augment.make_view_fn(names, augment.default_params()))
  out = np.asarray(view(jax.random.PRNGKey(0), x))
  assert out.shape == x.shape and out.dtype == np.float32 and np.all(np.isfinite(out))
  assert len({o.tobytes() for o in out}) == 16  # each sample has its own draw
  np.testing.assert_array_equal(np.asarray(view(jax.random.PRNGKey(0), x)), out)
  assert not np.array_equal(np.asarray(view(jax.random.PRNGKey(1), x)), out)


def test_make_view_fn_names_and_params():
  x = jnp.asarray(np.stack([series(seed=12)] * 4))
  key = jax.random.PRNGKey(3)
  for names in ("", "none", [], None):
    np.testing.assert_array_equal(augment.make_view_fn(names, None)(key, x), x)
  with pytest.raises(ValueError, match="known.*amplitude_resize"):
    augment.make_view_fn("jitter,bogus", None)
  params = augment.default_params()
  params.jitter.sigma = 0.0
  np.testing.assert_array_equal(augment.make_view_fn(["jitter"], params)(key, x), x)
  # Sub-dicts may be partial or plain dicts; the rest comes from the defaults.
  view = augment.make_view_fn(" jitter , jitter", {"jitter": {"sigma": 0.1}})
  res = np.asarray(view(key, x)) - np.asarray(x)
  assert abs(res.std() - 0.1 * np.sqrt(2)) < 0.015  # two independent draws
  assert set(augment.default_params().keys()) == set(augment.AUGMENTATIONS)
