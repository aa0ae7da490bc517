"""Stage-1 evaluation on the test split: reconstruction, codebook use, representation probes.

Results (``results.json['stage1']``): ``recon_mse`` (time domain), ``tf_mse``
(time-frequency), ``perplexity`` and ``codebook_usage`` over all test tokens, and the linear
SVM / k-NN (k=5) probe accuracies on average-pooled latents, before quantisation
(``probe_svm_acc``, ``probe_knn_acc``) and after (``probe_svm_acc_q``, ``probe_knn_acc_q``).
"""

from __future__ import annotations

import os

import jax
import jax.numpy as jnp
import numpy as np

EVAL_BATCH = 512


def batched(fn, x: np.ndarray, batch: int = EVAL_BATCH):
  """Applies ``fn`` to x in fixed-size chunks (padding the last) and concatenates the leaves."""
  outs = []
  for i in range(0, len(x), batch):
    chunk = x[i:i + batch]
    n = len(chunk)
    if n < batch and len(x) > batch:
      chunk = np.concatenate([chunk, np.repeat(chunk[-1:], batch - n, axis=0)])
    outs.append(jax.tree.map(lambda a, n=n: np.asarray(a)[:n], fn(chunk)))
  return jax.tree.map(lambda *a: np.concatenate(a), *outs)


def make_eval_fn(model, variables):
  """jit-compiled eval pass: x (B, C, L) -> dict of per-sample arrays."""
  branches = model.vqvae.branch_names

  @jax.jit
  def fn(variables, x):
    out = model.apply(variables, x, train=False)
    z_e = model.apply(variables, x, method="encode")
    pooled = jnp.concatenate([z_e[n].mean(axis=(1, 2)) for n in branches], -1)
    pooled_q = jnp.concatenate([out[f"{n}/z_q"].mean(axis=(1, 2)) for n in branches], -1)
    return {"x_hat": out["x_hat"],
            "tf_se": jnp.mean((out["s"] - out["s_hat"]) ** 2, axis=(1, 2, 3)),
            "pooled": pooled, "pooled_q": pooled_q,
            **{f"idx_{n}": out[f"{n}/indices"] for n in branches}}
  # The variables are an argument, not closed-over constants: XLA would otherwise fold
  # every weight into the program and compile far more slowly.
  return lambda x: fn(variables, x)


def codebook_stats(indices: np.ndarray, k: int) -> tuple[float, float]:
  """(perplexity, usage fraction) of integer token indices over a codebook of size k."""
  counts = np.bincount(indices.reshape(-1), minlength=k).astype(np.float64)
  p = counts / counts.sum()
  nz = p[p > 0]
  return float(np.exp(-(nz * np.log(nz)).sum())), float((counts > 0).mean())


def minmax_scale(train: np.ndarray, test: np.ndarray):
  """Scales features to [-1, 1] with the train split's per-feature min/max."""
  lo, hi = train.min(0), train.max(0)
  span = np.where(hi - lo > 0, hi - lo, 1.0)
  return 2 * (train - lo) / span - 1, 2 * (test - lo) / span - 1


def probe_accuracies(f_train, y_train, f_test, y_test) -> tuple[float, float]:
  """Test accuracies of a linear SVM and a 5-NN classifier on [-1, 1]-scaled features."""
  from sklearn.neighbors import KNeighborsClassifier
  from sklearn.svm import SVC
  a, b = minmax_scale(f_train.astype(np.float64), f_test.astype(np.float64))
  if len(np.unique(y_train)) < 2:
    return float("nan"), float("nan")
  svm = SVC(kernel="linear").fit(a, y_train)
  knn = KNeighborsClassifier(n_neighbors=min(5, len(a))).fit(a, y_train)
  return float(svm.score(b, y_test)), float(knn.score(b, y_test))


def latent_probes(fn, dataset, test_out: dict) -> dict:
  """SVM / 5-NN test accuracies on the pooled continuous (``probe_*_acc``) and quantised
  (``probe_*_acc_q``) latents; ``test_out`` is ``batched(fn, x_test)``, the train split is
  encoded here."""
  x_train, y_train = dataset.train.arrays()
  _, y_test = dataset.test.arrays()
  tr = batched(fn, x_train)
  results = {}
  for suffix, key in (("", "pooled"), ("_q", "pooled_q")):
    results[f"probe_svm_acc{suffix}"], results[f"probe_knn_acc{suffix}"] = probe_accuracies(
        tr[key], y_train, test_out[key], y_test)
  return results


def evaluate(cfg, model, variables, dataset, workdir: str) -> dict:
  """Runs the evaluation, writes plots under ``workdir/plots``, returns the metrics."""
  fn = make_eval_fn(model, variables)
  x_test, y_test = dataset.test.arrays()
  out = batched(fn, x_test)
  k = model.vqvae.codebook_size
  results = {"recon_mse": float(np.mean((out["x_hat"] - x_test) ** 2)),
             "tf_mse": float(np.mean(out["tf_se"]))}
  branches = model.vqvae.branch_names
  for n in branches:
    ppl, usage = codebook_stats(out[f"idx_{n}"], k)
    suffix = "" if len(branches) == 1 else f"_{n}"
    results[f"perplexity{suffix}"], results[f"codebook_usage{suffix}"] = ppl, usage
  if dataset.num_classes > 1:
    results.update(latent_probes(fn, dataset, out))
  if jax.process_index() == 0:
    from tsgen_jax import plots
    plot_dir = os.path.join(workdir, "plots")
    plots.reconstructions(x_test, out["x_hat"], y_test, cfg.eval.num_plot_per_class,
                          os.path.join(plot_dir, "stage1_reconstructions.png"))
    plots.codebook_histogram({n: out[f"idx_{n}"] for n in branches}, k,
                             os.path.join(plot_dir, "stage1_codebook_usage.png"))
    plots.embedding_2d(out["pooled"], y_test, os.path.join(plot_dir, "stage1_latent_pca.png"))
    # t-SNE on at most 2000 test points (~2-8 s on one core).
    plots.embedding_tsne(out["pooled"], y_test, os.path.join(plot_dir, "stage1_latent_tsne.png"),
                         seed=cfg.seed)
  return results
