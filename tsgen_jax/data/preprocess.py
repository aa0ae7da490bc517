"""Reference preprocessing: labels to 0..K-1 and one global z-score from the train split.

NaN tails (variable-length UCR series) are filled with 0 *after* the z-score, as in the
reference, i.e. with the train mean; each series' true length is kept alongside.
"""

from __future__ import annotations

import dataclasses
import json

import numpy as np

from tsgen_jax.errors import DataError


@dataclasses.dataclass(frozen=True)
class Stats:
  """Train-split statistics needed to preprocess any split and to invert the scaling.

  Attributes:
    mean, std: the global scalar z-score (std 1 and mean 0 when z-scoring is off).
    classes: raw label values in train order of sorted unique values; index = mapped label.
      Empty for unlabeled data.
  """
  mean: float
  std: float
  classes: tuple[int, ...]

  @property
  def num_classes(self) -> int:
    return len(self.classes)

  def to_json(self) -> str:
    return json.dumps(dataclasses.asdict(self))

  @classmethod
  def from_json(cls, text: str) -> "Stats":
    d = json.loads(text)
    return cls(float(d["mean"]), float(d["std"]), tuple(int(v) for v in d["classes"]))


def fit_stats(x_train: np.ndarray, labels_train: np.ndarray | None, zscore: bool = True,
              where: str = "train split") -> Stats:
  """Statistics of the raw train split.

  Args:
    x_train: (N, C, L) float, NaN where a series has ended.
    labels_train: (N,) integer raw labels or None.
  """
  if zscore:
    mean = float(np.nanmean(x_train.astype(np.float64)))
    std = float(np.nanstd(x_train.astype(np.float64)))
    if not np.isfinite(std) or std <= 0:
      raise DataError(f"{where}: constant or empty data (std={std}); cannot z-score")
  else:
    mean, std = 0.0, 1.0
  classes = () if labels_train is None else tuple(int(v) for v in np.unique(labels_train))
  return Stats(mean, std, classes)


def normalize(x: np.ndarray, stats: Stats) -> np.ndarray:
  """Z-scores (N, C, L) raw values and fills NaN tails with 0; returns float32."""
  out = (x.astype(np.float32) - np.float32(stats.mean)) / np.float32(stats.std)
  return np.nan_to_num(out, nan=0.0).astype(np.float32)


def denormalize(x, stats: Stats):
  """Maps normalised series back to the data's original scale: x * std + mean."""
  return x * stats.std + stats.mean


def map_labels(labels: np.ndarray, stats: Stats, where: str = "labels") -> np.ndarray:
  """Maps raw labels (N,) to int32 indices 0..K-1 using the train classes."""
  table = {v: i for i, v in enumerate(stats.classes)}
  unknown = sorted(set(int(v) for v in np.unique(labels)) - set(table))
  if unknown:
    rows = [int(np.flatnonzero(labels == unknown[0])[0]) + 1]
    raise DataError(f"{where}: label(s) {unknown} (first at row {rows[0]}) do not occur in "
                    f"the train split, whose classes are {list(stats.classes)}")
  lut = np.vectorize(table.__getitem__, otypes=[np.int32])
  return lut(labels).astype(np.int32) if labels.size else labels.astype(np.int32)


def valid_lengths(x: np.ndarray) -> np.ndarray:
  """True length of each (N, C, L) series: index after the last non-NaN step; int32 (N,)."""
  finite = ~np.isnan(x).all(axis=1)  # (N, L)
  last = x.shape[-1] - np.argmax(finite[:, ::-1], axis=1)
  return np.where(finite.any(axis=1), last, 0).astype(np.int32)
