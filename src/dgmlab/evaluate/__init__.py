"""Evaluation of trained models, by what it measures: :mod:`~dgmlab.evaluate.likelihood` (importance-weighted
NLL of a latent-variable model, the NLL of each dimension of an autoregressive one),
:mod:`~dgmlab.evaluate.samples` (class-by-class samples, completions), :mod:`~dgmlab.evaluate.flows` (a flow's
bits/dim term by term, samples at a temperature, interpolation in the base space) and
:mod:`~dgmlab.evaluate.point_clouds` (Chamfer distances, distance to a torus). The trainer's
:func:`dgmlab.train.evaluate` gives the mean of every term of an objective on a split."""

from dgmlab.evaluate.flows import flow_nll_accounting, interpolate_in_base, temperature_samples
from dgmlab.evaluate.likelihood import (
                                       check_images,
                                       importance_weighted_nll,
                                       importance_weighted_nll_per_example,
                                       mean_nll_per_dimension,
                                       mean_pixel_nll,
)
from dgmlab.evaluate.point_clouds import (
                                       METRIC_UNITS,
                                       chamfer_distance,
                                       nearest_neighbour_distances,
                                       oracle_metrics,
                                       point_cloud_metrics,
                                       surface_distance,
)
from dgmlab.evaluate.samples import complete_images, samples_per_class

__all__ = [
    "METRIC_UNITS",
    "chamfer_distance",
    "check_images",
    "complete_images",
    "flow_nll_accounting",
    "importance_weighted_nll",
    "importance_weighted_nll_per_example",
    "interpolate_in_base",
    "mean_nll_per_dimension",
    "mean_pixel_nll",
    "nearest_neighbour_distances",
    "oracle_metrics",
    "point_cloud_metrics",
    "samples_per_class",
    "surface_distance",
    "temperature_samples",
]
