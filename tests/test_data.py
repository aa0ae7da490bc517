"""Synthetic CBF, preprocessing, npz loading, the UCR path through load_split, batches."""

import jax
import numpy as np
import pytest

from tsgen_jax.config import base_config
from tsgen_jax.data import BatchStream, batch_indices, load_dataset, load_split
from tsgen_jax.data import preprocess, synthetic
from tsgen_jax.errors import DataError
from tsgen_jax.sharding import data_sharding, make_mesh


# -- CBF ------------------------------------------------------------------------------------

def test_cbf_sizes_and_determinism():
  x, y = load_split("synthetic", "CBF", "train")
  xt, yt = load_split("synthetic", "CBF", "test")
  assert x.shape == (30, 1, 128) and xt.shape == (900, 1, 128)
  assert x.dtype == np.float32 and y.dtype == np.int32
  assert sorted(np.unique(y)) == [0, 1, 2]
  np.testing.assert_array_equal(np.bincount(yt), [300, 300, 300])
  x2, _ = load_split("synthetic", "CBF", "train")
  np.testing.assert_array_equal(x, x2)
  x3, _ = load_split("synthetic", "CBF", "train", seed=1)
  assert not np.allclose(x, x3)


def test_cbf_class_shapes():
  """Cylinder is flat on [a, b], bell rises, funnel falls (averaged over many draws)."""
  x, labels = synthetic.cbf(3000, seed=3)
  assert set(np.unique(labels)) == {1, 2, 3}
  # Mean value on the plateau region vs the flanks, and the slope inside the event.
  mid, early, late = x[:, 40:48].mean(1), x[:, 32:40].mean(1), x[:, 52:60].mean(1)
  for label in (1, 2, 3):
    assert mid[labels == label].mean() > 2.0  # the event is present
  cyl, bell, fun = (late - early)[labels == 1], (late - early)[labels == 2], \
      (late - early)[labels == 3]
  assert abs(cyl.mean()) < 0.3
  assert bell.mean() > 0.5 and fun.mean() < -0.5
  # Outside the event only noise: mean ~0, std ~1.
  assert abs(x[:, :10].mean()) < 0.05 and abs(x[:, :10].std() - 1) < 0.05


def test_cbf_amplitude_statistics():
  x, labels = synthetic.cbf(4000, seed=5)
  cyl = x[labels == 1]
  # For a cylinder the plateau value is 6 + eta: mean 6, std ~ sqrt(1 + 1).
  plateau = cyl[:, 40:48].mean(1)
  assert abs(plateau.mean() - 6) < 0.15


# -- preprocessing --------------------------------------------------------------------------

def test_zscore_uses_train_stats_and_maps_labels():
  train = np.array([[[1.0, 2.0, 3.0, np.nan]], [[5.0, 6.0, 7.0, 8.0]]], np.float32)
  stats = preprocess.fit_stats(train, np.array([7, 3]))
  vals = np.array([1, 2, 3, 5, 6, 7, 8], np.float64)
  assert stats.mean == pytest.approx(vals.mean()) and stats.std == pytest.approx(vals.std())
  assert stats.classes == (3, 7)
  z = preprocess.normalize(train, stats)
  assert z[0, 0, 3] == 0.0  # NaN tail filled with 0 after the z-score
  np.testing.assert_allclose(preprocess.denormalize(z[1], stats), train[1], rtol=1e-6)
  np.testing.assert_array_equal(preprocess.map_labels(np.array([3, 7, 7]), stats), [0, 1, 1])
  np.testing.assert_array_equal(preprocess.valid_lengths(train), [3, 4])
  with pytest.raises(DataError, match=r"label\(s\) \[9\].*row 2"):
    preprocess.map_labels(np.array([3, 9]), stats)


def test_stats_json_round_trip():
  s = preprocess.Stats(1.5, 2.0, (1, 2))
  assert preprocess.Stats.from_json(s.to_json()) == s


