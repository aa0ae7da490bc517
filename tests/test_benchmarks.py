"""The benchmark harness's arithmetic and report: GFLOP/s and fractions of peak, target
verdicts, the commit line, starred rows from other runs, and ``--only`` selection. No timing
is asserted, only what the harness computes from timings it is given."""

import os

import jax
import jax.numpy as jnp
import pytest

from benchmarks import common, interleaved, report, run
from tsgen_jax.errors import ConfigError


def test_row_gflops_fraction_and_rounding():
  r = common.row("x", [30.0, 10.0, 20.0], flops=2e9, compile_s=1.234,
                 mem={"peak_mb": 5.0}, peak_gflops=200.0, series_per_s=3)
  assert (r["median_ms"], r["min_ms"], r["max_ms"], r["iters"]) == (20.0, 10.0, 30.0, 3)
  assert r["gflop"] == 2.0
  assert r["gflops_per_s"] == pytest.approx(100.0)  # 2 GFLOP in 20 ms
  assert r["fraction_of_peak"] == pytest.approx(0.5)
  assert r["compile_s"] == 1.23 and r["peak_mem_mb"] == 5.0 and r["series_per_s"] == 3
  bare = common.row("y", [1.0, 2.0])
  assert "gflops_per_s" not in bare and "fraction_of_peak" not in bare
  assert bare["median_ms"] == 1.5


def test_time_calls_warms_up_then_times_each_call():
  calls = []
  times = common.time_calls(lambda: calls.append(1), iters=5, warmup=2)
  assert len(calls) == 7 and len(times) == 5 and all(t >= 0 for t in times)


def test_alternate_calls_interleaves_rounds_and_stateful_call_carries_state():
  order = []
  times = common.alternate_calls({"a": lambda: order.append("a"),
                                  "b": lambda: order.append("b")}, rounds=3)
  assert order == ["a", "b"] * 3
  assert {k: len(v) for k, v in times.items()} == {"a": 3, "b": 3}
  assert all(t >= 0 for v in times.values() for t in v)
  seen = []
  step = lambda state, inc: (seen.append(state) or state + inc, state)  # noqa: E731
  call = common.stateful_call(step, 10, 5)
  call()
  call()
  assert seen == [10, 15]  # each call starts from the state the previous one returned


def test_reference_rows_use_their_own_units():
  mm = common.matmul_peak(n=64, iters=3)
  assert mm["gflop"] == round(2 * 64 ** 3 / 1e9, 4) and mm["fraction_of_peak"] == 1.0
  assert mm["name"] == "matmul_f32_64"
  bf16 = common.matmul_peak(n=64, iters=3, dtype="bfloat16", peak_gflops=mm["gflops_per_s"])
  assert bf16["name"] == "matmul_bf16_64"
  assert bf16["fraction_of_peak"] == round(bf16["gflops_per_s"] / mm["gflops_per_s"], 4)
  # The row keeps median_ms to 0.001 ms and GFLOP/s to 0.01, both computed from the unrounded
  # median: recomputing from the stored median is exact only up to those roundings.
  gflop, med = 2 * 64 ** 3 / 1e9, mm["median_ms"]
  assert gflop / ((med + 5e-4) / 1e3) - 5e-3 <= mm["gflops_per_s"]
  assert mm["gflops_per_s"] <= gflop / ((med - 5e-4) / 1e3) + 5e-3
  for in_place, name in ((True, "stream_f32_4mb"), (False, "stream_f32_4mb_new_output")):
    bw = common.memory_bandwidth(mb=4, iters=3, in_place=in_place)
    assert bw["name"] == name
    # One read and one write of 4 MiB per call.
    assert bw["gb_per_s"] == pytest.approx(2 * 4 * 2 ** 20 / 1e9 / (bw["median_ms"] / 1e3),
                                           rel=1e-2, abs=0.01)


def _row(name, ms, **extra):
  return {"name": name, "median_ms": ms, "min_ms": ms - 1, "max_ms": ms + 1, **extra}


