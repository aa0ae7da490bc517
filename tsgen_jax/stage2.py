"""Stage 2: MaskGIT priors over the tokens of a frozen stage-1 model, and sampling.

Tokens of the train split are computed once by the frozen stage-1 encoder and kept in memory
(N x 40 int32 for CBF): stage 1 is frozen and stage 2 applies no augmentation, so encoding
inside every step would recompute identical tokens and make each step several times dearer.

Without the LF/HF split there is one prior over the flattened token grid. With it, TimeVQVAE's
two-prior scheme: an LF prior over the LF tokens, and an HF prior over the HF tokens that sees
the (unmasked) LF tokens as a prefix. Both are class-conditional with a null class, trained
with probability ``p_unconditional`` of dropping the label.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import optax

from tsgen_jax import sampling
from tsgen_jax import train_state as ts_lib
from tsgen_jax.models import maskgit


@dataclasses.dataclass(frozen=True)
class PriorSpec:
  """One prior: which stage-1 branch it models, its token count, its conditioning prefix."""
  branch: str
  grid: tuple[int, int]  # (H, W) token grid of the branch
  prefix: str | None = None  # branch whose tokens condition this prior

  @property
  def num_tokens(self) -> int:
    return self.grid[0] * self.grid[1]


def prior_specs(stage1_model) -> list[PriorSpec]:
  """The priors a stage-1 model needs: one, or LF then HF-conditioned-on-LF."""
  grids = stage1_model.vqvae.token_grids()
  if stage1_model.vqvae.lfhf:
    return [PriorSpec("lf", grids["lf"]), PriorSpec("hf", grids["hf"], prefix="lf")]
  return [PriorSpec("main", grids["main"])]


def token_offsets(specs) -> dict[str, tuple[int, int]]:
  """[start, stop) of each branch in the concatenated flat token vector."""
  out, start = {}, 0
  for s in specs:
    out[s.branch] = (start, start + s.num_tokens)
    start += s.num_tokens
  return out


def build_priors(cfg, stage1_model, num_classes: int) -> dict[str, maskgit.MaskGITTransformer]:
  """One MaskGITTransformer per prior, sized by ``config.stage2``."""
  s2 = cfg.stage2
  specs = prior_specs(stage1_model)
  by_name = {s.branch: s for s in specs}
  k = stage1_model.vqvae.codebook_size
  dtype = jnp.bfloat16 if s2.matmul_dtype == "bfloat16" else jnp.float32
  return {s.branch: maskgit.MaskGITTransformer(
      codebook_size=k, num_tokens=s.num_tokens, num_classes=num_classes,
      hidden_dim=s2.hidden_dim, n_layers=s2.n_layers, n_heads=s2.n_heads, ff_mult=s2.ff_mult,
      dropout=s2.dropout, code_dim=stage1_model.vqvae.dim,
      num_prefix_tokens=by_name[s.prefix].num_tokens if s.prefix else 0,
      prefix_vocab=k if s.prefix else 0, dtype=dtype) for s in specs}


def encode_tokens(stage1_model, stage1_vars, x: np.ndarray, batch: int = 512) -> np.ndarray:
  """Flat token vectors of series x (N, C, L): int32 (N, sum of branch token counts)."""
  from tsgen_jax.eval_stage1 import batched
  specs = prior_specs(stage1_model)

  @jax.jit
  def fn(xb):
    toks = stage1_model.apply(stage1_vars, xb, method="tokenize")
    return jnp.concatenate([toks[s.branch].reshape(len(xb), -1) for s in specs], axis=1)

  return batched(fn, x, batch).astype(np.int32)


class TokenSplit:
  """Token vectors and labels in memory, with the interface BatchStream needs."""

  def __init__(self, tokens: np.ndarray, y: np.ndarray | None):
    self.tokens, self.y = tokens, y

  def __len__(self) -> int:
    return len(self.tokens)

  def take(self, indices):
    return self.tokens[indices], None if self.y is None else self.y[indices]


def init_state(cfg, priors, specs, codebooks: dict, key):
  """Fresh TrainState: token embeddings initialised from the stage-1 codebooks."""
  params = {}
  for i, s in enumerate(specs):
    model = priors[s.branch]
    toks = jnp.zeros((2, s.num_tokens), jnp.int32)
    prefix = jnp.zeros((2, model.num_prefix_tokens), jnp.int32) if s.prefix else None
    # Jitted: an eager init compiles and dispatches every initialiser op separately.
    init = jax.jit(lambda k, t, y, pre, m=model: m.init(k, t, y, prefix=pre)["params"])
    p = init(jax.random.fold_in(key, i), toks, jnp.zeros((2,), jnp.int32), prefix)
    params[s.branch] = maskgit.init_token_embeddings(p, codebooks[s.branch])
  s2 = cfg.stage2
  tx = ts_lib.make_optimizer(s2.lr, s2.weight_decay, s2.num_steps, s2.warmup_steps)
  return ts_lib.create(params, {}, tx), tx


def make_train_step(priors, specs, s2_cfg, num_classes: int, tx):
  """Pure ``train_step(state, batch, rng)``: masked-token cross-entropy summed over priors.

  batch: ``x`` int32 (B, total tokens) flat token vectors, ``y`` int32 (B,) labels.
  """
  offsets = token_offsets(specs)

  def train_step(state, batch, rng):
    tokens, y = batch["x"], batch["y"]

    def loss_fn(params):
      total, metrics = 0.0, {}
      for i, s in enumerate(specs):
        model = priors[s.branch]
        a, b = offsets[s.branch]
        target = tokens[:, a:b]
        k_mask, k_drop, k_dropout = jax.random.split(jax.random.fold_in(rng, i), 3)
        masked, mask = maskgit.random_mask(k_mask, target, model.mask_id)
        cls = maskgit.drop_class_labels(k_drop, y, num_classes, s2_cfg.p_unconditional)
        prefix = None
        if s.prefix:
          pa, pb = offsets[s.prefix]
          prefix = tokens[:, pa:pb]
        logits = model.apply({"params": params[s.branch]}, masked, cls, train=True,
                             prefix=prefix, rngs={"dropout": k_dropout})
        m = maskgit.masked_token_metrics(logits, target, mask, s2_cfg.label_smoothing)
        total = total + m["loss"]
        suffix = "" if len(specs) == 1 else f"_{s.branch}"
        metrics[f"ce{suffix}"], metrics[f"acc{suffix}"] = m["loss"], m["accuracy"]
      metrics["loss"] = total
      return total, metrics

    (_, metrics), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params)
    updates, opt_state = tx.update(grads, state.opt_state, state.params)
    metrics["grad_norm"] = optax.tree.norm(grads)
    return state.replace(step=state.step + 1, params=optax.apply_updates(state.params, updates),
                         opt_state=opt_state), metrics

  return train_step


def _prefixed_logits_fn(model, params, prefix):
  """logits_fn for iterative_decode that tiles the prefix when guidance doubles the batch."""
  def fn(tokens, class_ids, positions=None):
    p = prefix
    if p is not None and tokens.shape[0] != p.shape[0]:
      p = jnp.concatenate([p] * (tokens.shape[0] // p.shape[0]), axis=0)
    return model.apply({"params": params}, tokens, class_ids, train=False, prefix=p,
                       positions=positions)
  return fn


def make_sampler(priors, specs, stage1_model, sample_cfg, num_classes: int):
  """jit-compiled ``sample(params, stage1_vars, key, class_ids (B,)) -> (x (B, C, L), tokens)``.

  The whole decode (T steps per prior, as fori_loops) and the stage-1 decoder run in one
  compiled function. ``class_ids`` equal to ``num_classes`` request unconditional samples.
  ``sample_cfg.matmul_dtype`` ('float32' / 'bfloat16', if set) replaces the priors' matmul
  dtype for sampling (the same parameters).
  """
  null = num_classes  # always valid: the null class id
  dtype = str(sample_cfg.get("matmul_dtype", "") or "")
  if dtype:
    priors = {b: m.clone(dtype=jnp.bfloat16 if dtype == "bfloat16" else jnp.float32)
              for b, m in priors.items()}
  scale = float(sample_cfg.guidance_scale)

  @jax.jit
  def sample(params, stage1_vars, key, class_ids):
    flat = {}
    for i, s in enumerate(specs):
      model = priors[s.branch]
      prefix = flat[s.prefix] if s.prefix else None
      fn = _prefixed_logits_fn(model, params[s.branch], prefix)
      flat[s.branch] = sampling.iterative_decode(
          fn, jax.random.fold_in(key, i), class_ids, s.num_tokens, model.mask_id,
          num_steps=int(sample_cfg.num_steps),
          choice_temperature=float(sample_cfg.choice_temperature),
          schedule=sample_cfg.mask_schedule, guidance_scale=scale,
          null_class_id=null if num_classes > 0 else None,
          first_step_class_ids=None if s.prefix else num_classes + 1,
          masked_logits_segments=int(sample_cfg.masked_logits_segments))
    grids = {s.branch: flat[s.branch].reshape(-1, *s.grid) for s in specs}
    x = stage1_model.apply(stage1_vars, grids, method="decode_tokens")
    return x, jnp.concatenate([flat[s.branch] for s in specs], axis=1)

  return sample


def class_ids_for(num: int, class_label: int, y_train, num_classes: int, seed: int):
  """Labels (num,) int32 to sample: one class, or the train proportions when -1.

  Unlabeled data (num_classes == 0) gets the null id 0 for every sample.
  """
  if num_classes == 0:
    return np.zeros(num, np.int32)
  if class_label == -1:
    from tsgen_jax.evaluation import class_proportional_labels
    return np.asarray(class_proportional_labels(y_train, num, seed, num_classes), np.int32)
  return np.full(num, class_label, np.int32)


def generate(sampler, params, stage1_vars, class_ids: np.ndarray, batch: int, key):
  """Runs ``sampler`` over class_ids in fixed-size batches: (x (N, C, L), tokens (N, T))."""
  xs, ts = [], []
  n = len(class_ids)
  for i in range(0, n, batch):
    ids = class_ids[i:i + batch]
    m = len(ids)
    if m < batch:
      ids = np.concatenate([ids, np.repeat(ids[-1:], batch - m)])
    x, t = sampler(params, stage1_vars, jax.random.fold_in(key, i), jnp.asarray(ids))
    xs.append(np.asarray(x)[:m])
    ts.append(np.asarray(t)[:m])
  return np.concatenate(xs), np.concatenate(ts)


