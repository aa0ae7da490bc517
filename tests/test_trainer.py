"""Train-step plumbing shared by both stages: the gradient norm and the step's XLA options."""

import re

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from conftest import tiny_config

from tsgen_jax import run as run_lib
from tsgen_jax import sharding, stage1, trainer
from tsgen_jax import train_state as ts_lib
from tsgen_jax.data import BatchStream, load_dataset


def test_global_norm_matches_numpy_and_optax():
  rng = np.random.default_rng(0)
  tree = {"w": rng.normal(size=(33, 7)).astype(np.float32),
          "b": [rng.normal(size=(5,)).astype(np.float32), np.float32(-2.5)],
          "h": rng.normal(size=(4, 3)).astype(jnp.bfloat16)}
  want = np.sqrt(sum(np.sum(np.asarray(x, np.float64) ** 2) for x in jax.tree.leaves(tree)))
  got = jax.jit(ts_lib.global_norm)(jax.tree.map(jnp.asarray, tree))
  assert got.dtype == jnp.float32 and got.shape == ()
  np.testing.assert_allclose(float(got), want, rtol=1e-6)
  # optax squares a bfloat16 leaf in bfloat16; on float32 leaves the two agree.
  f32 = {"w": tree["w"], "b": tree["b"]}
  np.testing.assert_allclose(float(ts_lib.global_norm(f32)), float(optax.tree.norm(f32)),
                             rtol=1e-6)
  assert float(ts_lib.global_norm({})) == 0.0


def test_global_norm_reads_its_leaves_behind_an_optimization_barrier():
  # Without the barrier XLA merges the norm's g * g with Adam's g ** 2 (benchmarks/NOTES.md
  # item 10); the barrier in the traced function is what keeps them apart.
  jaxpr = jax.make_jaxpr(ts_lib.global_norm)({"a": jnp.ones((3, 4)), "b": jnp.ones(2)})
  assert "optimization_barrier" in str(jaxpr)


def _two_vibcreg_steps(compiler_options):
  return _stage1_steps(compiler_options, **{"stage1.ssl.method": "vibcreg",
                                                "stage1.ssl.weight": 1.0})


def _stage1_steps(compiler_options, steps=2, **overrides):
  """(compiled HLO text, (state, metrics) after ``steps`` steps) of a tiny stage-1 step."""
  cfg = tiny_config(**overrides)
  ds = load_dataset(cfg.dataset, 8)
  mesh = sharding.make_mesh()
  model, state, tx = run_lib.stage1_setup(cfg, ds)
  state = sharding.replicate_tree(state, mesh)
  stream = BatchStream(ds.train, 16, 0, sharding.data_sharding(mesh))
  fn = trainer.compile_step(stage1.make_train_step(model, cfg.stage1, tx), mesh, state,
                            compiler_options=compiler_options,
                            ssl=cfg.stage1.ssl.method != "none")
  hlo = fn.lower(state, stream.device_batch(0), jax.random.key(0)).compile().as_text()
  for s in range(steps):
    state, metrics = fn(state, stream.device_batch(s), jax.random.key(s))
  return hlo, jax.device_get((state, metrics))


def test_single_view_steps_keep_the_plain_norm_and_no_region_analysis():
  # benchmarks/NOTES.md item 12: the barrier and region analysis only in the SSL steps.
  assert stage1.grad_norm_fn(True) is ts_lib.global_norm
  assert stage1.grad_norm_fn(False) is optax.tree.norm
  mesh = sharding.make_mesh()
  convs_in_eigen = {"xla_cpu_experimental_ynn_fusion_type": trainer.STAGE1_YNN_FUSION_TYPES}
  assert trainer.step_compiler_options(mesh) == convs_in_eigen
  assert trainer.step_compiler_options(mesh, "stage1", ssl=False) == convs_in_eigen
  plain, ssl = tiny_config(), tiny_config(**{"stage1.ssl.method": "vibcreg"})
  assert not run_lib.loop_config(plain, "w", "stage1", plain.stage1).ssl
  assert run_lib.loop_config(ssl, "w", "stage1", ssl.stage1).ssl
  assert not run_lib.loop_config(ssl, "w", "stage2", ssl.stage2).ssl


