"""Representation (and generation) study: every (dataset, variant, seed) under one budget.

``python -m tsgen_jax.study --datasets=CBF,ECG5000,TwoPatterns --variants=vqvae,barlowtwins,vibcreg
--seeds=0,1,2 --workdir=runs/study [--data_dir=ARCHIVE] [--num_steps=N] [--batch_size=B]
[--config_override=key=value ...]``

For each combination it loads ``configs/<variant>.py`` (from ``--configs_dir``, else the
``configs/`` folder next to the package, else ``./configs``), sets the seed, the dataset and the
budget, runs ``stage1,eval_stage1`` in ``WORKDIR/<dataset>/<variant>/seed<k>`` and then writes

- ``WORKDIR/study.md``: mean ± std over seeds of the probe accuracies, reconstruction MSE and
  codebook perplexity per dataset and variant, with the budget and the command in the header;
- ``WORKDIR/study.csv``: the same numbers (``<metric>_mean``, ``<metric>_std``, ``n``);
- ``WORKDIR/study_runs.csv``: one row per finished run;
- ``WORKDIR/study_svm.png``: grouped bars of the SVM probe accuracy (continuous and quantised)
  with std error bars.

With ``--stage2`` every run is the whole pipeline (stage1 → eval_stage1 → stage2 → sample →
eval_stage2) and the report adds a stage-2 table: FCN FID, IS, CAS, the FCN's real-data accuracy
and ROCKET FID (mean ± std over seeds), with the stage-2 budget in the header.

Datasets are UCR archive folder names (archive root: ``--data_dir`` or ``$TSGEN_UCR_DIR``), or
``synthetic`` for the built-in synthetic CBF (``synthetic:<NAME>`` for another built-in
generator). Finished runs (results.json with the stage-1 probe keys and an unchanged config) are
skipped, so rerunning the same command resumes the study; a run that fails is reported and the
others still go into the tables. std is the sample standard deviation (ddof=1; 0 for one seed).
"""

from __future__ import annotations

import copy
import csv
import dataclasses
import importlib.util
import json
import math
import os
import shlex
import sys
import time

import numpy as np

from tsgen_jax.errors import ConfigError, DataError, TsgenError

# ``perplexity`` is the single codebook's; LF/HF runs report one per codebook instead.
METRICS = ("probe_svm_acc", "probe_knn_acc", "probe_svm_acc_q", "probe_knn_acc_q", "recon_mse",
           "perplexity", "perplexity_lf", "perplexity_hf")
PROBE_KEYS = METRICS[:4]
SYNTHETIC = "synthetic"
STAGES = "stage1,eval_stage1"
STAGE2_METRICS = ("fid", "is", "cas", "fcn_real_acc", "rocket_fid", "fid_train")
STAGE2_STAGES = "stage1,eval_stage1,stage2,sample,eval_stage2"

# Published SVM probe accuracies (NC-VQVAE, 4 seeds, 1000 epochs): plain / Barlow Twins / VIbCReg.
THESIS_SVM = {"FordA": (0.742, 0.839, 0.740), "TwoPatterns": (0.529, 0.906, 0.902),
              "Wafer": (0.892, 0.944, 0.939), "ShapesAll": (0.305, 0.552, 0.560)}
_THESIS_VARIANTS = ("vqvae", "barlowtwins", "vibcreg")


@dataclasses.dataclass
class Study:
  """What a study runs; everything the tables' header states."""
  datasets: list[str]
  variants: list[str]
  seeds: list[int]
  workdir: str
  data_dir: str = ""
  num_steps: int | None = None
  batch_size: int | None = None
  overrides: list[str] = dataclasses.field(default_factory=list)
  configs_dir: str = ""
  command: str = ""
  compilation_cache: bool = True  # persistent XLA cache in WORKDIR/.jax_cache (seeds share it)
  stage2: bool = False  # run the whole pipeline and report the stage-2 scores too

  @property
  def stages(self) -> str:
    return STAGE2_STAGES if self.stage2 else STAGES


# -- configs ----------------------------------------------------------------------------------

