"""Stochastic time-series augmentations for the self-supervised stage 1 (NC-VQVAE).

Every augmentation is a pure function ``fn(key, x, **params) -> x'`` on ONE series ``x`` of
shape (C, L): same shape and dtype out, jit-able and vmappable (all randomness comes from
``key``; integer-valued parameters such as window lengths are static Python numbers). Each
has a strength parameter whose zero value makes it the exact identity (bit for bit):

==================  ============================================  ===========================
name                what it does                                  identity at
==================  ============================================  ===========================
flip                time reversal w.p. p_time, sign flip w.p.      p_time = p_sign = 0
                    p_sign (independently)
jitter              x + N(0, sigma^2) per sample                   sigma = 0
amplitude_resize    x * (1 + N(0, sigma^2)), one factor/series     sigma = 0
slope               x + U(-max_slope, max_slope) * arange(L)       max_slope = 0
window_warp         a window of round(ratio L) samples at a        ratio = 0 (or scale range
                    random start is stretched by U(lo, hi), then   [1, 1])
                    the series is resampled back to L (linear)
magnitude_warp      x * cubic spline through num_knots + 2 evenly  sigma = 0
                    spaced knots with values N(1, sigma^2)
slice_shuffle       cut into num_segments equal(ish) segments and  num_segments <= 1
                    concatenate them in a random order
crop_resize         crop L - round(ratio L) consecutive samples    ratio = 0
                    at a random start, resize back to L (linear)
stft_mask           STFT, zero a random band of frequency rows     p_band = p_block = 0
                    (w.p. p_band) and a random time-frequency
                    block (w.p. p_block), inverse STFT to L
phase_perturb       STFT, rotate the phase of every interior bin   sigma = 0
                    by N(0, sigma^2), inverse STFT to L
==================  ============================================  ===========================

``crop_resize``'s ``ratio`` is the fraction of the series REMOVED by the crop (0.4 keeps 60%
of the samples), so that ratio 0 is the identity like every other strength parameter.

The two STFT-domain augmentations add ``istft(S' - S)`` to ``x`` instead of returning
``istft(S')``: the two agree to the round-trip error (~5e-7) but the former is exactly ``x``
when nothing is modified.

:func:`make_view_fn` turns a list of names plus :func:`default_params`-shaped parameters into
a batched ``view_fn(key, x (B, C, L))`` that draws independent augmentations per sample.
"""

from __future__ import annotations

import functools
from typing import Any, Callable, Mapping, Sequence

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import scipy.interpolate

from tsgen_jax import stft as stft_lib

Array = jax.Array


# ------------------------------------------------------------------------------- helpers


def _interp(x: Array, pos: Array) -> Array:
  """Linear interpolation of each row of x at fractional sample positions.

  Exact (bit for bit) at integer positions, including the last sample.

  Args:
    x: (C, L) series.
    pos: (M,) positions in sample units, clipped to [0, L - 1].

  Returns:
    (C, M) interpolated values in x's dtype.
  """
  length = x.shape[-1]
  pos = jnp.clip(pos, 0.0, length - 1.0)
  lo = jnp.clip(jnp.floor(pos).astype(jnp.int32), 0, length - 1)
  hi = jnp.minimum(lo + 1, length - 1)
  frac = (pos - lo).astype(x.dtype)
  return x[:, lo] * (1 - frac) + x[:, hi] * frac


def _normal(key: Array, shape: tuple[int, ...], dtype=jnp.float32) -> Array:
  """N(0, 1) draws of a given shape, drawn flat (much faster to compile under vmap)."""
  return jax.random.normal(key, (int(np.prod(shape)),), dtype).reshape(shape)


def _randint(u: Array, n: int) -> Array:
  """Integer uniform on [0, n) from u ~ U[0, 1) (int32 scalar or array)."""
  return jnp.clip(jnp.floor(u * n).astype(jnp.int32), 0, max(n - 1, 0))


def _draw_shape(x: Array, per_channel: bool) -> tuple[int, int]:
  """Shape (C or 1, 1) of a per-series (or per-channel) random draw for x (C, L)."""
  return (x.shape[0] if per_channel else 1, 1)


