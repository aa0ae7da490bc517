"""Runs the stages of a config in a workdir: stage1 -> eval_stage1 -> stage2 -> sample ->
eval_stage2. Each stage reads what earlier stages left in the workdir."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import time

import jax
import ml_collections
import numpy as np

from tsgen_jax import checkpoint as ckpt_lib
from tsgen_jax import sharding
from tsgen_jax import stage1 as stage1_lib
from tsgen_jax import trainer
from tsgen_jax import workdir as wd
from tsgen_jax.config import ALL_STAGES
from tsgen_jax.config import base_config
from tsgen_jax.config import validate
from tsgen_jax.data import BatchStream, Dataset, load_dataset
from tsgen_jax.data.pipeline import batch_indices
from tsgen_jax.errors import CheckpointError, ConfigError
from tsgen_jax.models import stage1 as stage1_model

# Config keys that may change between runs of one stage without invalidating checkpoints
# (conv_wgrad_chunk changes only how a gradient is summed, not the model or its results).
_VOLATILE = ("log_every", "checkpoint_every", "keep_checkpoints", "conv_wgrad_chunk",
             "steps_per_call")

# Keys added after runs existed, with the value that reproduces the older behaviour. They are
# recorded in a stage's identity (and compared by the study) only when set to another value,
# so checkpoints and finished study runs from before the key existed still match.
_LEGACY_VALUES = {("stage1", "ssl", "view_bn_stats"): True}


def _parent(d: dict, path: tuple):
  """The dict in the nested dict ``d`` that holds the key ``path[-1]``, or None."""
  node = d
  for k in path[:-1]:
    node = node.get(k) if isinstance(node, dict) else None
  return node if isinstance(node, dict) else None


def drop_legacy_defaults(d: dict) -> dict:
  """Removes from the nested config dict ``d`` (in place; returned) every _LEGACY_VALUES key
  that holds its legacy value."""
  for path, value in _LEGACY_VALUES.items():
    node = _parent(d, path)
    if node is not None and node.get(path[-1], value) == value:
      node.pop(path[-1], None)
  return d


def load_run_config(workdir: str):
  """The ConfigDict a run saved as ``<workdir>/config.json``, completed for today's code.

  Keys added to the config after the run was made are filled in: a _LEGACY_VALUES key with
  the value that reproduces the run's behaviour, any other with base_config()'s default
  (such keys only change speed, e.g. stage1.conv_wgrad_chunk). Keys the run has keep their
  values. ConfigError if the file is missing or not JSON.
  """
  path = os.path.join(workdir, "config.json")
  try:
    with open(path) as f:
      saved = json.load(f)
  except FileNotFoundError:
    raise ConfigError(f"{path}: not found (is {workdir} a run's workdir?)") from None
  except (OSError, ValueError) as e:
    raise ConfigError(f"{path}: cannot read the saved config ({e})") from None
  full = base_config().to_dict()
  for path_keys, value in _LEGACY_VALUES.items():
    _parent(full, path_keys)[path_keys[-1]] = value

  def merge(default: dict, given: dict) -> dict:
    out = dict(default)
    for k, v in given.items():
      out[k] = merge(default[k], v) if isinstance(v, dict) and isinstance(
          default.get(k), dict) else v
    return out

  return ml_collections.ConfigDict(merge(full, saved))


@dataclasses.dataclass
class Context:
  """What every stage gets: the config, the workdir, the data and the device mesh."""
  cfg: object
  workdir: str
  dataset: Dataset
  mesh: object


def stage_identity(cfg, stage: str) -> dict:
  """The config values a stage's checkpoints depend on (compared on resume)."""
  d = {"seed": cfg.seed, "dataset": cfg.dataset.to_dict(), "stft": cfg.stft.to_dict(),
       "stage1": cfg.stage1.to_dict()}
  for k in _VOLATILE:
    d["stage1"].pop(k, None)
  if stage == "stage2":
    d["stage2"] = {k: v for k, v in cfg.stage2.to_dict().items() if k not in _VOLATILE}
  return drop_legacy_defaults(d)


