"""Stage 2: the MaskGIT prior over stage-1 tokens, and its training helpers.

A bidirectional (non-causal) pre-norm transformer predicts, for every position of a flattened
token grid, logits over the stage-1 codebook. Inputs use one extra token id,
``codebook_size``, for [MASK]; a class token (``num_classes + 1`` entries, the last one the
null / unconditional class) is prepended, so the transformer runs on ``N + 1`` positions and the
class position is dropped from the output.

Training (REFERENCE.md, "Stage 2"): per sample ``r ~ U(0, 1)``, mask
``ceil(cos(pi r / 2) * N)`` positions (at least one) chosen uniformly at random, replace the class
label by the null class with probability ``p_unconditional``, and minimise label-smoothed
cross-entropy on the masked positions only.

The pure training helpers live here next to the model (:func:`mask_ratio_schedule`,
:func:`mask_count`, :func:`random_mask`, :func:`drop_class_labels`,
:func:`masked_token_loss`, :func:`masked_token_accuracy`, :func:`masked_token_metrics`).
"""

from __future__ import annotations

import functools
import math
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax

from tsgen_jax.models.dots import dot, is_mixed, matmul, operand

MASK_SCHEDULES = ("cosine", "linear", "square")

_EMBED_INIT = nn.initializers.normal(stddev=0.02)


class _Kernel(nn.Module):
  """A kernel variable and nothing else, initialised as ``nn.DenseGeneral`` initialises its
  own: lecun-normal over the (prod(shape[:n_in]), prod(shape[n_in:])) matrix, reshaped to
  ``shape``. Named like a DenseGeneral, its path, RNG stream and values are that layer's."""
  shape: tuple[int, ...]
  n_in: int = 1

  @nn.compact
  def __call__(self) -> jax.Array:
    """The float32 kernel, of ``shape``."""
    flat = (math.prod(self.shape[:self.n_in]), math.prod(self.shape[self.n_in:]))
    init = nn.initializers.lecun_normal()
    return self.param("kernel", lambda k, shape: init(k, flat).reshape(shape), self.shape)


def take_table_rows(table: jax.Array, index: jax.Array) -> jax.Array:
  """``table[index]`` for table (T, F) and int index of any shape: index.shape + (F,).

  Gathered as whole F-wide rows (as :func:`take_rows`); out-of-range indices are clipped.
  """
  flat = jnp.take(table, index.astype(jnp.int32).reshape(-1), axis=0, mode="clip")
  return flat.reshape(index.shape + table.shape[1:])


def take_rows(x: jax.Array, index: jax.Array) -> jax.Array:
  """``x[b, index[b, p]]`` for x (B, S, F) and int index (B, P): (B, P, F).

  The same values as ``jnp.take_along_axis(x, index[..., None], axis=1)``, gathered as whole
  F-wide rows of the flattened (B * S, F) array: XLA:CPU runs that as row copies, where
  ``take_along_axis`` gathers element by element (~10x slower here).
  """
  b, s = x.shape[:2]
  flat = (index.astype(jnp.int32) + s * jnp.arange(b, dtype=jnp.int32)[:, None]).reshape(-1)
  return jnp.take(x.reshape((b * s,) + x.shape[2:]), flat, axis=0,
                  mode="clip").reshape(index.shape + x.shape[2:])


def column_sum(y: jax.Array) -> jax.Array:
  """y (..., N) summed over all its leading axes: (N,), as one vector-matrix product.

  The gradients of a bias or a norm's scale are such sums. XLA:CPU, with YNNPACK taking only
  the dots (the prior's train step, ``trainer.step_compiler_options``), splits a reduction
  over more than 32 rows into windows of 32 and runs that ``reduce-window`` as a kernel of its
  own: 2-3 ms per (10496, 256) sum in the B = 256 step, where the product runs as a YNNPACK
  dot (benchmarks/NOTES.md item 24).
  """
  rows = y.reshape(-1, y.shape[-1])
  return jnp.dot(jnp.ones((rows.shape[0],), rows.dtype), rows)


