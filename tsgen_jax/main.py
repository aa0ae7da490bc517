"""Command line: ``python -m tsgen_jax.main --config=configs/X.py --workdir=DIR [--config.a.b=v]``.

Runs the stages named in ``config.run`` (default: all) in DIR. Errors in the user's input are
printed as one line (no traceback) with a non-zero exit; SIGTERM/SIGINT save a checkpoint and
exit 0 with a note on how to resume.
"""

from __future__ import annotations

import sys

from absl import app
from absl import flags
from absl import logging
from ml_collections import config_flags

_CONFIG = config_flags.DEFINE_config_file("config", None, "Path to a configs/*.py file.",
                                          lock_config=True)
_WORKDIR = flags.DEFINE_string("workdir", None, "Directory for checkpoints, logs and results.")
flags.mark_flags_as_required(["config", "workdir"])


def _clean(e: Exception) -> str:
  text = str(e)
  if len(text) > 1 and text[0] == text[-1] and text[0] in "'\"":
    text = text[1:-1]
  text = text.replace("\\'", "'").replace("\\n", " ").replace("\n", " ")
  return " ".join(text.split())


def parse_flags(argv):
  """absl flag parsing that turns bad flags and config overrides into one-line errors."""
  try:
    return flags.FLAGS(argv)
  except flags.Error as e:
    print(f"error: {_clean(e)}", file=sys.stderr)
  except (AttributeError, KeyError) as e:
    print(f"error: unknown config key in an override: {_clean(e)}", file=sys.stderr)
  except (ValueError, TypeError, OSError, SyntaxError, ImportError) as e:
    print(f"error: bad --config or override: {type(e).__name__}: {_clean(e)}", file=sys.stderr)
  sys.exit(2)


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  logging.set_verbosity(logging.WARNING)
  from tsgen_jax import distributed
  from tsgen_jax import run as run_lib
  from tsgen_jax import summary
  from tsgen_jax.errors import TsgenError
  from tsgen_jax.trainer import Interrupted
  try:
    cfg = _CONFIG.value
    cfg.get("seed")  # a config file that failed to load raises here
  except OSError as e:
    print(f"error: {_clean(e)}", file=sys.stderr)
    sys.exit(2)
  try:
    distributed.initialize()
    results = run_lib.run(cfg, _WORKDIR.value)
  except TsgenError as e:
    print(f"error: {e}", file=sys.stderr)
    sys.exit(2)
  except Interrupted as e:
    print(f"\n{e}", file=sys.stderr)
    sys.exit(0)
  print(summary.format_results(results))


if __name__ == "__main__":
  from tsgen_jax import host_memory
  host_memory.start()  # TSGEN_MALLOC=hugepages: restart once with huge-page malloc
  app.run(main, flags_parser=parse_flags)
