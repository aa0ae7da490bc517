"""Tests for tsgen_jax.data.ucr: TSV parsing, the TFDS array_record builder and its cache."""

import importlib.util
import os
import pathlib
import re
import sys
import time

import numpy as np
import pytest

from tsgen_jax.data import ucr
from tsgen_jax.errors import DataError

NAN = np.nan
_REAL_DEFAULT = "/work/shared/ucr/UCRArchive_2018"

# Alpha: fixed length 5; labels written as 1, -1 and 2.0000000e+00.
ALPHA = {
    "train": ([1, -1, 2, 1],
              [[0.5, 1.0, 1.5, 2.0, 2.5],
               [-1.0, -2.0, -3.0, -4.0, -5.0],
               [1e-3, 2e-3, 3e-3, 4e-3, 5e-3],
               [9.0, 8.0, 7.0, 6.0, 5.0]]),
    "test": ([2, 1, -1],
             [[1.0, 1.0, 1.0, 1.0, 1.0],
              [0.0, 0.25, 0.5, 0.75, 1.0],
              [3.0, 2.0, 1.0, 0.0, -1.0]]),
}
# Beta: variable length 6 with NaN tails (one interior NaN); labels 0..2.
BETA = {
    "train": ([0, 1, 2],
              [[1.0, 2.0, 3.0, 4.0, 5.0, 6.0],
               [1.0, 2.0, 3.0, NAN, NAN, NAN],
               [7.0, NAN, NAN, NAN, NAN, NAN]]),
    "test": ([2, 0, 1, 1],
             [[1.0, NAN, 3.0, NAN, NAN, NAN],
              [4.0, 3.0, 2.0, 1.0, 0.0, NAN],
              [0.5, 0.5, 0.5, 0.5, 0.5, 0.5],
              [6.0, 5.0, NAN, NAN, NAN, NAN]]),
}
BETA_LENGTHS = {"train": [6, 3, 1], "test": [3, 5, 6, 2]}


def _fmt_label(label, i):
  return f"{label:.7e}" if i % 3 == 2 else str(label)  # mix '2.0000000e+00' and '-1'


def _lines(labels, rows):
  return ["\t".join([_fmt_label(lab, i)] + ["NaN" if np.isnan(v) else repr(v) for v in row])
          for i, (lab, row) in enumerate(zip(labels, rows))]


def _write_dataset(root, name, spec, crlf_train=False, blank_test=False):
  folder = root / name
  folder.mkdir(parents=True, exist_ok=True)
  for split, (labels, rows) in spec.items():
    lines = _lines(labels, rows)
    if split == "test" and blank_test:
      lines.insert(1, "")
    eol = "\r\n" if (split == "train" and crlf_train) else "\n"
    path = folder / f"{name}_{split.upper()}.tsv"
    path.write_bytes((eol.join(lines) + eol).encode())  # trailing newline: empty last line


def _make_archive(root):
  _write_dataset(root, "Alpha", ALPHA, crlf_train=True)
  _write_dataset(root, "Beta", BETA, blank_test=True)
  (root / "Gamma").mkdir()  # no Gamma_TRAIN.tsv: not a dataset
  (root / "README.txt").write_text("not a dataset\n")
  return root


def _expected(spec, split):
  labels, rows = spec[split]
  return np.asarray(rows, np.float32), np.asarray(labels, np.int64)


def _record_files(cache):
  return {p: p.stat().st_mtime_ns for p in pathlib.Path(cache).rglob("*.array_record*")}


@pytest.fixture
def archive(tmp_path):
  return _make_archive(tmp_path / "archive")


@pytest.fixture(scope="module")
def prepared(tmp_path_factory):
  """A tiny archive and a cache where both datasets are already prepared."""
  root = _make_archive(tmp_path_factory.mktemp("archive"))
  cache = tmp_path_factory.mktemp("cache")
  for name in ("Alpha", "Beta"):
    ucr.prepare_ucr(name, root, cache)
  return root, cache


