r"""Elementwise transforms: a learned affine map and the logit pre-processing of RealNVP.

Elementwise affine
------------------
With a learned log-scale :math:`s` and shift :math:`t` of the example's shape,

.. math:: y = \exp(s)\odot x + t, \qquad
          \log\Big|\det\frac{\partial y}{\partial x}\Big| = \sum_i s_i, \qquad
          x = (y - t)\odot\exp(-s). \qquad\text{(A1-A3)}

Logit pre-processing (Dinh et al. 2017, "Density estimation using Real NVP", section 4.1)
-----------------------------------------------------------------------------------------
Data :math:`x\in[0, 1]^D` (pixel intensities, after dequantization) are first squeezed away from the
boundary by :math:`\alpha` and then sent to the real line:

.. math:: p = \alpha + (1 - 2\alpha)\,x, \qquad y = \operatorname{logit}(p) = \log p - \log(1 - p).
          \qquad\text{(L1, L2)}

(Dinh et al. write :math:`\operatorname{logit}(\alpha + (1 - \alpha)x)`, which leaves a margin at 0 only;
the symmetric :math:`1 - 2\alpha` used here keeps both ends away from the boundary and is what most
re-implementations, e.g. normflows, use. Either way the log-determinant below is part of the likelihood.)

The map is elementwise, so its Jacobian is diagonal, with
:math:`\partial y_i/\partial x_i = (1 - 2\alpha)\,/\,(p_i(1 - p_i))`:

.. math:: \log\Big|\det\frac{\partial y}{\partial x}\Big|
          = \sum_i \big[\log(1 - 2\alpha) - \log p_i - \log(1 - p_i)\big]. \qquad\text{(L3)}

The inverse is the sigmoid followed by undoing the affine squeeze, and its log-determinant is minus (L3) at
the recovered point, written through :math:`\log\sigma(y) = \log p` and :math:`\log\sigma(-y) = \log(1-p)`:

.. math:: p = \sigma(y), \qquad x = \frac{p - \alpha}{1 - 2\alpha}, \qquad
          \log\Big|\det\frac{\partial x}{\partial y}\Big|
          = \sum_i \big[\log\sigma(y_i) + \log\sigma(-y_i) - \log(1 - 2\alpha)\big]. \qquad\text{(L4-L6)}

With :math:`\alpha > 0` the map sends :math:`[0, 1]^D` onto the bounded box
:math:`[\operatorname{logit}\alpha, \operatorname{logit}(1-\alpha)]^D`, not onto :math:`\mathbb R^D`: a flow's
density on :math:`[0, 1]^D` then integrates to the base mass that the later layers put inside that box
(slightly less than 1). With :math:`\alpha = 0` it is the plain logit, a bijection of :math:`(0, 1)^D` onto
:math:`\mathbb R^D`, whose density integrates to 1 (the endpoints map to :math:`\pm\infty`).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from dgmlab import checks
from dgmlab.errors import ModelConfigError
from dgmlab.models.flows.base import Transform, register_transform_example, sum_except_batch
from dgmlab.utils import check_int

__all__ = ["ElementwiseAffine", "Logit"]


def _event_shape(shape: int | Sequence[int], owner: str) -> tuple[int, ...]:
    """``shape`` (an int or a sequence of positive ints) as a tuple, or ModelConfigError."""
    entries = (shape,) if isinstance(shape, int) else tuple(shape)
    if not entries:
        raise ModelConfigError(f"{owner}: shape must hold at least one dimension, got {shape!r}")
    return tuple(check_int(entry, "shape entries", minimum=1, owner=owner, error=ModelConfigError)
                 for entry in entries)


class ElementwiseAffine(Transform):
    r"""``y = exp(s) * x + t`` elementwise with a learned log-scale ``s`` (``log_scale``) and shift ``t``
    (``shift``) of ``shape`` (one example's shape); log-determinant ``sum(s)`` per example (A1--A3). Starts
    at the identity (``s = t = 0``). Inputs ``[B, *shape]``."""

    def __init__(self, shape: int | Sequence[int]) -> None:
        super().__init__()
        self.shape = _event_shape(shape, "ElementwiseAffine")
        self.log_scale = nn.Parameter(torch.zeros(self.shape))
        self.shift = nn.Parameter(torch.zeros(self.shape))

    def _check(self, values: Tensor) -> None:
        if tuple(values.shape[1:]) != self.shape:
            raise ValueError(f"ElementwiseAffine: inputs must have shape [B, {', '.join(map(str, self.shape))}], "
                             f"got {list(values.shape)}")

    def forward(self, x: Tensor, *, context: Any = None) -> tuple[Tensor, Tensor]:
        self._check(x)
        # (A1) y = exp(s) * x + t
        y = torch.exp(self.log_scale) * x + self.shift
        # (A2) log|det dy/dx| = sum_i s_i, the same for every example
        logdet = self.log_scale.sum().expand(x.shape[0])
        return y, logdet

    def inverse(self, y: Tensor, *, context: Any = None) -> tuple[Tensor, Tensor]:
        self._check(y)
        # (A3) x = (y - t) * exp(-s)
        x = (y - self.shift) * torch.exp(-self.log_scale)
        return x, -self.log_scale.sum().expand(y.shape[0])


class Logit(Transform):
    r"""The logit pre-processing of RealNVP for data in ``[0, 1]``:
    ``y = logit(alpha + (1 - 2 alpha) x)`` elementwise, with its exact log-determinant (L1--L3) and inverse
    (sigmoid, then undo the squeeze; L4--L6). ``alpha`` in ``[0, 0.5)``; see the module docstring for what
    ``alpha > 0`` does to the total mass. ``forward`` raises ValueError for inputs outside ``[0, 1]``."""

    def __init__(self, alpha: float = 0.05) -> None:
        super().__init__()
        if isinstance(alpha, bool) or not isinstance(alpha, (int, float)) or not 0.0 <= alpha < 0.5:
            raise ModelConfigError(f"Logit: alpha must be a number in [0, 0.5), got {alpha!r}")
        self.alpha = float(alpha)

    def forward(self, x: Tensor, *, context: Any = None) -> tuple[Tensor, Tensor]:
        checks.require(((x >= 0) & (x <= 1)).all(), lambda: (
            f"Logit: inputs must lie in [0, 1] (scale data there first), got values in "
            f"[{float(x.min()):.4g}, {float(x.max()):.4g}]"))
        # (L1) p = alpha + (1 - 2 alpha) x
        p = self.alpha + (1 - 2 * self.alpha) * x
        # (L2) y = log p - log(1 - p)
        y = torch.log(p) - torch.log1p(-p)
        # (L3) log|det dy/dx| = sum_i [log(1 - 2 alpha) - log p_i - log(1 - p_i)]
        logdet = sum_except_batch(math.log1p(-2 * self.alpha) - torch.log(p) - torch.log1p(-p))
        return y, logdet

    def inverse(self, y: Tensor, *, context: Any = None) -> tuple[Tensor, Tensor]:
        # (L4) p = sigmoid(y)
        p = torch.sigmoid(y)
        # (L5) x = (p - alpha) / (1 - 2 alpha)
        x = (p - self.alpha) / (1 - 2 * self.alpha)
        # (L6) log|det dx/dy| = sum_i [log sigmoid(y_i) + log sigmoid(-y_i) - log(1 - 2 alpha)]
        logdet = sum_except_batch(F.logsigmoid(y) + F.logsigmoid(-y) - math.log1p(-2 * self.alpha))
        return x, logdet


def _random_elementwise_affine() -> ElementwiseAffine:
    generator = torch.Generator().manual_seed(11)
    transform = ElementwiseAffine((5,))
    with torch.no_grad():
        transform.log_scale.copy_(torch.randn(5, generator=generator))
        transform.shift.copy_(torch.randn(5, generator=generator))
    return transform


def _unit_interval_inputs(n: int, generator: torch.Generator) -> Tensor:
    return 0.01 + 0.98 * torch.rand(n, 2, 3, generator=generator, dtype=torch.float64)


register_transform_example("elementwise_affine", _random_elementwise_affine, (5,))
# A shape of its own: the shared composition test feeds one example's output to another of the same shape,
# and Logit accepts only [0, 1].
register_transform_example("logit", lambda: Logit(0.05), (2, 3), sample_input=_unit_interval_inputs)