@jax.custom_vjp
def add_bias(y: jax.Array, b: jax.Array) -> jax.Array:
  """``y + b`` for y (..., N) and b (N,): (..., N); b's gradient is :func:`column_sum`'s."""
  return y + b


def _add_bias_fwd(y, b):
  return add_bias(y, b), (jnp.zeros((0,), y.dtype), jnp.zeros((0,), b.dtype))


def _add_bias_bwd(res, g):
  y_like, b_like = res
  return g.astype(y_like.dtype), column_sum(g).astype(b_like.dtype)


add_bias.defvjp(_add_bias_fwd, _add_bias_bwd)


class Dense(nn.Module):
  """``nn.Dense(features)`` with the same variables (a lecun-normal float32 'kernel' (M, N), a
  zero 'bias' (N,)) and values, computed by :func:`matmul` (float32, or with a bfloat16
  ``dtype`` mixed precision: float32 parameters, inputs and outputs) and :func:`add_bias`:
  the weight gradient is one ``km,kn->mn`` contraction and the bias gradient one
  :func:`column_sum`."""
  features: int
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    """x (..., M) -> (..., features)."""
    kernel = self.param("kernel", nn.initializers.lecun_normal(),
                        (x.shape[-1], self.features), jnp.float32)
    bias = self.param("bias", nn.initializers.zeros_init(), (self.features,), jnp.float32)
    mixed = is_mixed(self.dtype)
    dtype = jnp.float32 if mixed else self.dtype
    return add_bias(matmul(x.astype(dtype), kernel.astype(dtype), mixed), bias.astype(dtype))


def dense(features: int, dtype: Any, name: str) -> Dense:
  """:class:`Dense` (``nn.Dense(features)``'s variables and values) in float32, or with
  bfloat16 mixed-precision."""
  return Dense(features, dtype, name=name)


@jax.custom_vjp
def scale_rows(x: jax.Array, r: jax.Array, scale: jax.Array) -> jax.Array:
  """``x * (r * scale)`` for x (..., N), r (..., 1) and scale (N,): (..., N), as
  ``nn.RMSNorm`` applies its rms and scale. The backward pass takes r's gradient and the
  scale's as two matrix-vector products of ``g * x`` (with the scale, and with r), not as
  reductions (see :func:`column_sum`)."""
  return x * (r * scale)


def _scale_rows_fwd(x, r, scale):
  return scale_rows(x, r, scale), (x, r, scale)


def _scale_rows_bwd(res, g):
  x, r, scale = res
  gx = (g * x).reshape(-1, x.shape[-1])
  dr = jnp.dot(gx, scale).reshape(r.shape)
  return g * (r * scale), dr, jnp.dot(r.reshape(-1), gx)


scale_rows.defvjp(_scale_rows_fwd, _scale_rows_bwd)


class RMSNorm(nn.Module):
  """``nn.RMSNorm()`` over the last axis, with its variable (a float32 'scale' per feature,
  initialised to 1), epsilon and forward values, and the backward pass of
  :func:`scale_rows`."""
  epsilon: float = 1e-6

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    """x (..., N) -> float32 (..., N)."""
    scale = self.param("scale", nn.initializers.ones, (x.shape[-1],), jnp.float32)
    x = x.astype(jnp.float32)
    var = jnp.mean(jax.lax.square(x), axis=-1, keepdims=True)
    return scale_rows(x, jax.lax.rsqrt(var + self.epsilon), scale)


@functools.partial(jax.custom_vjp, nondiff_argnums=(2,))
def project_jointly(x: jax.Array, kernels: tuple[jax.Array, ...],
                    mixed: bool = False) -> tuple[jax.Array, ...]:
  """``tuple(x @ k for k in kernels)`` for x (B, S, M) and kernels (M, d_j): (B, S, d_j) each.

  The forward pass is one matmul with the kernels side by side, its output sliced; the
  backward pass computes each kernel's gradient and its share of x's as separate matmuls, as
  autodiff of the separate products does. Autodiff of the joint matmul would instead assemble
  the (B, S, sum d_j) output gradient from the slices' gradients first, and on XLA:CPU that
  cost what the joint forward saves (benchmarks/NOTES.md item 20). ``mixed``: every matmul,
  forward and backward, as :func:`~tsgen_jax.models.dots.mixed_matmul`'s (float32 results).
  """
  y = dot("bsm,md->bsd", x, jnp.concatenate(kernels, axis=1), mixed)
  ends = np.cumsum([k.shape[1] for k in kernels])
  return tuple(y[..., e - k.shape[1]:e] for k, e in zip(kernels, ends))


