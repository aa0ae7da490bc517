"""Tests for the MaskGIT transformer prior and its training helpers."""

import functools

import chex
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from conftest import all_eqns, dot_dtypes

from tsgen_jax.models import dots, maskgit

K, N, C, CODE_DIM = 8, 6, 3, 16


def _tiny(**kw):
  cfg = dict(codebook_size=K, num_tokens=N, num_classes=C, hidden_dim=32, n_layers=1,
             n_heads=2, code_dim=CODE_DIM)
  cfg.update(kw)
  return maskgit.MaskGITTransformer(**cfg)


@pytest.fixture(scope="module")
def tiny():
  model = _tiny()
  tokens = jnp.zeros((2, N), jnp.int32)
  params = jax.jit(model.init)(jax.random.key(0), tokens, jnp.zeros((2,), jnp.int32))
  return model, params, jax.jit(lambda p, t, c: model.apply(p, t, c, train=False))


def test_transformer_shapes_and_bidirectional(tiny):
  model, params, apply = tiny
  assert model.mask_id == K and model.null_class_id == C
  p = params["params"]
  assert p["token_embed"]["embedding"].shape == (K + 1, CODE_DIM)
  assert p["class_embed"]["embedding"].shape == (C + 1, 32)
  assert p["pos_embed"].shape == (N + 1, 32)
  tokens = jnp.array([[0, 1, 2, 3, 4, 5], [K] * N], jnp.int32)  # second row all [MASK]
  logits = apply(params, tokens, jnp.array([0, C], jnp.int32))
  assert logits.shape == (2, N, K) and logits.dtype == jnp.float32
  assert np.all(np.isfinite(logits))
  # Bidirectional: changing the last token changes the logits at the first position.
  other = tokens.at[0, -1].set(7)
  changed = apply(params, other, jnp.array([0, C], jnp.int32))
  assert not np.allclose(logits[0, 0], changed[0, 0])
  np.testing.assert_allclose(logits[1], changed[1], rtol=1e-5, atol=1e-6)
  # The mask embedding is its own row: [MASK] differs from every real token.
  for tok in range(K):
    alt = apply(params, tokens.at[1].set(tok), jnp.array([0, C], jnp.int32))
    assert not np.allclose(alt[1], logits[1])
  # The class token conditions the output.
  cls = apply(params, tokens, jnp.array([1, 0], jnp.int32))
  assert not np.allclose(cls[0], logits[0])


def test_bfloat16_compute_keeps_float32_params_and_logits(tiny):
  _, params, apply = tiny
  model16 = _tiny(dtype=jnp.bfloat16)
  tokens = jnp.array([[0, 1, 2, K, K, 5]], jnp.int32)
  cls = jnp.array([1], jnp.int32)
  params16 = jax.eval_shape(model16.init, jax.random.key(0), tokens, cls)
  assert all(x.dtype == jnp.float32 for x in jax.tree.leaves(params16))
  out16 = jax.jit(model16.apply)(params, tokens, cls)
  assert out16.dtype == jnp.float32
  np.testing.assert_allclose(out16, apply(params, tokens, cls), atol=0.1)
  # Mixed precision: every projection's matmul takes bfloat16 operands and returns float32;
  # only the attention core (scores and weighted sum, 2 per head) stays in float32.
  for train in (False, True):
    dots = dot_dtypes(jax.make_jaxpr(
        lambda p, train=train: model16.apply(p, tokens, cls, train=train))(params).jaxpr)
    assert dots.count(("float32", "float32", "float32")) == 2 * model16.n_heads
    assert all(d == ("bfloat16", "bfloat16", "float32") for d in dots
               if d != ("float32", "float32", "float32"))
    assert len(dots) > 2 * model16.n_heads


def _flax_attention(dtype=jnp.float32, dropout_rate=0.0):
  import flax.linen as nn
  return nn.MultiHeadDotProductAttention(num_heads=2, qkv_features=16, out_features=16,
                                         use_bias=False, force_fp32_for_softmax=True,
                                         dtype=dtype, dropout_rate=dropout_rate)


