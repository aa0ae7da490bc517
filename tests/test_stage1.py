"""Stage-1 model and training: shapes, learning, resume, sharding, evaluation."""

import json
import os
import subprocess
import sys
import textwrap

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from conftest import simulated_cpu_devices_env, tiny_config
from tsgen_jax import run as run_lib
from tsgen_jax import sharding, stage1, trainer
from tsgen_jax.data import BatchStream, load_dataset
from tsgen_jax.models import conv as conv_lib
from tsgen_jax.models import stage1 as stage1_model
from tsgen_jax.models.vqvae import VQVAE

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.mark.parametrize("length,lfhf", [(128, False), (101, True), (60, False)])
def test_vqvae_shapes_and_exact_length(length, lfhf):
  m = VQVAE(num_channels=2, length=length, dim=8, n_resnet_blocks=1, codebook_size=8,
            lfhf=lfhf)
  x = jnp.asarray(np.random.default_rng(0).standard_normal((3, 2, length)), jnp.float32)
  v = m.init({"params": jax.random.key(0)}, x)
  out = m.apply(v, x)
  assert out["x_hat"].shape == (3, 2, length)
  grids = m.token_grids()
  toks = m.apply(v, x, method="tokenize")
  for name in m.branch_names:
    assert toks[name].shape == (3, *grids[name])
    assert toks[name].dtype == jnp.int32
  assert sum(h for h, _ in grids.values()) == 5  # every STFT row belongs to one branch
  rec = m.apply(v, toks, method="decode_tokens")
  np.testing.assert_allclose(np.asarray(rec), np.asarray(out["x_hat"]), atol=1e-5)


def test_token_width_default_gives_40_tokens_for_cbf():
  m = VQVAE(num_channels=1, length=128)
  assert m.token_grids() == {"main": (5, 8)}


class _KilledAt(BatchStream):
  """A batch stream that dies (like a killed process) when asked for batch ``kill_step``."""
  kill_step = None

  def host_batch(self, step):
    if step == self.kill_step:
      raise RuntimeError("killed")
    return super().host_batch(step)


def _train(cfg, workdir, num_steps, kill_step=None):
  ds = load_dataset(cfg.dataset, cfg.stft.n_fft)
  cfg.stage1.num_steps = num_steps
  mesh = sharding.make_mesh()
  model, state, tx = run_lib.stage1_setup(cfg, ds)
  stream = _KilledAt(ds.train, cfg.stage1.batch_size, cfg.seed, sharding.data_sharding(mesh))
  stream.kill_step = kill_step
  step = stage1.make_train_step(model, cfg.stage1, tx)
  return trainer.run(run_lib.loop_config(cfg, str(workdir), "stage1", cfg.stage1), state, step,
                     stream, mesh)


def test_loss_decreases_over_50_steps_on_cbf(tmp_path):
  cfg = tiny_config(**{"stage1.log_every": 1, "stage1.checkpoint_every": 50})
  _train(cfg, tmp_path, 50)
  rows = [json.loads(l) for l in open(tmp_path / "metrics.jsonl")]
  loss = np.array([r["loss"] for r in rows])
  assert len(loss) == 50 and rows[0]["stage"] == "stage1"
  assert loss[-10:].mean() < 0.6 * loss[:5].mean()


def test_resume_gives_identical_parameters(tmp_path):
  cfg = tiny_config(**{"stage1.checkpoint_every": 3})
  full = _train(cfg, tmp_path / "full", 6)
  with pytest.raises(RuntimeError, match="killed"):
    _train(cfg, tmp_path / "part", 6, kill_step=4)
  assert sorted(os.listdir(tmp_path / "part" / "checkpoints" / "stage1")) == ["3", "config.json"]
  resumed = _train(cfg, tmp_path / "part", 6)
  assert int(resumed.step) == 6
  for a, b in zip(jax.tree.leaves((full.params, full.model_state)),
                  jax.tree.leaves((resumed.params, resumed.model_state))):
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


def test_resume_with_different_config_is_an_error(tmp_path):
  from tsgen_jax.errors import ConfigError
  _train(tiny_config(), tmp_path, 2)
  with pytest.raises(ConfigError, match=r"stage1\.lr: 0\.001 -> 0\.5"):
    _train(tiny_config(**{"stage1.lr": 0.5}), tmp_path, 4)


@pytest.mark.parametrize("variant", ["ema_kmeans", "codebook_loss"])
def test_variants_train(tmp_path, variant):
  over = {"stage1.vq.kmeans_init": True} if variant == "ema_kmeans" else \
      {"stage1.vq.ema": False}
  cfg = tiny_config(**over, **{"run": "stage1,eval_stage1"})
  res = run_lib.run(cfg, str(tmp_path))["stage1"]
  assert res["num_steps"] == 10
  key = "recon_mse"
  assert np.isfinite(res[key])


