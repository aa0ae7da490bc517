"""Tests for tsgen_jax.evaluation: FID, IS, FCN, CAS, ROCKET, statistics and plots."""

import json
import re
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
import scipy.linalg

from tsgen_jax import evaluation as ev
from tsgen_jax.data import load_split
from tsgen_jax.data.synthetic import cbf
from tsgen_jax.errors import CheckpointError
from tsgen_jax.evaluation import fcn as fcn_lib
from tsgen_jax.models.conv import resolve_rows


def _scipy_fid(a, b):
  mu_a, mu_b = a.mean(0), b.mean(0)
  s_a, s_b = np.cov(a, rowvar=False), np.cov(b, rowvar=False)
  covmean = scipy.linalg.sqrtm(s_a @ s_b).real
  return float(((mu_a - mu_b) ** 2).sum() + np.trace(s_a + s_b - 2 * covmean))


def _cbf_set(num, length=32, seed=0):
  x, y = cbf(num, length, seed=seed)
  return ((x - x.mean()) / x.std())[:, None].astype(np.float32), (y - 1).astype(np.int32)


@pytest.fixture(scope="module")
def tiny_model():
  x, y = _cbf_set(24)
  return ev.train_fcn(x, y, 3, steps=3, batch_size=16, seed=0), x


# --- FID ---------------------------------------------------------------------------------------

@pytest.mark.parametrize("n,m,d", [(200, 200, 16), (200, 150, 16), (40, 50, 64)])
def test_fid_matches_scipy_reference(n, m, d):
  rng = np.random.default_rng(d)
  a = rng.standard_normal((n, d))
  b = rng.standard_normal((m, d)) @ rng.standard_normal((d, d)) * 0.5 + 0.3
  want = _scipy_fid(a, b)
  assert ev.fid_from_features(a, b) == pytest.approx(want, rel=1e-4)
  assert ev.fid_from_features(b, a) == pytest.approx(ev.fid_from_features(a, b), rel=1e-8)


def test_fid_identical_sets_is_zero():
  rng = np.random.default_rng(0)
  for shape in [(200, 16), (30, 128)]:  # full-rank and rank-deficient covariances
    a = rng.standard_normal(shape) * 10
    assert abs(ev.fid_from_features(a, a.copy())) < 1e-6
    assert abs(ev.fid_from_features(a, a[::-1].copy())) < 1e-6


def test_fid_rejects_bad_shapes():
  with pytest.raises(ValueError):
    ev.fid_from_features(np.zeros((5, 3)), np.zeros((5, 4)))


# --- Inception score ---------------------------------------------------------------------------

def test_inception_score_bounds_and_extremes():
  rng = np.random.default_rng(0)
  logits = rng.standard_normal((500, 5)) * 3
  probs = np.exp(logits) / np.exp(logits).sum(1, keepdims=True)
  mean, std = ev.inception_score(probs)
  assert 1.0 <= mean <= 5.0 and std >= 0.0
  confident = np.tile(np.eye(5), (40, 1))  # one-hot, balanced within each of the 10 splits
  assert ev.inception_score(confident) == pytest.approx((5.0, 0.0), abs=1e-9)
  same = np.tile(probs[:1], (100, 1))
  assert ev.inception_score(same) == pytest.approx((1.0, 0.0), abs=1e-9)


# --- FCN ---------------------------------------------------------------------------------------

def test_fcn_shapes_and_probs(tiny_model):
  model, x = tiny_model
  assert model.features(x).shape == (24, 128)
  probs = model.probs(x[:5])
  assert probs.shape == (5, 3) and np.allclose(probs.sum(1), 1.0)
  assert model.predict(x).shape == (24,)


