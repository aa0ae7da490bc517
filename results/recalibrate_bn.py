"""Test reconstruction MSE and probes of a stage-1 run's last checkpoint, as stored and with the
BatchNorm running statistics recomputed from clean train batches (results/stage1_study.md,
ShapesAll): 100 train-mode passes of the original series only (random batches of the run's
batch size), keeping parameters and codebooks, so the eval-mode statistics no longer include
the augmented views' encoder passes.

  python results/recalibrate_bn.py runs/traj_ShapesAll_vibcreg_s0_b32
"""
import os, sys
import numpy as np, jax, jax.numpy as jnp
from tsgen_jax import eval_stage1, run as run_lib
from tsgen_jax.data import load_dataset
workdir = sys.argv[1]
cfg = run_lib.load_run_config(workdir)
ds = load_dataset(cfg.dataset, min_length=cfg.stft.n_fft)
x_test, _ = ds.test.arrays(); x_train, _ = ds.train.arrays()
model, variables = run_lib.load_stage1(cfg, workdir, ds)
def evaluate(v):
  """(test recon MSE, probe summary) from one pass of the eval function over the test split."""
  fn = eval_stage1.make_eval_fn(model, v)
  te = eval_stage1.batched(fn, x_test)
  p = eval_stage1.latent_probes(fn, ds, te)
  return (float(np.mean((te["x_hat"] - x_test) ** 2)),
          f"svm {p['probe_svm_acc']:.3f} svm_q {p['probe_svm_acc_q']:.3f} "
          f"knn {p['probe_knn_acc']:.3f}")
m0, p0 = evaluate(variables)
mut = [k for k in variables if k != "params"]
@jax.jit
def upd(v, xb, key):
  _, new = model.apply(v, xb, train=True, mutable=mut, rngs={"vq": key})
  return {**v, "batch_stats": new["batch_stats"]}
v = dict(variables)
rng = np.random.default_rng(0)
bs = int(cfg.stage1.batch_size)
for i in range(100):
  idx = rng.choice(len(x_train), bs, replace=False)
  v = upd(v, jnp.asarray(x_train[idx]), jax.random.key(i))
m1, p1 = evaluate(v)
print(f"{os.path.basename(workdir)} recon_mse stored {m0:.4f} recalibrated {m1:.4f}", flush=True)
print(f"  probes stored: {p0} | recalibrated: {p1}", flush=True)
