"""A benchmarked train step compiled with extra XLA options on top of
``trainer.step_compiler_options``, several option sets built in one process and timed in
alternating rounds.

  python -m benchmarks.compile_options plain 12 default,loop_emitters,concurrency_scheduler
  # step (a stage1_bench variant at B = 128, or stage2 at B = 256), timed rounds, option sets

Option sets: the names of OPTION_SETS; a None value removes the option that
``step_compiler_options`` sets (``ynn_default``: XLA's own YNNPACK fusion kinds, i.e. the
stage-1 steps' convolutions in YNNPACK as before item 19). Prints the compile time and the
median / min step time per set (benchmarks/NOTES.md quotes the output).
"""
import sys
from unittest import mock

from benchmarks import common, stage1_bench, stage2_bench
from tsgen_jax import host_memory, trainer

OPTION_SETS = {
    "default": {},
    "loop_emitters": {"xla_cpu_use_fusion_emitters": False},
    "concurrency_scheduler": {"xla_cpu_enable_concurrency_optimized_scheduler": True},
    "fast_math": {"xla_cpu_enable_fast_math": True},
    "vector_width_512": {"xla_cpu_prefer_vector_width": 512},
    "onednn": {"xla_cpu_use_onednn": True},
    "onednn_custom_call": {"xla_cpu_use_onednn": True,
                           "xla_cpu_experimental_onednn_custom_call": True},
    "xnnpack": {"xla_cpu_use_xnnpack": True},
    "ynn_default": {"xla_cpu_experimental_ynn_fusion_type": None},
    "ynn_dots": {"xla_cpu_experimental_ynn_fusion_type": "LIBRARY_FUSION_TYPE_DOT"},
    "ynn_dots_reduce": {"xla_cpu_experimental_ynn_fusion_type":
                        trainer.STAGE1_YNN_FUSION_TYPES},
    "ynn_reduce": {"xla_cpu_experimental_ynn_fusion_type": "LIBRARY_FUSION_TYPE_REDUCE"},
    "ynn_none": {"xla_cpu_experimental_ynn_fusion_type": ""},
    "no_tree_reduction": {"xla_disable_hlo_passes": "tree_reduction_rewriter"},
}


def build(step: str, extra: dict):
  """(compiled, compile seconds, call) for ``step`` compiled with ``extra`` options added."""
  base = trainer.step_compiler_options
  options = lambda mesh, stage="stage1", ssl=False, mixed=False: {  # noqa: E731
      k: v for k, v in {**base(mesh, stage, ssl, mixed), **extra}.items() if v is not None}
  with mock.patch.object(trainer, "step_compiler_options", options):
    if step == "stage2":
      jitted, state, args = stage2_bench.build_train(256)
    else:
      jitted, state, args = stage1_bench.build(step, 128)
  compiled, compile_s, _, _ = common.compile_fn(jitted, state, *args)
  call = common.stateful_call(compiled, state, *args)
  call()
  return compiled, compile_s, call


if __name__ == "__main__":
  host_memory.start()  # TSGEN_MALLOC=hugepages: restart once with huge-page malloc
  if len(sys.argv) != 4:
    sys.exit(__doc__)
  step, rounds, names = sys.argv[1], int(sys.argv[2]), sys.argv[3].split(",")
  unknown = [n for n in names if n not in OPTION_SETS]
  if unknown:
    sys.exit(f"compile_options: unknown option set(s) {unknown}; one of {list(OPTION_SETS)}")
  calls = {}
  for name in names:
    _, compile_s, calls[name] = build(step, OPTION_SETS[name])
    print(f"{name}: compile {compile_s:.1f} s", flush=True)
  common.print_times(step, common.alternate_calls(calls, rounds), 0)
