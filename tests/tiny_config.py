"""A CLI config file with the tiny test model (``--config=tests/tiny_config.py``)."""

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from conftest import tiny_config  # noqa: E402


def get_config():
  return tiny_config()
