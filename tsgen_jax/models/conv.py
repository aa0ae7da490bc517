"""Convolution with its weight gradient summed over batch chunks (an XLA:CPU speed-up).

XLA:CPU computes a convolution's weight gradient as one reduction over the whole batch and
grid (contraction length B * H * W, e.g. 128 * 5 * 33 = 21120, for a 3 x 4 x 64 x 64 kernel);
for the stage-1 shapes it runs at 35-65 GFLOP/s. The same sum split into batch chunks of 16
rows (independent weight gradients, then added) keeps each chunk's operands in cache and gives
the two cores independent work: measured on the 2-core CPU, B = 128, the (3, 4) stride-2
encoder conv's forward + backward 46 -> 29 ms and the decoder's (3, 2) conv at W = 33
70 -> 40 ms; whole stage-1 steps -8 to -10 % (BENCHMARKS.md). At B = 32 it was 3 % slower,
hence the minimum of four chunks. The input gradient and the forward pass are XLA's own.

:func:`chunked_wgrad_conv` returns a drop-in for ``lax.conv_general_dilated`` that flax's
``nn.Conv(conv_general_dilated=...)`` accepts; parameters and their names are unchanged.
"""

from __future__ import annotations

import functools

import jax
from jax import lax

MIN_CHUNKS = 4


def resolve_rows(rows: int) -> int:
  """``config.stage1.conv_wgrad_chunk`` -> rows per chunk (0 = off).

  -1 (auto) is 16 on a single CPU device and 0 elsewhere: on accelerators one large
  convolution is the fast form, and on several devices the batch is sharded, so a slice of
  it would move data between devices.
  """
  if rows == -1:
    return 16 if jax.default_backend() == "cpu" and jax.device_count() == 1 else 0
  if rows < 0:
    raise ValueError(f"conv_wgrad_chunk must be -1 (auto), 0 (off) or > 0, got {rows}")
  return rows


@functools.lru_cache(maxsize=None)
def chunked_wgrad_conv(rows: int):
  """A ``lax.conv_general_dilated`` whose rhs (kernel) gradient is summed over batch chunks.

  Args:
    rows: batch rows per chunk; 0 turns the chunking off. It is also off for a batch of fewer
      than ``MIN_CHUNKS * rows`` rows and for ``batch_group_count != 1``.

  Returns:
    f(lhs, rhs, window_strides, padding, lhs_dilation=None, rhs_dilation=None,
    dimension_numbers=None, feature_group_count=1, batch_group_count=1, precision=None,
    preferred_element_type=None) with ``lax.conv_general_dilated``'s signature and forward
    result. Its VJP gives the lhs gradient as autodiff does and the rhs gradient as the sum
    over consecutive batch slices of ``rows`` rows (the last may be shorter) of the slices'
    rhs gradients: the same sum in another order (float32 results agree to ~1e-6 relative).
  """

  def conv(lhs, rhs, window_strides, padding, lhs_dilation=None, rhs_dilation=None,
           dimension_numbers=None, feature_group_count=1, batch_group_count=1,
           precision=None, preferred_element_type=None):
    plain = functools.partial(
        lax.conv_general_dilated, window_strides=window_strides, padding=padding,
        lhs_dilation=lhs_dilation, rhs_dilation=rhs_dilation,
        dimension_numbers=dimension_numbers, feature_group_count=feature_group_count,
        batch_group_count=batch_group_count, precision=precision,
        preferred_element_type=preferred_element_type)
    dn = lax.conv_dimension_numbers(lhs.shape, rhs.shape, dimension_numbers)
    in_batch, out_batch = dn.lhs_spec[0], dn.out_spec[0]
    n = lhs.shape[in_batch]
    if rows <= 0 or batch_group_count != 1 or n < MIN_CHUNKS * rows:
      return plain(lhs, rhs)

    @jax.custom_vjp
    def f(lhs, rhs):
      return plain(lhs, rhs)

    def f_fwd(lhs, rhs):
      return plain(lhs, rhs), (lhs, rhs)

    def f_bwd(res, g):
      lhs, rhs = res
      _, vjp_lhs = jax.vjp(lambda a: plain(a, rhs), lhs)
      (g_lhs,) = vjp_lhs(g)
      g_rhs = None
      for start in range(0, n, rows):
        stop = min(start + rows, n)
        lhs_c = lax.slice_in_dim(lhs, start, stop, axis=in_batch)
        g_c = lax.slice_in_dim(g, start, stop, axis=out_batch)
        _, vjp_rhs = jax.vjp(lambda w, a=lhs_c: plain(a, w), rhs)
        (part,) = vjp_rhs(g_c)
        g_rhs = part if g_rhs is None else g_rhs + part
      return g_lhs, g_rhs

    f.defvjp(f_fwd, f_bwd)
    return f(lhs, rhs)

  return conv
