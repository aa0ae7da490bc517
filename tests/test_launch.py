"""launch/*.sh: --help, --dry-run (the commands they would run) and local_multiprocess.sh's
process handling (with a stand-in for Python; the real 2-process run is in
test_distributed.py)."""

import os
import shlex
import shutil
import stat
import subprocess
import time

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SCRIPTS = ["tpu_vm.sh", "gpu.sh", "local_multiprocess.sh"]

pytestmark = pytest.mark.skipif(shutil.which("bash") is None, reason="needs bash")


def _exe(path, text):
  path.write_text(text)
  path.chmod(path.stat().st_mode | stat.S_IEXEC)
  return str(path)


@pytest.fixture
def tools(tmp_path):
  """A PATH whose gcloud/ssh/rsync/tar/python3 only record that they were called."""
  bin_dir = tmp_path / "bin"
  bin_dir.mkdir()
  marker = tmp_path / "called"
  for name in ("gcloud", "ssh", "rsync", "tar", "python3", "scp"):
    _exe(bin_dir / name, f"#!/bin/sh\necho {name} \"$@\" >> {marker}\n")
  env = dict(os.environ, PATH=f"{bin_dir}:{os.environ['PATH']}")
  return env, marker


def _run(script, *args, env=None, timeout=30):
  return subprocess.run(["bash", os.path.join(REPO, "launch", script), *args], env=env,
                        capture_output=True, text=True, timeout=timeout, cwd=REPO)


def _commands(stdout: str) -> list[list[str]]:
  """The printed commands ('+ ...' lines) as argument lists."""
  out = []
  for line in stdout.splitlines():
    if line.startswith("+ "):
      words = shlex.split(line[2:])
      out.append(words[:words.index("||")] if "||" in words else words)
  return out


@pytest.mark.parametrize("script", SCRIPTS)
def test_help(script):
  r = _run(script, "--help")
  assert r.returncode == 0, r.stderr
  assert r.stdout.startswith("Usage: launch/" + script) and "--dry-run" in r.stdout


@pytest.mark.parametrize("script", SCRIPTS)
def test_unknown_option_is_an_error(script):
  r = _run(script, "--no-such-option")
  assert r.returncode == 2 and "unknown option --no-such-option" in r.stderr


def test_tpu_vm_dry_run(tools):
  env, marker = tools
  r = _run("tpu_vm.sh", "--dry-run", "--name", "tv", "--zone", "europe-west4-a",
           "--accelerator-type", "v4-32", "--version", "tpu-ubuntu2204-base", "--project", "pj",
           "--bucket", "gs://bk", "--config", "configs/vibcreg.py", "--",
           "--config.run=stage1", "--config.dataset.name=My Data", env=env)
  assert r.returncode == 0, r.stderr
  assert not marker.exists(), marker.read_text()  # nothing ran
  lines = [l for l in r.stdout.splitlines() if l.startswith("+ ")]
  describe, create = lines[0][2:].split(" || ")
  assert describe.startswith("gcloud compute tpus tpu-vm describe tv --zone=europe-west4-a "
                             "--project=pj")
  assert shlex.split(create) == [
      "gcloud", "compute", "tpus", "tpu-vm", "create", "tv", "--zone=europe-west4-a",
      "--project=pj", "--accelerator-type=v4-32", "--version=tpu-ubuntu2204-base"]
  cmds = _commands(r.stdout)
  ssh = [c for c in cmds if c[:5] == ["gcloud", "compute", "tpus", "tpu-vm", "ssh"]]
  assert all("--worker=all" in c and c[5] == "tv" for c in ssh) and len(ssh) == 3
  remote = [c[-1].removeprefix("--command=") for c in ssh]
  assert "pip install -q -r requirements.txt" in remote[1]
  assert "'jax[tpu]==0.10.2'" in remote[1] and "gcsfuse" in remote[1]
  main = shlex.split(remote[2])
  assert main == ["TSGEN_DISTRIBUTED=1", "python3", "-m", "tsgen_jax.main",
                  "--config=tsgen_jax/configs/vibcreg.py", "--workdir=/gcs/bk/tsgen_runs/run",
                  "--config.run=stage1", "--config.dataset.name=My Data"]
  scp = [c for c in cmds if c[:5] == ["gcloud", "compute", "tpus", "tpu-vm", "scp"]]
  assert "--worker=all" in scp[0]  # the sources to every worker
  assert scp[-1][5:8] == ["--recurse", "tv:/gcs/bk/tsgen_runs/run",
                          os.path.join(REPO, "runs", "tv")] and "--worker=0" in scp[-1]
  assert not any(c[4] == "delete" for c in cmds if c[0] == "gcloud")


def test_tpu_vm_steps_and_multi_worker_warning(tools):
  env, marker = tools
  r = _run("tpu_vm.sh", "--dry-run", "--accelerator-type", "v5litepod-16",
           "--steps", "run,delete", env=env)
  assert r.returncode == 0 and not marker.exists()
  cmds = _commands(r.stdout)
  assert [c[4] for c in cmds] == ["ssh", "delete"]
  assert "several workers" in r.stderr
  assert _run("tpu_vm.sh", "--steps", "run,bogus").returncode == 2


