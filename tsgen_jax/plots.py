"""Figures written to ``workdir/plots`` (matplotlib, Agg backend, no display needed)."""

from __future__ import annotations

import os

import numpy as np


def _plt():
  import matplotlib
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt
  return plt


def _save(fig, path):
  os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
  fig.tight_layout()
  fig.savefig(path, dpi=80)
  _plt().close(fig)


def reconstructions(x, x_hat, y, per_class: int, path: str):
  """Originals (black) against reconstructions (red): ``per_class`` series per class.

  x, x_hat: (N, C, L); y: (N,) labels or None. Channel 0 is drawn.
  """
  plt = _plt()
  classes = [None] if y is None else sorted(np.unique(y).tolist())
  fig, axes = plt.subplots(len(classes), per_class, figsize=(3 * per_class, 2 * len(classes)),
                           squeeze=False)
  for r, c in enumerate(classes):
    idx = np.arange(len(x)) if c is None else np.flatnonzero(y == c)
    for j in range(per_class):
      ax = axes[r, j]
      if j < len(idx):
        ax.plot(x[idx[j], 0], "k", lw=1, label="original")
        ax.plot(x_hat[idx[j], 0], "r", lw=1, label="reconstruction")
      ax.set_title(f"class {c}" if c is not None else f"#{j}", fontsize=8)
      ax.tick_params(labelsize=6)
  axes[0, 0].legend(fontsize=6)
  _save(fig, path)


def codebook_histogram(indices: dict, k: int, path: str):
  """Bar chart of code usage counts per branch; indices {branch: int array}."""
  plt = _plt()
  fig, axes = plt.subplots(1, len(indices), figsize=(5 * len(indices), 3), squeeze=False)
  for ax, (name, idx) in zip(axes[0], sorted(indices.items())):
    ax.bar(np.arange(k), np.bincount(np.asarray(idx).reshape(-1), minlength=k))
    ax.set_title(f"codebook usage ({name})", fontsize=9)
    ax.set_xlabel("code")
  _save(fig, path)


def pca_2d(features: np.ndarray) -> np.ndarray:
  """First two principal components of (N, D) features: (N, 2)."""
  f = features - features.mean(0)
  _, _, vt = np.linalg.svd(f, full_matrices=False)
  return f @ vt[:2].T


def embedding_2d(features, y, path: str):
  """PCA scatter of (N, D) features coloured by label y (N,) or uncoloured."""
  plt = _plt()
  p = pca_2d(np.asarray(features, np.float64))
  fig, ax = plt.subplots(figsize=(4, 4))
  color = {} if y is None else {"c": np.asarray(y), "cmap": "tab10"}
  ax.scatter(p[:, 0], p[:, 1], s=6, **color)
  ax.set_title("PCA of pooled test latents", fontsize=9)
  _save(fig, path)


def tsne_2d(features: np.ndarray, seed: int = 0, max_iter: int = 500) -> np.ndarray:
  """2-d t-SNE of (N, D) features (sklearn, PCA init, one thread): (N, 2)."""
  from sklearn.manifold import TSNE
  from threadpoolctl import threadpool_limits
  f = np.asarray(features, np.float64)
  f = (f - f.mean(0)) / np.where(f.std(0) > 0, f.std(0), 1.0)
  perplexity = float(min(30.0, (len(f) - 1) / 3))
  # One OpenMP thread: on a busy CPU the Barnes-Hut gradient is ~5x faster than with all.
  with threadpool_limits(1):
    return TSNE(n_components=2, init="pca", perplexity=perplexity, max_iter=max_iter,
                random_state=seed, n_jobs=1).fit_transform(f)


def embedding_tsne(features, y, path: str, max_points: int = 2000, seed: int = 0) -> bool:
  """t-SNE scatter of (N, D) features coloured by label y (N,) or uncoloured.

  At most ``max_points`` points are embedded (a fixed random subset beyond that); fewer than 5
  points are skipped. Returns whether the plot was written.
  """
  features = np.asarray(features)
  n = len(features)
  if n < 5:
    return False
  idx = np.arange(n)
  if n > max_points:
    idx = np.sort(np.random.default_rng(seed).choice(n, max_points, replace=False))
  p = tsne_2d(features[idx], seed)
  plt = _plt()
  fig, ax = plt.subplots(figsize=(4, 4))
  color = {} if y is None else {"c": np.asarray(y)[idx], "cmap": "tab10"}
  ax.scatter(p[:, 0], p[:, 1], s=6, **color)
  sub = f", {len(idx)} of {n}" if len(idx) < n else ""
  ax.set_title(f"t-SNE of pooled test latents{sub}", fontsize=9)
  _save(fig, path)
  return True


def series_grid(x, title: str, path: str, n: int = 16):
  """Up to ``n`` series (channel 0) in a grid. x (N, C, L)."""
  plt = _plt()
  n = min(n, len(x))
  cols = 4
  rows = max(1, -(-n // cols))
  fig, axes = plt.subplots(rows, cols, figsize=(3 * cols, 1.8 * rows), squeeze=False)
  for i, ax in enumerate(axes.reshape(-1)):
    if i < n:
      ax.plot(x[i, 0], lw=1)
    ax.tick_params(labelsize=6)
  fig.suptitle(title, fontsize=9)
  _save(fig, path)
