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

:func:`adapted_epll` first re-estimates the prior from the noisy image's own patches (EM with the clean patches
as latent variables, MAP towards the generic prior; :func:`~dgmlab.models.mixtures.adapt_to_noisy`), then runs
EPLL with it, and by default a second time with the prior adapted to the first restoration's patches.

The deep image prior (Ulyanov et al. 2018, :func:`deep_image_prior`) restores without any learned prior: it fits
a randomly initialised network :math:`f_\theta(z)` (:class:`~dgmlab.models.deep_image_prior.SkipNet`) to the
noisy image, :math:`\min_\theta \lVert f_\theta(z) - y\rVert^2` by Adam, and stops early, before the
network has fitted the noise; :mod:`dgmlab.models.deep_image_prior` gives the equations.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from dgmlab.models.deep_image_prior import SkipNet
from dgmlab.models.mixtures import GaussianMixture, adapt_to_noisy, most_likely_component, wiener_gains
from dgmlab.utils import check_int

__all__ = ["DeepImagePriorResult", "EPLLResult", "adapted_epll", "add_noise", "deep_image_prior", "epll", "psnr",
           "wiener_patches", "x_step"]

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


def annealed_betas(first_sigma: float, last_sigma: float, rounds: int) -> list[float]:
    r"""A schedule :math:`\beta_t = \sigma_t^{-2}` whose :math:`\sigma_t` fall geometrically from ``first_sigma`` to
    ``last_sigma`` in ``rounds`` steps. For inpainting without noise the paper's :math:`\sigma^{-2}(1, \ldots, 64)`
    starts too close to the data to move missing pixels; this starts at a patch noise that lets the prior fill
    them and ends near the data."""
    if not (0 < last_sigma <= first_sigma):
        raise ValueError(f"annealed_betas: need 0 < last_sigma <= first_sigma, got {first_sigma!r} and {last_sigma!r}")
    if not (isinstance(rounds, int) and rounds >= 1):
        raise ValueError(f"annealed_betas: rounds must be an integer >= 1, got {rounds!r}")
    if rounds == 1:
        return [last_sigma**-2]
    ratio = last_sigma / first_sigma
    return [(first_sigma * ratio ** (t / (rounds - 1))) ** -2 for t in range(rounds)]


def _patches(image: Tensor, size: int, stride: int = 1) -> Tensor:
    # every size x size window (every stride-th), row-major positions, each flattened row by row: [L, size^2]
    return F.unfold(image[None, None], size, stride=stride)[0].T


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
    # the filters transposed, so that each patch (a row) is multiplied from the left
    filters_t = wiener_gains(mixture, noise_variance).transpose(-1, -2).to(patches.dtype)
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


def _check_inputs(noisy: object, mixture: GaussianMixture, sigma: float, mask: Tensor | None,
                  initial: object) -> int:
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
    if initial is not None and (not isinstance(initial, Tensor) or initial.shape != noisy.shape):
        shape = list(initial.shape) if isinstance(initial, Tensor) else type(initial).__name__
        raise ValueError(f"epll: the initial image {shape} must have the image's shape {list(noisy.shape)}")
    return size


