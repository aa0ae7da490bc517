"""Orbax checkpoints of a train state, with the config that produced them.

``<workdir>/checkpoints/<stage>/<step>/`` holds the state (orbax writes to a temporary folder
and renames it when complete, so a kill leaves no half-written step behind), and
``<workdir>/checkpoints/<stage>/config.json`` the config sections that must match on resume.
"""

from __future__ import annotations

import json
import logging
import os

import jax
import orbax.checkpoint as ocp

from tsgen_jax.errors import CheckpointError, ConfigError


def _flatten(d, prefix=""):
  out = {}
  for k, v in d.items():
    key = f"{prefix}{k}"
    if isinstance(v, dict):
      out.update(_flatten(v, key + "."))
    else:
      out[key] = v
  return out


def config_diff(saved: dict, current: dict) -> list[str]:
  """Keys whose values differ between two nested dicts, as 'key: saved -> current'."""
  a, b = _flatten(saved), _flatten(current)
  return [f"{k}: {a.get(k, '<absent>')!r} -> {b.get(k, '<absent>')!r}"
          for k in sorted(set(a) | set(b)) if a.get(k) != b.get(k)]


class Checkpointer:
  """Saves and restores one stage's train state under ``directory``."""

  def __init__(self, directory: str, keep: int = 3):
    self.directory = os.path.abspath(directory)
    opts = ocp.CheckpointManagerOptions(max_to_keep=max(int(keep), 1), create=True,
                                        enable_async_checkpointing=False)
    self._manager = ocp.CheckpointManager(self.directory, options=opts)

  @property
  def config_path(self) -> str:
    return os.path.join(self.directory, "config.json")

  def latest_step(self) -> int | None:
    return self._manager.latest_step()

  def all_steps(self) -> list[int]:
    return list(self._manager.all_steps())

  def check_config(self, identity: dict, allow_change: bool = False):
    """Records ``identity`` (the config that defines this stage) or checks it matches.

    Raises:
      ConfigError listing the differing keys when a checkpoint exists with another config
      (unless ``allow_change``).
    """
    if os.path.exists(self.config_path) and self.latest_step() is not None:
      with open(self.config_path) as f:
        saved = json.load(f)
      diff = config_diff(saved, identity)
      if diff and not allow_change:
        raise ConfigError(
            f"{self.directory} holds checkpoints of a different config ({'; '.join(diff)}). "
            "Use another --workdir, or pass --config.resume_ignore_config=True to resume anyway")
      if diff:
        logging.warning("resuming despite config changes: %s", "; ".join(diff))
    if jax.process_index() == 0:
      os.makedirs(self.directory, exist_ok=True)
      tmp = self.config_path + ".tmp"
      with open(tmp, "w") as f:
        json.dump(identity, f, indent=1, sort_keys=True)
      os.replace(tmp, self.config_path)

  def save(self, step: int, state, force: bool = True):
    """Writes ``state`` as checkpoint ``step`` (replacing none; old ones pruned to ``keep``)."""
    if step in self._manager.all_steps():
      return
    self._manager.save(int(step), args=ocp.args.StandardSave(state), force=force)
    self._manager.wait_until_finished()

  def restore(self, target, step: int | None = None):
    """Restores into the structure, dtypes and shardings of ``target`` (latest by default).

    Falls back to an older checkpoint, with a warning, when the newest cannot be read.
    """
    steps = sorted(self._manager.all_steps(), reverse=True)
    if step is not None:
      steps = [step]
    if not steps:
      raise CheckpointError(f"no checkpoint in {self.directory}")
    abstract = jax.tree.map(ocp.utils.to_shape_dtype_struct, target)
    errors = []
    for s in steps:
      try:
        return s, self._manager.restore(s, args=ocp.args.StandardRestore(abstract))
      except Exception as e:  # corrupt or truncated files: try the previous step
        errors.append(f"step {s}: {type(e).__name__}: {str(e)[:200]}")
        moved = self._set_aside(s)
        logging.warning("checkpoint %s/%d is unreadable (%s: %s); moved it to %s and trying "
                        "an older one", self.directory, s, type(e).__name__, str(e)[:200], moved)
    raise CheckpointError(f"no readable checkpoint in {self.directory}: {' | '.join(errors)}")

  def _set_aside(self, step: int) -> str:
    """Renames an unreadable step folder to ``corrupt_<step>`` (kept, never deleted)."""
    src = os.path.join(self.directory, str(step))
    dst = os.path.join(self.directory, f"corrupt_{step}")
    if jax.process_index() == 0 and os.path.isdir(src):
      n = 0
      while os.path.exists(dst):
        n += 1
        dst = os.path.join(self.directory, f"corrupt_{step}.{n}")
      os.replace(src, dst)
    self._manager.reload()
    return dst

  def close(self):
    self._manager.close()