def test_self_attention_is_flax_multi_head_attention_one_head_at_a_time():
  x = jax.random.normal(jax.random.key(0), (3, 7, 12))
  ref, ours = _flax_attention(), maskgit.SelfAttention(2, 16)
  params = ref.init(jax.random.key(1), x, x)
  # The same parameter tree and initial values (so checkpoints load either way).
  ours_params = ours.init(jax.random.key(1), x)
  assert jax.tree.structure(ours_params) == jax.tree.structure(params)
  for a, b in zip(jax.tree.leaves(params), jax.tree.leaves(ours_params)):
    np.testing.assert_array_equal(a, b)
  np.testing.assert_allclose(ours.apply(params, x), ref.apply(params, x, x), atol=1e-6)
  # Gradients with respect to the parameters and the input.
  def grads(f):
    return jax.grad(lambda p, x: jnp.sum(jnp.sin(f(p, x))), argnums=(0, 1))(params, x)
  g_ref = grads(lambda p, x: ref.apply(p, x, x))
  g_ours = grads(ours.apply)
  for a, b in zip(jax.tree.leaves(g_ref), jax.tree.leaves(g_ours)):
    np.testing.assert_allclose(b, a, rtol=1e-5, atol=1e-6)
  # bfloat16 matmuls (mixed precision): float32 out, close to flax's bfloat16 attention.
  out16 = maskgit.SelfAttention(2, 16, dtype=jnp.bfloat16).apply(params, x)
  assert out16.dtype == jnp.float32
  np.testing.assert_allclose(out16, _flax_attention(jnp.bfloat16).apply(params, x, x).astype(
      jnp.float32), atol=0.05)
  with pytest.raises(ValueError, match="divisible"):
    maskgit.SelfAttention(3, 16).init(jax.random.key(1), x)


def test_project_jointly_values_and_gradients_are_the_separate_products():
  x = jax.random.normal(jax.random.key(0), (3, 5, 12))
  ks = tuple(jax.random.normal(jax.random.key(i + 1), (12, d)) for i, d in enumerate((4, 6, 4)))
  ys = maskgit.project_jointly(x, ks)
  assert [y.shape for y in ys] == [(3, 5, 4), (3, 5, 6), (3, 5, 4)]
  x64, ks64 = np.asarray(x, np.float64), [np.asarray(k, np.float64) for k in ks]
  for y, k in zip(ys, ks64):
    np.testing.assert_allclose(y, x64 @ k, rtol=1e-5, atol=1e-5)
  # Gradients of a loss weighting each output differently, against numpy's closed form:
  # d/dx = sum_j w_j @ k_j^T, d/dk_j = x^T w_j for loss = sum_j sum(w_j * y_j).
  ws = [np.asarray(jax.random.normal(jax.random.key(9 + j), y.shape)) for j, y in enumerate(ys)]
  loss = lambda x, ks: sum(jnp.sum(w * y) for w, y in zip(ws, maskgit.project_jointly(x, ks)))
  dx, dks = jax.grad(loss, argnums=(0, 1))(x, ks)
  np.testing.assert_allclose(dx, sum(w @ k.T for w, k in zip(ws, ks64)), rtol=1e-5, atol=1e-5)
  for dk, w in zip(dks, ws):
    np.testing.assert_allclose(dk, np.einsum("bsm,bsd->md", x64, w), rtol=1e-5, atol=1e-5)


def test_self_attention_joint_projection_is_the_same_attention():
  x = jax.random.normal(jax.random.key(0), (3, 7, 16))
  model = maskgit.SelfAttention(2, 16)
  params = model.init(jax.random.key(1), x)
  def value_and_grads(joint):
    f = lambda p, x: jnp.sum(jnp.sin(model.apply(p, x, joint_projection=joint)))
    return f(params, x), jax.grad(f, argnums=(0, 1))(params, x)
  (v0, g0), (v1, g1) = value_and_grads(False), value_and_grads(True)
  # Float rounding only: on an AVX-512 CPU 1.2e-6 apart (value) and 1.1e-6 (gradients).
  np.testing.assert_allclose(v1, v0, rtol=1e-5)
  for a, b in zip(jax.tree.leaves(g0), jax.tree.leaves(g1)):
    np.testing.assert_allclose(b, a, rtol=1e-5, atol=5e-6)


def _bf16(a) -> np.ndarray:
  """``a`` rounded to bfloat16, as float64."""
  return np.asarray(jnp.asarray(a, jnp.float32).astype(jnp.bfloat16).astype(jnp.float32),
                    np.float64)