@torch.no_grad()
def epll(noisy: Tensor, mixture: GaussianMixture, sigma: float, *, mask: Tensor | None = None,
         betas: Sequence[float] | None = None, lam: float | None = None, initial: Tensor | None = None,
         clean: Tensor | None = None,
         compute_dtype: torch.dtype | None = torch.float32,
         callback: Callable[[int, float, Tensor], None] | None = None) -> EPLLResult:
    r"""Restore ``noisy`` ``[H, W]`` with the patch prior ``mixture`` (over mean-removed :math:`p\times p` patches)
    by half-quadratic splitting; see the module's equations.

    ``sigma``: the noise's standard deviation. ``mask``: 1 where a pixel is observed, 0 where it is missing
    (inpainting; missing pixels start at the mean of the observed ones unless ``initial`` is given).
    ``betas``: the schedule (default :math:`\sigma^{-2}(1, 4, 8, 16, 32, 64)`);
    ``lam``: :math:`\lambda` (default :math:`p^2/\sigma^2`).
    ``initial``: the starting :math:`x` (default: ``noisy``), e.g. an interpolation of the missing pixels.
    ``clean``: the clean image, to record the PSNR after every round. ``callback(round, beta, image)``."""
    size = _check_inputs(noisy, mixture, sigma, mask, initial)
    dtype = torch.float64
    y = noisy.to(dtype)
    lam = size * size / sigma**2 if lam is None else float(lam)
    betas = [b / sigma**2 for b in PAPER_BETAS] if betas is None else [float(b) for b in betas]
    observed = torch.ones_like(y) if mask is None else mask.to(dtype)
    if initial is not None:
        x = initial.to(dtype).clone()
    else:
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


@torch.no_grad()
def adapted_epll(noisy: Tensor, prior: GaussianMixture, sigma: float, *, relevance: float = 1.0,
                 iterations: int = 10, stride: int = 1, second_pass: float | None = 0.2,
                 compute_dtype: torch.dtype | None = torch.float32, **epll_options) -> EPLLResult:
    r"""EPLL with the patch prior first adapted to the image itself (beyond Zoran & Weiss 2011), in two passes.

    1. The clean-patch mixture is re-estimated from the noisy image's own mean-removed patches (every
       ``stride``-th window) by :func:`~dgmlab.models.mixtures.adapt_to_noisy`: EM with the clean patches as
       latent variables, the noise variance :math:`\sigma^2`, ``iterations`` iterations from ``prior`` and
       ``relevance`` :math:`\rho` pulling each component towards it; :func:`epll` restores ``noisy`` with it.
    2. With ``second_pass`` :math:`= c` (not ``None``), the mixture is adapted again from ``prior``, now to the
       patches of the first restoration :math:`\hat x_1`, whose remaining error is modelled as white noise of
       variance :math:`c\sigma^2`; :func:`epll` restores ``noisy`` once more with that mixture.

    ``epll_options`` go to both :func:`epll` calls (``betas``, ``lam``, ...; ``clean`` and ``callback`` to the
    last only). Components that the image's patches use move to the image's statistics (its repeated textures and
    edge directions); the others keep the prior's. The noise of a mean-removed patch has covariance
    :math:`\sigma^2(I - \tfrac1D\mathbf 1\mathbf 1^\top)`, taken as :math:`\sigma^2I` as in EPLL's z-step.
    Denoising only (no ``mask``): the adaptation's likelihood assumes every pixel observed with noise
    :math:`\sigma`. It needs enough patches per component: with the bundled :math:`K = 200` prior at
    :math:`\sigma = 25/255` and the paper's schedule it gained 0.41 dB over :func:`epll` on the centre
    :math:`96\times96` of camera (7,921 patches) but lost 0.38 dB on its centre :math:`48\times48` (1,681
    patches), where the adapted covariances fit the noise; for images that small use :func:`epll`."""
    size = _check_inputs(noisy, prior, sigma, None, epll_options.get("initial"))
    if "mask" in epll_options:
        raise ValueError("adapted_epll: denoising only; for inpainting (a mask) use epll with the prior as it is")
    stride = check_int(stride, "stride", minimum=1, owner="adapted_epll")
    if second_pass is not None and not (isinstance(second_pass, (int, float)) and second_pass > 0):
        raise ValueError(f"adapted_epll: second_pass is the first restoration's error variance as a fraction of "
                         f"sigma^2 (a number > 0, e.g. 0.2), or None for one pass; got {second_pass!r}")

    def adapted_to(image: Tensor, noise_variance: float) -> GaussianMixture:
        patches = _patches(image.to(prior.means.dtype), size, stride)
        mixture, _ = adapt_to_noisy(prior, patches - patches.mean(1, keepdim=True), noise_variance,
                                    relevance=relevance, iterations=iterations, compute_dtype=compute_dtype)
        return mixture

    last_only = {key: epll_options.pop(key) for key in ("clean", "callback") if key in epll_options}
    mixture = adapted_to(noisy, float(sigma) ** 2)
    if second_pass is not None:
        first = epll(noisy, mixture, sigma, compute_dtype=compute_dtype, **epll_options)
        mixture = adapted_to(first.image, float(second_pass) * float(sigma) ** 2)
    return epll(noisy, mixture, sigma, compute_dtype=compute_dtype, **epll_options, **last_only)


