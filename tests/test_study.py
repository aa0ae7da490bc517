"""The stage-1 study CLI (tsgen_jax.study): runs, tables, resume, errors."""

import csv
import json
import os
import subprocess
import sys

import numpy as np
import pytest

from tsgen_jax import study
from tsgen_jax import workdir as wd

TINY = ["stage1.dim=16", "stage1.n_resnet_blocks=1", "stage1.ssl.proj_dim=64",
        "stage1.ssl.iternorm_groups=8", "stage1.vq.codebook_size=8", "dataset.num_test=60",
        "stage1.log_every=2", "stage1.checkpoint_every=2"]
REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _argv(workdir, *extra, variants="vqvae,barlowtwins", seeds="0,1", steps=2):
  return ["study", "--datasets=synthetic", f"--variants={variants}", f"--seeds={seeds}",
          f"--workdir={workdir}", f"--num_steps={steps}", "--batch_size=16",
          *[f"--config_override={o}" for o in TINY], *extra]


def _read_csv(path):
  with open(path) as f:
    return list(csv.DictReader(f))


def _check_tables(workdir, variants, seeds, dataset="synthetic", all_variants=None):
  """study.csv / study.md agree with numpy on the per-run results.json files (of ``variants``,
  which have every seed; the tables list ``all_variants``)."""
  rows = _read_csv(os.path.join(workdir, "study.csv"))
  assert [(r["dataset"], r["variant"]) for r in rows] == \
      [(dataset, v) for v in all_variants or variants]
  md = open(os.path.join(workdir, "study.md")).read()
  for r in rows:
    if r["variant"] not in variants:
      continue
    per_run = [wd.read_results(study.run_dir(workdir, dataset, r["variant"], s))["stage1"]
               for s in seeds]
    assert int(r["n"]) == len(seeds)
    for m in study.METRICS:
      # A metric a run lacks (LF/HF runs have no single-codebook perplexity) is nan.
      vals = np.array([p.get(m, np.nan) for p in per_run], np.float64)
      np.testing.assert_allclose(float(r[f"{m}_mean"]), vals.mean(), rtol=1e-5, atol=1e-9)
      np.testing.assert_allclose(float(r[f"{m}_std"]), vals.std(ddof=1), rtol=1e-5, atol=1e-9)
    svm = np.array([p["probe_svm_acc"] for p in per_run])
    cell = f"{svm.mean():.3f} ± {svm.std(ddof=1):.3f}"
    assert f"| {dataset} | {r['variant']} | {len(seeds)} | {cell} | " in md
  assert os.path.getsize(os.path.join(workdir, "study_svm.png")) > 1000
  n_runs = len(_read_csv(os.path.join(workdir, "study_runs.csv")))
  assert n_runs >= len(variants) * len(seeds)
  return md


def test_tiny_study_end_to_end_then_resume(tmp_path, capsys):
  workdir = str(tmp_path / "study")
  study.cli(_argv(workdir))
  out = capsys.readouterr().out
  assert "4 run(s) done, 0 skipped, 0 failed" in out
  md = _check_tables(workdir, ["vqvae", "barlowtwins"], [0, 1])
  assert "**2 steps at batch 16**" in md and "seeds 0,1" in md
  assert "--datasets=synthetic" in md and "stage1.dim=16" in md
  assert " | LF " in md and " / HF " in md  # the default LF/HF runs: one perplexity per codebook
  run0 = study.run_dir(workdir, "synthetic", "vqvae", 0)
  assert os.path.exists(os.path.join(run0, "plots", "stage1_latent_tsne.png"))
  assert wd.read_results(run0)["stage1"]["num_steps"] == 2

  # Rerunning the same command skips every finished run and rewrites identical tables.
  stamp = os.path.getmtime(os.path.join(run0, "results.json"))
  before = open(os.path.join(workdir, "study.csv")).read()
  study.cli(_argv(workdir))
  out = capsys.readouterr().out
  assert "0 run(s) done, 4 skipped, 0 failed" in out
  assert out.count("done already, skipping") == 4
  assert os.path.getmtime(os.path.join(run0, "results.json")) == stamp
  assert open(os.path.join(workdir, "study.csv")).read() == before


def _fake_run(fail=()):
  """A stand-in for tsgen_jax.run.run writing seed/variant-dependent stage-1 results."""
  calls = []

  def fake(cfg, workdir):
    calls.append((cfg.dataset.name, cfg.stage1.ssl.method, cfg.seed))
    assert cfg.run == "stage1,eval_stage1" and cfg.stage1.num_steps == 7
    assert cfg.stage1.batch_size == 32 and cfg.stage1.dim == 24
    if (cfg.stage1.ssl.method, cfg.seed) in fail:
      raise RuntimeError("boom\nsecond line")
    wd.write_config(workdir, cfg)
    base = {"none": 0.5, "barlowtwins": 0.7, "vibcreg": 0.6}[cfg.stage1.ssl.method]
    vals = {m: base + 0.01 * (i + 1) * (cfg.seed + 1) ** 2 for i, m in enumerate(study.METRICS)}
    wd.update_results(workdir, "stage1", dict(vals, num_steps=7))
    return wd.read_results(workdir)

  return fake, calls


