r"""Likelihoods on a test split: the importance-weighted NLL of a latent-variable model and the mean NLL of
each dimension (pixel) under a density that factorises over dimensions, each in evaluation mode.

For a latent-variable model, :math:`-\mathcal L_k(x)` with :math:`\mathcal L_k(x) = \log\frac1k\sum_{i=1}^k
p_\theta(x, z_i)/q_\phi(z_i\mid x)` bounds :math:`-\log p_\theta(x)` from above and tightens as :math:`k`
grows (:func:`dgmlab.objectives.importance_weighted_bound`). For an autoregressive model,
:math:`-\log p(x) = \sum_i -\log p(x_i\mid x_{<i})` exactly, and the mean of each term over test images is
the per-pixel NLL map; its sum is the mean NLL per image.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn

from dgmlab import distributed
from dgmlab.models.protocols import LatentVariableModel, PerDimensionDensity
from dgmlab.objectives import importance_weighted_bound
from dgmlab.utils import check_int, device_of, eval_mode

__all__ = ["check_images", "importance_weighted_nll", "importance_weighted_nll_per_example", "mean_nll_per_dimension",
           "mean_pixel_nll"]


@torch.no_grad()
def importance_weighted_nll(model: LatentVariableModel, x: Tensor, num_samples: int = 5000, batch_size: int = 100,
                            chunk_size: int = 500, seed: int = 123) -> float:
    r"""Mean of :math:`-\mathcal L_k(x)` over the rows of ``x``, in nats: the usual NLL estimate of a VAE.

    The mean of :func:`importance_weighted_nll_per_example` (same arguments, same draws)."""
    return float(importance_weighted_nll_per_example(model, x, num_samples, batch_size, chunk_size, seed).mean())


@torch.no_grad()
def importance_weighted_nll_per_example(model: LatentVariableModel, x: Tensor, num_samples: int = 5000,
                                        batch_size: int = 100, chunk_size: int = 500, seed: int = 123) -> Tensor:
    r""":math:`-\mathcal L_k(x)` of every row of ``x``, in nats, as a float64 tensor ``[len(x)]`` on the CPU
    (their spread gives the standard error of the mean, and two models on the same rows a paired difference).

    Batches of ``batch_size`` examples go through :func:`dgmlab.objectives.importance_weighted_bound` with
    ``k = num_samples``; batch ``j`` samples from a forked RNG seeded from ``(seed, j)``, so the caller's
    stream is untouched and, in a process group of ``N`` ranks (:mod:`dgmlab.distributed`), rank ``r`` can
    compute batches ``j = r, r + N, ...`` alone: the values are added over the ranks (each row is nonzero on
    one rank only) and every rank gets the numbers one process computes.
    """
    check_int(num_samples, "num_samples", minimum=1, owner="importance_weighted_nll")
    check_int(batch_size, "batch_size", minimum=1, owner="importance_weighted_nll")
    device = device_of(model)
    group = distributed.current()
    values = torch.zeros(len(x), dtype=torch.float64)
    with eval_mode(model), torch.random.fork_rng(devices=[device.index or 0] if device.type == "cuda" else []):
        for j, start in enumerate(range(0, len(x), batch_size)):
            if j % group.world_size != group.rank:
                continue
            torch.manual_seed(distributed.derived_seed(seed, j))
            batch = x[start:start + batch_size].to(device)
            bound = importance_weighted_bound(model, batch, num_samples=num_samples, chunk_size=chunk_size)
            values[start:start + len(batch)] = -bound.detach().double().cpu()
    if group.distributed:
        try:
            values = distributed.all_reduce_sum_(values.to(distributed.collective_device())).cpu()
        except (distributed.dist.DistError, RuntimeError) as error:
            raise distributed.peer_failure(error, "the importance-weighted bound") from error
    return values


def check_images(x: Any) -> Tensor:
    """``x`` itself if it is a float tensor of images ``[B, 1, H, W]``, else a ValueError saying so."""
    if not isinstance(x, Tensor) or x.dim() != 4 or x.shape[1] != 1 or not x.is_floating_point():
        raise ValueError(f"x must be a float tensor of binary images [B, 1, H, W], got "
                         f"{list(x.shape) if isinstance(x, Tensor) else type(x).__name__}")
    return x


@torch.no_grad()
def mean_nll_per_dimension(model: PerDimensionDensity, x: Tensor, context: Tensor | None = None,
                           batch_size: int = 250) -> Tensor:
    r"""The mean over examples of :math:`-\log p(x_i\mid x_{<i})` in nats, shaped like one example of ``x``
    (``[D]`` for flat data, ``[1, H, W]`` for images), in evaluation mode; returned on the CPU.

    Its sum is the mean NLL per example; reshaped to an image it is the input of
    :func:`dgmlab.plots.pixel_nll_heatmap`. ``context`` (``[N]`` labels) goes to a conditional model."""
    if not isinstance(x, Tensor) or x.dim() < 2 or not x.is_floating_point():
        raise ValueError(f"x must be a float tensor of examples [N, ...], got "
                         f"{list(x.shape) if isinstance(x, Tensor) else type(x).__name__}")
    check_int(batch_size, "batch_size", minimum=1, owner="mean_nll_per_dimension")
    if len(x) == 0:
        raise ValueError("x holds no examples")
    device = device_of(model)
    total = torch.zeros(x.shape[1:], dtype=torch.float64)
    with eval_mode(model):
        for start in range(0, len(x), batch_size):
            batch = x[start:start + batch_size].to(device)
            labels = None if context is None else context[start:start + batch_size].to(device)
            terms = model.log_prob_per_dimension(batch, context=labels)
            total -= terms.reshape(batch.shape).sum(0).double().cpu()
    return (total / len(x)).float()


def mean_pixel_nll(model: nn.Module, x: Tensor, context: Tensor | None = None, batch_size: int = 250) -> Tensor:
    r"""The mean over images ``[N, 1, H, W]`` of :math:`-\log p(x_{rs}\mid x_{<rs})` in nats, ``[H, W]``, in
    evaluation mode (:func:`mean_nll_per_dimension` of binary images). Returned on the CPU."""
    return mean_nll_per_dimension(model, check_images(x), context=context, batch_size=batch_size)[0]
