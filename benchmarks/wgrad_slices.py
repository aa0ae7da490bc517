"""Compile time and step time of the plain stage-1 step for several ``stage1.conv_wgrad_chunk``
settings (rows per weight-gradient slice; 0 = off), timed interleaved in one process.

  python -m benchmarks.wgrad_slices 128 512 16,32,64,0 6   # L, B, settings, timed rounds

Prints one line per setting (benchmarks/NOTES.md item 7 quotes its output). The same as
``python -m benchmarks.interleaved plain L B stage1.conv_wgrad_chunk SETTINGS ROUNDS``.
"""
import sys

from benchmarks import interleaved
from tsgen_jax import host_memory

if __name__ == "__main__":
  host_memory.start()  # TSGEN_MALLOC=hugepages: restart once with huge-page malloc
  interleaved.compare("plain", int(sys.argv[1]), int(sys.argv[2]), "stage1.conv_wgrad_chunk",
                      sys.argv[3].split(","),
                      int(sys.argv[4]) if len(sys.argv) > 4 else 5)
