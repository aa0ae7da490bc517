"""Loading a dataset from any source into preprocessed, random-access splits."""

from __future__ import annotations

import dataclasses
import os
from typing import Any, Protocol

import numpy as np

from tsgen_jax.data import npz as npz_lib
from tsgen_jax.data import preprocess
from tsgen_jax.data import synthetic
from tsgen_jax.errors import DataError

SOURCES = ("synthetic", "ucr", "npz")
UCR_ENV = "TSGEN_UCR_DIR"


class Reader(Protocol):
  """Random access to raw series: ``read(indices) -> (x (n, C, L) raw, labels (n,) | None)``."""

  def __len__(self) -> int: ...

  def read(self, indices: np.ndarray) -> tuple[np.ndarray, np.ndarray | None]: ...


@dataclasses.dataclass
class Split:
  """One preprocessed split. Either held in memory (``x`` set) or streamed from ``reader``.

  Attributes:
    x: (N, C, L) float32 normalised series with NaN tails filled by 0, or None if streamed.
    y: (N,) int32 labels in 0..K-1, or None for unlabeled data.
    lengths: (N,) int32 true lengths (L unless the series had a NaN tail).
    reader: raw random-access reader when streaming; batches are normalised on the fly.
  """
  x: np.ndarray | None
  y: np.ndarray | None
  lengths: np.ndarray
  stats: preprocess.Stats
  num_channels: int
  length: int
  reader: Any = None

  def __len__(self) -> int:
    return len(self.lengths)

  @property
  def labeled(self) -> bool:
    return self.stats.num_classes > 0

  def take(self, indices: np.ndarray) -> tuple[np.ndarray, np.ndarray | None]:
    """Preprocessed series and labels at ``indices``: ((n, C, L) float32, (n,) int32 | None)."""
    if self.x is not None:
      return self.x[indices], None if self.y is None else self.y[indices]
    raw, labels = self.reader.read(indices)
    y = None if labels is None else preprocess.map_labels(labels, self.stats)
    return preprocess.normalize(raw, self.stats), y

  def arrays(self) -> tuple[np.ndarray, np.ndarray | None]:
    """The whole split in memory: ((N, C, L) float32, (N,) int32 | None)."""
    return self.take(np.arange(len(self)))


@dataclasses.dataclass
class Dataset:
  """Both splits of a dataset with the train statistics."""
  name: str
  train: Split
  test: Split
  stats: preprocess.Stats

  @property
  def num_classes(self) -> int:
    """K, or 0 for unlabeled data."""
    return self.stats.num_classes

  @property
  def shape(self) -> tuple[int, int]:
    """(C, L) of every series."""
    return self.train.num_channels, self.train.length


def ucr_dir(data_dir: str | None) -> str:
  """The UCR archive root: ``data_dir`` if given, else ``$TSGEN_UCR_DIR``."""
  path = data_dir or os.environ.get(UCR_ENV, "")
  if not path:
    raise DataError("dataset.source='ucr' needs the archive folder: pass "
                    f"--config.dataset.data_dir=/path/to/UCRArchive_2018 or set ${UCR_ENV}")
  return path


def _check(x: np.ndarray, where: str, min_length: int) -> np.ndarray:
  """Validates raw (N, C, L) series; returns their true lengths (N,)."""
  if len(x) == 0:
    raise DataError(f"{where}: empty split (no series)")
  lengths = preprocess.valid_lengths(x)
  if x.shape[-1] < min_length:
    raise DataError(f"{where}: series length {x.shape[-1]} is shorter than the STFT's "
                    f"n_fft={min_length}; use a smaller --config.stft.n_fft")
  if (lengths == 0).any():
    row = int(np.flatnonzero(lengths == 0)[0]) + 1
    raise DataError(f"{where}: row {row} has no finite values")
  return lengths


def check_class_counts(y: np.ndarray, stats: preprocess.Stats, min_count: int, where: str):
  """DataError if a train class has fewer than ``min_count`` examples; y mapped (N,)."""
  counts = np.bincount(y, minlength=stats.num_classes)
  small = np.flatnonzero(counts < min_count)
  if len(small):
    c = int(small[0])
    row = int(np.flatnonzero(y == c)[0]) + 1 if counts[c] else 0
    raise DataError(f"{where}: class {stats.classes[c]} has only {counts[c]} train example(s)"
                    f"{f' (row {row})' if row else ''}; at least {min_count} are needed per "
                    "class (probes and class-proportional sampling). Set "
                    "--config.dataset.min_class_count=1 to allow it")