def test_mixed_matmul_rounds_operands_and_gradients_to_bfloat16_only():
  """Values: bfloat16 operands multiplied exactly and summed in float32; gradients: the
  output gradient rounded to bfloat16 as well (numpy's closed form on the rounded values)."""
  x = jax.random.normal(jax.random.key(0), (3, 5, 24))
  w = jax.random.normal(jax.random.key(1), (24, 10))
  c = jax.random.normal(jax.random.key(2), (3, 5, 10))
  y = dots.mixed_matmul(x, w)
  assert y.dtype == jnp.float32 and y.shape == (3, 5, 10)
  np.testing.assert_allclose(y, _bf16(x) @ _bf16(w), rtol=1e-5, atol=1e-5)
  # Not float32's product: the rounding to bfloat16 shows.
  assert np.abs(np.asarray(y) - np.asarray(x, np.float64) @ np.asarray(w, np.float64)).max() \
      > 1e-3
  dx, dw = jax.grad(lambda x, w: jnp.sum(c * dots.mixed_matmul(x, w)), argnums=(0, 1))(x, w)
  assert dx.dtype == dw.dtype == jnp.float32
  np.testing.assert_allclose(dx, _bf16(c) @ _bf16(w).T, rtol=1e-5, atol=1e-5)
  np.testing.assert_allclose(dw, np.einsum("bsm,bsn->mn", _bf16(x), _bf16(c)), rtol=1e-5,
                             atol=1e-4)
  # project_jointly's mixed form: the same products per kernel, and the same gradients.
  ks = (w[:, :4], w[:, 4:])
  ys = maskgit.project_jointly(x, ks, True)
  for yj, k in zip(ys, ks):
    np.testing.assert_allclose(yj, _bf16(x) @ _bf16(k), rtol=1e-5, atol=1e-5)
  gx, gk = jax.grad(lambda x, ks: sum(jnp.sum(cj * yj) for cj, yj in zip(
      (c[..., :4], c[..., 4:]), maskgit.project_jointly(x, ks, True))), argnums=(0, 1))(x, ks)
  np.testing.assert_allclose(gx, dx, rtol=1e-5, atol=1e-5)
  np.testing.assert_allclose(jnp.concatenate(gk, axis=1), dw, rtol=1e-5, atol=1e-4)


def test_float32_matmul_gradients_and_weight_gradient_form():
  """``matmul`` in float32: values and both gradients against float64 numpy; w's gradient is
  one contraction of x and the output gradient over their rows (``km,kn->mn``, the form
  XLA:CPU runs without copying x transposed), not autodiff's transposed form."""
  x = jax.random.normal(jax.random.key(0), (3, 5, 24))
  w = jax.random.normal(jax.random.key(1), (24, 10))
  c = jax.random.normal(jax.random.key(2), (3, 5, 10))
  x64, w64, c64 = (np.asarray(a, np.float64) for a in (x, w, c))
  y = dots.matmul(x, w)
  assert y.dtype == jnp.float32 and y.shape == (3, 5, 10)
  np.testing.assert_allclose(y, x64 @ w64, rtol=1e-5, atol=1e-5)
  loss = lambda x, w: jnp.sum(c * dots.matmul(x, w))  # noqa: E731
  dx, dw = jax.grad(loss, argnums=(0, 1))(x, w)
  assert dx.dtype == dw.dtype == jnp.float32
  np.testing.assert_allclose(dx, c64 @ w64.T, rtol=1e-5, atol=1e-5)
  np.testing.assert_allclose(dw, np.einsum("bsm,bsn->mn", x64, c64), rtol=1e-5, atol=1e-4)
  jaxpr = jax.make_jaxpr(jax.grad(loss, argnums=1))(x, w)
  dot_eqns = [e for e in jaxpr.jaxpr.eqns if e.primitive.name == "dot_general"]
  dw_dot, = [e for e in dot_eqns if e.outvars[0].aval.shape == (24, 10)]
  (lc, rc), _ = dw_dot.params["dimension_numbers"]
  assert tuple(lc) == tuple(rc) == (0,)
  assert dw_dot.invars[0].aval.shape == (15, 24)  # x's rows first: no transposed copy


