"""The training loop both stages share: jit with shardings, resume, checkpoints, logs, signals.

A stage supplies an initial state and a pure ``train_step(state, batch, rng) -> (state,
metrics)``; this module compiles it with the batch sharded over 'data' and the state
replicated, or FSDP-sharded over 'model' (donated), restores the latest checkpoint, runs to
``num_steps`` and saves every ``checkpoint_every`` steps, at the end, and on SIGTERM/SIGINT.
"""

from __future__ import annotations

import dataclasses
import math
import signal
from typing import Callable

import jax
import jax.numpy as jnp
import numpy as np
from absl import logging

from tsgen_jax import checkpoint as ckpt_lib
from tsgen_jax import distributed
from tsgen_jax import metrics_writer
from tsgen_jax import sharding
from tsgen_jax.data.pipeline import BatchStream
from tsgen_jax.errors import TsgenError


class Interrupted(Exception):
  """Raised after a checkpoint was saved in response to SIGTERM or SIGINT."""

  def __init__(self, stage: str, step: int, signame: str):
    super().__init__(f"{signame} received: saved {stage} checkpoint at step {step}; "
                     "rerun the same command to resume")
    self.step = step


class NonFiniteError(TsgenError):
  """A loss term or the gradient became NaN or infinite."""


@dataclasses.dataclass
class LoopConfig:
  """What the loop needs to know about a stage."""
  stage: str
  workdir: str
  num_steps: int
  seed: int
  log_every: int
  checkpoint_every: int
  keep_checkpoints: int
  identity: dict  # config values that must match on resume
  allow_config_change: bool = False
  skip_nonfinite: bool = False
  ssl: bool = False  # a two-view stage-1 step (step_compiler_options)
  mixed: bool = False  # a stage-2 step with bfloat16 matmuls (step_compiler_options)
  steps_per_call: int = 1  # train steps run by one compiled call (compile_steps)


class _SignalFlag:
  """Catches SIGTERM/SIGINT while the loop runs and remembers the first one."""

  def __init__(self):
    self.name = None
    self._old = {}

  def __enter__(self):
    for sig in (signal.SIGTERM, signal.SIGINT):
      try:
        self._old[sig] = signal.signal(sig, self._handle)
      except ValueError:  # not in the main thread
        pass
    return self

  def _handle(self, signum, frame):
    self.name = signal.Signals(signum).name

  def __exit__(self, *exc):
    for sig, old in self._old.items():
      signal.signal(sig, old)


# XLA:CPU's YNNPACK fusion kinds for the stage-1 steps: dots and reductions, not convolutions.
STAGE1_YNN_FUSION_TYPES = "LIBRARY_FUSION_TYPE_DOT,LIBRARY_FUSION_TYPE_REDUCE"


def step_compiler_options(mesh, stage: str = "stage1", ssl: bool = False,
                          mixed: bool = False) -> dict:
  """XLA options for the train step of ``stage`` on ``mesh``'s devices (``ssl``: a stage-1
  step with ``ssl.method != 'none'``; ``mixed``: a stage-2 step with
  ``stage2.matmul_dtype='bfloat16'``).

  On CPU, every stage-1 step: YNNPACK fusions for dots and reductions only
  (``STAGE1_YNN_FUSION_TYPES``), so that the convolutions run in XLA's Eigen kernels. In this
  XLA:CPU a YNNPACK convolution runs on one thread, and the step's executor hands independent
  work to the second core only when more than 8 operations are ready at once; Eigen's
  convolution uses the intra-op thread pool (3 x 3, 64 -> 64 channels over a (128, 5, 8)
  grid: 4.6-5.0 ms in YNNPACK on one or two cores, 2.4 ms in Eigen on two). With the weight
  gradients in one chunk (models/conv.py), alternated against the former defaults at B = 128:
  plain -33 %, LF/HF -27 %, the SSL steps -6 to -11 % (benchmarks/NOTES.md item 19). Listing
  the elementwise kind too would make YNNPACK materialise each broadcast operand (the
  optimiser's (4096, 4096) ones in the SSL steps: +30 %), so it is left out.

  On CPU, the SSL stage-1 steps and stage 2: region analysis in copy insertion. The state is
  donated, so each parameter's update is written over the parameter's own buffer; without the
  option XLA:CPU cannot prove that this write comes after the parameter's last read in the
  backward pass, and copies every parameter at the start of the step (55 copies in the SSL
  steps, two of them 64 MB). With it those copies go. Same results, bit for bit
  (tests/test_trainer.py); the SSL steps 4-8 % faster (benchmarks/NOTES.md item 10). The
  single-view stage-1 steps (plain, LF/HF) keep their copies: without the 64 MB projector
  kernels the option saves nothing there, and on the AMD EPYC machine it made the plain step
  4-6 % slower (item 12).

  On CPU, ``stage='stage2'`` (the MaskGIT prior) also: YNNPACK fusions for dots only. By
  default XLA:CPU also hands elementwise and reduction fusions to YNNPACK, which cannot take a
  broadcast inside; the RMSNorm backward passes then get each (D,) scale as a materialised
  (B, S, D) array. Without them the prior's step is 8-10 % faster (item 11). With ``mixed``,
  no YNNPACK fusion at all: YNNPACK's dots with bfloat16 operands and float32 results ran at
  half the rate of XLA's own on an AVX512-BF16 CPU (item 21). Sampling keeps XLA's defaults.

  Other platforms: no options.
  """
  if mesh.devices.flat[0].platform != "cpu":
    return {}
  if stage == "stage1":
    options = {"xla_cpu_experimental_ynn_fusion_type": STAGE1_YNN_FUSION_TYPES}
    if ssl:
      options["xla_cpu_copy_insertion_use_region_analysis"] = True
    return options
  return {"xla_cpu_copy_insertion_use_region_analysis": True,
          "xla_cpu_experimental_ynn_fusion_type": "" if mixed else "LIBRARY_FUSION_TYPE_DOT"}


