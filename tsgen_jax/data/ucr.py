"""UCR time-series archive (2018 layout): TSV parsing and a TFDS array_record builder.

Layout: ``<archive_dir>/<Name>/<Name>_TRAIN.tsv`` and ``<Name>_TEST.tsv``; tab-separated, no
header, column 1 the integer class label, the rest the series values. Variable-length series
are NaN-padded at the tail; the NaN tail is kept everywhere so the true length survives.

The TFDS builder :class:`UcrArchive` has one builder config per dataset folder, made at
construction time from the folder name (:func:`ucr_builder_config`); nothing is hard-coded.
It reads the TSV files in place (manual-download style) and writes array_record files once;
they are read back with ``builder.as_data_source()``, which needs no TensorFlow.

Caching: a dataset is prepared under
``<cache_dir>/<Name>-<fingerprint>/ucr_archive/<Name>/<version>/``, where the fingerprint
hashes the resolved path, size and mtime (ns) of both TSV files. A later call with unchanged
files reuses that folder; if a TSV file changes, the fingerprint changes and the dataset is
prepared again into a new folder (prepared folders are never modified, so concurrent readers
are safe). Folders of superseded fingerprints are left in place and may be deleted freely.
"""

from __future__ import annotations

import contextlib
import dataclasses
import difflib
import hashlib
import itertools
import logging
import os
import pathlib
from typing import Any, Iterator, NoReturn, Sequence

from absl import logging as absl_logging
import numpy as np
import tensorflow_datasets as tfds
from tensorflow_datasets.core.utils import tqdm_utils

from tsgen_jax.errors import DataError

ENV_ARCHIVE_DIR = "TSGEN_UCR_DIR"
DEFAULT_CACHE_DIR = "~/.cache/tsgen_jax/tfds"
SPLITS = ("train", "test")
HOMEPAGE = "https://www.cs.ucr.edu/~eamonn/time_series_data_2018/"

_SPLIT_SUFFIX = {"train": "TRAIN", "test": "TEST"}
_LABEL_LIMIT = 2.0**53  # labels beyond this are not exactly representable as float64
_log = logging.getLogger(__name__)


# ------------------------------------------------------------------------------------------
# TSV parsing.


def _clip(text: str, width: int = 24) -> str:
  """``repr`` of a field, shortened for one-line messages."""
  return repr(text if len(text) <= width else text[:width] + "...")


def _read_text(path: pathlib.Path) -> str:
  """The whole file as text; DataError if it is missing, unreadable or not UTF-8."""
  try:
    raw = path.read_bytes()
  except FileNotFoundError:
    raise DataError(f"{path}: file not found") from None
  except OSError as e:
    raise DataError(f"{path}: cannot read file ({e.strerror or e})") from None
  try:
    return raw.decode("utf-8")
  except UnicodeDecodeError as e:
    line = raw[:e.start].count(b"\n") + 1
    raise DataError(f"{path}:{line}: not UTF-8 text (byte {raw[e.start]:#04x})") from None


def _data_rows(text: str) -> list[tuple[int, list[str]]]:
  """Non-blank lines as (1-based line number, tab-separated fields); CRLF tolerated."""
  rows = []
  for number, line in enumerate(text.split("\n"), start=1):
    line = line.rstrip()  # drops '\r' of CRLF and trailing whitespace
    if line:
      rows.append((number, line.split("\t")))
  return rows


def _parse_fast(rows: list[tuple[int, list[str]]]) -> tuple[np.ndarray, np.ndarray] | None:
  """Vectorised parse of well-formed rows into (x (N, L), labels (N,)); None on any problem."""
  if not rows:
    return None
  ncols = len(rows[0][1])
  if ncols < 2 or any(len(fields) != ncols for _, fields in rows):
    return None
  flat = list(itertools.chain.from_iterable(fields for _, fields in rows))
  try:
    table = np.array(flat, dtype=np.float64).reshape(len(rows), ncols)
  except ValueError:
    return None
  labels = table[:, 0]
  with np.errstate(over="ignore", invalid="ignore"):
    x = table[:, 1:].astype(np.float32)
    bad_label = ~np.isfinite(labels) | (labels != np.round(labels))
    bad_label |= np.abs(labels) > _LABEL_LIMIT
  if bad_label.any() or np.isinf(x).any() or np.isnan(x).all(axis=1).any():
    return None
  return x, labels.astype(np.int64)


