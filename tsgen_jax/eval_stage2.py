"""Scoring generated series (stage ``eval_stage2``).

With labels: the supervised FCN (REFERENCE.md), trained once per dataset and seed and cached,
gives FID (real test split vs unconditional samples, n = max(n_test, 256)), IS (10 splits),
CAS (an FCN trained on >= 1000 class-conditional samples in the train proportions, tested on
the real test split; with ``eval.cas_seeds`` > 1 the mean over that many FCN seeds, and
``cas_std``), ``fcn_real_acc`` (the FCN's own test accuracy: CAS's ceiling) and
``fid_train`` (FID of the real train split against the test split: what a generator that
copied the training set would score).
Always: ROCKET-feature FID and classifier-free statistics.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import time

import jax
import numpy as np

from tsgen_jax import evaluation as ev
from tsgen_jax import stage2 as stage2_lib

CAS_MIN_SAMPLES = 1000


@contextlib.contextmanager
def _timed(what: str):
  """Prints how long ``what`` took (scoring is the pipeline's slowest stage after training)."""
  t0 = time.perf_counter()
  yield
  if jax.process_index() == 0:
    print(f"[eval_stage2] {what}: {time.perf_counter() - t0:.0f} s", flush=True)


def fcn_cache_dir(cfg) -> str:
  """Where trained evaluator FCNs are cached (shared by every run on a machine)."""
  return cfg.eval.fcn_cache_dir or os.path.join(os.path.expanduser("~"), ".cache", "tsgen_jax",
                                                "fcn")


def dataset_key(cfg, x_train: np.ndarray) -> str:
  """A cache key naming the dataset and fingerprinting its preprocessed train split."""
  digest = hashlib.sha256(np.ascontiguousarray(x_train).tobytes()).hexdigest()[:12]
  name = "".join(c if c.isalnum() else "-" for c in f"{cfg.dataset.source}-{cfg.dataset.name}")
  return f"{name}-{digest}"


def cas_sample_count(num_train: int) -> int:
  """How many class-conditional samples CAS trains on: max(1000, N_train)."""
  return max(CAS_MIN_SAMPLES, num_train)


def cas_samples(cfg, dataset, sample_fn) -> tuple[np.ndarray, np.ndarray]:
  """The CAS training set: x (M, C, L), y (M,) int32 with M = ``cas_sample_count(N_train)``
  labels in the train split's class proportions, sampled from ``sample_fn``'s stream 2."""
  _, y_train = dataset.train.arrays()
  n_cas = cas_sample_count(len(y_train))
  y_cas = ev.class_proportional_labels(y_train, n_cas, cfg.seed, dataset.num_classes)
  return sample_fn(np.asarray(y_cas, np.int32), 2), y_cas


def evaluate(cfg, dataset, sample_fn, workdir: str) -> dict:
  """Scores samples from ``sample_fn(class_ids (N,), seed) -> x (N, C, L)``.

  Returns the ``results.json['stage2']`` entries and writes plots under ``workdir/plots``.
  """
  x_test, y_test = dataset.test.arrays()
  x_train, y_train = dataset.train.arrays()
  k = dataset.num_classes
  n_uncond = max(len(x_test), 256)
  null = np.full(n_uncond, k, np.int32)  # the null class id: unconditional samples
  with _timed(f"{n_uncond} unconditional samples"):
    x_uncond = sample_fn(null, 1)
  with _timed("ROCKET FID and statistics"):
    results = {"rocket_fid": ev.rocket_fid(x_test, x_uncond,
                                           num_kernels=cfg.eval.rocket_kernels, seed=cfg.seed)}
    results.update(ev.series_statistics(x_test, x_uncond))
  plot_dir = os.path.join(workdir, "plots")
  if k >= 2:
    with _timed("evaluator FCN (trained once per dataset and seed, then cached)"):
      fcn = ev.cached_fcn(fcn_cache_dir(cfg), dataset_key(cfg, x_train), cfg.seed, x_train,
                          y_train, k, steps=cfg.eval.fcn_steps)
    f_real, f_gen = fcn.features(x_test), fcn.features(x_uncond)
    results["fid"] = ev.fid_from_features(f_real, f_gen)
    results["fid_train"] = ev.fid_from_features(f_real, fcn.features(x_train))
    results["is"], results["is_std"] = ev.inception_score(fcn.probs(x_uncond), n_splits=10)
    results["fcn_real_acc"] = fcn.accuracy(x_test, y_test)
    with _timed(f"{cas_sample_count(len(x_train))} class-conditional samples"):
      x_cas, y_cas = cas_samples(cfg, dataset, sample_fn)
    n_fcn = cfg.eval.cas_seeds
    with _timed(f"CAS ({n_fcn} FCN{'s' if n_fcn > 1 else ''} trained on the samples)"):
      results["cas"], cas_std, _ = ev.cas_over_seeds(
          x_cas, y_cas, x_test, y_test, k, steps=cfg.eval.fcn_steps,
          seeds=range(cfg.seed, cfg.seed + n_fcn))
    results["cas_fcn_seeds"] = n_fcn
    if n_fcn > 1:
      results["cas_std"] = cas_std
    if jax.process_index() == 0:
      ev.plot_real_vs_generated(x_test, y_test, x_cas, y_cas,
                                os.path.join(plot_dir, "stage2_real_vs_generated.png"))
      ev.plot_feature_pca(f_real, f_gen, os.path.join(plot_dir, "stage2_fcn_features_pca.png"))
  elif jax.process_index() == 0:
    ev.plot_real_vs_generated(x_test, None, x_uncond, None,
                              os.path.join(plot_dir, "stage2_real_vs_generated.png"))
  results["num_uncond_samples"] = n_uncond
  return {k_: float(v) for k_, v in results.items()}


def make_sample_fn(sampler, params, stage1_vars, batch: int, seed: int):
  """Adapts a compiled stage-2 sampler to ``(class_ids, stream) -> x (N, C, L)``."""
  def fn(class_ids, stream):
    key = jax.random.fold_in(jax.random.key(seed), 1000 + stream)
    x, _ = stage2_lib.generate(sampler, params, stage1_vars, class_ids, batch, key)
    return x
  return fn
