"""Time-frequency VQ-VAE (TimeVQVAE stage 1), NHWC throughout.

x (B, C, L) -> STFT (B, 2C, F, T) -> NHWC (B, F, T, 2C) -> encoder: conv blocks with kernel
(3, 4) and stride (1, 2) that halve time only, then residual blocks -> z (B, F, W, D) with
W ~ token_width -> VQ -> decoder (mirror, upsampling time by sub-pixel convs, resized to the STFT grid)
-> ISTFT -> x_hat (B, C, L) of exactly the input length.

With ``lfhf=True`` (TimeVQVAE's split), a low-frequency branch sees frequency row 0 only and a
high-frequency branch the rest; each has its own encoder, codebook and decoder, and
x_hat = ISTFT(LF) + ISTFT(HF) (the ISTFT is linear, so this is ISTFT of the stacked rows).
"""

from __future__ import annotations

import math
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from tsgen_jax import stft as stft_lib
from tsgen_jax.models.conv import (canonical_default, chunked_wgrad_conv, resolve_rows,
                                    tap_products_conv, trim_dead_taps)
from tsgen_jax.models.vq import VectorQuantizer

BN_MOMENTUM = 0.9


def num_downsamples(num_frames: int, token_width: int) -> int:
  """Stride-2 blocks that bring ``num_frames`` STFT frames down to about ``token_width``."""
  return max(1, int(round(math.log2(max(num_frames / token_width, 1.0)))))


def latent_width(num_frames: int, n_down: int) -> int:
  """Width after ``n_down`` convs with kernel 4, stride 2, padding 1."""
  w = num_frames
  for _ in range(n_down):
    w = (w + 2 - 4) // 2 + 1
  return w


def _bn(train):
  return nn.BatchNorm(use_running_average=not train, momentum=BN_MOMENTUM, epsilon=1e-5)


def _conv(features, kernel_size, wgrad_chunk: int, **kwargs):
  """nn.Conv whose weight gradient is summed over batch chunks of ``wgrad_chunk`` rows
  (0: XLA's own) and whose kernel taps that meet only padding are skipped; on CPU its
  gradient convolutions are written in the NHWC x HWIO form that XLA:CPU's Eigen kernels
  take, also inside a ``lax.scan`` of train steps (models/conv.py, ``canonical``), and a
  convolution with few output channels is one matrix product and shifted sums
  (``tap_products_conv``)."""
  canonical = canonical_default()
  conv = chunked_wgrad_conv(wgrad_chunk, canonical=canonical)
  if canonical:  # on CPU, the decoder's last convolutions (2 output channels) as products
    conv = tap_products_conv(conv)
  return nn.Conv(features, kernel_size, conv_general_dilated=trim_dead_taps(conv), **kwargs)


class ResBlock(nn.Module):
  """TimeVQVAE's residual block: x + conv1x1(LReLU(BN(conv3x3(LReLU(x))))), then BN.

  Neither convolution carries a bias (both are followed by BatchNorm): BN removes it anyway,
  and a parameter with an exactly-zero gradient would only turn float noise into Adam-sized
  updates (and break sharded == unsharded).
  """
  dim: int
  dtype: Any = jnp.float32
  wgrad_chunk: int = 0

  @nn.compact
  def __call__(self, x, train: bool):
    h = _conv(self.dim, (3, 3), self.wgrad_chunk, padding=1, use_bias=False,
              dtype=self.dtype)(nn.leaky_relu(x))
    h = nn.leaky_relu(_bn(train)(h))
    h = _conv(self.dim, (1, 1), self.wgrad_chunk, use_bias=False, dtype=self.dtype)(h)
    return _bn(train)(x + h)


class Encoder(nn.Module):
  """(B, F, T, 2C) -> (B, F, W, dim)."""
  dim: int
  n_down: int
  n_resnet_blocks: int
  dtype: Any = jnp.float32
  wgrad_chunk: int = 0

  @nn.compact
  def __call__(self, x, train: bool):
    for _ in range(self.n_down):
      x = _conv(self.dim, (3, 4), self.wgrad_chunk, strides=(1, 2), padding=((1, 1), (1, 1)),
                use_bias=False, dtype=self.dtype)(x)
      x = nn.leaky_relu(_bn(train)(x))
    for _ in range(self.n_resnet_blocks):
      x = ResBlock(self.dim, self.dtype, self.wgrad_chunk)(x, train)
    return _conv(self.dim, (1, 1), self.wgrad_chunk, dtype=self.dtype)(x)


