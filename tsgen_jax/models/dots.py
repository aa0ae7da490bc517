"""Matrix products in the forms XLA:CPU runs fast, float32 or mixed precision.

:func:`matmul` is ``x @ w`` whose backward pass takes w's gradient as one ``km,kn->mn``
contraction over all leading rows (benchmarks/NOTES.md item 23). The MaskGIT prior's layers
(models/maskgit.py) and the stage-1 convolutions with few output channels
(models/conv.py, :func:`~tsgen_jax.models.conv.tap_products_conv`) use it.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp


def is_mixed(dtype) -> bool:
  """Whether matmuls in ``dtype`` are mixed-precision: bfloat16 operands, float32 results."""
  return jnp.dtype(dtype) == jnp.bfloat16


def operand(a: jax.Array, mixed: bool) -> jax.Array:
  """``a`` (any shape) as a matmul operand: rounded to bfloat16 if ``mixed``, else as is."""
  return a.astype(jnp.bfloat16) if mixed else a


def dot(spec: str, a: jax.Array, b: jax.Array, mixed: bool) -> jax.Array:
  """``jnp.einsum(spec, a, b)``; ``mixed``: bfloat16 operands, float32 accumulation and
  result."""
  return jnp.einsum(spec, operand(a, mixed), operand(b, mixed),
                    preferred_element_type=jnp.float32 if mixed else None)


@functools.partial(jax.custom_vjp, nondiff_argnums=(2,))
def matmul(x: jax.Array, w: jax.Array, mixed: bool = False) -> jax.Array:
  """``x @ w`` for x (..., M) and w (M, N): (..., N), in the operands' dtype, or with
  ``mixed`` in bfloat16 operands with float32 accumulation and result.

  The backward pass computes w's gradient as one contraction of x and the output gradient
  over all their leading rows (``km,kn->mn``), which XLA:CPU runs on the two row-major arrays
  as they are. Autodiff's form is that gradient's transpose (``kn,km->nm``), for which XLA
  first copies x transposed: twelve (10496, 256) copies per stage-2 step at B = 256, ~6 % of
  its time (benchmarks/NOTES.md item 23).

  ``mixed``: the gradient is mixed-precision too; the float32 output gradient is rounded to
  bfloat16 and both gradient matmuls take bfloat16 operands and accumulate in float32 (as
  mixed-precision training does elsewhere); dx and dw come back in x's and w's dtypes. On a
  CPU with AVX512-BF16 such matmuls ran at 1.6-2.2x the float32 rate (weight gradients
  excepted); bfloat16 results would not (XLA:CPU's bfloat16-output dots are slower than
  float32 ones; benchmarks/NOTES.md item 21).
  """
  return dot("...m,mn->...n", x, w, mixed)


def _matmul_fwd(x, w, mixed):
  return matmul(x, w, mixed), (operand(x, mixed), operand(w, mixed),
                               jnp.zeros((0,), x.dtype), jnp.zeros((0,), w.dtype))


def _matmul_bwd(mixed, res, g):
  xo, wo, x_like, w_like = res
  g = operand(g, mixed)
  m, n = wo.shape
  dx = dot("...n,mn->...m", g, wo, mixed)
  dw = dot("km,kn->mn", xo.reshape(-1, m), g.reshape(-1, n), mixed)
  return dx.astype(x_like.dtype), dw.astype(w_like.dtype)


matmul.defvjp(_matmul_fwd, _matmul_bwd)


def mixed_matmul(x: jax.Array, w: jax.Array) -> jax.Array:
  """:func:`matmul` with ``mixed``: x (..., M) @ w (M, N) with bfloat16 operands, float32
  (..., N)."""
  return matmul(x, w, True)