def test_verdicts_bounds_and_missing_rows():
  rows = [_row("stage1_plain_b128", 110.0),  # on the bound: met
          _row("stage1_barlowtwins_b128", 600.4),
          _row("stage1_lfhf_b128", 299.0),
          _row("stage2_train_b256", 950.0),
          _row("sample_256_t10_s1", 2000.0, series_per_s=119.9)]
  lines = dict(line[2:].split(": ", 1) for line in report.verdicts(rows).splitlines())
  assert lines["stage1_plain_b128"].startswith("target <= 110 ms: **met**")
  assert lines["stage1_barlowtwins_b128"].startswith("target <= 600 ms: **not met**")
  assert lines["stage1_lfhf_b128"].startswith("target <= 300 ms: **met**")
  assert lines["stage2_train_b256"].startswith("target <= 500 ms: **not met**")
  assert lines["sample_256_t10_s1"].startswith("target >= 120 series/s: **not met**")
  assert lines["stage1_vibcreg_b128"] == "not measured in this run"
  met = report.verdicts([_row("sample_256_t10_s1", 1000.0, series_per_s=256.0)])
  assert "sample_256_t10_s1: target >= 120 series/s: **met** (256.0 series/s" in met


def test_verdicts_with_the_training_loop_row():
  """A target step also timed as the training loop runs it (row NAME_kK, per step): the
  verdict is the loop's, and the one-step-per-call figure is stated beside it."""
  rows = [_row("stage1_plain_b128", 137.0), _row("stage1_plain_b128_k10", 108.0,
                                                  steps_per_call=10),
          _row("stage2_train_b256", 480.0), _row("stage2_train_b256_k10", 520.0,
                                                 steps_per_call=10),
          _row("stage1_lfhf_b128", 250.0)]
  lines = dict(line[2:].split(": ", 1) for line in report.verdicts(rows).splitlines())
  assert lines["stage1_plain_b128"] == (
      "target <= 110 ms: **met** in the training loop (10 steps per call, the default; "
      "`stage1_plain_b128_k10`: median 108 ms per step, min 107 ms); one step per call not "
      "met (median 137 ms, min 136 ms)")
  assert lines["stage2_train_b256"].startswith(
      "target <= 500 ms: **not met** in the training loop")
  assert "one step per call met (median 480 ms" in lines["stage2_train_b256"]
  assert lines["stage1_lfhf_b128"].startswith("target <= 300 ms: **met** (median 250 ms")


def test_bench_steps_reports_times_per_step(monkeypatch):
  """common.bench_steps: a k-step call's times divided by k, GFLOP/s of one step's FLOPs
  per step time, and steps_per_call = k."""
  monkeypatch.setattr(common, "time_calls", lambda call, iters: [40.0, 80.0, 120.0])
  step = jax.jit(lambda state, xs: (state + jnp.sum(xs @ xs), jnp.mean(xs)))
  state, xs = jnp.zeros(()), jnp.ones((512, 512))
  flops = common.compile_fn(step, state, xs)[2]
  r = common.bench_steps("toy_k4", step, state, (xs,), 4, peak_gflops=100.0)
  assert (r["median_ms"], r["min_ms"], r["max_ms"], r["steps_per_call"]) == (20, 10, 30, 4)
  assert r["gflops_per_s"] == pytest.approx(flops / 1e9 / 0.020, rel=1e-3)


def test_verdicts_matmul_floor():
  # 60 GFLOP in a <= 500 ms target: 120 GFLOP/s, 40 % of a 300 GFLOP/s matmul; at the
  # issue's 155 GFLOP/s the FLOPs alone take 60 / 155 s = 387 ms.
  rows = [_row("matmul_f32_2048", 57.3, gflops_per_s=300.0),
          _row("stage2_train_b256", 900.0, gflop=60.0),
          _row("sample_256_t10_s1", 2000.0, series_per_s=128.0, gflop=310.0),
          _row("stage1_plain_b128", 200.0)]  # no gflop: no floor
  lines = dict(line[2:].split(": ", 1) for line in report.verdicts(rows).splitlines())
  assert lines["stage2_train_b256"].endswith(
      "; 60.0 GFLOP: the target needs 120 GFLOP/s sustained, 40% of this run's matmul peak; "
      "at the issue's 155 GFLOP/s its FLOPs take 387 ms")
  # 256 series at 120/s: 2.133 s, so 310 / 2.133 = 145 GFLOP/s; 155 GFLOP/s allows
  # 256 / (310 / 155) = 128 series/s.
  assert lines["sample_256_t10_s1"].endswith(
      "; 310.0 GFLOP: the target needs 145 GFLOP/s sustained, 48% of this run's matmul peak; "
      "at the issue's 155 GFLOP/s its FLOPs allow at most 128 series/s")
  assert lines["stage1_plain_b128"].endswith("min 199 ms)")