def test_dense_and_rmsnorm_are_flax_layers_with_parameter_gradients_as_products():
  """``maskgit.Dense`` and ``maskgit.RMSNorm``: flax's variables (the same initial values from
  the same key) and forward values, bit for bit; gradients against float64 numpy and flax's
  own; and the bias and scale gradients computed as products, with no reduction over rows
  (autodiff's form, which XLA:CPU runs as a slow reduce-window: benchmarks/NOTES.md item 24)."""
  x = jax.random.normal(jax.random.key(0), (3, 5, 24))
  c = jax.random.normal(jax.random.key(2), (3, 5, 10))
  x64, c64 = np.asarray(x, np.float64), np.asarray(c, np.float64)
  rows = jax.random.normal(jax.random.key(4), (2, 7, 6))
  np.testing.assert_allclose(maskgit.column_sum(rows),
                             np.asarray(rows, np.float64).sum(axis=(0, 1)), rtol=1e-5,
                             atol=1e-5)
  ours, theirs = maskgit.dense(10, jnp.float32, "d"), nn.Dense(10, name="d")
  params = ours.init(jax.random.key(3), x)
  chex.assert_trees_all_equal(params, theirs.init(jax.random.key(3), x))
  params = jax.tree.map(lambda a: a + 0.1, params)  # a nonzero bias
  kernel, bias = (np.asarray(params["params"][n], np.float64) for n in ("kernel", "bias"))
  np.testing.assert_array_equal(ours.apply(params, x), theirs.apply(params, x))
  np.testing.assert_allclose(ours.apply(params, x), x64 @ kernel + bias, rtol=1e-5, atol=1e-5)
  dense_loss = lambda p, x: jnp.sum(c * ours.apply(p, x))  # noqa: E731
  g, gx = jax.grad(dense_loss, argnums=(0, 1))(params, x)
  np.testing.assert_allclose(g["params"]["bias"], c64.sum(axis=(0, 1)), rtol=1e-5, atol=1e-5)
  np.testing.assert_allclose(g["params"]["kernel"], np.einsum("bsm,bsn->mn", x64, c64),
                             rtol=1e-5, atol=1e-4)
  np.testing.assert_allclose(gx, c64 @ kernel.T, rtol=1e-5, atol=1e-5)

  norm, flax_norm = maskgit.RMSNorm(name="n"), nn.RMSNorm(name="n")
  nparams = norm.init(jax.random.key(5), x)
  chex.assert_trees_all_equal(nparams, flax_norm.init(jax.random.key(5), x))
  nparams = jax.tree.map(lambda a: a * jnp.linspace(0.5, 1.5, 24), nparams)
  np.testing.assert_array_equal(norm.apply(nparams, x), flax_norm.apply(nparams, x))
  scale = np.asarray(nparams["params"]["scale"], np.float64)
  r = 1 / np.sqrt(np.mean(x64 ** 2, axis=-1, keepdims=True) + 1e-6)
  np.testing.assert_allclose(norm.apply(nparams, x), x64 * r * scale, rtol=1e-5, atol=1e-6)
  cn = jax.random.normal(jax.random.key(6), x.shape)
  norm_loss = lambda m: lambda p, x: jnp.sum(cn * m.apply(p, x))  # noqa: E731
  gn, gnx = jax.grad(norm_loss(norm), argnums=(0, 1))(nparams, x)
  np.testing.assert_allclose(gn["params"]["scale"],
                             (np.asarray(cn, np.float64) * x64 * r).sum(axis=(0, 1)),
                             rtol=1e-5, atol=1e-5)
  chex.assert_trees_all_close((gn, gnx), jax.grad(norm_loss(flax_norm), argnums=(0, 1))(
      nparams, x), rtol=1e-5, atol=1e-5)

  # The parameter gradients' form: no reduce_sum of (3, 5, F) over its rows to (F,).
  for loss, p in ((dense_loss, params), (norm_loss(norm), nparams)):
    jaxpr = jax.make_jaxpr(jax.grad(loss))(p, x).jaxpr
    row_sums = [e for e in all_eqns(jaxpr) if e.primitive.name == "reduce_sum"
                and tuple(e.params["axes"]) == (0, 1) and e.outvars[0].aval.ndim == 1]
    assert not row_sums, row_sums


def test_bfloat16_prior_trains_as_well_as_float32():
  """The quality check of ``stage2.matmul_dtype='bfloat16'``: the tiny prior trained 150 Adam
  steps on tokens that follow (class, position) with 10 % noise, the same data, init and
  masks in both dtypes, reaches the same held-out masked-token loss and accuracy."""
  rng = np.random.default_rng(0)
  def batch(n):
    y = rng.integers(0, C, n)
    clean = (2 * y[:, None] + np.arange(N)[None]) % K
    noise = rng.random((n, N)) < 0.1
    return jnp.asarray(np.where(noise, rng.integers(0, K, (n, N)), clean), jnp.int32), \
        jnp.asarray(y, jnp.int32)
  train = [batch(64) for _ in range(150)]
  test_tokens, test_y = batch(512)
  test_masked, test_mask = maskgit.random_mask(jax.random.key(9), test_tokens, K)
  result = {}
  for dtype in (jnp.float32, jnp.bfloat16):
    model = _tiny(dtype=dtype, n_layers=2)
    params = model.init(jax.random.key(0), train[0][0], train[0][1])
    tx = optax.adam(3e-3)
    def loss_fn(p, tokens, y, key, model=model):
      masked, mask = maskgit.random_mask(key, tokens, K)
      logits = model.apply(p, masked, y, train=True)
      return maskgit.masked_token_loss(logits, tokens, mask, 0.0)
    @jax.jit
    def step(p, o, tokens, y, key, loss_fn=loss_fn, tx=tx):
      g = jax.grad(loss_fn)(p, tokens, y, key)
      u, o = tx.update(g, o, p)
      return optax.apply_updates(p, u), o
    opt = tx.init(params)
    for i, (tokens, y) in enumerate(train):
      params, opt = step(params, opt, tokens, y, jax.random.key(i))
    logits = model.apply(params, test_masked, test_y)
    result[dtype] = (float(maskgit.masked_token_loss(logits, test_tokens, test_mask, 0.0)),
                     float(maskgit.masked_token_accuracy(logits, test_tokens, test_mask)))
  (loss32, acc32), (loss16, acc16) = result[jnp.float32], result[jnp.bfloat16]
  assert loss32 < 0.6 * np.log(K) and acc32 > 0.7  # the task was learnt
  assert abs(loss16 - loss32) < 0.05 * loss32 and abs(acc16 - acc32) < 0.02


