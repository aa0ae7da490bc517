"""Convolution with its weight gradient summed over batch chunks (an XLA:CPU speed-up).

XLA:CPU computes a convolution's weight gradient as one reduction over the whole batch and
grid (contraction length B * H * W, e.g. 128 * 5 * 33 = 21120, for a 3 x 4 x 64 x 64 kernel);
in YNNPACK, for the stage-1 shapes, it ran at 35-65 GFLOP/s. The same sum split into batch
chunks of 16 rows (independent weight gradients, then added) keeps each chunk's operands in
cache and gives the two cores independent work: measured on the 2-core CPU, B = 128, the
(3, 4) stride-2 encoder conv's forward + backward 46 -> 29 ms and the decoder's (3, 2) conv at
W = 33 70 -> 40 ms; whole stage-1 steps -8 to -10 % (BENCHMARKS.md). At B = 32 it was 3 %
slower, hence the minimum of four chunks. The forward pass is XLA's own. Since the stage-1
steps run their convolutions in XLA's multi-threaded Eigen kernels instead of YNNPACK
(``trainer.step_compiler_options``, benchmarks/NOTES.md item 19) the slices no longer pay
there, and the stage-1 model uses one chunk (the whole batch); the evaluator FCN, whose
convolutions stay in YNNPACK, keeps 16-row chunks.

The input gradient of a strided convolution is, in XLA, a convolution over the output gradient
dilated with zeros (``lhs_dilation``), which XLA:CPU runs in a generic kernel, not YNNPACK. Inside
the same custom VJP it is computed instead as one stride-1 convolution per output phase (for
stride 2 along time: even and odd input frames, each from half the kernel's taps), interleaved:
:func:`strided_conv_input_grad`, the same sums without the zeros (stage-1 steps 0-10 % faster
in alternated A/Bs, item 9 of benchmarks/NOTES.md).

:func:`chunked_wgrad_conv` returns a drop-in for ``lax.conv_general_dilated`` that flax's
``nn.Conv(conv_general_dilated=...)`` accepts; parameters and their names are unchanged.

With ``canonical=True`` (the stage-1 model on CPU) every convolution gets this custom gradient,
and both gradient convolutions are written in the forward's own NHWC x HWIO form, with
transposed copies of the operands: the input gradient by :func:`strided_conv_input_grad`
(stride 1 included) and the weight gradient by :func:`conv_weight_grad`. XLA:CPU runs only
that form in its Eigen kernels, and rewrites autodiff's layouts into it only in a program's
entry computation: inside ``lax.scan`` (several train steps per call, ``trainer.
compile_steps``) they ran in its naive loop kernels, the plain step ~40x slower
(benchmarks/NOTES.md item 22). Outside loops the result is the same program XLA builds.

:func:`trim_dead_taps` wraps such a function so that kernel taps which only ever meet zero
padding are left out of the convolution: a 3 x 3 kernel with padding 1 over an input of height
1 (the LF branch of ``lfhf=True`` sees one frequency row) uses only its middle row, so XLA would
otherwise spend two thirds of that convolution's multiplications on zeros. The result is the
same sum without the zero terms, and those taps' gradient stays exactly zero.

:func:`tap_products_conv` wraps one so that a stride-1 convolution with few output channels
(the decoder's last layer: 2) runs as one matrix product and a sum of shifted slices
(:func:`tap_products`), which XLA:CPU runs ~2.5x faster than its convolution kernels at
that shape.
"""

from __future__ import annotations

import functools
import itertools
import math

import jax
import jax.numpy as jnp
from jax import lax

from tsgen_jax.models.dots import matmul

MIN_CHUNKS = 4


def resolve_rows(rows: int, auto: int = 16) -> int:
  """A ``conv_wgrad_chunk`` setting -> rows per weight-gradient slice (0 = off).

  -1 (auto) is ``auto`` on a single CPU device and 0 elsewhere: on accelerators one large
  convolution is the fast form, and on several devices the batch is sharded, so a slice of
  it would move data between devices. The stage-1 model passes its batch size as ``auto``
  (one slice: XLA's own weight gradient, with the strided convolutions' input gradient by
  phases); the evaluator FCN keeps the default 16-row slices.
  """
  if rows == -1:
    return auto if jax.default_backend() == "cpu" and jax.device_count() == 1 else 0
  if rows < 0:
    raise ValueError(f"conv_wgrad_chunk must be -1 (auto), 0 (off) or > 0, got {rows}")
  return rows


