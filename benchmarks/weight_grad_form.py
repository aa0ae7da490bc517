"""The prior's train step with its matmuls' weight gradients in autodiff's form and as
``maskgit.matmul`` computes them (``km,kn->mn``, the default), built in one process and timed
in alternating rounds, as the training loop runs it (K steps per call).

  python -m benchmarks.weight_grad_form default,lfhf 10 12
  # priors, steps per call K, timed rounds

Priors: ``default``, one prior over 40 tokens at batch 256 (the benchmark table's
``stage2_train_b256`` shapes), and ``lfhf``, the main config's LF and HF priors at batch 128.
The ``autodiff`` form swaps ``maskgit.matmul`` and ``maskgit.dense`` for a plain einsum and
flax's ``nn.Dense`` while its step is traced (autodiff then emits the weight gradient as
``kn,km->nm``, for which XLA:CPU copies the activations transposed first). Prints each form's
compile time, the first call's mean loss (equal up to float rounding) and the median / min
time per step (benchmarks/NOTES.md item 23 quotes the output).
"""
import sys

import flax.linen as nn
import jax
import jax.numpy as jnp

from benchmarks import common, stage2_bench
from tsgen_jax.models import maskgit

PRIORS = {"default": (256, False), "lfhf": (128, True)}
USAGE = "usage: python -m benchmarks.weight_grad_form default,lfhf K ROUNDS"


def _autodiff_dense(features, dtype, name):
  return nn.Dense(features, dtype=dtype, name=name)


def _autodiff_matmul(x, w, mixed=False):
  del mixed  # float32 only
  return jnp.einsum("...m,mn->...n", x, w)


FORMS = {"autodiff": (_autodiff_dense, _autodiff_matmul),
         "km_kn": (maskgit.dense, maskgit.matmul)}


def calls_for(prior: str, k: int) -> dict:
  """{form: blocking call of k train steps on carried state}; prints compile time and loss."""
  batch, lfhf = PRIORS[prior]
  calls = {}
  for form, (dense, matmul) in FORMS.items():
    saved = maskgit.dense, maskgit.matmul
    maskgit.dense, maskgit.matmul = dense, matmul
    try:
      jitted, state, args = stage2_bench.build_train(batch, lfhf=lfhf, steps_per_call=k)
      compiled, compile_s, _, _ = common.compile_fn(jitted, state, *args)
    finally:
      maskgit.dense, maskgit.matmul = saved
    call = common.stateful_call(compiled, state, *args)
    _, metrics = compiled(jax.tree.map(jnp.copy, state), *args)
    print(f"{prior} {form}: compile {compile_s:.2f} s, first call's mean loss "
          f"{float(jnp.mean(metrics['loss'])):.6f}", flush=True)
    calls[form] = call
  return calls


def main(argv):
  priors, k, rounds = common.ab_args(argv, USAGE, "weight_grad_form", tuple(PRIORS))
  if k < 2:
    raise SystemExit("weight_grad_form: K must be at least 2 (the training loop's form)")
  for p in priors:
    calls = calls_for(p, k)
    for call in calls.values():
      call()
    times = common.alternate_calls(calls, rounds)
    common.print_times(f"{p} (per step, {k} per call)",
                       {f: [t / k for t in ts] for f, ts in times.items()})


if __name__ == "__main__":
  main(sys.argv)
