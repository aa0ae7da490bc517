"""A train step run over and over for a while, for a sampling profiler to attach to.

  python -m benchmarks.step_loop plain 128 30 &     # step, batch, seconds of timed steps
  sleep 20; perf record -F 999 -g -p $! -o /tmp/perf.data -- sleep 10
  perf report -i /tmp/perf.data --no-children --sort dso,sym --stdio -g none | head -40

Steps: a stage1_bench variant (L = 128) or ``stage2`` (the prior's step). Prints ``READY``
after compiling and three warm-up steps, then, at the end, the number of steps and their
median time. benchmarks/NOTES.md item 20 quotes the profiles (XLA's generated code and
oneDNN's JIT kernels show up as ``[JIT]``).
"""
import sys
import time

import numpy as np

from benchmarks import common, stage1_bench, stage2_bench
from tsgen_jax import host_memory

STEPS = stage1_bench.VARIANTS + ("stage2",)


def loop(step: str, batch: int, seconds: float) -> list[float]:
  """Seconds per call of ``step`` at ``batch``, called for ``seconds`` after warm-up."""
  if step == "stage2":
    jitted, state, args = stage2_bench.build_train(batch)
  else:
    jitted, state, args = stage1_bench.build(step, batch)
  compiled, _, _, _ = common.compile_fn(jitted, state, *args)
  call = common.stateful_call(compiled, state, *args)
  for _ in range(3):
    call()
  print("READY", flush=True)
  times, end = [], time.perf_counter() + seconds
  while time.perf_counter() < end:
    t = time.perf_counter()
    call()
    times.append(time.perf_counter() - t)
  return times


if __name__ == "__main__":
  host_memory.start()  # TSGEN_MALLOC=hugepages: restart once with huge-page malloc
  if len(sys.argv) != 4 or sys.argv[1] not in STEPS:
    sys.exit(__doc__ + f"\nsteps: {', '.join(STEPS)}")
  times = loop(sys.argv[1], int(sys.argv[2]), float(sys.argv[3]))
  print(f"{sys.argv[1]} B={sys.argv[2]}: {len(times)} steps, median "
        f"{1000 * np.median(times):.1f} ms", flush=True)