def find_configs_dir(configs_dir: str = "") -> str:
  """``configs_dir`` if given, else the repo's ``configs/`` next to the package, else ./configs."""
  if configs_dir:
    if not os.path.isdir(configs_dir):
      raise ConfigError(f"--configs_dir={configs_dir}: no such folder")
    return configs_dir
  here = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "configs")
  for d in (here, os.path.join(os.getcwd(), "configs")):
    if os.path.isdir(d):
      return d
  raise ConfigError("cannot find the configs/ folder (looked next to the tsgen_jax package and "
                    "in the current directory); pass --configs_dir")


def load_variant_config(variant: str, configs_dir: str):
  """``configs/<variant>.py``'s get_config()."""
  path = os.path.join(configs_dir, f"{variant}.py")
  if not os.path.isfile(path):
    known = sorted(f[:-3] for f in os.listdir(configs_dir)
                   if f.endswith(".py") and not f.startswith("_"))
    raise ConfigError(f"unknown variant {variant!r}: no {path}; known: {', '.join(known)}")
  spec = importlib.util.spec_from_file_location(f"_tsgen_study_config_{variant}", path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  if not hasattr(module, "get_config"):
    raise ConfigError(f"{path} has no get_config()")
  return module.get_config()


def _parse_value(text: str, old, key: str):
  """``text`` converted to the type of the config's current value ``old``."""
  try:
    if isinstance(old, bool):
      low = text.strip().lower()
      if low in ("true", "1", "yes"):
        return True
      if low in ("false", "0", "no"):
        return False
      raise ValueError(text)
    if isinstance(old, int):
      return int(text)
    if isinstance(old, float):
      return float(text)
  except ValueError:
    raise ConfigError(f"--config_override {key}={text}: expected a {type(old).__name__}") from None
  return text


def apply_override(cfg, item: str):
  """Applies one ``a.b.c=value`` override to ``cfg`` (unknown keys are an error)."""
  if "=" not in item:
    raise ConfigError(f"--config_override {item!r}: expected key=value")
  key, text = item.split("=", 1)
  key = key.strip()
  if key.startswith("config."):
    key = key[len("config."):]
  node = cfg
  parts = key.split(".")
  for p in parts[:-1]:
    if p not in node or not hasattr(node[p], "keys"):
      raise ConfigError(f"--config_override: unknown config key {key!r}")
    node = node[p]
  if parts[-1] not in node or hasattr(node[parts[-1]], "keys"):
    raise ConfigError(f"--config_override: unknown config key {key!r}")
  node[parts[-1]] = _parse_value(text, node[parts[-1]], key)


def dataset_dirname(dataset: str) -> str:
  return dataset.replace(":", "-").replace("/", "_")


def run_config(study: Study, dataset: str, variant: str, seed: int, configs_dir: str):
  """The full config of one run."""
  cfg = load_variant_config(variant, configs_dir)
  cfg.seed = int(seed)
  if dataset == SYNTHETIC or dataset.startswith(SYNTHETIC + ":"):
    cfg.dataset.source = "synthetic"
    cfg.dataset.name = dataset.split(":", 1)[1] if ":" in dataset else "CBF"
  else:
    cfg.dataset.source = "ucr"
    cfg.dataset.name = dataset
    cfg.dataset.data_dir = study.data_dir
  if study.num_steps is not None:
    cfg.stage1.num_steps = int(study.num_steps)
  if study.batch_size is not None:
    cfg.stage1.batch_size = int(study.batch_size)
  for item in study.overrides:
    apply_override(cfg, item)
  cfg.run = study.stages
  return cfg


def check_inputs(study: Study) -> str:
  """Validates the study before anything runs; returns the configs folder."""
  if not study.datasets or not study.variants or not study.seeds:
    raise ConfigError("--datasets, --variants and --seeds must each name at least one entry")
  configs_dir = find_configs_dir(study.configs_dir)
  for v in study.variants:
    load_variant_config(v, configs_dir)
  from tsgen_jax.config import validate
  for v in study.variants:
    validate(run_config(study, study.datasets[0], v, study.seeds[0], configs_dir))
  ucr = [d for d in study.datasets if not (d == SYNTHETIC or d.startswith(SYNTHETIC + ":"))]
  if ucr:
    from tsgen_jax.data.dataset import UCR_ENV
    root = study.data_dir or os.environ.get(UCR_ENV, "")
    if not root:
      raise DataError(f"UCR dataset(s) {', '.join(ucr)} need the archive folder: pass "
                      f"--data_dir=/path/to/UCRArchive_2018 or set ${UCR_ENV}")
    if not os.path.isdir(root):
      raise DataError(f"UCR archive folder {root} does not exist (--data_dir / ${UCR_ENV})")
    missing = [d for d in ucr if not os.path.isfile(os.path.join(root, d, f"{d}_TRAIN.tsv"))]
    if missing:
      raise DataError(f"dataset(s) {', '.join(missing)} not found in {root} "
                      "(expected <Name>/<Name>_TRAIN.tsv)")
  return configs_dir


# -- running ----------------------------------------------------------------------------------

def run_dir(workdir: str, dataset: str, variant: str, seed: int) -> str:
  return os.path.join(workdir, dataset_dirname(dataset), variant, f"seed{seed}")


# What a run's stage-1 results depend on (as run.stage_identity and the eval fingerprint use):
# other sections (stage2, sample, ...) and where the data lives may change without a rerun.
_RESULT_SECTIONS = ("seed", "dataset", "stft", "stage1", "eval")
_STAGE2_SECTIONS = ("stage2", "sample")


def _result_config(d: dict, stage2: bool = False) -> dict:
  """The parts of a config (as JSON data) that the stage-1 (and, with ``stage2``, the stage-2)
  results depend on."""
  from tsgen_jax.run import _VOLATILE, drop_legacy_defaults
  sections = _RESULT_SECTIONS + (_STAGE2_SECTIONS if stage2 else ())
  out = {k: d.get(k) for k in sections}
  out["dataset"] = {k: v for k, v in (out["dataset"] or {}).items()
                    if k not in ("data_dir", "cache_dir")}
  for k in ("stage1",) + (("stage2",) if stage2 else ()):
    out[k] = {key: v for key, v in (out[k] or {}).items() if key not in _VOLATILE}
  return drop_legacy_defaults(copy.deepcopy(out))


def has_results(results: dict, stage2: bool = False) -> bool:
  """Whether a run's results.json data holds the stage-1 probes (and, with ``stage2``, the
  stage-2 scores, written last by eval_stage2)."""
  if not all(k in results.get("stage1", {}) for k in PROBE_KEYS):
    return False
  return not stage2 or "rocket_fid" in results.get("stage2", {})


def is_done(directory: str, cfg, stage2: bool = False) -> bool:
  """Whether ``directory`` holds finished stage-1 results of ``cfg`` (same seed, data, model,
  training and eval settings); with ``stage2`` also finished stage-2 scores of the same
  stage-2 and sampling settings."""
  from tsgen_jax import workdir as wd
  if not has_results(wd.read_results(directory), stage2):
    return False
  path = os.path.join(directory, "config.json")
  if not os.path.exists(path):
    return False
  with open(path) as f:
    stored = json.load(f)
  return (_result_config(stored, stage2) ==
          _result_config(json.loads(cfg.to_json_best_effort()), stage2))


def run_all(study: Study, log=print, configs_dir: str | None = None) -> dict:
  """Runs (or skips) every run of the study; returns {'done', 'skipped', 'failed'} lists of
  (dataset, variant, seed) (failed entries carry the error text as a 4th element)."""
  from tsgen_jax import run as run_lib
  from tsgen_jax import workdir as wd
  if configs_dir is None:
    configs_dir = check_inputs(study)
  status = {"done": [], "skipped": [], "failed": []}
  total = len(study.datasets) * len(study.variants) * len(study.seeds)
  i = 0
  # Seeds outermost: a study stopped early still covers every dataset and variant.
  for seed in study.seeds:
    for dataset in study.datasets:
      for variant in study.variants:
        i += 1
        key = (dataset, variant, seed)
        directory = run_dir(study.workdir, *key)
        tag = f"[{i}/{total}] {dataset} {variant} seed{seed}"
        try:
          cfg = run_config(study, dataset, variant, seed, configs_dir)
          if is_done(directory, cfg, study.stage2):
            log(f"{tag}: done already, skipping")
            status["skipped"].append(key)
            continue
          log(f"{tag}: running in {directory}")
          t0 = time.time()
          results = run_lib.run(cfg, directory)
          wall = time.time() - t0
          if wd.is_main_process():
            with open(os.path.join(directory, "study_run.json"), "w") as f:
              json.dump({"wall_s": wall}, f)
          s1 = results.get("stage1", {})
          log(f"{tag}: {wall:.0f} s, svm {s1.get('probe_svm_acc', float('nan')):.3f} "
              f"(q {s1.get('probe_svm_acc_q', float('nan')):.3f}), "
              f"knn {s1.get('probe_knn_acc', float('nan')):.3f}, "
              f"recon {s1.get('recon_mse', float('nan')):.4f}" + _stage2_summary(results))
          status["done"].append(key)
        except Exception as e:  # one failed run must not lose the others
          from tsgen_jax.trainer import Interrupted
          if isinstance(e, Interrupted):
            raise
          msg = " ".join(str(e).split()) or type(e).__name__
          if not isinstance(e, TsgenError):
            msg = f"{type(e).__name__}: {msg}"
          log(f"{tag}: FAILED: {msg}")
          status["failed"].append((*key, msg))
  return status


def _stage2_summary(results: dict) -> str:
  s2 = results.get("stage2", {})
  if not s2:
    return ""
  return ", " + ", ".join(f"{m} {s2[m]:.3f}" for m in STAGE2_METRICS if m in s2)


def metrics_of(study: Study) -> tuple[str, ...]:
  """The per-run metrics a study's tables hold."""
  return METRICS + (STAGE2_METRICS if study.stage2 else ())


# -- tables -----------------------------------------------------------------------------------

def collect(study: Study) -> list[dict]:
  """One row per finished run: dataset, variant, seed, the metrics and wall_s (or nan)."""
  from tsgen_jax import workdir as wd
  rows = []
  for dataset in study.datasets:
    for variant in study.variants:
      for seed in study.seeds:
        directory = run_dir(study.workdir, dataset, variant, seed)
        results = wd.read_results(directory)
        if not has_results(results, study.stage2):
          continue
        s1 = results["stage1"]
        row = {"dataset": dataset, "variant": variant, "seed": seed}
        row.update({m: float(s1.get(m, float("nan"))) for m in METRICS})
        if study.stage2:
          s2 = results["stage2"]
          row.update({m: float(s2.get(m, float("nan"))) for m in STAGE2_METRICS})
        row["num_steps"] = s1.get("num_steps", "")
        wall = float("nan")
        path = os.path.join(directory, "study_run.json")
        if os.path.exists(path):
          with open(path) as f:
            wall = float(json.load(f).get("wall_s", float("nan")))
        row["wall_s"] = wall
        rows.append(row)
  return rows


def mean_std(values) -> tuple[float, float]:
  """(mean, sample std with ddof=1; 0 for one value); nan for no values."""
  v = np.asarray(values, np.float64)
  if len(v) == 0:
    return float("nan"), float("nan")
  return float(v.mean()), float(v.std(ddof=1)) if len(v) > 1 else 0.0


def aggregate(study: Study, rows: list[dict]) -> list[dict]:
  """Per (dataset, variant) in the study's order: n and <metric>_mean / <metric>_std."""
  out = []
  for dataset in study.datasets:
    for variant in study.variants:
      sel = [r for r in rows if r["dataset"] == dataset and r["variant"] == variant]
      agg = {"dataset": dataset, "variant": variant, "n": len(sel)}
      for m in metrics_of(study):
        agg[f"{m}_mean"], agg[f"{m}_std"] = mean_std([r[m] for r in sel])
      out.append(agg)
  return out


def _write_csv(path: str, rows: list[dict], fields: list[str]):
  tmp = f"{path}.tmp{os.getpid()}"
  with open(tmp, "w", newline="") as f:
    w = csv.DictWriter(f, fieldnames=fields)
    w.writeheader()
    for r in rows:
      w.writerow({k: (f"{v:.6g}" if isinstance(v, float) else v) for k, v in r.items()
                  if k in fields})
  os.replace(tmp, path)


def _pm(mean: float, std: float, digits: int = 3) -> str:
  if math.isnan(mean):
    return "–"
  return f"{mean:.{digits}f} ± {std:.{digits}f}"


def budget_lines(study: Study, rows: list[dict]) -> list[str]:
  steps = study.num_steps if study.num_steps is not None else _from_configs(study, rows,
                                                                            "num_steps")
  batch = study.batch_size if study.batch_size is not None else _from_configs(study, rows,
                                                                             "batch_size")
  walls = [r["wall_s"] for r in rows if not math.isnan(r["wall_s"])]
  lines = [f"- budget: stage-1 **{steps} steps at batch {batch}** for every variant, "
           f"seeds {','.join(map(str, study.seeds))}, the same for every dataset",
           f"- datasets: {', '.join(study.datasets)}; variants: {', '.join(study.variants)}"]
  if study.stage2:
    lines.append(f"- stage 2: {_stage2_budget(study, rows)}, whole pipeline per run")
  if study.overrides:
    lines.append(f"- config overrides: `{' '.join(study.overrides)}`")
  if walls:
    lines.append(f"- wall time: {sum(walls) / 60:.1f} min over {len(walls)} timed runs "
                 f"(median {np.median(walls):.0f} s per run, "
                 f"{'whole pipeline' if study.stage2 else 'stage 1 + eval'}, CPU)")
  if study.command:
    lines.append(f"- command: `{study.command}`")
  lines.append("- mean ± std over seeds (sample std, ddof=1); probes: linear SVM and 5-NN on "
               "average-pooled test latents (continuous, and quantised `_q`), features scaled "
               "to [-1, 1] with the train split's min/max")
  return lines


def _distinct_from_configs(study: Study, rows: list[dict], describe) -> list[str]:
  """The distinct ``describe(config dict)`` strings of the finished runs' config.json files,
  in run order; runs whose config cannot be read (or lacks a key) are left out."""
  values = []
  for r in rows:
    path = os.path.join(run_dir(study.workdir, r["dataset"], r["variant"], r["seed"]),
                        "config.json")
    try:
      with open(path) as f:
        v = describe(json.load(f))
    except (OSError, KeyError, ValueError):
      continue
    if v not in values:
      values.append(v)
  return values


def _from_configs(study: Study, rows: list[dict], key: str) -> str:
  """``stage1.<key>`` of the finished runs' configs ('/'-joined if they differ), or
  'config default' when none can be read."""
  values = _distinct_from_configs(study, rows, lambda c: str(c["stage1"][key]))
  return "/".join(values) or "config default"


def _stage2_budget(study: Study, rows: list[dict]) -> str:
  """The stage-2 budgets (steps at batch, sampling steps) of the finished runs' configs."""
  budgets = _distinct_from_configs(
      study, rows,
      lambda c: (f"**{c['stage2']['num_steps']} steps at batch {c['stage2']['batch_size']}**, "
                 f"sampling T={c['sample']['num_steps']}, "
                 f"guidance {c['sample']['guidance_scale']}"))
  return "; ".join(budgets) or "the configs' stage2.* settings"


def _perplexity_cell(a: dict) -> str:
  """The single codebook's perplexity, or 'LF x ± s / HF y ± s' for LF/HF runs."""
  if not math.isnan(a["perplexity_mean"]) or math.isnan(a["perplexity_lf_mean"]):
    return _pm(a["perplexity_mean"], a["perplexity_std"], 1)
  return (f"LF {_pm(a['perplexity_lf_mean'], a['perplexity_lf_std'], 1)} / "
          f"HF {_pm(a['perplexity_hf_mean'], a['perplexity_hf_std'], 1)}")


def markdown(study: Study, rows: list[dict], agg: list[dict], failed=()) -> str:
  title = ("Study: SSL vs plain VQ-VAE, linear probes and generated series" if study.stage2
           else "Stage-1 study: SSL vs plain VQ-VAE, linear-probe accuracy")
  out = [f"# {title}", ""]
  out += budget_lines(study, rows)
  out += ["", "| dataset | variant | n | SVM | k-NN | SVM (q) | k-NN (q) | recon MSE | "
          "perplexity |",
          "|---|---|---|---|---|---|---|---|---|"]
  for a in agg:
    cells = [_pm(a[f"{m}_mean"], a[f"{m}_std"], 4 if m == "recon_mse" else 3)
             for m in METRICS[:5]] + [_perplexity_cell(a)]
    out.append(f"| {a['dataset']} | {a['variant']} | {a['n']} | " + " | ".join(cells) + " |")
  # Which SSL variants beat the plain VQ-VAE on the SVM probe (means over seeds).
  if "vqvae" in study.variants and len(study.variants) > 1:
    out += ["", "## SVM probe vs plain VQ-VAE (difference of means; continuous / quantised)", ""]
    others = [v for v in study.variants if v != "vqvae"]
    out += ["| dataset | " + " | ".join(others) + " |", "|---|" + "---|" * len(others)]
    by = {(a["dataset"], a["variant"]): a for a in agg}
    for d in study.datasets:
      base = by[(d, "vqvae")]
      cells = []
      for v in others:
        a = by[(d, v)]
        # Rounded first (+ 0.0 turns -0.0 into 0.0) so the sign shown matches the digits.
        dc = round(a["probe_svm_acc_mean"] - base["probe_svm_acc_mean"], 3) + 0.0
        dq = round(a["probe_svm_acc_q_mean"] - base["probe_svm_acc_q_mean"], 3) + 0.0
        cells.append("–" if math.isnan(dc) else f"{dc:+.3f} / {dq:+.3f}")
      out.append(f"| {d} | " + " | ".join(cells) + " |")
  thesis = [d for d in study.datasets if d in THESIS_SVM]
  if thesis:
    out += ["", "Published SVM probe accuracy (NC-VQVAE, 1000 epochs, 4 seeds), plain / Barlow "
            "Twins / VIbCReg: " + "; ".join(
                f"{d} {' / '.join(f'{x:.3f}' for x in THESIS_SVM[d])}" for d in thesis) + "."]
  if study.stage2:
    out += ["", "## Stage 2: generated series (mean ± std over seeds)", "",
            "| dataset | variant | n | FID (FCN) | IS | CAS | FCN real acc | ROCKET FID | "
            "FID of the train split |",
            "|---|---|---|---|---|---|---|---|---|"]
    for a in agg:
      cells = [_pm(a[f"{m}_mean"], a[f"{m}_std"],
                   2 if m in ("fid", "rocket_fid", "is", "fid_train") else 3)
               for m in STAGE2_METRICS]
      out.append(f"| {a['dataset']} | {a['variant']} | {a['n']} | " + " | ".join(cells) + " |")
    out += ["", "FID: FCN features of the real test split vs unconditional samples "
            "(n = max(n_test, 256)); CAS: FCN trained on class-conditional samples, accuracy on "
            "the real test split (FCN real acc is its ceiling); FID of the train split: the "
            "real train split vs the test split, the score of a generator that copied the "
            "training set. "
            "TimeVQVAE paper (FID / CAS): "
            "CBF 2.3 / 96.5%, ECG5000 0.7 / 93.3%, TwoPatterns 2.2 / 86.5%."]
  if failed:
    out += ["", "## Failed runs", ""]
    out += [f"- {d} {v} seed{s}: {msg}" for d, v, s, msg in failed]
  out += ["", "Per-run numbers: `study_runs.csv`; bar chart: `study_svm.png`.", ""]
  return "\n".join(out)


def bar_chart(study: Study, agg: list[dict], path: str):
  """Grouped bars: per dataset, per variant the SVM accuracy continuous (solid) and quantised
  (hatched), with std error bars."""
  from tsgen_jax import plots
  plt = plots._plt()
  nv = len(study.variants)
  width = 0.8 / (2 * nv)
  colors = plt.get_cmap("tab10")
  fig, ax = plt.subplots(figsize=(max(5, 1.8 * len(study.datasets) * max(1, nv / 3)), 3.6))
  by = {(a["dataset"], a["variant"]): a for a in agg}
  x = np.arange(len(study.datasets))
  for j, v in enumerate(study.variants):
    for k, (suffix, hatch, label) in enumerate((("", None, "continuous"),
                                                ("_q", "//", "quantised"))):
      means = [by[(d, v)][f"probe_svm_acc{suffix}_mean"] for d in study.datasets]
      stds = [by[(d, v)][f"probe_svm_acc{suffix}_std"] for d in study.datasets]
      pos = x - 0.4 + width * (2 * j + k + 0.5)
      ax.bar(pos, np.nan_to_num(means), width, yerr=np.nan_to_num(stds), capsize=2,
             color=colors(j), hatch=hatch, edgecolor="black", linewidth=0.5,
             alpha=1.0 if k == 0 else 0.6, label=f"{v} ({label})")
  ax.set_xticks(x)
  ax.set_xticklabels(study.datasets, fontsize=8)
  ax.set_ylim(0, 1.05)
  ax.set_ylabel("SVM probe accuracy (test)")
  steps = study.num_steps if study.num_steps is not None else "default"
  ax.set_title(f"Stage-1 linear probe, {steps} steps, {len(study.seeds)} seed(s), mean ± std",
               fontsize=9)
  ax.legend(fontsize=6, ncol=nv, loc="upper center", bbox_to_anchor=(0.5, -0.12))
  plots._save(fig, path)


def write_report(study: Study, failed=()) -> dict:
  """Writes study.md, study.csv, study_runs.csv and study_svm.png; returns their paths."""
  os.makedirs(study.workdir, exist_ok=True)
  rows = collect(study)
  agg = aggregate(study, rows)
  paths = {k: os.path.join(study.workdir, f) for k, f in
           (("md", "study.md"), ("csv", "study.csv"), ("runs_csv", "study_runs.csv"),
            ("png", "study_svm.png"))}
  metrics = metrics_of(study)
  fields = ["dataset", "variant", "n"] + [f"{m}_{s}" for m in metrics for s in ("mean", "std")]
  _write_csv(paths["csv"], agg, fields)
  _write_csv(paths["runs_csv"], rows,
             ["dataset", "variant", "seed", *metrics, "num_steps", "wall_s"])
  with open(paths["md"], "w") as f:
    f.write(markdown(study, rows, agg, failed))
  bar_chart(study, agg, paths["png"])
  return paths


def enable_compilation_cache(directory: str) -> None:
  """Persists compiled XLA programs in ``directory`` unless a cache is configured already:
  runs that differ only in the seed then compile once. Effective only before the process's
  first compilation (as in the CLI)."""
  import jax
  if os.environ.get("JAX_COMPILATION_CACHE_DIR") or jax.config.jax_compilation_cache_dir:
    return
  jax.config.update("jax_compilation_cache_dir", directory)


def run_study(study: Study, log=print) -> dict:
  """Runs the study and writes the report; returns run_all's status plus 'paths'."""
  configs_dir = check_inputs(study)
  if study.compilation_cache:
    enable_compilation_cache(os.path.join(study.workdir, ".jax_cache"))
  status = {"done": [], "skipped": [], "failed": []}
  try:
    status = run_all(study, log, configs_dir)
  finally:  # also after an interrupt: the report covers the runs finished so far
    status["paths"] = write_report(study, status["failed"])
  return status


# -- command line -----------------------------------------------------------------------------

def _define_flags():
  """The study's flags, in their own FlagValues (so importing this module never clashes with
  tsgen_jax.main's --workdir/--config in one process)."""
  from absl import flags
  fv = flags.FlagValues()
  flags.DEFINE_list("datasets", ["CBF", "ECG5000", "TwoPatterns"],
                    "UCR dataset names, or 'synthetic' (built-in synthetic CBF) / "
                    "'synthetic:<NAME>'.", flag_values=fv)
  flags.DEFINE_list("variants", ["vqvae", "barlowtwins", "vibcreg"],
                    "configs/<variant>.py files to compare.", flag_values=fv)
  flags.DEFINE_list("seeds", ["0", "1", "2"], "Training seeds.", flag_values=fv)
  flags.DEFINE_string("workdir", None, "Study folder: <dataset>/<variant>/seed<k> runs and the "
                      "study.md / study.csv / study_svm.png report.", flag_values=fv)
  flags.DEFINE_string("data_dir", "", "UCR archive root (default $TSGEN_UCR_DIR).",
                      flag_values=fv)
  flags.DEFINE_integer("num_steps", None, "Stage-1 steps for every run (default: the config's).",
                       flag_values=fv)
  flags.DEFINE_integer("batch_size", None, "Stage-1 batch size (default: the config's).",
                       flag_values=fv)
  flags.DEFINE_multi_string("config_override", [], "key=value applied to every run's config, "
                            "e.g. stage1.dim=32 (repeatable).", flag_values=fv)
  flags.DEFINE_bool("compilation_cache", True, "Keep compiled programs in WORKDIR/.jax_cache "
                    "(unless $JAX_COMPILATION_CACHE_DIR is set) so seeds share compilations.",
                    flag_values=fv)
  flags.DEFINE_bool("stage2", False, "Run the whole pipeline per run and report the stage-2 "
                    "scores (FID, IS, CAS, ROCKET FID) too.", flag_values=fv)
  flags.DEFINE_string("configs_dir", "", "Folder with <variant>.py configs (default: the repo's "
                      "configs/).", flag_values=fv)
  return fv


FLAGS = _define_flags()


def parse_flags(argv):
  """Parses ``argv`` into this module's FLAGS (defaults for flags not given); bad flags are a
  one-line error with exit status 2. Returns the remaining arguments."""
  from absl import flags
  if any(a in ("-h", "--help", "--helpshort", "--helpfull", "-?") for a in argv[1:]):
    print(__doc__)
    print(FLAGS.get_help())
    sys.exit(0)
  FLAGS.unparse_flags()
  try:
    rest = FLAGS(list(argv))
  except flags.Error as e:
    print(f"error: {' '.join(str(e).split())}", file=sys.stderr)
    sys.exit(2)
  if not flags.FLAGS.is_parsed():  # absl's app.run wants its global flags parsed too
    flags.FLAGS(argv[:1])
  return rest


def study_from_flags(fv, argv) -> Study:
  try:
    seeds = [int(s) for s in fv.seeds]
  except ValueError:
    raise ConfigError(f"--seeds={','.join(fv.seeds)}: expected comma-separated integers") \
        from None
  if fv.num_steps is not None and fv.num_steps < 0:
    raise ConfigError(f"--num_steps={fv.num_steps}: expected >= 0")
  if fv.batch_size is not None and fv.batch_size < 1:
    raise ConfigError(f"--batch_size={fv.batch_size}: expected >= 1")
  if not fv.workdir:
    raise ConfigError("--workdir is required")
  return Study(datasets=[d.strip() for d in fv.datasets if d.strip()],
               variants=[v.strip() for v in fv.variants if v.strip()], seeds=seeds,
               workdir=fv.workdir, data_dir=fv.data_dir, num_steps=fv.num_steps,
               batch_size=fv.batch_size, overrides=list(fv.config_override),
               configs_dir=fv.configs_dir, compilation_cache=fv.compilation_cache,
               stage2=fv.stage2,
               command="python -m tsgen_jax.study " + " ".join(shlex.quote(a) for a in argv[1:]))


def main(argv, full_argv=None):
  """Runs the study described by the parsed FLAGS. ``full_argv`` (default sys.argv) is the
  command line written into the report."""
  if len(argv) > 1:
    print(f"error: unexpected arguments: {' '.join(argv[1:])}", file=sys.stderr)
    sys.exit(2)
  from absl import logging
  logging.set_verbosity(logging.WARNING)
  from tsgen_jax.trainer import Interrupted
  try:
    study = study_from_flags(FLAGS, full_argv or sys.argv)
    status = run_study(study)
  except TsgenError as e:
    print(f"error: {' '.join(str(e).split())}", file=sys.stderr)
    sys.exit(2)
  except Interrupted as e:
    print(f"\n{e}; the report covers the runs finished so far", file=sys.stderr)
    sys.exit(0)
  paths = status.get("paths", {})
  print(f"study: {len(status['done'])} run(s) done, {len(status['skipped'])} skipped, "
        f"{len(status['failed'])} failed; report: {paths.get('md', '-')}")
  if status["failed"]:
    sys.exit(1)


def cli(argv):
  """In-process entry point: ``cli(['study', '--datasets=...', ...])`` (exits like the CLI)."""
  main(parse_flags(argv), argv)


if __name__ == "__main__":
  from absl import app
  from tsgen_jax import host_memory
  host_memory.start()  # TSGEN_MALLOC=hugepages: restart once with huge-page malloc
  app.run(main, flags_parser=parse_flags)