@pytest.mark.parametrize("lfhf", [True, False])
def test_eval_stage1_writes_results_and_plots(tmp_path, lfhf):
  cfg = tiny_config(run="stage1,eval_stage1", **{"stage1.lfhf": lfhf})
  res = run_lib.run(cfg, str(tmp_path))["stage1"]
  # One perplexity and usage per codebook: LF/HF (the default) has two.
  suffixes = ("_lf", "_hf") if lfhf else ("",)
  codebook_keys = [f"{m}{s}" for m in ("perplexity", "codebook_usage") for s in suffixes]
  for key in ["recon_mse", "tf_mse", "probe_svm_acc", "probe_knn_acc", "probe_svm_acc_q",
              "probe_knn_acc_q"] + codebook_keys:
    assert key in res and np.isfinite(res[key]), key
  assert ("perplexity" in res) == (not lfhf)
  for s in suffixes:
    assert 1.0 <= res[f"perplexity{s}"] <= 8 and 0 < res[f"codebook_usage{s}"] <= 1
  for name in ("stage1_reconstructions.png", "stage1_codebook_usage.png",
               "stage1_latent_pca.png"):
    assert os.path.getsize(tmp_path / "plots" / name) > 1000
  saved = json.load(open(tmp_path / "config.json"))
  assert saved["stage1"]["dim"] == 16
  tb = os.listdir(tmp_path / "tensorboard" / "stage1")
  assert tb and tb[0].startswith("events.out.tfevents")


SHARDED_SCRIPT = textwrap.dedent("""
    import os, sys, json
    sys.path.insert(0, {repo!r}); sys.path.insert(0, {tests!r})
    import jax, numpy as np
    from conftest import tiny_config
    from tsgen_jax import run as run_lib, sharding, stage1, trainer
    from tsgen_jax.data import BatchStream, load_dataset
    assert jax.device_count() == 8, jax.devices()
    for method in {methods!r}:
      cfg = tiny_config(**{{"stage1.ssl.method": method, "stage1.ssl.weight": 1.0}})
      ds = load_dataset(cfg.dataset, 8)
      out = {{}}
      for n in (1, 8):
        mesh = sharding.make_mesh(devices=jax.devices()[:n])
        model, state, tx = run_lib.stage1_setup(cfg, ds)
        state = sharding.replicate_tree(state, mesh)
        stream = BatchStream(ds.train, 16, 0, sharding.data_sharding(mesh))
        fn = trainer.compile_step(stage1.make_train_step(model, cfg.stage1, tx), mesh, state)
        for s in range(2):
          state, m = fn(state, stream.device_batch(s), jax.random.key(s))
        out[n] = (float(m["loss"]), [np.asarray(a) for a in jax.tree.leaves(state.params)])
      assert abs(out[1][0] - out[8][0]) < 1e-5 * max(1, abs(out[1][0])), (out[1][0], out[8][0])
      worst = max(float(np.max(np.abs(a - b))) for a, b in zip(out[1][1], out[8][1]))
      assert worst < 1e-5, worst
      print("OK", out[1][0], out[8][0], worst)
""")


def test_sharded_step_matches_single_device():
  """Plain and VIbCReg (projector, BatchNorm, IterNorm, augmentation) steps on 8 devices."""
  env = simulated_cpu_devices_env(8)
  script = SHARDED_SCRIPT.format(repo=REPO, tests=os.path.join(REPO, "tests"),
                                 methods=("none", "vibcreg"))
  r = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True,
                     timeout=600)
  assert r.returncode == 0 and "OK" in r.stdout, r.stdout + r.stderr[-3000:]



def _forward_conv_count(cfg, length):
  """Convolutions in the traced training forward pass of the stage-1 model of ``cfg``."""
  model = stage1_model.from_config(cfg, 1, length)
  x = jnp.zeros((cfg.stage1.batch_size, 1, length))
  views = (x, x) if cfg.stage1.ssl.method != "none" else (None, None)
  variables = jax.eval_shape(lambda: model.init(jax.random.key(0), x, *views))
  jaxpr = jax.make_jaxpr(lambda v: model.apply(v, x, *views, train=True, mutable=True,
                                               rngs={"vq": jax.random.key(1)}))(variables)
  return str(jaxpr).count("conv_general_dilated")


def test_aug_recon_reconstructs_the_view_and_encodes_it_once():
  """ssl.aug_recon_weight > 0 (NC-VQVAE's 0.1): the view's VQ-VAE pass adds a decoder but no
  third encoder pass over x1 (its latent is reused for the projector), and its
  reconstruction loss enters the objective."""
  over = {"stage1.ssl.method": "vibcreg", "stage1.ssl.weight": 0.01}
  length = 64
  n_plain = _forward_conv_count(tiny_config(), length)  # x: encoder + decoder
  n_ssl = _forward_conv_count(tiny_config(**over), length)  # + x1, x2: encoders
  n_aug = _forward_conv_count(tiny_config(**over, **{"stage1.ssl.aug_recon_weight": 0.1}),
                              length)
  n_enc = (n_ssl - n_plain) // 2
  assert n_enc > 0 and n_ssl - n_plain == 2 * n_enc
  assert n_aug - n_ssl == n_plain - n_enc  # one more decoder, no more encoders

  cfg = tiny_config(**over, **{"stage1.ssl.aug_recon_weight": 0.1})
  ds = load_dataset(cfg.dataset, cfg.stft.n_fft)
  model, state, tx = run_lib.stage1_setup(cfg, ds)
  step = jax.jit(stage1.make_train_step(model, cfg.stage1, tx))
  batch = {"x": jnp.asarray(ds.train.x[:cfg.stage1.batch_size]),
           "y": jnp.asarray(ds.train.y[:cfg.stage1.batch_size])}
  _, metrics = step(state, batch, jax.random.key(0))
  m = {k: float(v) for k, v in metrics.items()}
  assert np.isfinite(m["aug_recon"]) and m["aug_recon"] > 0
  np.testing.assert_allclose(m["loss"], m["recon_time"] + m["recon_tf"] + m["commit"]
                             + 0.01 * m["ssl"] + 0.1 * m["aug_recon"], rtol=1e-5)