def test_prior_projects_jointly_in_training_only(tiny):
  """The train-mode forward computes q, k, v with one (hidden, 3 * hidden) matmul per block
  (through project_jointly's custom VJP); inference keeps one matmul per head and kind."""
  model, params, _ = tiny
  tokens, cls = jnp.zeros((2, N), jnp.int32), jnp.zeros((2,), jnp.int32)
  def jaxpr(train):
    return str(jax.make_jaxpr(lambda p: model.apply(p, tokens, cls, train=train))(params))
  assert "name=project_jointly" in jaxpr(True)
  assert "name=project_jointly" not in jaxpr(False)


def test_self_attention_dropout_only_when_not_deterministic():
  x = jax.random.normal(jax.random.key(0), (2, 5, 16))
  model = maskgit.SelfAttention(2, 16, dropout_rate=0.5)
  params = model.init(jax.random.key(1), x)
  det = model.apply(params, x)
  np.testing.assert_allclose(det, maskgit.SelfAttention(2, 16).apply(params, x))
  drop = model.apply(params, x, deterministic=False, rngs={"dropout": jax.random.key(2)})
  assert drop.shape == det.shape and not np.allclose(drop, det)


def test_init_token_embeddings(tiny):
  _, params, _ = tiny
  codebook = jax.random.normal(jax.random.key(1), (K, CODE_DIM))
  new = maskgit.init_token_embeddings(params, codebook)
  table = new["params"]["token_embed"]["embedding"]
  old_table = params["params"]["token_embed"]["embedding"]
  np.testing.assert_array_equal(table[:K], codebook)
  np.testing.assert_array_equal(table[K], old_table[K])  # [MASK] row untouched
  assert not np.array_equal(old_table[:K], codebook)  # input not mutated
  np.testing.assert_array_equal(new["params"]["pos_embed"], params["params"]["pos_embed"])
  assert jax.tree.structure(new) == jax.tree.structure(params)
  inner = maskgit.init_token_embeddings(params["params"], codebook)
  np.testing.assert_array_equal(inner["token_embed"]["embedding"], table)
  with pytest.raises(ValueError):
    maskgit.init_token_embeddings(params, codebook[:-1])


@pytest.mark.parametrize("kind", maskgit.MASK_SCHEDULES)
def test_mask_ratio_schedule(kind):
  r = np.linspace(0, 1, 11)
  got = maskgit.mask_ratio_schedule(r, kind)
  want = {"cosine": np.cos(np.pi * r / 2), "linear": 1 - r, "square": 1 - r ** 2}[kind]
  np.testing.assert_allclose(got, want, atol=1e-12)
  assert got[0] == 1.0 and abs(got[-1]) < 1e-12
  assert np.all(np.diff(got) < 0)
  jgot = maskgit.mask_ratio_schedule(jnp.asarray(r, jnp.float32), kind)
  assert jgot.dtype == jnp.float32
  np.testing.assert_allclose(jgot, want, atol=1e-6)


def test_mask_ratio_schedule_rejects_unknown_kind():
  with pytest.raises(ValueError):
    maskgit.mask_ratio_schedule(0.5, "exp")


def test_mask_count():
  r = jnp.array([0.0, 0.5, 0.999999, 1 / 3])
  got = np.asarray(maskgit.mask_count(r, 40))
  np.testing.assert_array_equal(got[:3], [40, int(np.ceil(40 * np.cos(np.pi / 4))), 1])
  assert got[3] in (35, 36)  # ceil(40 * cos(pi / 6)) = ceil(34.64)