def _project_jointly_fwd(x, kernels, mixed):
  res = (operand(x, mixed), tuple(operand(k, mixed) for k in kernels),
         jnp.zeros((0,), x.dtype), tuple(jnp.zeros((0,), k.dtype) for k in kernels))
  return project_jointly(x, kernels, mixed), res


def _project_jointly_bwd(mixed, res, grads):
  x, kernels, x_like, k_like = res
  grads = tuple(operand(g, mixed) for g in grads)
  dx = sum(dot("bsd,md->bsm", g, k, mixed) for g, k in zip(grads, kernels))
  dk = tuple(dot("bsm,bsd->md", x, g, mixed).astype(z.dtype) for g, z in zip(grads, k_like))
  return dx.astype(x_like.dtype), dk


project_jointly.defvjp(_project_jointly_fwd, _project_jointly_bwd)


class SelfAttention(nn.Module):
  """Multi-head self-attention computed one head at a time, in (B, S, d) layout throughout.

  The parameters (names, shapes, initial values) and the maths of
  ``nn.MultiHeadDotProductAttention(num_heads, qkv_features=features, out_features=features,
  use_bias=False, force_fp32_for_softmax=True)`` applied as self-attention: kernels
  ``query``/``key``/``value`` (H, heads, d) and ``out`` (heads, d, features), no biases,
  softmax in float32. Checkpoints of either load in the other (tests/test_maskgit.py).

  Each head projects with its own (H, d) slice of the kernels, so its queries, keys and values
  come out of their matmuls as contiguous (B, S, d) arrays, the attention einsums batch over B
  only, and in the backward pass the projections' gradients are plain 2-D matmuls. Flax's
  (B, S, heads, d) layout instead has XLA:CPU transpose q, k, v and the output to and from
  (B, heads, S, d) around the attention einsums; without those copies sampling is ~7 % faster
  (benchmarks/NOTES.md item 13). Attention dropout, when on, uses ``nn.Dropout`` (the
  distribution of flax's, other draws).
  """
  num_heads: int
  features: int
  dropout_rate: float = 0.0
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array, deterministic: bool = True,
               queries: jax.Array | None = None, index: jax.Array | None = None,
               query_index: jax.Array | None = None,
               joint_projection: bool = False) -> jax.Array:
    """x: (B, S, H) -> (B, S, features), in ``dtype`` (float32 when ``dtype`` is bfloat16:
    its matmuls are then :func:`~tsgen_jax.models.dots.mixed_matmul`'s, bfloat16 operands
    and float32 results).

    ``joint_projection``: compute the queries, keys and values of every head as one matmul
    (:func:`project_jointly`); the same values, a different matmul shape. The prior's train
    step uses it (2-4 % faster on CPU, benchmarks/NOTES.md item 20); sampling does not (no
    faster there). Ignored with ``queries`` or ``index``.

    With ``queries`` (B, P, H), only those rows make queries (the keys and values still come
    from all S rows of ``x``), and the output is (B, P, features).

    With ``index`` int (B, S), ``x`` is instead a (T, H) table of distinct rows and the input
    is ``x[index]``: each projection is computed once per table row and its rows gathered
    (:func:`take_table_rows`). ``query_index`` (B, P), also into the table, then picks the
    query rows (default ``index``); ``queries`` must be None.
    """
    h, feat = self.num_heads, self.features
    if feat % h:
      raise ValueError(f"features {feat} must be divisible by num_heads {h}")
    d = feat // h
    # mixed: bfloat16 operands, float32 activations (dots.mixed_matmul); else all in self.dtype.
    mixed = is_mixed(self.dtype)
    act_dtype = jnp.float32 if mixed else self.dtype
    w = {n: _Kernel((x.shape[-1], h, d), name=n)().astype(act_dtype)
         for n in ("query", "key", "value")}
    x = x.astype(act_dtype)
    if index is not None:
      if queries is not None:
        raise ValueError("queries must be None when x is a table (index given)")
      query_index = index if query_index is None else query_index

      def project(rows, n, i):
        return take_table_rows(matmul(x, w[n][:, i], mixed), rows)
    else:
      xq = x if queries is None else queries.astype(act_dtype)

      def project(rows, n, i):
        return matmul(rows, w[n][:, i], mixed)
    joint = {}
    if joint_projection and index is None and queries is None:
      names = [(n, i) for i in range(h) for n in ("query", "key", "value")]
      joint = dict(zip(names, project_jointly(x, tuple(w[n][:, i] for n, i in names), mixed)))
    heads = []
    for i in range(h):
      if joint:
        q, k, v = (joint[(n, i)] for n in ("query", "key", "value"))
      else:
        q = project(xq if index is None else query_index, "query", i)
        k, v = (project(x if index is None else index, n, i) for n in ("key", "value"))
      logits = jnp.einsum("bqd,bkd->bqk", q / jnp.sqrt(jnp.asarray(d, q.dtype)), k)
      weights = jax.nn.softmax(logits.astype(jnp.float32), axis=-1).astype(act_dtype)
      if self.dropout_rate > 0.0 and not deterministic:
        weights = nn.Dropout(self.dropout_rate, deterministic=False)(weights)
      heads.append(jnp.einsum("bqk,bkd->bqd", weights, v))
    w_out = _Kernel((h, d, feat), n_in=2, name="out")().astype(act_dtype)
    o = jnp.concatenate(heads, axis=-1) if h > 1 else heads[0]  # (B, S, heads * d)
    return matmul(o, w_out.reshape(h * d, feat), mixed)


