"""The summary table printed at the end of a run."""

from __future__ import annotations


def _fmt(v) -> str:
  if isinstance(v, float):
    return f"{v:.4g}"
  return str(v)


def format_results(results: dict) -> str:
  """results.json contents -> an aligned 'stage  metric  value' table."""
  rows = [(stage, k, _fmt(v)) for stage, vals in results.items()
          if isinstance(vals, dict) and not stage.startswith("_")
          for k, v in sorted(vals.items()) if not isinstance(v, (dict, list))]
  if not rows:
    return "no results"
  w0 = max(len(r[0]) for r in rows + [("stage", "", "")])
  w1 = max(len(r[1]) for r in rows + [("", "metric", "")])
  lines = [f"{'stage':<{w0}}  {'metric':<{w1}}  value", "-" * (w0 + w1 + 12)]
  lines += [f"{a:<{w0}}  {b:<{w1}}  {c}" for a, b, c in rows]
  return "\n".join(lines)