def test_random_mask():
  b, n, mask_id = 2000, 40, 99
  tokens = jax.random.randint(jax.random.key(2), (b, n), 0, 32)
  fn = jax.jit(maskgit.random_mask, static_argnums=2)
  masked, mask = fn(jax.random.key(3), tokens, mask_id)
  masked, mask, tokens = map(np.asarray, (masked, mask, tokens))
  assert masked.dtype == np.int32 and mask.dtype == bool
  np.testing.assert_array_equal(masked[mask], mask_id)
  np.testing.assert_array_equal(masked[~mask], tokens[~mask])
  counts = mask.sum(1)
  assert counts.min() >= 1 and counts.max() <= n
  # E[ceil(cos(pi r / 2) N)] for r ~ U(0, 1), by quadrature.
  r = (np.arange(100000) + 0.5) / 100000
  expected = np.ceil(np.cos(np.pi * r / 2) * n).mean()
  assert abs(counts.mean() - expected) < 0.5
  p_full = np.mean(np.ceil(np.cos(np.pi * r / 2) * n) == n)
  assert abs(np.mean(counts == n) - p_full) < 0.04
  # Positions chosen uniformly: every position masked about equally often.
  freq = mask.mean(0)
  assert np.abs(freq - freq.mean()).max() < 0.06
  # Different keys give different masks.
  _, mask2 = fn(jax.random.key(4), jnp.asarray(tokens), mask_id)
  assert not np.array_equal(mask, mask2)


def test_drop_class_labels():
  ids = jnp.asarray(np.arange(10000) % C, jnp.int32)
  key = jax.random.key(5)
  np.testing.assert_array_equal(maskgit.drop_class_labels(key, ids, C, 0.0), ids)
  np.testing.assert_array_equal(maskgit.drop_class_labels(key, ids, C, 1.0), C)
  out = np.asarray(maskgit.drop_class_labels(key, ids, C, 0.2))
  dropped = out == C
  assert abs(dropped.mean() - 0.2) < 0.02
  np.testing.assert_array_equal(out[~dropped], np.asarray(ids)[~dropped])
  np.testing.assert_array_equal(maskgit.drop_class_labels(key, ids * 0, 0, 0.2), 0)


def _np_masked_ce(logits, targets, mask, eps):
  k = logits.shape[-1]
  logp = logits - logits.max(-1, keepdims=True)
  logp = logp - np.log(np.exp(logp).sum(-1, keepdims=True))
  labels = (1 - eps) * np.eye(k)[targets] + eps / k
  ce = -(labels * logp).sum(-1)
  return ce[mask].mean()


def test_masked_token_loss_matches_numpy():
  rng = np.random.default_rng(0)
  logits = rng.normal(size=(3, 5, 7)).astype(np.float32) * 3
  targets = rng.integers(0, 7, size=(3, 5))
  mask = rng.random((3, 5)) < 0.5
  mask[0, 0] = True
  for eps in (0.0, 0.1):
    got = maskgit.masked_token_loss(jnp.asarray(logits), jnp.asarray(targets),
                                    jnp.asarray(mask), label_smoothing=eps)
    np.testing.assert_allclose(got, _np_masked_ce(logits.astype(np.float64), targets, mask,
                                                  eps), rtol=1e-5)
  # Unmasked positions are ignored.
  noisy = np.where(mask[..., None], logits, rng.normal(size=logits.shape) * 100)
  np.testing.assert_allclose(
      maskgit.masked_token_loss(jnp.asarray(noisy), jnp.asarray(targets), jnp.asarray(mask)),
      maskgit.masked_token_loss(jnp.asarray(logits), jnp.asarray(targets), jnp.asarray(mask)),
      rtol=1e-6)
  metrics = maskgit.masked_token_metrics(jnp.asarray(logits), jnp.asarray(targets),
                                         jnp.asarray(mask))
  want_acc = (logits.argmax(-1) == targets)[mask].mean()
  np.testing.assert_allclose(metrics["accuracy"], want_acc, rtol=1e-6)
  none = jnp.zeros((3, 5), bool)
  assert float(maskgit.masked_token_loss(jnp.asarray(logits), jnp.asarray(targets), none)) == 0


def test_short_training_reduces_loss(tiny):
  """30 AdamW steps on tokens that are a deterministic function of the class."""
  model, params, _ = tiny
  steps, b = 30, 48
  data_cls = np.arange(b) % C
  data_tok = jnp.asarray((data_cls[:, None] * 3 + np.arange(N)[None, :]) % K, jnp.int32)
  # Masks and dropped labels drawn up front (the helpers are tested above), keeping the
  # compiled step small: grad + AdamW only.
  rng = np.random.default_rng(0)
  masks = rng.random((steps + 1, b, N)) < rng.uniform(0.1, 1.0, (steps + 1, b, 1))
  masks[:, :, 0] = True
  cls = np.where(rng.random((steps + 1, b)) < 0.2, C, data_cls)
  masks, cls = jnp.asarray(masks), jnp.asarray(cls, jnp.int32)
  params = maskgit.init_token_embeddings(
      params, jax.random.normal(jax.random.key(1), (K, CODE_DIM)))
  tx = optax.adamw(3e-3, weight_decay=1e-5)

  def loss_fn(p, mask, c):
    inputs = jnp.where(mask, model.mask_id, data_tok)
    logits = model.apply(p, inputs, c, train=True)
    return maskgit.masked_token_loss(logits, data_tok, mask, 0.1)

  @jax.jit
  def train(p):
    def step(i, carry):
      p, s = carry
      grads = jax.grad(loss_fn)(p, masks[i], cls[i])
      updates, s = tx.update(grads, s, p)
      return optax.apply_updates(p, updates), s

    trained, _ = jax.lax.fori_loop(0, steps, step, (p, tx.init(p)))
    # Evaluated on a mask/label draw never trained on.
    return loss_fn(p, masks[steps], cls[steps]), loss_fn(trained, masks[steps], cls[steps])

  before, after = map(float, train(params))
  assert after < 0.7 * before, (before, after)