def test_fcn_save_load_round_trip_without_pickle(tiny_model, tmp_path):
  model, x = tiny_model
  path = str(tmp_path / "fcn.npz")
  ev.save_fcn(model, path)
  with np.load(path, allow_pickle=False) as data:  # every entry loads without pickle
    meta = json.loads(str(data["__metadata__"]))
    assert all(data[k].dtype != object for k in data.files)
  assert meta["num_classes"] == 3 and meta["input_shape"] == [1, 32]
  loaded = ev.load_fcn(path)
  np.testing.assert_array_equal(loaded.features(x), model.features(x))
  assert loaded.input_shape == (1, 32)


def test_train_fcn_on_every_gives_the_shorter_runs_models():
  x, y = _cbf_set(24)
  seen = []
  final = ev.train_fcn(x, y, 3, steps=4, batch_size=16, seed=0, every=2,
                       on_every=lambda k, m: seen.append((k, m)))
  assert [k for k, _ in seen] == [2, 4]
  np.testing.assert_allclose(seen[0][1].logits(x),
                             ev.train_fcn(x, y, 3, steps=2, batch_size=16, seed=0).logits(x),
                             rtol=1e-5, atol=1e-5)
  np.testing.assert_array_equal(seen[1][1].logits(x), final.logits(x))
  assert not np.allclose(seen[0][1].logits(x), final.logits(x))


def test_fcn_wgrad_chunk_gives_the_same_gradients_by_slices(monkeypatch):
  """FCN(wgrad_chunk=16) (train_fcn's setting on one CPU device): the same loss and gradients
  as one weight gradient over the batch, and its backward pass runs four times as many
  weight-gradient convolutions (one per 16-row slice of 64)."""
  x, y = _cbf_set(64)
  variables = fcn_lib.FCN(3).init(jax.random.PRNGKey(0), jnp.asarray(x[:1]), train=False)

  def loss(params, chunk):
    (logits, _), _ = fcn_lib.FCN(3, wgrad_chunk=chunk).apply(
        {"params": params, "batch_stats": variables["batch_stats"]}, jnp.asarray(x),
        train=True, mutable=["batch_stats"])
    return -jnp.mean(jax.nn.log_softmax(logits)[jnp.arange(len(y)), y])

  grads = {c: jax.value_and_grad(loss)(variables["params"], c) for c in (0, 16)}
  np.testing.assert_allclose(grads[16][0], grads[0][0], rtol=1e-6)
  for a, b in zip(jax.tree.leaves(grads[16][1]), jax.tree.leaves(grads[0][1])):
    np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6)
  n_conv = {c: jax.jit(jax.grad(loss), static_argnums=1).lower(variables["params"], c)
            .as_text().count("stablehlo.convolution") for c in (0, 16)}
  assert n_conv[0] == 3 + 2 + 3  # forwards, input gradients (not the first), weight gradients
  assert n_conv[16] == 3 + 2 + 3 * 4
  # train_fcn builds the model with the automatic slice size (16 on one CPU device).
  built, fcn_class = [], fcn_lib.FCN
  monkeypatch.setattr(fcn_lib, "FCN", lambda k, **kw: built.append(kw) or fcn_class(k, **kw))
  fcn_lib.train_fcn(x, y, 3, steps=1, batch_size=64)
  assert built == [{"wgrad_chunk": resolve_rows(-1)}]


def test_cached_fcn_trains_once(tmp_path, monkeypatch):
  x, y = _cbf_set(12)
  first = ev.cached_fcn(str(tmp_path), "cbf/32", 0, x, y, 3, steps=2)
  assert (tmp_path / "fcn_cbf_32_seed0_steps2.npz").exists()

  def no_training(*args, **kwargs):
    raise AssertionError("cached_fcn retrained instead of loading the cache")

  monkeypatch.setattr(fcn_lib, "train_fcn", no_training)
  second = ev.cached_fcn(str(tmp_path), "cbf/32", 0, x, y, 3, steps=2)
  np.testing.assert_array_equal(second.features(x), first.features(x))
  with pytest.raises(CheckpointError):
    ev.cached_fcn(str(tmp_path), "cbf/32", 0, x, y, 4, steps=2)


