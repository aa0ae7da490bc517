"""Device mesh and shardings: batches split over 'data', state replicated (or FSDP later)."""

from __future__ import annotations

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from tsgen_jax.errors import ConfigError


def make_mesh(mesh_cfg=None, devices=None) -> Mesh:
  """A ('data', 'model') mesh over ``devices`` (default all); ``data=-1`` takes the rest.

  Args:
    mesh_cfg: ``config.mesh`` with integer ``data`` and ``model`` sizes, or None for
      all devices on the data axis.
  """
  devices = list(jax.devices() if devices is None else devices)
  data = -1 if mesh_cfg is None else int(mesh_cfg.data)
  model = 1 if mesh_cfg is None else int(mesh_cfg.model)
  n = len(devices)
  if model < 1 or n % model:
    raise ConfigError(f"mesh.model={model} must be a positive divisor of the {n} devices")
  if data == -1:
    data = n // model
  if data < 1 or data * model > n:
    raise ConfigError(f"mesh.data={data} x mesh.model={model} needs more than the {n} devices")
  grid = np.asarray(devices[:data * model]).reshape(data, model)
  return Mesh(grid, ("data", "model"))


def data_sharding(mesh: Mesh) -> NamedSharding:
  """Leading (batch) axis split over 'data'."""
  return NamedSharding(mesh, P("data"))


def replicated(mesh: Mesh) -> NamedSharding:
  """Fully replicated on every device of the mesh."""
  return NamedSharding(mesh, P())


def replicate_tree(tree, mesh: Mesh):
  """Places every leaf of ``tree`` replicated on the mesh."""
  return jax.device_put(tree, replicated(mesh))
