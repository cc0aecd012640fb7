r"""Problem set 2 of MIT 6.S978: the PixelCNN and the class-conditional PixelCNN on MNIST binarized at 0.5.

Small functions that ``notebooks/pset2.ipynb`` (and a command line) call: build the problem set's
configuration with shorter settings, train, compare the numbers with the reference solution's, and the
problem set's evaluations (teacher-forced "reconstructions", samples per class, completions, the per-pixel
NLL map), plus the independent-pixel illustration of problem 4 (MAP = regularised maximum likelihood).

Units
-----
Problem set 2 trained on ``F.binary_cross_entropy`` of the predicted probabilities, **averaged over the
784 pixels** (and the batch). For binary data the summed cross-entropy is the negative log-likelihood
(problem 1): with :math:`q_i = p(x_i = 1\mid x_{<i})`,

.. math:: -\log p(x) = -\sum_{i=1}^{D}\big[x_i\log q_i + (1 - x_i)\log(1 - q_i)\big] = \sum_i \mathrm{BCE}(q_i, x_i),

so a per-pixel BCE :math:`b` is :math:`D\,b` nats per image, :math:`D = 28\cdot 28 = 784`
(:func:`bce_to_nats`): the reference's final **0.0673** is **52.8 nats** per image, the conditional model's
**0.0623** is **48.8 nats**. Both are epoch means on the *training* set, in training mode (BatchNorm batch
statistics, weights changing during the epoch); dgmlab's trainer logs the same kind of number as ``train``
and, after every epoch, the exact NLL of the test split in evaluation mode as ``test`` (the reference
measured no test NLL).

MAP and weight decay (problem 4)
--------------------------------
With a prior :math:`p(\theta)`, the MAP estimate maximises the posterior,

.. math:: \hat\theta_{\mathrm{MAP}} = \arg\max_\theta\,\big[\log p(X\mid\theta) + \log p(\theta)\big]
    = \arg\min_\theta\,\big[-\log p(X\mid\theta) + \lambda\rho(\theta)\big],

with :math:`\rho(\theta) = -\tfrac1\lambda\log p(\theta)`: regularised maximum likelihood. For
:math:`p(\theta) = \mathcal N(0, \sigma^2 I_d)`,
:math:`-\log p(\theta) = \lVert\theta\rVert^2/(2\sigma^2) + \tfrac d2\log(2\pi\sigma^2)`: an L2 penalty
:math:`\lambda\lVert\theta\rVert^2` with :math:`\lambda = 1/(2\sigma^2)` plus a constant
(:func:`gaussian_prior_variance`, :func:`l2_penalty`). :func:`fit_independent_bernoulli_map` shows what
the prior does on the simplest image model, one independent Bernoulli logit per pixel.
"""

from __future__ import annotations

import math
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from dgmlab.config import ConfigError, DataBundle, apply_overrides, build_settings, load_bundled_config, load_config
from dgmlab.evaluate import check_images as _check_images

# the generic evaluations of image density models live in dgmlab.evaluate; re-exported for the notebook
from dgmlab.evaluate import complete_images as complete_images
from dgmlab.evaluate import mean_pixel_nll as mean_pixel_nll
from dgmlab.evaluate import samples_per_class as samples_per_class
from dgmlab.experiments.runs import prepare
from dgmlab.train import History, fit
from dgmlab.utils import device_of as _device_of
from dgmlab.utils import eval_mode

PIXELS = 28 * 28  # D: binary variables per MNIST image

# Quick runs: a tiny network, one epoch on the first 1,024 training images, 256 test images.
QUICK_MODEL = {"channels": 16, "num_layers": 4}
QUICK_LIMIT = 1024
QUICK_TEST_LIMIT = 256


def bce_to_nats(bce_per_pixel: float, pixels: int = PIXELS) -> float:
    r"""A binary cross-entropy averaged over pixels, as nats per image: :math:`D\cdot b` (problem 1)."""
    return bce_per_pixel * pixels


def nats_to_bce(nats_per_image: float, pixels: int = PIXELS) -> float:
    r"""Nats per image as the problem set's per-pixel BCE: :math:`\mathrm{NLL}/D`."""
    return nats_per_image / pixels


# The reference solution's final printed training BCE (per pixel, training mode, last epoch), its value in
# nats per image (x 784), and the settings it was trained with (on a Colab GPU).
REFERENCE: dict[str, dict[str, Any]] = {
    "pixelcnn": {
        "config": "pixelcnn.toml", "epochs": 80, "lr": 4e-3, "bce_per_pixel": 0.0673,
        "nats": round(bce_to_nats(0.0673), 1), "first_epoch_bce": 0.1058, "parameters": "about 1.337M",
    },
    "pixelcnn_conditional": {
        "config": "pixelcnn_conditional.toml", "epochs": 100, "lr": 2e-3, "bce_per_pixel": 0.0623,
        "nats": round(bce_to_nats(0.0623), 1), "first_epoch_bce": 0.1501,
        "parameters": "about 12.8k more than the PixelCNN",
    },
}


