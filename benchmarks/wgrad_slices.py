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
from tsgen_jax import run as run_lib
from tsgen_jax import sharding, stage1, trainer
from tsgen_jax.data import load_dataset


def main(length: int, batch: int, settings: list[int], rounds: int) -> None:
  runs = {}
  for rows in settings:
    cfg = stage1_bench.make_config("plain", batch, length)
    cfg.stage1.conv_wgrad_chunk = rows
    ds = load_dataset(cfg.dataset, cfg.stft.n_fft)
    mesh = sharding.make_mesh()
    model, state, tx = run_lib.stage1_setup(cfg, ds)
    state = sharding.replicate_tree(state, mesh)
    step = trainer.compile_step(stage1.make_train_step(model, cfg.stage1, tx), mesh, state)
    b = jax.device_put(common.random_batch(batch, 1, length), sharding.data_sharding(mesh))
    t = time.perf_counter()
    compiled = step.lower(state, b, jax.random.key(1)).compile()
    compile_s = time.perf_counter() - t
    state, _ = compiled(state, b, jax.random.key(1))
    jax.block_until_ready(state)
    runs[rows] = [compiled, state, b, [], compile_s]
  for _ in range(rounds):
    for r in runs.values():
      t = time.perf_counter()
      r[1], _ = r[0](r[1], r[2], jax.random.key(1))
      jax.block_until_ready(r[1])
      r[3].append(time.perf_counter() - t)
  for rows, r in runs.items():
    print(f"L={length} B={batch} rows={rows}: compile {r[4]:.1f}s step median "
          f"{1000 * np.median(r[3]):.0f} ms (min {1000 * min(r[3]):.0f})", flush=True)


if __name__ == "__main__":
  main(int(sys.argv[1]), int(sys.argv[2]), [int(s) for s in sys.argv[3].split(",")],
       int(sys.argv[4]) if len(sys.argv) > 4 else 5)
