"""The evaluator FCN's test accuracy as it trains (results/stage2_study.md, TwoPatterns).

Repeats `tsgen_jax.evaluation.fcn.train_fcn`'s loop (Adam 1e-3, batch 256, the same batch
schedule and seed, so step k equals `train_fcn(steps=k)`), reading the accuracies every EVERY
steps instead of retraining once per step count. Prints train/test accuracy:

  python results/fcn_steps.py TwoPatterns 2000 250 /path/to/UCRArchive_2018
"""
import sys, time
import jax, jax.numpy as jnp, numpy as np, optax
from tsgen_jax.evaluation import fcn as F
from tsgen_jax.data import load_dataset
name = sys.argv[1]; total = int(sys.argv[2]); every = int(sys.argv[3])
from tsgen_jax import config as C
cfg = C.base_config(); cfg.dataset.source="ucr"; cfg.dataset.name=name; cfg.dataset.data_dir=sys.argv[4]
ds = load_dataset(cfg.dataset, min_length=cfg.stft.n_fft)
x, y = ds.train.arrays(); xt, yt = ds.test.arrays(); k = ds.num_classes
print(name, x.shape, xt.shape, k, flush=True)
module = F.FCN(k)
variables = module.init(jax.random.PRNGKey(0), jnp.zeros((1,) + x.shape[1:]), train=False)
tx = optax.adam(1e-3)
params, bs = variables["params"], variables["batch_stats"]; opt = tx.init(params)
@jax.jit
def step(params, bs, opt, xs, ys, idx):
  xb, yb = xs[idx], ys[idx]
  def lf(p):
    (lg, _), nv = module.apply({"params": p, "batch_stats": bs}, xb, train=True, mutable=["batch_stats"])
    return optax.softmax_cross_entropy_with_integer_labels(lg, yb).mean(), (nv, (lg.argmax(-1)==yb).mean())
  g, (nv, acc) = jax.grad(lf, has_aux=True)(params)
  u, opt = tx.update(g, opt, params)
  return optax.apply_updates(params, u), nv["batch_stats"], opt, acc
xs, ys = jnp.asarray(x), jnp.asarray(y)
sched = F.batch_schedule(len(x), total, 256, np.random.default_rng(0))
t = time.time(); accs = []
for i, idx in enumerate(sched):
  params, bs, opt, a = step(params, bs, opt, xs, ys, idx); accs.append(a)
  if (i + 1) % every == 0:
    m = F.FCNModel(jax.device_get(params), jax.device_get(bs), k, tuple(x.shape[1:]))
    print(f"step {i+1}: train-batch acc {np.mean(jax.device_get(accs[-20:])):.3f} test acc {m.accuracy(xt, yt):.4f} train acc {m.accuracy(x, y):.4f} ({time.time()-t:.0f} s)", flush=True)
