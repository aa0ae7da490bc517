"""Classifier-free statistics comparing real and generated series sets."""

from __future__ import annotations

import numpy as np
from scipy import stats as sps

MAX_LAG = 50


def _check_pair(real, gen) -> tuple[np.ndarray, np.ndarray]:
  real, gen = np.asarray(real, np.float64), np.asarray(gen, np.float64)
  if real.ndim != 3 or gen.ndim != 3 or real.shape[1:] != gen.shape[1:]:
    raise ValueError(f"need (N, C, L) sets of equal (C, L), got {real.shape}, {gen.shape}")
  return real, gen


def mean_autocorrelation(x: np.ndarray, max_lag: int) -> np.ndarray:
  """Mean over series and channels of the (biased) autocorrelation, lags 0..max_lag -> (max_lag+1,).

  Constant series (zero variance) are skipped; returns NaNs if every series is constant.
  """
  xc = x - x.mean(axis=-1, keepdims=True)
  var = (xc * xc).sum(axis=-1)
  ok = var > 1e-12
  length = x.shape[-1]
  acf = np.stack([(xc[..., :length - k] * xc[..., k:]).sum(axis=-1) for k in range(max_lag + 1)],
                 axis=-1)
  return (acf[ok] / var[ok][:, None]).mean(axis=0)


def _mean_moment(x: np.ndarray, fn) -> float:
  """Mean over series and channels of a per-series moment (constant series ignored)."""
  with np.errstate(all="ignore"):
    values = fn(x, axis=-1)
  return float(np.nanmean(values)) if np.isfinite(values).any() else float("nan")


def series_statistics(real: np.ndarray, gen: np.ndarray) -> dict[str, float]:
  """Distances between real (N, C, L) and generated (M, C, L) sets; all 0 for identical sets.

  Returns a dict of floats:
    marginal_wasserstein: 1-D Wasserstein distance between the pooled value distributions.
    marginal_ks: two-sample Kolmogorov-Smirnov statistic of the pooled values.
    acf_diff: mean |difference| of the mean autocorrelation functions over lags 1..min(L-1, 50).
    skew_diff, kurtosis_diff: |difference| of the mean per-series skewness / excess kurtosis.
    mean_diff, std_diff: |difference| of the pooled mean / standard deviation.
    mean_profile_diff: mean |difference| of the per-(channel, time step) means.
  """
  real, gen = _check_pair(real, gen)
  pooled_r, pooled_g = real.ravel(), gen.ravel()
  max_lag = min(real.shape[-1] - 1, MAX_LAG)
  out = {
      "marginal_wasserstein": sps.wasserstein_distance(pooled_r, pooled_g),
      "marginal_ks": sps.ks_2samp(pooled_r, pooled_g).statistic,
      "acf_diff": (np.abs(mean_autocorrelation(real, max_lag) - mean_autocorrelation(gen, max_lag))
                   [1:].mean() if max_lag >= 1 else 0.0),
      "skew_diff": abs(_mean_moment(real, sps.skew) - _mean_moment(gen, sps.skew)),
      "kurtosis_diff": abs(_mean_moment(real, sps.kurtosis) - _mean_moment(gen, sps.kurtosis)),
      "mean_diff": abs(pooled_r.mean() - pooled_g.mean()),
      "std_diff": abs(pooled_r.std() - pooled_g.std()),
      "mean_profile_diff": np.abs(real.mean(axis=0) - gen.mean(axis=0)).mean(),
  }
  return {k: float(v) for k, v in out.items()}
