"""The stage-1 step with and without ``models/conv.tap_products_conv`` (a convolution with
few output channels, the decoder's last one, as one matrix product and shifted sums), built in
one process and timed in alternating rounds, as the training loop runs it (K steps per call).

  python -m benchmarks.tap_products plain,lfhf,vibcreg 10 12
  # stage-1 variants (or ``layer``), steps per call K (1: one step per call), timed rounds

Variants are ``stage1_bench.VARIANTS`` at B = 128, L = 128; ``layer`` times the decoder's
last convolution alone at those shapes (the (3, 2) kernel, 64 -> 2 channels over a (128, 5,
32) grid, even-phase padding): forward and both gradients, K ignored. Forms: ``convolution``
(``tap_products_conv`` swapped out while the step is traced: XLA:CPU's Eigen convolutions,
as before benchmarks/NOTES.md item 25) and ``tap_products`` (the code as it is). Prints each
form's compile time and first call's loss (equal up to float rounding), then the median /
min time per step (item 25 quotes the output).
"""
import sys
from unittest import mock

import jax
import jax.numpy as jnp

from benchmarks import common, stage1_bench
from tsgen_jax import sharding, trainer
from tsgen_jax.models import conv as conv_lib
from tsgen_jax.models import vqvae as vqvae_lib

FORMS = {"convolution": lambda conv: conv, "tap_products": vqvae_lib.tap_products_conv}
USAGE = "usage: python -m benchmarks.tap_products plain,lfhf,vibcreg|layer K ROUNDS"


def step_calls(variant: str, k: int) -> dict:
  """{form: blocking call of k stage-1 train steps on carried state}; prints compile time and
  the first call's loss."""
  calls = {}
  for form, wrap in FORMS.items():
    with mock.patch.object(vqvae_lib, "tap_products_conv", wrap):
      cfg = stage1_bench.make_config(variant, 128)
      jitted, state, args = stage1_bench.build_from_config(cfg, steps_per_call=k)
      compiled, compile_s, _, _ = common.compile_fn(jitted, state, *args)
    _, metrics = compiled(jax.tree.map(jnp.copy, state), *args)
    print(f"{variant} {form}: compile {compile_s:.2f} s, first call's mean loss "
          f"{float(jnp.mean(metrics['loss'])):.6f}", flush=True)
    calls[form] = common.stateful_call(compiled, state, *args)
  return calls


def layer_calls() -> dict:
  """{form: blocking call of the decoder's last convolution, forward and both gradients}."""
  kx, kw, kg = jax.random.split(jax.random.key(0), 3)
  x = jax.random.normal(kx, (128, 5, 32, 64))
  w = jax.random.normal(kw, (3, 2, 64, 2)) * 0.1
  g = jax.random.normal(kg, (128, 5, 32, 2))
  padding = ((1, 1), (1, 0))
  options = trainer.step_compiler_options(sharding.make_mesh(), "stage1")
  calls = {}
  for form, wrap in FORMS.items():
    conv = wrap(conv_lib.chunked_wgrad_conv(128, canonical=True))
    fn = lambda x, w, conv=conv: conv(x, w, (1, 1), padding,  # noqa: E731
                                      dimension_numbers=("NHWC", "HWIO", "NHWC"))
    f = jax.jit(lambda x, w, g, fn=fn: jax.vjp(fn, x, w)[1](g))
    compiled = f.lower(x, w, g).compile(compiler_options=options)
    calls[form] = lambda c=compiled: jax.block_until_ready(c(x, w, g))
  return calls


def main(argv):
  variants, k, rounds = common.ab_args(argv, USAGE, "tap_products",
                                       (*stage1_bench.VARIANTS, "layer"))
  for v in variants:
    calls = layer_calls() if v == "layer" else step_calls(v, k)
    for call in calls.values():
      call()
    times = common.alternate_calls(calls, rounds)
    per = 1 if v == "layer" else k
    label = "layer, forward + gradients" if v == "layer" else f"{v} (per step, {k} per call)"
    common.print_times(label, {f: [t / per for t in ts] for f, ts in times.items()}, 2)


if __name__ == "__main__":
  main(sys.argv)