class UpsampleTime(nn.Module):
  """A transposed convolution with kernel (3, 4), stride (1, 2), padding (1, 1) (PyTorch
  convention: the time axis doubles), written as two (3, 2) convolutions, one per output
  phase, interleaved in time.

  Output frame 2i reads input frames (i-1, i) and frame 2i+1 reads (i, i+1): the same
  arithmetic as the transposed conv, without the dilated-input convolution whose gradient
  XLA:CPU runs ~100x slower. (B, H, W, C) -> (B, H, 2W, features).
  """
  features: int
  use_bias: bool = True
  dtype: Any = jnp.float32
  wgrad_chunk: int = 0

  @nn.compact
  def __call__(self, x):
    conv = lambda pad, name: _conv(self.features, (3, 2), self.wgrad_chunk,  # noqa
                                   padding=((1, 1), pad), use_bias=self.use_bias,
                                   dtype=self.dtype, name=name)
    even = conv((1, 0), "even")(x)
    odd = conv((0, 1), "odd")(x)
    b, h, w, c = even.shape
    return jnp.stack([even, odd], axis=3).reshape(b, h, 2 * w, c)


class Decoder(nn.Module):
  """(B, F, W, dim) -> (B, F, T, out_channels), resized to the STFT grid (F, T)."""
  dim: int
  n_down: int
  n_resnet_blocks: int
  out_channels: int
  grid: tuple[int, int]
  dtype: Any = jnp.float32
  wgrad_chunk: int = 0

  @nn.compact
  def __call__(self, z, train: bool):
    x = _conv(self.dim, (1, 1), self.wgrad_chunk, dtype=self.dtype)(z)
    for _ in range(self.n_resnet_blocks):
      x = ResBlock(self.dim, self.dtype, self.wgrad_chunk)(x, train)
    for _ in range(self.n_down - 1):
      x = UpsampleTime(self.dim, use_bias=False, dtype=self.dtype, wgrad_chunk=self.wgrad_chunk)(x)
      x = nn.leaky_relu(_bn(train)(x))
    x = UpsampleTime(self.out_channels, dtype=self.dtype, wgrad_chunk=self.wgrad_chunk)(x)
    x = x.astype(jnp.float32)
    b, _, _, c = x.shape
    return jax.image.resize(x, (b, *self.grid, c), method="linear")


class Branch(nn.Module):
  """Encoder, quantiser and decoder for one band of the spectrogram."""
  dim: int
  n_down: int
  n_resnet_blocks: int
  out_channels: int
  grid: tuple[int, int]
  codebook_size: int
  ema: bool
  decay: float
  dead_code_restart: bool
  dead_code_threshold: float
  dtype: Any = jnp.float32
  wgrad_chunk: int = 0

  def setup(self):
    self.encoder = Encoder(self.dim, self.n_down, self.n_resnet_blocks, self.dtype,
                           self.wgrad_chunk)
    self.vq = VectorQuantizer(self.codebook_size, self.dim, self.ema, self.decay,
                              self.dead_code_restart, self.dead_code_threshold)
    self.decoder = Decoder(self.dim, self.n_down, self.n_resnet_blocks, self.out_channels,
                           self.grid, self.dtype, self.wgrad_chunk)

  def __call__(self, s, train: bool):
    z = self.encoder(s, train).astype(jnp.float32)
    out = self.vq(z, train)
    out["z_e"] = z
    out["s_hat"] = self.decoder(out["z_q"], train)
    return out

  def encode(self, s, train: bool = False):
    return self.encoder(s, train).astype(jnp.float32)

  def decode_indices(self, indices, train: bool = False):
    return self.decoder(self.vq.lookup(indices), train)

  def codebook(self):
    return self.vq.codebook


