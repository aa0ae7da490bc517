"""Throughput of each augmentation (batched view_fn, B=128, L=128, jitted) and of the
default SSL view pipeline."""

from __future__ import annotations

import jax

from benchmarks import common
from tsgen_jax import augment
from tsgen_jax.config import base_config

B, L = 128, 128


def rows(peak_gflops, only=None):
  out = []
  x = common.random_batch(B, 1, L)["x"]
  names = list(augment.AUGMENTATIONS) + ["default_views"]
  for n in names:
    name = f"augment_{n}"
    if only and name not in only:
      continue
    if n == "default_views":  # the two views of the default SSL config, as in the step
      view = augment.make_view_fn(base_config().stage1.ssl.augmentations)
      fn = jax.jit(lambda k, x: (view(jax.random.fold_in(k, 0), x),
                                 view(jax.random.fold_in(k, 1), x)))
      per_call = 2 * B
    else:
      fn = jax.jit(augment.make_view_fn([n]))
      per_call = B
    r = common.bench_pure(name, fn, (jax.random.key(0), x), peak_gflops=peak_gflops)
    r["series_per_s"] = round(per_call / (r["median_ms"] / 1e3), 1)
    out.append(r)
    print(r, flush=True)
  return out
