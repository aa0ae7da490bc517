"""Supervised FCN (Wang et al. 2017) used as the feature extractor for FID / IS and for CAS.

Conv1d 128/256/128 with kernels 8/5/3 ('SAME'), each followed by BatchNorm and ReLU, global
average pooling to 128-d features, and a Dense layer to K logits. Trained with Adam (lr 1e-3).
Models are saved as a NumPy ``.npz`` of flattened variables plus a JSON metadata string: no
pickle is written or read.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import os
import re
from typing import Any, Callable, Optional

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import traverse_util
from scipy import special

from tsgen_jax.errors import CheckpointError
from tsgen_jax.models.conv import canonical_default, chunked_wgrad_conv, resolve_rows

EVAL_BATCH = 256
# Training steps per compiled call (make_train_steps), as the stage-1/2 loops' steps_per_call.
STEPS_PER_CALL = 10
_META_KEY = "__metadata__"
_FORMAT = "tsgen_jax.fcn/1"


class FCN(nn.Module):
  """Fully convolutional classifier.

  ``__call__(x (B, C, L), train) -> (logits (B, K), features (B, 128))``.

  ``wgrad_chunk``: batch rows per slice of the convolutions' weight gradients
  (:func:`tsgen_jax.models.conv.chunked_wgrad_conv`; 0 = one gradient over the batch). It
  changes neither the variables nor the forward pass, only the order of the weight
  gradients' sums.
  """
  num_classes: int
  widths: tuple[int, ...] = (128, 256, 128)
  kernel_sizes: tuple[int, ...] = (8, 5, 3)
  wgrad_chunk: int = 0

  @nn.compact
  def __call__(self, x, train: bool):
    h = jnp.transpose(x, (0, 2, 1))  # (B, C, L) -> (B, L, C), NWC for flax convs.
    # On CPU the gradient convolutions in NHWC x HWIO form, as XLA:CPU needs inside the
    # training loop's lax.scan (models/conv.py, canonical; benchmarks/NOTES.md item 22).
    conv_fn = chunked_wgrad_conv(self.wgrad_chunk, canonical=canonical_default())
    for width, kernel in zip(self.widths, self.kernel_sizes):
      h = nn.Conv(width, (kernel,), padding="SAME", use_bias=False,
                  conv_general_dilated=conv_fn)(h)
      h = nn.BatchNorm(use_running_average=not train, momentum=0.9)(h)
      h = nn.relu(h)
    features = h.mean(axis=1)
    return nn.Dense(self.num_classes)(features), features


@functools.lru_cache(maxsize=None)
def _eval_fn(num_classes: int):
  """Jitted inference ``(variables, x (B, C, L)) -> (logits (B, K), features (B, 128))``."""
  module = FCN(num_classes)
  return jax.jit(lambda variables, x: module.apply(variables, x, train=False))


@dataclasses.dataclass(frozen=True)
class FCNModel:
  """A trained FCN: variables, the number of classes and the (C, L) it was trained on."""
  params: Any
  batch_stats: Any
  num_classes: int
  input_shape: tuple[int, int] | None = None

  def _outputs(self, x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Logits (N, K) and features (N, 128) of x (N, C, L), in fixed-size padded batches."""
    x = np.asarray(x, np.float32)
    if x.ndim != 3:
      raise ValueError(f"x must be (N, C, L), got shape {x.shape}")
    if self.input_shape is not None and tuple(x.shape[1:]) != tuple(self.input_shape):
      raise ValueError(f"x has (C, L) = {x.shape[1:]}, the FCN was trained on {self.input_shape}")
    fn = _eval_fn(self.num_classes)
    variables = {"params": self.params, "batch_stats": self.batch_stats}
    logits, feats = [], []
    for start in range(0, len(x), EVAL_BATCH):
      chunk = x[start:start + EVAL_BATCH]
      pad = EVAL_BATCH - len(chunk)
      out_l, out_f = fn(variables, np.pad(chunk, ((0, pad), (0, 0), (0, 0))))
      logits.append(np.asarray(out_l)[:len(chunk)])
      feats.append(np.asarray(out_f)[:len(chunk)])
    k = self.num_classes
    return (np.concatenate(logits) if logits else np.zeros((0, k), np.float32),
            np.concatenate(feats) if feats else np.zeros((0, 128), np.float32))

  def logits(self, x: np.ndarray) -> np.ndarray:
    """Logits (N, K) of x (N, C, L)."""
    return self._outputs(x)[0]

  def features(self, x: np.ndarray) -> np.ndarray:
    """Pooled 128-d features (N, 128) of x (N, C, L)."""
    return self._outputs(x)[1]

  def probs(self, x: np.ndarray) -> np.ndarray:
    """Softmax class probabilities (N, K) of x (N, C, L)."""
    return special.softmax(self.logits(x).astype(np.float64), axis=-1)

  def predict(self, x: np.ndarray) -> np.ndarray:
    """Predicted labels (N,) int32 of x (N, C, L)."""
    return self.logits(x).argmax(axis=-1).astype(np.int32)

  def accuracy(self, x: np.ndarray, y: np.ndarray) -> float:
    """Fraction of x (N, C, L) whose predicted label equals y (N,)."""
    return float(np.mean(self.predict(x) == np.asarray(y)))


