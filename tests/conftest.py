"""Shared test helpers. Tests run on CPU; the real UCR archive is optional."""

import os
import shutil
import tempfile

import pytest

_xla_cache_dir = ""


# The suite's time is mostly XLA compiling tiny programs, not running them. The CPU backend's
# default (MLIR fusion emitters, then LLVM at -O3) compiles the tiny Barlow Twins train step in
# 9 s; the loop emitters at LLVM -O0 compile it in 3 s. Tiny programs run about as fast; the
# largest the suite runs, the evaluator FCN's batch-256 step, runs 1.4x slower. The programs
# are the same HLO but for single ops (reduce, add, slice, ...) that the fusion emitters wrap
# as one-op fusions: the same fusions, convolutions, dots and YNNPACK calls. Every comparison a
# test makes (sharded == unsharded, resumed == uninterrupted, option on == off) is between
# programs compiled the same way. On a GPU the -O0 applies to its kernels too (the tests check
# results, not speed). The package itself never sets these flags.
TEST_XLA_FLAGS = ("--xla_backend_optimization_level=0", "--xla_cpu_use_fusion_emitters=false")


def with_test_xla_flags(flags: str) -> str:
  """``flags`` (an XLA_FLAGS value) with TEST_XLA_FLAGS added where the caller set neither."""
  words = flags.split()
  for flag in TEST_XLA_FLAGS:
    name = flag.split("=")[0]
    if not any(w.split("=")[0] == name for w in words):
      words.append(flag)
  return " ".join(words)


def simulated_cpu_devices_env(n: int) -> dict:
  """os.environ for a subprocess on ``n`` simulated CPU devices: the caller's XLA_FLAGS, then
  the device count, then TEST_XLA_FLAGS where unset."""
  flags = f"{os.environ.get('XLA_FLAGS', '')} --xla_force_host_platform_device_count={n}"
  return dict(os.environ, XLA_FLAGS=with_test_xla_flags(flags), JAX_PLATFORMS="cpu")


def pytest_configure(config):
  """TEST_XLA_FLAGS, and one persistent XLA compilation cache for the whole session, in a fresh
  temporary folder.

  Many tests build the same tiny models (and the CLI tests' subprocesses compile the same
  train steps again), so sharing compiled programs cuts the suite's time; the cache starts
  empty on every run and is deleted at the end, so no test sees another run's programs. Set
  before jax is imported, so this process and every subprocess (which inherit the
  environment) use it; pytest-xdist workers inherit it too, find it set and leave its deletion
  to the main process. A cache the caller configured is left alone.
  """
  global _xla_cache_dir
  os.environ["XLA_FLAGS"] = with_test_xla_flags(os.environ.get("XLA_FLAGS", ""))
  if os.environ.get("JAX_COMPILATION_CACHE_DIR"):
    return
  _xla_cache_dir = tempfile.mkdtemp(prefix="tsgen_jax_tests_xla_cache_")
  os.environ["JAX_COMPILATION_CACHE_DIR"] = _xla_cache_dir  # programs compiling in >= 1 s


def pytest_unconfigure(config):
  if _xla_cache_dir:
    shutil.rmtree(_xla_cache_dir, ignore_errors=True)
    os.environ.pop("JAX_COMPILATION_CACHE_DIR", None)


_DEFAULT_UCR = os.path.join(os.path.dirname(__file__), "..", "..", "shared", "ucr",
                            "UCRArchive_2018")


def real_ucr_dir() -> str:
  """``$TSGEN_UCR_DIR`` or the shared archive next to the checkout, or '' if neither exists."""
  path = os.environ.get("TSGEN_UCR_DIR") or _DEFAULT_UCR
  return os.path.abspath(path) if os.path.isdir(path) else ""


@pytest.fixture
def ucr_archive():
  """Path of the real UCR archive; skips the test when it is not available."""
  path = real_ucr_dir()
  if not path:
    pytest.skip("real UCR archive not found: set TSGEN_UCR_DIR or place it at "
                "../shared/ucr/UCRArchive_2018")
  return path


def all_eqns(jaxpr):
  """Every equation of ``jaxpr`` and of its sub-jaxprs (those of jit, scan, custom VJPs and
  other higher-order primitives), depth first."""
  for eqn in jaxpr.eqns:
    yield eqn
    for v in eqn.params.values():
      for sub in (v if isinstance(v, (tuple, list)) else (v,)):
        inner = getattr(sub, "jaxpr", sub)
        if hasattr(inner, "eqns"):
          yield from all_eqns(inner)


def dot_dtypes(jaxpr) -> list:
  """(lhs, rhs, out) dtype names of every dot_general in ``jaxpr`` and its sub-jaxprs."""
  return [tuple(str(v.aval.dtype) for v in (*e.invars, *e.outvars))
          for e in all_eqns(jaxpr) if e.primitive.name == "dot_general"]


def tiny_config(**overrides):
  """The base config shrunk so a train step compiles and runs in well under a second."""
  from tsgen_jax.config import base_config
  c = base_config()
  c.dataset.num_test = 90
  c.stage1.dim = 16
  c.stage1.n_resnet_blocks = 1
  c.stage1.batch_size = 16
  c.stage1.num_steps = 10
  c.stage1.log_every = 5
  c.stage1.checkpoint_every = 5
  c.stage1.vq.codebook_size = 8
  c.stage1.ssl.proj_dim = 64
  c.stage1.ssl.iternorm_groups = 8
  c.stage2.hidden_dim = 32
  c.stage2.n_layers = 1
  c.stage2.batch_size = 16
  c.stage2.num_steps = 10
  c.stage2.log_every = 5
  c.stage2.checkpoint_every = 5
  c.sample.num_samples = 12
  c.sample.batch_size = 12
  for key, value in overrides.items():
    node = c
    parts = key.split(".")
    for p in parts[:-1]:
      node = node[p]
    node[parts[-1]] = value
  return c