# ----------------------------------------------------------------------------------------------------------
# Configuration and training
# ----------------------------------------------------------------------------------------------------------
def pset2_config(
    config_file: str | Path = "pixelcnn.toml",
    *,
    quick: bool = False,
    epochs_scale: float = 1.0,
    limit: int = 0,
    test_limit: int | None = None,
    device: str = "auto",
    seed: int = 0,
    progress: bool = True,
    overrides: Sequence[str] = (),
) -> dict[str, Any]:
    """The problem set's configuration (a bundled one by name, e.g. ``"pixelcnn.toml"``, or a path) with shorter
    settings applied.

    ``epochs_scale`` multiplies the configured epochs (80 or 100; at least 1 epoch). ``limit``: train on the
    first ``limit`` images only (0: all 60,000); ``test_limit`` likewise for the 10,000 test images (None:
    all, or 256 when quick). ``quick``: a smoke test with a tiny network (16 channels, 4 layers), one epoch
    on ``limit`` or 1,024 images. ``overrides`` (``"table.key=value"``) are applied last.
    """
    if isinstance(epochs_scale, bool) or not isinstance(epochs_scale, (int, float)) or not epochs_scale > 0:
        raise ValueError(f"epochs_scale must be a positive number (1.0: the problem set's epochs), got "
                         f"{epochs_scale!r}")
    for name, value in (("limit", limit), ("test_limit", test_limit)):
        if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 0):
            raise ValueError(f"{name} must be a non-negative integer (0: all images), got {value!r}")
    path = Path(config_file)
    config = load_config(path) if path.is_file() else load_bundled_config(path.stem)
    config.setdefault("name", path.stem)
    epochs = 1 if quick else max(1, round(int(config.get("train", {}).get("epochs", 1)) * epochs_scale))
    settings = [f'train.device="{device}"', f"train.seed={seed}", f"train.progress={str(progress).lower()}",
                f"train.epochs={epochs}"]
    if quick:
        settings += [f"model.{key}={value}" for key, value in QUICK_MODEL.items()]
        limit = limit or QUICK_LIMIT
        test_limit = QUICK_TEST_LIMIT if test_limit is None else test_limit
    if limit:
        settings.append(f"data.limit={limit}")
    if test_limit:
        settings.append(f"data.test_limit={test_limit}")
    return apply_overrides(config, [*settings, *overrides])


@dataclass
class PixelCNNRun:
    """A trained model (in evaluation mode), its per-epoch history, its data, configuration and training time."""

    model: nn.Module
    history: History
    data: DataBundle
    config: dict[str, Any]
    seconds: float


def train_pixelcnn(
    config_file: str | Path = "pixelcnn.toml",
    out: str | Path | None = None,
    *,
    quick: bool = False,
    epochs_scale: float = 1.0,
    limit: int = 0,
    test_limit: int | None = None,
    device: str = "auto",
    seed: int = 0,
    progress: bool = True,
    overrides: Sequence[str] = (),
    overwrite: bool = False,
) -> PixelCNNRun:
    """Train the PixelCNN of a configuration with :func:`dgmlab.train.fit` (Adam, the configured learning rate).

    Arguments as :func:`pset2_config`; ``out``: the run directory (``config.json``, ``metrics.jsonl``,
    ``checkpoint/``), or None to write nothing; one that holds a run is refused unless ``overwrite``.
    Every epoch's record holds the training epoch mean of
    :math:`-\\log p(x)` (nats per image, training mode) and the exact test-split mean (evaluation mode), with
    their bits per dimension. Returns a :class:`PixelCNNRun` whose model is in evaluation mode.
    """
    config = pset2_config(config_file, quick=quick, epochs_scale=epochs_scale, limit=limit, test_limit=test_limit,
                          device=device, seed=seed, progress=progress, overrides=overrides)
    if config.get("objective", {}).get("name") != "nll":
        raise ConfigError(f"train_pixelcnn trains density models on objective.name = 'nll'; "
                          f"{config_file} uses {config.get('objective', {}).get('name')!r}")
    model, objective, data = prepare(config)
    settings = build_settings(config)
    started = time.perf_counter()
    history = fit(model, objective, data.train, data.test, settings, run_dir=out, config=config,
                  description=str(config["name"]), overwrite=overwrite)
    return PixelCNNRun(model.eval(), history, data, config, time.perf_counter() - started)