def _check_labeled(x, y, num_classes) -> tuple[np.ndarray, np.ndarray]:
  x, y = np.asarray(x, np.float32), np.asarray(y)
  if x.ndim != 3 or y.shape != (len(x),) or len(x) == 0:
    raise ValueError(f"need x (N, C, L) and y (N,), got {x.shape} and {y.shape}")
  if y.min() < 0 or y.max() >= num_classes:
    raise ValueError(f"labels must lie in 0..{num_classes - 1}, got {y.min()}..{y.max()}")
  return x, y.astype(np.int32)


def batch_schedule(n: int, steps: int, batch_size: int, rng: np.random.Generator) -> np.ndarray:
  """Index batches (steps, min(batch_size, n)) drawn epoch by epoch from shuffled permutations."""
  batch = min(batch_size, n)
  epochs = -(-steps * batch // n)
  order = np.concatenate([rng.permutation(n) for _ in range(epochs)])
  return order[:steps * batch].reshape(steps, batch).astype(np.int32)


def make_train_step(module: FCN, tx: optax.GradientTransformation) -> Callable:
  """The jitted training step ``(params, batch_stats, opt_state, xs (N, C, L), ys (N,),
  idx (B,) int32) -> (params, batch_stats, opt_state)``: one ``tx`` update on the
  cross-entropy of the rows ``idx`` of xs, ys, BatchNorm in training mode."""

  @jax.jit
  def step(params, batch_stats, opt_state, xs, ys, idx):
    xb, yb = xs[idx], ys[idx]

    def loss_fn(p):
      (logits, _), new_vars = module.apply({"params": p, "batch_stats": batch_stats}, xb,
                                           train=True, mutable=["batch_stats"])
      return optax.softmax_cross_entropy_with_integer_labels(logits, yb).mean(), new_vars

    grads, new_vars = jax.grad(loss_fn, has_aux=True)(params)
    updates, opt_state = tx.update(grads, opt_state, params)
    return optax.apply_updates(params, updates), new_vars["batch_stats"], opt_state

  return step


def make_train_steps(module: FCN, tx: optax.GradientTransformation) -> Callable:
  """:func:`make_train_step` for k steps in one call, a rolled ``lax.scan``: ``(params,
  batch_stats, opt_state, xs, ys, idx (k, B) int32) -> (params, batch_stats, opt_state)``,
  step i on the rows ``idx[i]``. On CPU each call faults XLA's temporaries in afresh, so k
  steps per call are faster per step (benchmarks/NOTES.md item 22); compiled once per k."""
  step = make_train_step(module, tx)

  @jax.jit
  def steps(params, batch_stats, opt_state, xs, ys, idx):
    body = lambda carry, i: (step(*carry, xs, ys, i), None)  # noqa: E731
    return jax.lax.scan(body, (params, batch_stats, opt_state), idx)[0]

  return steps


def train_fcn(x: np.ndarray, y: np.ndarray, num_classes: int, *, steps: int = 1000,
              batch_size: int = 256, lr: float = 1e-3, seed: int = 0, every: int = 0,
              on_every: Optional[Callable[[int, FCNModel], None]] = None) -> FCNModel:
  """Trains an FCN with Adam on cross-entropy.

  Args:
    x: (N, C, L) float32 series; y: (N,) int labels in 0..num_classes-1.
    steps: optimiser steps; batch_size: capped at N (then each step sees a reshuffled epoch).
    every, on_every: if both are set, ``on_every(k, model)`` is called after every ``every``-th
      step k with the model as it is then; the batch schedule is a prefix of a longer run's, so
      that model equals ``train_fcn(..., steps=k)``'s (a learning curve without retraining).

  Returns:
    The trained FCNModel.
  """
  x, y = _check_labeled(x, y, num_classes)
  # Weight gradients in 16-row slices on one CPU device (resolve_rows(-1)): 6-7 % less time
  # per batch-256 step on the 2-core CPU (benchmarks/NOTES.md item 18).
  module = FCN(num_classes, wgrad_chunk=resolve_rows(-1))
  variables = module.init(jax.random.PRNGKey(seed), jnp.zeros((1,) + x.shape[1:]), train=False)
  tx = optax.adam(lr)
  params, batch_stats = variables["params"], variables["batch_stats"]
  opt_state = tx.init(params)
  run_steps = make_train_steps(module, tx)
  xs, ys = jnp.asarray(x), jnp.asarray(y)
  schedule = batch_schedule(len(x), steps, batch_size, np.random.default_rng(seed))
  input_shape = tuple(int(d) for d in x.shape[1:])
  k = 0
  while k < steps:  # calls of STEPS_PER_CALL steps, ending at every multiple of ``every``
    stop = min(steps, k + STEPS_PER_CALL)
    if on_every is not None and every > 0:
      stop = min(stop, (k // every + 1) * every)
    params, batch_stats, opt_state = run_steps(params, batch_stats, opt_state, xs, ys,
                                               schedule[k:stop])
    k = stop
    if on_every is not None and every > 0 and k % every == 0:
      on_every(k, FCNModel(*jax.device_get((params, batch_stats)), int(num_classes), input_shape))
  params, batch_stats = jax.device_get((params, batch_stats))
  return FCNModel(params, batch_stats, int(num_classes), input_shape)


def save_fcn(model: FCNModel, path: str) -> None:
  """Writes ``model`` to ``path`` atomically: .npz of '/'-joined variable paths + JSON metadata."""
  flat = traverse_util.flatten_dict(
      {"params": model.params, "batch_stats": model.batch_stats}, sep="/")
  arrays = {k: np.asarray(v) for k, v in flat.items()}
  meta = {"format": _FORMAT, "num_classes": model.num_classes,
          "input_shape": None if model.input_shape is None else list(model.input_shape)}
  arrays[_META_KEY] = np.array(json.dumps(meta))
  os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
  tmp = f"{path}.tmp{os.getpid()}"
  with open(tmp, "wb") as f:
    np.savez(f, **arrays)
  os.replace(tmp, path)


def load_fcn(path: str) -> FCNModel:
  """Reads a model written by ``save_fcn`` (with ``allow_pickle=False``)."""
  try:
    with np.load(path, allow_pickle=False) as data:
      meta = json.loads(str(data[_META_KEY]))
      flat = {k: np.asarray(data[k]) for k in data.files if k != _META_KEY}
  except (OSError, KeyError, ValueError) as e:
    raise CheckpointError(f"{path}: not a readable FCN file ({e})") from e
  if meta.get("format") != _FORMAT:
    raise CheckpointError(f"{path}: unknown FCN format {meta.get('format')!r}")
  tree = traverse_util.unflatten_dict(flat, sep="/")
  shape = meta.get("input_shape")
  return FCNModel(tree["params"], tree.get("batch_stats", {}), int(meta["num_classes"]),
                  None if shape is None else tuple(shape))


def cached_fcn(cache_dir: str, dataset_key: str, seed: int, x: np.ndarray, y: np.ndarray,
               num_classes: int, steps: int) -> FCNModel:
  """The FCN cached at ``cache_dir/fcn_{dataset_key}_seed{seed}_steps{steps}.npz``.

  Trained on x (N, C, L), y (N,) (the real training split) and saved there if absent, so every
  variant scored on a dataset uses the same network. A cached file with a different K or (C, L)
  raises CheckpointError. Characters other than [A-Za-z0-9_.-] in dataset_key become '_'.
  """
  key = re.sub(r"[^A-Za-z0-9_.-]", "_", dataset_key)
  path = os.path.join(cache_dir, f"fcn_{key}_seed{seed}_steps{steps}.npz")
  shape = tuple(int(d) for d in np.shape(x)[1:])
  if os.path.exists(path):
    model = load_fcn(path)
    if model.num_classes != num_classes or (model.input_shape not in (None, shape)):
      raise CheckpointError(
          f"{path}: cached FCN has K={model.num_classes}, (C, L)={model.input_shape}; data has "
          f"K={num_classes}, (C, L)={shape}. Use another dataset_key or delete the file.")
    return model
  model = train_fcn(x, y, num_classes, steps=steps, seed=seed)
  save_fcn(model, path)
  return model
