r"""Point clouds on a torus, as in problem set 1 (section 3a), and the distance to its surface.

A torus with major radius :math:`R` (centre of the tube to the z-axis) and minor radius :math:`r` (the
tube) is parametrised by two angles :math:`u, v \in [0, 2\pi)`:

.. math::
    x = (R + r\cos v)\cos u,\qquad y = (R + r\cos v)\sin u,\qquad z = r\sin v .

Its area element is :math:`dA = r\,(R + r\cos v)\,du\,dv`. The problem set draws :math:`u` and
:math:`v` uniformly, so per unit *area* the points are denser on the inner equator
(:math:`\cos v = -1`) than on the outer one, by a factor :math:`(R + r)/(R - r)` (3 for R = 1, r = 0.5).
``area_uniform=True`` instead draws :math:`v` with density :math:`(R + r\cos v) / (2\pi R)` by rejection:
a proposal :math:`v \sim \mathcal U[0, 2\pi)` is kept with probability :math:`(R + r\cos v)/(R + r)`.
Under that density :math:`P(\cos v > 0) = 1/2 + r/(\pi R)` and :math:`E[\cos v] = r / (2R)`.

Random streams (all private ``numpy.random.RandomState``; the global numpy RNG is never touched):

=========================  ==================================================
``RandomState(seed)``      :math:`u`, as the problem set's ``np.random.seed(seed)``
``RandomState(seed + 1)``  :math:`v` (angle-uniform), as ``np.random.seed(seed + 1)``
``RandomState(seed + 2)``  the Gaussian noise (``noise_std > 0``)
``RandomState(seed + 3)``  :math:`v` proposals and acceptances (``area_uniform``)
=========================  ==================================================
"""

from __future__ import annotations

import math
import numbers

import numpy as np
import torch

__all__ = ["torus_point_cloud", "torus_surface_distance", "torus_points_from_angles"]

_MAX_SEED = 2**32 - 1 - 3  # RandomState takes seeds below 2**32, and we use up to seed + 3


def _check_radii(R: float, r: float) -> None:
    for name, value in (("R", R), ("r", r)):
        if isinstance(value, bool) or not isinstance(value, numbers.Real) or not math.isfinite(value):
            raise ValueError(f"torus: {name} must be a finite number, got {value!r}")
    if not R > r > 0:
        raise ValueError(f"torus: need R > r > 0 (a ring torus), got R={R!r}, r={r!r}")


def torus_points_from_angles(u: np.ndarray, v: np.ndarray, R: float, r: float) -> np.ndarray:
    r"""Points :math:`((R + r\cos v)\cos u, (R + r\cos v)\sin u, r\sin v)`, float64 ``[N, 3]``."""
    u = np.asarray(u, dtype=np.float64)
    v = np.asarray(v, dtype=np.float64)
    ring = R + r * np.cos(v)
    return np.stack([ring * np.cos(u), ring * np.sin(u), r * np.sin(v)], axis=1)


def _area_uniform_v(R: float, r: float, num_points: int, random: np.random.RandomState) -> np.ndarray:
    """Draw ``v`` with density ``(R + r cos v) / (2 pi R)`` by rejection from the uniform proposal."""
    acceptance_rate = R / (R + r)  # mean of (R + r cos v) / (R + r) over v ~ U[0, 2 pi)
    accepted: list[np.ndarray] = []
    remaining = num_points
    while remaining > 0:
        proposals = int(math.ceil(remaining / acceptance_rate * 1.1)) + 16
        v = random.uniform(0.0, 2.0 * np.pi, proposals)
        keep = random.uniform(0.0, 1.0, proposals) < (R + r * np.cos(v)) / (R + r)
        accepted.append(v[keep][:remaining])
        remaining -= accepted[-1].shape[0]
    return np.concatenate(accepted)


