"""UCR datasets as :class:`~tsgen_jax.data.dataset.Dataset`: in memory or streamed.

Splits up to ``dataset.stream_threshold_mb`` are read whole from the TFDS array_record files;
larger ones stay on disk and each batch is read by index from ``tfds.data_source``, with the
z-score statistics computed once in a streaming pass over the train split.
"""

from __future__ import annotations

import numpy as np

from tsgen_jax.data import dataset as dataset_lib
from tsgen_jax.data import preprocess
from tsgen_jax.data import ucr
from tsgen_jax.errors import DataError

_CHUNK = 4096


class RecordReader:
  """Random access to one UCR split through its TFDS data source."""

  def __init__(self, source):
    self.source = source

  def __len__(self) -> int:
    return len(self.source)

  def read(self, indices: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Raw series (n, 1, L) float32 with NaN tails and raw labels (n,) int64."""
    idx = [int(i) for i in np.asarray(indices).reshape(-1)]
    getitems = getattr(self.source, "__getitems__", None)
    records = getitems(idx) if getitems else [self.source[i] for i in idx]
    x = np.stack([np.asarray(r["x"], np.float32) for r in records])[:, None, :]
    return x, np.asarray([r["label"] for r in records], np.int64)


def _streamed_stats(reader: RecordReader, zscore: bool, where: str):
  """One pass over a split: Stats and true lengths (N,), without holding it in memory."""
  total = total_sq = count = 0.0
  labels, lengths = [], []
  for start in range(0, len(reader), _CHUNK):
    x, lab = reader.read(np.arange(start, min(start + _CHUNK, len(reader))))
    xd = x.astype(np.float64)
    total += np.nansum(xd)
    total_sq += np.nansum(xd * xd)
    count += np.isfinite(xd).sum()
    labels.append(lab)
    lengths.append(preprocess.valid_lengths(x))
  labels = np.concatenate(labels)
  if zscore:
    mean = total / count
    std = float(np.sqrt(max(total_sq / count - mean * mean, 0.0)))
    if std <= 0:
      raise DataError(f"{where}: constant data (std=0); cannot z-score")
  else:
    mean, std = 0.0, 1.0
  return (preprocess.Stats(float(mean), std, tuple(int(v) for v in np.unique(labels))),
          np.concatenate(lengths))


def load_ucr_dataset(dcfg, archive_dir: str, min_length: int) -> dataset_lib.Dataset:
  """Both splits of UCR dataset ``dcfg.name`` from ``archive_dir`` (see module doc)."""
  name, cache = dcfg.name, dcfg.cache_dir or None
  sources = {s: ucr.ucr_data_source(name, s, archive_dir, cache) for s in ("train", "test")}
  length = len(np.asarray(sources["train"][0]["x"]))
  size_mb = sum(len(s) for s in sources.values()) * length * 4 / 2**20
  where = f"UCR {name}"
  if size_mb <= dcfg.stream_threshold_mb:
    raw = {}
    for split in sources:
      x, labels, _ = ucr.load_ucr_arrays(name, split, archive_dir, cache)
      raw[split] = (x[:, None, :], labels)
    return dataset_lib.from_raw_splits(name, raw["train"], raw["test"], where, dcfg.zscore,
                                       min_length, dcfg.min_class_count)
  if length < min_length:
    raise DataError(f"{where}: series length {length} is shorter than the STFT's "
                    f"n_fft={min_length}; use a smaller --config.stft.n_fft")
  train_reader = RecordReader(sources["train"])
  stats, train_lengths = _streamed_stats(train_reader, dcfg.zscore, where)
  test_reader = RecordReader(sources["test"])
  _, test_lengths = _streamed_stats(test_reader, False, where)
  splits = [dataset_lib.Split(None, None, lens, stats, 1, length, reader=r)
            for r, lens in ((train_reader, train_lengths), (test_reader, test_lengths))]
  for s in splits:
    s.y = None  # labels are mapped per batch in Split.take
  return dataset_lib.Dataset(name, splits[0], splits[1], stats)