@dataclass
class DeepImagePriorResult:
    """``image``: the restoration, the exponential average of the outputs after the last step, ``[H, W]`` in
    [0, 1] on the CPU. Every ``record_every`` steps (and after the last) the lists gain one entry: ``iterations``
    (steps taken, from 1), ``loss`` (the step's mean squared error to the noisy image), and where a clean image
    was given ``psnr`` (dB, the step's output) and ``psnr_average`` (dB, the averaged output). ``seconds``: the
    wall time of the whole fit."""

    image: Tensor
    iterations: list[int] = field(default_factory=list)
    psnr: list[float] = field(default_factory=list)
    psnr_average: list[float] = field(default_factory=list)
    loss: list[float] = field(default_factory=list)
    seconds: float = 0.0


def _check_deep_image_prior_inputs(noisy: object, clean: Tensor | None, lr: float, input_noise_std: float,
                                   average: float) -> None:
    owner = "deep_image_prior"
    if not isinstance(noisy, Tensor) or noisy.dim() != 2 or not noisy.is_floating_point():
        shape = list(noisy.shape) if isinstance(noisy, Tensor) else type(noisy).__name__
        raise ValueError(f"{owner}: the noisy image must be a float tensor of grey levels [H, W], got {shape}")
    if clean is not None and (not isinstance(clean, Tensor) or clean.shape != noisy.shape):
        shape = list(clean.shape) if isinstance(clean, Tensor) else type(clean).__name__
        raise ValueError(f"{owner}: the clean image {shape} must have the noisy image's shape {list(noisy.shape)}")
    for name, value, low_closed in (("lr", lr, False), ("input_noise_std", input_noise_std, True)):
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) \
                or value < 0 or (value == 0 and not low_closed):
            bound = ">= 0" if low_closed else "> 0"
            raise ValueError(f"{owner}: {name} must be a finite number {bound}, got {value!r}")
    if isinstance(average, bool) or not isinstance(average, (int, float)) or not 0 <= average < 1:
        raise ValueError(f"{owner}: average must be the weight of the running average in [0, 1) (0: no "
                         f"averaging, the paper's code uses 0.99), got {average!r}")