class TransformerBlock(nn.Module):
  """Pre-norm block: ``x + Attn(RMSNorm(x))`` then ``x + MLP(RMSNorm(x))``, no causal mask.

  The residual stream stays in float32; attention and MLP matmuls run in ``dtype`` (bfloat16:
  mixed precision, :func:`~tsgen_jax.models.dots.mixed_matmul`). The
  attention is :class:`SelfAttention` (flax's multi-head attention, one head at a time; in
  training its queries, keys and values come from one joint matmul, ``joint_projection``).
  The attention projections have no bias, as in x-transformers (TimeVQVAE's prior): the key
  bias has an exactly zero gradient (softmax is shift invariant) that Adam would turn into
  noise-driven updates, and the bias-gradient reductions cost ~13 % of the train step on CPU.
  """
  hidden_dim: int
  n_heads: int
  ff_mult: int = 1
  dropout: float = 0.0
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array, train: bool = False,
               query_index: jax.Array | None = None,
               table_index: jax.Array | None = None) -> jax.Array:
    """x: (B, S, hidden_dim) -> (B, S, hidden_dim).

    With ``query_index`` int (B, P) in [0, S), returns (B, P, hidden_dim): the block's output
    at those rows only (attention over all S rows; queries, residual and MLP at the P rows).

    With ``table_index`` int (B, S), ``x`` is a (T, hidden_dim) table of distinct rows and the
    block's input is ``x[table_index]``: the attention norm and the query/key/value
    projections run once per table row (see ``MaskGITTransformer.first_block_table``).
    """
    h = RMSNorm(name="attn_norm")(x)
    attn = SelfAttention(self.n_heads, self.hidden_dim, self.dropout, self.dtype, name="attn")
    if table_index is not None:
      rows = table_index if query_index is None else jnp.take_along_axis(
          table_index, query_index.astype(jnp.int32), axis=1)
      x = take_table_rows(x, rows)
      h = attn(h, deterministic=not train, index=table_index, query_index=rows)
    else:
      hq = None
      if query_index is not None:
        x, hq = (take_rows(a, query_index) for a in (x, h))
      h = attn(h, deterministic=not train, queries=hq, joint_projection=train)
    h = nn.Dropout(self.dropout, deterministic=not train)(h)
    x = x + h.astype(x.dtype)

    h = RMSNorm(name="mlp_norm")(x)
    h = dense(self.hidden_dim * self.ff_mult, self.dtype, "mlp_in")(h)
    h = nn.gelu(h)
    h = dense(self.hidden_dim, self.dtype, "mlp_out")(h)
    h = nn.Dropout(self.dropout, deterministic=not train)(h)
    return x + h.astype(x.dtype)