def test_view_bn_stats_false_keeps_augmented_views_out_of_the_encoder_statistics():
  """ssl.view_bn_stats=False: after a step the encoder's BatchNorm running statistics are
  those of the x pass alone, the projector's are unchanged from the default mode, and the
  loss is the same (batch statistics, not running ones, are used in training)."""
  over = {"stage1.ssl.method": "barlowtwins", "stage1.ssl.weight": 1.0}
  cfg = tiny_config(**over)
  ds = load_dataset(cfg.dataset, cfg.stft.n_fft)
  model, state, tx = run_lib.stage1_setup(cfg, ds)
  batch = {"x": jnp.asarray(ds.train.x[:cfg.stage1.batch_size]),
           "y": jnp.asarray(ds.train.y[:cfg.stage1.batch_size])}
  steps = {}
  for flag in (True, False):
    c = tiny_config(**over, **{"stage1.ssl.view_bn_stats": flag})
    steps[flag] = jax.jit(stage1.make_train_step(model, c.stage1, tx))(
        state, batch, jax.random.key(0))
  (s_ref, m_ref), (s_new, m_new) = steps[True], steps[False]
  np.testing.assert_allclose(float(m_new["loss"]), float(m_ref["loss"]), rtol=1e-6)
  # The x pass alone, from the same starting variables:
  _, x_only = jax.jit(lambda v, x: model.apply(
      v, x, train=True, mutable=list(state.model_state), rngs={"vq": jax.random.key(1)}))(
          {"params": state.params, **state.model_state}, batch["x"])
  enc = lambda ms: ms["batch_stats"]["vqvae"]  # noqa: E731
  chex_equal = lambda a, b: jax.tree.map(  # noqa: E731
      lambda u, v: np.testing.assert_allclose(u, v, rtol=1e-5, atol=1e-6), a, b)
  chex_equal(enc(s_new.model_state), enc(x_only))
  proj = lambda ms: ms["batch_stats"]["projector"]  # noqa: E731
  chex_equal(proj(s_new.model_state), proj(s_ref.model_state))
  # ... while in the default (NC-VQVAE) mode the views moved the encoder's statistics.
  diffs = jax.tree.leaves(jax.tree.map(lambda u, v: float(jnp.max(jnp.abs(u - v))),
                                       enc(s_ref.model_state), enc(x_only)))
  assert max(diffs) > 1e-4
  # Checkpoints and study runs from before the key existed still match the default.
  assert "view_bn_stats" not in run_lib.stage_identity(cfg, "stage1")["stage1"]["ssl"]
  assert run_lib.stage_identity(
      tiny_config(**over, **{"stage1.ssl.view_bn_stats": False}),
      "stage1")["stage1"]["ssl"]["view_bn_stats"] is False


def test_load_run_config_completes_a_config_saved_before_newer_keys(tmp_path):
  """A run's config.json written before stage1.conv_wgrad_chunk and stage1.ssl.view_bn_stats
  existed loads with the behaviour the run had (views in the BatchNorm statistics) and the
  default for a speed-only key; the saved values are kept; a missing file is a ConfigError."""
  from tsgen_jax.errors import ConfigError
  d = tiny_config(**{"stage1.ssl.method": "vibcreg", "stage1.dim": 24}).to_dict()
  del d["stage1"]["conv_wgrad_chunk"], d["stage1"]["ssl"]["view_bn_stats"]
  (tmp_path / "config.json").write_text(json.dumps(d))
  cfg = run_lib.load_run_config(str(tmp_path))
  assert cfg.stage1.ssl.view_bn_stats is True and cfg.stage1.conv_wgrad_chunk == -1
  assert cfg.stage1.dim == 24 and cfg.stage1.ssl.method == "vibcreg"
  assert cfg.to_dict() == tiny_config(**{"stage1.ssl.method": "vibcreg",
                                        "stage1.dim": 24}).to_dict()
  assert stage1_model.from_config(cfg, 1, 128).vqvae.wgrad_chunk == conv_lib.resolve_rows(
      -1, auto=cfg.stage1.batch_size)
  with pytest.raises(ConfigError, match="config.json: not found"):
    run_lib.load_run_config(str(tmp_path / "nowhere"))
  (tmp_path / "config.json").write_text("{not json")
  with pytest.raises(ConfigError, match="cannot read the saved config"):
    run_lib.load_run_config(str(tmp_path))
