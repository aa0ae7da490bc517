"""The prior's train step or the sampler with each ``stage2.matmul_dtype``, both built in one
process and timed in alternating rounds (benchmarks/NOTES.md item 21).

  python -m benchmarks.stage2_dtype train 20     # stage-2 train step, B = 256
  python -m benchmarks.stage2_dtype sample 10    # 256 series, T = 10, s = 1 (4 calls of 64)
  python -m benchmarks.stage2_dtype dots 30      # the 2048^3 and the prior's matmul shapes

``dots`` times single jitted matmuls (median of the given number of calls) in float32 and with
bfloat16 operands and float32 results, under XLA's default options and with YNNPACK fusions
for dots only (the float32 stage-2 step's option), and prints GFLOP/s.
"""
import sys

import jax
import jax.numpy as jnp
import numpy as np

from benchmarks import common, stage2_bench
from tsgen_jax import host_memory, stage2

DTYPES = ("float32", "bfloat16")
DOT_SHAPES = ((2048, 2048, 2048), (2624, 256, 256), (10496, 256, 256), (256, 4096, 4096))


def train_calls() -> dict:
  """{dtype: call} for the stage-2 train step at B = 256."""
  calls = {}
  for dtype in DTYPES:
    jitted, state, args = stage2_bench.build_train(256, matmul_dtype=dtype)
    compiled, _, _, _ = common.compile_fn(jitted, state, *args)
    calls[dtype] = common.stateful_call(compiled, state, *args)
    calls[dtype]()
  return calls


def sample_calls() -> dict:
  """{dtype: call} for sampling 256 series as ``benchmarks.run``'s sample_256_t10_s1."""
  calls = {}
  for dtype in DTYPES:
    cfg, s1_model, s1_vars, specs, priors, state, _ = stage2_bench._setup(256, matmul_dtype=dtype)
    sampler = stage2.make_sampler(priors, specs, s1_model, cfg.sample, stage2_bench.NUM_CLASSES)
    ids, chunk = np.arange(256) % stage2_bench.NUM_CLASSES, int(cfg.sample.batch_size)
    def call(sampler=sampler, params=state.params, s1_vars=s1_vars, ids=ids, chunk=chunk):
      jax.block_until_ready(stage2.generate(sampler, params, s1_vars, ids, chunk,
                                            jax.random.key(3)))
    call()
    calls[dtype] = call
  return calls


def dots(iters: int) -> None:
  """Prints GFLOP/s of (M, K) x (K, N) matmuls per dtype and option set."""
  options = {"default": {}, "ynn_dots": {"xla_cpu_experimental_ynn_fusion_type":
                                         "LIBRARY_FUSION_TYPE_DOT"}}
  for m, k, n in DOT_SHAPES:
    a = jax.random.normal(jax.random.key(0), (m, k))
    b = jax.random.normal(jax.random.key(1), (k, n))
    for name, opts in options.items():
      out = []
      for dtype in DTYPES:
        x, y = a.astype(dtype), b.astype(dtype)
        f = jax.jit(lambda x, y: jnp.dot(x, y, preferred_element_type=jnp.float32)).lower(
            x, y).compile(opts or None)
        ms = common.time_calls(lambda f=f, x=x, y=y: jax.block_until_ready(f(x, y)), iters, 3)
        out.append(f"{dtype} {2 * m * k * n / np.median(ms) / 1e6:6.1f}")
      print(f"({m} x {k}) x ({k} x {n}) {name}: " + " | ".join(out) + " GFLOP/s", flush=True)


if __name__ == "__main__":
  host_memory.start()  # TSGEN_MALLOC=hugepages: restart once with huge-page malloc
  if len(sys.argv) != 3 or sys.argv[1] not in ("train", "sample", "dots"):
    sys.exit(__doc__)
  what, rounds = sys.argv[1], int(sys.argv[2])
  if what == "dots":
    dots(rounds)
  else:
    calls = train_calls() if what == "train" else sample_calls()
    common.print_times(f"{what} (matmul_dtype)", common.alternate_calls(calls, rounds))
