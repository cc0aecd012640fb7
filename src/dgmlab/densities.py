r"""Log-densities and divergences in nats: the building blocks that models and objectives share.

Pure functions of tensors, summed over the last (data or latent) dimension: Gaussian and standard-normal
log-densities, the Bernoulli log-likelihood from logits, the analytic and single-sample Monte-Carlo KL of a
diagonal Gaussian from :math:`\mathcal N(0, I)`, and a stable log-mean-exp. They sit before the models in
the package's data flow (data, models, objectives, trainer), so a model can state its likelihood with them
and :mod:`dgmlab.objectives` (which re-exports them) builds its bounds from the same code.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor

LOG_2PI = math.log(2.0 * math.pi)

__all__ = ["LOG_2PI", "bernoulli_log_likelihood", "gaussian_log_likelihood", "kl_analytic", "kl_monte_carlo",
           "log_mean_exp", "log_normal_pdf", "log_standard_normal"]


def log_normal_pdf(sample: Tensor, mean: Tensor, logvar: Tensor) -> Tensor:
    r"""Log-density of a diagonal Gaussian, summed over the last dimension.

    .. math::
        \log \mathcal N(s; \mu, \operatorname{diag} e^{\ell})
        = -\tfrac12 \sum_j \big[\log 2\pi + \ell_j + (s_j - \mu_j)^2 e^{-\ell_j}\big]

    Shapes: ``sample``, ``mean``, ``logvar`` broadcast to ``[..., d]``; returns ``[...]`` in nats.
    """
    # -1/2 [log 2pi + l + (s - mu)^2 e^{-l}], summed over j
    return -0.5 * (LOG_2PI + logvar + (sample - mean) ** 2 * torch.exp(-logvar)).sum(dim=-1)


def log_standard_normal(z: Tensor) -> Tensor:
    r"""Log-density of the prior :math:`p(z) = \mathcal N(0, I)`: :math:`-\tfrac12\sum_j (\log 2\pi + z_j^2)`.

    Shapes: ``z`` is ``[..., d]``; returns ``[...]`` in nats.
    """
    return -0.5 * (LOG_2PI + z**2).sum(dim=-1)


def kl_analytic(mean: Tensor, logvar: Tensor) -> Tensor:
    r"""Closed-form :math:`D_{KL}(\mathcal N(\mu, \operatorname{diag}\sigma^2)\,\|\,\mathcal N(0, I))`.

    .. math:: D_{KL} = \tfrac12 \sum_j \big(\mu_j^2 + \sigma_j^2 - 1 - \log\sigma_j^2\big) \ \ge 0

    Shapes: ``mean``, ``logvar`` are ``[..., d]``; returns ``[...]`` in nats.
    """
    # 1/2 sum_j (mu^2 + sigma^2 - 1 - log sigma^2)
    return 0.5 * (mean**2 + torch.exp(logvar) - 1.0 - logvar).sum(dim=-1)


def kl_monte_carlo(z: Tensor, mean: Tensor, logvar: Tensor) -> Tensor:
    r"""Single-sample (SGVB) KL estimate :math:`\log q(z\mid x) - \log p(z)` at given samples ``z``.

    Unbiased for :math:`D_{KL}(q\,\|\,p)` when :math:`z \sim q`; average over samples to reduce its variance.
    Shapes: ``z`` is ``[..., d]`` (for example ``[S, B, d]``), ``mean`` and ``logvar`` broadcast to it;
    returns ``[...]`` in nats (one estimate per sample; can be negative).
    """
    # log q(z|x) - log p(z)
    return log_normal_pdf(z, mean, logvar) - log_standard_normal(z)


def bernoulli_log_likelihood(x: Tensor, logits: Tensor) -> Tensor:
    r"""Bernoulli log-likelihood from logits, summed over the last dimension.

    .. math:: \log p(x\mid z) = \sum_d \big[x_d \log \pi_d + (1 - x_d)\log(1 - \pi_d)\big],
        \quad \pi_d = \operatorname{sigmoid}(\text{logit}_d)

    Computed stably as minus the binary cross-entropy with logits. ``x`` may hold grey levels in
    ``[0, 1]`` (then it is a cross-entropy, not a likelihood). Shapes broadcast to ``[..., D]``; returns
    ``[...]`` in nats.
    """
    x = x.expand_as(logits) if x.dim() < logits.dim() else x
    return -F.binary_cross_entropy_with_logits(logits, x, reduction="none").sum(dim=-1)


def gaussian_log_likelihood(x: Tensor, mean: Tensor, logvar: Tensor | float) -> Tensor:
    r"""Gaussian decoder log-likelihood :math:`\log\mathcal N(x; \hat x, \sigma^2 I)` summed over ``D``.

    ``logvar`` is :math:`\log\sigma^2`, a float (fixed variance) or a tensor broadcasting to ``mean``
    (learned variance). Returns ``[...]`` in nats.
    """
    logvar_t = torch.as_tensor(logvar, dtype=mean.dtype, device=mean.device)
    return log_normal_pdf(x, mean, logvar_t.expand_as(mean))


def log_mean_exp(values: Tensor, dim: int) -> Tensor:
    r""":math:`\log \frac1k \sum_i e^{v_i}` along ``dim``, computed stably with ``logsumexp``."""
    return torch.logsumexp(values, dim=dim) - math.log(values.shape[dim])