def canonical_default() -> bool:
  """The ``canonical`` setting for the models' convolutions on this backend: True on CPU,
  where XLA:CPU needs the NHWC x HWIO gradient convolutions inside the training loops'
  ``lax.scan`` (see :func:`chunked_wgrad_conv`); elsewhere autodiff's own gradients."""
  return jax.default_backend() == "cpu"


@functools.lru_cache(maxsize=None)
def chunked_wgrad_conv(rows: int, phase_input_grad: bool = True, canonical: bool = False):
  """A ``lax.conv_general_dilated`` whose rhs (kernel) gradient is summed over batch chunks.

  Args:
    rows: batch rows per chunk; 0 is one chunk, and without ``canonical`` turns the custom
      gradient off (``lax.conv_general_dilated`` itself). A batch of fewer than
      ``MIN_CHUNKS * rows`` rows is one chunk: XLA's own weight gradient, and the custom
      gradient is kept only for the phase input gradient (plain convolution where that does
      not apply) or ``canonical``. Off for ``batch_group_count != 1``.
    phase_input_grad: compute a strided convolution's lhs gradient with
      :func:`strided_conv_input_grad` (the default) instead of autodiff's lhs-dilated
      convolution; used only where that function applies.
    canonical: give every convolution this custom gradient (explicit padding, no dilation,
      no feature groups), with both gradient convolutions in the forward's own layouts
      (:func:`strided_conv_input_grad` for the input, stride 1 included, and
      :func:`conv_weight_grad` for the kernel): NHWC x HWIO for flax's convolutions. XLA:CPU
      runs only that form in its Eigen kernels, and rewrites autodiff's other layouts into it
      only in a program's entry computation, not inside a loop: a training loop rolled into
      ``lax.scan`` (``trainer.compile_steps``) otherwise runs its gradient convolutions in
      XLA's naive loop kernels, ~40x slower.

  Returns:
    f(lhs, rhs, window_strides, padding, lhs_dilation=None, rhs_dilation=None,
    dimension_numbers=None, feature_group_count=1, batch_group_count=1, precision=None,
    preferred_element_type=None) with ``lax.conv_general_dilated``'s signature and forward
    result. Its VJP gives the lhs gradient as autodiff does (or by phases, see above) and the
    rhs gradient as the sum over consecutive batch slices of ``rows`` rows (the last may be
    shorter) of the slices' rhs gradients: the same sums in another order (float32 results
    agree to ~1e-6 relative).
  """

  def conv(lhs, rhs, window_strides, padding, lhs_dilation=None, rhs_dilation=None,
           dimension_numbers=None, feature_group_count=1, batch_group_count=1,
           precision=None, preferred_element_type=None):
    dn = lax.conv_dimension_numbers(lhs.shape, rhs.shape, dimension_numbers)
    in_batch, out_batch = dn.lhs_spec[0], dn.out_spec[0]
    n = lhs.shape[in_batch]
    if (canonical and isinstance(padding, str)
        and all(d == 1 for d in (*(lhs_dilation or ()), *(rhs_dilation or ())))):
      padding = lax.padtype_to_pads([lhs.shape[a] for a in dn.lhs_spec[2:]],
                                    [rhs.shape[a] for a in dn.rhs_spec[2:]], window_strides,
                                    padding)  # 'SAME' / 'VALID' as (lo, hi) pairs
    plain = functools.partial(
        lax.conv_general_dilated, window_strides=window_strides, padding=padding,
        lhs_dilation=lhs_dilation, rhs_dilation=rhs_dilation,
        dimension_numbers=dimension_numbers, feature_group_count=feature_group_count,
        batch_group_count=batch_group_count, precision=precision,
        preferred_element_type=preferred_element_type)
    if (rows <= 0 and not canonical) or batch_group_count != 1:
      return plain(lhs, rhs)
    # too few rows for slices: one of them
    chunk = rows if 0 < rows and n >= MIN_CHUNKS * rows else n
    by_layout = (canonical and preferred_element_type is None and feature_group_count == 1
                 and canonical_grad_applies(padding, lhs_dilation, rhs_dilation))
    by_phase = by_layout or (phase_input_grad and preferred_element_type is None
                             and phase_grad_applies(window_strides, padding, lhs_dilation,
                                                    rhs_dilation, feature_group_count))
    if chunk == n and not by_phase:
      return plain(lhs, rhs)  # nothing left to change in XLA's gradient

    @jax.custom_vjp
    def f(lhs, rhs):
      return plain(lhs, rhs)

    def f_fwd(lhs, rhs):
      return plain(lhs, rhs), (lhs, rhs)

    def f_bwd(res, g):
      lhs, rhs = res
      if by_phase:
        g_lhs = strided_conv_input_grad(g, rhs, lhs.shape, window_strides, padding, dn,
                                        precision)
      else:
        _, vjp_lhs = jax.vjp(lambda a: plain(a, rhs), lhs)
        (g_lhs,) = vjp_lhs(g)
      g_rhs = None
      for start in range(0, n, chunk):
        stop = min(start + chunk, n)
        lhs_c = lax.slice_in_dim(lhs, start, stop, axis=in_batch)
        g_c = lax.slice_in_dim(g, start, stop, axis=out_batch)
        if by_layout:
          part = conv_weight_grad(lhs_c, g_c, rhs.shape, window_strides, padding, dn,
                                  precision)
        else:
          _, vjp_rhs = jax.vjp(lambda w, a=lhs_c: plain(a, w), rhs)
          (part,) = vjp_rhs(g_c)
        g_rhs = part if g_rhs is None else g_rhs + part
      return g_lhs, g_rhs

    f.defvjp(f_fwd, f_bwd)
    return f(lhs, rhs)

  return conv


