"""Writes BENCHMARKS.md from benchmarks/results.json: ``python -m benchmarks.report``.

The free-text sections (what changed, what did not help) live in NOTES below, so the report
can be regenerated after every run.
"""

from __future__ import annotations

import glob
import json
import os
import sys

from benchmarks.run import TARGETS, is_loop_row, table

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)

REFERENCE = """| path | NC-VQVAE (PyTorch) | TimeVQVAE (PyTorch) | target |
|---|---|---|---|
| stage-1 plain B=128 | 185 ms | - | <= 110 ms |
| stage-1 Barlow Twins B=128 | 1468 ms (+33 ms numpy aug) | - | <= 600 ms incl. aug |
| stage-1 VIbCReg B=128 | 1412 ms (+33 ms aug) | - | <= 600 ms incl. aug |
| stage-1 LF+HF B=128 | - | 541 ms | <= 300 ms |
| stage-2 train B=256 | 732 ms | 5561 ms | <= 500 ms |
| sampling 256 series T=10 s=1 | 4805 ms (53/s) | 16506 ms (15.5/s) | >= 120 series/s |

Reference figures: PyTorch 2.13 on the same 2-core CPU kind, median ms per step.

Measured on this AMD EPYC kind with `benchmarks/torch_reference.py` (PyTorch 2.13 replicas of
tsgen_jax's own models at the benchmark shapes; ours the same hour, `benchmarks.run --only`):
stage-1 plain B=128 185-189 ms (ours 197.7), Barlow Twins B=128 1404-1413 ms with its
augmentation in torch (ours 849), the prior's train step B=256 928-950 ms (ours 967).
NOTES items 19 and 20.

Measured the same way on the Zen 5 kind (`benchmarks/machines/amd_zen5_2core.json`,
2026-12-04, alternated with ours; ours at one step per call, then in the training loop at 10
per call): plain B=128 86.9 / 92.3 ms (ours 118.4 / 103.4 and 87.8 / 77.6 before NOTES item
25; 81.5 against 103.9 and 73.7 after it), Barlow Twins 986.7 / 977.1 ms (ours 382.6 / 364.7
and 299.5 / 296.6), the prior's step 775.7 / 689.2 ms (ours 457.2 / 472.8 and 349.6 / 331.7).
On Zen 5 the plain step is the one nearest PyTorch's time (0.9x in the loop; its target,
110 against 185 ms, asks for 0.59x).

VIbCReg, added to the replica in the twelfth session (Zen 5, 2026-12-04, two rounds alternated
with ours; its loss and IterNorm agree with tsgen_jax's to float32 rounding): PyTorch 1300.6 /
1358.4 ms, the Barlow Twins replica in the same rounds 1020.0 / 1017.7 ms; ours VIbCReg 403.3 /
405.7 ms at one step per call and 334.4 / 316.7 in the loop, Barlow Twins 386.7 / 370.0 and
297.3 / 297.0. The issue's SSL targets (600 against 1412 and 1468 ms) ask for 0.41-0.42x of
PyTorch: ours are 0.30x of the VIbCReg replica at one step per call (0.41x of the Barlow Twins
replica scaled by the issue's VIbCReg / Barlow Twins ratio, since the replica's literal (D, D)
loss makes PyTorch's VIbCReg dearer than the thesis code's) and 0.23-0.26x in the loop
(0.32-0.34x of that scaled figure); Barlow Twins 0.36-0.38x and 0.29x."""

# The issue's figure for its reference machine's 2048^3 float32 matmul (GFLOP/s).
ISSUE_MATMUL_GFLOPS = 155.0


