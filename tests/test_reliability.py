"""Reliability: kill -9 and SIGTERM resume, non-finite guard, corrupt checkpoints, config
mismatch, determinism, and one-line errors for bad input."""

import json
import os
import random
import signal
import subprocess
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from conftest import tiny_config
from tsgen_jax import run as run_lib
from tsgen_jax import trainer
from tsgen_jax.data import ucr
from tsgen_jax.errors import DataError

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TINY = os.path.join(REPO, "tests", "tiny_config.py")
STEPS = 12
PIPE = ["--config.run=stage1,stage2", f"--config.stage1.num_steps={STEPS}",
        "--config.stage1.checkpoint_every=3", "--config.stage1.log_every=1",
        f"--config.stage2.num_steps={STEPS}", "--config.stage2.checkpoint_every=3",
        "--config.stage2.log_every=1"]


def _cli(workdir, *args, **kw):
  cmd = [sys.executable, "-m", "tsgen_jax.main", f"--config={TINY}", f"--workdir={workdir}",
         *args]
  return subprocess.Popen(cmd, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                          text=True, env=dict(os.environ, JAX_PLATFORMS="cpu"), **kw)


def _run_cli(workdir, *args, timeout=300):
  p = _cli(workdir, *args)
  out, err = p.communicate(timeout=timeout)
  return p.returncode, out, err


def _wait_for_step(workdir, stage, step, proc, timeout=240):
  path = os.path.join(workdir, "metrics.jsonl")
  t0 = time.time()
  while time.time() - t0 < timeout:
    if proc.poll() is not None:
      raise AssertionError(f"process ended early: {proc.communicate()}")
    if os.path.exists(path):
      for line in open(path).read().splitlines():
        try:
          row = json.loads(line)
        except json.JSONDecodeError:
          continue
        if row["stage"] == stage and row["step"] >= step:
          return
    time.sleep(0.05)
  raise AssertionError("timed out waiting for the run")


def _params(workdir, stage, step):
  return ocp.StandardCheckpointer().restore(
      os.path.join(workdir, "checkpoints", stage, str(step), "default"))


def _assert_same_tree(a, b):
  la, lb = jax.tree.leaves(a), jax.tree.leaves(b)
  assert len(la) == len(lb)
  for x, y in zip(la, lb):
    np.testing.assert_array_equal(np.asarray(x), np.asarray(y))


def test_kill_9_at_random_steps_resumes_bitwise(tmp_path):
  """kill -9 once at a random step of stage 1 and once of stage 2; the resumed run ends with
  bitwise the parameters of an uninterrupted run."""
  reference = str(tmp_path / "reference")
  rc, _, err = _run_cli(reference, *PIPE)
  assert rc == 0, err[-3000:]
  workdir = str(tmp_path / "killed")
  rng = random.Random(0)
  for stage in ("stage1", "stage2"):
    proc = _cli(workdir, *PIPE)
    _wait_for_step(workdir, stage, rng.randint(2, STEPS - 2), proc)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
  rc, _, err = _run_cli(workdir, *PIPE)
  assert rc == 0, err[-3000:]
  for s in ("stage1", "stage2"):
    _assert_same_tree(_params(reference, s, STEPS), _params(workdir, s, STEPS))


def test_sigterm_saves_and_exits_zero(tmp_path):
  workdir = str(tmp_path)
  args = ["--config.run=stage1", "--config.stage1.num_steps=100000",
          "--config.stage1.checkpoint_every=100000", "--config.stage1.log_every=1"]
  proc = _cli(workdir, *args)
  _wait_for_step(workdir, "stage1", 3, proc)
  proc.send_signal(signal.SIGTERM)
  out, err = proc.communicate(timeout=120)
  assert proc.returncode == 0, err[-2000:]
  assert "SIGTERM received: saved stage1 checkpoint at step" in err
  assert "rerun the same command to resume" in err and "Traceback" not in err
  steps = [d for d in os.listdir(os.path.join(workdir, "checkpoints", "stage1")) if d.isdigit()]
  assert len(steps) == 1 and int(steps[0]) >= 3