def loop_config(cfg, workdir, stage: str, section) -> trainer.LoopConfig:
  return trainer.LoopConfig(
      stage=stage, workdir=workdir, num_steps=int(section.num_steps), seed=cfg.seed,
      log_every=int(section.log_every), checkpoint_every=int(section.checkpoint_every),
      keep_checkpoints=int(section.keep_checkpoints), identity=stage_identity(cfg, stage),
      allow_config_change=cfg.resume_ignore_config, skip_nonfinite=cfg.skip_nonfinite,
      ssl=stage == "stage1" and cfg.stage1.ssl.method != "none",
      mixed=stage == "stage2" and cfg.stage2.matmul_dtype == "bfloat16",
      steps_per_call=int(section.get("steps_per_call", 1)))


# -- stage 1 ----------------------------------------------------------------------------------

def stage1_setup(cfg, dataset: Dataset, first_batch=None):
  """(model, fresh state, optimiser) for stage 1 on ``dataset``."""
  c, length = dataset.shape
  model = stage1_model.from_config(cfg, c, length)
  state, tx = stage1_lib.create_state(cfg, model, c, length, first_batch)
  return model, state, tx


def run_stage1(ctx: Context):
  cfg = ctx.cfg
  s1 = cfg.stage1
  stream = BatchStream(ctx.dataset.train, s1.batch_size, cfg.seed,
                       sharding.data_sharding(ctx.mesh))
  first = None
  if s1.vq.kmeans_init:  # the whole first global batch, so every process gets the same init
    first = ctx.dataset.train.take(
        batch_indices(cfg.seed, 0, s1.batch_size, len(ctx.dataset.train)))[0]
  model, state, tx = stage1_setup(cfg, ctx.dataset, first)
  step = stage1_lib.make_train_step(model, s1, tx)
  state = trainer.run(loop_config(cfg, ctx.workdir, "stage1", s1), state, step, stream, ctx.mesh)
  wd.update_results(ctx.workdir, "stage1", {"num_steps": int(state.step)})


def abstract_state(make_state):
  """``make_state()``'s output as ShapeDtypeStructs on this process's first device, traced
  with ``jax.eval_shape`` (nothing initialised or compiled): a restore target."""
  device = jax.sharding.SingleDeviceSharding(jax.local_devices()[0])
  return jax.tree.map(lambda s: jax.ShapeDtypeStruct(s.shape, s.dtype, sharding=device),
                      jax.eval_shape(make_state))


def stage1_workdir(cfg, workdir: str) -> str:
  """Where stage 1's checkpoints live: ``stage2.stage1_workdir`` or this workdir."""
  return cfg.stage2.stage1_workdir or workdir


def load_stage1(cfg, workdir: str, dataset: Dataset, step: int | None = None):
  """(model, variables) of the trained stage-1 model (its checkpoint at ``step``, default the
  latest)."""
  src = stage1_workdir(cfg, workdir)
  directory = os.path.join(src, "checkpoints", "stage1")
  if not os.path.isdir(directory):
    raise CheckpointError(f"no stage-1 checkpoint in {directory}: run the 'stage1' stage first "
                          "(--config.run=stage1) or set --config.stage2.stage1_workdir")
  c, length = dataset.shape
  model = stage1_model.from_config(cfg, c, length)
  ckpt = ckpt_lib.Checkpointer(directory)
  if ckpt.latest_step() is None:
    raise CheckpointError(f"no stage-1 checkpoint in {directory}: run the 'stage1' stage first")
  _, state = ckpt.restore(abstract_state(
      lambda: stage1_lib.create_state(cfg, model, c, length)[0]), step=step)
  ckpt.close()
  return model, {"params": state.params, **state.model_state}


def run_eval_stage1(ctx: Context):
  from tsgen_jax import eval_stage1
  model, variables = load_stage1(ctx.cfg, ctx.workdir, ctx.dataset)
  results = eval_stage1.evaluate(ctx.cfg, model, variables, ctx.dataset, ctx.workdir)
  wd.update_results(ctx.workdir, "stage1", results)
  return results


# -- stage 2 ----------------------------------------------------------------------------------

def stage2_models(cfg, dataset: Dataset, stage1_model):
  """(priors, specs): the stage-2 priors over ``stage1_model``'s token grids."""
  from tsgen_jax import stage2 as stage2_lib
  specs = stage2_lib.prior_specs(stage1_model)
  priors = stage2_lib.build_priors(cfg, stage1_model, dataset.num_classes)
  return priors, specs