def live_taps(size: int, kernel: int, pad_lo: int, pad_hi: int) -> tuple[int, int]:
  """Taps [first, stop) of a stride-1, undilated kernel axis that read some input element.

  Output o reads input o + k - pad_lo through tap k, for o in [0, size + pad_lo + pad_hi -
  kernel + 1); tap k meets only padding when that index is outside [0, size) for every o.
  E.g. size 1, kernel 3, padding (1, 1): (1, 2), the middle tap only.
  """
  n_out = size + pad_lo + pad_hi - kernel + 1
  return max(0, pad_lo - n_out + 1), min(kernel, size + pad_lo)


@functools.lru_cache(maxsize=None)
def trim_dead_taps(conv_fn=lax.conv_general_dilated):
  """Wraps a ``lax.conv_general_dilated``-like function so that the kernel taps which meet
  only zero padding (:func:`live_taps`, along stride-1 undilated axes with explicit
  non-negative padding) are sliced off the kernel and the padding shrunk to match.

  The output has the same shape and value (the same sums less terms that are exactly zero;
  float rounding may differ with the summation order). The gradient of a dropped tap is
  exactly zero, as it is through the padded convolution. Other arguments pass through.
  """

  def conv(lhs, rhs, window_strides, padding, lhs_dilation=None, rhs_dilation=None,
           dimension_numbers=None, **kwargs):
    call = functools.partial(conv_fn, window_strides=window_strides,
                             lhs_dilation=lhs_dilation, rhs_dilation=rhs_dilation,
                             dimension_numbers=dimension_numbers, **kwargs)
    if (isinstance(padding, str) or any(d != 1 for d in (lhs_dilation or ()))
        or any(d != 1 for d in (rhs_dilation or ()))):
      return call(lhs, rhs, padding=padding)
    dn = lax.conv_dimension_numbers(lhs.shape, rhs.shape, dimension_numbers)
    new_padding = []
    for i, (lo, hi) in enumerate(padding):
      a_in, a_k = dn.lhs_spec[2 + i], dn.rhs_spec[2 + i]
      size, k = lhs.shape[a_in], rhs.shape[a_k]
      if window_strides[i] == 1 and lo >= 0 and hi >= 0 and size + lo + hi >= k:
        first, stop = live_taps(size, k, lo, hi)
        if 0 < stop - first < k:  # each tap dropped at an end is one padding row fewer there
          rhs = lax.slice_in_dim(rhs, first, stop, axis=a_k)
          lo, hi = lo - first, hi - (k - stop)
      new_padding.append((lo, hi))
    return call(lhs, rhs, padding=new_padding)

  return conv