def test_study_tables_resume_and_failed_runs(tmp_path, monkeypatch, capsys):
  from tsgen_jax import run as run_lib
  workdir = str(tmp_path / "s")
  argv = ["study", "--datasets=synthetic", "--variants=vqvae,barlowtwins,vibcreg",
          "--seeds=0,1,2", f"--workdir={workdir}", "--num_steps=7", "--batch_size=32",
          "--config_override=stage1.dim=24", "--nocompilation_cache"]
  fake, calls = _fake_run(fail={("vibcreg", 1)})
  monkeypatch.setattr(run_lib, "run", fake)
  with pytest.raises(SystemExit) as e:
    study.cli(argv)
  assert e.value.code == 1
  out = capsys.readouterr().out
  assert len(calls) == 9 and "8 run(s) done, 0 skipped, 1 failed" in out
  assert "synthetic vibcreg seed1: FAILED: RuntimeError: boom second line" in out
  # Seeds outermost: every dataset/variant gets a first seed before any gets a second.
  assert [c[2] for c in calls] == [0, 0, 0, 1, 1, 1, 2, 2, 2]
  md = _check_tables(workdir, ["vqvae", "barlowtwins"], [0, 1, 2],
                     all_variants=["vqvae", "barlowtwins", "vibcreg"])
  rows = {r["variant"]: r for r in _read_csv(os.path.join(workdir, "study.csv"))}
  assert rows["vibcreg"]["n"] == "2"
  vals = [0.6 + 0.01 * (s + 1) ** 2 for s in (0, 2)]
  np.testing.assert_allclose(float(rows["vibcreg"]["probe_svm_acc_mean"]), np.mean(vals), rtol=1e-5)
  np.testing.assert_allclose(float(rows["vibcreg"]["probe_svm_acc_std"]), np.std(vals, ddof=1),
                             rtol=1e-5)
  assert "## Failed runs" in md and "vibcreg seed1: RuntimeError: boom second line" in md
  # SVM continuous / quantised: vibcreg (seeds 0, 2) minus vqvae (seeds 0-2).
  assert "| synthetic | +0.200 / +0.200 | +0.103 / +0.110 |" in md

  # The rerun only repeats the failed run.
  fake, calls = _fake_run()
  monkeypatch.setattr(run_lib, "run", fake)
  study.cli(argv)
  assert calls == [("CBF", "vibcreg", 1)]
  assert "1 run(s) done, 8 skipped, 0 failed" in capsys.readouterr().out
  _check_tables(workdir, ["vqvae", "barlowtwins", "vibcreg"], [0, 1, 2])

  # A changed budget is not "done": every run goes again.
  fake, calls = _fake_run()
  monkeypatch.setattr(run_lib, "run", fake)
  study.cli([a.replace("dim=24", "dim=24 ") for a in argv] + ["--seeds=0"])
  assert len(calls) == 0  # same config (value parsed as int) -> skipped
  study.cli(argv + ["--seeds=0", "--config_override=stage1.lr=0.002"])
  assert len(calls) == 3


def test_single_seed_std_is_zero():
  assert study.mean_std([0.5]) == (0.5, 0.0)
  m, s = study.mean_std([0.1, 0.2, 0.6])
  assert np.isclose(m, 0.3) and np.isclose(s, np.std([0.1, 0.2, 0.6], ddof=1))
  assert all(np.isnan(study.mean_std([])))


@pytest.mark.parametrize("args,match", [
    (["--variants=vqvae,nope"], "unknown variant 'nope'"),
    (["--datasets=CBF", "--data_dir=/no/such/dir"], "does not exist"),
    (["--datasets=NoSuchSet", "--data_dir={tmp}"], "not found in"),
    (["--seeds=0,x"], "--seeds=0,x: expected comma-separated integers"),
    (["--config_override=stage1.nope=1"], "unknown config key 'stage1.nope'"),
    (["--config_override=stage1.dim=big"], "expected a int"),
    (["--num_steps=-1"], "--num_steps=-1"),
    (["--bogus_flag"], "Unknown command line flag 'bogus_flag'"),
])
def test_bad_input_is_one_line_error(tmp_path, capsys, args, match):
  argv = ["study", "--datasets=synthetic", f"--workdir={tmp_path / 'w'}"]
  argv += [a.replace("{tmp}", str(tmp_path)) for a in args]
  with pytest.raises(SystemExit) as e:
    study.cli(argv)
  assert e.value.code == 2
  err = capsys.readouterr().err.strip()
  assert err.startswith("error: ") and match in err and "\n" not in err
  assert not os.path.exists(tmp_path / "w" / "study.md")


