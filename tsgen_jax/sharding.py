"""Device mesh and shardings: batches split over 'data'; state replicated, or with the large
arrays sharded over 'model' (FSDP-style) when the mesh has ``model > 1``."""

from __future__ import annotations

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from tsgen_jax.errors import ConfigError

# Arrays of the train state with at least this many elements are sharded over 'model' when
# the mesh's model axis is larger than 1 (parameters and their optimiser moments alike).
FSDP_MIN_SIZE = 2 ** 16


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


def fsdp_spec(shape, model_size: int, min_size: int = FSDP_MIN_SIZE) -> P:
  """PartitionSpec of one array: its largest dimension divisible by ``model_size`` on 'model'
  when the array has >= ``min_size`` elements and ``model_size > 1``; else replicated.

  Ties go to the earlier dimension; an array none of whose dimensions divides stays replicated.
  """
  shape = tuple(int(d) for d in shape)
  if model_size <= 1 or not shape or int(np.prod(shape)) < min_size:
    return P()
  for dim in sorted(range(len(shape)), key=lambda i: (-shape[i], i)):
    if shape[dim] % model_size == 0:
      return P(*([None] * dim + ["model"]))
  return P()


def state_shardings(state, mesh: Mesh, fsdp_min_size: int | None = None):
  """A tree like ``state`` of NamedShardings: replicated, except (when ``mesh.shape['model'] >
  1``) arrays of >= ``fsdp_min_size`` elements (default :data:`FSDP_MIN_SIZE`), which get their
  largest divisible dimension split over 'model' (see :func:`fsdp_spec`).

  With ``model == 1`` every leaf is replicated, as before the 'model' axis existed.
  """
  min_size = FSDP_MIN_SIZE if fsdp_min_size is None else int(fsdp_min_size)
  model_size = int(mesh.shape.get("model", 1))
  def one(leaf):
    return NamedSharding(mesh, fsdp_spec(getattr(leaf, "shape", ()), model_size, min_size))

  return jax.tree.map(one, state)


def place_state(state, mesh: Mesh, fsdp_min_size: int | None = None):
  """Puts ``state`` on the mesh with :func:`state_shardings`."""
  return jax.device_put(state, state_shardings(state, mesh, fsdp_min_size))