def test_gpu_dry_run_remote_and_local(tools):
  env, marker = tools
  r = _run("gpu.sh", "--dry-run", "--host", "me@gpubox", "--install", "--gpus", "0,1",
           "--workdir", "runs/x", "--", "--config.stage1.batch_size=256", env=env)
  assert r.returncode == 0, r.stderr
  assert not marker.exists()
  cmds = _commands(r.stdout)
  assert [c[0] for c in cmds] == ["ssh", "rsync", "ssh", "ssh", "mkdir", "rsync"]
  assert cmds[1][-2:] == [REPO + "/", "me@gpubox:tsgen_jax/"]
  assert "'jax[cuda12]==0.10.2'" in cmds[2][-1]
  run = cmds[3][-1]
  assert run.startswith("cd tsgen_jax && CUDA_VISIBLE_DEVICES=0,1 python3 -c")
  assert ("CUDA_VISIBLE_DEVICES=0,1 python3 -m tsgen_jax.main --config=configs/vqvae.py "
          "--workdir=runs/x --config.stage1.batch_size=256") in run
  assert cmds[5][-2:] == ["me@gpubox:tsgen_jax/runs/x/", os.path.join(REPO, "runs", "gpu") + "/"]

  r = _run("gpu.sh", "--dry-run", env=env)
  cmds = _commands(r.stdout)
  assert r.returncode == 0 and len(cmds) == 1 and cmds[0][:2] == ["bash", "-c"]
  assert "python3 -m tsgen_jax.main --config=configs/vqvae.py --workdir=runs/gpu" in cmds[0][2]
  assert not marker.exists()


def test_local_multiprocess_dry_run(tools):
  env, marker = tools
  r = _run("local_multiprocess.sh", "--dry-run", "-n", "3", "-d", "2", "-p", "23456", "-w",
           "/tmp/w", "--", "--config.run=stage1", env=env)
  assert r.returncode == 0, r.stderr
  assert not marker.exists()
  lines = [l for l in r.stdout.splitlines() if l.startswith("+ ")]
  assert lines[0] == "+ mkdir -p /tmp/w/logs" and lines[-1].startswith("+ wait")
  procs = [shlex.split(l[2:].split(" > ")[0]) for l in lines[1:-1]]
  assert len(procs) == 3
  for i, words in enumerate(procs):
    env_words = dict(w.split("=", 1) for w in words[1:] if "=" in w and not w.startswith("-"))
    assert env_words["TSGEN_COORDINATOR"] == "localhost:23456"
    assert env_words["TSGEN_NUM_PROCESSES"] == "3" and env_words["TSGEN_PROCESS_ID"] == str(i)
    assert env_words["JAX_NUM_CPU_DEVICES"] == "2" and env_words["JAX_PLATFORMS"] == "cpu"
    assert env_words["JAX_CPU_COLLECTIVES_IMPLEMENTATION"] == "gloo"
    assert words[0] == "env" and words[-6:] == [
        "python3", "-m", "tsgen_jax.main", "--config=configs/vqvae.py", "--workdir=/tmp/w",
        "--config.run=stage1"]


FAKE_PYTHON = """#!/usr/bin/env bash
echo "process $TSGEN_PROCESS_ID of $TSGEN_NUM_PROCESSES at $TSGEN_COORDINATOR: $*"
[[ "$TSGEN_PROCESS_ID" == "${FAIL_ID:-}" ]] && { echo "failing" >&2; exit 3; }
if [[ -n "${SLEEP:-}" ]]; then
  sleep "$SLEEP" & trap 'kill $!; echo "process $TSGEN_PROCESS_ID terminated"; exit 143' TERM
  wait
fi
exit 0
"""


def test_local_multiprocess_waits_for_all_and_reports_failures(tmp_path):
  py = _exe(tmp_path / "fakepython", FAKE_PYTHON)
  args = ["-n", "3", "-p", "23457", "-w", str(tmp_path / "w"), "--python", py, "--",
          "--config.run=stage1"]
  r = _run("local_multiprocess.sh", *args)
  assert r.returncode == 0, r.stderr
  assert "process 0 of 3 at localhost:23457: -m tsgen_jax.main" in r.stdout  # process 0 shown
  for i in range(3):
    log = (tmp_path / "w" / "logs" / f"process_{i}.log").read_text()
    assert log.startswith(f"process {i} of 3") and log.rstrip().endswith("--config.run=stage1")

  # Process 2 fails at once: the others (stuck for 60 s) are stopped and the exit code kept.
  t0 = time.time()
  r = _run("local_multiprocess.sh", *args, env=dict(os.environ, FAIL_ID="2", SLEEP="60"))
  assert r.returncode == 3, (r.stdout, r.stderr)
  assert time.time() - t0 < 20
  assert "process 2 failed (exit 3)" in r.stderr and "failing" in r.stderr
  assert "process 0 terminated" in r.stdout
  assert "terminated" in (tmp_path / "w" / "logs" / "process_1.log").read_text()