def deep_image_prior(noisy: Tensor, *, iterations: int = 3000, lr: float = 0.01, input_channels: int = 32,
                     input_noise_std: float = 1 / 30, average: float = 0.99, clean: Tensor | None = None,
                     record_every: int = 100, seed: int = 0, device: str | torch.device = "cpu",
                     net: nn.Module | None = None,
                     callback: Callable[[int, Tensor, Tensor], None] | None = None) -> DeepImagePriorResult:
    r"""Denoise ``noisy`` ``[H, W]`` (grey levels) with the deep image prior: fit :math:`f_\theta` to it from the
    fixed code :math:`z \sim 0.1\,\mathcal U[0, 1)^{C\times H\times W}` by Adam on
    :math:`\lVert f_\theta(z + \sigma_p\varepsilon_t) - y\rVert^2 / HW` (a fresh :math:`\varepsilon_t` every
    step) for ``iterations`` steps; the result is the running average
    :math:`\bar x_t = \gamma\bar x_{t-1} + (1-\gamma) f_{\theta}(z_t)`, :math:`\bar x_1 = f_\theta(z_1)`.
    The number of steps is the regulariser: choose it on images other than the ones reported.

    ``lr``: Adam's step size; ``input_channels``: :math:`C`; ``input_noise_std``: :math:`\sigma_p` (0: a fixed
    code); ``average``: :math:`\gamma` (0: the last output). ``clean``: the clean image ``[H, W]``, to record the
    PSNR of the output and of the average every ``record_every`` steps (the only host synchronisations of the
    loop). ``seed`` fixes :math:`z`, the perturbations and, when ``net`` is ``None``, the initial weights of
    the paper's denoising :class:`~dgmlab.models.deep_image_prior.SkipNet` (5 levels of 128 channels, skips
    of 4); a given ``net`` (code channels ``input_channels``, one output channel) is trained in place.
    ``callback(iteration, output, average)`` after every step, with the step's output and the running average,
    both ``[H, W]`` and detached (the average is updated in place by later steps: clone what you keep).
    Deterministic on the CPU for a fixed seed and thread count."""
    _check_deep_image_prior_inputs(noisy, clean, lr, input_noise_std, average)
    owner = "deep_image_prior"
    check_int(iterations, "iterations", minimum=1, owner=owner, hint="the number of Adam steps")
    check_int(record_every, "record_every", minimum=1, owner=owner)
    check_int(input_channels, "input_channels", minimum=1, owner=owner, hint="the channels of the code z")
    check_int(seed, "seed", owner=owner)
    device = torch.device(device)
    height, width = noisy.shape
    if net is None:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            net = SkipNet(input_channels, 1)
    if isinstance(net, SkipNet):
        if net.in_channels != input_channels or net.out_channels != 1:
            raise ValueError(f"{owner}: the net maps {net.in_channels} code channels to {net.out_channels} "
                             f"images, but the code has input_channels = {input_channels} and a grey image one "
                             f"channel; build SkipNet({input_channels}, 1, ...)")
        try:
            net.check_size(height, width)
        except ValueError as error:
            raise ValueError(f"{owner}: {error}") from None
    net = net.to(device).train()
    started = time.perf_counter()
    y = noisy.to(device, torch.float32)[None, None]
    reference = None if clean is None else clean.to(device)
    # z ~ 0.1 U[0, 1): drawn on the CPU, so the code is the same on every device
    z = (0.1 * torch.rand(1, input_channels, height, width, generator=torch.Generator().manual_seed(seed))).to(device)
    perturbation = torch.Generator(device=device).manual_seed(seed + 1)
    optimizer = torch.optim.Adam(net.parameters(), lr=lr, foreach=True)  # all weights updated in a few batched ops
    result = DeepImagePriorResult(image=noisy.new_empty(0))
    running = None
    for iteration in range(1, iterations + 1):
        optimizer.zero_grad(set_to_none=True)
        # z_t = z + sigma_p eps_t
        code = z + input_noise_std * torch.randn(z.shape, generator=perturbation, device=device) \
            if input_noise_std else z
        output = net(code)
        if iteration == 1 and output.shape != y.shape:
            raise ValueError(f"{owner}: the net's output is {list(output.shape)}, it must be the image's "
                             f"{list(y.shape)} (one grey channel)")
        # E = ||f_theta(z_t) - y||^2 / (H W)
        loss = F.mse_loss(output, y)
        loss.backward()
        optimizer.step()
        output = output.detach()[0, 0]
        # x_bar_t = gamma x_bar_{t-1} + (1 - gamma) f_theta(z_t)
        running = output.clone() if running is None else running.mul_(average).add_(output, alpha=1 - average)
        if iteration % record_every == 0 or iteration == iterations:
            result.iterations.append(iteration)
            result.loss.append(float(loss.detach()))
            if reference is not None:
                result.psnr.append(psnr(output.clamp(0, 1), reference))
                result.psnr_average.append(psnr(running.clamp(0, 1), reference))
        if callback is not None:
            callback(iteration, output, running)
    result.image = running.clamp(0, 1).to("cpu", noisy.dtype)
    result.seconds = time.perf_counter() - started
    return result
