"""Data sources (MNIST, torus point clouds) and in-memory batch iteration.

Modules: :mod:`~dgmlab.data.mnist` (verified loading and the grey/binarized views),
:mod:`~dgmlab.data.torus` (problem set 1's torus sampler) and :mod:`~dgmlab.data.loaders`
(:class:`TensorBatches`).
"""

from dgmlab.data.loaders import TensorBatches
from dgmlab.data.mnist import (
    DgmlabDataError,
    MnistDataset,
    MnistNotFoundError,
    binarize_static,
    binarize_threshold,
    dynamic_binarize,
    load_mnist,
    mnist_tensors,
    to_grey,
)
from dgmlab.data.torus import torus_point_cloud, torus_surface_distance

__all__ = [
    "DgmlabDataError",
    "MnistDataset",
    "MnistNotFoundError",
    "TensorBatches",
    "binarize_static",
    "binarize_threshold",
    "dynamic_binarize",
    "load_mnist",
    "mnist_tensors",
    "to_grey",
    "torus_point_cloud",
    "torus_surface_distance",
]