def _field_problem(text: str, column: int) -> str | None:
  """What is wrong with one field (1-based ``column``; column 1 is the label), or None."""
  try:
    value = float(text)
  except ValueError:
    if column == 1:
      return f"label {_clip(text)} in column 1 is not an integer"
    if not text.strip():
      return f"empty value in column {column}"
    return f"non-numeric value {_clip(text)} in column {column}"
  if column == 1:
    if not np.isfinite(value) or value != round(value) or abs(value) > _LABEL_LIMIT:
      return f"label {_clip(text)} in column 1 is not an integer"
    return None
  with np.errstate(over="ignore"):
    if np.isinf(np.float32(value)):
      return f"non-finite value {_clip(text)} in column {column} (only NaN is allowed)"
  return None


def _row_problem(fields: list[str], ncols: int) -> str | None:
  """What is wrong with one row of ``ncols`` expected columns, or None."""
  if len(fields) != ncols:
    return f"expected {ncols} tab-separated columns, found {len(fields)}"
  for column, text in enumerate(fields, start=1):
    problem = _field_problem(text, column)
    if problem:
      return problem
  if all(np.isnan(float(text)) for text in fields[1:]):
    return "all values are NaN (empty series)"
  return None


def _raise_first_error(path: pathlib.Path, rows: list[tuple[int, list[str]]]) -> NoReturn:
  """Per-line scan that raises a DataError for the first bad line of ``path``."""
  if not rows:
    raise DataError(f"{path}:1: empty split: no data rows")
  first_line, first = rows[0]
  if len(first) < 2:
    raise DataError(f"{path}:{first_line}: expected a label and at least one value "
                    f"separated by tabs, found {len(first)} column")
  for number, fields in rows:
    problem = _row_problem(fields, len(first))
    if problem:
      raise DataError(f"{path}:{number}: {problem}")
  raise DataError(f"{path}: could not parse file")  # Unreachable unless the checks disagree.


def parse_ucr_tsv(path: str | os.PathLike) -> tuple[np.ndarray, np.ndarray]:
  """Parses one UCR ``.tsv`` split file.

  Blank lines are skipped (line numbers in errors still count them); CRLF line ends and a
  trailing empty line are accepted. Labels may be written like ``1``, ``-1`` or
  ``1.0000000e+00`` but must be integer-valued. Values may be ``NaN`` (tail padding or
  missing samples) but not infinite.

  Args:
    path: the ``<Name>_TRAIN.tsv`` or ``<Name>_TEST.tsv`` file.

  Returns:
    ``(x, labels)``: ``x`` float32 (N, L) with NaN tails kept; ``labels`` int64 (N,).

  Raises:
    DataError: missing/unreadable file, empty split, ragged rows, non-numeric or infinite
      values, non-integer labels or an all-NaN row; the message names the file and the
      1-based line number.
  """
  path = pathlib.Path(path)
  rows = _data_rows(_read_text(path))
  parsed = _parse_fast(rows)
  if parsed is None:
    _raise_first_error(path, rows)
  return parsed


def series_lengths(x: np.ndarray) -> np.ndarray:
  """True length of each series: index after its last non-NaN value.

  Args:
    x: float (N, L), NaN-padded at the tail.

  Returns:
    int32 (N,); 0 for an all-NaN row.
  """
  valid = ~np.isnan(x)
  last = x.shape[-1] - np.argmax(valid[:, ::-1], axis=1)
  return np.where(valid.any(axis=1), last, 0).astype(np.int32)


# ------------------------------------------------------------------------------------------
# Archive folder.


