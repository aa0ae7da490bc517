"""Stage-2 MaskGIT train step and sampling (iterative decode + stage-1 decoding, one jit),
through ``tsgen_jax.stage2`` (``make_train_step`` / ``make_sampler``)."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from benchmarks import common
from tsgen_jax import sampling, sharding, stage2, trainer
from tsgen_jax.config import base_config
from tsgen_jax.models import stage1 as stage1_model
from tsgen_jax import stage1 as stage1_lib

NUM_CLASSES = 3
# The training loop's default steps per call (rows stage2_train_b256_k{LOOP_K}).
LOOP_K = int(base_config().stage2.steps_per_call)


def _setup(batch: int, lfhf: bool = False, matmul_dtype: str = "float32"):
  cfg = base_config()
  cfg.stage2.matmul_dtype = matmul_dtype
  # False: one prior over 40 tokens, as the NC-VQVAE reference; True: the default LF and HF
  # priors (8 tokens, then 32 tokens after the 8 LF ones).
  cfg.stage1.lfhf = lfhf
  cfg.stage2.batch_size = batch
  s1_model = stage1_model.from_config(cfg, 1, cfg.dataset.length)
  s1_vars = stage1_lib.init_variables(s1_model, jax.random.key(0), 1, cfg.dataset.length, False)
  specs = stage2.prior_specs(s1_model)
  priors = stage2.build_priors(cfg, s1_model, NUM_CLASSES)
  codebooks = s1_model.apply(s1_vars, method="codebooks")
  state, tx = stage2.init_state(cfg, priors, specs, codebooks, jax.random.key(1))
  return cfg, s1_model, s1_vars, specs, priors, state, tx


def build_train(batch: int, lfhf: bool = False, matmul_dtype: str = "float32",
                steps_per_call: int = 1):
  """(jitted step, state, (token batch, rng)) for the stage-2 train step at ``batch``
  (``matmul_dtype``: ``stage2.matmul_dtype``). ``steps_per_call`` > 1: ``trainer.
  compile_steps`` and its arguments (``common.loop_args``), as the training loop runs it."""
  cfg, _, _, specs, priors, state, tx = _setup(batch, lfhf, matmul_dtype)
  step = stage2.make_train_step(priors, specs, cfg.stage2, NUM_CLASSES, tx)
  mesh = sharding.make_mesh()
  state = sharding.replicate_tree(state, mesh)
  kw = dict(stage="stage2", mixed=cfg.stage2.matmul_dtype == "bfloat16")
  tokens, rng = token_batch(specs, batch, mesh), jax.random.key(2)
  if steps_per_call > 1:
    jitted = trainer.compile_steps(step, mesh, state, steps_per_call, **kw)
    return jitted, state, common.loop_args(tokens, rng, steps_per_call)
  return trainer.compile_step(step, mesh, state, **kw), state, (tokens, rng)


def bench_train(batch: int, peak_gflops=None, iters=common.DEFAULT_ITERS, lfhf: bool = False,
                matmul_dtype: str = "float32"):
  jitted, state, args = build_train(batch, lfhf, matmul_dtype)
  name = f"stage2_train_{'lfhf_' if lfhf else ''}b{batch}{_suffix(matmul_dtype)}"
  return common.bench_stateful(name, jitted, state, args, iters, peak_gflops)


def bench_train_loop(batch: int, k: int, peak_gflops=None, iters=common.DEFAULT_ITERS):
  """Row ``stage2_train_b{batch}_k{k}``: the prior's step as the training loop runs it with
  ``stage2.steps_per_call = k`` (k steps per call); times per step (call / k)."""
  jitted, state, args = build_train(batch, steps_per_call=k)
  return common.bench_steps(f"stage2_train_b{batch}_k{k}", jitted, state, args, k, iters,
                            peak_gflops)


def token_batch(specs, batch: int, mesh) -> dict:
  """A fixed random stage-2 batch on ``mesh``'s data axis: tokens "x" int32 (batch, tokens of
  every prior) in [0, 32), labels "y" int32 (batch,)."""
  n_tok = sum(s.num_tokens for s in specs)
  rng = np.random.default_rng(0)
  b = {"x": jnp.asarray(rng.integers(0, 32, (batch, n_tok)), jnp.int32),
       "y": jnp.asarray(rng.integers(0, NUM_CLASSES, (batch,)), jnp.int32)}
  return jax.device_put(b, sharding.data_sharding(mesh))


def _suffix(matmul_dtype: str) -> str:
  return "" if matmul_dtype == "float32" else "_bf16"


def bench_sample(num: int, steps: int, scale: float, peak_gflops=None,
                 iters=common.DEFAULT_ITERS, matmul_dtype: str = "float32"):
  """Samples ``num`` series as the pipeline does (``stage2.generate``: sampler calls of
  ``sample.batch_size`` class ids each, the default config's) and times the whole."""
  cfg, s1_model, s1_vars, specs, priors, state, _ = _setup(256, matmul_dtype=matmul_dtype)
  cfg.sample.num_steps = steps
  cfg.sample.guidance_scale = scale
  chunk = min(int(cfg.sample.batch_size), num)
  sampler = stage2.make_sampler(priors, specs, s1_model, cfg.sample, NUM_CLASSES)
  ids = np.arange(num) % NUM_CLASSES
  name = f"sample_{num}_t{steps}_s{scale:g}{_suffix(matmul_dtype)}"
  # XLA's cost analysis counts a fori_loop body once, so count the sampler's flops from its
  # parts: the transformer passes it makes (see sampling.iterative_decode) plus the decoder.
  calls, first = -(-num // chunk), jnp.asarray(ids[:chunk], jnp.int32)
  flops = calls * _sampler_flops(cfg, s1_model, s1_vars, specs, priors, state.params, first)
  compiled, compile_s, _, mem = common.compile_fn(sampler, state.params, s1_vars,
                                                  jax.random.key(3), first)
  times = common.time_calls(lambda: stage2.generate(compiled, state.params, s1_vars, ids, chunk,
                                                    jax.random.key(3)), iters)
  r = common.row(name, times, flops, compile_s, mem, peak_gflops,
                 gflop_note=f"{calls} sampler calls of {chunk} (sample.batch_size): T "
                            "transformer passes per prior (each at its step's positions) + "
                            "decoder")
  r["series_per_s"] = round(num / (r["median_ms"] / 1e3), 1)
  return r


def _flops(fn, *args) -> float:
  return common.compile_fn(jax.jit(fn), *args)[2] or 0.0


def _sampler_flops(cfg, s1_model, s1_vars, specs, priors, params, ids) -> float:
  """Flops of one sampler call: per prior, T forward passes at the loop batch (2B with
  guidance), the first one on (num_classes + 1) rows for priors without a prefix, and with
  ``sample.masked_logits_segments`` each loop's passes at its number of positions (the
  segments ``sampling.iterative_decode`` runs)."""
  b, t = ids.shape[0], int(cfg.sample.num_steps)
  guided = float(cfg.sample.guidance_scale) != 1.0
  segments = int(cfg.sample.masked_logits_segments)
  total = 0.0
  for s in specs:
    m = priors[s.branch]
    n_prefix = next((q.num_tokens for q in specs if q.branch == s.prefix), 0)

    def fwd(p, tok, cls, pos, m=m, s=s, n_prefix=n_prefix):
      prefix = jnp.zeros((tok.shape[0], n_prefix), jnp.int32) if s.prefix else None
      return m.apply({"params": p}, tok, cls, train=False, prefix=prefix, positions=pos)

    def cost(n, cap=None, fwd=fwd, s=s):
      pos = None if cap is None or cap >= s.num_tokens else jnp.zeros((n, cap), jnp.int32)
      return _flops(fwd, params[s.branch], jnp.zeros((n, s.num_tokens), jnp.int32),
                    jnp.zeros((n,), jnp.int32), pos)

    start = 1 if (not s.prefix and NUM_CLASSES + 1 < b) else 0
    if start:
      total += cost(NUM_CLASSES + 1)
    for a, z, cap in sampling.decode_loops(t, s.num_tokens, cfg.sample.mask_schedule, start,
                                           segments):
      total += (z - a) * cost(2 * b if guided else b, cap)
  grids = {s.branch: jnp.zeros((b,) + tuple(s.grid), jnp.int32) for s in specs}
  total += _flops(lambda v, g: s1_model.apply(v, g, method="decode_tokens"), s1_vars, grids)
  return total


def rows(peak_gflops, only=None):
  out = []
  for b in (256, 32):
    if not only or f"stage2_train_b{b}" in only:
      out.append(bench_train(b, peak_gflops))
      print(out[-1], flush=True)
  if not only or f"stage2_train_b256_k{LOOP_K}" in only:  # as the training loop runs it
    out.append(bench_train_loop(256, LOOP_K, peak_gflops))
    print(out[-1], flush=True)
  if not only or "stage2_train_lfhf_b128" in only:  # the default config's step
    out.append(bench_train(128, peak_gflops, lfhf=True))
    print(out[-1], flush=True)
  for s in (1.0, 2.0):
    if not only or f"sample_256_t10_s{s:g}" in only:
      out.append(bench_sample(256, 10, s, peak_gflops))
      print(out[-1], flush=True)
  # stage2.matmul_dtype='bfloat16' (mixed precision, benchmarks/NOTES.md item 21)
  if not only or "stage2_train_b256_bf16" in only:
    out.append(bench_train(256, peak_gflops, matmul_dtype="bfloat16"))
    print(out[-1], flush=True)
  if not only or "sample_256_t10_s1_bf16" in only:
    out.append(bench_sample(256, 10, 1.0, peak_gflops, matmul_dtype="bfloat16"))
    print(out[-1], flush=True)
  return out