# -- non-finite guard -----------------------------------------------------------------------

def _toy_loop(tmp_path, skip, nan_at=3, num_steps=6, steps_per_call=1):
  """trainer.run on a one-parameter model whose loss is NaN on batch ``nan_at`` (0-based)."""
  from tsgen_jax import sharding, train_state
  from tsgen_jax.data import BatchStream
  from tsgen_jax.data.dataset import Split
  from tsgen_jax.data.preprocess import Stats
  import optax
  x = np.arange(8, dtype=np.float32).reshape(8, 1, 1)
  split = Split(x, None, np.ones(8, np.int32), Stats(0, 1, ()), 1, 1)
  tx = optax.sgd(0.1)
  state = train_state.create({"w": jnp.ones(())}, {}, tx)

  def step(state, batch, rng):
    def loss_fn(p):
      bad = (state.step == nan_at)
      return jnp.where(bad, jnp.nan, 1.0) * jnp.mean((p["w"] * batch["x"]) ** 2)
    loss, g = jax.value_and_grad(loss_fn)(state.params)
    upd, opt = tx.update(g, state.opt_state)
    return state.replace(step=state.step + 1, params=optax.apply_updates(state.params, upd),
                         opt_state=opt), {"loss": loss, "recon": loss * 0 + 1}

  lc = trainer.LoopConfig("stage1", str(tmp_path), num_steps, 0, 1, 2, 5, {}, False, skip,
                          steps_per_call=steps_per_call)
  mesh = sharding.make_mesh()
  return trainer.run(lc, state, step, BatchStream(split, 4, 0), mesh)


@pytest.mark.parametrize("steps_per_call", [1, 3])
def test_nonfinite_loss_stops_naming_step_and_term(tmp_path, steps_per_call):
  with pytest.raises(trainer.NonFiniteError, match=r"step 4 in loss.*step 2\) is kept"):
    _toy_loop(tmp_path, skip=False, steps_per_call=steps_per_call)
  kept = sorted(d for d in os.listdir(tmp_path / "checkpoints" / "stage1") if d.isdigit())
  assert kept == ["2"]


@pytest.mark.parametrize("steps_per_call", [1, 3])
def test_skip_nonfinite_skips_the_batch(tmp_path, steps_per_call):
  state = _toy_loop(tmp_path, skip=True, steps_per_call=steps_per_call)
  assert int(state.step) == 6 and np.isfinite(float(state.params["w"]))
  rows = [json.loads(l) for l in open(tmp_path / "metrics.jsonl")]
  assert [r["step"] for r in rows] == [1, 2, 3, 4, 5, 6]
  assert rows[-1]["skipped_steps"] == 1.0
  # Step 4's update was dropped: w is the float32 product of the five other SGD steps.
  from tsgen_jax.data.pipeline import batch_indices
  w, x = 1.0, np.arange(8, dtype=np.float64)
  for i in range(6):
    if i != 3:
      w -= 0.1 * 2 * w * np.mean(x[batch_indices(0, i, 4, 8)] ** 2)
  np.testing.assert_allclose(float(state.params["w"]), w, rtol=1e-5)


def test_steps_per_call_trains_the_same_steps(tmp_path):
  """stage1.steps_per_call = 3 over 7 steps with checkpoints every 4 (calls of 3, 1 and 3
  steps): the checkpoints, logged steps and parameters of one step per call."""
  runs = {}
  for k in (1, 3):
    workdir = str(tmp_path / f"k{k}")
    cfg = tiny_config(run="stage1", **{"stage1.num_steps": 7, "stage1.checkpoint_every": 4,
                                        "stage1.log_every": 2, "stage1.steps_per_call": k})
    run_lib.run(cfg, workdir)
    rows = [json.loads(l) for l in open(os.path.join(workdir, "metrics.jsonl"))]
    runs[k] = ([r["step"] for r in rows if r.get("stage") == "stage1"],
               sorted(d for d in os.listdir(os.path.join(workdir, "checkpoints", "stage1"))
                      if d.isdigit()), _params(workdir, "stage1", 7), rows)
  assert runs[1][0] == runs[3][0] == [2, 4, 6, 7]
  assert runs[1][1] == runs[3][1] == ["4", "7"]
  for a, b in zip(jax.tree.leaves(runs[1][2]), jax.tree.leaves(runs[3][2])):
    np.testing.assert_allclose(np.asarray(b), np.asarray(a), rtol=1e-4, atol=1e-5)
  for r1, r3 in zip(runs[1][3], runs[3][3]):
    if r1.get("stage") == "stage1":
      np.testing.assert_allclose(r3["loss"], r1["loss"], rtol=1e-4)


