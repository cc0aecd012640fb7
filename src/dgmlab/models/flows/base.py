r"""The invertible-transform core of normalizing flows: transforms, their composition, and the flow density.

Change of variables
-------------------
An invertible, differentiable :math:`f` maps a data point :math:`x` to :math:`z = f(x)` with a simple base
density :math:`p_Z`. Then

.. math:: \log p_X(x) = \log p_Z(f(x)) + \log\Big|\det \frac{\partial f(x)}{\partial x}\Big|,

and for a composition :math:`f = f_K\circ\cdots\circ f_1` the log-determinants add,
:math:`\log|\det J_f| = \sum_k \log|\det J_{f_k}|`. Sampling draws :math:`z\sim p_Z` and returns
:math:`x = f^{-1}(z)`.

Conventions (those nflows and zuko converged on)
------------------------------------------------
* ``Transform.forward(x, *, context=None) -> (y, log|det dy/dx|)``: the *normalizing* direction, data to
  base, one log-determinant per example ``[B]`` in nats.
* ``Transform.inverse(y, *, context=None) -> (x, log|det dx/dy|)``: the generating direction; its
  log-determinant is minus the forward one at the same point.
* A transform defined in the generating direction by its paper (the planar and radial flows of Rezende and
  Mohamed, whose cheap direction draws samples) is used through :class:`Inverse`, which swaps the two.
* :class:`Flow` ``(base, transform)`` is a density model like any other in dgmlab (``log_prob``, ``sample``,
  ``sample_and_log_prob``, conditioning through ``context=``).

Every transform registers at least one small example with :func:`register_transform_example`; one
parametrised test checks each against the autograd Jacobian and for invertibility.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

from dgmlab.errors import ModelConfigError
from dgmlab.models.protocols import DataInitialized
from dgmlab.utils import check_int, device_of

__all__ = [
    "Compose",
    "Flow",
    "Inverse",
    "StandardNormal",
    "TRANSFORM_EXAMPLES",
    "Transform",
    "TransformExample",
    "register_transform_example",
    "sum_except_batch",
]


def sum_except_batch(values: Tensor) -> Tensor:
    """Sum over every dimension but the first: ``[B, ...] -> [B]``."""
    return values.reshape(values.shape[0], -1).sum(dim=1)


class Transform(nn.Module):
    """An invertible map with its log-determinant (see the module docstring for the directions)."""

    def forward(self, x: Tensor, *, context: Any = None) -> tuple[Tensor, Tensor]:  # noqa: D102
        raise NotImplementedError

    def inverse(self, y: Tensor, *, context: Any = None) -> tuple[Tensor, Tensor]:  # noqa: D102
        raise NotImplementedError


class Inverse(Transform):
    """:math:`f^{-1}` of a transform :math:`f`: ``forward`` is ``f.inverse`` and ``inverse`` is ``f.forward``."""

    def __init__(self, transform: Transform) -> None:
        super().__init__()
        self.transform = transform

    def forward(self, x: Tensor, *, context: Any = None) -> tuple[Tensor, Tensor]:
        return self.transform.inverse(x, context=context)

    def inverse(self, y: Tensor, *, context: Any = None) -> tuple[Tensor, Tensor]:
        return self.transform.forward(y, context=context)


class Compose(Transform):
    r""":math:`f_K\circ\cdots\circ f_1`: ``forward`` applies ``transforms`` in order and adds their
    log-determinants; ``inverse`` undoes them in reverse order."""

    def __init__(self, *transforms: Transform) -> None:
        super().__init__()
        if not transforms or not all(isinstance(t, Transform) for t in transforms):
            raise ModelConfigError(f"Compose needs one or more Transforms, got "
                                   f"{[type(t).__name__ for t in transforms]}")
        self.transforms = nn.ModuleList(transforms)

    def forward(self, x: Tensor, *, context: Any = None) -> tuple[Tensor, Tensor]:
        total = x.new_zeros(x.shape[0])
        for transform in self.transforms:
            x, logdet = transform(x, context=context)
            # log|det J_f| = sum_k log|det J_{f_k}|
            total = total + logdet
        return x, total

    @torch.no_grad()
    def initialize_from_data(self, examples: Tensor) -> None:
        """Data-dependent initialisation in order (ActNorm): each transform that has one is initialised on the
        examples as the transforms before it map them, so every ActNorm sees its own input's statistics."""
        x = examples
        for transform in self.transforms:
            if isinstance(transform, DataInitialized):
                transform.initialize_from_data(x)
            x, _ = transform(x)

    def inverse(self, y: Tensor, *, context: Any = None) -> tuple[Tensor, Tensor]:
        total = y.new_zeros(y.shape[0])
        for transform in reversed(self.transforms):
            y, logdet = transform.inverse(y, context=context)
            total = total + logdet
        return y, total