def test_step_compiler_options_drop_the_parameter_copies_and_change_no_result():
  opts = trainer.step_compiler_options(sharding.make_mesh(), "stage1", ssl=True)
  assert opts == {"xla_cpu_copy_insertion_use_region_analysis": True,
                  "xla_cpu_experimental_ynn_fusion_type": trainer.STAGE1_YNN_FUSION_TYPES}
  hlo_default, (state_a, metrics_a) = _two_vibcreg_steps(None)
  hlo_plain, (state_b, metrics_b) = _two_vibcreg_steps(
      {"xla_cpu_experimental_ynn_fusion_type": trainer.STAGE1_YNN_FUSION_TYPES})
  # The option reached XLA: without it every donated parameter is copied first.
  assert hlo_plain.count("copy(%state_params") > 0
  assert hlo_default.count("copy(%state_params") == 0
  # Bit-identical state (params, BatchNorm / IterNorm statistics, Adam moments) and metrics.
  for a, b in zip(jax.tree.leaves(state_a), jax.tree.leaves(state_b)):
    np.testing.assert_array_equal(a, b)
  assert metrics_a.keys() == metrics_b.keys()
  for k in metrics_a:
    np.testing.assert_array_equal(metrics_a[k], metrics_b[k])


@pytest.mark.skipif(jax.default_backend() != "cpu", reason="XLA:CPU's layout rewriting")
def test_compile_steps_rolls_the_loop_with_every_convolution_in_the_eigen_layout():
  """trainer.compile_steps is a rolled loop (compiled once whatever k), and the stage-1
  model's gradient convolutions stay NHWC x HWIO inside it (models/conv.py, canonical):
  XLA:CPU would run any other layout there in its naive kernels (benchmarks/NOTES.md 22)."""
  cfg = tiny_config()
  ds = load_dataset(cfg.dataset, 8)
  mesh = sharding.make_mesh()
  model, state, tx = run_lib.stage1_setup(cfg, ds)
  state = sharding.replicate_tree(state, mesh)
  stream = BatchStream(ds.train, 16, 0, sharding.data_sharding(mesh))
  fn = trainer.compile_steps(stage1.make_train_step(model, cfg.stage1, tx), mesh, state, 3)
  batches = tuple(stream.device_batch(s) for s in range(3))
  hlo = fn.lower(state, batches, jax.random.split(jax.random.key(0), 3)).compile().as_text()
  assert " while(" in hlo
  labels = re.findall(r" convolution\([^\n]*?dim_labels=([^,]*)", hlo)
  assert len(labels) > 20 and set(labels) == {"b01f_01io->b01f"}, set(labels)


def _convolutions_in_and_out_of_ynnpack(hlo: str) -> tuple[int, int]:
  """(convolutions inside YNNPACK fusions, the other convolutions) of compiled HLO text."""
  ynn_bodies = set(re.findall(r"calls=%?([\w.\-]+)[^\n]*__ynn_fusion", hlo))
  blocks = re.split(r"\n(?=\S)", hlo)  # one block per computation
  inside = sum(b.count(" convolution(") for b in blocks
               if b.split(" ", 1)[0].lstrip("%") in ynn_bodies)
  return inside, hlo.count(" convolution(") - inside


def test_stage1_steps_run_their_convolutions_outside_ynnpack_with_the_same_results():
  # benchmarks/NOTES.md item 19: XLA's multi-threaded convolutions instead of YNNPACK's.
  # (At dim 16 XLA keeps every convolution out of YNNPACK by itself; at 32 it does not.)
  hlo_ours, (_, metrics_a) = _stage1_steps(None, 1, **{"stage1.dim": 32})
  hlo_ynn, (_, metrics_b) = _stage1_steps({}, 1, **{"stage1.dim": 32})
  inside, outside = _convolutions_in_and_out_of_ynnpack(hlo_ours)
  assert inside == 0 and outside > 20
  assert _convolutions_in_and_out_of_ynnpack(hlo_ynn)[0] > 20
  assert '"__ynn_fusion"' in hlo_ours  # the dots and reductions stay in YNNPACK
  # The first step's loss terms and gradient norm agree up to float rounding. (Parameters
  # after Adam steps are no fair comparison: Adam's first updates are +-lr wherever a gradient
  # is near zero, whatever the rounding decided.)
  # The gradient norm differs by 2.2e-4 relative here: the rounding of the convolutions'
  # sums, amplified by BatchNorm over 16 rows; each convolution alone is as exact either way
  # (test_eigen_convolutions_match_float64).
  assert metrics_a.keys() == metrics_b.keys()
  for k in metrics_a:
    np.testing.assert_allclose(metrics_a[k], metrics_b[k], rtol=1e-3 if k == "grad_norm" else
                               1e-5, err_msg=k)