# -- checkpoints and config -----------------------------------------------------------------

def test_corrupt_checkpoint_falls_back_to_previous(tmp_path):
  cfg = tiny_config(run="stage1", **{"stage1.num_steps": 4, "stage1.checkpoint_every": 2})
  work = tmp_path / "work"
  run_lib.run(cfg, str(work))
  reference = _params(str(work), "stage1", 4)["params"]
  # Truncate every file of the newest checkpoint.
  for root, _, files in os.walk(work / "checkpoints" / "stage1" / "4"):
    for f in files:
      open(os.path.join(root, f), "w").close()
  run_lib.run(cfg, str(work))  # warns, restores step 2, retrains to 4
  names = os.listdir(work / "checkpoints" / "stage1")
  assert "corrupt_4" in names and "4" in names
  _assert_same_tree(reference, _params(str(work), "stage1", 4)["params"])


def test_config_mismatch_override_flag(tmp_path):
  from tsgen_jax.errors import ConfigError
  run_lib.run(tiny_config(run="stage1", **{"stage1.num_steps": 2}), str(tmp_path))
  changed = tiny_config(run="stage1", **{"stage1.num_steps": 3, "stage1.dim": 8})
  with pytest.raises(ConfigError, match=r"stage1\.dim: 16 -> 8.*stage1\.num_steps: 2 -> 3"):
    run_lib.run(changed, str(tmp_path))
  ok = tiny_config(run="stage1", **{"stage1.num_steps": 3, "resume_ignore_config": True})
  assert run_lib.run(ok, str(tmp_path))["stage1"]["num_steps"] == 3


def test_same_seed_gives_identical_results_json(tmp_path):
  cfg = tiny_config(run="stage1,eval_stage1")
  a = run_lib.run(cfg, str(tmp_path / "a"))
  b = run_lib.run(tiny_config(run="stage1,eval_stage1"), str(tmp_path / "b"))
  # Every result is identical; only the stages' wall-clock times differ.
  assert set(a.pop("_wall_s")) == set(b.pop("_wall_s")) == {"stage1", "eval_stage1"}
  assert json.dumps(a, sort_keys=True) == json.dumps(b, sort_keys=True)


# -- bad input: one line, exit 2, no traceback ----------------------------------------------

def _write(path, text):
  os.makedirs(os.path.dirname(path), exist_ok=True)
  with open(path, "w") as f:
    f.write(text)


def _archive(root, train_rows, name="Toy"):
  _write(f"{root}/{name}/{name}_TRAIN.tsv", train_rows)
  good = "".join(f"{1 + i % 2}\t" + "\t".join(str(j * 0.1 + i) for j in range(16)) + "\n"
                 for i in range(4))
  _write(f"{root}/{name}/{name}_TEST.tsv", good)


def _good_rows(n=6, length=16):
  return "".join(f"{1 + i % 2}\t" + "\t".join(str(j * 0.1 + i) for j in range(length)) + "\n"
                 for i in range(n))


