"""Host memory: back malloc's large blocks with transparent huge pages (glibc, Linux).

XLA:CPU takes each call's temporary buffers (every activation and gradient of a train step:
0.13 GB for the plain stage-1 step at batch 128, 2.4 GB at L = 1024, batch 512) from malloc
and frees them when the call ends. glibc serves these large requests with a fresh ``mmap`` and
unmaps them on ``free``, so every step touches its temporaries as new memory and the kernel
faults in and zeroes them again, 4 KB at a time: 31,500 page faults per plain B = 128 step,
108,000 per VIbCReg step, 1.47 million per plain L = 1024, batch-512 step
(benchmarks/NOTES.md).

glibc's tunable ``glibc.malloc.hugetlb=1`` (glibc >= 2.35) makes malloc ask for transparent
huge pages (``madvise(MADV_HUGEPAGE)``) on the memory it maps: one fault per 2 MB instead of
per 4 KB, and fewer TLB misses while the step runs. Tunables are read only when a process
starts, so with ``TSGEN_MALLOC=hugepages`` :func:`reexec_with_hugepages` restarts the
current command once (``execve``: same pid, arguments and environment, plus that tunable)
before anything else runs. The command-line entry points (``python -m tsgen_jax.main``,
``tsgen_jax.study``, ``benchmarks.run``, ``benchmarks.interleaved``,
``benchmarks.wgrad_slices``, ``benchmarks.page_faults``, ``benchmarks.strided_input_grad``,
``benchmarks.step_plumbing``, ``benchmarks.dead_taps``, ``benchmarks.first_block_table``,
``benchmarks.fcn_wgrad``, ``benchmarks.compile_options``, ``benchmarks.joint_projection``,
``benchmarks.step_loop``) call it first thing.

It is opt-in: on the 2-core VM where it was measured, it sped up the batch-128 SSL and stage-2
steps (-9 % and -18 %) but made the memory-heavy steps (L >= 512 or batch 512) stall now and
then (medians +0 to +60 %, single calls up to 4x), see benchmarks/NOTES.md. The default,
``TSGEN_MALLOC=system``, leaves malloc as it is. Nothing happens on other C libraries (macOS,
musl), when the kernel's transparent huge pages are off (``never``), or when
``GLIBC_TUNABLES`` already sets ``glibc.malloc.hugetlb``.
"""

from __future__ import annotations

import os
import platform
import sys

from tsgen_jax.errors import ConfigError

ENV_VAR = "TSGEN_MALLOC"
MODES = ("system", "hugepages")
TUNABLE = "glibc.malloc.hugetlb"
THP_SETTING = "/sys/kernel/mm/transparent_hugepage/enabled"


def is_glibc() -> bool:
  """Whether this process runs on glibc (Linux), whose malloc tunable is used here."""
  return sys.platform.startswith("linux") and platform.libc_ver()[0] == "glibc"


def thp_mode(path: str = THP_SETTING) -> str:
  """The kernel's transparent huge page mode: 'always', 'madvise', 'never' or '' (unknown)."""
  try:
    with open(path) as f:
      text = f.read()
  except OSError:
    return ""
  return text[text.find("[") + 1:text.find("]")] if "[" in text else ""


def why_no_hugepages() -> str:
  """'' if glibc can back malloc with transparent huge pages here, else the reason it cannot."""
  if not is_glibc():
    return "not glibc"
  if thp_mode() in ("never", ""):
    return "transparent huge pages are off"
  return ""


def mode_from_env() -> str:
  """The ``TSGEN_MALLOC`` mode: 'system' (default) or 'hugepages'.

  Raises:
    ConfigError: for any other value.
  """
  mode = os.environ.get(ENV_VAR, "").strip().lower() or "system"
  if mode not in MODES:
    raise ConfigError(f"${ENV_VAR}={os.environ[ENV_VAR]!r}; expected one of {list(MODES)}")
  return mode


def hugepage_env(environ) -> dict | None:
  """``environ`` with ``glibc.malloc.hugetlb=1`` added to ``GLIBC_TUNABLES``, or None when
  the tunable is already set there (by an earlier restart or by the user)."""
  tunables = environ.get("GLIBC_TUNABLES", "")
  if TUNABLE in tunables:
    return None
  return {**environ, "GLIBC_TUNABLES": ":".join(t for t in (tunables, f"{TUNABLE}=1") if t)}


def reexec_with_hugepages() -> str:
  """Restarts this command with huge-page malloc if ``TSGEN_MALLOC=hugepages`` asks for it and
  it applies (see the module docstring). Call it before JAX or anything else starts; it does
  not return if it restarts.

  Returns the mode the process runs with: 'hugepages', 'system', or 'system (<why not>)'.

  Raises:
    ConfigError: for an unknown ``TSGEN_MALLOC`` value.
  """
  if mode_from_env() == "system":
    return "system"
  why_not = why_no_hugepages()
  if why_not:
    return f"system ({why_not})"
  env = hugepage_env(os.environ)
  if env is None:
    return "hugepages"
  sys.stdout.flush()
  sys.stderr.flush()
  os.execve(sys.executable, sys.orig_argv, env)
  return "hugepages"  # not reached


def current_mode() -> str:
  """'hugepages' if this process started with huge-page malloc in effect, else 'system'."""
  tunables = os.environ.get("GLIBC_TUNABLES", "")
  on = (TUNABLE in tunables and f"{TUNABLE}=0" not in tunables
        and not why_no_hugepages())
  return "hugepages" if on else "system"


def start() -> None:
  """:func:`reexec_with_hugepages` for a command-line entry point: an unknown
  ``TSGEN_MALLOC`` is a one-line error with exit status 2."""
  try:
    reexec_with_hugepages()
  except ConfigError as e:
    print(f"error: {e}", file=sys.stderr)
    sys.exit(2)