def stage2_fresh_state(cfg, priors, specs, stage1_model, stage1_vars):
  """(fresh state, optimiser) for stage 2, token embeddings from the stage-1 codebooks."""
  from tsgen_jax import stage2 as stage2_lib
  codebooks = stage1_model.apply(stage1_vars, method="codebooks")
  return stage2_lib.init_state(cfg, priors, specs, codebooks,
                               jax.random.fold_in(jax.random.key(cfg.seed), 2))


def stage2_setup(cfg, dataset: Dataset, stage1_model, stage1_vars):
  """(priors, specs, fresh state, optimiser) for stage 2."""
  priors, specs = stage2_models(cfg, dataset, stage1_model)
  state, tx = stage2_fresh_state(cfg, priors, specs, stage1_model, stage1_vars)
  return priors, specs, state, tx


def run_stage2(ctx: Context):
  from tsgen_jax import stage2 as stage2_lib
  cfg = ctx.cfg
  s1_model, s1_vars = load_stage1(cfg, ctx.workdir, ctx.dataset)
  x_train, y_train = ctx.dataset.train.arrays()
  tokens = stage2_lib.encode_tokens(s1_model, s1_vars, x_train)
  priors, specs, state, tx = stage2_setup(cfg, ctx.dataset, s1_model, s1_vars)
  stream = BatchStream(stage2_lib.TokenSplit(tokens, y_train), cfg.stage2.batch_size, cfg.seed,
                       sharding.data_sharding(ctx.mesh))
  step = stage2_lib.make_train_step(priors, specs, cfg.stage2, ctx.dataset.num_classes, tx)
  state = trainer.run(loop_config(cfg, ctx.workdir, "stage2", cfg.stage2), state, step, stream,
                      ctx.mesh)
  wd.update_results(ctx.workdir, "stage2", {"num_steps": int(state.step)})


def load_stage2(ctx: Context):
  """(sampler inputs) of the trained models: stage-1 model/vars, priors, specs, params."""
  cfg = ctx.cfg
  s1_model, s1_vars = load_stage1(cfg, ctx.workdir, ctx.dataset)
  priors, specs = stage2_models(cfg, ctx.dataset, s1_model)
  state = abstract_state(lambda: stage2_fresh_state(cfg, priors, specs, s1_model, s1_vars)[0])
  directory = os.path.join(ctx.workdir, "checkpoints", "stage2")
  ckpt = ckpt_lib.Checkpointer(directory)
  if ckpt.latest_step() is None:
    raise CheckpointError(f"no stage-2 checkpoint in {directory}: run the 'stage2' stage first "
                          "(--config.run=stage2)")
  _, state = ckpt.restore(state)
  ckpt.close()
  return s1_model, s1_vars, priors, specs, state.params


def run_sample(ctx: Context):
  from tsgen_jax import plots
  from tsgen_jax import stage2 as stage2_lib
  cfg, sm = ctx.cfg, ctx.cfg.sample
  k = ctx.dataset.num_classes
  if sm.class_label != -1 and not (k > 0 and 0 <= sm.class_label < k):
    raise ConfigError(f"sample.class_label={sm.class_label} is out of range: expected -1 (all "
                      f"classes) or 0..{k - 1}" if k else
                      f"sample.class_label={sm.class_label}: the data is unlabeled; use -1")
  s1_model, s1_vars, priors, specs, params = load_stage2(ctx)
  sampler = stage2_lib.make_sampler(priors, specs, s1_model, sm, k)
  _, y_train = ctx.dataset.train.arrays()
  ids = stage2_lib.class_ids_for(sm.num_samples, sm.class_label, y_train, k, cfg.seed)
  x, _ = stage2_lib.generate(sampler, params, s1_vars, ids, sm.batch_size,
                             jax.random.fold_in(jax.random.key(cfg.seed), 3))
  if sm.original_scale:
    x = ctx.dataset.stats.mean + ctx.dataset.stats.std * x
  y = ids if k else np.full(len(ids), -1, np.int32)
  if jax.process_index() == 0:
    tmp = os.path.join(ctx.workdir, "samples.tmp.npz")
    np.savez(tmp, x=x.astype(np.float32), y=y.astype(np.int32))
    os.replace(tmp, os.path.join(ctx.workdir, "samples.npz"))
    for c in (sorted(set(y.tolist())) if k else [-1]):
      name = f"samples_class{c}.png" if k else "samples.png"
      plots.series_grid(x[y == c], f"generated, class {c}" if k else "generated",
                        os.path.join(ctx.workdir, "plots", name))
  wd.update_results(ctx.workdir, "sample", {"num_samples": int(len(x)),
                                            "guidance_scale": float(sm.guidance_scale)})