class MaskGITTransformer(nn.Module):
  """Bidirectional transformer prior over ``num_tokens`` stage-1 tokens.

  Attributes:
    codebook_size: K, the stage-1 codebook size; token id K is [MASK].
    num_tokens: N, the flattened token sequence length.
    num_classes: C; class id C is the null class (C = 0: unconditional, only the null id).
    hidden_dim, n_layers, n_heads, ff_mult, dropout: transformer sizes.
    code_dim: width of the token embedding table (the stage-1 code dimension), projected to
      ``hidden_dim`` by a Dense layer.
    dtype: the matmuls' operand dtype: float32, or ``jnp.bfloat16`` for mixed precision
      (:func:`~tsgen_jax.models.dots.mixed_matmul`: bfloat16 operands, float32 accumulation
      and results, in the forward and the backward pass). Parameters, activations and logits
      stay float32.
    first_block_table: the first block's input rows take few distinct values: each is a
      class id's, a (prefix token, place) pair's or a (token id, position) pair's embedding
      plus its position embedding, (C + 1) + P * prefix_vocab + N * (K + 1) rows in all (1323
      for K = 32, N = 40, C = 2). With this on, the embeddings, the first block's attention
      norm and its query/key/value projections run once per such row and are gathered (in
      the backward pass, their gradients summed per row), instead of once per position of
      the batch: the same logits and gradients up to float rounding. None (default): when the
      table has fewer rows than the batch has positions; True: always; False: never. Not in
      training with ``dropout > 0``, whose input dropout makes every row distinct.
  """
  codebook_size: int
  num_tokens: int
  num_classes: int
  hidden_dim: int = 256
  n_layers: int = 4
  n_heads: int = 2
  ff_mult: int = 1
  dropout: float = 0.0
  code_dim: int = 64
  num_prefix_tokens: int = 0  # conditioning tokens (e.g. LF tokens for the HF prior)
  prefix_vocab: int = 0
  dtype: Any = jnp.float32
  first_block_table: bool | None = None

  @property
  def mask_id(self) -> int:
    """The [MASK] token id (= ``codebook_size``)."""
    return self.codebook_size

  @property
  def null_class_id(self) -> int:
    """The null (unconditional) class id (= ``num_classes``)."""
    return self.num_classes

  @nn.compact
  def __call__(self, tokens: jax.Array, class_ids: jax.Array,
               train: bool = False, prefix: jax.Array | None = None,
               positions: jax.Array | None = None) -> jax.Array:
    """Logits over the codebook for every token position.

    Args:
      tokens: int (B, N) in [0, K]; the value K = ``codebook_size`` is [MASK].
      class_ids: int (B,) in [0, C]; the value C = ``num_classes`` is the null class.
      train: enables dropout (needs a 'dropout' rng when ``dropout > 0``).
      prefix: int (B, P) conditioning tokens in [0, prefix_vocab), never masked and never
        predicted (TimeVQVAE's HF prior sees the LF tokens this way); required iff
        ``num_prefix_tokens > 0``.
      positions: optional int (B, P) token positions in [0, N). The logits are then computed
        at those positions only: the last block makes queries, runs its MLP, the output norm
        and the head there (every position still enters its attention as key and value), so
        they equal the full call's logits at those positions up to float rounding. Sampling
        uses it to skip positions whose tokens are already fixed.

    Returns:
      float32 logits (B, N, K), or (B, P, K) with ``positions``.
    """
    if tokens.ndim != 2 or tokens.shape[1] != self.num_tokens:
      raise ValueError(f"tokens must be (B, {self.num_tokens}), got {tokens.shape}")
    if class_ids.shape != tokens.shape[:1]:
      raise ValueError(f"class_ids must be ({tokens.shape[0]},), got {class_ids.shape}")
    if positions is not None and (positions.ndim != 2 or positions.shape[0] != tokens.shape[0]):
      raise ValueError(f"positions must be ({tokens.shape[0]}, P), got {positions.shape}")

    n_ctx = 1 + self.num_prefix_tokens
    n_rows = (self.num_classes + 1 + self.num_prefix_tokens * self.prefix_vocab
              + self.num_tokens * (self.codebook_size + 1))
    table = (not train or self.dropout == 0.0) and self.n_layers > 0 and (
        n_rows < tokens.shape[0] * (n_ctx + self.num_tokens)
        if self.first_block_table is None else self.first_block_table)
    ids = {"class": class_ids[:, None], "prefix": prefix, "token": tokens}
    if table:  # every value each input row can take, in place of the batch's ids
      vocab = {"class": self.num_classes + 1, "prefix": self.prefix_vocab,
               "token": self.codebook_size + 1}
      ids = {k: None if v is None else jnp.arange(vocab[k], dtype=jnp.int32)[None]
             for k, v in ids.items()}
    tok = nn.Embed(self.codebook_size + 1, self.code_dim, embedding_init=_EMBED_INIT,
                   name="token_embed")(ids["token"].astype(jnp.int32))
    tok = dense(self.hidden_dim, self.dtype, "token_proj")(tok)
    cls = nn.Embed(self.num_classes + 1, self.hidden_dim, embedding_init=_EMBED_INIT,
                   name="class_embed")(ids["class"].astype(jnp.int32))
    parts = [cls]
    if self.num_prefix_tokens:
      pre = nn.Embed(self.prefix_vocab, self.code_dim, embedding_init=_EMBED_INIT,
                     name="prefix_embed")(ids["prefix"].astype(jnp.int32))
      parts.append(dense(self.hidden_dim, self.dtype, "prefix_proj")(pre)
                   .astype(jnp.float32))
    parts.append(tok.astype(jnp.float32))
    pos = self.param("pos_embed", _EMBED_INIT, (self.num_tokens + n_ctx, self.hidden_dim))
    table_index = None
    if table:
      x, table_index = _input_table(parts, pos, class_ids,
                                    prefix if self.num_prefix_tokens else None, tokens)
    else:
      x = jnp.concatenate(parts, axis=1)  # (B, 1 + P + N, H)
      x = nn.Dropout(self.dropout, deterministic=not train)(x + pos[None])

    # Rows the output is read from: the N token rows, or with `positions` the class row 0
    # and then the requested token rows. Row 0 rides along (one extra row) so the last
    # block's output, as in the full call, goes through a slice before the output norm:
    # without it XLA:CPU fused the last block's out-projection, MLP, norm and head into one
    # YNNPACK fusion, and the saving was lost (benchmarks/NOTES.md item 14).
    rows = None
    if positions is not None:
      rows = positions.astype(jnp.int32) + n_ctx
      rows = jnp.concatenate([jnp.zeros_like(rows[:, :1]), rows], axis=1)
      n_ctx = 1
    for i in range(self.n_layers):
      index = rows if i == self.n_layers - 1 else None
      x = TransformerBlock(self.hidden_dim, self.n_heads, self.ff_mult, self.dropout,
                           dtype=self.dtype, name=f"block_{i}")(
                               x, train=train, query_index=index,
                               table_index=table_index if i == 0 else None)
    if rows is not None and not self.n_layers:
      x = take_rows(x, rows)
    x = RMSNorm(name="out_norm")(x[:, n_ctx:])
    logits = dense(self.codebook_size, self.dtype, "head")(x)
    return logits.astype(jnp.float32)