@functools.lru_cache(maxsize=64)
def _spline_matrix(length: int, num_knots: int) -> np.ndarray:
  """(L, num_knots + 2) matrix mapping knot values to a cubic spline sampled at arange(L).

  Knots sit at ``linspace(0, L - 1, num_knots + 2)``; the spline (scipy's not-a-knot cubic)
  is linear in the knot values, so a random curve is one matmul with this constant.
  """
  n = num_knots + 2
  knots_t = np.linspace(0.0, length - 1.0, n)
  if n < 4:  # too few knots for a cubic: piecewise linear
    basis = np.stack([np.interp(np.arange(length), knots_t, e) for e in np.eye(n)], 1)
  else:
    basis = scipy.interpolate.CubicSpline(knots_t, np.eye(n))(np.arange(length))
  return basis.astype(np.float32)


# ------------------------------------------------------------------- time-domain augments


def flip(key: Array, x: Array, p_time: float = 0.5, p_sign: float = 0.5) -> Array:
  """Time reversal with probability p_time and sign flip with probability p_sign.

  Args:
    key: PRNG key.
    x: (C, L) series.
    p_time: probability of reversing time (all channels together).
    p_sign: probability of negating the series (independent of the reversal).

  Returns:
    (C, L) series, same dtype.
  """
  u = jax.random.uniform(key, (2,))
  x = jnp.where(u[0] < p_time, x[:, ::-1], x)
  return jnp.where(u[1] < p_sign, -x, x)


def jitter(key: Array, x: Array, sigma: float = 0.05) -> Array:
  """Additive i.i.d. gaussian noise N(0, sigma^2) on every sample: (C, L) -> (C, L)."""
  return (x + sigma * _normal(key, x.shape, x.dtype)).astype(x.dtype)


def amplitude_resize(key: Array, x: Array, sigma: float = 0.2,
                     per_channel: bool = False) -> Array:
  """Scales the series by 1 + N(0, sigma^2).

  Args:
    key: PRNG key.
    x: (C, L) series.
    sigma: std of the scale factor around 1.
    per_channel: one factor per channel instead of one per series.

  Returns:
    (C, L) series, same dtype.
  """
  eps = _normal(key, _draw_shape(x, per_channel), x.dtype)
  return (x * (1 + sigma * eps)).astype(x.dtype)


def slope(key: Array, x: Array, max_slope: float = 0.005,
          per_channel: bool = False) -> Array:
  """Adds a linear trend s * t, s ~ U(-max_slope, max_slope), t = arange(L).

  Args:
    key: PRNG key.
    x: (C, L) series.
    max_slope: half-width of the slope distribution (per sample step).
    per_channel: one slope per channel instead of one per series.

  Returns:
    (C, L) series, same dtype.
  """
  u = jax.random.uniform(key, (_draw_shape(x, per_channel)[0],)).reshape(-1, 1)
  s = max_slope * (2.0 * u - 1.0)
  t = jnp.arange(x.shape[-1], dtype=jnp.float32)
  return (x + s * t).astype(x.dtype)


def window_warp(key: Array, x: Array, ratio: float = 0.4, scale_low: float = 0.9,
                scale_high: float = 2.0) -> Array:
  """Stretches a random window in time, then resamples the whole series back to L.

  Viewing the series as a piecewise-linear function on [0, L - 1], the window
  ``[start, start + w]`` with ``w = round(ratio * L)`` and an integer start uniform in
  [0, L - 1 - w] is stretched in time by ``s ~ U(scale_low, scale_high)`` (the warped series
  spans ``L - 1 + w (s - 1)``), and the warped series is linearly resampled at L evenly
  spaced points. Implemented as one piecewise-linear map of output onto input positions,
  so the first and last samples are kept.

  Args:
    key: PRNG key.
    x: (C, L) series, L >= 2.
    ratio: window length as a fraction of L (static).
    scale_low, scale_high: range of the time-scale factor.

  Returns:
    (C, L) series, same dtype.
  """
  length = x.shape[-1]
  w = int(round(ratio * length))
  if w <= 0:
    return x
  w = min(w, length - 1)
  u = jax.random.uniform(key, (2,))
  # The series spans [0, L - 1] in continuous time; the window [start, start + w] fits in it.
  start = _randint(u[0], length - w).astype(jnp.float32)
  s = scale_low + (scale_high - scale_low) * u[1]
  warped_span = (length - 1.0) + w * (s - 1.0)
  p = jnp.arange(length, dtype=jnp.float32) * (warped_span / (length - 1.0))
  src = jnp.where(p < start, p,
                  jnp.where(p < start + w * s, start + (p - start) / s, p - w * (s - 1.0)))
  return _interp(x, src).astype(x.dtype)


