"""Shared timing helpers for the benchmark scripts.

Every timed figure is the median of ``iters`` (>= 20) calls after warm-up, each ended with
``block_until_ready``. FLOPs come from XLA's cost analysis of the compiled function.
"""

from __future__ import annotations

import resource
import statistics
import time

import jax
import jax.numpy as jnp
import numpy as np

DEFAULT_ITERS = 20


def maxrss_mb() -> float:
  """Peak resident set size of this process so far, MiB."""
  return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def compile_fn(jitted, *args):
  """(compiled, compile seconds, flops or None, memory dict) of ``jitted`` at ``args``."""
  t0 = time.perf_counter()
  compiled = jitted.lower(*args).compile()
  compile_s = time.perf_counter() - t0
  flops = None
  try:
    ca = compiled.cost_analysis()
    if isinstance(ca, (list, tuple)):
      ca = ca[0] if ca else None
    if ca and "flops" in ca:
      flops = float(ca["flops"])
  except Exception:  # noqa: BLE001 - cost analysis is best effort
    pass
  mem = {}
  try:
    ma = compiled.memory_analysis()
    mem = {"temp_mb": ma.temp_size_in_bytes / 2**20,
           "argument_mb": ma.argument_size_in_bytes / 2**20,
           "output_mb": ma.output_size_in_bytes / 2**20}
    mem["peak_mb"] = mem["temp_mb"] + mem["argument_mb"] + mem["output_mb"]
  except Exception:  # noqa: BLE001
    pass
  return compiled, compile_s, flops, mem


def time_calls(call, iters: int = DEFAULT_ITERS, warmup: int = 2):
  """Times ``call()`` (which must block) ``iters`` times after ``warmup``; list of ms."""
  for _ in range(warmup):
    call()
  out = []
  for _ in range(iters):
    t0 = time.perf_counter()
    call()
    out.append((time.perf_counter() - t0) * 1e3)
  return out


def row(name: str, times_ms, flops=None, compile_s=None, mem=None, peak_gflops=None, **extra):
  """A results.json row from timings and optional compile-time figures."""
  med = statistics.median(times_ms)
  r = {"name": name, "median_ms": round(med, 3), "min_ms": round(min(times_ms), 3),
       "max_ms": round(max(times_ms), 3), "iters": len(times_ms)}
  if flops:
    r["gflop"] = round(flops / 1e9, 4)
    r["gflops_per_s"] = round(flops / 1e9 / (med / 1e3), 2)
    if peak_gflops:
      r["fraction_of_peak"] = round(r["gflops_per_s"] / peak_gflops, 4)
  if compile_s is not None:
    r["compile_s"] = round(compile_s, 2)
  if mem:
    r["peak_mem_mb"] = round(mem.get("peak_mb", 0.0), 1)
  r["maxrss_mb"] = round(maxrss_mb(), 1)
  r.update(extra)
  return r


def alternate_calls(calls: dict, rounds: int) -> dict:
  """{name: call()} (each call must block) -> {name: [seconds per call]}: one call of each,
  in order, per round, so that every call sees the same machine load (an A/B in one
  process)."""
  times = {k: [] for k in calls}
  for _ in range(rounds):
    for k, call in calls.items():
      t = time.perf_counter()
      call()
      times[k].append(time.perf_counter() - t)
  return times


def print_times(label: str, times: dict, decimals: int = 1):
  """Prints one line per entry of {name: [seconds per call]}: median and min in ms."""
  for k, t in times.items():
    print(f"{label} {k}: median {1000 * np.median(t):.{decimals}f} ms "
          f"(min {1000 * min(t):.{decimals}f}, {len(t)} calls)", flush=True)


def ab_args(argv: list, usage: str, prog: str, variants: tuple) -> tuple:
  """(variants, batch, rounds) from ``argv`` = [prog, 'V1,V2', B, ROUNDS] of an A/B script;
  exits with ``usage`` on a wrong count, or naming the first variant not in ``variants``."""
  if len(argv) != 4:
    raise SystemExit(usage)
  chosen, batch, rounds = argv[1].split(","), int(argv[2]), int(argv[3])
  for v in chosen:
    if v not in variants:
      raise SystemExit(f"{prog}: unknown variant {v!r}; one of {', '.join(variants)}")
  return chosen, batch, rounds


def stateful_call(compiled, state, *args):
  """A blocking ``call()`` that runs the donated-state step ``state, out = compiled(state,
  *args)`` once, keeping the new state for the next call."""
  holder = [state]

  def call():
    holder[0], out = compiled(holder[0], *args)
    jax.block_until_ready((holder[0], out))

  return call


