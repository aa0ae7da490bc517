"""Evaluation of generated series: FID / IS on FCN or ROCKET features, CAS, statistics, plots."""

from tsgen_jax.evaluation.cas import (cas_over_seeds, class_proportional_labels,
                                      classification_accuracy_score)
from tsgen_jax.evaluation.fcn import (FCN, FCNModel, cached_fcn, load_fcn, save_fcn,
                                      train_fcn)
from tsgen_jax.evaluation.fid import fid_from_features, frechet_distance
from tsgen_jax.evaluation.inception import inception_score
from tsgen_jax.evaluation.plots import plot_feature_pca, plot_real_vs_generated
from tsgen_jax.evaluation.rocket import (RocketKernels, rocket_features, rocket_fid,
                                         rocket_kernels)
from tsgen_jax.evaluation.stats import series_statistics

__all__ = [
    "FCN", "FCNModel", "RocketKernels", "cached_fcn", "cas_over_seeds", "class_proportional_labels",
    "classification_accuracy_score", "fid_from_features", "frechet_distance",
    "inception_score", "load_fcn", "plot_feature_pca", "plot_real_vs_generated",
    "rocket_features", "rocket_fid", "rocket_kernels", "save_fcn", "series_statistics",
    "train_fcn",
]
