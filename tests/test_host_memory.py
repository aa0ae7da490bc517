"""tsgen_jax.host_memory: the restart with huge-page malloc, and what it changes."""

import os
import subprocess
import sys

import pytest

from tsgen_jax import host_memory
from tsgen_jax.errors import ConfigError

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# Restarts itself as an entry point does, then allocates, fills and frees 256 MB twice with
# malloc (as XLA:CPU does with a step's temporaries) and prints the mode, the pid before the
# restart (from the environment) and after it, and the page faults of the second round.
_PROBE = """
import ctypes, os, resource, sys
first_pid = os.environ.setdefault("PROBE_FIRST_PID", str(os.getpid()))
from tsgen_jax import host_memory
host_memory.start()
libc = ctypes.CDLL(None)
libc.malloc.restype, libc.malloc.argtypes = ctypes.c_void_p, (ctypes.c_size_t,)
libc.free.argtypes = (ctypes.c_void_p,)
n = 256 << 20
for _ in range(2):
  before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
  p = libc.malloc(n)
  ctypes.memset(p, 1, n)
  libc.free(p)
faults = resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before
print(host_memory.current_mode(), first_pid == str(os.getpid()), faults, sys.argv[1:])
"""


def _probe(mode: str):
  env = {k: v for k, v in os.environ.items() if k not in ("GLIBC_TUNABLES", "PROBE_FIRST_PID")}
  env.update({host_memory.ENV_VAR: mode, "PYTHONPATH": ROOT})
  out = subprocess.run([sys.executable, "-c", _PROBE, "--arg=1"], env=env,
                       capture_output=True, text=True, timeout=120)
  assert out.returncode == 0, out.stderr
  return out.stdout.strip()


@pytest.mark.skipif(not host_memory.is_glibc() or host_memory.thp_mode() != "madvise",
                    reason="needs glibc and transparent huge pages in 'madvise' mode")
def test_restart_gives_huge_pages_and_system_keeps_4k_pages():
  mode, same_pid, faults, argv = _probe("hugepages").split(maxsplit=3)
  assert (mode, same_pid, argv) == ("hugepages", "True", "['--arg=1']")  # execve: same pid
  assert int(faults) < 65536 // 8  # 256 MB is 65,536 pages of 4 KB, 128 of 2 MB
  mode, _, faults, _ = _probe("system").split(maxsplit=3)
  assert mode == "system"
  assert int(faults) > 30000


def test_hugepage_env_adds_the_tunable_once():
  assert host_memory.hugepage_env({"A": "1"}) == {
      "A": "1", "GLIBC_TUNABLES": "glibc.malloc.hugetlb=1"}
  assert host_memory.hugepage_env({"GLIBC_TUNABLES": "glibc.malloc.arena_max=2"}) == {
      "GLIBC_TUNABLES": "glibc.malloc.arena_max=2:glibc.malloc.hugetlb=1"}
  assert host_memory.hugepage_env({"GLIBC_TUNABLES": "glibc.malloc.hugetlb=0"}) is None


def test_thp_mode_reads_the_bracketed_setting(tmp_path):
  f = tmp_path / "enabled"
  f.write_text("always [madvise] never\n")
  assert host_memory.thp_mode(str(f)) == "madvise"
  f.write_text("always madvise [never]\n")
  assert host_memory.thp_mode(str(f)) == "never"
  assert host_memory.thp_mode(str(tmp_path / "missing")) == ""


@pytest.mark.skipif(not host_memory.is_glibc(), reason="glibc only")
def test_no_restart_when_the_kernel_has_huge_pages_off(monkeypatch):
  monkeypatch.setenv(host_memory.ENV_VAR, "hugepages")
  monkeypatch.delenv("GLIBC_TUNABLES", raising=False)
  monkeypatch.setattr(host_memory, "thp_mode", lambda: "never")
  assert host_memory.why_no_hugepages() == "transparent huge pages are off"
  assert host_memory.reexec_with_hugepages() == "system (transparent huge pages are off)"
  monkeypatch.setenv("GLIBC_TUNABLES", "glibc.malloc.hugetlb=1")
  assert host_memory.current_mode() == "system"


def test_unknown_mode_is_a_config_error(monkeypatch):
  monkeypatch.setenv(host_memory.ENV_VAR, "jemalloc")
  with pytest.raises(ConfigError, match="TSGEN_MALLOC='jemalloc'.*system"):
    host_memory.mode_from_env()
  monkeypatch.setenv(host_memory.ENV_VAR, " HugePages ")
  assert host_memory.mode_from_env() == "hugepages"
  monkeypatch.delenv(host_memory.ENV_VAR)
  assert host_memory.mode_from_env() == "system"
  assert host_memory.reexec_with_hugepages() == "system"  # the default returns: no restart


def test_current_mode_reads_the_tunable(monkeypatch):
  on = host_memory.is_glibc() and host_memory.thp_mode() not in ("never", "")
  assert bool(host_memory.why_no_hugepages()) != on
  monkeypatch.setenv("GLIBC_TUNABLES", "glibc.malloc.arena_max=2:glibc.malloc.hugetlb=1")
  assert host_memory.current_mode() == ("hugepages" if on else "system")
  for tunables in ("glibc.malloc.hugetlb=0", "glibc.malloc.arena_max=2", ""):
    monkeypatch.setenv("GLIBC_TUNABLES", tunables)
    assert host_memory.current_mode() == "system"


def test_main_rejects_an_unknown_mode_in_one_line(tmp_path):
  env = {**os.environ, host_memory.ENV_VAR: "bogus", "PYTHONPATH": ROOT}
  out = subprocess.run([sys.executable, "-m", "tsgen_jax.main", "--config=configs/vqvae.py",
                        f"--workdir={tmp_path / 'run'}"], cwd=ROOT, env=env,
                       capture_output=True, text=True, timeout=300)
  assert out.returncode == 2
  assert out.stderr.strip().splitlines() == [
      "error: $TSGEN_MALLOC='bogus'; expected one of ['system', 'hugepages']"]
  assert not (tmp_path / "run").exists()
