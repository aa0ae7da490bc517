"""Compile time and step time of the plain stage-1 step for several ``stage1.conv_wgrad_chunk``
settings (rows per weight-gradient slice; 0 = off), timed interleaved in one process.

  python -m benchmarks.wgrad_slices 128 512 16,32,64,0 6   # L, B, settings, timed rounds

Prints one line per setting (benchmarks/NOTES.md item 7 quotes its output).
"""
import sys
import time

import jax
import numpy as np

from benchmarks import common, stage1_bench


def main(length: int, batch: int, settings: list[int], rounds: int) -> None:
  runs = {}
  for rows in settings:
    cfg = stage1_bench.make_config("plain", batch, length)
    cfg.stage1.conv_wgrad_chunk = rows
    jitted, state, (b, rng) = stage1_bench.build_from_config(cfg)
    compiled, compile_s, _, _ = common.compile_fn(jitted, state, b, rng)
    state, _ = compiled(state, b, rng)
    jax.block_until_ready(state)
    runs[rows] = [compiled, state, b, [], compile_s]
  for _ in range(rounds):
    for r in runs.values():
      t = time.perf_counter()
      r[1], _ = r[0](r[1], r[2], rng)
      jax.block_until_ready(r[1])
      r[3].append(time.perf_counter() - t)
  for rows, r in runs.items():
    print(f"L={length} B={batch} rows={rows}: compile {r[4]:.1f}s step median "
          f"{1000 * np.median(r[3]):.0f} ms (min {1000 * min(r[3]):.0f})", flush=True)


if __name__ == "__main__":
  main(int(sys.argv[1]), int(sys.argv[2]), [int(s) for s in sys.argv[3].split(",")],
       int(sys.argv[4]) if len(sys.argv) > 4 else 5)