def compile_step(train_step: Callable, mesh, state, compiler_options: dict | None = None,
                 stage: str = "stage1", ssl: bool = False, mixed: bool = False):
  """jit-compiles ``train_step`` with the state donated, the batch on 'data'. The state is
  replicated, or FSDP-sharded over 'model' when the mesh has ``model > 1``
  (:func:`sharding.state_shardings`). ``compiler_options``: XLA options, by default
  ``step_compiler_options(mesh, stage, ssl, mixed)``."""
  rep = sharding.replicated(mesh)
  state_sh = sharding.state_shardings(state, mesh)
  batch_sh = sharding.data_sharding(mesh)
  if compiler_options is None:
    compiler_options = step_compiler_options(mesh, stage, ssl, mixed)
  return jax.jit(train_step, in_shardings=(state_sh, batch_sh, rep),
                 out_shardings=(state_sh, rep), donate_argnums=(0,),
                 compiler_options=compiler_options or None)


def compile_steps(train_step: Callable, mesh, state, k: int, stage: str = "stage1",
                  ssl: bool = False, mixed: bool = False):
  """``compile_step`` for ``k`` consecutive steps in one call: ``fn(state, batches, rngs) ->
  (state, metrics)``, where ``batches`` is a tuple of k batches (each sharded as
  ``compile_step``'s), ``rngs`` a (k,) key array, step i takes ``batches[i]`` and ``rngs[i]``,
  and each metric comes back as (k,).

  The steps run as a rolled loop (``lax.scan``), so compiling takes as long as for one step
  whatever k is. One call maps XLA's per-call temporaries once for k steps (on CPU each call
  faults them in afresh): on a 2-core Zen 5 CPU, k = 16 took the plain stage-1 step from 170
  to 115 ms (benchmarks/NOTES.md item 22). On CPU the stage-1 model writes its gradient
  convolutions in the one layout XLA:CPU's fast kernels take (models/conv.py, ``canonical``):
  XLA:CPU rewrites other layouts only outside loops, and ran the rolled loop ~40x slower
  before.
  """
  def steps(state, batches, rngs):
    stacked = jax.tree.map(lambda *a: jnp.stack(a), *batches)
    return jax.lax.scan(lambda s, xs: train_step(s, *xs), state, (stacked, rngs))

  rep = sharding.replicated(mesh)
  batch_sh = sharding.data_sharding(mesh)
  state_sh = sharding.state_shardings(state, mesh)
  return jax.jit(steps, in_shardings=(state_sh, (batch_sh,) * k, rep),
                 out_shardings=(state_sh, rep), donate_argnums=(0,),
                 compiler_options=step_compiler_options(mesh, stage, ssl, mixed) or None)


