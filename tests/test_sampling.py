"""Tests for MaskGIT iterative decoding and classifier-free guidance."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from tsgen_jax import sampling
from tsgen_jax.models import maskgit

K, N, B = 5, 12, 3
MASK = K


_BASE = 2.0 * np.random.default_rng(42).standard_normal((N, K)).astype(np.float32)


def _table_logits_fn(tokens, class_ids):
  """Fake model: a fixed random (N, K) table plus a bonus for token == class id."""
  bonus = 3.0 * jax.nn.one_hot(class_ids, K)[:, None, :]
  return jnp.asarray(_BASE)[None] + bonus + 0.0 * tokens[..., None]


@functools.lru_cache(maxsize=None)
def _decoder(logits_fn=_table_logits_fn, **kw):
  """A jitted decoder, cached so that tests share compilations."""
  return jax.jit(functools.partial(sampling.iterative_decode, logits_fn, num_tokens=N,
                                   mask_id=MASK, **kw))


@pytest.mark.parametrize("kind", maskgit.MASK_SCHEDULES)
def test_mask_schedule(kind):
  t, T, n = np.arange(10), 10, 40
  r = (t + 1) / T
  ratio = {"cosine": np.cos(np.pi * r / 2), "linear": 1 - r, "square": 1 - r ** 2}[kind]
  want = np.maximum(np.floor(n * ratio + 1e-9), 1).astype(int)
  want[-1] = 0
  got = sampling.mask_schedule(t, T, n, kind)
  np.testing.assert_array_equal(got, want)
  assert np.all(np.diff(got) <= 0) and got[0] < n and np.all(got[:-1] >= 1)
  traced = jax.jit(lambda t: sampling.mask_schedule(t, T, n, kind))(jnp.arange(10))
  np.testing.assert_array_equal(traced, want)
  assert sampling.mask_schedule(0, 1, n, kind) == 0
  if kind == "linear":
    np.testing.assert_array_equal(got, [36, 32, 28, 24, 20, 16, 12, 8, 4, 0])
  if kind == "cosine":
    assert got[0] == 39 and got[4] == 28  # floor(40 cos(pi/4)) = floor(28.28)


def test_decode_follows_schedule_and_never_changes_fixed_tokens():
  T = 6
  decode = _decoder(num_steps=T, return_history=True)
  ids = jnp.array([0, 1, 4], jnp.int32)
  tokens, history = decode(jax.random.key(0), ids)
  tokens, history = np.asarray(tokens), np.asarray(history)
  assert tokens.shape == (B, N) and tokens.dtype == np.int32 and history.shape == (T, B, N)
  masked = (history == MASK).sum(-1)  # (T, B)
  want = sampling.mask_schedule(np.arange(T), T, N)
  np.testing.assert_array_equal(masked, np.repeat(want[:, None], B, 1))
  for t in range(1, T):
    fixed = history[t - 1] != MASK
    np.testing.assert_array_equal(history[t][fixed], history[t - 1][fixed])
  np.testing.assert_array_equal(tokens, history[-1])
  assert tokens.min() >= 0 and tokens.max() < K

  same, _ = decode(jax.random.key(0), ids)
  np.testing.assert_array_equal(same, tokens)
  other, _ = decode(jax.random.key(1), ids)
  assert not np.array_equal(other, tokens)


def test_single_step_samples_everything():
  tokens, history = _decoder(num_steps=1, return_history=True)(
      jax.random.key(0), jnp.zeros((B,), jnp.int32))
  assert history.shape == (1, B, N)
  assert not np.any(np.asarray(tokens) == MASK)
  assert np.asarray(tokens).max() < K


def test_most_confident_tokens_are_fixed_first():
  """No Gumbel noise: peaked positions are fixed before flat ones."""
  groups = np.repeat([0, 1, 2], 4)  # positions 0-3: 1 allowed token, 4-7: 2, 8-11: 4
  np.random.default_rng(0).shuffle(groups)
  allowed = np.arange(K)[None, :] < (2 ** groups)[:, None]
  table = jnp.asarray(np.where(allowed, 0.0, -1e9), jnp.float32)

  def fn(tokens, class_ids):
    del class_ids
    return jnp.broadcast_to(table, tokens.shape + (K,))

  decode = _decoder(fn, num_steps=3, schedule="linear", choice_temperature=0.0,
                    return_history=True)
  _, history = decode(jax.random.key(3), jnp.zeros((B,), jnp.int32))
  fixed = np.asarray(history) != MASK  # (3, B, N)
  for b in range(B):
    np.testing.assert_array_equal(fixed[0, b], groups == 0)  # 8 of 12 still masked
    np.testing.assert_array_equal(fixed[1, b], groups <= 1)  # 4 of 12 still masked
    assert fixed[2, b].all()


def test_mask_by_confidence():
  conf = jnp.array([[0.5, -1.0, jnp.inf, 0.1], [3.0, 2.0, 1.0, 0.0]])
  got = sampling.mask_by_confidence(conf, jnp.array([2, 1]))
  np.testing.assert_array_equal(got, [[False, True, False, True], [False, False, False, True]])


def test_guided_logits():
  cond, null = jnp.array([1.0, 4.0]), jnp.array([3.0, 0.0])
  np.testing.assert_array_equal(sampling.guided_logits(cond, null, 0.0), null)
  np.testing.assert_array_equal(sampling.guided_logits(cond, null, 1.0), cond)
  np.testing.assert_array_equal(sampling.guided_logits(cond, null, 2.0), [-1.0, 8.0])


@pytest.mark.parametrize("scale,null_id,want_batch", [
    (1.0, K, B),  # s = 1: no unconditional pass
    (3.0, None, B),  # model without classes: no unconditional pass
    (3.0, K, 2 * B),  # guidance: conditional and null rows in one call
])
def test_logits_fn_calls_per_step(scale, null_id, want_batch):
  calls = []

  def fn(tokens, class_ids):
    calls.append((tokens.shape, class_ids.shape))
    return _table_logits_fn(tokens, class_ids)

  out = jax.eval_shape(
      lambda key, ids: sampling.iterative_decode(fn, key, ids, N, MASK, num_steps=4,
                                                 guidance_scale=scale, null_class_id=null_id),
      jax.random.key(0), jnp.zeros((B,), jnp.int32))
  assert out.shape == (B, N) and out.dtype == jnp.int32
  assert calls == [((want_batch, N), (want_batch,))]  # the loop body is traced once


def test_guidance_scales():
  null_id = K - 1  # the fake model's "null class" favours token K - 1
  ids = jnp.array([0, 1, 2], jnp.int32)
  key = jax.random.key(5)
  # A traced scale always takes the guided path: one compilation for every s.
  guided = jax.jit(lambda key, ids, s: sampling.iterative_decode(
      _table_logits_fn, key, ids, N, MASK, num_steps=6, guidance_scale=s,
      null_class_id=null_id, return_history=True))
  plain = _decoder(num_steps=6, return_history=True)
  s0, _ = guided(key, ids, 0.0)
  uncond, _ = plain(key, jnp.full_like(ids, null_id))
  np.testing.assert_array_equal(s0, uncond)  # s = 0: purely unconditional
  strong, _ = guided(key, ids, 20.0)
  np.testing.assert_array_equal(strong, np.repeat(np.asarray(ids)[:, None], N, 1))


def test_decode_with_tiny_transformer():
  model = maskgit.MaskGITTransformer(codebook_size=K, num_tokens=N, num_classes=2,
                                     hidden_dim=32, n_layers=1, n_heads=2, code_dim=8)
  ids = jnp.array([0, 1, 2], jnp.int32)
  # Random parameters of the right shapes, without compiling model.init.
  shapes = jax.eval_shape(model.init, jax.random.key(0), jnp.zeros((B, N), jnp.int32), ids)
  rng = np.random.default_rng(0)
  params = jax.tree.map(lambda x: jnp.asarray(0.2 * rng.standard_normal(x.shape), x.dtype),
                        shapes)

  @jax.jit
  def sample(params, key):
    fn = sampling.model_logits_fn(model, params)
    return sampling.iterative_decode(fn, key, ids, model.num_tokens, model.mask_id,
                                     num_steps=4, guidance_scale=2.0,
                                     null_class_id=model.null_class_id)

  tokens = np.asarray(sample(params, jax.random.key(1)))
  assert tokens.shape == (B, N) and tokens.min() >= 0 and tokens.max() < K
  np.testing.assert_array_equal(sample(params, jax.random.key(1)), tokens)
  assert not np.array_equal(sample(params, jax.random.key(2)), tokens)


@pytest.mark.parametrize("scale", [1.0, 2.0])
def test_first_step_per_class_equals_full_batch(scale):
  """Step 0 computed once per class id and gathered == step 0 on the whole batch."""
  model = maskgit.MaskGITTransformer(codebook_size=K, num_tokens=N, num_classes=2,
                                     hidden_dim=32, n_layers=1, n_heads=2, code_dim=8)
  ids = jnp.array([0, 1, 2, 1, 0, 0, 2, 1], jnp.int32)  # 2 = the null class
  shapes = jax.eval_shape(model.init, jax.random.key(0), jnp.zeros((1, N), jnp.int32),
                          ids[:1])
  rng = np.random.default_rng(0)
  params = jax.tree.map(lambda x: jnp.asarray(0.5 * rng.standard_normal(x.shape), x.dtype),
                        shapes)
  calls = []

  def fn(tokens, class_ids):
    calls.append(tokens.shape[0])
    return model.apply(params, tokens, class_ids)

  def run(first):
    return jax.jit(lambda key: sampling.iterative_decode(
        fn, key, ids, N, MASK, num_steps=5, guidance_scale=scale,
        null_class_id=model.null_class_id, return_history=True,
        first_step_class_ids=first))(jax.random.key(3))

  full, full_hist = run(None)
  per_class, per_class_hist = run(3)
  loop_batch = len(ids) * (1 if scale == 1.0 else 2)
  assert calls == [loop_batch, 3, loop_batch]  # without: loop only; with: step 0, then loop
  np.testing.assert_array_equal(per_class_hist, full_hist)
  np.testing.assert_array_equal(per_class, full)


def test_sample_categorical_matches_probabilities():
  p = np.array([0.1, 0.0, 0.6, 0.3], np.float32)
  n = 100_000
  log_probs = jnp.broadcast_to(jnp.log(jnp.asarray(p)), (n, 4))
  s = np.asarray(jax.jit(sampling.sample_categorical)(jax.random.key(0), log_probs))
  assert s.shape == (n,) and s.dtype == np.int32
  freq = np.bincount(s, minlength=4) / n
  assert freq[1] == 0.0  # probability 0 is never drawn
  np.testing.assert_allclose(freq, p, atol=5 * np.sqrt(0.25 / n))  # 5 sigma
  # Deterministic per key; rows with a one-hot distribution return that category.
  np.testing.assert_array_equal(sampling.sample_categorical(jax.random.key(0), log_probs), s)
  onehot = jnp.log(jax.nn.one_hot(jnp.array([3, 0, 2]), 4))
  np.testing.assert_array_equal(sampling.sample_categorical(jax.random.key(1), onehot), [3, 0, 2])


@pytest.mark.parametrize("n", [5, 40, 300])  # 300: the sorting path
def test_stable_rank_and_inverse_permutation(n):
  rng = np.random.default_rng(n)
  x = rng.integers(0, 4, (6, n)).astype(np.float32)  # many ties
  x[:, ::3] = np.inf
  x[1, :2] = -np.inf
  want = np.argsort(np.argsort(x, axis=-1, kind="stable"), axis=-1, kind="stable")
  rank = jax.jit(sampling.stable_rank)(jnp.asarray(x))
  assert rank.dtype == jnp.int32
  np.testing.assert_array_equal(rank, want)
  inv = jax.jit(sampling.inverse_permutation)(rank)
  np.testing.assert_array_equal(inv, np.argsort(x, axis=-1, kind="stable"))
  np.testing.assert_array_equal(np.take_along_axis(np.asarray(rank), np.asarray(inv), -1),
                                np.broadcast_to(np.arange(n), (6, n)))


@pytest.mark.parametrize("kind", maskgit.MASK_SCHEDULES)
def test_unknown_counts_match_decoding(kind):
  T = 7
  decode = _decoder(num_steps=T, schedule=kind, return_history=True)
  _, history = decode(jax.random.key(0), jnp.array([0, 1, 2], jnp.int32))
  masked_before = np.concatenate([np.full((1, B), N), (np.asarray(history) == MASK).sum(-1)])
  want = masked_before[:T]  # (T, B): [MASK] tokens at the start of each step
  got = sampling.unknown_counts(T, N, kind)
  np.testing.assert_array_equal(np.broadcast_to(got[:, None], want.shape), want)


def test_query_segments_are_optimal():
  unknown = np.array([40, 39, 38, 35, 32, 28, 23, 18, 12, 6])

  def cost(runs):
    return sum(c * (b - a) for a, b, c in runs)

  def brute(start, k):  # every split of [start, T) into at most k runs
    t_end, best = len(unknown), None
    for m in range(1, k + 1):
      for cuts in __import__("itertools").combinations(range(start + 1, t_end), m - 1):
        edges = [start, *cuts, t_end]
        runs = [(a, b, int(unknown[a])) for a, b in zip(edges[:-1], edges[1:])]
        best = cost(runs) if best is None else min(best, cost(runs))
    return best

  for start in (0, 1):
    for k in (1, 2, 3, 5, 10, 12):
      runs = sampling.query_segments(unknown, start, k)
      assert len(runs) <= k and runs[0][0] == start and runs[-1][1] == len(unknown)
      assert all(r[1] == s[0] for r, s in zip(runs[:-1], runs[1:]))
      assert all(c == unknown[a] >= unknown[b - 1] for a, b, c in runs)
      assert cost(runs) == brute(start, k)
  assert sampling.query_segments(unknown, 1, 1) == [(1, 10, 39)]
  assert sampling.query_segments(unknown, 10, 3) == []
  with pytest.raises(ValueError, match="max_segments"):
    sampling.query_segments(unknown, 0, 0)


def test_unknown_positions_and_scatter_back():
  tokens = jnp.array([[MASK, 1, MASK, 2, MASK], [0, 1, 2, 3, MASK]], jnp.int32)
  positions, rank = sampling.unknown_positions(tokens, MASK, 3)
  np.testing.assert_array_equal(positions, [[0, 2, 4], [4, 0, 1]])
  np.testing.assert_array_equal(rank, [[0, 3, 1, 4, 2], [1, 2, 3, 4, 0]])
  values = jnp.arange(2 * 3 * 2, dtype=jnp.float32).reshape(2, 3, 2) + 1
  full = np.asarray(sampling.scatter_positions(values, rank))
  assert full.shape == (2, 5, 2)
  for b in range(2):
    for p in range(3):
      np.testing.assert_array_equal(full[b, positions[b, p]], values[b, p])
  np.testing.assert_array_equal(full[0, [1, 3]], 0.0)
  np.testing.assert_array_equal(full[1, [2, 3]], 0.0)


def _positions_logits_fn(tokens, class_ids, positions=None):
  """A fake model whose logits depend on every token: the table, the class bonus, and a
  term from the mean token id of the row."""
  full = _table_logits_fn(tokens, class_ids) + 0.3 * jnp.sin(
      jnp.mean(tokens, axis=-1, keepdims=True)[..., None] * jnp.arange(K))
  if positions is None:
    return full
  return jnp.take_along_axis(full, positions[..., None], axis=1)


@pytest.mark.parametrize("segments", [1, 2, 3, 20])
@pytest.mark.parametrize("scale,first", [(1.0, None), (2.0, None), (1.0, 5), (2.0, 5)])
def test_masked_logits_segments_decode_the_same_tokens(segments, scale, first):
  """Asking only for the [MASK] positions' logits decodes the same tokens, with and without
  guidance and the per-class first step; with the static counts from the schedule."""
  ids = jnp.array([0, 1, 4, 1, 0, 0, 4, 1], jnp.int32)  # 8 rows > 5 ids: first step used
  calls = []

  def fn(tokens, class_ids, positions=None):
    calls.append(None if positions is None else positions.shape[1])
    return _positions_logits_fn(tokens, class_ids, positions)

  def run(seg):
    calls.clear()
    out = jax.jit(lambda key: sampling.iterative_decode(
        fn, key, ids, N, MASK, num_steps=8, guidance_scale=scale, null_class_id=K - 1,
        return_history=True, first_step_class_ids=first,
        masked_logits_segments=seg))(jax.random.key(4))
    return out, list(calls)

  (want, want_hist), _ = run(0)
  (got, got_hist), got_calls = run(segments)
  np.testing.assert_array_equal(got_hist, want_hist)
  np.testing.assert_array_equal(got, want)
  start = 0 if first is None else 1
  runs = sampling.decode_loops(8, N, "cosine", start, segments)
  assert runs == sampling.query_segments(sampling.unknown_counts(8, N), start, segments)
  want_calls = ([None] if first is not None else []) + [
      None if cap >= N else cap for _, _, cap in runs]
  assert got_calls == want_calls  # one trace per loop; the per-class first step is full