def magnitude_warp(key: Array, x: Array, sigma: float = 0.2, num_knots: int = 4,
                   per_channel: bool = False) -> Array:
  """Multiplies by a smooth random curve (cubic spline through N(1, sigma^2) knots).

  Args:
    key: PRNG key.
    x: (C, L) series.
    sigma: std of the knot values around 1.
    num_knots: interior knots (static); knots at linspace(0, L - 1, num_knots + 2).
    per_channel: an independent curve per channel instead of one per series.

  Returns:
    (C, L) series, same dtype.
  """
  basis = jnp.asarray(_spline_matrix(x.shape[-1], int(num_knots)))  # (L, K)
  z = _normal(key, (_draw_shape(x, per_channel)[0], basis.shape[1]))
  curve = 1.0 + sigma * jnp.matmul(z, basis.T, precision=jax.lax.Precision.HIGHEST)
  return (x * curve).astype(x.dtype)


def slice_shuffle(key: Array, x: Array, num_segments: int = 4) -> Array:
  """Cuts the series into segments and concatenates them in a random order.

  Segment boundaries are ``round(linspace(0, L, num_segments + 1))`` (static); the order is
  a uniform random permutation (which may be the identity permutation).

  Args:
    key: PRNG key.
    x: (C, L) series.
    num_segments: number of segments (static); <= 1 is the identity.

  Returns:
    (C, L) series holding the same values, same dtype.
  """
  length = x.shape[-1]
  n = int(num_segments)
  if n <= 1:
    return x
  bounds = np.round(np.linspace(0, length, n + 1)).astype(np.int32)
  starts, lens = jnp.asarray(bounds[:-1]), jnp.asarray(np.diff(bounds))
  perm = jnp.argsort(jax.random.uniform(key, (n,)))  # uniform random permutation
  lens_out = lens[perm]
  ends_out = jnp.cumsum(lens_out)
  i = jnp.arange(length)
  seg = jnp.searchsorted(ends_out, i, side="right")
  src = starts[perm[seg]] + i - (ends_out[seg] - lens_out[seg])
  return x[:, src]


def crop_resize(key: Array, x: Array, ratio: float = 0.4) -> Array:
  """Random crop of L - round(ratio * L) consecutive samples, linearly resized back to L.

  ``ratio`` is the fraction of the series cut away (0 is the identity); the crop start is
  uniform over all valid positions. The crop keeps at least 2 samples.

  Args:
    key: PRNG key.
    x: (C, L) series, L >= 2.
    ratio: fraction removed, in [0, 1) (static).

  Returns:
    (C, L) series, same dtype.
  """
  length = x.shape[-1]
  crop = max(2, min(length, length - int(round(ratio * length))))
  if crop == length:
    return x
  start = _randint(jax.random.uniform(key, ()), length - crop + 1).astype(jnp.float32)
  pos = start + jnp.arange(length, dtype=jnp.float32) * ((crop - 1.0) / (length - 1.0))
  return _interp(x, pos).astype(x.dtype)


# -------------------------------------------------------------------- STFT-domain augments


def _stft_edit(x: Array, edit: Callable[[Array, Array], tuple[Array, Array]], n_fft: int,
               hop: int, window: str) -> Array:
  """x + istft(S' - S) where (re', im') - (re, im) = edit(re, im); re, im are (C, F, T)."""
  c, length = x.shape
  s = stft_lib.stft(x[None].astype(jnp.float32), n_fft, hop or None, window)[0]
  f, t = s.shape[-2:]
  s = s.reshape(c, 2, f, t)
  d_re, d_im = edit(s[:, 0], s[:, 1])
  delta = jnp.stack([d_re, d_im], axis=1).reshape(1, 2 * c, f, t)
  y = x + stft_lib.istft(delta, n_fft, length, hop or None, window)[0]
  return y.astype(x.dtype)