@pytest.fixture
def prepare_counter(monkeypatch):
  """Counts how often the builder generates splits (i.e. prepares a dataset)."""
  calls = []
  original = ucr.UcrArchive._split_generators

  def counting(self, dl_manager):
    calls.append(self.builder_config.name)
    return original(self, dl_manager)

  monkeypatch.setattr(ucr.UcrArchive, "_split_generators", counting)
  return calls


# ----------------------------------------------------------------------------------------
# Parsing.


@pytest.mark.parametrize("name,spec", [("Alpha", ALPHA), ("Beta", BETA)])
@pytest.mark.parametrize("split", ["train", "test"])
def test_parse_tiny_archive(archive, name, spec, split):
  x, labels = ucr.parse_ucr_tsv(archive / name / f"{name}_{split.upper()}.tsv")
  want_x, want_labels = _expected(spec, split)
  assert x.dtype == np.float32 and labels.dtype == np.int64
  np.testing.assert_array_equal(x, want_x)  # NaN tails compare equal
  np.testing.assert_array_equal(labels, want_labels)


def test_series_lengths():
  x, _ = _expected(BETA, "test")
  np.testing.assert_array_equal(ucr.series_lengths(x), BETA_LENGTHS["test"])
  assert ucr.series_lengths(x).dtype == np.int32


def _bad(tmp_path, text):
  path = tmp_path / "Bad_TRAIN.tsv"
  path.write_bytes(text if isinstance(text, bytes) else text.encode())
  return path


BAD_CASES = {
    "ragged": ("1\t2\t3\n2\t3\t4\n1\t2\t3\t4\n", 3, "expected 3 tab-separated columns, found 4"),
    "short_row": ("1\t2\t3\n2\t3\n", 2, "expected 3 tab-separated columns, found 2"),
    "non_numeric": ("1\t2\t3\n1\t2\tabc\n", 2, "non-numeric value 'abc' in column 3"),
    "empty_value": ("1\t2\t3\n1\t\t3\n", 2, "empty value in column 2"),
    "label_fraction": ("1\t2\t3\n\n1.5\t2\t3\n", 3, "label '1.5' in column 1 is not an integer"),
    "label_text": ("abc\t2\t3\n", 1, "label 'abc' in column 1 is not an integer"),
    "label_nan": ("1\t2\t3\nNaN\t2\t3\n", 2, "label 'NaN' in column 1 is not an integer"),
    "empty_file": ("", 1, "empty split"),
    "blank_only": ("\n\r\n  \n", 1, "empty split"),
    "all_nan": ("1\t2\t3\n2\tNaN\tNaN\n", 2, "all values are NaN"),
    "inf": ("1\t2\t3\n1\t2\t3\n1\tinf\t3\n", 3, "non-finite value 'inf' in column 2"),
    "float32_overflow": ("1\t2\t1e39\n", 1, "non-finite value '1e39' in column 3"),
    "crlf_blank_lines": ("1\t2\t3\r\n\r\n2\t3\t4\r\n2\t3\tx\r\n", 4,
                         "non-numeric value 'x' in column 3"),
    "one_column": ("1,2,3\n", 1, "expected a label and at least one value separated by tabs"),
    "not_utf8": (b"1\t2\t3\n1\t\xff\t3\n", 2, "not UTF-8"),
}


@pytest.mark.parametrize("case", sorted(BAD_CASES))
def test_parse_bad_input(tmp_path, case):
  text, line, problem = BAD_CASES[case]
  path = _bad(tmp_path, text)
  with pytest.raises(DataError, match=re.escape(f"{path}:{line}: {problem}")):
    ucr.parse_ucr_tsv(path)


def test_parse_reports_first_bad_line(tmp_path):
  path = _bad(tmp_path, "1\t2\t3\n1\t2\tx\n1\t2\t3\t4\n")  # line 2 before the ragged line 3
  with pytest.raises(DataError, match=re.escape(f"{path}:2: non-numeric")):
    ucr.parse_ucr_tsv(path)


def test_parse_missing_file(tmp_path):
  with pytest.raises(DataError, match=r"Nope_TRAIN\.tsv: file not found"):
    ucr.parse_ucr_tsv(tmp_path / "Nope_TRAIN.tsv")


# ----------------------------------------------------------------------------------------
# Archive folder and names.