def _bad_cases(tmp):
  ucr_args = lambda name="Toy": ["--config.dataset.source=ucr",  # noqa: E731
                                 f"--config.dataset.name={name}",
                                 f"--config.dataset.data_dir={tmp}/arch",
                                 f"--config.dataset.cache_dir={tmp}/cache"]
  npz = f"{tmp}/bad.npz"
  np.savez(npz, series=np.zeros((4, 16)))
  return {
      "missing data folder": (lambda: None, ["--config.dataset.source=ucr",
                                             f"--config.dataset.data_dir={tmp}/nowhere"],
                              "does not exist"),
      "unknown dataset name": (lambda: _archive(f"{tmp}/arch", _good_rows()),
                               ucr_args("Tyo"), "Toy"),
      "malformed row": (lambda: _archive(f"{tmp}/arch", _good_rows() + "1\t0.5\tabc\n"),
                        ucr_args(), r"Toy_TRAIN.tsv:7"),
      "single-example class": (lambda: _archive(f"{tmp}/arch", _good_rows(6) + "3\t" +
                                                "\t".join(["0.1"] * 16) + "\n"),
                               ucr_args(), "class 3 has only 1 train example"),
      "series shorter than n_fft": (lambda: _archive(f"{tmp}/arch", _good_rows(length=16)),
                                    ucr_args() + ["--config.stft.n_fft=32"], "n_fft=32"),
      "batch size 0": (lambda: None, ["--config.stage1.batch_size=0"], "batch_size=0"),
      "wrong npz keys": (lambda: None, ["--config.dataset.source=npz",
                                        f"--config.dataset.data_dir={npz}"], "no 'x' array"),
      "negative config value": (lambda: None, ["--config.stage1.num_steps=-5"],
                                "num_steps=-5"),
      "non-integer config value": (lambda: None, ["--config.stage1.num_steps=2.5"],
                                   "num_steps"),
      "unknown config key": (lambda: None, ["--config.stage1.num_stepz=5"], "num_steps"),
      "missing stage-1 checkpoint": (lambda: None, ["--config.run=stage2"],
                                     "no stage-1 checkpoint"),
  }


@pytest.mark.parametrize("case", [
    "missing data folder", "unknown dataset name", "malformed row", "single-example class",
    "series shorter than n_fft", "batch size 0", "wrong npz keys", "negative config value",
    "non-integer config value", "unknown config key", "missing stage-1 checkpoint"])
# An out-of-range sampling class label is tested on a trained model in test_stage2.py.
def test_bad_input_one_line_error(tmp_path, case):
  setup, args, pattern = _bad_cases(str(tmp_path))[case]
  setup()
  rc, out, err = _run_cli(str(tmp_path / "work"), *args)
  assert rc == 2, (rc, err[-2000:])
  assert "Traceback" not in err
  lines = [l for l in err.splitlines() if l.startswith("error:")]
  assert len(lines) == 1, err
  import re
  assert re.search(pattern, lines[0]), lines[0]


# -- malformed TSV rows (hypothesis) --------------------------------------------------------

_CORRUPTIONS = st.sampled_from(["columns", "text", "empty_values", "nan_row", "huge", "label"])


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(n_rows=st.integers(2, 8), length=st.integers(3, 12), bad_row=st.integers(0, 7),
       kind=_CORRUPTIONS, crlf=st.booleans(), blank_lines=st.booleans())
def test_malformed_tsv_rows_are_located(tmp_path, n_rows, length, bad_row, kind, crlf,
                                        blank_lines):
  bad_row %= n_rows
  rows = [[str(1 + i % 2)] + [f"{0.5 * j - i:.3f}" for j in range(length)]
          for i in range(n_rows)]
  r = rows[bad_row]
  if kind == "columns":
    r.append("1.0")
  elif kind == "text":
    r[1 + length // 2] = "abc"
  elif kind == "empty_values":
    r[1] = ""
  elif kind == "nan_row":
    r[1:] = ["NaN"] * length
  elif kind == "huge":
    r[1] = "1e400"
  elif kind == "label":
    r[0] = "1.5"
  eol = "\r\n" if crlf else "\n"
  lines = []
  for row in rows:
    lines.append("\t".join(row))
    if blank_lines:
      lines.append("")
  path = tmp_path / f"T_{kind}_{bad_row}.tsv"
  path.write_text(eol.join(lines) + eol, newline="")
  if kind == "columns" and bad_row == 0:
    bad_row = 1  # the first row sets the column count, so the second disagrees with it
  line_no = bad_row * (2 if blank_lines else 1) + 1
  with pytest.raises(DataError, match=rf"{path.name}:{line_no}:"):
    ucr.parse_ucr_tsv(str(path))