# -- npz ------------------------------------------------------------------------------------

def _cfg(**kw):
  d = base_config().dataset
  d.update(kw)
  return d


def test_npz_multivariate_with_test_split(tmp_path):
  rng = np.random.default_rng(0)
  path = tmp_path / "d.npz"
  np.savez(path, x=rng.standard_normal((20, 3, 40)), y=np.arange(20) % 2 + 5,
           x_test=rng.standard_normal((6, 3, 40)), y_test=np.array([5, 6] * 3))
  ds = load_dataset(_cfg(source="npz", data_dir=str(path)), min_length=8)
  assert ds.shape == (3, 40) and ds.num_classes == 2
  x, y = ds.train.arrays()
  assert x.shape == (20, 3, 40) and set(y) == {0, 1}
  assert len(ds.test) == 6


def test_npz_unlabeled_2d_holdout(tmp_path):
  path = tmp_path / "u.npz"
  np.savez(path, x=np.random.default_rng(1).standard_normal((50, 30)))
  ds = load_dataset(_cfg(source="npz", data_dir=str(path)))
  assert ds.num_classes == 0 and ds.train.y is None
  assert len(ds.train) == 40 and len(ds.test) == 10 and ds.shape == (1, 30)


@pytest.mark.parametrize("arrays,match", [
    (dict(z=np.zeros((4, 10))), "no 'x' array"),
    (dict(x=np.zeros((4, 2, 3, 10))), r"shape \(4, 2, 3, 10\)"),
    (dict(x=np.array([["a"] * 10] * 4)), "dtype"),
    (dict(x=np.zeros((4, 10)), y=np.zeros(3)), r"expected \(4,\)"),
    (dict(x=np.zeros((4, 10)), y=np.array([0.5, 1, 1, 0])), "must be integers"),
    (dict(x=np.zeros((0, 10))), "empty"),
    (dict(x=np.full((4, 10), np.inf)), "infinite"),
])
def test_npz_bad_input(tmp_path, arrays, match):
  path = tmp_path / "bad.npz"
  np.savez(path, **arrays)
  with pytest.raises(DataError, match=match):
    load_dataset(_cfg(source="npz", data_dir=str(path)))


def test_npz_missing_and_garbage_file(tmp_path):
  with pytest.raises(DataError, match="not found"):
    load_dataset(_cfg(source="npz", data_dir=str(tmp_path / "none.npz")))
  (tmp_path / "g.npz").write_text("not a zip")
  with pytest.raises(DataError, match="not a readable"):
    load_dataset(_cfg(source="npz", data_dir=str(tmp_path / "g.npz")))


def test_series_shorter_than_n_fft(tmp_path):
  path = tmp_path / "short.npz"
  np.savez(path, x=np.random.default_rng(0).standard_normal((10, 6)))
  with pytest.raises(DataError, match="shorter than the STFT's n_fft=8"):
    load_dataset(_cfg(source="npz", data_dir=str(path)), min_length=8)


def test_unknown_source_and_synthetic_name():
  with pytest.raises(DataError, match="unknown dataset.source"):
    load_dataset(_cfg(source="csv"))
  with pytest.raises(DataError, match="unknown synthetic dataset"):
    load_dataset(_cfg(name="Nope"))


# -- UCR through load_split -----------------------------------------------------------------

def _write_archive(root):
  d = root / "Tiny"
  d.mkdir(parents=True)
  rows = lambda n, off: "\n".join(  # noqa: E731
      "\t".join([str(1 + i % 2)] + [f"{off + i + j * 0.5:.3f}" for j in range(12)])
      for i in range(n))
  (d / "Tiny_TRAIN.tsv").write_text(rows(6, 0) + "\n")
  (d / "Tiny_TEST.tsv").write_text(rows(4, 10) + "\n")