def _input_table(parts, pos, class_ids, prefix, tokens):
  """The first block's input as a table of distinct rows and each position's row in it.

  Args:
    parts: the embedded vocabularies, float32 (1, V, H) each: class ids, then (if any) prefix
      tokens, then stage-1 token ids (the [MASK] id included).
    pos: (S, H) position embeddings, S = 1 + P + N.
    class_ids, prefix, tokens: int (B,), (B, P) or None, (B, N): the batch's ids.

  Returns:
    ``(table, index)``: float32 (T, H), every vocabulary entry plus every position embedding
    of its part (row ``offset + place * V + id``), and int32 (B, S) with ``table[index]``
    equal to the embedded batch plus ``pos``.
  """
  ids = [class_ids[:, None]] + ([prefix] if prefix is not None else []) + [tokens]
  rows, index, offset, start = [], [], 0, 0
  for part, part_ids in zip(parts, ids):
    vocab, places = part.shape[1], part_ids.shape[1]
    rows.append((part + pos[start:start + places, None]).reshape(-1, part.shape[-1]))
    index.append(offset + vocab * jnp.arange(places, dtype=jnp.int32)
                 + part_ids.astype(jnp.int32))
    offset, start = offset + vocab * places, start + places
  return jnp.concatenate(rows, axis=0), jnp.concatenate(index, axis=1)


