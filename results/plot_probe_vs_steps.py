"""Draws results/stage1_probe_vs_steps.png from results/stage1_probe_vs_steps.csv (the output of
results/probe_vs_steps.py for each run of results/stage1_study.md's "Longer training" section).

  python results/plot_probe_vs_steps.py
"""
import csv
import os
from collections import defaultdict

import matplotlib
matplotlib.use("Agg")
import matplotlib.pyplot as plt

HERE = os.path.dirname(os.path.abspath(__file__))
runs = defaultdict(list)
with open(os.path.join(HERE, "stage1_probe_vs_steps.csv")) as f:
  for r in csv.DictReader(f):
    runs[(r["variant"], int(r["seed"]))].append(r)
colors = {"vqvae": "tab:gray", "barlowtwins": "tab:blue", "vibcreg": "tab:red"}
fig, axes = plt.subplots(1, 2, figsize=(10, 3.8), sharey=True)
labelled = set()
for (variant, seed), rows in sorted(runs.items()):
  steps = [int(r["step"]) for r in rows]
  for ax, key in zip(axes, ("svm", "svm_q")):
    ax.plot(steps, [float(r[key]) for r in rows], "o-", ms=3, color=colors[variant],
            alpha=0.9 if seed == 0 else 0.45, label=None if variant in labelled else variant)
  labelled.add(variant)
for ax, what in zip(axes, ("continuous latent", "quantised latent")):
  ax.set_title(f"TwoPatterns, linear-SVM probe, {what}", fontsize=10)
  ax.set_xlabel("stage-1 step (batch 128)")
  ax.axhline(0.25, color="k", lw=0.5, ls=":")  # chance, 4 classes
  ax.grid(alpha=0.3)
axes[0].set_ylabel("test accuracy (seed 0 dark, seeds 1-2 light)")
axes[0].legend()
fig.tight_layout()
fig.savefig(os.path.join(HERE, "stage1_probe_vs_steps.png"), dpi=110)