def torus_point_cloud(
    R: float = 1.0,
    r: float = 0.5,
    num_points: int = 3000,
    seed: int = 1234,
    *,
    area_uniform: bool = False,
    noise_std: float = 0.0,
) -> tuple[torch.Tensor, torch.Tensor]:
    r"""Sample points on a torus, reproducing problem set 1's ``generate_torus_point_cloud`` exactly.

    With the defaults, :math:`u \sim \mathcal U[0, 2\pi)` from ``RandomState(seed)`` and
    :math:`v \sim \mathcal U[0, 2\pi)` from ``RandomState(seed + 1)``, which are the numbers the problem
    set draws after ``np.random.seed(seed)`` / ``np.random.seed(seed + 1)``; the first point is
    (0.5313, 1.3803, -0.1432). Computed in float64, returned in float32.

    Args:
        R: major radius (tube centre to the z-axis).
        r: minor radius (the tube); ``R > r > 0``.
        num_points: N, at least 1.
        seed: base seed, ``0 <= seed < 2**32 - 4`` (streams ``seed`` .. ``seed + 3``, see the module).
        area_uniform: draw :math:`v` uniformly in surface area (rejection sampling) instead of in angle.
        noise_std: standard deviation of isotropic Gaussian noise added to every coordinate (0: none).

    Returns:
        ``(points, angles)``: ``points`` float32 ``[N, 3]`` (x, y, z); ``angles`` float32 ``[N, 2]`` with
        columns (u, v), the angles of each point before noise.
    """
    _check_radii(R, r)
    if isinstance(num_points, bool) or not isinstance(num_points, (int, np.integer)) or num_points < 1:
        raise ValueError(f"torus_point_cloud: num_points must be an integer >= 1, got {num_points!r}")
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or not 0 <= seed <= _MAX_SEED:
        raise ValueError(f"torus_point_cloud: seed must be an integer in [0, {_MAX_SEED}], got {seed!r}")
    if (
        isinstance(noise_std, bool)
        or not isinstance(noise_std, numbers.Real)
        or not (math.isfinite(noise_std) and noise_std >= 0)
    ):
        raise ValueError(f"torus_point_cloud: noise_std must be a finite number >= 0, got {noise_std!r}")
    num_points, seed = int(num_points), int(seed)

    u = np.random.RandomState(seed).uniform(0.0, 2.0 * np.pi, num_points)
    if area_uniform:
        v = _area_uniform_v(R, r, num_points, np.random.RandomState(seed + 3))
    else:
        v = np.random.RandomState(seed + 1).uniform(0.0, 2.0 * np.pi, num_points)
    points = torus_points_from_angles(u, v, R, r)
    if noise_std > 0:
        points = points + noise_std * np.random.RandomState(seed + 2).standard_normal(points.shape)
    angles = np.stack([u, v], axis=1)
    return torch.from_numpy(points.astype(np.float32)), torch.from_numpy(angles.astype(np.float32))


def torus_surface_distance(points: torch.Tensor, R: float, r: float) -> torch.Tensor:
    r"""Euclidean distance of each point to the torus surface.

    .. math::
        d(p) = \Big|\sqrt{\big(\sqrt{x^2 + y^2} - R\big)^2 + z^2} - r\Big|

    (the distance to the tube's centre circle, minus the tube radius). Exact for every point, inside or
    outside the tube.

    Args:
        points: ``[N, 3]`` (or ``[..., 3]``) floating-point tensor.
        R: major radius, ``R > r > 0``.
        r: minor radius.

    Returns:
        ``[N]`` (or ``[...]``) distances, in the dtype and on the device of ``points``.
    """
    _check_radii(R, r)
    if not isinstance(points, torch.Tensor) or points.dim() < 1 or points.shape[-1] != 3:
        shape = tuple(points.shape) if isinstance(points, torch.Tensor) else type(points).__name__
        raise ValueError(f"torus_surface_distance: points must be a tensor of shape [N, 3], got {shape}")
    if not points.is_floating_point():
        points = points.to(torch.get_default_dtype())
    x, y, z = points.unbind(-1)
    # distance to the tube's centre circle, then minus the tube radius
    to_centre_circle = torch.hypot(torch.hypot(x, y) - R, z)
    return (to_centre_circle - r).abs()