def _results(**machine):
  return {"machine": {"cpu": "Test CPU", "cpu_count": 2, "commit": "abc1234", **machine},
          "rows": [_row("matmul_f32_2048", 60.0, gflops_per_s=286.3, fraction_of_peak=1.0),
                   _row("stream_f32_512mb", 24.0, gb_per_s=44.7),
                   _row("stream_f32_512mb_new_output", 125.0, gb_per_s=8.59),
                   _row("stage1_plain_b128", 200.0, fraction_of_peak=0.25),
                   _row("stage1_plain_L1024_b512", 7000.0, run="an --only run"),
                   {"name": "stage1_plain_L512_b512", "skipped": "too big"}]}


def test_render_commit_line_bandwidth_starred_and_skipped_rows():
  text = report.render(_results(uncommitted_changes=False), notes="## Notes\n\nfree text")
  assert "- Commit: `abc1234`, no uncommitted changes to the code" in text
  assert "- Memory bandwidth in the same run: 44.7 GB/s (`stream_f32_512mb`:" in text
  assert ("- The same stream into freshly allocated memory: 8.6 GB/s "
          "(`stream_f32_512mb_new_output`:") in text
  assert "| stage1_plain_L1024_b512 * | 7000.0 |" in text
  assert "`*` rows come from separate runs: an --only run." in text
  assert "| stage1_plain_b128 | 200.0 | 199.0 | 201.0 |  | 25% |" in text
  assert "- stage1_plain_L512_b512: too big" in text
  assert "| stage1_plain_L512_b512" not in text  # skipped rows are not in the table
  assert text.rstrip().endswith("free text")
  assert "- Host malloc: not recorded" in text
  assert "- Host malloc: huge pages" in report.render(_results(host_malloc="hugepages"))
  # A run that could not tell (no git) counts as having changes, as does one that had some.
  for machine in ({}, {"uncommitted_changes": True}):
    assert "`abc1234` (plus uncommitted changes to the code)" in report.render(_results(**machine))


def test_render_other_machines_section():
  other = _results(cpu="Other CPU", commit="def5678", uncommitted_changes=False,
                   host_malloc="system", loadavg_start=[1.0, 0.5, 0.25],
                   loadavg_end=[2.0, 1.5, 1.25], note="a second machine")
  path = str(report.ROOT) + "/benchmarks/machines/other.json"
  text = report.render(_results(uncommitted_changes=False), others=[(path, other)])
  section = text.split("## Other machines", 1)[1].split("## Reference", 1)[0]
  assert "### Other CPU, 2 cores (`benchmarks/machines/other.json`)" in section
  assert ("Commit `def5678`, 2048^3 float32 matmul 286 GFLOP/s, stream in place 44.7 GB/s, "
          "host malloc `system`, load average at start / end 1.00, 0.50, 0.25 / "
          "2.00, 1.50, 1.25.") in section
  assert "Note: a second machine" in section
  assert "- stage1_plain_b128: target <= 110 ms: **not met** (median 200 ms" in section
  assert "- stage2_train_b256: not measured in this run" in section
  assert "## Other machines" not in report.render(_results())  # no files, no section
  gpu = _results(cpu="Host CPU", accelerator="1 x NVIDIA H200")
  text = report.render(_results(), others=[(str(report.ROOT) + "/benchmarks/machines/g.json",
                                            gpu)])
  assert "### 1 x NVIDIA H200 (host: Host CPU, 2 cores) (`benchmarks/machines/g.json`)" in text
  assert "- Machine: 1 x NVIDIA H200 (host: Host CPU, 2 cores)" in report.render(gpu)


