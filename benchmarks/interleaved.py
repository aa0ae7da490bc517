"""Step time of one stage-1 step under several values of one config field, built in one
process and timed in alternating rounds, so that every value sees the same machine load.

  python -m benchmarks.interleaved plain 128 128 stage1.matmul_dtype float32,bfloat16 20
  # variant, L, B, config field, values, timed rounds (one call per value per round)

Prints one line per value (benchmarks/NOTES.md quotes its output). ``compare`` is the
library form; ``benchmarks.wgrad_slices`` uses it for ``stage1.conv_wgrad_chunk``.
"""
import sys

import numpy as np

from benchmarks import common, stage1_bench
from tsgen_jax import host_memory, study
from tsgen_jax.errors import ConfigError


def compare(variant: str, length: int, batch: int, field: str, values: list,
            rounds: int) -> dict:
  """Builds the step of ``stage1_bench.make_config(variant, batch, length)`` with ``field``
  (dotted, e.g. 'stage1.conv_wgrad_chunk') set to each value (a string, converted to the
  field's type by ``study.apply_override``: an unknown field or a value of the wrong type is a
  ConfigError, so a typo cannot time the default twice), runs one call per value per round,
  and prints median / min step time and compile time per value.

  Returns {value: (compile_s, [seconds per timed call])}.
  """
  runs = {}
  for value in values:
    cfg = stage1_bench.make_config(variant, batch, length)
    study.apply_override(cfg, f"{field}={value}")
    jitted, state, (b, rng) = stage1_bench.build_from_config(cfg)
    compiled, compile_s, _, _ = common.compile_fn(jitted, state, b, rng)
    call = common.stateful_call(compiled, state, b, rng)
    call()  # warm-up
    runs[value] = (call, compile_s)
  times = common.alternate_calls({v: call for v, (call, _) in runs.items()}, rounds)
  for value, (_, compile_s) in runs.items():
    t = times[value]
    print(f"{variant} L={length} B={batch} {field}={value}: compile {compile_s:.1f}s step "
          f"median {1000 * np.median(t):.0f} ms (min {1000 * min(t):.0f}, {len(t)} calls)",
          flush=True)
  return {value: (compile_s, times[value]) for value, (_, compile_s) in runs.items()}


if __name__ == "__main__":
  host_memory.start()  # TSGEN_MALLOC=hugepages: restart once with huge-page malloc
  if len(sys.argv) not in (6, 7):
    sys.exit(__doc__)
  try:
    compare(sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), sys.argv[4],
            sys.argv[5].split(","), int(sys.argv[6]) if len(sys.argv) > 6 else 5)
  except ConfigError as e:  # unknown field; a value of the wrong type
    sys.exit(f"benchmarks.interleaved: {e}")
