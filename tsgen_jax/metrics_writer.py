"""Training logs: ``metrics.jsonl``, TensorBoard event files (no TensorFlow) and a progress line.

The event files are TFRecord-framed ``Event`` protos with scalar summaries, encoded by hand
(a few protobuf fields), so ``tensorboard --logdir DIR/tensorboard`` reads them.
"""

from __future__ import annotations

import json
import math
import os
import socket
import struct
import sys
import time

# -- TFRecord framing -------------------------------------------------------------------------

def _crc32c_table():
  table = []
  for i in range(256):
    crc = i
    for _ in range(8):
      crc = (crc >> 1) ^ (0x82F63B78 if crc & 1 else 0)
    table.append(crc)
  return table


_TABLE = _crc32c_table()


def crc32c(data: bytes) -> int:
  """CRC-32C (Castagnoli) of ``data``."""
  crc = 0xFFFFFFFF
  for b in data:
    crc = _TABLE[(crc ^ b) & 0xFF] ^ (crc >> 8)
  return crc ^ 0xFFFFFFFF


def masked_crc(data: bytes) -> int:
  """TFRecord's masked CRC-32C."""
  crc = crc32c(data)
  return (((crc >> 15) | (crc << 17)) + 0xA282EAD8) & 0xFFFFFFFF


def tfrecord(data: bytes) -> bytes:
  """One TFRecord: length, its CRC, the payload, its CRC."""
  header = struct.pack("<Q", len(data))
  return (header + struct.pack("<I", masked_crc(header)) + data
          + struct.pack("<I", masked_crc(data)))


# -- protobuf encoding of Event / Summary ---------------------------------------------------

def _varint(n: int) -> bytes:
  out = bytearray()
  while True:
    b = n & 0x7F
    n >>= 7
    out.append(b | (0x80 if n else 0))
    if not n:
      return bytes(out)


def _field_bytes(number: int, payload: bytes) -> bytes:
  return _varint(number << 3 | 2) + _varint(len(payload)) + payload


def scalar_event(tag: str, value: float, step: int, wall_time: float) -> bytes:
  """Serialized ``Event{wall_time, step, summary{value{tag, simple_value}}}``."""
  summary_value = _field_bytes(1, tag.encode()) + _varint(2 << 3 | 5) + struct.pack("<f", value)
  summary = _field_bytes(1, summary_value)
  return (_varint(1 << 3 | 1) + struct.pack("<d", wall_time) + _varint(2 << 3 | 0)
          + _varint(step) + _field_bytes(5, summary))


def version_event(wall_time: float) -> bytes:
  """The first event of every file: ``file_version: "brain.Event:2"``."""
  return (_varint(1 << 3 | 1) + struct.pack("<d", wall_time)
          + _field_bytes(3, b"brain.Event:2"))


class TensorBoardWriter:
  """Appends scalar summaries to an event file under ``logdir``."""

  def __init__(self, logdir: str):
    os.makedirs(logdir, exist_ok=True)
    now = time.time()
    name = f"events.out.tfevents.{int(now)}.{socket.gethostname()}.{os.getpid()}"
    self.path = os.path.join(logdir, name)
    self._f = open(self.path, "ab")
    self._f.write(tfrecord(version_event(now)))

  def scalars(self, step: int, values: dict[str, float]):
    now = time.time()
    for tag, v in values.items():
      self._f.write(tfrecord(scalar_event(tag, float(v), int(step), now)))
    self._f.flush()

  def close(self):
    self._f.close()


# -- metrics writer ---------------------------------------------------------------------------

class MetricsWriter:
  """Writes one JSON object per logged step to ``workdir/metrics.jsonl`` and TensorBoard.

  Only process 0 writes; other processes get a no-op writer.
  """

  def __init__(self, workdir: str, stage: str, enabled: bool = True):
    self.stage, self.enabled = stage, enabled
    if enabled:
      os.makedirs(workdir, exist_ok=True)
      self._jsonl = open(os.path.join(workdir, "metrics.jsonl"), "a")
      self._tb = TensorBoardWriter(os.path.join(workdir, "tensorboard", stage))

  def write(self, step: int, metrics: dict[str, float]):
    if not self.enabled:
      return
    row = {"stage": self.stage, "step": int(step)}
    row.update({k: float(v) for k, v in metrics.items()})
    self._jsonl.write(json.dumps(row) + "\n")
    self._jsonl.flush()
    self._tb.scalars(step, {f"{self.stage}/{k}": v for k, v in metrics.items()})

  def close(self):
    if self.enabled:
      self._jsonl.close()
      self._tb.close()


def _fmt_time(seconds: float) -> str:
  if not math.isfinite(seconds):
    return "?"
  seconds = int(seconds)
  return f"{seconds // 3600}:{seconds // 60 % 60:02d}:{seconds % 60:02d}"


class Progress:
  """A progress line: step, loss terms, steps/s and ETA (rewritten in place on a terminal)."""

  def __init__(self, stage: str, total: int, start: int, enabled: bool = True, stream=None):
    self.stage, self.total, self.enabled = stage, total, enabled
    self.stream = stream or sys.stdout
    self._t0, self._s0 = time.time(), start
    self._tty = hasattr(self.stream, "isatty") and self.stream.isatty()

  def update(self, step: int, metrics: dict[str, float]):
    if not self.enabled:
      return
    done = step - self._s0
    rate = done / max(time.time() - self._t0, 1e-9)
    eta = (self.total - step) / rate if rate > 0 else float("inf")
    terms = " ".join(f"{k} {v:.4g}" for k, v in metrics.items())
    line = f"[{self.stage}] step {step}/{self.total} {terms} | {rate:.2f} steps/s ETA {_fmt_time(eta)}"
    self.stream.write(("\r\x1b[K" + line) if self._tty else line + "\n")
    self.stream.flush()

  def close(self):
    if self.enabled and self._tty:
      self.stream.write("\n")
      self.stream.flush()