def verdicts(rows) -> str:
  """One line per target: met or not, the measured value, and the matmul floor (what the
  target asks of the FLOPs XLA counts: the GFLOP/s it needs as a fraction of the run's
  ``matmul_f32_2048``, and the time every FLOP would take at the issue's 155 GFLOP/s)."""
  by = {r["name"]: r for r in rows}
  peak = by.get("matmul_f32_2048", {}).get("gflops_per_s")
  out = []
  for name, kind, bound in TARGETS:
    r = by.get(name)
    if r is None or "median_ms" not in r:
      out.append(f"- {name}: not measured in this run")
      continue
    if kind == "ms":
      ok = r["median_ms"] <= bound
      loop = next((x for x in rows if is_loop_row(x["name"], name) and "median_ms" in x),
                  None)
      if loop:  # the same step as the training loop runs it (steps_per_call, default 10)
        ok_loop = loop["median_ms"] <= bound
        line = (f"- {name}: target <= {bound} ms: **{'met' if ok_loop else 'not met'}** in "
                f"the training loop ({loop['steps_per_call']} steps per call, the default; "
                f"`{loop['name']}`: median {loop['median_ms']:.0f} ms per step, min "
                f"{loop['min_ms']:.0f} ms); one step per call {'met' if ok else 'not met'} "
                f"(median {r['median_ms']:.0f} ms, min {r['min_ms']:.0f} ms)")
      else:
        line = (f"- {name}: target <= {bound} ms: **{'met' if ok else 'not met'}** "
                f"(median {r['median_ms']:.0f} ms, min {r['min_ms']:.0f} ms)")
      floor = _floor(r.get("gflop"), bound / 1e3, peak)
      if floor:
        floor += (f"; at the issue's {ISSUE_MATMUL_GFLOPS:.0f} GFLOP/s its FLOPs take "
                  f"{r['gflop'] / ISSUE_MATMUL_GFLOPS * 1e3:.0f} ms")
    else:
      v = r.get("series_per_s", 0)
      ok = v >= bound
      line = (f"- {name}: target >= {bound} series/s: **{'met' if ok else 'not met'}** "
              f"({v:.1f} series/s, median {r['median_ms']:.0f} ms)")
      n = round(v * r["median_ms"] / 1e3)  # series per call
      floor = _floor(r.get("gflop"), n / bound, peak) if v else ""
      if floor:
        floor += (f"; at the issue's {ISSUE_MATMUL_GFLOPS:.0f} GFLOP/s its FLOPs allow at most "
                  f"{n / (r['gflop'] / ISSUE_MATMUL_GFLOPS):.0f} series/s")
    out.append(line + floor)
  return "\n".join(out)


def _floor(gflop, target_s: float, peak) -> str:
  """``"; G GFLOP: the target needs N GFLOP/s sustained, F% of this run's matmul peak"``."""
  if not gflop:
    return ""
  need = gflop / target_s
  return (f"; {gflop:.1f} GFLOP: the target needs {need:.0f} GFLOP/s sustained"
          + (f", {need / peak:.0%} of this run's matmul peak" if peak else ""))


def other_machine(path: str, data: dict) -> str:
  """A short section for one results file from another machine (benchmarks/machines/*.json,
  the same format as results.json): where it ran, its matmul and memory figures, and its
  target rows with their verdicts."""
  info, rows = data["machine"], data["rows"]
  by = {r["name"]: r for r in rows}
  peak = by.get("matmul_f32_2048", {}).get("gflops_per_s")
  stream = by.get("stream_f32_512mb", {}).get("gb_per_s")
  head = [
      f"### {_machine_name(info)} (`{os.path.relpath(path, ROOT)}`)",
      "",
      f"Commit `{info.get('commit', '?')}`"
      + (" (plus uncommitted changes)" if info.get("uncommitted_changes", True) else "")
      + (f", 2048^3 float32 matmul {peak:.0f} GFLOP/s" if peak else "")
      + (f", stream in place {stream:.1f} GB/s" if stream else "")
      + f", host malloc `{info.get('host_malloc', '?')}`, load average at start / end "
      f"{_loads(info.get('loadavg_start'))} / {_loads(info.get('loadavg_end'))}.",
      "",
  ]
  if info.get("note"):
    head += [f"Note: {info['note']}", ""]
  return "\n".join(head + [verdicts(rows)])


def _machine_name(info: dict) -> str:
  """'CPU, N cores', or 'N x ACCELERATOR (host: CPU, N cores)' for a run on accelerators."""
  host = f"{info.get('cpu', '?')}, {info.get('cpu_count', '?')} cores"
  return f"{info['accelerator']} (host: {host})" if info.get("accelerator") else host


def _loads(v) -> str:
  return "?" if not v else ", ".join(f"{x:.2f}" for x in v)


