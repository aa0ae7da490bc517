"""Files in a run's workdir: the resolved config, results and the data statistics."""

from __future__ import annotations

import json
import os

import jax

from tsgen_jax.data.preprocess import Stats


def _atomic_write(path: str, text: str):
  tmp = f"{path}.tmp{os.getpid()}"
  with open(tmp, "w") as f:
    f.write(text)
  os.replace(tmp, path)


def is_main_process() -> bool:
  return jax.process_index() == 0


def write_config(workdir: str, cfg):
  """Writes the resolved config as ``workdir/config.json``."""
  if is_main_process():
    os.makedirs(workdir, exist_ok=True)
    _atomic_write(os.path.join(workdir, "config.json"), cfg.to_json_best_effort(indent=1,
                                                                             sort_keys=True))


def read_results(workdir: str) -> dict:
  """``workdir/results.json`` as a dict ({} when absent)."""
  path = os.path.join(workdir, "results.json")
  if not os.path.exists(path):
    return {}
  with open(path) as f:
    return json.load(f)


def update_results(workdir: str, stage: str, values: dict):
  """Merges ``values`` into ``results.json[stage]`` (atomic rewrite; other stages kept)."""
  if not is_main_process():
    return
  results = read_results(workdir)
  results.setdefault(stage, {}).update(values)
  _atomic_write(os.path.join(workdir, "results.json"),
                json.dumps(results, indent=1, sort_keys=True))


def write_stats(workdir: str, stats: Stats):
  """Stores the preprocessing statistics (to map samples back to the original scale)."""
  if is_main_process():
    os.makedirs(workdir, exist_ok=True)
    _atomic_write(os.path.join(workdir, "data_stats.json"), stats.to_json())


def read_stats(workdir: str) -> Stats:
  with open(os.path.join(workdir, "data_stats.json")) as f:
    return Stats.from_json(f.read())
