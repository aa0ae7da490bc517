"""The prior's train step with the attention's queries, keys and values projected per head
or jointly (``models/maskgit.project_jointly``), built in one process and timed in
alternating rounds.

  python -m benchmarks.joint_projection default,lfhf 256 12
  # priors (default: one prior over 40 tokens, the table's row; lfhf: the default config's
  # LF and HF priors), batch, timed rounds

Forms: ``per_head`` (one matmul per head and kind, 6 per block: the code before item 20),
``joint_autodiff`` (one matmul, its gradient by autodiff), ``joint`` (one matmul, the
per-kernel gradients of ``project_jointly``'s custom VJP: the code). Prints the median / min
step time of each form (benchmarks/NOTES.md item 20 quotes the output).
"""
import sys
from unittest import mock

import jax.numpy as jnp

from benchmarks import common, stage2_bench
from tsgen_jax import host_memory
from tsgen_jax.models import maskgit

PRIORS = ("default", "lfhf")


def _per_head(x, kernels):
  return tuple(jnp.einsum("bsm,md->bsd", x, k) for k in kernels)


FORMS = {"per_head": _per_head,
         "joint_autodiff": maskgit.project_jointly.fun,  # the function under the custom VJP
         "joint": maskgit.project_jointly}


def steps(prior: str, batch: int, rounds: int) -> dict:
  """{form: [seconds per train step]} for the prior's step in each form."""
  calls = {}
  for form, fn in FORMS.items():
    with mock.patch.object(maskgit, "project_jointly", fn):
      jitted, state, args = stage2_bench.build_train(batch, lfhf=prior == "lfhf")
      compiled, _, _, _ = common.compile_fn(jitted, state, *args)
    calls[form] = common.stateful_call(compiled, state, *args)
    calls[form]()
  return common.alternate_calls(calls, rounds)


if __name__ == "__main__":
  host_memory.start()  # TSGEN_MALLOC=hugepages: restart once with huge-page malloc
  priors, batch, rounds = common.ab_args(sys.argv, __doc__, "benchmarks.joint_projection",
                                         PRIORS)
  for p in priors:
    common.print_times(f"stage2 {p} B={batch} step", steps(p, batch, rounds))
