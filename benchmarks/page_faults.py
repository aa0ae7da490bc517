"""Minor page faults per stage-1 step: how much memory the kernel maps in afresh each call.

  python -m benchmarks.page_faults vibcreg 128 128 15   # variant, L, B, timed steps
  TSGEN_MALLOC=hugepages python -m benchmarks.page_faults plain 1024 512 6

Prints the median step time and the minor page faults per step (``getrusage``, after two
warm-up steps); benchmarks/NOTES.md quotes its output (tsgen_jax/host_memory.py explains why
the count matters).
"""
import resource
import sys

import numpy as np

from benchmarks import common, stage1_bench
from tsgen_jax import host_memory


def faults_per_step(variant: str, length: int, batch: int, steps: int) -> tuple[float, float]:
  """(median seconds, minor page faults) per call of the stage-1 step after two warm-ups."""
  cfg = stage1_bench.make_config(variant, batch, length)
  jitted, state, (b, rng) = stage1_bench.build_from_config(cfg)
  compiled, _, _, _ = common.compile_fn(jitted, state, b, rng)
  call = common.stateful_call(compiled, state, b, rng)
  for _ in range(2):  # warm-up, outside the fault count
    call()
  before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
  times_ms = common.time_calls(call, steps, warmup=0)
  faults = resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before
  return float(np.median(times_ms)) / 1e3, faults / steps


if __name__ == "__main__":
  host_memory.start()  # TSGEN_MALLOC=hugepages: restart once with huge-page malloc
  if len(sys.argv) != 5:
    sys.exit(__doc__)
  variant, length, batch, steps = sys.argv[1], *(int(a) for a in sys.argv[2:])
  median_s, faults = faults_per_step(variant, length, batch, steps)
  print(f"{variant} L={length} B={batch} malloc={host_memory.current_mode()}: step median "
        f"{1000 * median_s:.0f} ms, {faults:.0f} minor page faults per step")
