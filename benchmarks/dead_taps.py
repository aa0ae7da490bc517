"""The stage-1 step with and without ``models/conv.trim_dead_taps`` (kernel taps that meet
only padding left out; the LF branch's height-1 convolutions run as (1, k) convolutions),
built in one process and timed in alternating rounds.

  python -m benchmarks.dead_taps lfhf,vibcreg_lfhf 128 20
  # stage-1 variants, batch, timed rounds (L = 128; one call per form per round)

Prints, per variant, the median / min step time and XLA's FLOP count of each form
(benchmarks/NOTES.md item 15 quotes the output). XLA's cost analysis leaves the padding's
products out of its count either way, so the two FLOP figures agree; the times do not.
"""
import sys
from unittest import mock

from benchmarks import common, stage1_bench
from tsgen_jax import host_memory
from tsgen_jax.models import vqvae as vqvae_lib

FORMS = {"padded": lambda fn: fn, "trimmed": vqvae_lib.trim_dead_taps}


def steps(variant: str, batch: int, rounds: int) -> tuple[dict, dict]:
  """Whole stage-1 steps of ``variant`` in each form: ({form: [seconds per step]},
  {form: GFLOP per step})."""
  runs, gflop = {}, {}
  for form, wrap in FORMS.items():
    with mock.patch.object(vqvae_lib, "trim_dead_taps", wrap):
      _, flops, runs[form] = stage1_bench.warm_step(variant, batch)
    gflop[form] = (flops or 0.0) / 1e9
  return common.alternate_calls(runs, rounds), gflop


if __name__ == "__main__":
  host_memory.start()  # TSGEN_MALLOC=hugepages: restart once with huge-page malloc
  variants, batch, rounds = common.ab_args(sys.argv, __doc__, "benchmarks.dead_taps",
                                           stage1_bench.VARIANTS)
  for v in variants:
    times, gflop = steps(v, batch, rounds)
    print(f"{v} GFLOP per step: " + ", ".join(f"{k} {g:.2f}" for k, g in gflop.items()))
    common.print_times(f"{v} L=128 B={batch} step", times, decimals=2)