def test_eigen_convolutions_match_float64():
  """A 3 x 3 convolution's output and both gradients, compiled with the stage-1 steps'
  option and with XLA's defaults, against a float64 numpy sum over the kernel taps."""
  rng = np.random.default_rng(0)
  x = rng.standard_normal((16, 5, 8, 32)).astype(np.float32)
  w = (rng.standard_normal((3, 3, 32, 24)) * 0.2).astype(np.float32)
  g = rng.standard_normal((16, 5, 8, 24)).astype(np.float32)
  fwd = lambda x, w: jax.lax.conv_general_dilated(x, w, (1, 1), ((1, 1), (1, 1)),  # noqa
                                                  dimension_numbers=("NHWC", "HWIO", "NHWC"))
  x64, w64, g64 = (a.astype(np.float64) for a in (x, w, g))
  xp = np.pad(x64, ((0, 0), (1, 1), (1, 1), (0, 0)))
  y_ref, dw_ref, dxp = np.zeros(g.shape), np.zeros(w.shape), np.zeros(xp.shape)
  for i in range(3):
    for j in range(3):
      y_ref += np.einsum("bhwc,co->bhwo", xp[:, i:i + 5, j:j + 8], w64[i, j])
      dw_ref[i, j] = np.einsum("bhwc,bhwo->co", xp[:, i:i + 5, j:j + 8], g64)
      dxp[:, i:i + 5, j:j + 8] += np.einsum("bhwo,co->bhwc", g64, w64[i, j])
  dx_ref = dxp[:, 1:-1, 1:-1]
  for opts in ({"xla_cpu_experimental_ynn_fusion_type": trainer.STAGE1_YNN_FUSION_TYPES}, {}):
    y, (dx, dw) = jax.jit(lambda x, w, g: (fwd(x, w), jax.vjp(fwd, x, w)[1](g)),
                          compiler_options=opts)(x, w, g)
    for got, ref in ((y, y_ref), (dx, dx_ref), (dw, dw_ref)):
      np.testing.assert_allclose(got, ref, rtol=1e-5, atol=1e-5 * np.abs(ref).max())


def _stage2_step_two_ways():
  from tsgen_jax import stage2
  from tsgen_jax.models import stage1 as stage1_model
  cfg = tiny_config()
  ds = load_dataset(cfg.dataset, 8)
  s1_model = stage1_model.from_config(cfg, 1, cfg.dataset.length)
  s1_vars = stage1.init_variables(s1_model, jax.random.key(0), 1, cfg.dataset.length, False)
  mesh = sharding.make_mesh()
  out = {}
  for stage in ("stage1", "stage2"):
    priors, specs, state, tx = run_lib.stage2_setup(cfg, ds, s1_model, s1_vars)
    state = sharding.replicate_tree(state, mesh)
    n_tok = sum(s.num_tokens for s in specs)
    rng = np.random.default_rng(0)
    batch = {"x": jnp.asarray(rng.integers(0, 8, (16, n_tok)), jnp.int32),
             "y": jnp.asarray(rng.integers(0, ds.num_classes, (16,)), jnp.int32)}
    step = stage2.make_train_step(priors, specs, cfg.stage2, ds.num_classes, tx)
    fn = trainer.compile_step(step, mesh, state, stage=stage)
    hlo = fn.lower(state, batch, jax.random.key(2)).compile().as_text()
    for s in range(3):
      state, metrics = fn(state, batch, jax.random.key(s))
    out[stage] = hlo, jax.device_get((state.params, metrics))
  return out


def test_stage2_steps_use_ynnpack_for_dots_only_with_the_same_results():
  opts = trainer.step_compiler_options(sharding.make_mesh(), "stage2")
  assert opts["xla_cpu_experimental_ynn_fusion_type"] == "LIBRARY_FUSION_TYPE_DOT"
  assert opts["xla_cpu_copy_insertion_use_region_analysis"] is True
  # With bfloat16 matmuls (stage2.matmul_dtype), no YNNPACK fusion at all.
  mixed = trainer.step_compiler_options(sharding.make_mesh(), "stage2", mixed=True)
  assert mixed == dict(opts, xla_cpu_experimental_ynn_fusion_type="")
  bf16 = tiny_config(**{"stage2.matmul_dtype": "bfloat16"})
  assert run_lib.loop_config(bf16, "w", "stage2", bf16.stage2).mixed
  assert not run_lib.loop_config(bf16, "w", "stage1", bf16.stage1).mixed
  assert not run_lib.loop_config(tiny_config(), "w", "stage2", bf16.stage2).mixed
  out = _stage2_step_two_ways()
  (hlo1, (params1, m1)), (hlo2, (params2, m2)) = out["stage1"], out["stage2"]
  # The option reached XLA: fewer YNNPACK fusions (the elementwise and reduction ones go).
  assert 0 < hlo2.count('"__ynn_fusion"') < hlo1.count('"__ynn_fusion"')
  # Three steps later, the same parameters and loss up to float rounding.
  np.testing.assert_allclose(m1["loss"], m2["loss"], rtol=1e-5)
  for a, b in zip(jax.tree.leaves(params1), jax.tree.leaves(params2)):
    np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6)
