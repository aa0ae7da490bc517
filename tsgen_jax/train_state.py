"""Train state shared by both stages, and the optimiser."""

from __future__ import annotations

from typing import Any

import flax.struct
import jax
import jax.numpy as jnp
import optax


@flax.struct.dataclass
class TrainState:
  """Everything a train step reads and writes.

  Attributes:
    step: int32 scalar, number of steps taken.
    params: trainable parameters.
    model_state: non-trained variable collections (BatchNorm statistics, EMA codebook, ...).
    opt_state: optax state.
  """
  step: jax.Array
  params: Any
  model_state: Any
  opt_state: Any


def make_optimizer(lr: float, weight_decay: float, num_steps: int,
                   warmup_steps: int = 0) -> optax.GradientTransformation:
  """AdamW with (optional linear warm-up then) cosine decay to 0 over ``num_steps``."""
  if warmup_steps > 0:
    schedule = optax.warmup_cosine_decay_schedule(0.0, lr, warmup_steps, max(num_steps, 1))
  else:
    schedule = optax.cosine_decay_schedule(lr, max(num_steps, 1))
  return optax.adamw(schedule, weight_decay=weight_decay)


def global_norm(tree) -> jax.Array:
  """L2 norm of all leaves of ``tree`` together: a float32 scalar (``optax.tree.norm``).

  Computed behind an optimisation barrier, so that XLA cannot merge its ``g * g`` with the
  identical ``g ** 2`` of Adam's second moment. Merged, that square has two users (the norm's
  reduction and Adam's update), and XLA:CPU writes it out as a separate array: one more
  64 MB write and read per 4096 x 4096 projector kernel in the SSL steps (14-32 ms per step
  in an A/B, benchmarks/NOTES.md item 10). Apart, each reduction reads its gradient once.
  The SSL stage-1 steps use it (``stage1.grad_norm_fn``); the single-view stage-1 steps and
  stage 2 keep ``optax.tree.norm``, whose kernels are small enough to stay in cache (there the
  barrier measured 0-3 % slower on the Xeon, 6-9 % for the plain step on the AMD EPYC).
  """
  leaves = jax.lax.optimization_barrier(jax.tree.leaves(tree))
  total = sum((jnp.sum(jnp.square(x.astype(jnp.float32))) for x in leaves),
              jnp.zeros((), jnp.float32))
  return jnp.sqrt(total)


def create(params, model_state, tx) -> TrainState:
  """A fresh state at step 0."""
  return TrainState(step=jnp.zeros((), jnp.int32), params=params, model_state=model_state,
                    opt_state=tx.init(params))
