"""STFT conventions, exact round trips for any length, and agreement with scipy/torch."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import scipy.signal

from tsgen_jax import stft as stft_lib


@pytest.mark.parametrize("length", [24, 60, 65, 101, 128, 140, 500, 1024])
@pytest.mark.parametrize("channels", [1, 3])
@pytest.mark.parametrize("window", ["hann", "boxcar"])
def test_round_trip_exact_length(length, channels, window):
  x = np.random.default_rng(length + channels).standard_normal((2, channels, length))
  x = x.astype(np.float32)

  @jax.jit  # as in the train step; eager dispatch compiles every op per shape (~4x slower)
  def round_trip(x):
    s = stft_lib.stft(x, 8, window=window)
    return s, stft_lib.istft(s, 8, length, window=window)

  s, y = round_trip(jnp.asarray(x))
  assert s.shape == (2, 2 * channels, 5, stft_lib.num_frames(length, 8))
  assert y.shape == x.shape
  assert float(jnp.max(jnp.abs(y - x))) < 1e-5


def _torch_convention_stft(x, n_fft, hop, w):
  """numpy: reflect-pad n_fft//2, frame every hop, window, rfft (torch.stft center=True)."""
  xp = np.pad(x, n_fft // 2, mode="reflect")
  t = 1 + (len(xp) - n_fft) // hop
  frames = np.stack([xp[i * hop:i * hop + n_fft] * w for i in range(t)], axis=1)
  return np.fft.rfft(frames, axis=0)


@pytest.mark.parametrize("n_fft", [8, 16])
def test_matches_torch_convention_and_channel_layout(n_fft):
  rng = np.random.default_rng(0)
  x = rng.standard_normal((2, 2, 77)).astype(np.float32)
  s = np.asarray(stft_lib.stft(jnp.asarray(x), n_fft))
  w = stft_lib.window_array("hann", n_fft).astype(np.float64)
  for b in range(2):
    for c in range(2):
      z = _torch_convention_stft(x[b, c].astype(np.float64), n_fft, n_fft // 4, w)
      np.testing.assert_allclose(s[b, 2 * c], z.real, atol=1e-4)
      np.testing.assert_allclose(s[b, 2 * c + 1], z.imag, atol=1e-4)


def test_agrees_with_scipy_signal():
  x = np.random.default_rng(1).standard_normal(64)
  w = stft_lib.window_array("hann", 8).astype(np.float64)
  _, _, z = scipy.signal.stft(x, window=w, nperseg=8, noverlap=6, boundary="even",
                              padded=False)
  s = np.asarray(stft_lib.stft(jnp.asarray(x[None, None].astype(np.float32)), 8))
  np.testing.assert_allclose(s[0, 0], z.real * w.sum(), atol=1e-4)
  np.testing.assert_allclose(s[0, 1], z.imag * w.sum(), atol=1e-4)


def test_jit_and_grad():
  x = jnp.asarray(np.random.default_rng(2).standard_normal((3, 1, 65)).astype(np.float32))
  f = jax.jit(lambda x: jnp.sum(stft_lib.istft(stft_lib.stft(x, 8), 8, 65) ** 2))
  g = jax.grad(f)(x)
  # istft(stft(x)) == x, so the gradient of sum(x^2) is 2x.
  np.testing.assert_allclose(np.asarray(g), 2 * np.asarray(x), atol=1e-4)


def test_too_short_series_raises():
  with pytest.raises(ValueError, match="too short"):
    stft_lib.stft(jnp.zeros((1, 1, 4)), 8)
