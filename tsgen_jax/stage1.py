"""Stage 1: train the (optionally self-supervised) VQ-VAE tokenizer.

``train_step(state, batch, rng) -> (state, metrics)`` is one pure function for every variant:
views are augmented inside the step (``ssl.method != 'none'``), the original series goes
through quantisation and decoding, and the SSL loss on the projected views is added with
weight ``ssl.weight``.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import optax

from tsgen_jax import train_state as ts_lib
from tsgen_jax.models import stage1 as model_lib
from tsgen_jax.models import vq as vq_lib

MUTABLE = ("batch_stats", "vq")


def mse(a, b):
  """Mean squared error over all elements, in float32."""
  return jnp.mean((a.astype(jnp.float32) - b.astype(jnp.float32)) ** 2)


def ssl_loss_fn(ssl_cfg):
  """The configured SSL loss ``(z1 (N, D), z2 (N, D)) -> scalar``, or None."""
  if ssl_cfg.method == "none":
    return None
  from tsgen_jax import losses
  if ssl_cfg.method == "barlowtwins":
    loss = functools.partial(losses.barlow_twins_loss, lambda_offdiag=ssl_cfg.barlow_lambda)
    if ssl_cfg.barlow_per_dim:
      return lambda z1, z2: loss(z1, z2) / z1.shape[-1]
    return loss
  if ssl_cfg.method == "vibcreg":
    return functools.partial(losses.vibcreg_loss, lam=ssl_cfg.vib_lambda, mu=ssl_cfg.vib_mu,
                             nu=ssl_cfg.vib_nu)
  return None


def view_fn(ssl_cfg):
  """The augmentation pipeline making one view: ``(key, x (B, C, L)) -> (B, C, L)``."""
  from tsgen_jax import augment
  return augment.make_view_fn(ssl_cfg.augmentations, ssl_cfg.aug)


def compute_loss(out, x, branch_names, s1_cfg, ssl_fn=None):
  """The stage-1 objective from a model output dict. Returns (loss, metrics)."""
  vq = s1_cfg.vq
  m = {"recon_time": mse(x, out["x_hat"]), "recon_tf": mse(out["s"], out["s_hat"])}
  commit = sum(out[f"{n}/commit_loss"] for n in branch_names)
  codebook = sum(out[f"{n}/codebook_loss"] for n in branch_names)
  m["commit"] = commit
  loss = (s1_cfg.recon_time_weight * m["recon_time"] + s1_cfg.recon_tf_weight * m["recon_tf"]
          + vq.commitment_weight * commit)
  if not vq.ema:
    m["codebook"] = codebook
    loss = loss + vq.codebook_weight * codebook
  if ssl_fn is not None:
    m["ssl"] = ssl_fn(out["proj1"].astype(jnp.float32), out["proj2"].astype(jnp.float32))
    loss = loss + s1_cfg.ssl.weight * m["ssl"]
    if "aug/x_hat" in out:
      aug = (mse(out["aug/x"], out["aug/x_hat"]) + mse(out["aug/s"], out["aug/s_hat"])
             + vq.commitment_weight * sum(out[f"aug/{n}/commit_loss"] for n in branch_names))
      if not vq.ema:
        aug = aug + vq.codebook_weight * sum(out[f"aug/{n}/codebook_loss"] for n in branch_names)
      m["aug_recon"] = aug
      loss = loss + s1_cfg.ssl.aug_recon_weight * aug
  for n in branch_names:
    m[f"perplexity_{n}" if len(branch_names) > 1 else "perplexity"] = out[f"{n}/perplexity"]
    m[f"usage_{n}" if len(branch_names) > 1 else "usage"] = out[f"{n}/usage"]
  m["loss"] = loss
  return loss, m


def grad_norm_fn(ssl: bool):
  """The metrics' gradient norm, ``tree -> float32 scalar``: ``train_state.global_norm`` (behind
  an optimisation barrier) in the SSL steps, where it saves a 64 MB array per projector kernel,
  ``optax.tree.norm`` in the single-view ones, where the barrier measured 6-9 % slower on the
  AMD EPYC machine (benchmarks/NOTES.md items 10 and 12)."""
  return ts_lib.global_norm if ssl else optax.tree.norm


def make_train_step(model: model_lib.Stage1Model, s1_cfg, tx):
  """The pure train step for ``model`` under the ``config.stage1`` block."""
  ssl_fn = ssl_loss_fn(s1_cfg.ssl)
  make_view = view_fn(s1_cfg.ssl) if ssl_fn is not None else None
  branches = model.vqvae.branch_names
  view_stats = s1_cfg.ssl.view_bn_stats

  def train_step(state: ts_lib.TrainState, batch, rng):
    x = batch["x"]
    k1, k2, k_vq = jax.random.split(rng, 3)
    x1 = x2 = None
    if make_view is not None:
      x1, x2 = make_view(k1, x), make_view(k2, x)

    def loss_fn(params):
      variables = {"params": params, **state.model_state}
      mutable, rngs = list(state.model_state), {"vq": k_vq}
      if x1 is None or view_stats:
        out, new_ms = model.apply(variables, x, x1, x2, train=True, mutable=mutable, rngs=rngs)
      else:
        # Two applies from the same variables: the encoder's running statistics (and the EMA
        # codebook) from the x pass only; the projector's from the views pass.
        out, new_ms = model.apply(variables, x, train=True, mutable=mutable, rngs=rngs)
        views, view_ms = model.apply(variables, x1, x2, True, method="ssl_views",
                                     mutable=mutable, rngs=rngs)
        out.update(views)
        new_ms = {**new_ms, "batch_stats": {**new_ms["batch_stats"],
                                            "projector": view_ms["batch_stats"]["projector"]}}
      if x1 is not None:
        out["aug/x"] = x1
      loss, metrics = compute_loss(out, x, branches, s1_cfg, ssl_fn)
      return loss, (metrics, new_ms)

    (_, (metrics, new_ms)), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params)
    updates, opt_state = tx.update(grads, state.opt_state, state.params)
    params = optax.apply_updates(state.params, updates)
    metrics["grad_norm"] = grad_norm_fn(ssl_fn is not None)(grads)
    new_state = state.replace(step=state.step + 1, params=params, model_state=new_ms,
                              opt_state=opt_state)
    return new_state, metrics

  return train_step


def init_variables(model: model_lib.Stage1Model, key, num_channels: int, length: int,
                   ssl: bool):
  """Initial variables {'params', 'batch_stats', 'vq'?} for (C, L) series."""
  x = jnp.zeros((2, num_channels, length), jnp.float32)
  views = (x, x) if ssl else (None, None)
  k_params, k_vq = jax.random.split(key)
  # Jitted: an eager init dispatches every op of the (wide, two-view) model separately.
  init = jax.jit(lambda rngs, x, v1, v2: model.init(rngs, x, v1, v2, train=False))
  return init({"params": k_params, "vq": k_vq}, x, *views)


def kmeans_init(model, variables, x, key, iters: int):
  """Replaces every codebook with k-means centroids of the encoder outputs of ``x``."""
  z = model.apply(variables, x, train=False, method="encode")
  variables = jax.tree.map(lambda a: a, variables)  # shallow copies of the dicts
  for i, (name, zb) in enumerate(sorted(z.items())):
    flat = zb.reshape(-1, zb.shape[-1])
    k = model.vqvae.codebook_size
    centroids = vq_lib.kmeans(jax.random.fold_in(key, i), flat, k, iters)
    if model.vqvae.ema:
      vq_vars = variables["vq"]["vqvae"][name]["vq"]
      vq_vars["codebook"] = centroids
      vq_vars["embed_sum"] = jnp.array(centroids, copy=True)
      vq_vars["cluster_size"] = jnp.ones_like(vq_vars["cluster_size"])
    else:
      variables["params"]["vqvae"][name]["vq"]["codebook"] = centroids
  return variables


def create_state(cfg, model, num_channels: int, length: int, first_batch=None):
  """Fresh TrainState and optimiser for stage 1 (k-means codebook init when configured)."""
  s1 = cfg.stage1
  key = jax.random.key(cfg.seed)
  variables = init_variables(model, key, num_channels, length, s1.ssl.method != "none")
  variables = jax.tree.map(jnp.asarray, flax_unfreeze(variables))
  if s1.vq.kmeans_init and first_batch is not None:
    variables = kmeans_init(model, variables, first_batch, jax.random.fold_in(key, 1),
                            s1.vq.kmeans_iters)
  tx = ts_lib.make_optimizer(s1.lr, s1.weight_decay, s1.num_steps, s1.warmup_steps)
  params = variables.pop("params")
  return ts_lib.create(params, variables, tx), tx


def flax_unfreeze(tree):
  """Plain nested dicts from flax's variable containers."""
  if hasattr(tree, "items"):
    return {k: flax_unfreeze(v) for k, v in tree.items()}
  return tree