def test_take_rows_is_take_along_axis():
  x = jax.random.normal(jax.random.key(0), (3, 7, 5))
  idx = jnp.array([[6, 0, 2, 2], [1, 1, 1, 1], [5, 4, 3, 0]], jnp.int32)
  got = jax.jit(maskgit.take_rows)(x, idx)
  np.testing.assert_array_equal(got, jnp.take_along_axis(x, idx[..., None], axis=1))
  assert got.shape == (3, 4, 5)


@pytest.mark.parametrize("n_layers,prefix", [(1, False), (2, False), (2, True)])
def test_logits_at_positions_equal_full_logits(n_layers, prefix):
  """positions= gives the full call's logits at those positions; the other rows still act as
  keys and values (changing a token that is not asked for changes the asked-for logits)."""
  n_prefix, vocab = (3, 4) if prefix else (0, 0)
  model = _tiny(n_layers=n_layers, num_prefix_tokens=n_prefix, prefix_vocab=vocab)
  rng = np.random.default_rng(1)
  tokens = jnp.asarray(rng.integers(0, K + 1, (4, N)), jnp.int32)
  ids = jnp.array([0, 1, 2, 3], jnp.int32)
  pre = jnp.asarray(rng.integers(0, vocab, (4, n_prefix)), jnp.int32) if prefix else None
  params = model.init(jax.random.key(2), tokens, ids, prefix=pre)
  params = jax.tree.map(lambda a: a + 0.3 * jax.random.normal(jax.random.key(3), a.shape),
                        params)  # away from the small init, so every row matters
  positions = jnp.array([[5, 0, 3], [1, 2, 4], [0, 0, 5], [4, 3, 2]], jnp.int32)
  apply = jax.jit(lambda t, p=None: model.apply(params, t, ids, prefix=pre, positions=p))
  full = apply(tokens)
  part = apply(tokens, positions)
  assert full.shape == (4, N, K) and part.shape == (4, 3, K) and part.dtype == jnp.float32
  np.testing.assert_allclose(part, jnp.take_along_axis(full, positions[..., None], axis=1),
                             rtol=1e-5, atol=1e-5)
  other = tokens.at[0, 1].set((tokens[0, 1] + 1) % K)  # row 0 does not ask for position 1
  assert not np.allclose(apply(other, positions)[0], part[0], atol=1e-4)
  with pytest.raises(ValueError, match="positions must be"):
    model.apply(params, tokens, ids, prefix=pre, positions=positions[:2])


def _random_params(model, tokens, ids, pre):
  params = model.init(jax.random.key(2), tokens, ids, prefix=pre)
  return jax.tree.map(lambda a: a + 0.3 * jax.random.normal(jax.random.key(3), a.shape),
                      params)


@pytest.mark.parametrize("n_layers,prefix,positions,dtype", [
    (1, False, False, jnp.float32), (2, True, False, jnp.float32),
    (1, True, True, jnp.float32), (3, False, True, jnp.float32),
    (2, True, True, jnp.bfloat16)])
