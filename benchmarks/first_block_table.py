"""Stage 2 with and without ``MaskGITTransformer.first_block_table`` (the first block's norm
and query/key/value projections once per distinct input row, gathered), built in one process
and timed in alternating rounds.

  python -m benchmarks.first_block_table sample,train 256 12
  # paths, batch (series sampled, or the train step's batch), timed rounds

Paths: ``sample`` (T = 10, guidance 1) and ``train`` for one prior over 40 tokens (the
benchmark table's rows), ``sample_lfhf`` and ``train_lfhf`` for the default LF and HF priors.
Prints, per path, whether the two forms' outputs are identical, and the median / min time of
each form (benchmarks/NOTES.md item 16 quotes the output).
"""
import sys

import jax
import jax.numpy as jnp
import numpy as np

from benchmarks import common, stage2_bench
from tsgen_jax import host_memory, sharding, stage2, trainer

PATHS = ("sample", "train", "sample_lfhf", "train_lfhf")
FORMS = {"direct": False, "table": None}  # None: the default (the table where it is smaller)


def _with_table(priors: dict, form) -> dict:
  return {k: m.clone(first_block_table=form) for k, m in priors.items()}


def sample_calls(batch: int, lfhf: bool) -> tuple[dict, bool]:
  """({form: blocking call of the sampler}, whether both forms sample the same series)."""
  cfg, s1_model, s1_vars, specs, priors, state, _ = stage2_bench._setup(256, lfhf)
  cfg.sample.num_steps, cfg.sample.guidance_scale = 10, 1.0
  ids = jnp.asarray(np.arange(batch) % stage2_bench.NUM_CLASSES, jnp.int32)
  args = (state.params, s1_vars, jax.random.key(3), ids)
  calls, outs = {}, {}
  for form, table in FORMS.items():
    sampler = stage2.make_sampler(_with_table(priors, table), specs, s1_model, cfg.sample,
                                  stage2_bench.NUM_CLASSES).lower(*args).compile()
    outs[form] = [np.asarray(x) for x in jax.tree.leaves(sampler(*args))]
    calls[form] = lambda s=sampler: jax.block_until_ready(s(*args))
  same = all(np.array_equal(a, b) for a, b in zip(*outs.values()))
  return calls, same


def train_calls(batch: int, lfhf: bool) -> tuple[dict, bool]:
  """({form: blocking call of the train step on carried state}, whether both forms' first
  steps give the same loss)."""
  cfg, _, _, specs, priors, state, tx = stage2_bench._setup(batch, lfhf)
  mesh = sharding.make_mesh()
  b = stage2_bench.token_batch(specs, batch, mesh)
  calls, losses = {}, {}
  for form, table in FORMS.items():
    step = stage2.make_train_step(_with_table(priors, table), specs, cfg.stage2,
                                  stage2_bench.NUM_CLASSES, tx)
    fresh = lambda: sharding.replicate_tree(jax.tree.map(jnp.copy, state), mesh)
    jitted = trainer.compile_step(step, mesh, fresh(), stage="stage2")
    compiled = common.compile_fn(jitted, fresh(), b, jax.random.key(2))[0]
    losses[form] = float(compiled(fresh(), b, jax.random.key(2))[1]["loss"])
    calls[form] = common.stateful_call(compiled, fresh(), b, jax.random.key(2))
    calls[form]()  # warm-up
  return calls, len(set(losses.values())) == 1


if __name__ == "__main__":
  host_memory.start()  # TSGEN_MALLOC=hugepages: restart once with huge-page malloc
  paths, batch, rounds = common.ab_args(sys.argv, __doc__, "benchmarks.first_block_table",
                                        PATHS)
  for p in paths:
    make = sample_calls if p.startswith("sample") else train_calls
    calls, same = make(batch, p.endswith("_lfhf"))
    print(f"{p} B={batch}: the two forms' outputs are {'identical' if same else 'different'}")
    common.print_times(f"{p} B={batch}", common.alternate_calls(calls, rounds))
