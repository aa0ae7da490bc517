"""Runs the benchmark suite: ``python -m benchmarks.run [--only NAME,...] [--out PATH]``.

Prints a table and writes ``benchmarks/results.json`` (a list of rows: name, median_ms,
min_ms, max_ms, gflops_per_s, fraction_of_peak, compile_s, peak_mem_mb, ...). Every timing
is the median of >= 20 calls after warm-up. ``fraction_of_peak`` is relative to a 2048^3
float32 jnp.dot measured in the same run (row ``matmul_f32_2048``); row ``stream_f32_512mb``
measures the memory bandwidth (``gb_per_s``) in the same run, for the memory-bound rows, and
``stream_f32_512mb_new_output`` the same stream into freshly allocated memory. Row
``matmul_bf16_2048`` is the same matmul with bfloat16 operands and float32 results.

Names: stage1_{plain,barlowtwins,vibcreg,lfhf,vibcreg_lfhf}_b{128,32}, stage1_plain_L{128,512,
1024}_b{32,128,512}, stage1_{plain,barlowtwins,vibcreg,lfhf}_b128_k10 and
stage2_train_b256_k10 (the target steps as the training loop runs them: 10 steps per call,
``steps_per_call``'s default; times per step), stage2_train_b{256,32}, stage2_train_lfhf_b128
(the default config's stage-2 step), sample_256_t10_s{1,2}, stage2_train_b256_bf16 and
sample_256_t10_s1_bf16 (with ``stage2.matmul_dtype='bfloat16'``), augment_<name>,
augment_default_views, data_pipeline (both host/device rows). ``--only`` also accepts a
prefix ending in '*' (e.g. ``stage1_*``).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys

import jax

from benchmarks import augment_bench, common, data_bench, stage1_bench, stage2_bench
from tsgen_jax import host_memory

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT_DIR = os.path.dirname(HERE)

ALL_NAMES = ([f"stage1_{v}_b{b}" for b in (128, 32) for v in stage1_bench.VARIANTS]
             + [f"stage1_plain_L{l}_b{b}" for l in (128, 512, 1024) for b in (32, 128, 512)]
             + [f"stage1_{v}_b128_k{stage1_bench.LOOP_K}" for v in stage1_bench.LOOP_VARIANTS]
             + ["stage2_train_b256", "stage2_train_b32",
                f"stage2_train_b256_k{stage2_bench.LOOP_K}", "stage2_train_lfhf_b128",
                "sample_256_t10_s1",
                "sample_256_t10_s2", "stage2_train_b256_bf16", "sample_256_t10_s1_bf16"]
             + [f"augment_{n}" for n in list(__import__("tsgen_jax.augment").augment.AUGMENTATIONS)
                + ["default_views"]]
             + ["data_pipeline_host_batch", "data_pipeline_device_batch"])


# The targets: (row, "ms" upper bound | "series_per_s" lower bound, value).
def is_loop_row(name: str, target: str) -> bool:
  """Whether row ``name`` is target row ``target``'s step timed as the training loop runs it
  (``target + '_k' + steps per call``, e.g. stage1_plain_b128_k10)."""
  return name.startswith(target + "_k")


TARGETS = [("stage1_plain_b128", "ms", 110), ("stage1_barlowtwins_b128", "ms", 600),
           ("stage1_vibcreg_b128", "ms", 600), ("stage1_lfhf_b128", "ms", 300),
           ("stage2_train_b256", "ms", 500), ("sample_256_t10_s1", "series_per_s", 120)]
TARGET_ROWS = [name for name, _, _ in TARGETS]
# The target steps as the training loop runs them; BENCHMARKS.md's verdicts use these where
# they exist. Measured right after the target rows, before the memory-heavy scaling rows: in
# the same process after those, the plain loop step took 86.5 ms against 73.2 ms in a fresh
# one (benchmarks/NOTES.md item 25).
LOOP_ROWS = [n for n in ALL_NAMES for t in TARGET_ROWS if is_loop_row(n, t)]


def select(only: str | None) -> set[str] | None:
  if not only:
    return None
  out = set()
  for tok in only.split(","):
    tok = tok.strip()
    if tok.endswith("*"):
      out |= {n for n in ALL_NAMES if n.startswith(tok[:-1])}
    elif tok == "data_pipeline":
      out |= {"data_pipeline_host_batch", "data_pipeline_device_batch"}
    elif tok in ALL_NAMES or tok.startswith("matmul"):
      out.add(tok)
    else:
      sys.exit(f"unknown benchmark {tok!r}; known: {', '.join(ALL_NAMES)}")
  return out


def machine() -> dict:
  """Where the run happens: host platform, CPU, core count, jax version, accelerators (as
  'N x KIND' when jax's default devices are not CPUs), commit, uncommitted changes, load."""
  info = {"platform": platform.platform(), "cpu_count": os.cpu_count(), "jax": jax.__version__}
  devices = jax.devices()
  if devices[0].platform != "cpu":
    info["accelerator"] = f"{len(devices)} x {devices[0].device_kind}"
  try:
    for line in subprocess.run(["lscpu"], capture_output=True, text=True).stdout.splitlines():
      if line.startswith("Model name"):
        info["cpu"] = line.split(":", 1)[1].strip()
  except OSError:
    pass
  try:
    info["commit"] = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=HERE,
                                    capture_output=True, text=True).stdout.strip()
    # Uncommitted changes to the package or the benchmarks (results/docs do not count);
    # left out when git cannot tell (the report then assumes there were some).
    status = subprocess.run(["git", "status", "--porcelain", "--", "tsgen_jax",
                             "benchmarks/*.py"], cwd=ROOT_DIR, capture_output=True, text=True)
    if status.returncode == 0:
      info["uncommitted_changes"] = bool(status.stdout.strip())
  except OSError:
    pass
  try:
    info["loadavg_start"] = os.getloadavg()
  except OSError:
    pass
  return info