def test_first_block_table_gives_the_same_logits(n_layers, prefix, positions, dtype):
  """The first block's norm and q/k/v projections run on the table of distinct input rows
  and gathered: the logits of the direct computation, with prefix tokens, at positions=
  (the last block's query rows, the first block's when there is one block) and in bf16."""
  n_prefix, vocab = (3, 4) if prefix else (0, 0)
  kw = dict(n_layers=n_layers, num_prefix_tokens=n_prefix, prefix_vocab=vocab, dtype=dtype)
  direct, tabled = _tiny(first_block_table=False, **kw), _tiny(first_block_table=True, **kw)
  rng = np.random.default_rng(1)
  tokens = jnp.asarray(rng.integers(0, K + 1, (4, N)), jnp.int32)
  ids = jnp.array([0, 1, 2, 3], jnp.int32)
  pre = jnp.asarray(rng.integers(0, vocab, (4, n_prefix)), jnp.int32) if prefix else None
  params = _random_params(direct, tokens, ids, pre)
  where = jnp.array([[5, 0, 3], [1, 2, 4], [0, 0, 5], [4, 3, 2]], jnp.int32) if positions \
      else None
  want, got = (jax.jit(lambda t, m=m: m.apply(params, t, ids, prefix=pre, positions=where))(
      tokens) for m in (direct, tabled))
  assert got.shape == want.shape == (4, 3 if positions else N, K)
  tol = 1e-5 if dtype == jnp.float32 else 2e-2
  np.testing.assert_allclose(got, want, rtol=tol, atol=tol)
  if not prefix:  # a prefix passed to a model without prefix tokens is ignored, as before
    np.testing.assert_array_equal(
        tabled.apply(params, tokens, ids, prefix=jnp.zeros((4, 2), jnp.int32),
                     positions=where), tabled.apply(params, tokens, ids, positions=where))
  # Every input row still matters: another token, prefix token or class changes the output.
  for t, c, p in ((tokens.at[1, 2].set((tokens[1, 2] + 1) % K), ids, pre),
                  (tokens, ids.at[1].set(0), pre)) + (
                      ((tokens, ids, pre.at[1, 0].add(1) % vocab),) if prefix else ()):
    assert not np.allclose(tabled.apply(params, t, c, prefix=p, positions=where)[1], got[1],
                           atol=1e-3)


def _table_in_jaxpr(model, batch, train=False):
  """Whether the first block's query projection runs on table rows: a (T, hidden) @ (hidden,
  d) dot, T = (C + 1) + N (K + 1) (no prefix here)."""
  tokens = jnp.zeros((batch, N), jnp.int32)
  ids = jnp.zeros((batch,), jnp.int32)
  params = jax.eval_shape(model.init, jax.random.key(0), tokens, ids)  # shapes only
  jaxpr = jax.make_jaxpr(lambda p: model.apply(
      p, tokens, ids, train=train, rngs={"dropout": jax.random.key(1)}))(params)
  return f"f32[{C + 1 + N * (K + 1)},16]" in str(jaxpr)  # hidden 32, 2 heads: d = 16


def test_first_block_table_only_where_it_saves_work_and_not_with_dropout():
  rows = C + 1 + N * (K + 1)  # 58 distinct input rows; a batch of B has B * 7 positions
  auto = _tiny()
  assert not _table_in_jaxpr(auto, rows // (N + 1))  # 8 * 7 = 56 < 58 rows
  assert _table_in_jaxpr(auto, rows // (N + 1) + 1)  # 63 > 58
  assert _table_in_jaxpr(auto, 64, train=True)
  assert _table_in_jaxpr(_tiny(first_block_table=True), 1)
  assert not _table_in_jaxpr(_tiny(first_block_table=False), 64)
  assert not _table_in_jaxpr(_tiny(first_block_table=True, dropout=0.1), 64, train=True)
  assert _table_in_jaxpr(_tiny(first_block_table=True, dropout=0.1), 64, train=False)


def test_first_block_table_gives_the_same_gradients():
  """In training (no dropout) the gathered rows' gradients are summed back per table row:
  every parameter's gradient of the masked-token loss (class, prefix and token embeddings
  included) equals the direct computation's."""
  n_prefix, vocab = 3, 4
  kw = dict(n_layers=2, num_prefix_tokens=n_prefix, prefix_vocab=vocab)
  direct, tabled = _tiny(first_block_table=False, **kw), _tiny(first_block_table=True, **kw)
  rng = np.random.default_rng(5)
  tokens = jnp.asarray(rng.integers(0, K + 1, (6, N)), jnp.int32)
  target = jnp.asarray(rng.integers(0, K, (6, N)), jnp.int32)
  ids = jnp.asarray(rng.integers(0, C + 1, (6,)), jnp.int32)
  pre = jnp.asarray(rng.integers(0, vocab, (6, n_prefix)), jnp.int32)
  params = _random_params(direct, tokens, ids, pre)

  def grads(model):
    def loss(p):
      logits = model.apply(p, tokens, ids, train=True, prefix=pre)
      return maskgit.masked_token_loss(logits, target, tokens == K)
    return jax.jit(jax.grad(loss))(params)

  want, got = grads(direct), grads(tabled)
  for path, g in jax.tree_util.tree_leaves_with_path(got):
    w = functools.reduce(lambda t, k: t[k.key], path, want)
    np.testing.assert_allclose(g, w, rtol=1e-4, atol=1e-6, err_msg=jax.tree_util.keystr(path))
  # Not vacuous: the embeddings and the first block's projections get gradient.
  inner = got["params"]
  assert np.abs(inner["token_embed"]["embedding"]).sum() > 0
  assert np.abs(inner["block_0"]["attn"]["query"]["kernel"]).sum() > 0
