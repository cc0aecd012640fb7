r"""The multi-scale architecture of RealNVP (Dinh, Sohl-Dickstein and Bengio, 2017), with Glow's learned prior
for the factored-out half (Kingma and Dhariwal, 2018).

Squeeze
-------
The squeezing operation trades space for channels: each :math:`2\times2\times c` sub-square of an image
:math:`x\in\mathbb R^{c\times h\times w}` becomes a :math:`1\times1\times4c` column,

.. math:: \operatorname{squeeze}: \mathbb R^{c\times h\times w}\to\mathbb R^{4c\times\frac h2\times\frac w2},
   \qquad y_{4k + 2a + b,\,i,\,j} = x_{k,\,2i + a,\,2j + b}\quad(a, b\in\{0, 1\}),

a permutation of the coordinates, so :math:`\log|\det \partial y/\partial x| = 0`. The sides :math:`h, w`
must be even.

Factoring out (Split)
---------------------
At each scale RealNVP factors out half of the dimensions, :math:`(z_1, z_2) = \operatorname{split}(h)`,
sends :math:`z_2` to the base density and carries on transforming only :math:`z_1`. Glow scores the factored
half under a learned conditional prior,

.. math:: p(z_2\mid z_1) = \mathcal N\big(z_2;\ \mu(z_1),\ \operatorname{diag}\sigma(z_1)^2\big),\qquad
   (\mu, \log\sigma) = \operatorname{NN}(z_1),

where :math:`\operatorname{NN}` is a zero-initialised convolution (so at first :math:`\mu = 0`,
:math:`\sigma = 1`: the standard normal).

dgmlab's transforms map an example to one of the same total size (the shared tests and :class:`Compose` rely
on it), so :class:`Split` is written as the change of variables that makes the factored half standard normal:

.. math:: \operatorname{Split}(z_1, z_2) = \Big(z_1,\ \epsilon_2\Big),\qquad
   \epsilon_2 = \frac{z_2 - \mu(z_1)}{\sigma(z_1)},\qquad
   \log\Big|\det\frac{\partial(z_1, \epsilon_2)}{\partial(z_1, z_2)}\Big| = -\sum\log\sigma(z_1),

the Jacobian being block triangular with the identity on :math:`z_1`. Under the standard normal base,
:math:`\log\mathcal N(\epsilon_2; 0, I) - \sum\log\sigma(z_1) = \log\mathcal N(z_2; \mu(z_1), \sigma(z_1)^2)`,
exactly Glow's term. The output is the concatenation ``[z_1, epsilon_2]`` along the channels; layers that
follow should act on the first ``channels - channels // 2`` channels only (``epsilon_2`` is already at the
base), which is what makes the architecture multi-scale.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn

from dgmlab.errors import ModelConfigError
from dgmlab.models.flows.base import Transform, register_transform_example, sum_except_batch
from dgmlab.utils import check_int

__all__ = ["Split", "Squeeze"]


def _check_image(x: Tensor, owner: str) -> None:
    if x.dim() != 4:
        raise ModelConfigError(f"{owner} takes images [B, C, H, W], got shape {tuple(x.shape)}; reshape vectors "
                               f"into images first")


class Squeeze(Transform):
    r"""RealNVP's squeeze: ``[B, C, H, W] -> [B, 4C, H/2, W/2]``, each :math:`2\times2` sub-square of a channel
    becoming 4 channels (module docstring); log-determinant 0. ``H`` and ``W`` must be even."""

    def forward(self, x: Tensor, *, context: Any = None) -> tuple[Tensor, Tensor]:
        _check_image(x, "Squeeze")
        batch, channels, height, width = x.shape
        if height % 2 or width % 2:
            raise ModelConfigError(f"Squeeze needs even image sides, got shape {tuple(x.shape)} (H={height}, "
                                   f"W={width}); pad or crop the images to even sides")
        # x_{k, 2i + a, 2j + b} -> [k, a, b, i, j]
        blocks = x.reshape(batch, channels, height // 2, 2, width // 2, 2).permute(0, 1, 3, 5, 2, 4)
        # y_{4k + 2a + b, i, j} = x_{k, 2i + a, 2j + b}
        y = blocks.reshape(batch, 4 * channels, height // 2, width // 2)
        # a permutation: log|det| = 0
        return y, x.new_zeros(batch)

    def inverse(self, y: Tensor, *, context: Any = None) -> tuple[Tensor, Tensor]:
        _check_image(y, "Squeeze.inverse")
        batch, channels, height, width = y.shape
        if channels % 4:
            raise ModelConfigError(f"Squeeze.inverse needs a multiple of 4 channels, got shape {tuple(y.shape)}")
        # [4k + 2a + b, i, j] -> [k, a, b, i, j]
        blocks = y.reshape(batch, channels // 4, 2, 2, height, width).permute(0, 1, 4, 2, 5, 3)
        # x_{k, 2i + a, 2j + b} = y_{4k + 2a + b, i, j}
        x = blocks.reshape(batch, channels // 4, 2 * height, 2 * width)
        return x, y.new_zeros(batch)


class Split(Transform):
    r"""The multi-scale factor-out with Glow's learned prior, as an invertible map of images
    ``[B, channels, H, W]`` (module docstring): ``z1`` is the first ``channels - channels // 2`` channels,
    ``z2`` the rest, and the output is ``[z1, (z2 - mu(z1)) / sigma(z1)]`` with log-determinant
    :math:`-\sum\log\sigma(z_1)`. :math:`(\mu, \log\sigma)` come from a zero-initialised
    ``kernel_size`` x ``kernel_size`` convolution of :math:`z_1` (same padding)."""

    def __init__(self, channels: int, kernel_size: int = 3) -> None:
        super().__init__()
        self.channels = check_int(channels, "channels", minimum=2, owner="Split", error=ModelConfigError,
                                  hint="one half is kept and the other factored out")
        kernel_size = check_int(kernel_size, "kernel_size", minimum=1, owner="Split", error=ModelConfigError)
        if kernel_size % 2 == 0:
            raise ModelConfigError(f"Split: kernel_size must be odd (so the prior keeps the image size), "
                                   f"got {kernel_size}")
        self.kept = self.channels - self.channels // 2
        self.factored = self.channels // 2
        # NN(z1) -> (mu, log sigma), zero-initialised: p(z2 | z1) = N(0, I) at first
        self.prior = nn.Conv2d(self.kept, 2 * self.factored, kernel_size, padding=kernel_size // 2)
        nn.init.zeros_(self.prior.weight)
        nn.init.zeros_(self.prior.bias)

    def _check(self, x: Tensor, owner: str) -> None:
        _check_image(x, owner)
        if x.shape[1] != self.channels:
            raise ValueError(f"{owner} was built for {self.channels} channels, got shape {tuple(x.shape)}")

    def prior_parameters(self, z1: Tensor) -> tuple[Tensor, Tensor]:
        """:math:`(\\mu(z_1), \\log\\sigma(z_1))`, each ``[B, channels // 2, H, W]``."""
        # (mu, log sigma) = NN(z1)
        mu, log_sigma = self.prior(z1).to(z1.dtype).chunk(2, dim=1)  # z1's dtype under bf16 autocast too
        return mu, log_sigma

    def forward(self, x: Tensor, *, context: Any = None) -> tuple[Tensor, Tensor]:
        self._check(x, "Split")
        # (z1, z2) = split(h)
        z1, z2 = x[:, :self.kept], x[:, self.kept:]
        mu, log_sigma = self.prior_parameters(z1)
        # epsilon_2 = (z2 - mu(z1)) / sigma(z1)
        epsilon2 = (z2 - mu) * torch.exp(-log_sigma)
        # log|det| = -sum log sigma(z1)
        return torch.cat([z1, epsilon2], dim=1), -sum_except_batch(log_sigma)

    def inverse(self, y: Tensor, *, context: Any = None) -> tuple[Tensor, Tensor]:
        self._check(y, "Split.inverse")
        z1, epsilon2 = y[:, :self.kept], y[:, self.kept:]
        mu, log_sigma = self.prior_parameters(z1)
        # z2 = mu(z1) + sigma(z1) epsilon_2
        z2 = mu + torch.exp(log_sigma) * epsilon2
        # log|det| = +sum log sigma(z1)
        return torch.cat([z1, z2], dim=1), sum_except_batch(log_sigma)


@torch.no_grad()
def _random_split() -> Split:
    """A 4-channel Split whose prior is random (not zero), so the shared tests see a non-trivial map."""
    split = Split(4)
    for parameter in split.prior.parameters():
        parameter.normal_(0.0, 0.3)
    return split


register_transform_example("squeeze", Squeeze, (2, 4, 4))
register_transform_example("split", _random_split, (4, 2, 2))
