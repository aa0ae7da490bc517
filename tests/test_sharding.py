"""Mesh shardings: FSDP-style sharding of large state arrays over the 'model' axis."""

import os
import subprocess
import sys
import textwrap

import jax
import jax.numpy as jnp
import pytest
from jax.sharding import PartitionSpec as P

from conftest import simulated_cpu_devices_env
from tsgen_jax import sharding

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.mark.parametrize("shape,model,min_size,spec", [
    ((512, 256), 2, 2 ** 16, P("model")),  # largest dim first
    ((3, 3, 128, 256), 2, 2 ** 16, P(None, None, None, "model")),
    ((3, 3, 256, 256), 4, 2 ** 16, P(None, None, "model")),  # ties: the earlier dim
    ((255, 300), 2, 2 ** 16, P(None, "model")),  # largest not divisible: next one
    ((255, 257), 2, 2 ** 16, P()),  # nothing divisible: replicated
    ((128, 256), 2, 2 ** 16, P()),  # 32768 elements: below the threshold
    ((256, 256), 2, 2 ** 16, P("model")),  # exactly the threshold
    ((512, 256), 1, 2 ** 16, P()),  # no model axis
    ((), 2, 0, P()),  # scalars
    ((8,), 2, 4, P("model")),
])
def test_fsdp_spec(shape, model, min_size, spec):
  assert sharding.fsdp_spec(shape, model, min_size) == spec


def test_state_shardings_replicate_everything_when_model_is_1():
  mesh = sharding.make_mesh()
  state = {"w": jnp.zeros((512, 256)), "b": jnp.zeros(3), "step": jnp.zeros((), jnp.int32)}
  sh = sharding.state_shardings(state, mesh, fsdp_min_size=1)
  assert all(s.spec == P() for s in jax.tree.leaves(sh))
  placed = sharding.place_state(state, mesh)
  assert placed["w"].sharding.is_equivalent_to(sharding.replicated(mesh), 2)


FSDP_SCRIPT = textwrap.dedent("""
    import os, sys, tempfile
    sys.path.insert(0, {repo!r}); sys.path.insert(0, {tests!r})
    import jax, numpy as np
    import ml_collections
    from conftest import tiny_config
    from tsgen_jax import checkpoint as ckpt_lib, run as run_lib, sharding, stage1, trainer
    from tsgen_jax.data import BatchStream, load_dataset
    assert jax.device_count() == 8, jax.devices()
    sharding.FSDP_MIN_SIZE = 256  # the tiny model's larger kernels get sharded
    cfg = tiny_config()
    ds = load_dataset(cfg.dataset, 8)
    model_obj, state0, tx = run_lib.stage1_setup(cfg, ds)
    state0 = jax.device_get(state0)  # host copy: the steps donate their device buffers
    out = {{}}
    for data, model in ((1, 1), (4, 2)):
      mesh = sharding.make_mesh(ml_collections.ConfigDict(dict(data=data, model=model)))
      assert dict(mesh.shape) == dict(data=data, model=model)
      state = sharding.place_state(state0, mesh)
      stream = BatchStream(ds.train, 16, 0, sharding.data_sharding(mesh))
      fn = trainer.compile_step(stage1.make_train_step(model_obj, cfg.stage1, tx), mesh, state)
      for s in range(2):
        state, m = fn(state, stream.device_batch(s), jax.random.key(s))
      specs = [a.sharding.spec for a in jax.tree.leaves(state)]
      n_sharded = sum("model" in tuple(sp) for sp in specs)
      if model == 1:
        assert n_sharded == 0, specs
      else:
        # params and both Adam moments of every large kernel
        assert n_sharded >= 6 and n_sharded % 3 == 0, n_sharded
        big = [a for a in jax.tree.leaves(state.params) if a.size >= 256]
        assert all("model" in tuple(a.sharding.spec) for a in big)
        # Each device holds half of a sharded kernel.
        a = next(a for a in big if a.size >= 1024)
        assert a.addressable_shards[0].data.size * 2 == a.size
        # A sharded checkpoint restores onto the FSDP mesh and onto one device.
        ck = ckpt_lib.Checkpointer(tempfile.mkdtemp())
        ck.save(2, state)
        _, back = ck.restore(sharding.place_state(state0, mesh))
        assert back.params is not None
        for x, y in zip(jax.tree.leaves(back), jax.tree.leaves(state)):
          assert x.sharding.is_equivalent_to(y.sharding, x.ndim)
          np.testing.assert_array_equal(np.asarray(x), np.asarray(y))
        one = sharding.make_mesh(devices=jax.devices()[:1])
        _, back1 = ck.restore(sharding.place_state(state0, one))
        for x, y in zip(jax.tree.leaves(back1), jax.tree.leaves(state)):
          np.testing.assert_array_equal(np.asarray(x), np.asarray(y))
      out[model] = (float(m["loss"]), [np.asarray(a) for a in jax.tree.leaves(state)])
    assert abs(out[1][0] - out[2][0]) < 1e-5 * max(1, abs(out[1][0])), (out[1][0], out[2][0])
    worst = max(float(np.max(np.abs(a - b))) for a, b in zip(out[1][1], out[2][1]))
    assert worst < 1e-5, worst
    print("OK", out[1][0], out[2][0], worst)
""")


def test_fsdp_data4_model2_matches_single_device():
  env = simulated_cpu_devices_env(8)
  script = FSDP_SCRIPT.format(repo=REPO, tests=os.path.join(REPO, "tests"))
  r = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True,
                     timeout=600)
  assert r.returncode == 0 and "OK" in r.stdout, r.stdout + r.stderr[-3000:]
