r"""Evaluation of normalizing flows on images: the test likelihood with every term of its accounting,
samples at a temperature, and interpolation in the base space.

The accounting of bits per dimension
------------------------------------
A flow :math:`z = f(y)` with :math:`f = f_M\circ\cdots\circ f_1` gives the density of a dequantized image
:math:`y = (b + u)/L \in [0, 1)^D` of :math:`L`-level pixels :math:`b` as

.. math:: \log p(y) = \log\mathcal N(f(y); 0, I)
    + \sum_{m=1}^{M}\log\Big|\det\frac{\partial f_m}{\partial f_{m-1}}\Big|,

and uniform dequantization bounds the discrete likelihood (Theis et al. 2016):
:math:`-\log P(b) \le \mathbb E_u[-\log p((b + u)/L)] + D\log L`. In bits per dimension,

.. math:: \text{bits/dim} = \frac{-\log p(y) + D\log L}{D\ln 2}
    = \frac{-\log p(y)}{D\ln 2} + \log_2 L \quad(= \ldots + 8 \text{ for 8-bit images}).

:func:`flow_nll_accounting` reports every term (the base log-density, the log-determinant of each top-level
transform, e.g. the logit pre-processing and the multi-scale flow, and :math:`D\log L`) as means over the test
images, checks that they add up to the model's ``log_prob``, and converts the total to bits/dim.

Temperature and interpolation
-----------------------------
Sampling at temperature :math:`T` draws :math:`z = T\epsilon`, :math:`\epsilon\sim\mathcal N(0, I)`, and returns
:math:`f^{-1}(z)` (Kingma and Dhariwal 2018, section 5: lower :math:`T` trades diversity for quality;
:math:`T = 0` is the image of the base's mode). Interpolation maps two images to :math:`z_a = f(y_a)`,
:math:`z_b = f(y_b)` and inverts the straight line :math:`z_t = (1 - t)z_a + t z_b`.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor

from dgmlab.errors import CapabilityError
from dgmlab.models.flows.base import Compose, Flow
from dgmlab.models.protocols import ImageModel
from dgmlab.utils import check_int, device_of, eval_mode

__all__ = ["flow_nll_accounting", "interpolate_in_base", "temperature_samples"]


def _check_flow(model: Any, owner: str) -> Flow:
    if not isinstance(model, Flow):
        raise CapabilityError(f"{owner} needs a normalizing flow (dgmlab.models.flows.Flow), got "
                              f"{type(model).__name__}")
    return model


@torch.no_grad()
def flow_nll_accounting(model: Flow, x: Tensor, *, levels: int = 256, batch_size: int = 500) -> dict[str, Any]:
    r"""The test NLL of a flow on dequantized ``x`` ``[N, ...]`` in [0, 1), term by term (module docstring).

    Returns means over the ``N`` examples, in nats per example: ``base_log_prob`` (:math:`\log\mathcal N(f(y))`),
    ``logdet`` (one entry per top-level transform, named ``"<index>:<class>"``), ``log_prob`` (their sum, checked
    against ``model.log_prob`` to 1e-4 relative on the first batch), ``dequantization_nats`` (:math:`D\log L`),
    ``nll_nats`` (:math:`-\log p(y) + D\log L`) and ``bits_per_dim``, plus ``dims`` and ``examples``. In evaluation
    mode."""
    flow = _check_flow(model, "flow_nll_accounting")
    levels = check_int(levels, "levels", minimum=1, owner="flow_nll_accounting")
    batch_size = check_int(batch_size, "batch_size", minimum=1, owner="flow_nll_accounting")
    if not isinstance(x, Tensor) or not x.is_floating_point() or len(x) == 0:
        raise ValueError("flow_nll_accounting: x must be a non-empty float tensor of dequantized examples in [0, 1); "
                         "use the test split's 'dequantized' view")
    parts = list(flow.transform.transforms) if isinstance(flow.transform, Compose) else [flow.transform]
    names = [f"{index}:{type(part).__name__}" for index, part in enumerate(parts)]
    device = device_of(flow)
    sums = {"base_log_prob": 0.0, "log_prob": 0.0, **{name: 0.0 for name in names}}
    largest_gap = 0.0
    with eval_mode(flow):
        for start in range(0, len(x), batch_size):
            batch = x[start:start + batch_size].to(device)
            h, total = batch, batch.new_zeros(len(batch), dtype=torch.float64)
            # a stochastic log-determinant (residual flows) draws its probes in the same order for the parts and
            # for the check below: the same seed makes the two the same estimate
            draws = torch.get_rng_state() if device.type == "cpu" else None
            for name, part in zip(names, parts, strict=True):
                h, logdet = part(h)
                sums[name] += float(logdet.double().sum())
                total = total + logdet.double()
            base = flow.base.log_prob(h).double()
            sums["base_log_prob"] += float(base.sum())
            log_prob = base + total
            sums["log_prob"] += float(log_prob.sum())
            if start == 0:  # the parts must compose to the model: checked once, on the first batch
                after = torch.get_rng_state() if draws is not None else None
                if draws is not None:
                    torch.set_rng_state(draws)
                direct = flow.log_prob(batch).double()
                if after is not None:
                    torch.set_rng_state(after)
                largest_gap = float(((direct - log_prob).abs() / log_prob.abs().clamp_min(1.0)).max())
    if largest_gap > 1e-4:
        raise RuntimeError(f"flow_nll_accounting: the terms do not add up to log_prob (relative gap "
                           f"{largest_gap:.2e}); the flow's transform is not the composition of its parts")
    n, dims = len(x), x[0].numel()
    means = {key: value / n for key, value in sums.items()}
    dequantization = dims * math.log(levels)
    nll = -means["log_prob"] + dequantization
    return {"examples": n, "dims": dims, "levels": levels, "base_log_prob": means["base_log_prob"],
            "logdet": {name: means[name] for name in names}, "log_prob": means["log_prob"],
            "dequantization_nats": dequantization, "nll_nats": nll, "bits_per_dim": nll / (dims * math.log(2.0))}


@torch.no_grad()
def temperature_samples(model: Flow, temperatures: Sequence[float], n: int, *, seed: int = 0) -> Tensor:
    """``n`` samples at each temperature, ``[len(temperatures), n, ...]``; every temperature scales the *same*
    noise :math:`\\epsilon` (one generator seeded with ``seed``), so rows differ only by :math:`T`."""
    flow = _check_flow(model, "temperature_samples")
    n = check_int(n, "n", minimum=1, owner="temperature_samples")
    if not temperatures or any(not isinstance(t, (int, float)) or isinstance(t, bool) or t < 0 for t in temperatures):
        raise ValueError(f"temperature_samples: temperatures must be numbers >= 0, got {list(temperatures)!r}")
    rows = []
    with eval_mode(flow):
        for temperature in temperatures:
            generator = torch.Generator(device=device_of(flow)).manual_seed(seed)
            rows.append(flow.sample(n, generator=generator, temperature=float(temperature)))
    return torch.stack(rows)


@torch.no_grad()
def interpolate_in_base(model: Flow, x_a: Tensor, x_b: Tensor, steps: int = 8) -> Tensor:
    """Images along :math:`z_t = (1 - t) f(x_a) + t f(x_b)`, :math:`t = 0, \\frac1{s-1}, \\dots, 1`:
    ``[steps, ...]`` for two examples ``x_a``, ``x_b`` (each one example, without a batch dimension); an image
    model's images are clamped to [0, 1] as its samples are."""
    flow = _check_flow(model, "interpolate_in_base")
    steps = check_int(steps, "steps", minimum=2, owner="interpolate_in_base")
    if x_a.shape != x_b.shape:
        raise ValueError(f"interpolate_in_base: x_a and x_b must have one shape, got {list(x_a.shape)} and "
                         f"{list(x_b.shape)}")
    device = device_of(flow)
    with eval_mode(flow):
        z, _ = flow.transform(torch.stack([x_a, x_b]).to(device))
        t = torch.linspace(0.0, 1.0, steps, device=device, dtype=z.dtype)[:, None]
        # z_t = (1 - t) z_a + t z_b
        path = (1 - t) * z[0] + t * z[1]
        images, _ = flow.transform.inverse(path)
    # an image model's pixels live in [0, 1] (as its samples are clamped)
    return images.clamp(0.0, 1.0) if isinstance(flow, ImageModel) else images
