"""Multi-process (jax.distributed) runs on this machine: several CPU processes joined over
localhost with gloo collectives, the code path of a TPU pod slice or several GPU hosts.

The processes are started with the TSGEN_* variables (``tsgen_jax.distributed``); the CLI run
goes through ``launch/local_multiprocess.sh``.
"""

import json
import os
import shutil
import socket
import subprocess
import sys
import textwrap

import numpy as np
import pytest

from conftest import tiny_config, with_test_xla_flags

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
LAUNCH = os.path.join(REPO, "launch", "local_multiprocess.sh")

# configs/vqvae.py shrunk to tests/conftest.py's tiny_config (CLI overrides).
TINY = ["--config.run=stage1", "--config.stage1.dim=16", "--config.stage1.n_resnet_blocks=1",
        "--config.stage1.batch_size=16", "--config.stage1.vq.codebook_size=8",
        "--config.stage1.ssl.proj_dim=64", "--config.stage1.ssl.iternorm_groups=8",
        "--config.stage1.vq.kmeans_init=True", "--config.stage1.log_every=1",
        "--config.stage1.checkpoint_every=1", "--config.dataset.num_test=30"]


def _gloo_available() -> str:
  """'' when CPU cross-process collectives can be used, else why not."""
  try:
    import jax
    from jax._src.lib import _jax
  except ImportError as e:
    return f"cannot import jaxlib internals ({e})"
  if not hasattr(_jax, "make_gloo_tcp_collectives"):
    return "this jaxlib has no gloo CPU collectives (make_gloo_tcp_collectives)"
  if not hasattr(jax.config, "jax_cpu_collectives_implementation"):
    return "this jax has no jax_cpu_collectives_implementation option"
  if shutil.which("bash") is None:
    return "bash is needed for launch/local_multiprocess.sh"
  return ""


_WHY_NOT = _gloo_available()
pytestmark = pytest.mark.skipif(bool(_WHY_NOT), reason=f"CPU collectives unavailable: {_WHY_NOT}")


def _free_port() -> int:
  with socket.socket() as s:
    s.bind(("localhost", 0))
    return s.getsockname()[1]


_CACHE = None


@pytest.fixture(scope="module", autouse=True)
def _compilation_cache(tmp_path_factory):
  """A persistent compilation cache shared by this module's 1-process runs (they compile the
  same programs; multi-process programs get other keys)."""
  global _CACHE
  _CACHE = str(tmp_path_factory.mktemp("jax_cache"))
  yield
  _CACHE = None


def _env(**extra):
  env = dict(os.environ, JAX_PLATFORMS="cpu", PYTHONPATH=REPO)
  if _CACHE:
    env.update(JAX_COMPILATION_CACHE_DIR=_CACHE, JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS="0",
               JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES="0")
  env["XLA_FLAGS"] = with_test_xla_flags("")  # device counts come from JAX_NUM_CPU_DEVICES
  for k in [k for k in env if k.startswith("TSGEN_")]:
    del env[k]
  env.update({k: str(v) for k, v in extra.items()})
  return env


def _run_processes(n: int, argv: list[str], devices: int, timeout: float = 300):
  """Runs ``python argv`` as ``n`` joined processes; returns their combined outputs."""
  port = _free_port()
  procs = [subprocess.Popen(
      [sys.executable, *argv], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
      env=_env(TSGEN_COORDINATOR=f"localhost:{port}", TSGEN_NUM_PROCESSES=n,
               TSGEN_PROCESS_ID=i, JAX_NUM_CPU_DEVICES=devices, TSGEN_INIT_TIMEOUT=60),
      cwd=REPO) for i in range(n)]
  outs = []
  try:
    for p in procs:
      outs.append(p.communicate(timeout=timeout)[0])
  finally:
    for p in procs:
      if p.poll() is None:
        p.kill()
  for i, p in enumerate(procs):
    assert p.returncode == 0, f"process {i} failed:\n" + "\n".join(outs)[-4000:]
  return outs


BATCH_SCRIPT = textwrap.dedent("""
    import sys
    sys.path.insert(0, {tests!r})
    import numpy as np
    from tsgen_jax import distributed, sharding
    assert distributed.initialize()
    import jax
    from jax.experimental import multihost_utils
    from conftest import tiny_config
    from tsgen_jax.data import BatchStream, load_dataset
    cfg = tiny_config()
    ds = load_dataset(cfg.dataset, 8)
    mesh = sharding.make_mesh()
    stream = BatchStream(ds.train, 12, 3, sharding.data_sharding(mesh))
    out = {{}}
    for step in (0, 1, 7):
      batch = stream.device_batch(step)
      assert batch["x"].shape[0] == 12 and not batch["x"].is_fully_addressable
      full = multihost_utils.process_allgather(batch, tiled=True)
      out.update({{f"{{k}}{{step}}": np.asarray(v) for k, v in full.items()}})
      # This process's rows of the global array are exactly its host slice.
      local = stream.host_batch(step)
      got = np.concatenate([np.asarray(s.data) for s in sorted(
          batch["x"].addressable_shards, key=lambda s: s.index[0].start or 0)
          if s.replica_id == 0])
      np.testing.assert_array_equal(got, local["x"])
    assert distributed.any_process(jax.process_index() == 1)
    assert not distributed.any_process(False)
    if jax.process_index() == 0:
      np.savez({out!r}, **out)
    print("OK", jax.process_index(), jax.process_count(), jax.device_count())
""")


