"""MaskGIT iterative decoding with classifier-free guidance (REFERENCE.md, "Stage 2").

Decoding starts from a fully masked sequence and runs ``T`` steps as one ``jax.lax.fori_loop``.
At step ``t`` (0-based) every position is sampled from the (guided) logits, tokens fixed at
earlier steps are kept, and the ``mask_schedule(t)`` least confident newly sampled positions
are masked again, where

    confidence = log p(sampled) + choice_temperature * (1 - (t + 1) / T) * Gumbel noise

and previously fixed positions have confidence +inf (so they are never re-masked). The number
of masked tokens after step ``t`` is exactly ``mask_schedule(t, T, N)``, reaching 0 at the last
step.

:func:`iterative_decode` is jit-compilable. Its Python-level arguments (``logits_fn``,
``num_tokens``, ``mask_id``, ``num_steps``, ``schedule``, ``guidance_scale``,
``null_class_id``, ``return_history``) must be static; ``key``, ``class_ids`` and
``choice_temperature`` may be traced. The usual pattern closes over the parameters inside a
jitted function, so they stay traced rather than baked in as constants::

  @functools.partial(jax.jit, static_argnames=("num_steps",))
  def sample(params, key, class_ids, num_steps=10):
    fn = model_logits_fn(model, params)
    return iterative_decode(fn, key, class_ids, model.num_tokens, model.mask_id,
                            num_steps=num_steps, null_class_id=model.null_class_id,
                            guidance_scale=1.0)
"""

from __future__ import annotations

import numbers
from typing import Callable

import jax
import jax.numpy as jnp
import numpy as np

from tsgen_jax.models.maskgit import mask_ratio_schedule

LogitsFn = Callable[[jax.Array, jax.Array], jax.Array]

# Arguments of `iterative_decode` that must be static under `jax.jit`.
DECODE_STATIC_ARGNAMES = ("logits_fn", "num_tokens", "mask_id", "num_steps", "schedule",
                          "guidance_scale", "null_class_id", "return_history")


def mask_schedule_table(num_steps: int, num_tokens: int, kind: str = "cosine") -> np.ndarray:
  """Number of tokens still masked after each decoding step.

  ``floor(N * ratio((t + 1) / T))`` with ``ratio`` = :func:`mask_ratio_schedule`, at least 1
  for ``t < T - 1`` and exactly 0 for ``t = T - 1``. Computed in float64 NumPy, so it is exact
  for the linear and square schedules.

  Returns:
    int32 NumPy array (T,), non-increasing.
  """
  if num_steps < 1:
    raise ValueError(f"num_steps must be >= 1, got {num_steps}")
  t = np.arange(num_steps)
  ratio = mask_ratio_schedule((t + 1) / num_steps, kind)
  # The 1e-9 guards exact products such as 40 * cos(pi / 3) against float64 round-off.
  counts = np.clip(np.floor(num_tokens * ratio + 1e-9), 1, num_tokens)
  counts[-1] = 0
  return counts.astype(np.int32)


def mask_schedule(t, num_steps: int, num_tokens: int, kind: str = "cosine"):
  """Number of tokens still masked after step ``t`` (0-based) of ``num_steps``.

  Args:
    t: int step, a Python/NumPy int or a (traced) int array of any shape.
    num_steps: T (static).
    num_tokens: N (static).
    kind: 'cosine' | 'linear' | 'square' (static).

  Returns:
    ``floor(N * ratio((t + 1) / T))``, at least 1 while ``t < T - 1``, 0 at ``t = T - 1``;
    an int32 array shaped like ``t`` (NumPy for NumPy input, JAX otherwise).
  """
  table = mask_schedule_table(num_steps, num_tokens, kind)
  if isinstance(t, jax.Array):
    return jnp.asarray(table)[t]
  return table[np.asarray(t)]


def guided_logits(cond: jax.Array, null: jax.Array, scale) -> jax.Array:
  """Classifier-free guidance: ``null + scale * (cond - null)``; any matching shapes.

  ``scale = 0`` gives the unconditional logits, ``scale = 1`` the conditional ones.
  """
  return null + scale * (cond - null)


def mask_by_confidence(confidence: jax.Array, mask_len) -> jax.Array:
  """Marks the ``mask_len`` lowest-confidence positions of each row.

  Args:
    confidence: float (B, N); +inf entries are only chosen if ``mask_len`` exceeds the
      number of finite ones.
    mask_len: int scalar or (B,) array.

  Returns:
    bool (B, N) with exactly ``mask_len`` True entries per row (ties broken by position).
  """
  rank = jnp.argsort(jnp.argsort(confidence, axis=-1), axis=-1)
  mask_len = jnp.asarray(mask_len, jnp.int32)
  return rank < jnp.reshape(mask_len, mask_len.shape + (1,))


