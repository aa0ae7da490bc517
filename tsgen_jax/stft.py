"""Short-time Fourier transform with an exact inverse for every length.

Conventions (REFERENCE.md, matching ``torch.stft(center=True, pad_mode='reflect',
onesided=True, normalized=False)``):

* frames of ``n_fft`` samples every ``hop`` samples (default ``n_fft // 4``);
* the signal is reflect-padded by ``n_fft // 2`` on both sides (``boundary='even'``);
* one-sided spectrum, ``F = n_fft // 2 + 1`` rows, ``T = 1 + L // hop`` frames
  (for ``hop`` dividing ``n_fft``);
* unnormalised: ``X[f, t] = sum_k w[k] x[t * hop + k - n_fft//2] exp(-2 pi i f k / n_fft)``;
* real and imaginary parts are stacked as channels per input channel:
  ``(B, C, L) -> (B, 2C, F, T)`` with channel ``2c`` the real and ``2c + 1`` the imaginary
  part of input channel ``c``.

Both functions are built on :mod:`jax.scipy.signal` and are jit- and grad-safe. Unlike the
reference implementation (which loses the last sample for odd lengths), :func:`istft` takes
the original length and returns exactly that many samples.
"""

from __future__ import annotations

import jax.lax as lax
import jax.numpy as jnp
import jax.scipy.signal as jsignal
import numpy as np

WINDOWS = ("hann", "boxcar")


def default_hop(n_fft: int) -> int:
  """The hop length used when none is given: ``max(1, n_fft // 4)``."""
  return max(1, n_fft // 4)


def window_array(window: str, n_fft: int) -> np.ndarray:
  """Periodic window of length ``n_fft`` as float32: 'hann' (torch.hann_window) or 'boxcar'."""
  if window == "hann":
    return np.sin(np.pi * np.arange(n_fft) / n_fft).astype(np.float32) ** 2
  if window in ("boxcar", "rect", "rectangular"):
    return np.ones(n_fft, np.float32)
  raise ValueError(f"unknown STFT window {window!r}; expected one of {WINDOWS}")


def num_frames(length: int, n_fft: int, hop: int | None = None) -> int:
  """Number of STFT frames T for a series of ``length`` samples."""
  hop = hop or default_hop(n_fft)
  return 1 + (length + 2 * (n_fft // 2) - n_fft) // hop


def stft(x, n_fft: int, hop: int | None = None, window: str = "hann"):
  """STFT of a batch of multichannel series.

  Args:
    x: (B, C, L) real array, L >= n_fft // 2 + 1 (reflect padding needs it).
    n_fft: frame length; F = n_fft // 2 + 1 frequency rows.
    hop: hop length, default n_fft // 4.
    window: 'hann' (periodic) or 'boxcar'.

  Returns:
    (B, 2C, F, T) array: real/imaginary parts interleaved per input channel.
  """
  hop = hop or default_hop(n_fft)
  b, c, length = x.shape
  if length <= n_fft // 2:
    raise ValueError(f"series length {length} is too short for n_fft={n_fft}: "
                     f"need at least {n_fft // 2 + 1} samples")
  w = window_array(window, n_fft)
  _, _, z = jsignal.stft(x, window=jnp.asarray(w, x.dtype), nperseg=n_fft,
                         noverlap=n_fft - hop, boundary="even", padded=False,
                         return_onesided=True, detrend=False)
  z = z * float(w.sum())  # undo scipy's 'spectrum' scaling: torch convention
  s = jnp.stack([z.real, z.imag], axis=2)  # (B, C, 2, F, T)
  return s.reshape(b, 2 * c, s.shape[-2], s.shape[-1]).astype(x.dtype)


def istft(s, n_fft: int, length: int, hop: int | None = None, window: str = "hann"):
  """Inverse of :func:`stft`, returning exactly ``length`` samples.

  Args:
    s: (B, 2C, F, T) array as produced by :func:`stft` (or a model's estimate of one).
    n_fft, hop, window: as given to :func:`stft`.
    length: the original series length L.

  Returns:
    (B, C, length) real array.
  """
  hop = hop or default_hop(n_fft)
  b, c2, f, t = s.shape
  if c2 % 2:
    raise ValueError(f"expected an even channel count (re/im pairs), got {c2}")
  w = window_array(window, n_fft)
  z = s.reshape(b, c2 // 2, 2, f, t)
  z = lax.complex(z[:, :, 0].astype(jnp.float32), z[:, :, 1].astype(jnp.float32))
  z = z / float(w.sum())
  # boundary=False keeps the padded margins, so the slice below is exact for odd L too;
  # overlap-add covers n_fft + hop * (T - 1) >= L + n_fft // 2 samples.
  _, y = jsignal.istft(z, window=jnp.asarray(w, s.dtype), nperseg=n_fft,
                       noverlap=n_fft - hop, input_onesided=True, boundary=False)
  pad = n_fft // 2
  y = y[..., pad:pad + length]
  if y.shape[-1] != length:
    raise ValueError(f"STFT grid with T={t} frames cannot produce {length} samples")
  return y.astype(s.dtype)