def test_fcn_cbf_accuracy_slow():
  """SLOW (~15-30 s on 2 busy cores): the FCN must exceed 95% test accuracy on synthetic CBF.

  Accuracy plateaus at ~96% (seeds 0-3: 96.0-96.6% at 200 steps) because the split has only
  30 training series; 200 steps leave a margin on every seed tried.
  """
  x, y = load_split("synthetic", "CBF", "train")
  xt, yt = load_split("synthetic", "CBF", "test")
  start = time.time()
  model = ev.train_fcn(x, y, 3, steps=200, seed=0)
  acc = model.accuracy(xt, yt)
  print(f"FCN on CBF: 200 steps, test accuracy {acc:.4f}, {time.time() - start:.1f} s")
  assert acc > 0.95


# --- CAS ---------------------------------------------------------------------------------------

def test_class_proportional_labels_exact_counts():
  y_train = np.array([0] * 5 + [1] * 3 + [2] * 2)
  labels = ev.class_proportional_labels(y_train, 1001, seed_or_key=0)
  assert labels.dtype == np.int32 and labels.shape == (1001,)
  np.testing.assert_array_equal(np.bincount(labels), [501, 300, 200])  # 500.5 rounds up
  assert not np.array_equal(labels, np.sort(labels))  # shuffled
  np.testing.assert_array_equal(labels, ev.class_proportional_labels(y_train, 1001, 0))


def test_cas_pipeline_runs_on_tiny_data():
  x_gen, y_gen = _cbf_set(60, seed=1)
  x_test, y_test = _cbf_set(30, seed=2)
  score = ev.classification_accuracy_score(x_gen, y_gen, x_test, y_test, 3, steps=30, seed=0)
  assert isinstance(score, float) and 0.0 <= score <= 1.0


def test_cas_over_seeds_averages_single_seed_scores():
  x_gen, y_gen = _cbf_set(60, seed=1)
  x_test, y_test = _cbf_set(30, seed=2)
  args = (x_gen, y_gen, x_test, y_test, 3)
  single = [ev.classification_accuracy_score(*args, steps=10, seed=s) for s in (3, 4)]
  mean, std, scores = ev.cas_over_seeds(*args, steps=10, seeds=(3, 4))
  assert scores == single  # the same FCNs, seed by seed
  assert mean == pytest.approx(np.mean(single))
  assert std == pytest.approx(abs(single[0] - single[1]) / np.sqrt(2))  # ddof=1 of two values
  mean1, std1, _ = ev.cas_over_seeds(*args, steps=10, seeds=[3])
  assert mean1 == single[0] and np.isnan(std1)


# --- ROCKET ------------------------------------------------------------------------------------

def _direct_rocket(kernels, k, series):
  """PPV and max of kernel k on one series (C, L) by an explicit NumPy loop."""
  length, dilation = kernels.lengths[k], kernels.dilations[k]
  offset = (11 - length) // 2
  w = kernels.weights[k][:, offset:offset + length]
  pad = (length - 1) * dilation // 2 if kernels.padded[k] else 0
  xp = np.pad(series.astype(np.float64), ((0, 0), (pad, pad)))
  n_out = xp.shape[1] - (length - 1) * dilation
  out = np.array([sum(w[:, m] @ xp[:, j + m * dilation] for m in range(length))
                  for j in range(n_out)]) + kernels.biases[k]
  return (out > 0).mean(), out.max()


def test_rocket_features_match_direct_convolution():
  kernels = ev.rocket_kernels(3, num_kernels=60, length=64, in_channels=2)
  assert set(np.unique(kernels.lengths)) <= {7, 9, 11}
  assert ((kernels.lengths - 1) * kernels.dilations <= 63).all()
  np.testing.assert_allclose(kernels.weights.sum(-1), 0.0, atol=1e-5)  # mean-centred
  x = np.random.default_rng(0).standard_normal((5, 2, 64)).astype(np.float32)
  feats = ev.rocket_features(kernels, x)
  assert feats.shape == (5, 120)
  for k in [int(np.argmax(kernels.dilations)), int(np.argmax(~kernels.padded)),
            int(np.argmax(kernels.padded)), 7]:
    ppv, mx = _direct_rocket(kernels, k, x[2])
    assert feats[2, 2 * k] == pytest.approx(ppv, abs=1e-6)
    assert feats[2, 2 * k + 1] == pytest.approx(mx, abs=1e-4)