def test_machine_records_jax_and_no_accelerator_on_cpu():
  info = run.machine()
  assert info["jax"] == jax.__version__ and info["cpu_count"] == os.cpu_count()
  assert "accelerator" not in info  # the suite runs on CPU


def test_only_selection():
  assert run.select(None) is None
  assert run.select("stage1_plain_b128, sample_256_t10_s1") == {"stage1_plain_b128",
                                                                "sample_256_t10_s1"}
  augment = run.select("augment_*")
  assert augment and all(n.startswith("augment_") for n in augment)
  assert augment == {n for n in run.ALL_NAMES if n.startswith("augment_")}
  assert run.select("data_pipeline") == {"data_pipeline_host_batch",
                                         "data_pipeline_device_batch"}
  with pytest.raises(SystemExit, match="unknown benchmark 'stage1_nope'"):
    run.select("stage1_nope")
  assert set(run.TARGET_ROWS) <= set(run.ALL_NAMES)  # every target row can be run
  # the loop rows (the verdicts' figures) are the target steps' names plus _k10
  assert set(run.LOOP_ROWS) <= set(run.ALL_NAMES)
  assert {n.rsplit('_k', 1)[0] for n in run.LOOP_ROWS} <= set(run.TARGET_ROWS)
  assert {'stage1_plain_b128_k10', 'stage2_train_b256_k10'} <= set(run.LOOP_ROWS)


def test_interleaved_rejects_unknown_fields_and_mistyped_values():
  for field, value in (("stage1.conv_wgrad_chunks", "16"), ("stage9.dim", "8")):
    with pytest.raises(ConfigError, match=f"unknown config key '{field}'"):
      interleaved.compare("plain", 128, 32, field, [value], 1)
  with pytest.raises(ConfigError, match="stage1.conv_wgrad_chunk=sixteen: expected a int"):
    interleaved.compare("plain", 128, 32, "stage1.conv_wgrad_chunk", ["sixteen"], 1)


def test_ab_args_and_print_times(capsys):
  assert common.ab_args(["p", "plain,vibcreg", "128", "30"], "usage", "prog",
                        ("plain", "vibcreg")) == (["plain", "vibcreg"], 128, 30)
  with pytest.raises(SystemExit, match="usage"):
    common.ab_args(["p", "plain"], "usage", "prog", ("plain",))
  with pytest.raises(SystemExit, match="prog: unknown variant 'vibreg'; one of plain, vibcreg"):
    common.ab_args(["p", "vibreg", "128", "30"], "usage", "prog", ("plain", "vibcreg"))
  common.print_times("step", {"a": [0.010, 0.012, 0.0111]}, decimals=2)
  assert capsys.readouterr().out == "step a: median 11.10 ms (min 10.00, 3 calls)\n"


def test_weight_grad_form_arguments():
  from benchmarks import weight_grad_form  # pylint: disable=g-import-not-at-top
  with pytest.raises(SystemExit, match="usage"):
    weight_grad_form.main(["p", "default"])
  with pytest.raises(SystemExit, match="unknown variant 'lfhf2'; one of default, lfhf"):
    weight_grad_form.main(["p", "default,lfhf2", "10", "3"])
  with pytest.raises(SystemExit, match="K must be at least 2"):
    weight_grad_form.main(["p", "default", "1", "3"])


def test_tap_products_arguments_and_layer_run(capsys):
  from benchmarks import tap_products  # pylint: disable=g-import-not-at-top
  with pytest.raises(SystemExit, match="usage"):
    tap_products.main(["p", "layer"])
  with pytest.raises(SystemExit, match="unknown variant 'plian'"):
    tap_products.main(["p", "plian", "10", "3"])
  tap_products.main(["p", "layer", "1", "2"])
  out = capsys.readouterr().out
  assert "layer, forward + gradients convolution: median" in out
  assert "layer, forward + gradients tap_products: median" in out
