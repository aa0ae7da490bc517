"""Input pipeline: seeded, resumable global batches placed on the training mesh.

The order of examples is an endless stream of per-epoch permutations, each drawn from
``(seed, epoch)``. Batch ``s`` is items ``[s * B, (s + 1) * B)`` of that stream, so any
step's batch can be produced directly (exact resume, no iterator state to save) and a batch
larger than the dataset simply spans several epochs: every example then occurs
``floor(B / N)`` or ``ceil(B / N)`` times in it.

Each process reads only its own contiguous slice of the global batch; the slices are
assembled into one global ``jax.Array`` sharded over the mesh's ``'data'`` axis, so the global
batch is the same whatever the number of hosts and devices.
"""

from __future__ import annotations

import concurrent.futures

import jax
import numpy as np

from tsgen_jax.data.dataset import Split
from tsgen_jax.errors import DataError


def epoch_permutation(seed: int, epoch: int, n: int) -> np.ndarray:
  """The order of the ``n`` examples in ``epoch``: int64 (n,)."""
  return np.random.default_rng([seed, epoch]).permutation(n)


def batch_indices(seed: int, step: int, batch_size: int, n: int) -> np.ndarray:
  """Dataset indices of global batch ``step``: int64 (batch_size,)."""
  start = step * batch_size
  first, last = start // n, (start + batch_size - 1) // n
  stream = np.concatenate([epoch_permutation(seed, e, n) for e in range(first, last + 1)])
  offset = start - first * n
  return stream[offset:offset + batch_size]


class BatchStream:
  """Global batches ``{"x": (B, ...) rows of the split, "y": (B,) int32}`` for successive steps.

  Unlabeled splits give ``y`` = 0. Iterating prefetches the next batch on a thread.
  """

  def __init__(self, split: Split, batch_size: int, seed: int, sharding=None):
    if batch_size < 1:
      raise DataError(f"batch size must be a positive integer, got {batch_size}")
    n_proc = jax.process_count()
    if batch_size % n_proc:
      raise DataError(f"global batch {batch_size} is not divisible by {n_proc} processes")
    if sharding is not None:
      n_dev = sharding.mesh.shape.get("data", 1)
      if batch_size % n_dev:
        raise DataError(f"global batch {batch_size} is not divisible by the {n_dev} devices "
                        "of the mesh's data axis")
    self.split, self.batch_size, self.seed, self.sharding = split, batch_size, seed, sharding

  def host_batch(self, step: int) -> dict[str, np.ndarray]:
    """This process's slice of global batch ``step`` as numpy arrays."""
    idx = batch_indices(self.seed, step, self.batch_size, len(self.split))
    per = self.batch_size // jax.process_count()
    idx = idx[jax.process_index() * per:(jax.process_index() + 1) * per]
    x, y = self.split.take(idx)
    y = np.zeros(len(idx), np.int32) if y is None else y.astype(np.int32)
    return {"x": x, "y": y}

  def device_batch(self, step: int) -> dict[str, jax.Array]:
    """Global batch ``step`` as jax arrays with the data sharding (or default placement)."""
    return self._place(self.host_batch(step))

  def iterate(self, start_step: int, end_step: int):
    """Yields ``(step, device_batch)`` for start_step <= step < end_step, prefetching one."""
    if start_step >= end_step:
      return
    with concurrent.futures.ThreadPoolExecutor(1) as pool:
      nxt = pool.submit(self.host_batch, start_step)
      for step in range(start_step, end_step):
        local = nxt.result()
        if step + 1 < end_step:
          nxt = pool.submit(self.host_batch, step + 1)
        yield step, self._place(local)

  def _place(self, local):
    if self.sharding is None:
      return jax.tree.map(jax.numpy.asarray, local)
    return {k: jax.make_array_from_process_local_data(self.sharding, v)
            for k, v in local.items()}
