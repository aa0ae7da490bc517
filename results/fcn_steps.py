"""The evaluator FCN's test accuracy as it trains (results/stage2_study.md, TwoPatterns).

Trains once with `tsgen_jax.evaluation.fcn.train_fcn` (Adam 1e-3, batch 256, seed 0) and reads
the accuracies every EVERY steps through its `on_every` callback; the model at step k equals
`train_fcn(steps=k)`'s. Prints train/test accuracy:

  python results/fcn_steps.py TwoPatterns 2000 250 /path/to/UCRArchive_2018
"""
import sys
import time

from tsgen_jax import config as config_lib
from tsgen_jax.data import load_dataset
from tsgen_jax.evaluation import fcn as fcn_lib

name, total, every, data_dir = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), sys.argv[4]
cfg = config_lib.base_config()
cfg.dataset.source, cfg.dataset.name, cfg.dataset.data_dir = "ucr", name, data_dir
ds = load_dataset(cfg.dataset, min_length=cfg.stft.n_fft)
x, y = ds.train.arrays()
xt, yt = ds.test.arrays()
print(name, x.shape, xt.shape, ds.num_classes, flush=True)
start = time.time()


def report(k, model):
  print(f"step {k}: test acc {model.accuracy(xt, yt):.4f} train acc {model.accuracy(x, y):.4f} "
        f"({time.time() - start:.0f} s)", flush=True)


fcn_lib.train_fcn(x, y, ds.num_classes, steps=total, every=every, on_every=report)