@functools.lru_cache(maxsize=None)
def tap_products_conv(conv_fn=lax.conv_general_dilated, max_width_ratio: int = 2):
  """Wraps a ``lax.conv_general_dilated``-like function so that a convolution with few output
  channels is computed as one matrix product and a sum of shifted slices.

  y[b, s, o] = sum_k sum_c x_pad[b, s + k, c] w[k, c, o] (stride 1) is, per tap k, the
  product P_k = x @ w[k] shifted by k: all taps' products are one (B * S, C) x (C, K * O)
  :func:`~tsgen_jax.models.dots.matmul`, then the K shifted (B, S_out, O) slices of the
  padded P are added. Its gradients are matrix products too (the input's (B * S, K * O) x
  (K * O, C), the kernel's one ``km,kn->mn`` contraction over the B * S rows) plus the
  slices' transposes, against XLA:CPU's Eigen convolution kernels, which run a convolution
  with 2 output channels (the stage-1 decoder's last layer) at ~25 GFLOP/s: forward and both
  gradients of the (3, 2) kernel, 64 -> 2 channels over (128, 5, 32) took 2.60 ms as
  convolutions and 1.05 ms in this form, and the plain stage-1 step 76.9 -> 71.7 ms
  (benchmarks/NOTES.md item 25).

  Used where the products are no wider than ``max_width_ratio`` times the input (K * O <=
  max_width_ratio * C: P's size bounded by the input's), for channels-last convolutions
  (NHWC x HWIO, any number of spatial axes) with unit strides, no dilation, no feature or
  batch groups, explicit non-negative padding and no ``preferred_element_type``; every other
  call goes to ``conv_fn``. The output equals the convolution's up to float rounding (another
  summation order).
  """

  def conv(lhs, rhs, window_strides, padding, lhs_dilation=None, rhs_dilation=None,
           dimension_numbers=None, feature_group_count=1, batch_group_count=1,
           precision=None, preferred_element_type=None):
    dn = lax.conv_dimension_numbers(lhs.shape, rhs.shape, dimension_numbers)
    nsp = lhs.ndim - 2
    channels_last = (tuple(dn.lhs_spec) == (0, nsp + 1, *range(1, nsp + 1))
                     and tuple(dn.out_spec) == tuple(dn.lhs_spec)
                     and tuple(dn.rhs_spec) == (nsp + 1, nsp, *range(nsp)))
    taps = math.prod(rhs.shape[:nsp])
    if (channels_last and all(s == 1 for s in window_strides)
        and canonical_grad_applies(padding, lhs_dilation, rhs_dilation)
        and feature_group_count == 1 and batch_group_count == 1
        and preferred_element_type is None
        and taps * rhs.shape[-1] <= max_width_ratio * lhs.shape[-1]):
      return tap_products(lhs, rhs, padding)
    return conv_fn(lhs, rhs, window_strides, padding, lhs_dilation=lhs_dilation,
                   rhs_dilation=rhs_dilation, dimension_numbers=dimension_numbers,
                   feature_group_count=feature_group_count,
                   batch_group_count=batch_group_count, precision=precision,
                   preferred_element_type=preferred_element_type)

  return conv


def tap_products(x: jax.Array, w: jax.Array, padding) -> jax.Array:
  """The stride-1 convolution of x (B, S..., C) by w (K..., C, O) with ``padding`` ((lo, hi)
  per spatial axis, non-negative) as one matrix product and a sum of shifted slices (see
  :func:`tap_products_conv`). Returns (B, S_out..., O), S_out = S + lo + hi - K + 1."""
  nsp = x.ndim - 2
  k, (c, o) = w.shape[:nsp], w.shape[nsp:]
  w_cols = jnp.moveaxis(w, nsp, 0).reshape(c, -1)  # (C, K... * O), taps major
  p = matmul(x, w_cols).reshape(*x.shape[:-1], *k, o)
  p = jnp.pad(p, ((0, 0), *padding, *((0, 0),) * (nsp + 1)))
  out = [x.shape[1 + a] + lo + hi - k[a] + 1 for a, (lo, hi) in enumerate(padding)]
  y = None
  for tap in itertools.product(*(range(n) for n in k)):
    part = p[(slice(None), *(slice(t, t + n) for t, n in zip(tap, out)), *tap, slice(None))]
    y = part if y is None else y + part
  return y