def stft_mask_pattern(key: Array, n_freq: int, n_frames: int, p_band: float = 0.5,
                      band_width: int = 1, p_block: float = 0.5, block_freq: int = 2,
                      block_time_ratio: float = 0.25) -> Array:
  """The boolean time-frequency mask that :func:`stft_mask` zeroes for this key.

  Band: with probability p_band, ``band_width`` consecutive frequency rows at a random
  offset, over all frames. Block: with probability p_block, ``block_freq`` consecutive rows
  by ``max(1, round(block_time_ratio * T))`` consecutive frames at a random position
  (no block when block_time_ratio is 0).

  Args:
    key: PRNG key (the same key given to :func:`stft_mask`).
    n_freq, n_frames: STFT grid size F, T (static).
    p_band, band_width, p_block, block_freq, block_time_ratio: as in :func:`stft_mask`.

  Returns:
    (F, T) bool array, True where the spectrum is zeroed.
  """
  u = jax.random.uniform(key, (5,))  # one draw: cheaper to compile than five
  rows = jnp.arange(n_freq)[:, None]
  cols = jnp.arange(n_frames)[None, :]
  bw = min(int(band_width), n_freq)
  f0 = _randint(u[0], n_freq - bw + 1)
  band = (rows >= f0) & (rows < f0 + bw) & (u[1] < p_band)
  bf = min(int(block_freq), n_freq)
  bt = 0 if block_time_ratio <= 0 else min(n_frames, max(1, round(block_time_ratio * n_frames)))
  f1 = _randint(u[2], n_freq - bf + 1)
  t1 = _randint(u[3], n_frames - bt + 1)
  block = ((rows >= f1) & (rows < f1 + bf) & (cols >= t1) & (cols < t1 + bt)
           & (u[4] < p_block))
  return band | block


def stft_mask(key: Array, x: Array, n_fft: int = 8, hop: int = 0, window: str = "hann",
              p_band: float = 0.5, band_width: int = 1, p_block: float = 0.5,
              block_freq: int = 2, block_time_ratio: float = 0.25) -> Array:
  """Band and block masking in the STFT domain, back to exactly L samples.

  The mask (:func:`stft_mask_pattern`, same for all channels) zeroes real and imaginary
  parts of the selected bins; the result is ``x + istft(S_masked - S)``.

  Args:
    key: PRNG key.
    x: (C, L) series, L > n_fft // 2.
    n_fft, hop, window: STFT settings (hop 0 = n_fft // 4), static.
    p_band: probability of masking a frequency band.
    band_width: rows in the band (static).
    p_block: probability of masking a time-frequency block.
    block_freq: rows in the block (static).
    block_time_ratio: block width as a fraction of the T frames (static).

  Returns:
    (C, L) series, same dtype.
  """
  n_freq = n_fft // 2 + 1
  n_frames = stft_lib.num_frames(x.shape[-1], n_fft, hop or None)
  zero = stft_mask_pattern(key, n_freq, n_frames, p_band, band_width, p_block, block_freq,
                           block_time_ratio)

  def edit(re, im):
    return -jnp.where(zero, re, 0.0), -jnp.where(zero, im, 0.0)

  return _stft_edit(x, edit, n_fft, hop, window)


def phase_perturb(key: Array, x: Array, n_fft: int = 8, hop: int = 0, window: str = "hann",
                  sigma: float = 0.45) -> Array:
  """Rotates the phase of every STFT bin by N(0, sigma^2), keeping its magnitude.

  Bins of the DC row (and the Nyquist row for even n_fft) are left alone: their values are
  real for a real signal and a one-sided inverse would drop the imaginary part. Because a
  modified STFT is generally not the STFT of any signal, the magnitudes of the output's STFT
  match the input's only approximately. The default sigma ~ the std of NC-VQVAE's
  U(-pi/4, pi/4) phase change.

  Args:
    key: PRNG key.
    x: (C, L) series, L > n_fft // 2.
    n_fft, hop, window: STFT settings (hop 0 = n_fft // 4), static.
    sigma: std of the phase rotation in radians.

  Returns:
    (C, L) series, same dtype.
  """
  n_freq = n_fft // 2 + 1
  n_frames = stft_lib.num_frames(x.shape[-1], n_fft, hop or None)
  theta = sigma * _normal(key, (x.shape[0], n_freq, n_frames))
  interior = np.ones((n_freq, 1), bool)
  interior[0] = False
  if n_fft % 2 == 0:
    interior[-1] = False
  theta = jnp.where(jnp.asarray(interior), theta, 0.0)
  cos_m1, sin = jnp.cos(theta) - 1.0, jnp.sin(theta)

  def edit(re, im):
    return re * cos_m1 - im * sin, re * sin + im * cos_m1

  return _stft_edit(x, edit, n_fft, hop, window)