def test_rocket_determinism_and_fid():
  x = np.random.default_rng(0).standard_normal((40, 1, 48)).astype(np.float32)
  a = ev.rocket_features(ev.rocket_kernels(1, 50, 48, 1), x)
  b = ev.rocket_features(ev.rocket_kernels(1, 50, 48, 1), x)
  c = ev.rocket_features(ev.rocket_kernels(2, 50, 48, 1), x)
  np.testing.assert_array_equal(a, b)
  assert not np.array_equal(a, c)
  assert abs(ev.rocket_fid(x, x, num_kernels=50, seed=0)) < 1e-6
  shifted = np.cumsum(x, axis=-1) * 0.3 + 1.0
  assert ev.rocket_fid(x, shifted, num_kernels=50, seed=0) > 1.0


# --- Statistics and plots ----------------------------------------------------------------------

def test_series_statistics_zero_for_identical_positive_for_shifted():
  x = np.random.default_rng(0).standard_normal((20, 2, 40))
  same = ev.series_statistics(x, x.copy())
  assert all(isinstance(v, float) for v in same.values())
  assert all(abs(v) < 1e-12 for v in same.values()), same
  shifted = ev.series_statistics(x, x + 0.5)
  assert shifted["mean_diff"] == pytest.approx(0.5)
  assert shifted["marginal_wasserstein"] == pytest.approx(0.5)
  assert shifted["marginal_ks"] > 0.1
  smooth = ev.series_statistics(x, np.cumsum(x, axis=-1))
  assert smooth["acf_diff"] > 0.1 and smooth["std_diff"] > 0.1


def test_plots_write_png(tmp_path):
  x, y = _cbf_set(12)
  real_path, pca_path = tmp_path / "samples.png", tmp_path / "pca.png"
  ev.plot_real_vs_generated(x, y, x[::-1], y[::-1], str(real_path), per_class=3)
  ev.plot_feature_pca(np.random.randn(30, 8), np.random.randn(20, 8) + 1, str(pca_path))
  for path in (real_path, pca_path):
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and path.stat().st_size > 1000


def test_fcn_train_steps_per_call_equal_single_steps():
  """make_train_steps (train_fcn's calls of k steps, a rolled scan): the parameters of k
  single steps; on CPU every convolution of the loop in the NHWC x HWIO form (in any other
  form XLA:CPU runs it there in a naive kernel, benchmarks/NOTES.md item 22)."""
  x, y = _cbf_set(48)
  module = fcn_lib.FCN(3, wgrad_chunk=resolve_rows(-1))
  v = module.init(jax.random.PRNGKey(0), jnp.asarray(x[:1]), train=False)
  tx = optax.adam(1e-3)
  xs, ys = jnp.asarray(x), jnp.asarray(y)
  idx = jnp.asarray(fcn_lib.batch_schedule(48, 3, 16, np.random.default_rng(0)))
  one = fcn_lib.make_train_step(module, tx)
  state = (v["params"], v["batch_stats"], tx.init(v["params"]))
  single = state
  for i in range(3):
    single = one(*single, xs, ys, idx[i])
  many = fcn_lib.make_train_steps(module, tx)
  looped = many(*state, xs, ys, idx)
  for a, b in zip(jax.tree.leaves(looped), jax.tree.leaves(single)):
    np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)
  if jax.default_backend() == "cpu":
    hlo = many.lower(*state, xs, ys, idx).compile().as_text()
    labels = set(re.findall(r" convolution\([^\n]*?dim_labels=([^,]*)", hlo))
    assert " while(" in hlo and labels == {"b0f_0io->b0f"}, labels