def canonical_grad_applies(padding, lhs_dilation=None, rhs_dilation=None) -> bool:
  """Whether :func:`strided_conv_input_grad` and :func:`conv_weight_grad` cover a
  convolution (without feature groups) with these arguments: explicit non-negative (lo, hi)
  padding and no dilation; any strides."""
  return (not isinstance(padding, str) and all(lo >= 0 and hi >= 0 for lo, hi in padding)
          and all(d == 1 for d in (lhs_dilation or ()))
          and all(d == 1 for d in (rhs_dilation or ())))


def phase_grad_applies(window_strides, padding, lhs_dilation=None, rhs_dilation=None,
                       feature_group_count: int = 1) -> bool:
  """Whether the phase input gradient is used by default for a convolution with these
  arguments: some stride above 1, and :func:`canonical_grad_applies` without feature
  groups."""
  return (any(s > 1 for s in window_strides) and feature_group_count == 1
          and canonical_grad_applies(padding, lhs_dilation, rhs_dilation))


def conv_weight_grad(lhs, g, rhs_shape, window_strides, padding, dn, precision=None):
  """The rhs (kernel) gradient of ``lax.conv_general_dilated(lhs, rhs, window_strides,
  padding)`` (no dilation, no feature groups) as one convolution in the NHWC x HWIO form.

  dW[k, i, o] = sum_{b, m} x_pad[b, s m + k, i] g[b, m, o] (per spatial axis: stride s,
  x padded by the forward's padding) is a convolution of x with its features as the batch
  and its batch as the features, (I, spatial..., B), by g as the kernel, (spatial_out...,
  B, O), dilated by s; its output (I, K'..., O) is cut to the kernel's K taps (K' > K
  where the stride leaves input unread at the end) and transposed to ``rhs``'s layout.
  Autodiff builds the same sum with the batch and feature roles in the dimension numbers
  instead of in transposed copies.

  Args:
    lhs: the forward input, laid out as ``dn.lhs_spec``.
    g: the output's cotangent, ``dn.out_spec``.
    rhs_shape: the kernel's shape (``dn.rhs_spec``).
    window_strides, padding: the forward's (one (lo, hi) pair per spatial axis).
    dn: ``lax.ConvDimensionNumbers`` of the forward convolution.
    precision: passed to the convolution.

  Returns:
    The kernel's cotangent, shape ``rhs_shape``, equal to autodiff's up to float rounding.
  """
  nsp = len(window_strides)
  x_t = jnp.transpose(lhs, (dn.lhs_spec[1], *dn.lhs_spec[2:], dn.lhs_spec[0]))
  g_t = jnp.transpose(g, (*dn.out_spec[2:], dn.out_spec[0], dn.out_spec[1]))
  spatial = tuple(range(1, nsp + 1))
  canon = lax.ConvDimensionNumbers((0, nsp + 1, *spatial), (nsp + 1, nsp, *range(nsp)),
                                   (0, nsp + 1, *spatial))
  out = lax.conv_general_dilated(x_t, g_t, (1,) * nsp, padding, rhs_dilation=window_strides,
                                 dimension_numbers=canon, precision=precision)
  out = out[(slice(None), *(slice(0, rhs_shape[a]) for a in dn.rhs_spec[2:]), slice(None))]
  perm = [0] * (nsp + 2)
  perm[dn.rhs_spec[0]], perm[dn.rhs_spec[1]] = nsp + 1, 0
  for i, a in enumerate(dn.rhs_spec[2:]):
    perm[a] = 1 + i
  return jnp.transpose(out, perm)