def test_load_split_ucr(tmp_path):
  _write_archive(tmp_path / "arch")
  kw = dict(data_dir=str(tmp_path / "arch"), cache_dir=str(tmp_path / "cache"))
  x, y = load_split("ucr", "Tiny", "train", **kw)
  xt, yt = load_split("ucr", "Tiny", "test", **kw)
  assert x.shape == (6, 1, 12) and xt.shape == (4, 1, 12)
  raw = np.array([[i + j * 0.5 for j in range(12)] for i in range(6)])
  np.testing.assert_allclose(x[:, 0], (raw - raw.mean()) / raw.std(), atol=1e-5)
  np.testing.assert_array_equal(y, [0, 1, 0, 1, 0, 1])


def test_ucr_streaming_matches_in_memory(tmp_path):
  _write_archive(tmp_path / "arch")
  kw = dict(source="ucr", name="Tiny", data_dir=str(tmp_path / "arch"),
            cache_dir=str(tmp_path / "cache"))
  mem = load_dataset(_cfg(**kw))
  streamed = load_dataset(_cfg(stream_threshold_mb=0, **kw))
  assert streamed.train.x is None  # not loaded whole
  assert streamed.stats.mean == pytest.approx(mem.stats.mean)
  assert streamed.stats.std == pytest.approx(mem.stats.std)
  idx = np.array([3, 0, 5])
  for a, b in zip(mem.train.take(idx), streamed.train.take(idx)):
    np.testing.assert_allclose(a, b, atol=1e-6)


def test_ucr_missing_dir(tmp_path, monkeypatch):
  monkeypatch.delenv("TSGEN_UCR_DIR", raising=False)
  with pytest.raises(DataError, match="archive folder"):
    load_split("ucr", "CBF", "train")
  with pytest.raises(DataError, match="does not exist"):
    load_split("ucr", "CBF", "train", data_dir=str(tmp_path / "nowhere"))


def test_real_ucr_cbf(ucr_archive, tmp_path):
  x, y = load_split("ucr", "CBF", "train", data_dir=ucr_archive, cache_dir=str(tmp_path))
  xt, yt = load_split("ucr", "CBF", "test", data_dir=ucr_archive, cache_dir=str(tmp_path))
  assert x.shape == (30, 1, 128) and xt.shape == (900, 1, 128)
  assert len(np.unique(y)) == 3 and set(yt) == {0, 1, 2}
  assert abs(x.mean()) < 1e-5 and abs(x.std() - 1) < 1e-4


# -- batches --------------------------------------------------------------------------------

def test_batch_indices_are_epoch_permutations():
  n, b = 10, 4
  stream = np.concatenate([batch_indices(0, s, b, n) for s in range(5)])
  assert sorted(stream[:10]) == list(range(10))  # first epoch covers every example once
  assert sorted(stream[10:20]) == list(range(10))
  np.testing.assert_array_equal(batch_indices(0, 3, b, n), stream[12:16])
  assert not np.array_equal(batch_indices(1, 0, b, n), batch_indices(0, 0, b, n))


def test_batch_larger_than_dataset():
  idx = batch_indices(0, 0, 25, 10)
  counts = np.bincount(idx, minlength=10)
  assert len(idx) == 25 and counts.min() >= 2 and counts.max() <= 3


def test_batch_stream_places_on_mesh():
  ds = load_dataset(_cfg())
  mesh = make_mesh()
  stream = BatchStream(ds.train, 8, seed=0, sharding=data_sharding(mesh))
  steps = list(stream.iterate(2, 4))
  assert [s for s, _ in steps] == [2, 3]
  batch = steps[0][1]
  assert isinstance(batch["x"], jax.Array) and batch["x"].shape == (8, 1, 128)
  assert batch["x"].sharding == data_sharding(mesh)
  x, y = ds.train.take(batch_indices(0, 2, 8, 30))
  np.testing.assert_array_equal(np.asarray(batch["x"]), x)
  np.testing.assert_array_equal(np.asarray(batch["y"]), y)
  with pytest.raises(DataError, match="positive integer"):
    BatchStream(ds.train, 0, seed=0)
