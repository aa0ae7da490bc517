"""Stage-1 train step on 1, 2, 4 and 8 simulated CPU devices (one subprocess per count with
``XLA_FLAGS=--xla_force_host_platform_device_count=N``), through the real code path:
``run.stage1_setup`` -> ``stage1.make_train_step`` -> ``trainer.compile_step`` with the global
batch from ``BatchStream`` split over the mesh's 'data' axis.

Simulated devices share this machine's cores, so the times check that data parallelism runs
and what it costs in overhead; they say nothing about speed-up on real accelerators. Each
count also trains 2 steps from the same initial state and batches and reports the largest
parameter difference from the first count's run after each step: float rounding only after
step 1; after that a near-tie nearest-code choice in the VQ layer (or Adam's normalisation of
near-zero gradients) can turn rounding differences into larger ones.

    python -m benchmarks.scaling_devices [--devices 1,2,4,8] [--iters 20] [--batch 128]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def child(n: int, batch: int, iters: int, params_out: str) -> dict:
  """Runs in the subprocess with ``n`` devices: correctness steps, then timed steps."""
  import jax
  import numpy as np

  from tsgen_jax import run as run_lib
  from tsgen_jax import sharding, stage1, trainer
  from tsgen_jax.config import base_config
  from tsgen_jax.data import BatchStream, load_dataset

  assert jax.device_count() == n, jax.devices()
  cfg = base_config()  # the default stage-1 model (dim 64, 4 residual blocks)
  cfg.stage1.lfhf = False  # the single codebook, as the stage1_plain rows
  cfg.stage1.batch_size = batch
  ds = load_dataset(cfg.dataset, cfg.stft.n_fft)
  mesh = sharding.make_mesh(cfg.mesh)
  model, state, tx = run_lib.stage1_setup(cfg, ds)
  state = sharding.place_state(state, mesh)
  stream = BatchStream(ds.train, batch, cfg.seed, sharding.data_sharding(mesh))
  t0 = time.perf_counter()
  step = trainer.compile_step(stage1.make_train_step(model, cfg.stage1, tx), mesh, state)
  batches = [stream.device_batch(s) for s in range(2)]
  keys = [jax.random.key(s) for s in range(2)]
  step = step.lower(state, batches[0], keys[0]).compile()
  compile_s = time.perf_counter() - t0
  losses = []
  for s in range(2):
    state, metrics = step(state, batches[s], keys[s])
    losses.append(float(metrics["loss"]))
    np.savez(f"{params_out}.{s + 1}.npz", *[np.asarray(a) for a in jax.tree.leaves(state.params)])
  times = []
  for s in range(iters + 2):
    t = time.perf_counter()
    state, metrics = step(state, batches[s % 2], keys[s % 2])
    jax.block_until_ready(metrics)
    if s >= 2:  # warm-up
      times.append((time.perf_counter() - t) * 1e3)
  return {"devices": n, "mesh": dict(mesh.shape), "batch": batch,
          "per_device_batch": batch // mesh.shape["data"], "compile_s": round(compile_s, 2),
          "median_ms": round(statistics.median(times), 1), "min_ms": round(min(times), 1),
          "max_ms": round(max(times), 1), "iters": iters, "loss_step1": losses[0],
          "loss_step2": losses[1]}


def main(argv=None):
  p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  p.add_argument("--devices", default="1,2,4,8", help="comma-separated device counts")
  p.add_argument("--iters", type=int, default=20, help="timed steps per count (median)")
  p.add_argument("--batch", type=int, default=128, help="global batch (config default 128)")
  p.add_argument("--out", default="", help="also write the rows as JSON to this file")
  p.add_argument("--child", type=int, default=0, help=argparse.SUPPRESS)
  p.add_argument("--params-out", default="", help=argparse.SUPPRESS)
  a = p.parse_args(argv)
  if a.child:
    print("ROW " + json.dumps(child(a.child, a.batch, a.iters, a.params_out)), flush=True)
    return

  import numpy as np
  counts = [int(c) for c in a.devices.split(",")]
  rows, params = [], {}
  with tempfile.TemporaryDirectory() as tmp:
    for n in counts:
      out = os.path.join(tmp, f"params_{n}")
      env = dict(os.environ, JAX_PLATFORMS="cpu",
                 XLA_FLAGS=f"--xla_force_host_platform_device_count={n}",
                 PYTHONPATH=REPO + os.pathsep + os.environ.get("PYTHONPATH", ""))
      r = subprocess.run([sys.executable, "-m", "benchmarks.scaling_devices", "--child",
                          str(n), "--batch", str(a.batch), "--iters", str(a.iters),
                          "--params-out", out], env=env, cwd=REPO, capture_output=True,
                         text=True)
      lines = [l for l in r.stdout.splitlines() if l.startswith("ROW ")]
      if r.returncode or not lines:
        sys.exit(f"{n} devices failed:\n{r.stdout[-2000:]}{r.stderr[-4000:]}")
      rows.append(json.loads(lines[-1][4:]))
      for s in (1, 2):
        with np.load(f"{out}.{s}.npz") as f:
          params[n, s] = [f[k] for k in sorted(f.files, key=lambda k: int(k.split("_")[1]))]
      print(f"{n} devices: {rows[-1]['median_ms']} ms/step", file=sys.stderr, flush=True)
  ref = counts[0]
  for row in rows:
    for s in (1, 2):
      row[f"max_param_diff_step{s}"] = float(max(
          np.max(np.abs(x - y)) for x, y in zip(params[row["devices"], s], params[ref, s])))
  try:
    load = [round(x, 2) for x in os.getloadavg()]
  except OSError:
    load = None
  print(f"\nStage-1 step, global batch {a.batch}, median of {a.iters} steps; "
        f"{os.cpu_count()} CPU cores, load average {load}\n")
  print(f"| devices | mesh (data x model) | per-device batch | ms/step (median) | min-max ms "
        f"| compile s | loss step 1 / 2 | max abs param diff vs {ref} device(s), "
        "step 1 / 2 |")
  print("|---|---|---|---|---|---|---|---|")
  for r in rows:
    print(f"| {r['devices']} | {r['mesh']['data']} x {r['mesh']['model']} | "
          f"{r['per_device_batch']} | {r['median_ms']} | {r['min_ms']}-{r['max_ms']} | "
          f"{r['compile_s']} | {r['loss_step1']:.6f} / {r['loss_step2']:.6f} | "
          f"{r['max_param_diff_step1']:.1e} / {r['max_param_diff_step2']:.1e} |")
  if a.out:
    with open(a.out, "w") as f:
      json.dump({"rows": rows, "cpu_count": os.cpu_count(), "loadavg": load}, f, indent=1)


if __name__ == "__main__":
  main()