class StandardNormal(nn.Module):
    r"""The base density :math:`\mathcal N(0, I)` over examples of ``shape``; ``temperature`` :math:`T` scales
    the standard deviation when sampling (:math:`z = T\epsilon`)."""

    def __init__(self, shape: Sequence[int]) -> None:
        super().__init__()
        self.shape = tuple(check_int(s, "shape entries", minimum=1, owner="StandardNormal",
                                     error=ModelConfigError) for s in shape)
        self.register_buffer("_reference", torch.zeros(()), persistent=False)

    def log_prob(self, z: Tensor) -> Tensor:
        # log N(z; 0, I) = -1/2 (|z|^2 + D log 2 pi)
        return -0.5 * sum_except_batch(z**2 + math.log(2 * math.pi))

    def sample(self, n: int, generator: torch.Generator | None = None, temperature: float = 1.0) -> Tensor:
        n = check_int(n, "n", minimum=1, owner="StandardNormal.sample")
        noise = torch.randn(n, *self.shape, generator=generator, device=self._reference.device,
                            dtype=self._reference.dtype)
        return temperature * noise


class Flow(nn.Module):
    r"""A normalizing flow: ``log_prob(x) = base.log_prob(f(x)) + log|det J_f(x)|`` in nats per example, and
    ``sample(n)`` = :math:`f^{-1}(z)`, :math:`z\sim` ``base``. ``transform`` maps data to the base space."""

    def __init__(self, base: StandardNormal, transform: Transform) -> None:
        super().__init__()
        self.base, self.transform = base, transform

    @torch.no_grad()
    def initialize_from_data(self, examples: Tensor, limit: int = 512) -> None:
        """Run the transforms' data-dependent initialisation (ActNorm) on the first ``limit`` training
        examples; the run layer calls it once before training (:class:`~dgmlab.models.protocols.DataInitialized`)."""
        if isinstance(self.transform, DataInitialized):
            self.transform.initialize_from_data(examples[:limit].to(device_of(self)))

    def log_prob(self, x: Tensor, *, context: Any = None) -> Tensor:
        z, logdet = self.transform(x, context=context)
        # log p(x) = log p_Z(f(x)) + log|det df/dx|
        return self.base.log_prob(z) + logdet

    @torch.no_grad()
    def sample(self, n: int, *, generator: torch.Generator | None = None, context: Any = None,
               temperature: float = 1.0) -> Tensor:
        z = self.base.sample(n, generator=generator, temperature=temperature)
        x, _ = self.transform.inverse(z, context=context)
        return x

    def sample_and_log_prob(self, n: int, *, generator: torch.Generator | None = None,
                            context: Any = None) -> tuple[Tensor, Tensor]:
        """``n`` samples and their log-density, differentiable (the reverse-KL objective needs both):
        :math:`\\log p(x) = \\log p_Z(z) - \\log|\\det \\partial x/\\partial z|`."""
        z = self.base.sample(n, generator=generator)
        x, logdet_inverse = self.transform.inverse(z, context=context)
        return x, self.base.log_prob(z) - logdet_inverse



@dataclass(frozen=True)
class TransformExample:
    """A small transform for the shared tests: ``build()`` makes it (in float64), ``shape`` is one example's
    shape, ``sample_input(n, generator)`` draws valid inputs (default: standard normal), and
    ``initialize(x)`` runs a data-dependent initialisation first when the transform has one."""

    build: Callable[[], Transform]
    shape: tuple[int, ...]
    sample_input: Callable[[int, torch.Generator], Tensor] | None = None


TRANSFORM_EXAMPLES: dict[str, TransformExample] = {}


def register_transform_example(name: str, build: Callable[[], Transform], shape: Sequence[int],
                               sample_input: Callable[[int, torch.Generator], Tensor] | None = None) -> None:
    """Add a transform to the shared tests (log-determinant against the autograd Jacobian, inverse after
    forward, inverse log-determinant)."""
    if name in TRANSFORM_EXAMPLES:
        raise ValueError(f"a transform example named {name!r} is registered already")
    TRANSFORM_EXAMPLES[name] = TransformExample(build, tuple(shape), sample_input)