def strided_conv_input_grad(g, rhs, lhs_shape, window_strides, padding, dn, precision=None):
  """The lhs gradient of ``lax.conv_general_dilated(lhs, rhs, window_strides, padding)``
  without a dilated convolution.

  Along a spatial axis with stride s, padding (pl, pr) and kernel size K the forward pass is
  y[o] = sum_k x[s o + k - pl] w[k], so input position t = s m + p (phase p in [0, s)) gets
  gradient from the taps k = r, r + s, ... with r = (p + pl) mod s only:
  dx[s m + p] = sum_j g[m + c - j] w[s j + r], c = (p + pl - r) / s. That is a stride-1
  correlation of g with those taps reversed. There is one such convolution per combination
  of phases over the spatial axes (prod(strides) of them, each from 1/prod(strides) of the
  kernel, with the in/out features of ``rhs`` swapped); their outputs are interleaved and cut
  to the input's length. A phase no tap reaches (K < s) gets zeros.

  Args:
    g: the output's cotangent, laid out as ``dn.out_spec``.
    rhs: the kernel, laid out as ``dn.rhs_spec``.
    lhs_shape: the input's shape (``dn.lhs_spec``).
    window_strides, padding: the forward convolution's (one (lo, hi) pair per spatial axis).
    dn: ``lax.ConvDimensionNumbers`` of the forward convolution.
    precision: passed to the phases' convolutions.

  Returns:
    The input's cotangent, shape ``lhs_shape``, equal to autodiff's up to float rounding.
  """
  nsp = len(window_strides)
  lhs_sp, out_sp, rhs_sp = dn.lhs_spec[2:], dn.out_spec[2:], dn.rhs_spec[2:]
  n_in = [lhs_shape[a] for a in lhs_sp]
  n_out = [g.shape[a] for a in out_sp]
  n_phase = [-(-n // s) for n, s in zip(n_in, window_strides)]  # positions per phase
  # g plays the lhs, the kernel with its in/out features swapped (a transposed copy, so that
  # the convolution keeps the forward's kernel layout: XLA:CPU's Eigen kernels take only
  # NHWC x HWIO, and it rewrites other layouts only outside loops) the rhs, and the input's
  # layout the output.
  rhs = jnp.swapaxes(rhs, dn.rhs_spec[0], dn.rhs_spec[1])
  grad_dn = lax.ConvDimensionNumbers(dn.out_spec, dn.rhs_spec, dn.lhs_spec)
  phase_shape = list(lhs_shape)
  for a, n in zip(lhs_sp, n_phase):
    phase_shape[a] = n

  def one_phase(phase):
    w, pads = rhs, []
    for i, p in enumerate(phase):
      s, pl, k = window_strides[i], padding[i][0], rhs.shape[rhs_sp[i]]
      r = (p + pl) % s
      taps = len(range(r, k, s))
      if taps == 0:
        return jnp.zeros(phase_shape, g.dtype)
      c = (p + pl - r) // s
      w = lax.rev(lax.slice_in_dim(w, r, r + s * (taps - 1) + 1, s, axis=rhs_sp[i]),
                  (rhs_sp[i],))
      lo = taps - 1 - c
      pads.append((lo, n_phase[i] - n_out[i] - lo + taps - 1))
    crop = [(0, 0, 0)] * g.ndim  # negative padding: cut g where the phase reads less of it
    for a, (lo, hi) in zip(out_sp, pads):
      crop[a] = (min(lo, 0), min(hi, 0), 0)
    cut = any(pad[:2] != (0, 0) for pad in crop)
    gi = lax.pad(g, jnp.zeros((), g.dtype), crop) if cut else g
    return lax.conv_general_dilated(gi, w, (1,) * nsp,
                                    [(max(lo, 0), max(hi, 0)) for lo, hi in pads],
                                    dimension_numbers=grad_dn, precision=precision)

  def interleave(prefix):
    i = len(prefix)
    if i == nsp:
      return one_phase(prefix)
    parts = [interleave(prefix + (p,)) for p in range(window_strides[i])]
    if len(parts) == 1:
      return parts[0]
    ax = lhs_sp[i]
    shape = list(parts[0].shape)
    shape[ax] *= len(parts)
    out = jnp.stack(parts, axis=ax + 1).reshape(shape)
    return lax.slice_in_dim(out, 0, n_in[i], axis=ax)

  return interleave(())
