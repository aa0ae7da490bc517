"""The prior's train step with its parameter gradients in three forms, built in one process
and timed in alternating rounds, as the training loop runs it (K steps per call).

  python -m benchmarks.weight_grad_form default,lfhf 10 12
  # priors, steps per call K, timed rounds

Priors: ``default``, one prior over 40 tokens at batch 256 (the benchmark table's
``stage2_train_b256`` shapes), and ``lfhf``, the main config's LF and HF priors at batch 128.
Forms, each swapped in for ``maskgit.dense``, ``maskgit.matmul`` and ``maskgit.RMSNorm``
while its step is traced:

- ``autodiff``: flax's ``nn.Dense`` and ``nn.RMSNorm`` and a plain einsum for the attention's
  output projection; autodiff emits each weight gradient as ``kn,km->nm`` (XLA:CPU copies
  the activations transposed first) and each bias or scale gradient as a sum over the rows
  (a slow ``reduce-window`` kernel on XLA:CPU);
- ``km_kn``: the weight gradients as one ``km,kn->mn`` contraction (``maskgit.matmul``,
  benchmarks/NOTES.md item 23), the bias and scale gradients still autodiff's sums;
- ``column_sum``: the code as it is (the default): ``km,kn->mn`` weight gradients, and the
  bias and scale gradients as products (``maskgit.Dense``, ``maskgit.RMSNorm``, item 24).

Prints each form's compile time, the first call's mean loss (equal up to float rounding) and
the median / min time per step (benchmarks/NOTES.md items 23 and 24 quote the output).
"""
import functools
import sys

import flax.linen as nn
import jax
import jax.numpy as jnp

from benchmarks import common, stage2_bench
from tsgen_jax.models import maskgit

PRIORS = {"default": (256, False), "lfhf": (128, True)}
USAGE = "usage: python -m benchmarks.weight_grad_form default,lfhf K ROUNDS"


def _matmul_dot_general(lhs, rhs, dimension_numbers, precision=None,
                        preferred_element_type=None):
  """``lax.dot_general`` for ``nn.Dense(dot_general=...)``: lhs (..., M) x rhs (M, N) by
  ``maskgit.matmul`` (float32)."""
  del dimension_numbers, precision, preferred_element_type  # nn.Dense's: (..., M) x (M, N)
  return maskgit.matmul(lhs, rhs)


def _flax_dense(features, dtype, name, dot_general=jax.lax.dot_general):
  return nn.Dense(features, dtype=dtype, name=name, dot_general=dot_general)


def _einsum_matmul(x, w, mixed=False):
  del mixed  # float32 only
  return jnp.einsum("...m,mn->...n", x, w)


FORMS = {"autodiff": (_flax_dense, _einsum_matmul, nn.RMSNorm),
         "km_kn": (functools.partial(_flax_dense, dot_general=_matmul_dot_general),
                   maskgit.matmul, nn.RMSNorm),
         "column_sum": (maskgit.dense, maskgit.matmul, maskgit.RMSNorm)}


def calls_for(prior: str, k: int) -> dict:
  """{form: blocking call of k train steps on carried state}; prints compile time and loss."""
  batch, lfhf = PRIORS[prior]
  calls = {}
  for form, (dense, matmul, norm) in FORMS.items():
    saved = maskgit.dense, maskgit.matmul, maskgit.RMSNorm
    maskgit.dense, maskgit.matmul, maskgit.RMSNorm = dense, matmul, norm
    try:
      jitted, state, args = stage2_bench.build_train(batch, lfhf=lfhf, steps_per_call=k)
      compiled, compile_s, _, _ = common.compile_fn(jitted, state, *args)
    finally:
      maskgit.dense, maskgit.matmul, maskgit.RMSNorm = saved
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