def _is_static_one(x) -> bool:
  return isinstance(x, numbers.Real) and float(x) == 1.0


def iterative_decode(logits_fn: LogitsFn,
                     key: jax.Array,
                     class_ids: jax.Array,
                     num_tokens: int,
                     mask_id: int,
                     num_steps: int = 10,
                     choice_temperature=4.0,
                     schedule: str = "cosine",
                     guidance_scale=1.0,
                     null_class_id: int | None = None,
                     return_history: bool = False):
  """MaskGIT parallel decoding of ``num_tokens`` tokens per sample in ``num_steps`` steps.

  Args:
    logits_fn: ``(tokens (B', N) int32, class_ids (B',) int32) -> logits (B', N, K)``, e.g.
      :func:`model_logits_fn`. Called once per traced step: with batch ``B`` without
      guidance, with batch ``2B`` (conditional rows then null rows) with guidance.
    key: PRNG key; the result is a deterministic function of it.
    class_ids: int (B,) class ids (the null id for unconditional samples).
    num_tokens: N.
    mask_id: the [MASK] token id (the model's ``codebook_size``).
    num_steps: T; the loop is one ``lax.fori_loop`` over T steps.
    choice_temperature: scale of the Gumbel noise added to the confidences, annealed
      linearly to 0 over the steps; may be traced.
    schedule: 'cosine' | 'linear' | 'square' (see :func:`mask_schedule`).
    guidance_scale: classifier-free guidance scale s. The unconditional pass is skipped
      (never computed) when s is a Python number equal to 1 or ``null_class_id`` is None.
    null_class_id: the model's null class id; None for a model without classes.
    return_history: also return the tokens after every step (``mask_id`` where masked).

  Returns:
    tokens: int32 (B, N) in [0, K); with ``return_history`` a pair
    ``(tokens, history int32 (T, B, N))``.
  """
  class_ids = jnp.asarray(class_ids, jnp.int32)
  batch = class_ids.shape[0]
  counts = jnp.asarray(mask_schedule_table(num_steps, num_tokens, schedule))

  if null_class_id is None or _is_static_one(guidance_scale):
    def step_logits(tokens):
      return logits_fn(tokens, class_ids)
  else:
    both_ids = jnp.concatenate([class_ids, jnp.full_like(class_ids, null_class_id)])

    def step_logits(tokens):
      out = logits_fn(jnp.concatenate([tokens, tokens], axis=0), both_ids)
      return guided_logits(out[:batch], out[batch:], guidance_scale)

  def body(t, carry):
    tokens, history = carry
    sample_key, gumbel_key = jax.random.split(jax.random.fold_in(key, t))
    logits = step_logits(tokens).astype(jnp.float32)  # (B, N, K)
    unknown = tokens == mask_id
    sampled = jax.random.categorical(sample_key, logits, axis=-1).astype(jnp.int32)
    sampled = jnp.where(unknown, sampled, tokens)
    log_probs = jax.nn.log_softmax(logits, axis=-1)
    log_p = jnp.take_along_axis(log_probs, sampled[..., None], axis=-1)[..., 0]
    temperature = choice_temperature * (1.0 - (t + 1) / num_steps)
    confidence = log_p + temperature * jax.random.gumbel(gumbel_key, log_p.shape)
    confidence = jnp.where(unknown, confidence, jnp.inf)
    mask_len = jnp.minimum(counts[t], jnp.sum(unknown, axis=-1))  # (B,)
    remask = mask_by_confidence(confidence, mask_len)
    tokens = jnp.where(remask, jnp.int32(mask_id), sampled)
    if history is not None:
      history = history.at[t].set(tokens)
    return tokens, history

  tokens = jnp.full((batch, num_tokens), mask_id, jnp.int32)
  history = (jnp.zeros((num_steps, batch, num_tokens), jnp.int32)
             if return_history else None)
  tokens, history = jax.lax.fori_loop(0, num_steps, body, (tokens, history))
  return (tokens, history) if return_history else tokens


def model_logits_fn(model, variables) -> LogitsFn:
  """Closure ``(tokens (B, N), class_ids (B,)) -> logits (B, N, K)`` for a MaskGIT model.

  Applies ``model`` (e.g. :class:`~tsgen_jax.models.maskgit.MaskGITTransformer`) with
  ``variables`` in inference mode (``train=False``).
  """
  def fn(tokens, class_ids):
    return model.apply(variables, tokens, class_ids, train=False)
  return fn


__all__ = [
    "DECODE_STATIC_ARGNAMES", "mask_schedule_table", "mask_schedule", "guided_logits",
    "mask_by_confidence", "iterative_decode", "model_logits_fn",
]
