"""Stage 2 through the pipeline: priors on real stage-1 tokens, sampling, scoring, errors."""

import json
import os

import numpy as np
import pytest

from conftest import dot_dtypes, tiny_config
from tsgen_jax import run as run_lib
from tsgen_jax.errors import CheckpointError, ConfigError

TINY_EVAL = {"eval.fcn_steps": 10, "eval.rocket_kernels": 50, "eval.cas_seeds": 2,
             "stage2.log_every": 1,
             "stage2.num_steps": 40, "stage2.checkpoint_every": 40}


@pytest.fixture(scope="module")
def pipeline(tmp_path_factory):
  """A tiny model trained through every stage once, shared by the tests below."""
  workdir = str(tmp_path_factory.mktemp("pipeline"))
  cache = str(tmp_path_factory.mktemp("fcn"))
  cfg = tiny_config(**TINY_EVAL, **{"eval.fcn_cache_dir": cache})
  results = run_lib.run(cfg, workdir)
  return cfg, workdir, results


def test_prior_loss_decreases_on_cbf_tokens(pipeline):
  _, workdir, _ = pipeline
  rows = [json.loads(l) for l in open(os.path.join(workdir, "metrics.jsonl"))]
  loss = np.array([r["loss"] for r in rows if r["stage"] == "stage2"])
  assert len(loss) == 40
  assert loss[-8:].mean() < 0.85 * loss[:4].mean()


def test_samples_file_and_plots(pipeline):
  cfg, workdir, results = pipeline
  with np.load(os.path.join(workdir, "samples.npz"), allow_pickle=False) as f:
    x, y = f["x"], f["y"]
  assert x.shape == (12, 1, 128) and x.dtype == np.float32 and np.isfinite(x).all()
  assert sorted(np.bincount(y, minlength=3).tolist()) == [4, 4, 4]  # train proportions
  for c in range(3):
    assert os.path.getsize(os.path.join(workdir, "plots", f"samples_class{c}.png")) > 1000
  assert results["sample"]["num_samples"] == 12


def test_eval_stage2_results(pipeline):
  _, workdir, results = pipeline
  s2 = results["stage2"]
  for key in ("fid", "fid_train", "is", "cas", "fcn_real_acc", "rocket_fid",
              "marginal_wasserstein", "acf_diff", "skew_diff", "kurtosis_diff"):
    assert key in s2 and np.isfinite(s2[key]), key
  assert 1.0 <= s2["is"] <= 3.0 and 0.0 <= s2["cas"] <= 1.0 and s2["fid"] >= 0
  assert s2["num_uncond_samples"] == 256  # max(n_test = 90, 256)
  assert s2["cas_fcn_seeds"] == 2 and np.isfinite(s2["cas_std"])  # two CAS FCNs averaged
  for name in ("stage2_real_vs_generated.png", "stage2_fcn_features_pca.png"):
    assert os.path.getsize(os.path.join(workdir, "plots", name)) > 1000


def test_rerun_skips_completed_stages(pipeline, capsys):
  cfg, workdir, results = pipeline
  again = run_lib.run(cfg, workdir)
  out = capsys.readouterr().out
  for stage in ("eval_stage1", "sample", "eval_stage2"):
    assert f"{stage}: complete, skipping" in out
  assert "[stage1] complete at step 10" in out and "[stage2] complete at step 40" in out
  assert again["stage2"] == results["stage2"]


def test_sampling_options(pipeline, tmp_path):
  cfg, workdir, _ = pipeline
  cfg = tiny_config(**TINY_EVAL, **{"eval.fcn_cache_dir": cfg.eval.fcn_cache_dir})
  cfg.run = "sample"
  cfg.sample.class_label = 2
  cfg.sample.guidance_scale = 2.0
  cfg.sample.original_scale = True
  run_lib.run(cfg, workdir)
  with np.load(os.path.join(workdir, "samples.npz")) as f:
    assert set(f["y"].tolist()) == {2}
    stats = json.load(open(os.path.join(workdir, "data_stats.json")))
    # original scale: CBF raw values have mean ~ stats.mean, not ~0 as normalised ones
    assert abs(f["x"].mean() - stats["mean"]) < 3 * stats["std"]
  cfg.sample.class_label = 3
  with pytest.raises(ConfigError, match="out of range"):
    run_lib.run(cfg, workdir)


