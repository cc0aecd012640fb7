"""Data sources (MNIST, torus point clouds, 2-D toy densities), their views, and in-memory batch iteration.

Modules: :mod:`~dgmlab.data.mnist` (verified loading of MNIST), :mod:`~dgmlab.data.views` (grey levels,
binarizations and uniform dequantization of 8-bit images), :mod:`~dgmlab.data.torus` (problem set 1's torus
sampler), :mod:`~dgmlab.data.images` (natural photographs from inside the scikit-image wheel, and their patches),
:mod:`~dgmlab.data.dead_leaves` (synthetic dead-leaves images, power spectra), :mod:`~dgmlab.data.toy2d` (the 2-D
toy densities of FFJORD and Residual Flows, with their exact log-densities) and :mod:`~dgmlab.data.loaders`
(:class:`TensorBatches`).
"""

from dgmlab.data.loaders import TensorBatches
from dgmlab.data.mnist import DgmlabDataError, MnistDataset, MnistNotFoundError, load_mnist, mnist_tensors
from dgmlab.data.torus import torus_point_cloud, torus_surface_distance
from dgmlab.data.toy2d import TOY2D, Toy2D, toy2d_dataset
from dgmlab.data.views import binarize_static, binarize_threshold, dynamic_binarize, to_grey, uniform_dequantize

__all__ = [
    "DgmlabDataError",
    "TOY2D",
    "Toy2D",
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
    "toy2d_dataset",
    "uniform_dequantize",
]