# ------------------------------------------------------------------ registry and views

AUGMENTATIONS: dict[str, Callable[..., Array]] = {
    "flip": flip,
    "jitter": jitter,
    "amplitude_resize": amplitude_resize,
    "slope": slope,
    "window_warp": window_warp,
    "magnitude_warp": magnitude_warp,
    "slice_shuffle": slice_shuffle,
    "crop_resize": crop_resize,
    "stft_mask": stft_mask,
    "phase_perturb": phase_perturb,
}


def default_params() -> ml_collections.ConfigDict:
  """Default parameters: one sub-dict per augmentation name (NC-VQVAE defaults)."""
  p = ml_collections.ConfigDict()
  p.flip = dict(p_time=0.5, p_sign=0.5)
  p.jitter = dict(sigma=0.05)
  p.amplitude_resize = dict(sigma=0.2, per_channel=False)
  p.slope = dict(max_slope=0.005, per_channel=False)
  p.window_warp = dict(ratio=0.4, scale_low=0.9, scale_high=2.0)
  p.magnitude_warp = dict(sigma=0.2, num_knots=4, per_channel=False)
  p.slice_shuffle = dict(num_segments=4)
  p.crop_resize = dict(ratio=0.4)
  p.stft_mask = dict(n_fft=8, hop=0, window="hann", p_band=0.5, band_width=1, p_block=0.5,
                     block_freq=2, block_time_ratio=0.25)
  p.phase_perturb = dict(n_fft=8, hop=0, window="hann", sigma=0.45)
  return p


def parse_names(names: str | Sequence[str] | None) -> list[str]:
  """Augmentation names from a comma-separated string or a sequence ('' / 'none' -> []).

  Raises:
    ValueError: for a name not in :data:`AUGMENTATIONS`.
  """
  if names is None:
    return []
  if isinstance(names, str):
    names = names.split(",")
  out = [n.strip() for n in names if n.strip() and n.strip().lower() != "none"]
  unknown = [n for n in out if n not in AUGMENTATIONS]
  if unknown:
    raise ValueError(f"unknown augmentation(s) {unknown}; known: {sorted(AUGMENTATIONS)}")
  return out


def _params_for(name: str, params: Mapping[str, Any] | None) -> dict[str, Any]:
  """Defaults for ``name`` updated with ``params[name]`` when present."""
  kw = default_params()[name].to_dict()
  if params is not None and name in params:
    given = params[name]
    kw.update(given.to_dict() if isinstance(given, ml_collections.ConfigDict) else given)
  return kw


def make_view_fn(names: str | Sequence[str] | None,
                 params: Mapping[str, Any] | None = None) -> Callable[[Array, Array], Array]:
  """Builds a batched augmentation pipeline.

  Args:
    names: augmentation names applied in order, as a comma-separated string or sequence;
      empty (or 'none') gives the identity. Repeats are allowed.
    params: mapping (e.g. :func:`default_params`) from name to keyword parameters; missing
      names or keys fall back to the defaults.

  Returns:
    ``view_fn(key, x)`` mapping x (B, C, L) to (B, C, L): augmentation i uses
    ``fold_in(key, i)`` split into B per-sample keys and is vmapped over the batch, so every
    sample gets an independent draw. Jit-able.

  Raises:
    ValueError: for an unknown augmentation name (the message lists the known ones).
  """
  stages = [(AUGMENTATIONS[n], _params_for(n, params)) for n in parse_names(names)]

  def view_fn(key: Array, x: Array) -> Array:
    if x.ndim != 3:
      raise ValueError(f"expected x of shape (B, C, L), got {x.shape}")
    for i, (fn, kw) in enumerate(stages):
      keys = jax.random.split(jax.random.fold_in(key, i), x.shape[0])
      x = jax.vmap(functools.partial(fn, **kw))(keys, x)
    return x

  return view_fn
