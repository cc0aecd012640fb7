r"""Evaluation of trained models: point-cloud metrics in pure PyTorch (memory bounded by chunking), the
importance-weighted NLL of a VAE, and the per-pixel NLL, class-by-class samples and completions of an image
density model (PixelCNN), each in evaluation mode.

Chamfer distance
----------------
For point sets :math:`A = \{a_i\}_{i=1}^N` and :math:`B = \{b_j\}_{j=1}^M` in :math:`\mathbb R^3`, let
:math:`d_A(i) = \min_j \lVert a_i - b_j\rVert` and :math:`d_B(j) = \min_i \lVert b_j - a_i\rVert` be the
nearest-neighbour distances in each direction. Two conventions are in common use, and this module names
them apart:

.. math::
    \mathrm{CD}_{L2}(A, B) = \frac1N\sum_i d_A(i)^2 + \frac1M\sum_j d_B(j)^2
    \qquad\text{(squared distances, sum of the two directional means; PointFlow, pytorch3d)}

.. math::
    \mathrm{CD}_{L1}(A, B) = \frac12\Big(\frac1N\sum_i d_A(i) + \frac1M\sum_j d_B(j)\Big)
    \qquad\text{(unsquared distances, average of the two means; PCN-style completion papers)}

:func:`chamfer_distance` returns :math:`\mathrm{CD}_{L2}` by default (``squared=True``) and the *sum*
of the unsquared means with ``squared=False`` (twice :math:`\mathrm{CD}_{L1}`);
:func:`point_cloud_metrics` reports both conventions under their names. Both are symmetric, zero for
identical sets, invariant to translating both sets together, and
:math:`\mathrm{CD}_{L2}(A, A + t) \le 2\lVert t\rVert^2`. Units: squared length (L2) and length (L1) of the
data (for the torus, the unit in which R = 1).

The pairwise squared distances :math:`\lVert a_i - b_j\rVert^2` are computed from coordinate differences
one coordinate at a time (not by the :math:`\lVert a\rVert^2 - 2a\cdot b + \lVert b\rVert^2` expansion, which
cancels and can go negative; identical sets give exactly 0), a block of
``chunk_size`` rows of :math:`A` at a time, so memory is :math:`O(\text{chunk\_size}\cdot M)` whatever
:math:`N` is; the minimum over :math:`A` for each :math:`b_j` is kept as a running minimum across blocks.

Distance to a torus and the oracle row
--------------------------------------
:func:`surface_distance` is :math:`\big|\sqrt{(\sqrt{x^2 + y^2} - R)^2 + z^2} - r\big|`, the exact
Euclidean distance to the torus surface. The *oracle* (:func:`oracle_metrics`) is the same metrics between
two independent samples of the true torus: the Chamfer distance of a perfect *generator* with the same
number of points (0.0042 CD-L2 and 0.040 CD-L1 at N = 3000, R = 1, r = 0.5), the floor against which a
model's samples are read. A paired reconstruction can go below it (a perfect autoencoder scores 0); its
surface-distance floor is 0.
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import Tensor, nn

from dgmlab.data.torus import torus_point_cloud, torus_surface_distance

__all__ = [
    "EvalMode", "check_images", "complete_images", "device_of", "mean_pixel_nll", "samples_per_class",
    "METRIC_UNITS",
    "chamfer_distance",
    "nearest_neighbour_distances",
    "oracle_metrics",
    "point_cloud_metrics",
    "surface_distance",
]

METRIC_UNITS: dict[str, str] = {
    "chamfer_l2": "squared length (sum of the two directional means of squared nearest-neighbour distances)",
    "chamfer_l1": "length (average of the two directional means of nearest-neighbour distances)",
    "surface_distance_mean": "length (mean distance to the true torus surface)",
    "surface_distance_median": "length (median distance to the true torus surface)",
    "surface_distance_max": "length (largest distance to the true torus surface)",
    "num_points": "points (decoded set)",
    "num_reference": "points (reference set)",
}


def _check_points(points: Any, name: str) -> Tensor:
    if not isinstance(points, Tensor) or points.dim() != 2 or points.shape[-1] != 3:
        shape = tuple(points.shape) if isinstance(points, Tensor) else type(points).__name__
        raise ValueError(f"{name} must be a tensor of shape [N, 3] (x, y, z per point), got {shape}")
    if points.shape[0] == 0:
        raise ValueError(f"{name} is empty: a point set needs at least one point")
    if not points.is_floating_point():
        points = points.to(torch.get_default_dtype())
    if not bool(torch.isfinite(points).all()):
        raise ValueError(f"{name} contains NaN or infinite coordinates")
    return points


def nearest_neighbour_distances(a: Tensor, b: Tensor, chunk_size: int = 256) -> tuple[Tensor, Tensor]:
    r"""Nearest-neighbour distances in both directions, unsquared, in the common dtype of ``a`` and ``b``:
    :math:`d_A(i) = \min_j\lVert a_i - b_j\rVert` ``[N]`` and :math:`d_B(j) = \min_i\lVert b_j - a_i\rVert`
    ``[M]``. Memory is :math:`O(\text{chunk\_size}\cdot M)`: ``chunk_size`` rows of ``a`` at a time.
    """
    a, b = _check_points(a, "a"), _check_points(b, "b")
    if isinstance(chunk_size, bool) or not isinstance(chunk_size, int) or chunk_size < 1:
        raise ValueError(f"chunk_size must be a positive integer, got {chunk_size!r}")
    dtype = torch.promote_types(a.dtype, b.dtype)
    a, b = a.to(dtype), b.to(device=a.device, dtype=dtype)
    to_b = []
    to_a = torch.full((b.shape[0],), math.inf, dtype=dtype, device=a.device)
    for start in range(0, a.shape[0], chunk_size):
        block = a[start:start + chunk_size]
        # ||a_i - b_j||^2 = sum_c (a_ic - b_jc)^2, one coordinate at a time: [chunk, M]
        squared = (block[:, None, 0] - b[None, :, 0]) ** 2
        for c in (1, 2):
            squared += (block[:, None, c] - b[None, :, c]) ** 2
        to_b.append(squared.min(dim=1).values)
        to_a = torch.minimum(to_a, squared.min(dim=0).values)
    return torch.cat(to_b).sqrt(), to_a.sqrt()


def chamfer_distance(a: Tensor, b: Tensor, squared: bool = True, chunk_size: int = 256) -> Tensor:
    r"""Chamfer distance between point sets ``a`` ``[N, 3]`` and ``b`` ``[M, 3]``, a 0-d tensor.

    .. math::
        \mathrm{CD}(A, B) = \frac1N\sum_i \min_j \lVert a_i - b_j\rVert^{s}
        + \frac1M\sum_j \min_i \lVert b_j - a_i\rVert^{s}

    with :math:`s = 2` (``squared=True``, the CD-L2 of PointFlow and pytorch3d) or :math:`s = 1`: the *sum*
    of the two directional means in both cases (halve the ``squared=False`` value for the averaged CD-L1).
    Rows of ``a`` are processed ``chunk_size`` at a time (memory :math:`O(\text{chunk\_size}\cdot M)`).
    """
    to_b, to_a = nearest_neighbour_distances(a, b, chunk_size=chunk_size)
    if squared:
        return (to_b**2).mean() + (to_a**2).mean()
    return to_b.mean() + to_a.mean()


def surface_distance(points: Tensor, R: float, r: float) -> Tensor:
    r"""Distance of each point to the torus surface, ``[N, 3] -> [N]``:
    :math:`\big|\sqrt{(\sqrt{x^2+y^2} - R)^2 + z^2} - r\big|` (:func:`dgmlab.data.torus_surface_distance`)."""
    return torus_surface_distance(points, R, r)


@torch.no_grad()
def point_cloud_metrics(decoded: Tensor, reference: Tensor, R: float, r: float,
                        chunk_size: int = 256) -> dict[str, float]:
    r"""Chamfer distances between ``decoded`` ``[N, 3]`` and ``reference`` ``[M, 3]`` and the distance of the
    decoded points to the torus :math:`(R, r)`, as plain floats (computed in float64).

    Returns a dict with ``chamfer_l2`` (squared, sum of the two means), ``chamfer_l1`` (unsquared, average
    of the two means), ``surface_distance_mean``, ``surface_distance_median``, ``surface_distance_max``,
    ``num_points`` and ``num_reference``; :data:`METRIC_UNITS` gives the unit of each.
    """
    decoded = _check_points(decoded, "decoded").double()
    reference = _check_points(reference, "reference").double().to(decoded.device)
    to_reference, to_decoded = nearest_neighbour_distances(decoded, reference, chunk_size=chunk_size)
    distance = surface_distance(decoded, R, r)
    return {
        "chamfer_l2": float((to_reference**2).mean() + (to_decoded**2).mean()),
        "chamfer_l1": float((to_reference.mean() + to_decoded.mean()) / 2),
        "surface_distance_mean": float(distance.mean()),
        "surface_distance_median": float(distance.median()),
        "surface_distance_max": float(distance.max()),
        "num_points": int(decoded.shape[0]),
        "num_reference": int(reference.shape[0]),
    }


def oracle_metrics(R: float = 1.0, r: float = 0.5, num_points: int = 3000,
                   seeds: tuple[int, int] = (1234, 11234), **sampler: Any) -> dict[str, float]:
    r"""The oracle row: :func:`point_cloud_metrics` between two independent samples of the same torus
    (:func:`dgmlab.data.torus_point_cloud` with the two ``seeds``; ``sampler`` passes ``area_uniform`` or
    ``noise_std``). With the defaults, about 0.0042 CD-L2 and 0.040 CD-L1; the surface distance is 0 up to
    rounding (both samples lie on the surface, unless ``noise_std`` > 0)."""
    if seeds[0] == seeds[1]:
        raise ValueError(f"the oracle needs two different seeds (independent samples), got {seeds}")
    first, _ = torus_point_cloud(R, r, num_points, seeds[0], **sampler)
    second, _ = torus_point_cloud(R, r, num_points, seeds[1], **sampler)
    return point_cloud_metrics(first, second, R, r)


@torch.no_grad()
def importance_weighted_nll(model: torch.nn.Module, x: Tensor, num_samples: int = 5000, batch_size: int = 100,
                            chunk_size: int = 500, seed: int = 123) -> float:
    r"""Mean of :math:`-\mathcal L_k(x)` over the rows of ``x``, in nats: the usual NLL estimate of a VAE.

    Batches of ``batch_size`` examples go through :func:`dgmlab.objectives.importance_weighted_bound` with
    ``k = num_samples``; sampling uses a forked RNG seeded with ``seed``, so the caller's stream is untouched.
    """
    from dgmlab.objectives import importance_weighted_bound

    model.eval()
    device = next(model.parameters()).device
    total = 0.0
    with torch.random.fork_rng(devices=[device.index or 0] if device.type == "cuda" else []):
        torch.manual_seed(seed)
        for start in range(0, len(x), batch_size):
            batch = x[start:start + batch_size].to(device)
            bound = importance_weighted_bound(model, batch, num_samples=num_samples, chunk_size=chunk_size)
            total += float(-bound.double().sum())
    return total / len(x)


# ----------------------------------------------------------------------------------------------------------
# Density models of images (PixelCNNs): samples by class, completions, per-pixel NLL
# ----------------------------------------------------------------------------------------------------------
def check_images(x: Any) -> Tensor:
    """``x`` itself if it is a float tensor of images ``[B, 1, H, W]``, else a ValueError saying so."""
    if not isinstance(x, Tensor) or x.dim() != 4 or x.shape[1] != 1 or not x.is_floating_point():
        raise ValueError(f"x must be a float tensor of binary images [B, 1, H, W], got "
                         f"{list(x.shape) if isinstance(x, Tensor) else type(x).__name__}")
    return x


def device_of(model: nn.Module) -> torch.device:
    """The device of the model's parameters."""
    return next(model.parameters()).device


