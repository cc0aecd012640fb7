r"""Whole-image restoration with a patch prior: EPLL by half-quadratic splitting (Zoran & Weiss 2011).

Observe :math:`y = Ax + n`, :math:`n \sim \mathcal N(0, \sigma^2 I)`, with :math:`A` the identity (denoising) or a
diagonal mask of known pixels (inpainting). EPLL asks every patch :math:`P_i x` of the restored image to be
likely under the patch prior :math:`p` (here a Gaussian mixture on mean-removed patches):

.. math:: f(x \mid y) = \frac{\lambda}{2}\lVert Ax - y\rVert^2 - \sum_i \log p(P_i x).

Half-quadratic splitting gives every patch an auxiliary copy :math:`z_i` and minimises

.. math:: c_\beta(x, \{z_i\}) = \frac{\lambda}{2}\lVert Ax - y\rVert^2
          + \sum_i \Big[\frac{\beta}{2}\lVert P_i x - z_i\rVert^2 - \log p(z_i)\Big]

for an increasing schedule of :math:`\beta`, alternating

1. the **z-step**, patch by patch: MAP denoising of :math:`P_i x` at noise variance :math:`1/\beta`, approximated
   as in the paper by the component that best explains the noisy patch,
   :math:`k^\ast = \arg\max_k \pi_k\mathcal N(P_ix; \mu_k, \Sigma_k + \beta^{-1}I)`, and its Wiener filter
   :math:`z_i = \mu_k + \Sigma_k(\Sigma_k + \beta^{-1}I)^{-1}(P_ix - \mu_k)` (the patch's own mean is removed
   before and added back after, as the prior models mean-removed patches);
2. the **x-step**, a quadratic in :math:`x` with a diagonal system:
   :math:`\hat x = (\lambda A^\top A + \beta\sum_j P_j^\top P_j)^{-1}(\lambda A^\top y + \beta\sum_j P_j^\top z_j)`,
   where :math:`\sum_j P_j^\top P_j` counts the patches that cover each pixel.

The defaults are the paper's: :math:`\lambda = p^2/\sigma^2` and :math:`\beta = \sigma^{-2}\,(1, 4, 8, 16, 32, 64)`,
one z-step and one x-step per :math:`\beta`. Images are grey levels in [0, 1]; :math:`\sigma` is in the same
units (a noise of 25 grey levels on the 0..255 scale is :math:`\sigma = 25/255`).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import Tensor

from dgmlab.models.mixtures import GaussianMixture, most_likely_component

__all__ = ["EPLLResult", "add_noise", "epll", "psnr", "wiener_patches", "x_step"]

PAPER_BETAS = (1.0, 4.0, 8.0, 16.0, 32.0, 64.0)


def psnr(estimate: Tensor, clean: Tensor, peak: float = 1.0) -> float:
    r"""Peak signal-to-noise ratio in dB, :math:`10\log_{10}(\text{peak}^2 / \text{MSE})`."""
    if estimate.shape != clean.shape:
        raise ValueError(f"psnr: the estimate {list(estimate.shape)} and the clean image {list(clean.shape)} "
                         f"differ in shape")
    mse = float(((estimate.double() - clean.double()) ** 2).mean())
    return math.inf if mse == 0 else 10 * math.log10(peak**2 / mse)


def add_noise(image: Tensor, sigma: float, *, seed: int = 0) -> Tensor:
    """``image`` plus Gaussian noise of standard deviation ``sigma`` from a fixed seed (not clipped, as in the
    paper's experiments)."""
    generator = torch.Generator().manual_seed(seed)
    return image + sigma * torch.randn(image.shape, generator=generator, dtype=image.dtype)


def _patches(image: Tensor, size: int) -> Tensor:
    # every size x size window, row-major positions, each flattened row by row: [L, size^2]
    return F.unfold(image[None, None], size)[0].T


def _fold(patches: Tensor, shape: tuple[int, int], size: int) -> Tensor:
    # sum_j P_j^T z_j: every patch added back where it came from
    return F.fold(patches.T[None], shape, size)[0, 0]


@torch.no_grad()
def wiener_patches(mixture: GaussianMixture, patches: Tensor, noise_variance: float, *,
                   compute_dtype: torch.dtype | None = torch.float32) -> tuple[Tensor, Tensor]:
    r"""The z-step on mean-removed ``patches`` ``[N, D]``: each patch's most likely component under noise of
    variance :math:`s` and its Wiener filter :math:`\mu_k + \Sigma_k(\Sigma_k + sI)^{-1}(y - \mu_k)`. Returns the
    filtered patches and the chosen components ``[N]``. ``compute_dtype`` is the dtype of the choice
    (:func:`~dgmlab.models.mixtures.most_likely_component`); the filtering is in the patches' dtype."""
    components = most_likely_component(mixture, patches, added_variance=noise_variance, compute_dtype=compute_dtype)
    sigma = mixture.covariances
    eye = torch.eye(mixture.dim, dtype=sigma.dtype, device=sigma.device)
    # F_k^T = (Sigma_k + s I)^{-1} Sigma_k, the transpose of the Wiener filter (both factors symmetric)
    filters_t = torch.linalg.solve(sigma + noise_variance * eye, sigma).to(patches.dtype)
    means = mixture.means.to(patches.dtype)
    filtered = torch.empty_like(patches)
    order = torch.argsort(components)
    counts = torch.bincount(components, minlength=mixture.num_components).tolist()
    start = 0
    for k, count in enumerate(counts):
        if count:
            rows = order[start:start + count]
            filtered[rows] = means[k] + (patches[rows] - means[k]) @ filters_t[k]
            start += count
    return filtered, components


def x_step(noisy: Tensor, patches: Tensor, observed: Tensor, lam: float, beta: float, size: int) -> Tensor:
    r"""The minimiser over :math:`x` of :math:`\frac{\lambda}{2}\lVert Ax - y\rVert^2 + \frac{\beta}{2}\sum_i
    \lVert P_ix - z_i\rVert^2` with :math:`A = \operatorname{diag}(\text{observed})`: per pixel,
    :math:`(\lambda a y + \beta\sum_i [P_i^\top z_i]) / (\lambda a + \beta c)` with :math:`c` the number of
    patches covering the pixel. ``patches`` ``[L, size^2]`` are the :math:`z_i` of every window, row-major."""
    shape = tuple(noisy.shape)
    coverage = _fold(torch.ones_like(patches), shape, size)
    return (lam * observed * noisy + beta * _fold(patches, shape, size)) / (lam * observed + beta * coverage)


@dataclass
class EPLLResult:
    """``image`` the restored image (clipped to [0, 1]); ``betas`` the schedule; ``psnr`` the PSNR after each
    round where a clean image was given; ``components_used`` how many distinct components the last z-step
    chose."""

    image: Tensor
    betas: list[float]
    psnr: list[float] = field(default_factory=list)
    components_used: int = 0


def _check_inputs(noisy: object, mixture: GaussianMixture, sigma: float, mask: Tensor | None) -> int:
    if not isinstance(noisy, Tensor) or noisy.dim() != 2 or not noisy.is_floating_point():
        shape = list(noisy.shape) if isinstance(noisy, Tensor) else type(noisy).__name__
        raise ValueError(f"epll: the image must be a float tensor of grey levels [H, W], got {shape}")
    size = math.isqrt(mixture.dim)
    if size * size != mixture.dim:
        raise ValueError(f"epll: the prior is over {mixture.dim} values, not a square patch")
    if min(noisy.shape) < size:
        raise ValueError(f"epll: a {list(noisy.shape)} image is smaller than the prior's {size}x{size} patches")
    if not (isinstance(sigma, (int, float)) and sigma > 0):
        raise ValueError(f"epll: sigma must be the noise's standard deviation (> 0, grey levels in [0, 1]), got "
                         f"{sigma!r}")
    if mask is not None and mask.shape != noisy.shape:
        raise ValueError(f"epll: the mask {list(mask.shape)} must have the image's shape {list(noisy.shape)}")
    return size


@torch.no_grad()
def epll(noisy: Tensor, mixture: GaussianMixture, sigma: float, *, mask: Tensor | None = None,
         betas: Sequence[float] | None = None, lam: float | None = None, clean: Tensor | None = None,
         compute_dtype: torch.dtype | None = torch.float32,
         callback: Callable[[int, float, Tensor], None] | None = None) -> EPLLResult:
    r"""Restore ``noisy`` ``[H, W]`` with the patch prior ``mixture`` (over mean-removed :math:`p\times p` patches)
    by half-quadratic splitting; see the module's equations.

    ``sigma``: the noise's standard deviation. ``mask``: 1 where a pixel is observed, 0 where it is missing
    (inpainting; missing pixels start at the mean of the observed ones). ``betas``: the schedule (default
    :math:`\sigma^{-2}(1, 4, 8, 16, 32, 64)`); ``lam``: :math:`\lambda` (default :math:`p^2/\sigma^2`).
    ``clean``: the clean image, to record the PSNR after every round. ``callback(round, beta, image)``."""
    size = _check_inputs(noisy, mixture, sigma, mask)
    dtype = torch.float64
    y = noisy.to(dtype)
    lam = size * size / sigma**2 if lam is None else float(lam)
    betas = [b / sigma**2 for b in PAPER_BETAS] if betas is None else [float(b) for b in betas]
    observed = torch.ones_like(y) if mask is None else mask.to(dtype)
    x = y.clone() if mask is None else torch.where(observed > 0, y, y[observed > 0].mean())
    result = EPLLResult(image=x, betas=betas)
    for round_index, beta in enumerate(betas):
        # z-step: MAP of every patch at noise variance 1/beta, on the patch with its own mean removed
        patches = _patches(x, size)
        patch_means = patches.mean(1, keepdim=True)
        z, components = wiener_patches(mixture, patches - patch_means, 1.0 / beta, compute_dtype=compute_dtype)
        # x-step: (lam A^T A + beta sum P^T P)^{-1} (lam A^T y + beta sum P^T z), diagonal
        x = x_step(y, z + patch_means, observed, lam, beta, size)
        result.components_used = int(torch.unique(components).numel())
        if clean is not None:
            result.psnr.append(psnr(x.clamp(0, 1), clean))
        if callback is not None:
            callback(round_index, beta, x)
    result.image = x.clamp(0, 1)
    return result
