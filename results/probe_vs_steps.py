"""Linear-SVM / 5-NN probe accuracy of every kept stage-1 checkpoint of a run
(results/stage1_study.md, "Longer training on TwoPatterns").

Prints, for each checkpoint step, the test reconstruction MSE and the probes on the continuous
and quantised average-pooled latents, computed as eval_stage1 computes them. Keep the
checkpoints when training (--config.stage1.checkpoint_every=250
--config.stage1.keep_checkpoints=20), then:

  python results/probe_vs_steps.py runs/traj_tp_vqvae
"""
import os, sys
import numpy as np
from tsgen_jax import checkpoint as ckpt_lib, eval_stage1, run as run_lib
from tsgen_jax.data import load_dataset

workdir = sys.argv[1]
cfg = run_lib.load_run_config(workdir)
ds = load_dataset(cfg.dataset, min_length=cfg.stft.n_fft)
x_test, _ = ds.test.arrays()
print("step recon_mse svm knn svm_q knn_q", flush=True)
for s in sorted(ckpt_lib.Checkpointer(os.path.join(workdir, "checkpoints", "stage1")).all_steps()):
  model, variables = run_lib.load_stage1(cfg, workdir, ds, step=s)
  fn = eval_stage1.make_eval_fn(model, variables)
  te = eval_stage1.batched(fn, x_test)
  p = eval_stage1.latent_probes(fn, ds, te)
  mse = float(np.mean((te["x_hat"] - x_test) ** 2))
  print(f"{s} {mse:.4f} {p['probe_svm_acc']:.3f} {p['probe_knn_acc']:.3f} "
        f"{p['probe_svm_acc_q']:.3f} {p['probe_knn_acc_q']:.3f}", flush=True)