class EvalMode:
    """Run a block with every submodule in evaluation mode, restoring each one's own mode afterwards."""

    def __init__(self, model: nn.Module) -> None:
        self.model = model

    def __enter__(self) -> nn.Module:
        self.modes = {module: module.training for module in self.model.modules()}
        return self.model.eval()

    def __exit__(self, *exc: object) -> None:
        for module, training in self.modes.items():
            module.training = training


@torch.no_grad()
def samples_per_class(
    model: nn.Module, per_class: int, generator: torch.Generator | None = None, fast: bool = True
) -> tuple[Tensor, Tensor]:
    """``per_class`` samples of each class of a class-conditional model, class by class (problem 3(c): 6).

    Returns ``(images, labels)``: binary ``[K * per_class, 1, H, W]`` and ``[K * per_class]``
    (``0,..,0, 1,..,1, ...``), so ``plots.image_grid(images, nrow=per_class)`` shows one class per row.
    :meth:`~dgmlab.models.pixelcnn.RasterScanModel.sample` runs in evaluation mode.
    """
    num_classes = int(getattr(model, "num_classes", 0) or 0)
    if num_classes == 0:
        raise ValueError("samples_per_class needs a class-conditional model (num_classes > 0); use model.sample(n) "
                         "for an unconditional one")
    if isinstance(per_class, bool) or not isinstance(per_class, int) or per_class < 1:
        raise ValueError(f"per_class must be a positive integer, got {per_class!r}")
    labels = torch.arange(num_classes).repeat_interleave(per_class)
    images = model.sample(len(labels), y=labels, generator=generator, fast=fast)
    return images, labels


