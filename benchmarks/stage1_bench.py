"""Stage-1 train steps (plain, Barlow Twins, VIbCReg, LF+HF) through the real code path:
``run.stage1_setup`` -> ``stage1.make_train_step`` -> ``trainer.compile_step``.
The SSL rows include the augmentation (it runs inside the jitted step)."""

from __future__ import annotations

import jax

from benchmarks import common
from tsgen_jax import run as run_lib
from tsgen_jax import sharding, stage1, trainer
from tsgen_jax.config import base_config
from tsgen_jax.data import load_dataset

# "vibcreg_lfhf" is the main config's step (configs/vibcreg.py with the default LF/HF split).
VARIANTS = ("plain", "barlowtwins", "vibcreg", "lfhf", "vibcreg_lfhf")
# The target rows again as the training loop runs them: its default steps per call.
LOOP_K = int(base_config().stage1.steps_per_call)
LOOP_VARIANTS = ("plain", "barlowtwins", "vibcreg", "lfhf")


def make_config(variant: str, batch: int, length: int = 128, matmul_dtype="float32"):
  cfg = base_config()
  cfg.dataset.length = length
  cfg.dataset.num_train = 64
  cfg.dataset.num_test = 8
  cfg.stage1.batch_size = batch
  cfg.stage1.matmul_dtype = matmul_dtype
  method = variant.removesuffix("_lfhf")
  if method in ("barlowtwins", "vibcreg"):
    cfg.stage1.ssl.method = method
    cfg.stage1.ssl.weight = 1.0 if method == "barlowtwins" else 0.01
  # NC-VQVAE's rows (plain, SSL) use its single codebook; "*lfhf" rows TimeVQVAE's split.
  cfg.stage1.lfhf = variant.endswith("lfhf")
  return cfg


def build(variant: str, batch: int, length: int = 128, matmul_dtype="float32"):
  """(jitted step, state, (batch, rng)) for one stage-1 variant."""
  return build_from_config(make_config(variant, batch, length, matmul_dtype))


def build_from_config(cfg, steps_per_call: int = 1):
  """(jitted step, state, (batch, rng)) for the stage-1 step of ``cfg`` (see make_config).

  ``steps_per_call`` > 1: the jitted function is ``trainer.compile_steps``, k steps in one
  call as the training loop runs them, and the arguments are k copies of the batch and the
  key (``common.loop_args``)."""
  batch, length = cfg.stage1.batch_size, cfg.dataset.length
  ds = load_dataset(cfg.dataset, cfg.stft.n_fft)
  mesh = sharding.make_mesh()
  model, state, tx = run_lib.stage1_setup(cfg, ds)
  step = stage1.make_train_step(model, cfg.stage1, tx)
  state = sharding.replicate_tree(state, mesh)
  ssl = cfg.stage1.ssl.method != "none"
  b = common.random_batch(batch, 1, length)
  b = jax.device_put(b, sharding.data_sharding(mesh))
  rng = jax.random.key(1)
  if steps_per_call > 1:
    jitted = trainer.compile_steps(step, mesh, state, steps_per_call, ssl=ssl)
    return jitted, state, common.loop_args(b, rng, steps_per_call)
  return trainer.compile_step(step, mesh, state, ssl=ssl), state, (b, rng)


def warm_step(variant: str, batch: int, length: int = 128):
  """(compiled, flops or None, call) for the stage-1 step of ``variant``: ``call()`` runs one
  step on carried state (``common.stateful_call``) and has run once already. The A/B scripts
  build each form under their patches with it, then alternate the calls."""
  jitted, state, (b, rng) = build(variant, batch, length)
  compiled, _, flops, _ = common.compile_fn(jitted, state, b, rng)
  call = common.stateful_call(compiled, state, b, rng)
  call()  # warm-up
  return compiled, flops, call


def bench(variant: str, batch: int, length: int = 128, name=None, iters=common.DEFAULT_ITERS,
          peak_gflops=None, matmul_dtype="float32"):
  jitted, state, args = build(variant, batch, length, matmul_dtype)
  name = name or f"stage1_{variant}_b{batch}"
  return common.bench_stateful(name, jitted, state, args, iters, peak_gflops,
                               series_per_s=None)


def bench_loop(variant: str, batch: int, k: int, iters=common.DEFAULT_ITERS, peak_gflops=None):
  """Row ``stage1_{variant}_b{batch}_k{k}``: the step as the training loop runs it with
  ``stage1.steps_per_call = k`` (k steps per call, L = 128); times per step (call / k)."""
  jitted, state, args = build_from_config(make_config(variant, batch), steps_per_call=k)
  r = common.bench_steps(f"stage1_{variant}_b{batch}_k{k}", jitted, state, args, k, iters,
                         peak_gflops)
  r["series_per_s"] = round(batch / (r["median_ms"] / 1e3), 1)
  return r


# Scaling-grid combos skipped by default: B * L above this takes minutes per 20 steps on
# 2 cores (L=512/B=512 ~ 16x and L=1024/B=512 ~ 32x the B=128, L=128 step). ``--only`` runs them.
MAX_GRID_BL = 128 * 1024


def rows(peak_gflops, only=None, skip_big=True):
  out = []
  specs = [(f"stage1_{v}_b{b}", v, b, 128) for b in (128, 32) for v in VARIANTS]
  specs += [(f"stage1_plain_L{l}_b{b}", "plain", b, l)
            for l in (128, 512, 1024) for b in (32, 128, 512)]
  for name, v, b, l in specs:
    if only and name not in only:
      continue
    if skip_big and b * l > MAX_GRID_BL:
      out.append({"name": name, "skipped": f"B*L={b * l} > {MAX_GRID_BL}: minutes per "
                                          "20 steps on 2 cores; run with --only"})
      print(out[-1], flush=True)
      continue
    r = bench(v, b, l, name=name, peak_gflops=peak_gflops)
    r.pop("series_per_s", None)
    r["series_per_s"] = round(b / (r["median_ms"] / 1e3), 1)
    out.append(r)
    print(r, flush=True)
  for v in LOOP_VARIANTS:
    if not only or f"stage1_{v}_b128_k{LOOP_K}" in only:
      out.append(bench_loop(v, 128, LOOP_K, peak_gflops=peak_gflops))
      print(out[-1], flush=True)
  return out