def nll_summary(history: History | Sequence[Mapping[str, Any]], pixels: int = PIXELS) -> dict[str, float]:
    r"""The last epoch's NLL in nats per image and as the problem set's per-pixel BCE (:math:`\mathrm{NLL}/D`).

    Keys ``train_nats``, ``train_bce_per_pixel``, ``train_bits_per_dim`` and, when the test split was
    evaluated, the same for ``test``.
    """
    records = history.records if isinstance(history, History) else list(history)
    if not records:
        raise ValueError("the history is empty: train at least one epoch")
    last = records[-1]
    summary: dict[str, float] = {}
    for split in ("train", "test"):
        terms = last.get(split)
        if not isinstance(terms, Mapping):
            continue
        if "nll" not in terms:
            raise ValueError(f"the {split} record has no 'nll' term (terms {sorted(terms)}); train on the 'nll' "
                             f"objective")
        nats = float(terms["nll"])
        summary[f"{split}_nats"] = nats
        summary[f"{split}_bce_per_pixel"] = nats_to_bce(nats, pixels)
        summary[f"{split}_bits_per_dim"] = nats / (pixels * math.log(2.0))
    return summary


def comparison_lines(
    key: str, history: History | Sequence[Mapping[str, Any]], examples: int | None = None
) -> list[str]:
    """Our final NLL beside the reference solution's, as printable lines (``key``: a key of ``REFERENCE``)."""
    if key not in REFERENCE:
        raise ValueError(f"unknown experiment {key!r}; choose one of {', '.join(REFERENCE)}")
    reference = REFERENCE[key]
    summary = nll_summary(history)
    epochs = len(history.records if isinstance(history, History) else history)
    lines = [
        f"train NLL {summary['train_nats']:.2f} nats per image = BCE {summary['train_bce_per_pixel']:.4f} per "
        f"pixel (epoch mean, training mode) | reference {reference['nats']} nats = {reference['bce_per_pixel']} "
        f"per pixel (after {reference['epochs']} epochs, GPU)"
    ]
    if "test_nats" in summary:
        lines.append(f"test NLL {summary['test_nats']:.2f} nats per image = BCE {summary['test_bce_per_pixel']:.4f} "
                     f"per pixel, {summary['test_bits_per_dim']:.4f} bits/dim (exact, evaluation mode) | "
                     f"reference: not measured")
    if epochs != reference["epochs"] or (examples is not None and examples != 60000):
        lines.append(f"(a shortened run, {epochs} epoch(s)"
                     + (f" on {examples:,} images" if examples is not None else "")
                     + ": compare with the reference only after the full run)")
    return lines


# ----------------------------------------------------------------------------------------------------------
# Problem 1: NLL = summed BCE
# ----------------------------------------------------------------------------------------------------------
@torch.no_grad()
def summed_bce(model: nn.Module, x: Tensor, context: Tensor | None = None) -> Tensor:
    r"""The problem set's loss summed over pixels: :math:`\sum_i \mathrm{BCE}(q_i, x_i)` in nats, ``[B]``.

    Computed as the problem set did, ``F.binary_cross_entropy`` of the probabilities
    :math:`q = \sigma(\ell)`, with ``reduction="none"`` and a sum over the pixels, in the model's current
    mode. By problem 1 it equals ``-model.log_prob(x, context=y)`` (which is computed from the logits); the
    problem set's printed loss is its mean over the batch divided by :math:`D`.
    """
    x = _check_images(x).to(_device_of(model))
    logits = model(x, context=context)
    return F.binary_cross_entropy(torch.sigmoid(logits), x, reduction="none").sum(dim=(1, 2, 3))


# ----------------------------------------------------------------------------------------------------------
# Evaluations of problems 2(c) and 3(c)
# ----------------------------------------------------------------------------------------------------------
@torch.no_grad()
def teacher_forced_reconstruction(
    model: nn.Module, x: Tensor, context: Tensor | None = None, generator: torch.Generator | None = None
) -> Tensor:
    r"""Problem set 2's "reconstruction": every pixel drawn independently from its teacher-forced conditional.

    .. math:: \tilde x_i \sim \mathrm{Bernoulli}\big(p(x_i = 1\mid x_{<i})\big), \quad x_{<i}\ \text{the true pixels},

    one forward pass, in **evaluation mode** (BatchNorm running statistics; each submodule's mode is restored
    afterwards). It is not a sample of the model, which would condition on its own earlier draws: it shows how
    sure the model is of each pixel given the true ones above and to the left. ``x`` ``[B, 1, H, W]``
    binary, ``context`` ``[B]`` labels for a class-conditional model; returns binary ``[B, 1, H, W]`` on ``x``'s
    device. The noise is drawn on the generator's device (default: the model's).
    """
    x = _check_images(x)
    device = _device_of(model)
    with eval_mode(model):
        logits = model(x.to(device), context=context)
    probabilities = torch.sigmoid(logits)
    noise_device = generator.device if generator is not None else device
    noise = torch.rand(probabilities.shape, generator=generator, device=noise_device, dtype=probabilities.dtype)
    # x~_i = [u_i < q_i] ~ Bernoulli(q_i)
    return (noise.to(device) < probabilities).to(x.dtype).to(x.device)