@torch.no_grad()
def complete_images(
    model: nn.Module,
    x: Tensor,
    known_rows: int,
    samples: int = 2,
    y: Tensor | None = None,
    generator: torch.Generator | None = None,
    fast: bool = True,
) -> Tensor:
    r"""``samples`` completions of each image from its first ``known_rows`` rows.

    The rows below are drawn in raster order from the model, :math:`x_{\ge i}\sim p(\cdot\mid x_{<i})`.

    Returns ``[samples, B, 1, H, W]`` on the model's device, rows ``< known_rows`` equal to ``x``'s; the input of
    :func:`dgmlab.plots.completions`. Sampling runs in evaluation mode.
    """
    x = check_images(x)
    if isinstance(samples, bool) or not isinstance(samples, int) or samples < 1:
        raise ValueError(f"samples must be a positive integer, got {samples!r}")
    x = x.to(device_of(model))
    return torch.stack([model.complete(x, known_rows, y=y, generator=generator, fast=fast) for _ in range(samples)])


@torch.no_grad()
def mean_pixel_nll(model: nn.Module, x: Tensor, y: Tensor | None = None, batch_size: int = 250) -> Tensor:
    r"""The mean over images of :math:`-\log p(x_{rs}\mid x_{<rs})` in nats, ``[H, W]``, in evaluation mode.

    Its sum is the mean NLL per image; the input of :func:`dgmlab.plots.pixel_nll_heatmap`. Returned on the CPU.
    """
    x = check_images(x)
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batch_size must be a positive integer, got {batch_size!r}")
    if len(x) == 0:
        raise ValueError("x holds no images")
    device = device_of(model)
    total = torch.zeros(x.shape[2:], dtype=torch.float64)
    with EvalMode(model):
        for start in range(0, len(x), batch_size):
            batch = x[start:start + batch_size].to(device)
            labels = None if y is None else y[start:start + batch_size]
            per_pixel = model.log_prob_per_pixel(batch) if labels is None else model.log_prob_per_pixel(batch, labels)
            total -= per_pixel.sum(0).double().cpu()
    return (total / len(x)).float()