def init_token_embeddings(params, codebook: jax.Array):
  """Returns ``params`` with the first K token-embedding rows replaced by the codebook.

  Args:
    params: the transformer's variables, either ``{'params': {...}}`` or the inner dict.
    codebook: (K, code_dim) stage-1 codebook.

  Returns:
    A new params tree of the same structure (the input is not modified); the [MASK] row
    (index K) and every other parameter are unchanged.
  """
  has_collection = "params" in params and "token_embed" not in params
  inner = params["params"] if has_collection else params
  table = inner["token_embed"]["embedding"]
  codebook = jnp.asarray(codebook)
  if codebook.ndim != 2 or codebook.shape != (table.shape[0] - 1, table.shape[1]):
    raise ValueError(f"codebook must be {(table.shape[0] - 1, table.shape[1])} to fill the "
                     f"{table.shape} token embedding table, got {codebook.shape}")
  new_table = table.at[:-1].set(codebook.astype(table.dtype))
  new_inner = {**inner, "token_embed": {**inner["token_embed"], "embedding": new_table}}
  return {**params, "params": new_inner} if has_collection else new_inner


# ------------------------------------------------------------------------------------------
# Training helpers (pure functions).


def mask_ratio_schedule(r, kind: str = "cosine"):
  """Fraction of tokens masked at progress ``r`` in [0, 1] (1 at r = 0, 0 at r = 1).

  Args:
    r: scalar or array of floats in [0, 1]. A JAX array (or tracer) is computed with
      ``jax.numpy`` in its float dtype; anything else (Python / NumPy numbers) with NumPy in
      float64, so schedule tables built at trace time are exact.
    kind: 'cosine' cos(pi r / 2), 'linear' 1 - r, or 'square' 1 - r^2.

  Returns:
    An array of the same shape as ``r``; monotonically decreasing in ``r``.
  """
  if isinstance(r, jax.Array):
    xp = jnp
    r = r.astype(jnp.promote_types(r.dtype, jnp.float32))
  else:
    xp = np
    r = np.asarray(r, np.float64)
  if kind == "cosine":
    return xp.cos(0.5 * math.pi * r)
  if kind == "linear":
    return 1.0 - r
  if kind == "square":
    return 1.0 - r * r
  raise ValueError(f"unknown mask schedule {kind!r}; expected one of {MASK_SCHEDULES}")


def mask_count(r, num_tokens: int):
  """Number of tokens to mask for training draw ``r``: ``ceil(cos(pi r / 2) N)`` in [1, N].

  Args:
    r: float array of any shape, values in [0, 1).
    num_tokens: N.

  Returns:
    int32 array shaped like ``r``.
  """
  n = jnp.ceil(mask_ratio_schedule(jnp.asarray(r), "cosine") * num_tokens)
  return jnp.clip(n, 1, num_tokens).astype(jnp.int32)


