"""The strided convolutions' input gradient two ways, built in one process and timed in
alternating rounds: XLA's lhs-dilated convolution (autodiff) against one stride-1
convolution per phase (``models/conv.strided_conv_input_grad``, the default inside the
chunked-weight-gradient convolution).

  python -m benchmarks.strided_input_grad plain,vibcreg,lfhf 128 30
  # stage-1 variants, batch, timed rounds (L = 128; one call per form per round)

Prints, per variant, the median / min whole-step time of each form, then the same for the
encoder's two stride-2 input gradients in isolation (benchmarks/NOTES.md quotes the output).
"""
import sys
from unittest import mock

import jax
from jax import lax

from benchmarks import common, stage1_bench
from tsgen_jax import host_memory
from tsgen_jax.models import conv as conv_lib
from tsgen_jax.models import vqvae as vqvae_lib

FORMS = {"xla": False, "phase": True}


def steps(variant: str, batch: int, rounds: int) -> dict:
  """Whole stage-1 steps of ``variant`` with each form; {form: [seconds per step]}."""
  runs = {}
  for form, by_phase in FORMS.items():
    conv = lambda rows, p=by_phase: conv_lib.chunked_wgrad_conv(rows, p)  # noqa: E731
    with mock.patch.object(vqvae_lib, "chunked_wgrad_conv", conv):
      _, _, runs[form] = stage1_bench.warm_step(variant, batch)
  return common.alternate_calls(runs, rounds)


def encoder_grads(batch: int, rounds: int) -> dict:
  """The (3, 4) stride-(1, 2) encoder convs' input gradient alone, at the input widths of
  the L = 128 encoder (32 and 16 frames, 64 channels); {'W=.. form': [seconds]}."""
  dn_names = ("NHWC", "HWIO", "NHWC")
  strides, padding = (1, 2), ((1, 1), (1, 1))
  calls = {}
  for width in (32, 16):
    x = jax.random.normal(jax.random.key(0), (batch, 5, width, 64))
    w = jax.random.normal(jax.random.key(1), (3, 4, 64, 64))
    fwd = lambda a, w: lax.conv_general_dilated(a, w, strides, padding,  # noqa: E731
                                                dimension_numbers=dn_names)
    g = fwd(x, w)
    dn = lax.conv_dimension_numbers(x.shape, w.shape, dn_names)
    xla = jax.jit(lambda g, w, x=x: jax.vjp(lambda a: fwd(a, w), x)[1](g)[0])
    phase = jax.jit(lambda g, w, s=x.shape, dn=dn: conv_lib.strided_conv_input_grad(
        g, w, s, strides, padding, dn))
    for form, fn in (("xla", xla), ("phase", phase)):
      jax.block_until_ready(fn(g, w))
      calls[f"W={width} {form}"] = lambda fn=fn, g=g, w=w: jax.block_until_ready(fn(g, w))
  return common.alternate_calls(calls, rounds)


if __name__ == "__main__":
  host_memory.start()  # TSGEN_MALLOC=hugepages: restart once with huge-page malloc
  variants, batch, rounds = common.ab_args(sys.argv, __doc__, "benchmarks.strided_input_grad",
                                           stage1_bench.VARIANTS)
  for v in variants:
    common.print_times(f"{v} L=128 B={batch} step", steps(v, batch, rounds), decimals=2)
  common.print_times(f"encoder input gradient B={batch}", encoder_grads(batch, rounds),
                     decimals=2)