def test_list_datasets(archive):
  assert ucr.list_datasets(archive) == ["Alpha", "Beta"]
  assert ucr.list_datasets(str(archive)) == ["Alpha", "Beta"]


def test_missing_archive_dir(tmp_path, monkeypatch):
  with pytest.raises(DataError, match=r"does not exist.*dataset\.data_dir.*TSGEN_UCR_DIR"):
    ucr.list_datasets(tmp_path / "nowhere")
  monkeypatch.delenv(ucr.ENV_ARCHIVE_DIR, raising=False)
  with pytest.raises(DataError, match="no UCR archive directory given"):
    ucr.list_datasets(None)


def test_archive_dir_from_env(archive, monkeypatch):
  monkeypatch.setenv(ucr.ENV_ARCHIVE_DIR, str(archive))
  assert ucr.list_datasets(None) == ["Alpha", "Beta"]


def test_unknown_name_lists_near_matches(prepared):
  root, cache = prepared
  with pytest.raises(DataError, match=r"unknown UCR dataset 'Alpah'.*did you mean: Alpha\?"):
    ucr.ucr_data_source("Alpah", "train", root, cache)
  with pytest.raises(DataError, match=r"did you mean: Beta\?"):
    ucr.load_ucr_arrays("beta", "train", root, cache)
  with pytest.raises(DataError, match=r"available \(2\): Alpha, Beta"):
    ucr.ucr_data_source("Zzzzzz", "train", root, cache)


def test_unknown_split(prepared):
  root, cache = prepared
  with pytest.raises(DataError, match="unknown UCR split 'valid'"):
    ucr.ucr_data_source("Alpha", "valid", root, cache)


# ----------------------------------------------------------------------------------------
# TFDS builder and cache.


@pytest.mark.parametrize("name,spec", [("Alpha", ALPHA), ("Beta", BETA)])
@pytest.mark.parametrize("split", ["train", "test"])
def test_load_arrays_match_parse(prepared, name, spec, split):
  root, cache = prepared
  x, labels, lengths = ucr.load_ucr_arrays(name, split, root, cache)
  want_x, want_labels = ucr.parse_ucr_tsv(root / name / f"{name}_{split.upper()}.tsv")
  assert (x.dtype, labels.dtype, lengths.dtype) == (np.float32, np.int64, np.int32)
  assert x.shape == want_x.shape == _expected(spec, split)[0].shape
  np.testing.assert_array_equal(x, want_x)  # values and archive order, NaN tails kept
  np.testing.assert_array_equal(labels, want_labels)
  np.testing.assert_array_equal(lengths, ucr.series_lengths(want_x))
  if name == "Beta":
    np.testing.assert_array_equal(lengths, BETA_LENGTHS[split])


def test_data_source_random_access(prepared):
  root, cache = prepared
  source = ucr.ucr_data_source("Beta", "test", root, cache)
  want_x, want_labels = _expected(BETA, "test")
  assert len(source) == 4
  item = source[1]
  assert set(item) == {"x", "label", "length"}
  assert item["x"].dtype == np.float32 and item["x"].shape == (6,)
  np.testing.assert_array_equal(item["x"], want_x[1])
  assert (item["label"], item["length"]) == (0, 5)
  items = source.__getitems__([3, 0])
  assert [int(r["label"]) for r in items] == [1, 2]
  np.testing.assert_array_equal(items[0]["x"], want_x[3])


def test_builder_info(prepared):
  root, cache = prepared
  builder = ucr.ucr_builder("Beta", root, cache)
  assert builder.is_prepared()
  assert builder.builder_config.name == "Beta"
  assert builder.builder_config.fingerprint in builder.builder_config.description
  assert builder.info.splits["train"].num_examples == 3
  assert builder.info.splits["test"].num_examples == 4
  assert set(builder.info.features.keys()) == {"x", "label", "length"}
  assert builder.info.file_format.value == "array_record"
  assert pathlib.Path(builder.data_dir).is_relative_to(cache)


