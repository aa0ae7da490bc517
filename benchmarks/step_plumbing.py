"""The stage-1 step with and without the two changes of benchmarks/NOTES.md item 10, built in
one process and timed in alternating rounds:

* ``norm``: the metrics' gradient norm as ``train_state.global_norm`` (behind an optimisation
  barrier) instead of ``optax.tree.norm``;
* ``copies``: the step compiled with region analysis in copy insertion (CPU) instead of no
  options.

Each form is forced whatever the variant's defaults (since item 12 the single-view steps use
neither: their default is 'before', the SSL steps' is 'both').

  python -m benchmarks.step_plumbing vibcreg,barlowtwins,vibcreg_lfhf 128 30
  # stage-1 variants, batch, timed rounds (L = 128; one call per form per round)

Prints the median / min step time of each form ('before', 'norm', 'copies', 'both') and the
number of parameter copies in each compiled step.
"""
import sys
from unittest import mock

import optax

from benchmarks import common, stage1_bench
from tsgen_jax import host_memory, stage1, trainer
from tsgen_jax import train_state as ts_lib

# form: (new gradient norm, step compiler options)
FORMS = {"before": (False, False), "norm": (True, False), "copies": (False, True),
         "both": (True, True)}


def steps(variant: str, batch: int, rounds: int) -> dict:
  """Whole stage-1 steps of ``variant`` in each form; {form: [seconds per step]}."""
  runs = {}
  for form, (new_norm, options) in FORMS.items():
    norm = ts_lib.global_norm if new_norm else optax.tree.norm
    opts = {"xla_cpu_copy_insertion_use_region_analysis": True} if options else {}
    with mock.patch.object(stage1, "grad_norm_fn", lambda ssl: norm), \
         mock.patch.object(trainer, "step_compiler_options", lambda *a, **k: opts):
      compiled, _, runs[form] = stage1_bench.warm_step(variant, batch)
    copies = compiled.as_text().count("copy(%state_params")
    print(f"{variant} {form}: {copies} parameter copies", flush=True)
  return common.alternate_calls(runs, rounds)


if __name__ == "__main__":
  host_memory.start()  # TSGEN_MALLOC=hugepages: restart once with huge-page malloc
  variants, batch, rounds = common.ab_args(sys.argv, __doc__, "benchmarks.step_plumbing",
                                           stage1_bench.VARIANTS)
  for v in variants:
    common.print_times(f"{v} L=128 B={batch} step", steps(v, batch, rounds))
