"""Turns an int seed or a JAX PRNG key into a NumPy generator (host-side sampling)."""

from __future__ import annotations

import jax
import numpy as np


def numpy_rng(seed_or_key) -> np.random.Generator:
  """A NumPy generator from an int seed, a JAX key (typed or raw uint32) or a Generator."""
  if isinstance(seed_or_key, np.random.Generator):
    return seed_or_key
  if isinstance(seed_or_key, (int, np.integer)):
    return np.random.default_rng(int(seed_or_key))
  key = seed_or_key
  if hasattr(key, "dtype") and jax.dtypes.issubdtype(key.dtype, jax.dtypes.prng_key):
    key = jax.random.key_data(key)
  return np.random.default_rng(np.asarray(key, np.uint32).ravel().tolist())
