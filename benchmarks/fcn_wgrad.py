"""The evaluator FCN's training step (batch 256, L = 128, as the CAS FCN trains) with its
convolutions' weight gradients whole or in batch slices (``FCN.wgrad_chunk``), built in one
process and timed in alternating rounds.

  python -m benchmarks.fcn_wgrad 0,16,8 15
  # slice sizes (0 = whole), timed rounds

Prints the median / min step time and GFLOP/s (XLA's cost analysis) per slice size
(benchmarks/NOTES.md item 18 quotes the output).
"""
import sys

import jax
import jax.numpy as jnp
import numpy as np
import optax

from benchmarks import common
from tsgen_jax import host_memory
from tsgen_jax.evaluation import fcn as fcn_lib

N, LENGTH, BATCH, CLASSES = 1000, 128, 256, 3


def step_call(chunk: int) -> tuple:
  """(call, flops): ``call()`` runs one training step of FCN(wgrad_chunk=chunk) on carried
  state, on fixed random data; it has run twice already."""
  rng = np.random.default_rng(0)
  xs = jnp.asarray(rng.standard_normal((N, 1, LENGTH)), jnp.float32)
  ys = jnp.asarray(np.arange(N) % CLASSES, jnp.int32)
  idx = jnp.arange(BATCH, dtype=jnp.int32)
  module = fcn_lib.FCN(CLASSES, wgrad_chunk=chunk)
  variables = module.init(jax.random.PRNGKey(0), xs[:1], train=False)
  tx = optax.adam(1e-3)
  state = [variables["params"], variables["batch_stats"], tx.init(variables["params"])]
  compiled, _, flops, _ = common.compile_fn(fcn_lib.make_train_step(module, tx), *state, xs,
                                            ys, idx)

  def call():
    state[:] = jax.block_until_ready(compiled(*state, xs, ys, idx))

  call()
  call()
  return call, flops


if __name__ == "__main__":
  host_memory.start()  # TSGEN_MALLOC=hugepages: restart once with huge-page malloc
  if len(sys.argv) != 3:
    sys.exit(__doc__)
  chunks, rounds = [int(c) for c in sys.argv[1].split(",")], int(sys.argv[2])
  built = {f"wgrad_chunk={c}": step_call(c) for c in chunks}
  times = common.alternate_calls({k: call for k, (call, _) in built.items()}, rounds)
  common.print_times(f"FCN step B={BATCH} L={LENGTH}", times, 0)
  for k, (_, flops) in built.items():
    if flops:
      print(f"{k}: {flops / 1e9:.1f} GFLOP per step, "
            f"{flops / 1e9 / np.median(times[k]):.0f} GFLOP/s at the median", flush=True)