def fmt(v, nd=1):
  return "" if v is None else (f"{v:.{nd}f}" if isinstance(v, float) else str(v))


def table(rows) -> str:
  cols = [("name", 32), ("median_ms", 10), ("min_ms", 9), ("max_ms", 9), ("gflops_per_s", 8),
          ("fraction_of_peak", 6), ("series_per_s", 10), ("compile_s", 8), ("peak_mem_mb", 9)]
  heads = {"gflops_per_s": "GFLOP/s", "fraction_of_peak": "%peak", "series_per_s": "series/s",
           "compile_s": "compile", "peak_mem_mb": "mem MB"}
  lines = ["| " + " | ".join(heads.get(c, c) for c, _ in cols) + " |",
           "|" + "|".join("---" for _ in cols) + "|"]
  for r in rows:
    vals = []
    for c, _ in cols:
      v = r.get(c)
      if c == "name" and r.get("run"):
        v = f"{v} *"  # from an earlier run (results.json 'run' says which)
      if c == "fraction_of_peak" and v is not None:
        v = f"{100 * v:.0f}%"
      vals.append(fmt(v))
    lines.append("| " + " | ".join(vals) + " |")
  return "\n".join(lines)


def main(argv=None):
  p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  p.add_argument("--only", default=None, help="comma-separated row names (or prefix*)")
  p.add_argument("--out", default=os.path.join(HERE, "results.json"))
  args = p.parse_args(argv)
  only = select(args.only)
  info = machine()
  info["host_malloc"] = host_memory.current_mode()  # tsgen_jax/host_memory.py
  print(json.dumps(info), flush=True)
  peak = common.matmul_peak()
  print(peak, flush=True)
  peak_bf16 = common.matmul_peak(dtype="bfloat16", peak_gflops=peak["gflops_per_s"])
  print(peak_bf16, flush=True)
  bandwidth = [common.memory_bandwidth(in_place=True), common.memory_bandwidth(in_place=False)]
  print(bandwidth, flush=True)
  rows = [peak, peak_bf16, *bandwidth]
  pk = peak["gflops_per_s"]

  def save():
    try:
      info["loadavg_end"] = os.getloadavg()
    except OSError:
      pass
    with open(args.out, "w") as f:
      json.dump({"machine": info, "rows": rows}, f, indent=1)

  save()  # the reference rows, so that even a run cut short leaves them
  # Target rows and their loop rows first (results.json is rewritten after each group, so a
  # partial run keeps them).
  wanted = set(ALL_NAMES) if only is None else only
  first = [n for n in TARGET_ROWS + LOOP_ROWS if n in wanted]
  rest = [n for n in ALL_NAMES if n in wanted and n not in first]
  for group in (first, rest):
    g = set(group)
    if not g:
      continue
    if any(n.startswith("stage1") for n in g):
      rows += stage1_bench.rows(pk, g, skip_big=only is None); save()
    if any(n.startswith(("stage2", "sample")) for n in g):
      rows += stage2_bench.rows(pk, g); save()
    if any(n.startswith("augment") for n in g):
      rows += augment_bench.rows(pk, g); save()
    if any(n.startswith("data_pipeline") for n in g):
      rows += data_bench.rows(pk, g); save()
  print(table([r for r in rows if "skipped" not in r]))
  for r in rows:
    if "skipped" in r:
      print(f"skipped {r['name']}: {r['skipped']}")
  save()
  return rows


if __name__ == "__main__":
  host_memory.start()  # TSGEN_MALLOC=hugepages: restart once with huge-page malloc
  main()