def test_second_load_reuses(archive, tmp_path, prepare_counter):
  cache = tmp_path / "cache"
  first = ucr.load_ucr_arrays("Alpha", "train", archive, cache)
  files = _record_files(cache)
  assert prepare_counter == ["Alpha"] and len(files) == 2  # train and test
  second = ucr.load_ucr_arrays("Alpha", "test", archive, cache)
  again = ucr.load_ucr_arrays("Alpha", "train", archive, cache)
  assert prepare_counter == ["Alpha"]
  assert _record_files(cache) == files
  assert len(second[0]) == 3
  for a, b in zip(first, again):
    np.testing.assert_array_equal(a, b)


def test_changed_tsv_reprepares(archive, tmp_path, prepare_counter):
  cache = tmp_path / "cache"
  path = archive / "Alpha" / "Alpha_TEST.tsv"
  assert len(ucr.load_ucr_arrays("Alpha", "test", archive, cache)[0]) == 3
  old = os.stat(path)
  path.write_bytes(path.read_bytes() + b"7\t1\t2\t3\t4\t5\n")
  os.utime(path, ns=(old.st_atime_ns, old.st_mtime_ns + 10**9))  # mtime surely changes
  x, labels, _ = ucr.load_ucr_arrays("Alpha", "test", archive, cache)
  assert len(x) == 4 and labels[-1] == 7
  assert prepare_counter == ["Alpha", "Alpha"]
  assert len(list(cache.glob("Alpha-*"))) == 2  # the old folder is left untouched


def test_bad_tsv_fails_through_builder(archive, tmp_path):
  cache = tmp_path / "cache"
  path = archive / "Beta" / "Beta_TEST.tsv"
  text = path.read_text().split("\n")
  text[2] = text[2].replace("3.0", "oops", 1)
  path.write_text("\n".join(text))
  with pytest.raises(DataError, match=re.escape("Beta_TEST.tsv:3: non-numeric value 'oops'")):
    ucr.ucr_data_source("Beta", "train", archive, cache)
  assert not ucr.ucr_builder("Beta", archive, cache).is_prepared()
  assert not _record_files(cache)


def test_missing_test_file(archive, tmp_path):
  (archive / "Alpha" / "Alpha_TEST.tsv").unlink()
  with pytest.raises(DataError, match=r"Alpha_TEST\.tsv: file not found"):
    ucr.ucr_data_source("Alpha", "train", archive, tmp_path / "cache")


def test_prepare_is_quiet_and_needs_no_tensorflow(archive, tmp_path, capfd):
  from tensorflow_datasets.core.utils import tqdm_utils  # pylint: disable=g-import-not-at-top
  bar_before = tqdm_utils._active  # pylint: disable=protected-access
  ucr.load_ucr_arrays("Beta", "train", archive, tmp_path / "cache")
  out, err = capfd.readouterr()
  assert out == "" and err == ""
  assert tqdm_utils._active == bar_before  # pylint: disable=protected-access
  assert importlib.util.find_spec("tensorflow") is None
  assert "tensorflow" not in sys.modules
  with pytest.raises(ImportError):
    importlib.import_module("tensorflow")


# ----------------------------------------------------------------------------------------
# Real archive.


def _real_archive():
  root = os.environ.get(ucr.ENV_ARCHIVE_DIR) or _REAL_DEFAULT
  if not (pathlib.Path(root) / "CBF" / "CBF_TRAIN.tsv").is_file():
    pytest.skip(f"UCR archive with CBF not found at {root!r}; set ${ucr.ENV_ARCHIVE_DIR}")
  return root


def test_real_cbf(tmp_path):
  root = _real_archive()
  start = time.perf_counter()
  x, labels = ucr.parse_ucr_tsv(pathlib.Path(root) / "CBF" / "CBF_TEST.tsv")
  assert time.perf_counter() - start < 1.0
  assert x.shape == (900, 128)
  assert "CBF" in ucr.list_datasets(root)
  for split, n in (("train", 30), ("test", 900)):
    xs, labels, lengths = ucr.load_ucr_arrays("CBF", split, root, tmp_path / "cache")
    assert xs.shape == (n, 128) and labels.shape == (n,)
    assert len(np.unique(labels)) == 3
    assert np.all(lengths == 128)
  np.testing.assert_array_equal(xs, x)