# ----------------------------------------------------------------------------------------------------------
# Problem 4: MAP = regularised maximum likelihood
# ----------------------------------------------------------------------------------------------------------
def _check_weight_decay(weight_decay: float) -> float:
    if isinstance(weight_decay, bool) or not isinstance(weight_decay, (int, float)) or not weight_decay > 0:
        raise ValueError(f"weight_decay (lambda) must be a positive number, got {weight_decay!r}; lambda = 0 is "
                         f"maximum likelihood, a Gaussian prior of infinite variance")
    return float(weight_decay)


def gaussian_prior_variance(weight_decay: float) -> float:
    r"""The prior variance that an L2 penalty :math:`\lambda\lVert\theta\rVert^2` stands for:
    :math:`\sigma^2 = 1/(2\lambda)`."""
    return 1.0 / (2.0 * _check_weight_decay(weight_decay))


def l2_penalty(theta: Tensor, weight_decay: float) -> Tensor:
    r""":math:`\lambda\lVert\theta\rVert^2`, equal to :math:`-\log\mathcal N(\theta; 0, \sigma^2 I)` up to the
    constant :math:`\tfrac d2\log(2\pi\sigma^2)` when :math:`\sigma^2 = 1/(2\lambda)`."""
    return _check_weight_decay(weight_decay) * theta.pow(2).sum()


def independent_bernoulli_nll(logits: Tensor, x: Tensor) -> Tensor:
    r"""NLL in nats, ``[N]``, of images ``x`` ``[N, ...]`` under independent pixels, :math:`p(x_j = 1) =
    \sigma(\theta_j)`.

    ``logits`` has the shape of one image; infinite logits (probabilities 0 or 1) give an infinite NLL where
    the image disagrees, and 0 where it agrees."""
    x = x.reshape(len(x), -1).to(torch.float64)
    logits = logits.reshape(-1).to(torch.float64)
    if logits.numel() != x.shape[1]:
        raise ValueError(f"logits hold {logits.numel()} pixels but the images {x.shape[1]}")
    probabilities = torch.sigmoid(logits)
    # -[x log q + (1 - x) log(1 - q)], with 0 log 0 = 0 for infinite logits
    return -(torch.xlogy(x, probabilities) + torch.xlogy(1 - x, 1 - probabilities)).sum(dim=1)


def fit_independent_bernoulli_map(x: Tensor, weight_decay: float, iterations: int = 200) -> Tensor:
    r"""The MAP logits of independent pixels under the prior :math:`\theta_j \sim \mathcal N(0, 1/(2\lambda))`.

    Each pixel's logit minimises :math:`-\big[k_j\theta_j - N\log(1 + e^{\theta_j})\big] + \lambda\theta_j^2`
    (:math:`k_j` of the :math:`N` images have pixel :math:`j` on). The derivative
    :math:`g(\theta) = N\sigma(\theta) - k_j + 2\lambda\theta` increases strictly, and its root lies in
    :math:`[(k_j - N)/(2\lambda),\ k_j/(2\lambda)]`, found by bisection (float64). Maximum likelihood
    (:math:`\lambda = 0`) is :math:`\sigma(\theta_j) = k_j/N`, with :math:`\theta_j = \mp\infty` for pixels
    always off or on. ``x`` ``[N, ...]`` binary; returns logits of one image's shape.
    """
    weight_decay = _check_weight_decay(weight_decay)
    if len(x) == 0:
        raise ValueError("x holds no images")
    count = float(len(x))
    on = x.reshape(len(x), -1).to(torch.float64).sum(0)  # k_j
    low, high = (on - count) / (2 * weight_decay), on / (2 * weight_decay)
    for _ in range(iterations):
        middle = (low + high) / 2
        # g(theta) = N sigma(theta) - k + 2 lambda theta
        positive = count * torch.sigmoid(middle) - on + 2 * weight_decay * middle > 0
        high = torch.where(positive, middle, high)
        low = torch.where(positive, low, middle)
    return ((low + high) / 2).reshape(x.shape[1:])
