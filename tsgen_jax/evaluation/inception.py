"""Inception score from a classifier's class probabilities."""

from __future__ import annotations

import numpy as np
from scipy import special


def inception_score(probs: np.ndarray, n_splits: int = 10) -> tuple[float, float]:
  """IS = exp(E_x KL(p(y|x) || p(y))) per split; mean and std over splits.

  Args:
    probs: (N, K) class probabilities (rows sum to 1), N >= n_splits.
    n_splits: number of contiguous, near-equal splits (np.array_split).

  Returns:
    (mean, std) over splits, floats in [1, K].
  """
  p = np.asarray(probs, np.float64)
  if p.ndim != 2 or len(p) < n_splits or n_splits < 1:
    raise ValueError(f"probs must be (N >= n_splits={n_splits}, K), got shape {p.shape}")
  if (p < 0).any() or not np.allclose(p.sum(axis=1), 1.0, atol=1e-4):
    raise ValueError("probs rows must be non-negative and sum to 1")
  scores = []
  for part in np.array_split(p, n_splits):
    marginal = part.mean(axis=0, keepdims=True)
    kl = (special.xlogy(part, part) - special.xlogy(part, marginal)).sum(axis=1)
    scores.append(np.exp(kl.mean()))
  return float(np.mean(scores)), float(np.std(scores))
