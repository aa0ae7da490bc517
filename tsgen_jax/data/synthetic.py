"""Built-in synthetic datasets: Cylinder-Bell-Funnel (Saito 1994), the embedded default.

With eta, eps ~ N(0, 1), a ~ U{16..32}, b - a ~ U{32..96} (for length 128; both scale with
the length) and chi the indicator of [a, b]:

* cylinder (label 1): (6 + eta) chi(t) + eps(t)
* bell     (label 2): (6 + eta) chi(t) (t - a) / (b - a) + eps(t)
* funnel   (label 3): (6 + eta) chi(t) (b - t) / (b - a) + eps(t)

Labels are written as UCR writes them (1, 2, 3); preprocessing maps them to 0..K-1.
"""

from __future__ import annotations

import numpy as np

SYNTHETIC_DATASETS = ("CBF",)
CBF_CLASSES = ("cylinder", "bell", "funnel")


def cbf(num: int, length: int = 128, seed=0) -> tuple[np.ndarray, np.ndarray]:
  """Draws ``num`` CBF series with balanced classes in random order.

  Returns:
    x: float32 (num, length); labels: int64 (num,) in {1, 2, 3}.
  """
  rng = np.random.default_rng(seed)
  labels = np.resize(np.arange(1, 4), num)
  rng.shuffle(labels)
  scale = length / 128.0
  lo, hi = int(round(16 * scale)), int(round(32 * scale))
  a = rng.integers(lo, hi + 1, size=num)
  width = rng.integers(int(round(32 * scale)), int(round(96 * scale)) + 1, size=num)
  b = np.minimum(a + width, length - 1)
  eta = rng.standard_normal(num)
  eps = rng.standard_normal((num, length))
  t = np.arange(length)[None, :]
  chi = ((t >= a[:, None]) & (t <= b[:, None])).astype(np.float64)
  ramp_up = (t - a[:, None]) / (b - a)[:, None]
  shape = np.where(labels[:, None] == 1, 1.0,
                   np.where(labels[:, None] == 2, ramp_up, 1.0 - ramp_up))
  x = (6.0 + eta[:, None]) * chi * shape + eps
  return x.astype(np.float32), labels.astype(np.int64)


def synthetic_splits(name: str, num_train: int, num_test: int, length: int, seed: int):
  """Train and test splits of a built-in generator, drawn from independent streams.

  Returns:
    ((x_train (N, L), y_train (N,)), (x_test (M, L), y_test (M,))), raw labels.
  """
  if name.upper() != "CBF":
    raise KeyError(name)
  return (cbf(num_train, length, seed=[seed, 0]), cbf(num_test, length, seed=[seed, 1]))