def test_stage2_from_other_workdir_and_missing_stage1(pipeline, tmp_path):
  cfg, workdir, _ = pipeline
  with pytest.raises(CheckpointError, match="no stage-1 checkpoint"):
    run_lib.run(tiny_config(run="stage2"), str(tmp_path / "empty"))
  other = tiny_config(run="stage2,sample", **{"stage2.num_steps": 2,
                                              "stage2.stage1_workdir": workdir})
  res = run_lib.run(other, str(tmp_path / "other"))
  assert res["stage2"]["num_steps"] == 2 and res["sample"]["num_samples"] == 12


def test_lfhf_two_priors_and_unlabeled_data(tmp_path):
  path = tmp_path / "u.npz"
  rng = np.random.default_rng(0)
  np.savez(path, x=np.cumsum(rng.standard_normal((40, 2, 64)), axis=-1))
  cfg = tiny_config(run="stage1,eval_stage1,stage2,sample", **{
      "stage1.lfhf": True, "stage1.num_steps": 3, "stage2.num_steps": 3,
      "dataset.source": "npz", "dataset.data_dir": str(path)})
  res = run_lib.run(cfg, str(tmp_path / "w"))
  assert "ce_lf" in open(tmp_path / "w" / "metrics.jsonl").read()
  with np.load(tmp_path / "w" / "samples.npz") as f:
    assert f["x"].shape == (12, 2, 64) and set(f["y"].tolist()) == {-1}
  assert res["stage2"]["num_steps"] == 3
  assert {"perplexity_lf", "perplexity_hf", "codebook_usage_hf"} <= set(res["stage1"])
  assert "probe_svm_acc" not in res["stage1"]  # unlabeled: no probes


def test_sample_matmul_dtype_overrides_the_priors_dtype():
  """``sample.matmul_dtype='bfloat16'`` samples a float32-trained prior with mixed-precision
  matmuls (bfloat16 operands in the sampler's dots), '' keeps the prior's float32."""
  import jax
  from tsgen_jax import stage1 as stage1_lib
  from tsgen_jax import stage2 as stage2_lib
  from tsgen_jax.models import stage1 as stage1_model
  cfg = tiny_config()
  s1_model = stage1_model.from_config(cfg, 1, cfg.dataset.length)
  s1_vars = stage1_lib.init_variables(s1_model, jax.random.key(0), 1, cfg.dataset.length, False)
  specs = stage2_lib.prior_specs(s1_model)
  priors = stage2_lib.build_priors(cfg, s1_model, 3)
  codebooks = s1_model.apply(s1_vars, method="codebooks")
  state, _ = stage2_lib.init_state(cfg, priors, specs, codebooks, jax.random.key(1))
  ids = jax.numpy.array([0, 1, 2, 3], jax.numpy.int32)
  for dtype in ("", "bfloat16"):
    cfg.sample.matmul_dtype = dtype
    sampler = stage2_lib.make_sampler(priors, specs, s1_model, cfg.sample, 3)
    args = (state.params, s1_vars, jax.random.key(2), ids)
    dots = dot_dtypes(jax.make_jaxpr(sampler)(*args).jaxpr)
    assert any(d[0] == "bfloat16" for d in dots) == (dtype == "bfloat16")
    x, tokens = sampler(*args)
    assert x.shape == (4, 1, cfg.dataset.length) and np.all(np.isfinite(x))
  assert all(m.dtype == jax.numpy.float32 for m in priors.values())  # the priors unchanged
  cfg.sample.matmul_dtype = "float16"
  with pytest.raises(ConfigError, match="sample.matmul_dtype"):
    run_lib.run(cfg, "unused")
