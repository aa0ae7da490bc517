"""User-facing errors.

Anything raised as a :class:`TsgenError` is a problem with the user's input (data, config,
workdir), not a bug. The CLI prints it as one line and exits non-zero without a traceback.
"""


class TsgenError(Exception):
  """Base class for errors caused by bad input; printed without a traceback."""


class DataError(TsgenError):
  """Malformed, missing or inconsistent data (names the file and row where known)."""


class ConfigError(TsgenError):
  """Invalid config value, unknown key, or a config that disagrees with a workdir."""


class CheckpointError(TsgenError):
  """Missing or unusable checkpoint."""
