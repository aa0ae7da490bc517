"""Data: UCR archive (TFDS), custom .npz, built-in synthetic CBF; preprocessing; batches."""

from tsgen_jax.data.dataset import Dataset, Split, load_dataset, load_split
from tsgen_jax.data.pipeline import BatchStream, batch_indices
from tsgen_jax.data.preprocess import Stats, denormalize

__all__ = ["Dataset", "Split", "load_dataset", "load_split", "BatchStream", "batch_indices",
           "Stats", "denormalize"]
