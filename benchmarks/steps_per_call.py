"""Train steps per XLA call: one step per call against K steps in one jitted call
(``trainer.compile_steps``, as the training loop runs ``stage1.steps_per_call`` /
``stage2.steps_per_call``), for one or more K, alternated (benchmarks/NOTES.md items 21, 22).

  python -m benchmarks.steps_per_call plain 4,10,20 10    # step, K list, timed rounds
  python -m benchmarks.steps_per_call stage2 10 10

Steps: a stage1_bench variant at B = 128 (L = 128) or ``stage2`` (the prior's step, B = 256).
The K-step call is a rolled ``lax.scan`` of the step, here over K copies of one batch.
Prints the compile time and the median time per step of each form. XLA:CPU maps a call's
temporaries afresh each call (benchmarks/NOTES.md, "Investigated": page faults), so K steps
per call pay that once.
"""
import sys

import jax
import jax.numpy as jnp
import numpy as np

from benchmarks import common, stage1_bench, stage2_bench
from tsgen_jax import host_memory, sharding, stage1, stage2, trainer
from tsgen_jax import run as run_lib
from tsgen_jax.data import load_dataset


def _step_state_batch(name: str):
  """(pure train step, replicated state, batch, mesh, compile_step keywords) for ``name``."""
  mesh = sharding.make_mesh()
  if name == "stage2":
    cfg, _, _, specs, priors, state, tx = stage2_bench._setup(256)
    step = stage2.make_train_step(priors, specs, cfg.stage2, stage2_bench.NUM_CLASSES, tx)
    batch = stage2_bench.token_batch(specs, 256, mesh)
    kw = {"stage": "stage2"}
  else:
    cfg = stage1_bench.make_config(name, 128, 128)
    model, state, tx = run_lib.stage1_setup(cfg, load_dataset(cfg.dataset, cfg.stft.n_fft))
    step = stage1.make_train_step(model, cfg.stage1, tx)
    batch = jax.device_put(common.random_batch(128, 1, 128), sharding.data_sharding(mesh))
    kw = {"ssl": cfg.stage1.ssl.method != "none"}
  return step, sharding.replicate_tree(state, mesh), batch, mesh, kw


def calls(name: str, ks: list[int]) -> dict:
  """{'1': call, 'K': call, ...}: ``trainer.compile_step`` (one step per call) and
  ``trainer.compile_steps`` for each K (here K copies of one batch), as the training loop
  compiles them with ``steps_per_call`` 1 and K. Prints each one's compile time."""
  step, state, batch, mesh, kw = _step_state_batch(name)
  rng = jax.random.key(1)
  forms = {"1": (trainer.compile_step(step, mesh, state, **kw), (batch, rng))}
  for k in ks:
    forms[str(k)] = (trainer.compile_steps(step, mesh, state, k, **kw),
                     common.loop_args(batch, rng, k))
  out = {}
  for label, (jitted, args) in forms.items():
    s = jax.tree.map(jnp.copy, state)
    compiled, compile_s, _, _ = common.compile_fn(jitted, s, *args)
    print(f"{name}, {label} step(s) per call: compiled in {compile_s:.1f} s", flush=True)
    out[label] = common.stateful_call(compiled, s, *args)
    out[label]()
  return out


if __name__ == "__main__":
  host_memory.start()  # TSGEN_MALLOC=hugepages: restart once with huge-page malloc
  if len(sys.argv) != 4:
    sys.exit(__doc__)
  name, rounds = sys.argv[1], int(sys.argv[3])
  ks = [int(k) for k in sys.argv[2].split(",") if int(k) != 1]
  times = common.alternate_calls(calls(name, ks), rounds)
  for label, t in times.items():
    print(f"{name}, {label} step(s) per call: {np.median(t) * 1e3 / int(label):.1f} ms per step "
          f"(min {np.min(t) * 1e3 / int(label):.1f}, {len(t)} calls)")