def _archive_root(archive_dir: str | os.PathLike | None) -> pathlib.Path:
  """The archive folder (``archive_dir``, else ``$TSGEN_UCR_DIR``); DataError if absent."""
  given = archive_dir or os.environ.get(ENV_ARCHIVE_DIR, "")
  hint = (f"point at the folder holding <Name>/<Name>_TRAIN.tsv with config "
          f"dataset.data_dir or env {ENV_ARCHIVE_DIR}")
  if not given:
    raise DataError(f"no UCR archive directory given; {hint}")
  root = pathlib.Path(given).expanduser()
  if not root.exists():
    raise DataError(f"UCR archive directory {root} does not exist; {hint}")
  if not root.is_dir():
    raise DataError(f"UCR archive directory {root} is not a directory; {hint}")
  return root


def list_datasets(archive_dir: str | os.PathLike | None) -> list[str]:
  """Names of the datasets in a UCR archive folder.

  Args:
    archive_dir: archive root (e.g. ``.../UCRArchive_2018``); empty or None means
      ``$TSGEN_UCR_DIR``.

  Returns:
    Sorted names of the subfolders ``<Name>`` that contain ``<Name>_TRAIN.tsv``.

  Raises:
    DataError: the archive folder does not exist.
  """
  root = _archive_root(archive_dir)
  return sorted(p.name for p in root.iterdir()
                if p.is_dir() and (p / f"{p.name}_TRAIN.tsv").is_file())


def _check_name(name: str, root: pathlib.Path) -> None:
  """DataError listing near matches unless ``name`` is a dataset folder of ``root``."""
  names = list_datasets(root)
  if name in names:
    return
  by_lower = {n.lower(): n for n in names}
  close = difflib.get_close_matches(str(name).lower(), list(by_lower), n=5, cutoff=0.6)
  if close:
    hint = "did you mean: " + ", ".join(by_lower[c] for c in close) + "?"
  elif names:
    shown = ", ".join(names[:10]) + (", ..." if len(names) > 10 else "")
    hint = f"available ({len(names)}): {shown}"
  else:
    hint = "the folder holds no <Name>/<Name>_TRAIN.tsv at all"
  raise DataError(f"unknown UCR dataset {name!r} in {root}; {hint}")


def _check_split(split: str) -> None:
  if split not in SPLITS:
    raise DataError(f"unknown UCR split {split!r}; expected one of {', '.join(SPLITS)}")


def split_path(archive_dir: str | os.PathLike, name: str, split: str) -> pathlib.Path:
  """``<archive_dir>/<name>/<name>_{TRAIN,TEST}.tsv`` for ``split`` in ('train', 'test')."""
  _check_split(split)
  return pathlib.Path(archive_dir) / name / f"{name}_{_SPLIT_SUFFIX[split]}.tsv"


def _fingerprint(paths: Sequence[pathlib.Path]) -> str:
  """Hash of (resolved path, size, mtime_ns) of ``paths``; DataError if one is missing."""
  digest = hashlib.sha256()
  for path in paths:
    try:
      stat = path.stat()
    except FileNotFoundError:
      raise DataError(f"{path}: file not found") from None
    digest.update(f"{path.resolve()}\0{stat.st_size}\0{stat.st_mtime_ns}\n".encode())
  return digest.hexdigest()[:16]


# ------------------------------------------------------------------------------------------
# TFDS builder.


@dataclasses.dataclass(eq=False)
class UcrConfig(tfds.core.BuilderConfig):
  """Builder config for one dataset folder of a UCR archive.

  Attributes:
    archive_dir: archive root holding ``<name>/<name>_{TRAIN,TEST}.tsv``.
    fingerprint: hash of the TSV files' path, size and mtime when the config was made.
  """

  archive_dir: str = ""
  fingerprint: str = ""

  def split_path(self, split: str) -> pathlib.Path:
    """The TSV file of ``split`` ('train' or 'test')."""
    return split_path(self.archive_dir, self.name, split)