def bench_stateful(name, jitted, state, args, iters=DEFAULT_ITERS, peak_gflops=None, **extra):
  """Times a donated-state step ``state, out = f(state, *args)``; returns a row."""
  compiled, compile_s, flops, mem = compile_fn(jitted, state, *args)
  times = time_calls(stateful_call(compiled, state, *args), iters)
  return row(name, times, flops, compile_s, mem, peak_gflops, **extra)


def loop_args(batch, rng, k: int):
  """``trainer.compile_steps``' arguments for k steps over one batch and key: (k copies of
  the batch, a (k,) key array)."""
  return (batch,) * k, jnp.stack([rng] * k)


def bench_steps(name, jitted, state, args, k: int, iters=DEFAULT_ITERS, peak_gflops=None,
                **extra):
  """Times ``trainer.compile_steps``' k-step call ``state, metrics = f(state, *args)`` as
  :func:`bench_stateful` does; returns a row per step: the call's times / k, and GFLOP/s from
  XLA's cost analysis, which counts the loop's body (one step) once. ``steps_per_call``: k."""
  compiled, compile_s, flops, mem = compile_fn(jitted, state, *args)
  times = [t / k for t in time_calls(stateful_call(compiled, state, *args), iters)]
  return row(name, times, flops, compile_s, mem, peak_gflops, steps_per_call=k, **extra)


def bench_pure(name, jitted, args, iters=DEFAULT_ITERS, peak_gflops=None, flops=None, **extra):
  """Times a pure jitted function of ``args``; returns a row. ``flops`` replaces XLA's cost
  analysis (which counts a loop body once) where the caller knows better."""
  compiled, compile_s, xla_flops, mem = compile_fn(jitted, *args)
  flops = xla_flops if flops is None else flops

  def call():
    jax.block_until_ready(compiled(*args))

  times = time_calls(call, iters)
  return row(name, times, flops, compile_s, mem, peak_gflops, **extra)


def matmul_peak(n: int = 2048, iters: int = DEFAULT_ITERS, dtype: str = "float32",
                peak_gflops=None):
  """Row for an n^3 float32 jnp.dot; its gflops_per_s is this machine's reference peak.

  ``dtype='bfloat16'``: bfloat16 operands with float32 accumulation and result (row
  ``matmul_bf16_{n}``, as ``stage2.matmul_dtype='bfloat16'`` computes), its fraction relative
  to ``peak_gflops``."""
  k1, k2 = jax.random.split(jax.random.key(0))
  a = jax.random.normal(k1, (n, n), jnp.float32).astype(dtype)
  b = jax.random.normal(k2, (n, n), jnp.float32).astype(dtype)
  f = jax.jit(lambda a, b: jnp.dot(a, b, preferred_element_type=jnp.float32))
  r = bench_pure(f"matmul_{'f32' if dtype == 'float32' else 'bf16'}_{n}", f, (a, b),
                 iters=iters)
  r["gflop"] = round(2 * n ** 3 / 1e9, 4)
  r["gflops_per_s"] = round(2 * n ** 3 / 1e9 / (r["median_ms"] / 1e3), 2)
  r["fraction_of_peak"] = round(r["gflops_per_s"] / peak_gflops, 4) if peak_gflops else 1.0
  return r


def memory_bandwidth(mb: int = 512, iters: int = DEFAULT_ITERS, in_place: bool = True):
  """Row for ``y = 2 x + 1`` over an ``mb``-MB float32 vector: one read and one write per
  element, ``gb_per_s`` counting both.

  ``in_place=True`` (row ``stream_f32_{mb}mb``) donates x, so y is written over it: this
  machine's memory bandwidth, the reference for memory-bound rows as matmul_f32_2048's GFLOP/s
  is for compute-bound ones. ``in_place=False`` (row ``stream_f32_{mb}mb_new_output``) writes
  y to a buffer allocated for each call, as a step's temporaries are: the kernel's page faults
  and zeroing of fresh memory are then part of the time (2026-12-02: 44 vs 8.3 GB/s).
  """
  n = mb * 2 ** 20 // 4
  x = jnp.ones((n,), jnp.float32)
  stream = lambda v: 2.0 * v + 1.0  # noqa: E731
  if in_place:
    step = jax.jit(lambda v: (stream(v), None), donate_argnums=0)
    r = bench_stateful(f"stream_f32_{mb}mb", step, x, (), iters=iters)
  else:
    r = bench_pure(f"stream_f32_{mb}mb_new_output", jax.jit(stream), (x,), iters=iters)
  r["gb_per_s"] = round(2 * mb * 2 ** 20 / 1e9 / (r["median_ms"] / 1e3), 2)
  return r


def random_batch(b, c, length, seed=0):
  return {"x": jnp.asarray(np.random.default_rng(seed).standard_normal((b, c, length)),
                           jnp.float32),
          "y": jnp.zeros((b,), jnp.int32)}