def _bandwidth_line(r: dict) -> str:
  if r["name"].endswith("_new_output"):
    return (f"- The same stream into freshly allocated memory: {r['gb_per_s']:.1f} GB/s "
            f"(`{r['name']}`: y in a new buffer each call, so the kernel's page faults and "
            "zeroing count, as for a step's temporaries)")
  return (f"- Memory bandwidth in the same run: {r['gb_per_s']:.1f} GB/s (`{r['name']}`: "
          "y = 2x + 1 in place over a float32 vector, one read and one write per element)")


def render(data: dict, notes: str = "", others=()) -> str:
  """BENCHMARKS.md's text from a results.json object ({"machine": {...}, "rows": [...]}),
  results from other machines (``others``: (path, object) pairs, each shown by
  :func:`other_machine`) and the free-text notes appended at the end."""
  info, rows = data["machine"], data["rows"]
  timed = [r for r in rows if "skipped" not in r]
  skipped = [r for r in rows if "skipped" in r]
  md = [
      "# Benchmarks",
      "",
      "Generated by `python -m benchmarks.report` from `benchmarks/results.json` "
      "(`python -m benchmarks.run`). Every figure: median of >= 20 timed calls after "
      "warm-up, each ended with `block_until_ready`. GFLOP/s from XLA's cost analysis of "
      "the compiled function; %peak relative to `matmul_f32_2048` (a 2048^3 float32 "
      "`jnp.dot`) measured in the same run. Memory: XLA's memory analysis "
      "(temp + arguments + outputs) of the compiled function.",
      "",
      f"- Machine: {_machine_name(info)} ({info.get('platform', '')})",
      f"- Commit: `{info.get('commit', '?')}`" + (
          " (plus uncommitted changes to the code)" if info.get("uncommitted_changes", True)
          else ", no uncommitted changes to the code"),
      *[_bandwidth_line(r) for r in rows if "gb_per_s" in r],
      "- Host malloc: " + {
          "hugepages": "huge pages (`TSGEN_MALLOC=hugepages`: "
                       "`GLIBC_TUNABLES=glibc.malloc.hugetlb=1`, tsgen_jax/host_memory.py)",
          "system": "glibc's default 4 KB pages (`TSGEN_MALLOC=system`, the default)",
      }.get(info.get("host_malloc"), "not recorded (runs before tsgen_jax/host_memory.py: "
                                      "glibc's default 4 KB pages)"),
      f"- Load average at start / end of the run: {info.get('loadavg_start')} / "
      f"{info.get('loadavg_end')} (the machine is shared; a load above 2 inflates every "
      "figure)",
      "",
      "## Results",
      "",
      table(timed),
      "",
  ]
  if info.get("note"):
    md += [f"Note: {info['note']}", ""]
  earlier = sorted({r["run"] for r in timed if r.get("run")})
  if earlier:
    md += ["`*` rows come from separate runs: " + "; ".join(earlier) + ".", ""]
  if skipped:
    md += ["Skipped:", ""] + [f"- {r['name']}: {r['skipped']}" for r in skipped] + [""]
  md += ["## Targets", "", verdicts(rows), ""]
  if others:
    md += ["## Other machines", "",
           "The same suite (`python -m benchmarks.run --out benchmarks/machines/NAME.json`) "
           "on other machines; target rows only (the full rows are in each file).", ""]
    for path, other in others:
      md += [other_machine(path, other), ""]
  md += ["## Reference", "", REFERENCE, ""]
  if notes:
    md += [notes]
  return "\n".join(md) + "\n"


def main(argv=None):
  path = (argv or sys.argv[1:] or [os.path.join(HERE, "results.json")])[0]
  data = json.load(open(path))
  notes_path = os.path.join(HERE, "NOTES.md")
  notes = open(notes_path).read() if os.path.exists(notes_path) else ""
  others = [(p, json.load(open(p)))
            for p in sorted(glob.glob(os.path.join(HERE, "machines", "*.json")))]
  text = render(data, notes, others)
  with open(os.path.join(ROOT, "BENCHMARKS.md"), "w") as f:
    f.write(text)
  print(text, end="")


if __name__ == "__main__":
  main()