def ucr_builder_config(name: str, archive_dir: str | os.PathLike | None) -> UcrConfig:
  """The :class:`UcrConfig` of dataset folder ``name``, fingerprinted from its TSV files.

  Raises:
    DataError: missing archive folder, unknown ``name`` (with near matches), missing file.
  """
  root = _archive_root(archive_dir).resolve()
  _check_name(name, root)
  fingerprint = _fingerprint([split_path(root, name, s) for s in SPLITS])
  return UcrConfig(
      name=name,
      description=f"UCR dataset {name} from {root / name} (files fingerprint {fingerprint})",
      archive_dir=os.fspath(root),
      fingerprint=fingerprint,
  )


class UcrArchive(tfds.core.GeneratorBasedBuilder, skip_registration=True):
  """One UCR archive dataset as TFDS splits 'train' and 'test', in the archive's order.

  Construct with ``config=ucr_builder_config(name, archive_dir)`` (or use
  :func:`ucr_builder`). Each example is ``{'x': float32 (L,), 'label': int64,
  'length': int32}``; ``x`` keeps the NaN tail, ``length`` counts the samples before it.
  Not registered with TFDS (configs exist only per archive folder), so build it directly.
  """

  VERSION = tfds.core.Version("1.0.0")
  RELEASE_NOTES = {"1.0.0": "Initial release."}
  MANUAL_DOWNLOAD_INSTRUCTIONS = (
      f"Download and unpack the UCR archive 2018 from {HOMEPAGE}, then pass its root folder "
      f"(holding <Name>/<Name>_TRAIN.tsv) as config dataset.data_dir or env "
      f"{ENV_ARCHIVE_DIR}.")
  # TFDS looks for a checksums.tsv next to the builder's module through `code_path`, which in
  # TFDS 4.9 imports the optional `importlib_resources` package; there are no downloads here.
  code_path = None

  def _info(self) -> tfds.core.DatasetInfo:
    # DatasetInfo(builder=...) rather than dataset_info_from_configs(): the latter reads
    # metadata files (TAGS.txt, CITATIONS.bib, ...) from this module's folder.
    return tfds.core.DatasetInfo(
        builder=self,
        description="A dataset of the UCR time-series classification archive (2018).",
        features=tfds.features.FeaturesDict({
            "x": tfds.features.Tensor(shape=(None,), dtype=np.float32),
            "label": tfds.features.Scalar(dtype=np.int64),
            "length": tfds.features.Scalar(dtype=np.int32),
        }),
        supervised_keys=("x", "label"),
        homepage=HOMEPAGE,
        disable_shuffling=True,  # Keep the archive's row order.
    )

  def _split_generators(self, dl_manager):
    del dl_manager  # The files are read in place from the config's archive_dir.
    config = self.builder_config
    if not isinstance(config, UcrConfig):
      raise DataError("UcrArchive needs config=ucr_builder_config(name, archive_dir)")
    # Parse both splits before writing anything, so bad input fails fast.
    arrays = {split: parse_ucr_tsv(config.split_path(split)) for split in SPLITS}
    return {split: self._generate_examples(*arrays[split]) for split in SPLITS}

  def _generate_examples(self, x: np.ndarray, labels: np.ndarray):
    lengths = series_lengths(x)
    for i in range(len(x)):
      yield i, {"x": x[i], "label": labels[i], "length": lengths[i]}

  # TFDS prints these with termcolor to stdout; log them instead.
  def _log_download_bytes(self) -> None:
    _log.info("Preparing UCR %s into %s", self.builder_config.name, self.data_dir)

  def _log_download_done(self) -> None:
    _log.info("Prepared UCR %s in %s", self.builder_config.name, self.data_dir)


@contextlib.contextmanager
def _quiet_tfds() -> Iterator[None]:
  """Hides TFDS progress bars and absl info/warnings for the duration of the block."""
  bar_was_on = getattr(tqdm_utils, "_active", True)
  verbosity = absl_logging.get_verbosity()
  tfds.display_progress_bar(False)
  absl_logging.set_verbosity(absl_logging.ERROR)
  try:
    yield
  finally:
    absl_logging.set_verbosity(verbosity)
    tfds.display_progress_bar(bar_was_on)