def test_global_batch_is_the_same_whatever_the_process_count(tmp_path):
  """2 processes x 2 devices assemble exactly the single-process global batches."""
  out = tmp_path / "batches.npz"
  script = BATCH_SCRIPT.format(tests=os.path.join(REPO, "tests"), out=str(out))
  logs = _run_processes(2, ["-c", script], devices=2, timeout=120)
  assert all("OK" in l and " 2 4" in l for l in logs), logs
  from tsgen_jax.data import BatchStream, load_dataset
  ds = load_dataset(tiny_config().dataset, 8)
  stream = BatchStream(ds.train, 12, 3)  # one process, no mesh
  got = np.load(out)
  for step in (0, 1, 7):
    ref = stream.host_batch(step)
    np.testing.assert_array_equal(got[f"x{step}"], ref["x"])
    np.testing.assert_array_equal(got[f"y{step}"], ref["y"])


def _restore(workdir, step: int):
  """A checkpoint as a tree of numpy arrays, whatever the devices that wrote it."""
  import jax
  import orbax.checkpoint as ocp
  path = os.path.join(workdir, "checkpoints", "stage1", str(step), "default")
  ckptr = ocp.PyTreeCheckpointer()
  meta = ckptr.metadata(path)
  meta = getattr(meta, "item_metadata", meta)
  args = jax.tree.map(lambda _: ocp.RestoreArgs(restore_type=np.ndarray), meta)
  return ckptr.restore(path, restore_args=args)


def _cli(workdir, *extra, timeout=300):
  r = subprocess.run([sys.executable, "-m", "tsgen_jax.main", "--config=configs/vqvae.py",
                      f"--workdir={workdir}", *TINY, *extra], cwd=REPO, env=_env(),
                     capture_output=True, text=True, timeout=timeout)
  assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-4000:]
  return r.stdout


def test_two_process_cli_run_matches_one_process_and_resumes_on_one(tmp_path):
  """(a) `main` as 2 processes (1 CPU device each) == the same command as 1 process;
  (b) 1 process resumes the checkpoint the 2 processes wrote."""
  two, one = tmp_path / "two", tmp_path / "one"
  steps = ["--config.stage1.num_steps=2"]
  launched = subprocess.Popen(
      ["bash", LAUNCH, "-n", "2", "-d", "1", "-w", str(two), "--python", sys.executable,
       "--", *TINY, *steps], cwd=REPO, env=_env(TSGEN_INIT_TIMEOUT=60),
      stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
  try:  # the single-process reference runs meanwhile
    _cli(one, *steps)
    log = launched.communicate(timeout=300)[0]
  finally:
    if launched.poll() is None:
      launched.kill()
  assert launched.returncode == 0, log[-4000:]
  assert "[process 0/2] 1 local of 2 cpu devices" in log
  # Only process 0 writes the logs and results; both write their part of the checkpoint.
  rows = [json.loads(l) for l in open(two / "metrics.jsonl")]
  assert [r["step"] for r in rows] == [1, 2]
  assert json.load(open(two / "results.json"))["stage1"]["num_steps"] == 2
  assert len(os.listdir(two / "tensorboard" / "stage1")) == 1
  ckpt_files = os.listdir(two / "checkpoints" / "stage1" / "2" / "default")
  assert {"ocdbt.process_0", "ocdbt.process_1"} <= set(ckpt_files), ckpt_files
  ref_rows = [json.loads(l) for l in open(one / "metrics.jsonl")]
  for a, b in zip(rows, ref_rows):
    assert a["loss"] == pytest.approx(b["loss"], rel=1e-5), (a, b)

  a, b = _restore(two, 2), _restore(one, 2)
  assert int(a["step"]) == int(b["step"]) == 2
  import jax
  leaves_a, leaves_b = jax.tree.leaves(a), jax.tree.leaves(b)
  assert len(leaves_a) == len(leaves_b) > 10
  for x, y in zip(leaves_a, leaves_b):
    np.testing.assert_allclose(x, y, rtol=1e-5, atol=1e-5)

  # (b) one process continues the 2-process run (a longer schedule: the config changed).
  out = _cli(two, "--config.stage1.num_steps=3", "--config.resume_ignore_config=True")
  assert "step 3/3" in out and "step 1/3" not in out, out
  rows = [json.loads(l) for l in open(two / "metrics.jsonl")]
  assert [r["step"] for r in rows] == [1, 2, 3]
  c = _restore(two, 3)
  assert int(c["step"]) == 3
  assert all(np.all(np.isfinite(x)) for x in jax.tree.leaves(c))
