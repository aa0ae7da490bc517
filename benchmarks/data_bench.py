"""Input pipeline throughput: BatchStream.host_batch (numpy gather) and device_batch
(host batch + placement on the mesh), synthetic CBF, B=128."""

from __future__ import annotations

import jax

from benchmarks import common
from tsgen_jax import sharding
from tsgen_jax.config import base_config
from tsgen_jax.data import BatchStream, load_dataset


def rows(peak_gflops=None, only=None):
  out = []
  for name in ("data_pipeline_host_batch", "data_pipeline_device_batch"):
    if only and name not in only:
      continue
    cfg = base_config()
    cfg.dataset.num_train = 1000
    ds = load_dataset(cfg.dataset, cfg.stft.n_fft)
    stream = BatchStream(ds.train, 128, 0, sharding.data_sharding(sharding.make_mesh()))
    step = [0]
    if name.endswith("host_batch"):
      def call():
        stream.host_batch(step[0]); step[0] += 1
    else:
      def call():
        jax.block_until_ready(stream.device_batch(step[0])); step[0] += 1
    times = common.time_calls(call, 50)
    r = common.row(name, times)
    r["series_per_s"] = round(128 / (r["median_ms"] / 1e3), 1)
    out.append(r)
    print(r, flush=True)
  return out