def _cache_root(cache_dir: str | os.PathLike | None) -> pathlib.Path:
  return pathlib.Path(cache_dir or DEFAULT_CACHE_DIR).expanduser()


def ucr_builder(name: str, archive_dir: str | os.PathLike | None,
                cache_dir: str | os.PathLike | None = None) -> UcrArchive:
  """The (possibly not yet prepared) :class:`UcrArchive` of dataset ``name``.

  Its data lives under ``<cache_dir>/<name>-<fingerprint>/`` (see the module docstring);
  ``cache_dir`` defaults to ``~/.cache/tsgen_jax/tfds``.
  """
  config = ucr_builder_config(name, archive_dir)
  data_dir = _cache_root(cache_dir) / f"{name}-{config.fingerprint}"
  with _quiet_tfds():
    return UcrArchive(config=config, data_dir=data_dir, file_format="array_record")


def _is_prepared(builder: UcrArchive) -> bool:
  with _quiet_tfds():  # TFDS warns when the folder does not exist yet.
    return builder.is_prepared()


def prepare_ucr(name: str, archive_dir: str | os.PathLike | None,
                cache_dir: str | os.PathLike | None = None) -> UcrArchive:
  """Writes the array_record files of ``name`` unless already prepared; returns the builder.

  Raises:
    DataError: as :func:`ucr_builder` and :func:`parse_ucr_tsv`.
  """
  builder = ucr_builder(name, archive_dir, cache_dir)
  if _is_prepared(builder):
    return builder
  config = builder.builder_config
  download_config = tfds.download.DownloadConfig(manual_dir=config.archive_dir)
  try:
    with _quiet_tfds():
      builder.download_and_prepare(download_dir=_cache_root(cache_dir) / "downloads",
                                   download_config=download_config)
  except OSError:
    # Another process may have prepared the same folder concurrently (rename collision).
    builder = ucr_builder(name, archive_dir, cache_dir)
    if not _is_prepared(builder):
      raise
  return builder


def ucr_data_source(name: str, split: str, archive_dir: str | os.PathLike | None,
                    cache_dir: str | os.PathLike | None = None) -> Sequence[dict[str, Any]]:
  """Random access to one split of a UCR dataset, prepared once into the TFDS cache.

  Args:
    name: dataset folder name, e.g. ``'CBF'``.
    split: ``'train'`` or ``'test'``.
    archive_dir: archive root; empty or None means ``$TSGEN_UCR_DIR``.
    cache_dir: where array_record files go; default ``~/.cache/tsgen_jax/tfds``.

  Returns:
    TFDS's ``ArrayRecordDataSource``: a sequence (``len``, ``[i]``, ``__getitems__([i, ...])``)
    of N dicts in archive order: ``x`` numpy float32 (L,) with NaN tail, ``label`` and
    ``length`` as Python ints (stored as int64 / int32).

  Raises:
    DataError: missing archive, unknown name (near matches listed) or split, bad TSV.
  """
  _check_split(split)
  builder = prepare_ucr(name, archive_dir, cache_dir)
  with _quiet_tfds():
    return builder.as_data_source(split=split)


def load_ucr_arrays(
    name: str, split: str, archive_dir: str | os.PathLike | None,
    cache_dir: str | os.PathLike | None = None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
  """One whole split of a UCR dataset as arrays, read through :func:`ucr_data_source`.

  Returns:
    ``(x, labels, lengths)`` in archive order: ``x`` float32 (N, L) with NaN tails,
    ``labels`` int64 (N,), ``lengths`` int32 (N,).

  Raises:
    DataError: as :func:`ucr_data_source`.
  """
  source = ucr_data_source(name, split, archive_dir, cache_dir)
  records = source.__getitems__(list(range(len(source))))
  x = np.stack([np.asarray(r["x"], np.float32) for r in records])
  labels = np.asarray([r["label"] for r in records], np.int64)
  lengths = np.asarray([r["length"] for r in records], np.int32)
  return x, labels, lengths
