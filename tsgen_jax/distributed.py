"""Multi-process set-up: ``jax.distributed.initialize()`` when launched as several processes.

A run is multi-process when ``TSGEN_COORDINATOR`` (host:port), ``TSGEN_NUM_PROCESSES`` and
``TSGEN_PROCESS_ID`` are set, or on a TPU VM pod slice (where JAX finds its peers itself and
``TSGEN_DISTRIBUTED=1`` asks for it). Otherwise this is a no-op.
"""

from __future__ import annotations

import os

import jax

_initialized = False


def initialize() -> bool:
  """Initialises jax.distributed if the environment asks for it; returns whether it did."""
  global _initialized
  if _initialized:
    return True
  coord = os.environ.get("TSGEN_COORDINATOR")
  if coord:
    jax.distributed.initialize(coordinator_address=coord,
                               num_processes=int(os.environ["TSGEN_NUM_PROCESSES"]),
                               process_id=int(os.environ["TSGEN_PROCESS_ID"]))
  elif os.environ.get("TSGEN_DISTRIBUTED") == "1":
    jax.distributed.initialize()
  else:
    return False
  _initialized = True
  return True
