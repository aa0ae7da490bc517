"""ROCKET random convolutional kernel features (Dempster et al. 2020) and FID on them.

Each kernel has a length in {7, 9, 11}, N(0, 1) weights centred per input channel, a U(-1, 1)
bias, a dilation floor(2^U(0, log2((L - 1) / (length - 1)))) and, with probability 1/2, zero
padding ((length - 1) * dilation) // 2 on both sides. Each kernel sees all C channels. Per
kernel we keep the proportion of positive values (PPV) and the maximum of its output.

Vectorisation: a kernel of length l is embedded, centred, in 11 taps (zeros elsewhere) and
applied 'SAME'-style (zero padding 5 * dilation), which yields an output of length L whose
positions [h, L - h), h = (l - 1) * dilation / 2, are exactly the unpadded kernel's outputs and
whose all L positions are the padded kernel's outputs; a (K, L) validity mask selects them. The
dilation then only changes gather indices, so every kernel shares one computation: chunks of 50
kernels are scanned, each gathering (B, C, 50, L, 11) windows and contracting them with the
weights. One small compilation serves any kernel set (a conv per distinct dilation compiled
~10x slower on CPU and ran no faster).
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np

from tsgen_jax.evaluation import fid as fid_lib
from tsgen_jax.evaluation._rng import numpy_rng

LENGTHS = (7, 9, 11)
TAPS = max(LENGTHS)
KERNEL_CHUNK = 50  # kernels per scan step
WINDOW_BUDGET = 18_000_000  # floats in one (B, C, Kc, L, 11) window tensor (~72 MB)


@dataclasses.dataclass(frozen=True)
class RocketKernels:
  """A set of K kernels for series of shape (C, L).

  Attributes:
    weights: (K, C, 11) float32, each kernel centred within 11 taps.
    biases: (K,) float32; lengths, dilations: (K,) int32; padded: (K,) bool.
  """
  weights: np.ndarray
  biases: np.ndarray
  lengths: np.ndarray
  dilations: np.ndarray
  padded: np.ndarray
  in_channels: int
  length: int

  @property
  def num_kernels(self) -> int:
    return len(self.biases)


def rocket_kernels(seed_or_key=0, num_kernels: int = 1000, length: int = 128,
                   in_channels: int = 1) -> RocketKernels:
  """Draws ``num_kernels`` random ROCKET kernels for series (C=in_channels, L=length).

  Args:
    seed_or_key: int seed or JAX PRNG key (sampling happens on the host, in NumPy).
  """
  if length < 2:
    raise ValueError(f"ROCKET needs series of length >= 2, got {length}")
  rng = numpy_rng(seed_or_key)
  k, c = num_kernels, in_channels
  lengths = rng.choice(LENGTHS, size=k).astype(np.int32)
  w = rng.standard_normal((k, c, TAPS)).astype(np.float32)
  offsets = (TAPS - lengths) // 2
  tap = np.arange(TAPS)[None, :]
  inside = (tap >= offsets[:, None]) & (tap < (offsets + lengths)[:, None])  # (K, 11)
  w = np.where(inside[:, None, :], w, 0.0)
  w -= np.where(inside[:, None, :], w.sum(-1, keepdims=True) / lengths[:, None, None], 0.0)
  biases = rng.uniform(-1.0, 1.0, size=k).astype(np.float32)
  max_exp = np.log2(max(length - 1, 1) / (lengths - 1))
  dilations = np.floor(2.0 ** rng.uniform(0.0, np.maximum(max_exp, 0.0))).astype(np.int32)
  dilations = np.maximum(dilations, 1)
  padded = rng.integers(0, 2, size=k).astype(bool)
  padded |= (lengths - 1) * dilations > length - 1  # series shorter than the kernel: pad it
  return RocketKernels(w.astype(np.float32), biases, lengths, dilations, padded, c, length)


def _valid_mask(kernels: RocketKernels) -> np.ndarray:
  """(K, L) bool: output positions of the 'SAME' 11-tap conv that belong to each kernel."""
  half = (kernels.lengths - 1) * kernels.dilations // 2
  half = np.where(kernels.padded, 0, half)
  pos = np.arange(kernels.length)[None, :]
  return (pos >= half[:, None]) & (pos < kernels.length - half[:, None])


@jax.jit
def _transform(x, weights, biases, masks, dilations):
  """ROCKET (PPV, max) of x (B, C, L) for kernel chunks scanned in sequence.

  Args:
    x: (B, C, L); weights: (G, Kc, C, 11); biases, dilations: (G, Kc); masks: (G, Kc, L).

  Returns:
    ppv, max: each (G, B, Kc).
  """
  length = x.shape[-1]
  pad = 5 * max(1, (length - 1) // (min(LENGTHS) - 1))  # 5 * the largest possible dilation
  xp = jnp.pad(x, ((0, 0), (0, 0), (pad, pad)))
  taps = jnp.arange(TAPS) - TAPS // 2

  def chunk(_, args):
    w, b, m, d = args
    idx = pad + jnp.arange(length)[None, :, None] + taps[None, None, :] * d[:, None, None]
    windows = xp[:, :, idx]  # (B, C, Kc, L, 11)
    out = jnp.einsum("bckjt,kct->bkj", windows, w,
                     precision=jax.lax.Precision.HIGHEST) + b[None, :, None]
    ppv = jnp.sum((out > 0) & m, axis=-1) / jnp.sum(m, axis=-1)
    return None, (ppv, jnp.max(jnp.where(m, out, -jnp.inf), axis=-1))

  return jax.lax.scan(chunk, None, (weights, biases, masks, dilations))[1]


def rocket_features(kernels: RocketKernels, x: np.ndarray) -> np.ndarray:
  """ROCKET features (N, 2K) of x (N, C, L): columns 2k and 2k+1 are kernel k's PPV and max."""
  x = np.asarray(x, np.float32)
  c, length = kernels.in_channels, kernels.length
  if x.ndim != 3 or x.shape[1:] != (c, length):
    raise ValueError(f"x must be (N, {c}, {length}), got {x.shape}")
  k = kernels.num_kernels
  kc = min(KERNEL_CHUNK, k)
  groups = -(-k // kc)
  extra = groups * kc - k  # dummy kernels (zero weights, full mask) pad the last chunk

  def chunked(a, fill):
    a = np.concatenate([a, np.full((extra,) + a.shape[1:], fill, a.dtype)])
    return jnp.asarray(a.reshape((groups, kc) + a.shape[1:]))

  args = (chunked(kernels.weights, 0.0), chunked(kernels.biases, 0.0),
          chunked(_valid_mask(kernels), True), chunked(kernels.dilations, 1))
  batch = int(np.clip(WINDOW_BUDGET // (c * kc * length * TAPS), 1, max(len(x), 1)))
  feats = np.zeros((len(x), 2 * k), np.float32)
  for start in range(0, len(x), batch):
    part = x[start:start + batch]
    ppv, mx = _transform(np.pad(part, ((0, batch - len(part)), (0, 0), (0, 0))), *args)
    # (G, B, Kc) -> (B, G * Kc), kernel order.
    ppv = np.asarray(ppv).transpose(1, 0, 2).reshape(batch, -1)[:len(part), :k]
    mx = np.asarray(mx).transpose(1, 0, 2).reshape(batch, -1)[:len(part), :k]
    feats[start:start + len(part), 0::2] = ppv
    feats[start:start + len(part), 1::2] = mx
  return feats


def rocket_fid(x_real: np.ndarray, x_gen: np.ndarray, num_kernels: int = 1000,
               seed=0) -> float:
  """FID between ROCKET features of x_real (N, C, L) and x_gen (M, C, L).

  Features are standardised with the real set's per-feature mean and std (PPV and max live on
  very different scales, and otherwise a few large max-features dominate the distance); features
  that are constant on the real set (std < 1e-8, e.g. PPV always 0 or 1) are dropped.
  """
  x_real, x_gen = np.asarray(x_real, np.float32), np.asarray(x_gen, np.float32)
  if x_real.ndim != 3 or x_gen.shape[1:] != x_real.shape[1:]:
    raise ValueError(f"need (N, C, L) sets of equal (C, L), got {x_real.shape}, {x_gen.shape}")
  kernels = rocket_kernels(seed, num_kernels, x_real.shape[2], x_real.shape[1])
  f_real = rocket_features(kernels, x_real).astype(np.float64)
  f_gen = rocket_features(kernels, x_gen).astype(np.float64)
  mu, sd = f_real.mean(axis=0), f_real.std(axis=0)
  keep = sd > 1e-8
  return fid_lib.fid_from_features((f_real[:, keep] - mu[keep]) / sd[keep],
                                   (f_gen[:, keep] - mu[keep]) / sd[keep])