def random_mask(key: jax.Array, tokens: jax.Array, mask_id: int):
  """Masks ``ceil(cos(pi r / 2) N)`` uniformly chosen positions per sample, ``r ~ U(0, 1)``.

  Args:
    key: PRNG key.
    tokens: int (B, N) token ids.
    mask_id: id written at masked positions (the model's ``codebook_size``).

  Returns:
    masked_tokens: int32 (B, N), ``mask_id`` where masked, ``tokens`` elsewhere.
    mask: bool (B, N), True at masked positions (at least one per row).
  """
  b, n = tokens.shape
  r_key, noise_key = jax.random.split(key)
  count = mask_count(jax.random.uniform(r_key, (b,)), n)  # (B,)
  noise = jax.random.uniform(noise_key, (b, n))
  rank = jnp.argsort(jnp.argsort(noise, axis=-1), axis=-1)  # a random permutation per row
  mask = rank < count[:, None]
  masked = jnp.where(mask, jnp.int32(mask_id), tokens.astype(jnp.int32))
  return masked, mask


def drop_class_labels(key: jax.Array, class_ids: jax.Array, num_classes: int,
                      p_unconditional: float = 0.2) -> jax.Array:
  """Replaces each class id by the null id ``num_classes`` with probability ``p_unconditional``.

  Args:
    key: PRNG key.
    class_ids: int (B,) in [0, num_classes).
    num_classes: C; with C = 0 (unlabeled data) every id becomes the null id 0.
    p_unconditional: drop probability.

  Returns:
    int32 (B,) class ids.
  """
  class_ids = jnp.asarray(class_ids, jnp.int32)
  if num_classes == 0:
    return jnp.zeros_like(class_ids)
  drop = jax.random.bernoulli(key, p_unconditional, class_ids.shape)
  return jnp.where(drop, jnp.int32(num_classes), class_ids)


def _masked_mean(values: jax.Array, mask: jax.Array) -> jax.Array:
  mask = mask.astype(jnp.float32)
  return jnp.sum(values * mask) / jnp.maximum(jnp.sum(mask), 1.0)


def masked_token_loss(logits: jax.Array, targets: jax.Array, mask: jax.Array,
                      label_smoothing: float = 0.1) -> jax.Array:
  """Label-smoothed cross-entropy averaged over the masked positions only.

  Smoothed labels are ``(1 - eps) one_hot + eps / K`` (``optax.smooth_labels``).

  Args:
    logits: (B, N, K).
    targets: int (B, N) in [0, K).
    mask: bool (B, N); positions where False do not contribute.
    label_smoothing: eps.

  Returns:
    float32 scalar (0 when nothing is masked).
  """
  k = logits.shape[-1]
  labels = optax.smooth_labels(jax.nn.one_hot(targets, k, dtype=jnp.float32), label_smoothing)
  ce = optax.softmax_cross_entropy(logits.astype(jnp.float32), labels)  # (B, N)
  return _masked_mean(ce, mask)


def masked_token_accuracy(logits: jax.Array, targets: jax.Array, mask: jax.Array) -> jax.Array:
  """Top-1 accuracy over the masked positions; logits (B, N, K), targets/mask (B, N) -> scalar."""
  correct = (jnp.argmax(logits, axis=-1) == targets).astype(jnp.float32)
  return _masked_mean(correct, mask)


def masked_token_metrics(logits: jax.Array, targets: jax.Array, mask: jax.Array,
                         label_smoothing: float = 0.1) -> dict[str, jax.Array]:
  """``{'loss', 'accuracy'}`` on masked positions; shapes as in :func:`masked_token_loss`."""
  return {
      "loss": masked_token_loss(logits, targets, mask, label_smoothing),
      "accuracy": masked_token_accuracy(logits, targets, mask),
  }


__all__ = [
    "MASK_SCHEDULES", "SelfAttention", "TransformerBlock", "MaskGITTransformer",
    "init_token_embeddings",
    "mask_ratio_schedule", "mask_count", "random_mask", "drop_class_labels",
    "masked_token_loss", "masked_token_accuracy", "masked_token_metrics",
]
