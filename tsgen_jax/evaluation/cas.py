"""Classification accuracy score (train on synthetic, test on real) and its label sampling."""

from __future__ import annotations

import numpy as np

from tsgen_jax.evaluation import fcn as fcn_lib
from tsgen_jax.evaluation._rng import numpy_rng


def class_proportional_labels(y_train: np.ndarray, n: int, seed_or_key=0,
                              num_classes: int | None = None) -> np.ndarray:
  """n labels (n,) int32 in the class proportions of y_train (N,), shuffled.

  Counts are exact by the largest-remainder method (ties go to the lower class). Use n >= 1000
  for CAS, as in the reference.

  Args:
    seed_or_key: int seed or JAX PRNG key for the shuffle.
    num_classes: K (default max(y_train) + 1); classes absent from y_train get no samples.
  """
  y_train = np.asarray(y_train)
  if y_train.ndim != 1 or len(y_train) == 0 or y_train.min() < 0:
    raise ValueError("y_train must be a non-empty (N,) array of labels in 0..K-1")
  k = int(y_train.max()) + 1 if num_classes is None else num_classes
  counts = np.bincount(y_train, minlength=k)
  quota = n * counts / counts.sum()
  base = np.floor(quota).astype(np.int64)
  extra = np.argsort(-(quota - base), kind="stable")[:n - base.sum()]
  base[extra] += 1
  labels = np.repeat(np.arange(k, dtype=np.int32), base)
  return numpy_rng(seed_or_key).permutation(labels).astype(np.int32)


def classification_accuracy_score(x_gen: np.ndarray, y_gen: np.ndarray, x_test: np.ndarray,
                                  y_test: np.ndarray, num_classes: int, *, steps: int = 1000,
                                  seed: int = 0) -> float:
  """Trains an FCN on generated x_gen (M, C, L), y_gen (M,); accuracy in [0, 1] on real
  x_test (N, C, L), y_test (N,)."""
  model = fcn_lib.train_fcn(x_gen, y_gen, num_classes, steps=steps, seed=seed)
  return model.accuracy(x_test, y_test)


def cas_over_seeds(x_gen: np.ndarray, y_gen: np.ndarray, x_test: np.ndarray,
                   y_test: np.ndarray, num_classes: int, *, steps: int = 1000,
                   seeds=(0,)) -> tuple[float, float, list[float]]:
  """CAS averaged over FCNs that differ only in their seed.

  One CAS FCN's accuracy moves by several points with its seed on imbalanced data (ECG5000:
  82-92 % on the same samples), so averaging narrows the score.

  Args:
    x_gen (M, C, L), y_gen (M,): the class-conditional samples; x_test (N, C, L), y_test (N,):
      the real test split; seeds: one FCN per seed.

  Returns:
    (mean accuracy, sample standard deviation (ddof=1; nan for one seed), per-seed accuracies).
  """
  scores = [classification_accuracy_score(x_gen, y_gen, x_test, y_test, num_classes,
                                          steps=steps, seed=int(s)) for s in seeds]
  if not scores:
    raise ValueError("need at least one seed")
  std = float(np.std(scores, ddof=1)) if len(scores) > 1 else float("nan")
  return float(np.mean(scores)), std, scores
