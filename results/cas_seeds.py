"""CAS of one finished run's class-conditional samples, with CAS FCNs of several seeds
(results/stage2_study.md, ECG5000).

Draws the CAS samples exactly as eval_stage2 does (so seed cfg.seed reproduces results.json's
`stage2.cas`), then prints the overall and per-class real-test accuracy of the evaluator FCN
(trained on real data, from the cache) and of a CAS FCN per seed:

  python results/cas_seeds.py runs/ecg_default 0,1,2
"""
import sys
import numpy as np
from tsgen_jax import run as run_lib, sharding, evaluation as ev, eval_stage2
from tsgen_jax.data import load_dataset

workdir, seeds = sys.argv[1], [int(s) for s in sys.argv[2].split(",")]
cfg = run_lib.load_run_config(workdir)
ds = load_dataset(cfg.dataset, min_length=cfg.stft.n_fft)
ctx = run_lib.Context(cfg, workdir, ds, sharding.make_mesh(cfg.mesh))
x_test, y_test = ds.test.arrays(); x_train, y_train = ds.train.arrays(); k = ds.num_classes
x_cas, y_cas = eval_stage2.cas_samples(cfg, ds, run_lib.eval_sample_fn(ctx))
print("test class counts", np.bincount(y_test, minlength=k).tolist(), "CAS class counts",
      np.bincount(y_cas, minlength=k).tolist(), flush=True)

def report(name, model):
  pred = model.predict(x_test)
  per = [float(np.mean(pred[y_test == c] == c)) for c in range(k)]
  print(f"{name}: acc {np.mean(pred == y_test):.4f} per class " +
        " ".join(f"{p:.3f}" for p in per), flush=True)

fcn = ev.cached_fcn(eval_stage2.fcn_cache_dir(cfg), eval_stage2.dataset_key(cfg, x_train), cfg.seed,
                    x_train, y_train, k, steps=cfg.eval.fcn_steps)
report("evaluator FCN (real train)", fcn)
print("evaluator FCN on the CAS samples: acc", f"{fcn.accuracy(x_cas, y_cas):.4f}", flush=True)
for s in seeds:
  report(f"CAS FCN seed {s}", ev.train_fcn(x_cas, y_cas, k, steps=cfg.eval.fcn_steps, seed=s))
