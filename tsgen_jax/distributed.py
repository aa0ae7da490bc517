"""Multi-process set-up: ``jax.distributed.initialize()`` when launched as several processes.

A run is multi-process when ``TSGEN_COORDINATOR`` (host:port of process 0),
``TSGEN_NUM_PROCESSES`` and ``TSGEN_PROCESS_ID`` are set (``launch/local_multiprocess.sh``
sets them), or on a TPU VM pod slice / a cluster JAX detects itself (SLURM, ...), where
``TSGEN_DISTRIBUTED=1`` asks for it (``launch/tpu_vm.sh`` sets it). Otherwise this is a no-op.

On CPU the processes exchange data with gloo (``jax_cpu_collectives_implementation``), unless
``JAX_CPU_COLLECTIVES_IMPLEMENTATION`` says otherwise. ``TSGEN_INIT_TIMEOUT`` (seconds, default
300) bounds how long a process waits for the others to connect.
"""

from __future__ import annotations

import os
import sys

import jax
import numpy as np

from tsgen_jax.errors import ConfigError

_initialized = False


def _env_int(name: str) -> int:
  value = os.environ.get(name, "")
  try:
    return int(value)
  except ValueError:
    raise ConfigError(f"{name}={value!r}: expected an integer (set TSGEN_COORDINATOR, "
                      "TSGEN_NUM_PROCESSES and TSGEN_PROCESS_ID together)") from None


def _use_cpu_collectives():
  """Cross-process collectives on CPU need an implementation (gloo ships with jaxlib)."""
  if os.environ.get("JAX_CPU_COLLECTIVES_IMPLEMENTATION"):
    return  # the user chose (jax reads the variable itself)
  try:
    if jax.config.jax_cpu_collectives_implementation in (None, "none"):
      jax.config.update("jax_cpu_collectives_implementation", "gloo")
  except AttributeError:  # an old jax without the option
    pass


def initialize() -> bool:
  """Initialises jax.distributed if the environment asks for it; returns whether it did.

  Must run before anything touches a JAX device (``main`` calls it first).
  """
  global _initialized
  if _initialized:
    return True
  coord = os.environ.get("TSGEN_COORDINATOR")
  timeout = int(os.environ.get("TSGEN_INIT_TIMEOUT", "300"))
  if coord:
    n, pid = _env_int("TSGEN_NUM_PROCESSES"), _env_int("TSGEN_PROCESS_ID")
    if not 0 <= pid < n:
      raise ConfigError(f"TSGEN_PROCESS_ID={pid} must lie in [0, TSGEN_NUM_PROCESSES={n})")
    _use_cpu_collectives()
    jax.distributed.initialize(coordinator_address=coord, num_processes=n, process_id=pid,
                               initialization_timeout=timeout)
  elif os.environ.get("TSGEN_DISTRIBUTED") == "1":
    _use_cpu_collectives()
    jax.distributed.initialize(initialization_timeout=timeout)
  else:
    return False
  _initialized = True
  print(f"[process {jax.process_index()}/{jax.process_count()}] "
        f"{jax.local_device_count()} local of {jax.device_count()} "
        f"{jax.devices()[0].platform} devices", file=sys.stderr, flush=True)
  return True


def any_process(flag: bool) -> bool:
  """True when ``flag`` is true on any process (a collective: every process must call it)."""
  if jax.process_count() == 1:
    return bool(flag)
  from jax.experimental import multihost_utils
  return bool(np.any(multihost_utils.process_allgather(np.int32(bool(flag)))))
