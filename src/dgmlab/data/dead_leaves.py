r"""Dead-leaves images (Matheron; used by Zoran & Weiss 2012) and the power spectrum of an image.

A dead-leaves image is made of opaque discs ("leaves") of uniform random grey level, dropped on the canvas one
after another with the earlier ones on top, until every pixel is covered. The radii follow the power law

.. math:: p(r) \propto r^{-3},\qquad r_{\min} \le r \le r_{\max},

drawn by inverting its CDF, :math:`r = \big(r_{\min}^{-2} - u\,(r_{\min}^{-2} - r_{\max}^{-2})\big)^{-1/2}` with
:math:`u \sim U(0, 1)`. This law makes the images (between the two cut-offs) statistically scale invariant, so
their power spectrum falls like :math:`|f|^{-\alpha}` with :math:`\alpha` close to 2, as that of natural images.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import Tensor

from dgmlab.numerics import fit_power_law
from dgmlab.utils import check_int

__all__ = ["dead_leaves", "leaf_radii", "power_spectrum", "spectrum_slope"]


def leaf_radii(n: int, r_min: float, r_max: float, *, generator: torch.Generator | None = None) -> Tensor:
    """``n`` radii from :math:`p(r) \\propto r^{-3}` on ``[r_min, r_max]`` by the inverse CDF, float64."""
    if not 0 < r_min <= r_max:
        raise ValueError(f"dead_leaves: need 0 < r_min <= r_max, got r_min={r_min}, r_max={r_max}")
    u = torch.rand(n, generator=generator, dtype=torch.float64)
    return (r_min**-2 - u * (r_min**-2 - r_max**-2)) ** -0.5


def dead_leaves(size: int = 256, *, r_min: float = 1.0, r_max: float = 64.0, generator: torch.Generator | None = None,
                batch: int = 256, max_leaves: int = 1_000_000) -> Tensor:
    """One ``size`` x ``size`` dead-leaves image, grey levels in [0, 1], float64. Centres are uniform over the
    canvas grown by ``r_max`` on every side, so leaves may be cut by the border. Leaves are drawn ``batch`` at a
    time; a pixel takes the first leaf (in drawing order) that covers it."""
    check_int(size, "size", minimum=1, owner="dead_leaves")
    leaf_radii(1, r_min, r_max)  # checks the range
    # the pixels no leaf covers yet, as flat indices and centre coordinates; only they are tested against new leaves
    open_pixels = torch.arange(size * size)
    rows, cols = (open_pixels // size).double() + 0.5, (open_pixels % size).double() + 0.5
    image = torch.empty(size * size, dtype=torch.float64)
    drawn = 0
    while len(open_pixels):
        if drawn >= max_leaves:
            raise RuntimeError(f"dead_leaves: {max_leaves} leaves did not cover the canvas; raise r_min")
        radii = leaf_radii(batch, r_min, r_max, generator=generator)
        centres = torch.rand(batch, 2, generator=generator, dtype=torch.float64) * (size + 2 * r_max) - r_max
        grey = torch.rand(batch, generator=generator, dtype=torch.float64)
        covers = (rows[None] - centres[:, :1]) ** 2 + (cols[None] - centres[:, 1:]) ** 2 <= radii[:, None] ** 2
        hit = covers.any(0)
        first = covers.to(torch.uint8).argmax(0)  # the earliest leaf of this batch over each open pixel
        image[open_pixels[hit]] = grey[first[hit]]
        open_pixels, rows, cols = open_pixels[~hit], rows[~hit], cols[~hit]
        drawn += batch
    return image.reshape(size, size)


def power_spectrum(image: Tensor) -> tuple[np.ndarray, np.ndarray]:
    """The radially averaged power spectrum of ``image`` ``[H, W]`` (its mean removed): the spatial
    frequencies in cycles per pixel (integer radii of the centred FFT over the image side) and the mean of
    :math:`|\\hat x(f)|^2` at each, up to the Nyquist frequency 0.5, without the zero frequency."""
    if not isinstance(image, Tensor) or image.dim() != 2 or min(image.shape) < 4:
        raise ValueError(f"power_spectrum: image must be a 2-D tensor at least 4x4, got "
                         f"{list(image.shape) if isinstance(image, Tensor) else type(image).__name__}")
    side = min(image.shape)
    square = image[:side, :side].double()
    power = torch.fft.fftshift(torch.fft.fft2(square - square.mean())).abs().square().numpy()
    centre = side // 2
    yy, xx = np.indices(power.shape)
    radius = np.rint(np.hypot(yy - centre, xx - centre)).astype(int)
    sums = np.bincount(radius.ravel(), power.ravel())
    counts = np.bincount(radius.ravel())
    radii = np.arange(1, centre + 1)
    return radii / side, sums[radii] / counts[radii]


def spectrum_slope(image: Tensor, low: float = 0.01, high: float = 0.25) -> float:
    """The exponent of a power law fitted to :func:`power_spectrum` between the frequencies ``low`` and
    ``high`` (cycles per pixel). A scale-invariant image gives about -2; the photographs of
    :mod:`dgmlab.data.images` measure between about -1.5 (grass) and -3 on this range."""
    frequency, power = power_spectrum(image)
    keep = (frequency >= low) & (frequency <= high)
    if keep.sum() < 2:
        raise ValueError(f"spectrum_slope: fewer than two frequencies in [{low}, {high}] for this image size")
    slope, _ = fit_power_law(frequency[keep], power[keep])
    return slope


