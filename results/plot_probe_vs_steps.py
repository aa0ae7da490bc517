"""Draws results/stage1_probe_vs_steps.png from results/stage1_probe_vs_steps.csv (the output of
results/probe_vs_steps.py for each run of results/stage1_study.md's "Longer training" section):
one row of panels per dataset, the linear-SVM probe on the continuous and the quantised latent.

  PYTHONPATH=. python results/plot_probe_vs_steps.py
"""
import csv
import os
from collections import defaultdict

import matplotlib
matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
UCR_DIR = os.environ.get("TSGEN_UCR_DIR") or os.path.join(HERE, "..", "..", "shared", "ucr",
                                                          "UCRArchive_2018")


def majority_rate(dataset: str) -> float | None:
  """Test-split share of the most common class (a constant prediction's accuracy), read from
  the UCR archive at $TSGEN_UCR_DIR (or ../shared); None when the archive is not there."""
  from tsgen_jax.data import ucr
  from tsgen_jax.errors import DataError
  try:
    _, y = ucr.parse_ucr_tsv(ucr.split_path(UCR_DIR, dataset, "test"))
  except DataError:
    return None
  return float(np.unique(y, return_counts=True)[1].max() / len(y))

runs = defaultdict(list)
with open(os.path.join(HERE, "stage1_probe_vs_steps.csv")) as f:
  for r in csv.DictReader(f):
    runs[(r["dataset"], r["variant"], int(r["seed"]))].append(r)
datasets = list(dict.fromkeys(k[0] for k in runs))
majority = {d: majority_rate(d) for d in datasets}
colors = {"vqvae": "tab:gray", "barlowtwins": "tab:blue", "vibcreg": "tab:red"}
fig, axes = plt.subplots(len(datasets), 2, figsize=(10, 3.6 * len(datasets)), squeeze=False)
for row, dataset in zip(axes, datasets):
  labelled = set()
  for (ds, variant, seed), rows in sorted(runs.items()):
    if ds != dataset:
      continue
    steps = [int(r["step"]) for r in rows]
    for ax, key in zip(row, ("svm", "svm_q")):
      ax.plot(steps, [float(r[key]) for r in rows], "o-", ms=3, color=colors[variant],
              alpha=0.9 if seed == 0 else 0.45, label=None if variant in labelled else variant)
    labelled.add(variant)
  batches = sorted({r["batch"] for k, rs in runs.items() if k[0] == dataset for r in rs})
  for ax, what in zip(row, ("continuous latent", "quantised latent")):
    ax.set_title(f"{dataset}, linear-SVM probe, {what}", fontsize=10)
    ax.set_xlabel(f"stage-1 step (batch {', '.join(batches)})")
    if majority[dataset] is not None:
      ax.axhline(majority[dataset], color="k", lw=0.5, ls=":")  # majority class
    ax.grid(alpha=0.3)
  row[0].set_ylabel("test accuracy (seed 0 dark, 1-2 light;\ndotted: majority class)", fontsize=9)
  row[0].legend()
fig.tight_layout()
fig.savefig(os.path.join(HERE, "stage1_probe_vs_steps.png"), dpi=110)
