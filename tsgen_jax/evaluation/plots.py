"""Figures for stage-2 evaluation, drawn with matplotlib's Agg canvas (no display, no pyplot)."""

from __future__ import annotations

import os

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure


def _save(fig: Figure, path: str) -> None:
  os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
  FigureCanvasAgg(fig)
  fig.savefig(path, dpi=100)


def _groups(y_real, y_gen) -> list:
  """Row keys: the sorted union of class labels, or [None] (one row) if either set is unlabeled."""
  if y_real is None or y_gen is None:
    return [None]
  return sorted(set(np.asarray(y_real).tolist()) | set(np.asarray(y_gen).tolist()))


def _draw(ax, series: np.ndarray, color: str) -> None:
  """Overlays series (n, C, L), every channel, on one axis."""
  for s in series:
    for channel in s:
      ax.plot(channel, color=color, alpha=0.7, linewidth=0.8)
  if len(series) == 0:
    ax.text(0.5, 0.5, "none", ha="center", va="center", transform=ax.transAxes)


def plot_real_vs_generated(real: np.ndarray, y_real, gen: np.ndarray, y_gen, path: str,
                           per_class: int = 5) -> None:
  """Writes a PNG with one row per class: up to ``per_class`` real series (N, C, L) on the left,
  generated (M, C, L) on the right. With y_real or y_gen None, a single row of all series."""
  real, gen = np.asarray(real), np.asarray(gen)
  rows = _groups(y_real, y_gen)
  fig = Figure(figsize=(10, 2.2 * len(rows)))
  axes = fig.subplots(len(rows), 2, squeeze=False, sharex=True)
  for r, label in enumerate(rows):
    for c, (x, y, name, color) in enumerate(((real, y_real, "real", "tab:blue"),
                                              (gen, y_gen, "generated", "tab:orange"))):
      pick = x if label is None else x[np.asarray(y) == label]
      _draw(axes[r, c], pick[:per_class], color)
      axes[r, c].set_title(name if label is None else f"{name}, class {label}", fontsize=9)
  fig.tight_layout()
  _save(fig, path)


def pca_2d(feat_real: np.ndarray, feat_gen: np.ndarray):
  """Projects real (N, D) and generated (M, D) features on the first two principal axes of their
  union. Returns (proj_real (N, 2), proj_gen (M, 2), explained variance ratio (2,))."""
  both = np.concatenate([feat_real, feat_gen]).astype(np.float64)
  mean = both.mean(axis=0)
  _, s, vt = np.linalg.svd(both - mean, full_matrices=False)
  axes = vt[:2]
  if len(axes) < 2:  # D == 1: pad with a zero axis.
    axes = np.concatenate([axes, np.zeros((2 - len(axes), both.shape[1]))])
  ratio = np.zeros(2)
  var = s ** 2
  ratio[:min(2, len(var))] = (var / max(var.sum(), 1e-300))[:2]
  return (feat_real - mean) @ axes.T, (feat_gen - mean) @ axes.T, ratio


def plot_feature_pca(feat_real: np.ndarray, feat_gen: np.ndarray, path: str) -> None:
  """Writes a PNG scatter of real (N, D) vs generated (M, D) features in 2-D PCA coordinates."""
  pr, pg, ratio = pca_2d(np.asarray(feat_real), np.asarray(feat_gen))
  fig = Figure(figsize=(5, 5))
  ax = fig.subplots()
  ax.scatter(pr[:, 0], pr[:, 1], s=6, alpha=0.5, label="real", color="tab:blue")
  ax.scatter(pg[:, 0], pg[:, 1], s=6, alpha=0.5, label="generated", color="tab:orange")
  ax.set_xlabel(f"PC1 ({100 * ratio[0]:.1f}%)")
  ax.set_ylabel(f"PC2 ({100 * ratio[1]:.1f}%)")
  ax.legend()
  fig.tight_layout()
  _save(fig, path)