def from_raw_splits(name, train, test, where, zscore, min_length, min_class_count=1) -> Dataset:
  """Validates and preprocesses raw in-memory splits.

  Args:
    train, test: (x (N, C, L) float with optional NaN tails, raw labels (N,) or None).
    where: how to name the data in error messages (a path or a dataset name).
  """
  (x, labels), (xt, labels_t) = train, test
  len_tr = _check(x, f"{where} (train)", min_length)
  len_te = _check(xt, f"{where} (test)", min_length)
  stats = preprocess.fit_stats(x, labels, zscore=zscore, where=f"{where} (train)")
  c, length = x.shape[1:]
  splits = []
  for raw, lab, lens, split in ((x, labels, len_tr, "train"), (xt, labels_t, len_te, "test")):
    y = None if lab is None else preprocess.map_labels(lab, stats, f"{where} ({split})")
    if y is not None and split == "train":
      check_class_counts(y, stats, min_class_count, f"{where} (train)")
    splits.append(Split(preprocess.normalize(raw, stats), y, lens, stats, c, length))
  return Dataset(name, splits[0], splits[1], stats)


def load_dataset(dcfg, min_length: int = 1) -> Dataset:
  """Loads and preprocesses both splits described by a ``config.dataset`` block.

  Args:
    dcfg: ConfigDict with ``source``, ``name``, ``data_dir`` and the source's options.
    min_length: the shortest series length the model accepts (the STFT's n_fft).
  """
  source = dcfg.source
  if source == "synthetic":
    if dcfg.name.upper() not in synthetic.SYNTHETIC_DATASETS:
      raise DataError(f"unknown synthetic dataset {dcfg.name!r}; built-in: "
                      f"{list(synthetic.SYNTHETIC_DATASETS)}")
    for key in ("num_train", "num_test", "length"):
      if int(dcfg[key]) < 1:
        raise DataError(f"dataset.{key} must be a positive integer, got {dcfg[key]}")
    (x, y), (xt, yt) = synthetic.synthetic_splits(dcfg.name, dcfg.num_train, dcfg.num_test,
                                                  dcfg.length, dcfg.seed)
    return from_raw_splits(dcfg.name, (x[:, None], y), (xt[:, None], yt), f"synthetic {dcfg.name}",
                           dcfg.zscore, min_length, dcfg.min_class_count)
  if source == "npz":
    train, test = npz_lib.load_npz_splits(dcfg.data_dir, dcfg.get("test_path", ""), dcfg.seed)
    name = os.path.splitext(os.path.basename(dcfg.data_dir))[0]
    return from_raw_splits(name, train, test, dcfg.data_dir, dcfg.zscore, min_length,
                           dcfg.min_class_count)
  if source == "ucr":
    from tsgen_jax.data import ucr_dataset  # TFDS is imported only when needed.
    return ucr_dataset.load_ucr_dataset(dcfg, ucr_dir(dcfg.data_dir), min_length)
  raise DataError(f"unknown dataset.source {source!r}; expected one of {list(SOURCES)}")


def load_split(source: str, name: str, split: str, data_dir: str | None = None, **kwargs):
  """Preprocessed split of a dataset, with the train split's statistics.

  Args:
    source: 'synthetic', 'ucr' or 'npz'.
    name: dataset name (synthetic generator or UCR folder; ignored for npz).
    split: 'train' or 'test'.
    data_dir: UCR archive root (default ``$TSGEN_UCR_DIR``) or the .npz file.
    **kwargs: other ``config.dataset`` fields (e.g. ``seed``, ``cache_dir``).

  Returns:
    x float32 (N, C, L), y int32 (N,) or None.
  """
  from tsgen_jax.config import base_config
  dcfg = base_config().dataset
  dcfg.update(dict(source=source, name=name, data_dir=data_dir or "", **kwargs))
  if split not in ("train", "test"):
    raise DataError(f"unknown split {split!r}; expected 'train' or 'test'")
  return getattr(load_dataset(dcfg), split).arrays()