class VQVAE(nn.Module):
  """The stage-1 tokenizer. See the module docstring.

  Attributes:
    num_channels, length: C and L of the input series.
    Other fields: the ``config.stage1`` / ``config.stft`` values of the same names.
  """
  num_channels: int
  length: int
  n_fft: int = 8
  hop: int = 0
  window: str = "hann"
  dim: int = 64
  n_resnet_blocks: int = 4
  token_width: int = 8
  codebook_size: int = 32
  ema: bool = True
  decay: float = 0.9
  dead_code_restart: bool = False
  dead_code_threshold: float = 1e-3
  lfhf: bool = False
  dtype: Any = jnp.float32
  wgrad_chunk: int = 0  # rows per batch chunk of the conv weight gradients (models/conv.py)

  @property
  def hop_length(self) -> int:
    return self.hop or stft_lib.default_hop(self.n_fft)

  @property
  def grid(self) -> tuple[int, int]:
    """(F, T) of the STFT."""
    return (self.n_fft // 2 + 1, stft_lib.num_frames(self.length, self.n_fft, self.hop_length))

  @property
  def n_down(self) -> int:
    return num_downsamples(self.grid[1], self.token_width)

  def token_grids(self) -> dict[str, tuple[int, int]]:
    """(H, W) token grid per branch: the branch's frequency rows by the latent width."""
    w = latent_width(self.grid[1], self.n_down)
    return {n: (stop - start, w) for n, (start, stop) in self.band_rows().items()}

  @property
  def branch_names(self) -> tuple[str, ...]:
    return ("lf", "hf") if self.lfhf else ("main",)

  def band_rows(self) -> dict[str, tuple[int, int]]:
    """Frequency rows [start, stop) of the spectrogram each branch sees and reconstructs."""
    f = self.grid[0]
    return {"lf": (0, 1), "hf": (1, f)} if self.lfhf else {"main": (0, f)}

  def setup(self):
    t = self.grid[1]
    self.branches = {
        name: Branch(dim=self.dim, n_down=self.n_down, n_resnet_blocks=self.n_resnet_blocks,
                     out_channels=2 * self.num_channels, grid=(stop - start, t),
                     codebook_size=self.codebook_size, ema=self.ema, decay=self.decay,
                     dead_code_restart=self.dead_code_restart,
                     dead_code_threshold=self.dead_code_threshold, dtype=self.dtype,
                     wgrad_chunk=self.wgrad_chunk, name=name)
        for name, (start, stop) in self.band_rows().items()}

  # -- transforms ------------------------------------------------------------------------
  def to_tf(self, x):
    """(B, C, L) series -> (B, F, T, 2C) NHWC spectrogram."""
    s = stft_lib.stft(x, self.n_fft, self.hop_length, self.window)
    return jnp.transpose(s, (0, 2, 3, 1))

  def to_time(self, s):
    """(B, F, T, 2C) spectrogram -> (B, C, L) series of exactly the input length."""
    return stft_lib.istft(jnp.transpose(s, (0, 3, 1, 2)), self.n_fft, self.length,
                          self.hop_length, self.window)

  def _assemble(self, parts):
    """Concatenates per-branch row blocks {branch: (B, f_b, T, 2C)} into (B, F, T, 2C)."""
    return jnp.concatenate([parts[n] for n in self.branch_names], axis=1)

  # -- model -----------------------------------------------------------------------------
  def __call__(self, x, train: bool = False):
    """Full pass. x (B, C, L) -> dict with ``x_hat`` (B, C, L), ``s`` and ``s_hat``
    (B, F, T, 2C), and per branch ``<name>/...`` VQ outputs (indices (B, H, W), z_e, z_q,
    losses, perplexity, usage)."""
    s = self.to_tf(x)
    out = {"s": s}
    for name, (start, stop) in self.band_rows().items():
      for k, v in self.branches[name](s[:, start:stop], train).items():
        out[f"{name}/{k}"] = v
    out["s_hat"] = self._assemble({n: out[f"{n}/s_hat"] for n in self.branch_names})
    out["x_hat"] = self.to_time(out["s_hat"])
    return out

  def encode(self, x, train: bool = False):
    """Continuous latents before quantisation: {branch: (B, H, W, D)}."""
    s = self.to_tf(x)
    return {n: self.branches[n].encode(s[:, a:b], train) for n, (a, b) in self.band_rows().items()}

  def tokenize(self, x):
    """Token indices {branch: int32 (B, H, W)} of series x (B, C, L), eval mode."""
    out = self(x, train=False)
    return {n: out[f"{n}/indices"] for n in self.branch_names}

  def decode_tokens(self, tokens):
    """Series (B, C, L) from token indices {branch: (B, H, W)}, eval mode."""
    return self.to_time(self._assemble(
        {n: self.branches[n].decode_indices(tokens[n]) for n in self.branch_names}))

  def codebooks(self):
    """{branch: (K, D)} codebooks."""
    return {n: self.branches[n].codebook() for n in self.branch_names}


def from_config(cfg, num_channels: int, length: int) -> VQVAE:
  """Builds the VQVAE described by a full config for (C, L) series."""
  s1, vq = cfg.stage1, cfg.stage1.vq
  return VQVAE(num_channels=num_channels, length=length, n_fft=cfg.stft.n_fft,
               hop=cfg.stft.hop, window=cfg.stft.window, dim=s1.dim,
               n_resnet_blocks=s1.n_resnet_blocks, token_width=s1.token_width,
               codebook_size=vq.codebook_size, ema=vq.ema, decay=vq.decay,
               dead_code_restart=vq.dead_code_restart,
               dead_code_threshold=vq.dead_code_threshold, lfhf=s1.lfhf,
               dtype=jnp.bfloat16 if s1.matmul_dtype == "bfloat16" else jnp.float32,
               wgrad_chunk=resolve_rows(s1.conv_wgrad_chunk, auto=s1.batch_size))