def _calls(start: int, end: int, k: int, checkpoint_every: int):
  """Yields (first, last) step ranges, [first, last), of at most k steps each, covering
  [start, end) and ending at every multiple of ``checkpoint_every``."""
  step = start
  while step < end:
    stop = min(end, step + k, (step // checkpoint_every + 1) * checkpoint_every)
    yield step, stop
    step = stop


def _nonfinite_terms(metrics: dict[str, float]) -> list[str]:
  return [k for k, v in metrics.items() if not math.isfinite(v)]


def with_finite_guard(train_step: Callable, skip_nonfinite: bool) -> Callable:
  """Adds ``metrics['finite']`` (1 when every metric is finite) to a train step; with
  ``skip_nonfinite`` a non-finite step leaves the state unchanged except its step counter."""

  def guarded(state, batch, rng):
    new_state, metrics = train_step(state, batch, rng)
    finite = jnp.all(jnp.stack([jnp.all(jnp.isfinite(v)) for v in metrics.values()]))
    if skip_nonfinite:
      kept = jax.tree.map(lambda new, old: jnp.where(finite, new, old), new_state, state)
      new_state = kept.replace(step=new_state.step)
    metrics = dict(metrics, finite=finite.astype(jnp.float32))
    return new_state, metrics

  return guarded


def run(lc: LoopConfig, state, train_step: Callable, stream: BatchStream, mesh,
        checkpointer: ckpt_lib.Checkpointer | None = None):
  """Trains ``state`` to ``lc.num_steps`` (resuming if possible); returns the final state.

  ``train_step`` must return ``metrics`` as a dict of scalars; ``loss`` is required. Every
  step's metrics are checked for NaN/inf: the run stops with :class:`NonFiniteError` naming
  the step and the terms (the checkpoints written so far are kept), or, with
  ``lc.skip_nonfinite``, the step's update is dropped and counted in ``skipped_steps``.
  """
  ckpt = checkpointer or ckpt_lib.Checkpointer(
      f"{lc.workdir}/checkpoints/{lc.stage}", lc.keep_checkpoints)
  ckpt.check_config(lc.identity, lc.allow_config_change)
  state = sharding.place_state(state, mesh)
  if ckpt.latest_step() is not None:
    _, state = ckpt.restore(state)
  start = int(state.step)
  if start >= lc.num_steps:
    print(f"[{lc.stage}] complete at step {start}, skipping", flush=True)
    return state
  guarded = with_finite_guard(train_step, lc.skip_nonfinite)
  k = max(1, int(lc.steps_per_call))
  compiled = {}  # steps per call -> compiled function

  def run_steps(state, first, last, batches):
    n = last - first
    rngs = [jax.random.fold_in(base_key, s) for s in range(first, last)]
    if n not in compiled:
      kw = dict(stage=lc.stage, ssl=lc.ssl, mixed=lc.mixed)
      compiled[n] = (compile_step(guarded, mesh, state, **kw) if k == 1
                     else compile_steps(guarded, mesh, state, n, **kw))
    if k == 1:
      state, metrics = compiled[n](state, batches[0], rngs[0])
      return state, [metrics]
    state, metrics = compiled[n](state, tuple(batches), jnp.stack(rngs))
    metrics = jax.device_get(metrics)  # one transfer per call, then each step's row on host
    return state, [jax.tree.map(lambda m, i=i: m[i], metrics) for i in range(n)]

  is_main = jax.process_index() == 0
  writer = metrics_writer.MetricsWriter(lc.workdir, lc.stage, enabled=is_main)
  progress = metrics_writer.Progress(lc.stage, lc.num_steps, start, enabled=is_main)
  base_key = jax.random.key(lc.seed)
  skipped = 0
  try:
    with _SignalFlag() as flag:
      batches_iter = stream.iterate(start, lc.num_steps)
      for first, last in _calls(start, lc.num_steps, k, lc.checkpoint_every):
        batches = [next(batches_iter)[1] for _ in range(first, last)]
        state, step_metrics = run_steps(state, first, last, batches)
        for done, metrics in enumerate(step_metrics, start=first + 1):
          if not float(metrics["finite"]):
            bad = _nonfinite_terms(host_metrics(metrics))
            if not lc.skip_nonfinite:
              raise NonFiniteError(
                  f"{lc.stage}: non-finite value at step {done} in {', '.join(bad)}; the last "
                  f"good checkpoint (step {ckpt.latest_step()}) is kept. Lower the learning "
                  "rate or pass --config.skip_nonfinite=True to skip such batches")
            skipped += 1
            logging.warning("%s step %d: non-finite %s; batch skipped", lc.stage, done, bad)
          if done % lc.log_every == 0 or done == lc.num_steps:
            host = host_metrics(metrics)
            del host["finite"]
            if lc.skip_nonfinite:
              host["skipped_steps"] = float(skipped)
            writer.write(done, host)
            progress.update(done, {key: host[key] for key in list(host)[:6]})
        done = last
        # Every process must stop at the same step (saving is collective).
        stop = distributed.any_process(flag.name is not None)
        if done % lc.checkpoint_every == 0 or done == lc.num_steps or stop:
          ckpt.save(done, state)
        if stop:
          raise Interrupted(lc.stage, done, flag.name or "SIGTERM (on another process)")
  finally:
    progress.close()
    writer.close()
  return state


def host_metrics(metrics) -> dict[str, float]:
  """Device scalars to Python floats."""
  return {k: float(np.asarray(v)) for k, v in jax.device_get(metrics).items()}
