"""Linear-SVM / 5-NN probe accuracy of every kept stage-1 checkpoint of a run
(results/stage1_study.md, "Longer training on TwoPatterns").

Prints, for each checkpoint step, the test reconstruction MSE and the probes on the continuous
and quantised average-pooled latents, computed as eval_stage1 computes them. Keep the
checkpoints when training (--config.stage1.checkpoint_every=250
--config.stage1.keep_checkpoints=20), then:

  python results/probe_vs_steps.py runs/traj_tp_vqvae
"""
import json, os, sys
import numpy as np
import ml_collections
from tsgen_jax import checkpoint as ckpt_lib, eval_stage1, stage1 as stage1_lib
from tsgen_jax.data import load_dataset
from tsgen_jax.models import stage1 as stage1_model
from tsgen_jax.run import abstract_state

workdir = sys.argv[1]
cfg = ml_collections.ConfigDict(json.load(open(os.path.join(workdir, "config.json"))))
ds = load_dataset(cfg.dataset, min_length=cfg.stft.n_fft)
c, length = ds.shape
model = stage1_model.from_config(cfg, c, length)
ckpt = ckpt_lib.Checkpointer(os.path.join(workdir, "checkpoints", "stage1"), keep=100)
target = abstract_state(lambda: stage1_lib.create_state(cfg, model, c, length)[0])
x_test, y_test = ds.test.arrays(); x_train, y_train = ds.train.arrays()
print("step recon_mse svm knn svm_q knn_q", flush=True)
for s in sorted(ckpt.all_steps()):
  _, state = ckpt.restore(target, step=s)
  fn = eval_stage1.make_eval_fn(model, {"params": state.params, **state.model_state})
  te, tr = eval_stage1.batched(fn, x_test), eval_stage1.batched(fn, x_train)
  svm, knn = eval_stage1.probe_accuracies(tr["pooled"], y_train, te["pooled"], y_test)
  svm_q, knn_q = eval_stage1.probe_accuracies(tr["pooled_q"], y_train, te["pooled_q"], y_test)
  mse = float(np.mean((te["x_hat"] - x_test) ** 2))
  print(f"{s} {mse:.4f} {svm:.3f} {knn:.3f} {svm_q:.3f} {knn_q:.3f}", flush=True)