def eval_sample_fn(ctx: Context):
  """The trained models as eval_stage2's ``(class_ids (N,), stream) -> x (N, C, L)``."""
  from tsgen_jax import eval_stage2
  from tsgen_jax import stage2 as stage2_lib
  cfg = ctx.cfg
  s1_model, s1_vars, priors, specs, params = load_stage2(ctx)
  sampler = stage2_lib.make_sampler(priors, specs, s1_model, cfg.sample,
                                    ctx.dataset.num_classes)
  return eval_stage2.make_sample_fn(sampler, params, s1_vars, cfg.sample.batch_size, cfg.seed)


def run_eval_stage2(ctx: Context):
  from tsgen_jax import eval_stage2
  results = eval_stage2.evaluate(ctx.cfg, ctx.dataset, eval_sample_fn(ctx), ctx.workdir)
  wd.update_results(ctx.workdir, "stage2", results)


STAGES = {
    "stage1": run_stage1,
    "eval_stage1": run_eval_stage1,
    "stage2": run_stage2,
    "sample": run_sample,
    "eval_stage2": run_eval_stage2,
}


def parse_stages(run: str) -> list[str]:
  """Stages named in ``config.run`` (comma-separated), in pipeline order."""
  names = [s.strip() for s in run.split(",") if s.strip()]
  unknown = [s for s in names if s not in ALL_STAGES]
  if unknown:
    raise ConfigError(f"unknown stage(s) {unknown} in config.run; known: {list(ALL_STAGES)}")
  return [s for s in ALL_STAGES if s in names]


# Stages whose outputs are files/results rather than checkpoints: skipped when a previous run
# completed them with the same fingerprint. Training stages skip themselves (their latest
# checkpoint is at num_steps).
_RESULT_STAGES = ("eval_stage1", "sample", "eval_stage2")


def stage_fingerprint(cfg, workdir: str, stage: str) -> str:
  """A digest of everything a result stage's output depends on: the configs and checkpoints of
  the models it reads, and its own settings."""
  uses_stage2 = stage != "eval_stage1"
  ident = stage_identity(cfg, "stage2" if uses_stage2 else "stage1")
  ident["eval"] = cfg.eval.to_dict()
  if uses_stage2:
    ident["sample"] = cfg.sample.to_dict()
  sources = [("stage1", stage1_workdir(cfg, workdir))]
  if uses_stage2:
    sources.append(("stage2", workdir))
  ident["checkpoints"] = {
      name: ckpt_lib.Checkpointer(os.path.join(d, "checkpoints", name)).latest_step()
      for name, d in sources if os.path.isdir(os.path.join(d, "checkpoints", name))}
  return hashlib.sha256(json.dumps([stage, ident], sort_keys=True, default=str)
                        .encode()).hexdigest()[:16]


def run(cfg, workdir: str):
  """Runs the configured stages in ``workdir``; returns results.json's contents.

  A stage whose outputs are already complete is skipped, so rerunning the same command
  after a crash continues where it stopped.
  """
  validate(cfg)
  stages = parse_stages(cfg.run)
  wd.write_config(workdir, cfg)
  dataset = load_dataset(cfg.dataset, min_length=cfg.stft.n_fft)
  wd.write_stats(workdir, dataset.stats)
  mesh = sharding.make_mesh(cfg.mesh)
  ctx = Context(cfg, workdir, dataset, mesh)
  for stage in stages:
    fingerprint = None
    if stage in _RESULT_STAGES:
      fingerprint = stage_fingerprint(cfg, workdir, stage)
      if wd.read_results(workdir).get("_done", {}).get(stage) == fingerprint:
        print(f"== {stage}: complete, skipping ==", flush=True)
        continue
    print(f"== {stage} ==", flush=True)
    t0 = time.perf_counter()
    STAGES[stage](ctx)
    wall = time.perf_counter() - t0
    print(f"== {stage}: {wall:.0f} s ==", flush=True)
    # Wall-clock seconds of the stage's last run (a resumed training stage: of the resumed part).
    wd.update_results(workdir, "_wall_s", {stage: round(wall, 1)})
    if fingerprint is not None:
      wd.update_results(workdir, "_done", {stage: fingerprint})
  return wd.read_results(workdir)