def test_missing_ucr_dir_from_the_command_line(tmp_path):
  env = {k: v for k, v in os.environ.items() if k != "TSGEN_UCR_DIR"}
  p = subprocess.run([sys.executable, "-m", "tsgen_jax.study", "--datasets=CBF",
                      f"--workdir={tmp_path}"], cwd=REPO, env=env, capture_output=True,
                     text=True, timeout=120)
  assert p.returncode == 2
  assert p.stderr.strip().startswith("error: UCR dataset(s) CBF need the archive folder")
  assert "Traceback" not in p.stderr and len(p.stderr.strip().splitlines()) == 1


def test_tsne_plot_subsamples_and_skips_tiny_inputs(tmp_path):
  from tsgen_jax import plots
  rng = np.random.default_rng(0)
  y = np.repeat(np.arange(3), 20)
  f = rng.normal(size=(60, 8)) + 4 * y[:, None]
  path = str(tmp_path / "tsne.png")
  assert plots.embedding_tsne(f, y, path, max_points=40)
  assert os.path.getsize(path) > 1000
  assert plots.tsne_2d(f[:40]).shape == (40, 2)
  assert not plots.embedding_tsne(f[:4], y[:4], str(tmp_path / "none.png"))
  assert not os.path.exists(tmp_path / "none.png")


def test_study_stage2_mode_runs_pipeline_and_tabulates_scores(tmp_path, monkeypatch, capsys):
  from tsgen_jax import run as run_lib
  calls = []

  def fake(cfg, workdir):
    calls.append(cfg.seed)
    assert cfg.run == study.STAGE2_STAGES
    wd.write_config(workdir, cfg)
    wd.update_results(workdir, "stage1", {m: 0.5 for m in study.METRICS})
    wd.update_results(workdir, "stage2", {m: 1.0 + cfg.seed + 0.1 * i
                                          for i, m in enumerate(study.STAGE2_METRICS)})
    return wd.read_results(workdir)

  monkeypatch.setattr(run_lib, "run", fake)
  workdir = str(tmp_path / "s2")
  argv = ["study", "--datasets=synthetic", "--variants=vibcreg", "--seeds=0,2",
          f"--workdir={workdir}", "--stage2", "--nocompilation_cache",
          "--config_override=stage2.num_steps=9"]
  study.cli(argv)
  assert calls == [0, 2] and "fid 1.000" in capsys.readouterr().out
  rows = _read_csv(os.path.join(workdir, "study.csv"))
  for i, m in enumerate(study.STAGE2_METRICS):
    vals = [1.0 + s + 0.1 * i for s in (0, 2)]
    np.testing.assert_allclose(float(rows[0][f"{m}_mean"]), np.mean(vals), rtol=1e-6)
    np.testing.assert_allclose(float(rows[0][f"{m}_std"]), np.std(vals, ddof=1), rtol=1e-5)
  md = open(os.path.join(workdir, "study.md")).read()
  assert "## Stage 2" in md and "| synthetic | vibcreg | 2 | 2.00 ± 1.41 | 2.10 ± 1.41 |" in md
  assert "**9 steps at batch 128**" in md
  # Stage-1-only results do not count as done in stage-2 mode (and vice versa they do).
  calls.clear()
  study.cli(argv)
  assert calls == []
  stage1_only = study.Study(datasets=["synthetic"], variants=["vibcreg"], seeds=[0],
                            workdir=workdir)
  d = study.run_dir(workdir, "synthetic", "vibcreg", 0)
  cfg = study.run_config(stage1_only, "synthetic", "vibcreg", 0, study.find_configs_dir())
  assert study.is_done(d, cfg)
  with open(os.path.join(d, "results.json")) as f:
    res = json.load(f)
  del res["stage2"]
  with open(os.path.join(d, "results.json"), "w") as f:
    json.dump(res, f)
  study.cli(argv)
  assert calls == [0]


def test_perplexity_cell_single_and_lfhf():
  nan = float("nan")
  single = {"perplexity_mean": 20.04, "perplexity_std": 1.5, "perplexity_lf_mean": nan,
            "perplexity_lf_std": nan, "perplexity_hf_mean": nan, "perplexity_hf_std": nan}
  assert study._perplexity_cell(single) == "20.0 ± 1.5"
  split = dict(single, perplexity_mean=nan, perplexity_std=nan, perplexity_lf_mean=12.34,
               perplexity_lf_std=0.5, perplexity_hf_mean=23.83, perplexity_hf_std=0.0)
  assert study._perplexity_cell(split) == "LF 12.3 ± 0.5 / HF 23.8 ± 0.0"
  assert study._perplexity_cell(dict(split, perplexity_lf_mean=nan)) == "–"
