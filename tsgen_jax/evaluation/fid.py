"""Frechet distance between two feature sets (FID), in float64 NumPy without complex numbers."""

from __future__ import annotations

import numpy as np


def _check_features(a: np.ndarray, name: str) -> np.ndarray:
  a = np.asarray(a, np.float64)
  if a.ndim != 2 or a.shape[0] < 2:
    raise ValueError(f"{name} must be (N >= 2, D) features, got shape {a.shape}")
  if not np.isfinite(a).all():
    raise ValueError(f"{name} contains non-finite values")
  return a


def mean_and_covariance(features: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
  """Mean (D,) and unbiased (ddof=1) covariance (D, D) of features (N, D), float64."""
  f = _check_features(features, "features")
  return f.mean(axis=0), np.atleast_2d(np.cov(f, rowvar=False, ddof=1))


def psd_sqrt(s: np.ndarray) -> np.ndarray:
  """Symmetric square root (D, D) of a symmetric PSD matrix (D, D); negative eigenvalues -> 0."""
  w, v = np.linalg.eigh(s)
  return (v * np.sqrt(np.clip(w, 0.0, None))) @ v.T


def trace_sqrt_product(s_a: np.ndarray, s_b: np.ndarray) -> float:
  """Tr((S_a S_b)^{1/2}) for PSD (D, D) matrices.

  S_a S_b is similar to S_a^{1/2} S_b S_a^{1/2}, which is symmetric PSD, so the trace is the sum
  of the square roots of that matrix's (clipped) eigenvalues: no non-symmetric sqrtm needed.
  """
  r = psd_sqrt(s_a)
  m = r @ s_b @ r
  w = np.linalg.eigvalsh(0.5 * (m + m.T))
  return float(np.sqrt(np.clip(w, 0.0, None)).sum())


def frechet_distance(mu_a, s_a, mu_b, s_b) -> float:
  """||mu_a - mu_b||^2 + Tr(S_a + S_b - 2 (S_a S_b)^{1/2}) for means (D,) and covariances (D, D).

  Equal covariances give an exactly zero trace term (the eigen route would leave ~sqrt(eps)
  noise per zero eigenvalue of rank-deficient covariances). Tiny negative totals are clamped to 0.
  """
  diff = np.asarray(mu_a, np.float64) - np.asarray(mu_b, np.float64)
  s_a, s_b = np.asarray(s_a, np.float64), np.asarray(s_b, np.float64)
  if np.array_equal(s_a, s_b):
    trace_term = 0.0
  else:
    trace_term = np.trace(s_a) + np.trace(s_b) - 2.0 * trace_sqrt_product(s_a, s_b)
  return max(float(diff @ diff + trace_term), 0.0)


def trace_sqrt_product_from_samples(a_centred: np.ndarray, b_centred: np.ndarray) -> float:
  """Tr((S_a S_b)^{1/2}) from centred samples a (N, D), b (M, D), with S = X^T X / (n - 1).

  The non-zero eigenvalues of S_a S_b are those of (A B^T)(A B^T)^T / ((N-1)(M-1)), so the trace
  is the nuclear norm of A B^T (N, M) over sqrt((N-1)(M-1)). Cheaper than the (D, D) route when
  N or M < D, and more accurate for rank-deficient covariances (no square root of rounding noise).
  """
  scale = np.sqrt((len(a_centred) - 1) * (len(b_centred) - 1))
  return float(np.linalg.svd(a_centred @ b_centred.T, compute_uv=False).sum() / scale)


def fid_from_features(a: np.ndarray, b: np.ndarray) -> float:
  """FID between feature sets a (N, D) and b (M, D); N, M >= 2. Returns a float >= 0.

  Uses the (D, D) covariance route when D <= min(N, M), else the (N, M) sample-space route.
  """
  a, b = _check_features(a, "a"), _check_features(b, "b")
  if a.shape[1] != b.shape[1]:
    raise ValueError(f"feature dimensions differ: {a.shape[1]} vs {b.shape[1]}")
  if a.shape[1] <= min(len(a), len(b)):
    return frechet_distance(*mean_and_covariance(a), *mean_and_covariance(b))
  if a.shape == b.shape and np.array_equal(a, b):
    return 0.0
  mu_a, mu_b = a.mean(axis=0), b.mean(axis=0)
  ac, bc = a - mu_a, b - mu_b
  diff = mu_a - mu_b
  trace_term = ((ac * ac).sum() / (len(a) - 1) + (bc * bc).sum() / (len(b) - 1)
                - 2.0 * trace_sqrt_product_from_samples(ac, bc))
  return max(float(diff @ diff + trace_term), 0.0)
