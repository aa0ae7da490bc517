"""Custom data from an ``.npz`` file.

Keys: ``x`` (N, C, L) or (N, L), any real dtype, NaN allowed only as a tail; optional ``y``
(N,) integer-valued labels. The test split comes from ``x_test``/``y_test`` in the same file,
else from a second file (``dataset.test_path``), else a seeded 20% hold-out of ``x``.
No pickles are ever loaded (``allow_pickle=False``).
"""

from __future__ import annotations

import os
import zipfile

import numpy as np

from tsgen_jax.errors import DataError

HOLDOUT_FRACTION = 0.2


def _as_series(arr, path: str, key: str) -> np.ndarray:
  if arr.dtype.kind not in "fiu":
    raise DataError(f"{path}: '{key}' has dtype {arr.dtype}; expected a real number array")
  if arr.ndim == 2:
    arr = arr[:, None, :]
  if arr.ndim != 3:
    raise DataError(f"{path}: '{key}' has shape {arr.shape}; expected (N, C, L) or (N, L)")
  if arr.shape[0] == 0:
    raise DataError(f"{path}: '{key}' is empty (0 series)")
  x = arr.astype(np.float32)
  if np.isinf(x).any():
    row = int(np.flatnonzero(np.isinf(x).any(axis=(1, 2)))[0])
    raise DataError(f"{path}: '{key}' row {row} holds an infinite value")
  return x


def _as_labels(arr, n: int, path: str, key: str) -> np.ndarray:
  if arr.ndim != 1 or arr.shape[0] != n:
    raise DataError(f"{path}: '{key}' has shape {arr.shape}; expected ({n},) to match x")
  if arr.dtype.kind not in "fiub":
    raise DataError(f"{path}: '{key}' has dtype {arr.dtype}; expected integer labels")
  if arr.dtype.kind == "f":
    bad = ~np.isfinite(arr) | (arr != np.round(arr))
    if bad.any():
      row = int(np.flatnonzero(bad)[0])
      raise DataError(f"{path}: '{key}' row {row} is {arr[row]!r}; labels must be integers")
  return arr.astype(np.int64)


def read_npz(path: str) -> dict[str, np.ndarray]:
  """Reads every array of an .npz file without pickle; DataError on a missing/bad file."""
  if not path:
    raise DataError("dataset.source='npz' needs dataset.data_dir=<file.npz>")
  if not os.path.isfile(path):
    raise DataError(f"{path}: npz file not found")
  try:
    with np.load(path, allow_pickle=False) as f:
      return {k: f[k] for k in f.files}
  except (ValueError, OSError, zipfile.BadZipFile, EOFError) as e:
    raise DataError(f"{path}: not a readable .npz file ({e})") from None


def load_npz_splits(path: str, test_path: str = "", seed: int = 0):
  """Raw train and test splits of a custom dataset.

  Returns:
    ((x_train (N, C, L) float32, y_train (N,) int64 or None), (x_test, y_test)).
  """
  arrays = read_npz(path)
  if "x" not in arrays:
    raise DataError(f"{path}: no 'x' array (found keys {sorted(arrays)}); expected 'x' and "
                    "optionally 'y', 'x_test', 'y_test'")
  x = _as_series(arrays["x"], path, "x")
  y = _as_labels(arrays["y"], len(x), path, "y") if "y" in arrays else None
  if "x_test" in arrays:
    xt = _as_series(arrays["x_test"], path, "x_test")
    yt = _as_labels(arrays["y_test"], len(xt), path, "y_test") if "y_test" in arrays else None
  elif test_path:
    t = read_npz(test_path)
    if "x" not in t:
      raise DataError(f"{test_path}: no 'x' array (found keys {sorted(t)})")
    xt = _as_series(t["x"], test_path, "x")
    yt = _as_labels(t["y"], len(xt), test_path, "y") if "y" in t else None
  else:
    if len(x) < 2:
      raise DataError(f"{path}: need at least 2 series to hold out a test split")
    perm = np.random.default_rng([seed, 7]).permutation(len(x))
    n_test = max(1, int(round(HOLDOUT_FRACTION * len(x))))
    te, tr = perm[:n_test], perm[n_test:]
    x, xt = x[tr], x[te]
    y, yt = (None, None) if y is None else (y[tr], y[te])
  if xt.shape[1:] != x.shape[1:]:
    raise DataError(f"{path}: test series have shape {xt.shape[1:]} but train {x.shape[1:]}")
  if (y is None) != (yt is None):
    raise DataError(f"{path}: labels given for only one of the train and test splits")
  return (x, y), (xt, yt)
