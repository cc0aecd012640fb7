r"""The deep image prior's encoder-decoder (Ulyanov, Vedaldi & Lempitsky, *Deep Image Prior*, CVPR 2018).

The prior is the structure of a network, not anything it has learned. A randomly initialised generator
:math:`f_\theta` maps a fixed code :math:`z` (noise of the image's size) to an image, and restoration fits its
weights to the degraded image :math:`x_0` alone,

.. math:: \theta^\ast = \arg\min_\theta E(f_\theta(z); x_0), \qquad x^\ast = f_{\theta^\ast}(z),

with :math:`E(x; x_0) = \lVert x - x_0\rVert^2` for denoising. Given enough steps the network reproduces
:math:`x_0` noise and all; but a convolutional network fits natural-image structure far faster than it fits
noise, so the iterate is a good restoration long before that, and the method relies on **early stopping**:
the number of steps :math:`T` is the regulariser. Two refinements from the paper's experiments keep the
path smoother: the code is perturbed afresh at every step, :math:`z_t = z + \sigma_p\varepsilon_t`,
:math:`\varepsilon_t \sim \mathcal N(0, I)`, and the restoration is the exponential average of the outputs,
:math:`\bar x_t = \gamma\,\bar x_{t-1} + (1 - \gamma)\, f_{\theta_t}(z_t)` (:math:`\gamma = 0.99`).
The optimisation itself is in :func:`dgmlab.restoration.deep_image_prior`.

The "skip" architecture
-----------------------
:class:`SkipNet` is the paper's hourglass with skip connections. With :math:`L` levels of widths
:math:`n_d[i]` (down), :math:`n_u[i]` (up) and :math:`n_s[i]` (skip), level :math:`i` of an input
:math:`h_i` (:math:`h_0 = z`) computes

* down: :math:`d_i = \phi(\mathrm{BN}(\mathrm{conv}_{3\times3}(\phi(\mathrm{BN}(\mathrm{conv}^{\downarrow 2}_{3\times3}
  (h_i))))))`, and :math:`h_{i+1} = d_i`;
* skip: :math:`s_i = \phi(\mathrm{BN}(\mathrm{conv}_{1\times1}(h_i)))`, :math:`n_s[i]` channels (none when 0);
* up: :math:`u_i = \phi(\mathrm{BN}(\mathrm{conv}_{1\times1}(\phi(\mathrm{BN}(\mathrm{conv}_{3\times3}
  (\mathrm{BN}([s_i, \uparrow_2 e_{i}])))))))`, where :math:`e_i = u_{i+1}` below the deepest level and
  :math:`e_{L-1} = d_{L-1}`, and :math:`\uparrow_2` is bilinear upsampling by 2;

and the output is :math:`\sigma(\mathrm{conv}_{1\times1}(u_0))`, an image in :math:`(0, 1)`. Here
:math:`\phi` is the leaky ReLU of slope 0.2, :math:`\mathrm{conv}^{\downarrow 2}` a stride-2 convolution (the
only downsampling), and every :math:`3\times3` convolution reads a reflection-padded input, as in the paper.
BatchNorm normalises with the statistics of the one image in the batch at every step (the network is never
put in evaluation mode during fitting). Each level halves the height and width, so both must be multiples of
:math:`2^L`, and at least :math:`2^{L+1}` so that the deepest maps (2x2) can be reflection-padded for the
:math:`3\times3` kernels. The paper
denoises with :math:`L = 5`, :math:`n_d = n_u = 128`, :math:`n_s = 4` at every level, from a 32-channel code.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from dgmlab.errors import ModelConfigError
from dgmlab.utils import check_int, check_widths, is_int

__all__ = ["SkipNet"]

PAPER_DENOISING_CHANNELS = (128, 128, 128, 128, 128)


def _convolution(in_channels: int, out_channels: int, kernel_size: int, stride: int = 1) -> nn.Sequential:
    # a reflection-padded convolution: the output keeps the input's size (halves it with stride 2)
    layers: list[nn.Module] = [nn.ReflectionPad2d(kernel_size // 2)] if kernel_size > 1 else []
    return nn.Sequential(*layers, nn.Conv2d(in_channels, out_channels, kernel_size, stride=stride))


def _normalised(convolution: nn.Sequential, channels: int, negative_slope: float) -> nn.Sequential:
    # conv -> BN -> LeakyReLU
    return nn.Sequential(*convolution, nn.BatchNorm2d(channels), nn.LeakyReLU(negative_slope))


class SkipNet(nn.Module):
    """The deep image prior's "skip" encoder-decoder (see the module's equations): ``[N, in_channels, H, W]``
    to images ``[N, out_channels, H, W]`` in (0, 1).

    ``channels``: the down widths :math:`n_d`, one per level (``len(channels)`` levels; the paper's denoiser
    is ``[128] * 5``). ``up_channels``: :math:`n_u` (default: ``channels``). ``skip_channels``: :math:`n_s`, one
    number for every level or one per level; 0 drops a level's skip connection. ``kernel_size``: the odd side
    of the down and up convolutions (3). ``negative_slope``: of the leaky ReLUs (0.2). ``H`` and ``W`` must be
    multiples of ``2**levels`` and at least ``2**(levels + 1)`` (with 3x3 kernels; more for larger ones);
    :meth:`check_size` says so."""

    def __init__(self, in_channels: int, out_channels: int = 1,
                 channels: Sequence[int] = PAPER_DENOISING_CHANNELS, skip_channels: int | Sequence[int] = 4,
                 up_channels: Sequence[int] | None = None, kernel_size: int = 3, negative_slope: float = 0.2) -> None:
        super().__init__()
        owner = "SkipNet"
        check_int(in_channels, "in_channels", minimum=1, owner=owner, error=ModelConfigError,
                  hint="the channels of the code z")
        check_int(out_channels, "out_channels", minimum=1, owner=owner, error=ModelConfigError,
                  hint="1 for grey images, 3 for colour")
        down = check_widths(channels, "channels", owner=owner, error=ModelConfigError, example="[32, 32, 64, 64]")
        levels = len(down)
        up = down if up_channels is None else check_widths(up_channels, "up_channels", owner=owner,
                                                           error=ModelConfigError, example=str(down))
        if len(up) != levels:
            raise ModelConfigError(f"SkipNet: up_channels has {len(up)} widths but channels has {levels} levels; "
                                   f"give one up width per level")
        skip = [skip_channels] * levels if is_int(skip_channels) else skip_channels
        if isinstance(skip, str) or not isinstance(skip, Sequence) or len(skip) != levels \
                or not all(is_int(width) and width >= 0 for width in skip):
            raise ModelConfigError(f"SkipNet: skip_channels must be a number >= 0 (the same at every level) or "
                                   f"one per level ({levels} numbers >= 0, 0 for no skip), got {skip_channels!r}")
        skip = [int(width) for width in skip]
        check_int(kernel_size, "kernel_size", minimum=1, owner=owner, error=ModelConfigError)
        if kernel_size % 2 == 0:
            raise ModelConfigError(f"SkipNet: kernel_size must be odd (so that padding keeps the size), got "
                                   f"{kernel_size}")
        if isinstance(negative_slope, bool) or not isinstance(negative_slope, (int, float)) \
                or not 0 <= negative_slope < 1:
            raise ModelConfigError(f"SkipNet: negative_slope must be a number in [0, 1), got {negative_slope!r}")
        self.in_channels, self.out_channels, self.levels = int(in_channels), int(out_channels), levels
        self.channels, self.up_channels, self.skip_channels = down, up, skip
        self.kernel_size, self.negative_slope = int(kernel_size), float(negative_slope)

        self.down, self.skip, self.up = nn.ModuleList(), nn.ModuleList(), nn.ModuleList()
        width = self.in_channels
        for level in range(levels):
            # d_i = phi(BN(conv3(phi(BN(conv3 stride 2 (h_i))))))
            self.down.append(nn.Sequential(
                _normalised(_convolution(width, down[level], kernel_size, stride=2), down[level], negative_slope),
                _normalised(_convolution(down[level], down[level], kernel_size), down[level], negative_slope)))
            # s_i = phi(BN(conv1(h_i)))
            self.skip.append(_normalised(_convolution(width, skip[level], 1), skip[level], negative_slope)
                             if skip[level] else nn.Identity())
            # u_i = phi(BN(conv1(phi(BN(conv3(BN([s_i, up(e_i)])))))))
            deeper = up[level + 1] if level + 1 < levels else down[level]
            self.up.append(nn.Sequential(
                nn.BatchNorm2d(skip[level] + deeper),
                _normalised(_convolution(skip[level] + deeper, up[level], kernel_size), up[level], negative_slope),
                _normalised(_convolution(up[level], up[level], 1), up[level], negative_slope)))
            width = down[level]
        self.head = nn.Conv2d(up[0], self.out_channels, kernel_size=1)

    @property
    def size_multiple(self) -> int:
        """Heights and widths must be multiples of this, :math:`2^L`."""
        return 2**self.levels

    @property
    def smallest_size(self) -> int:
        """The smallest height and width it takes: the deepest maps must be wider than the reflection padding and
        hold more than one value for BatchNorm."""
        return self.size_multiple * max(2, self.kernel_size // 2 + 1)

    def check_size(self, height: int, width: int) -> None:
        """Raise ``ValueError`` unless an input of ``height`` x ``width`` fits the levels, naming sizes that do."""
        multiple, smallest = self.size_multiple, self.smallest_size
        if height % multiple or width % multiple or height < smallest or width < smallest:
            examples = ", ".join(str(smallest + step * multiple) for step in range(3))
            if height < smallest or width < smallest:
                fix = "use fewer levels or a larger image"
            else:
                fix = f"crop it to {height // multiple * multiple}x{width // multiple * multiple} or use fewer levels"
            raise ValueError(
                f"SkipNet: a {height}x{width} input does not fit {self.levels} levels: its height and width must be "
                f"multiples of 2**{self.levels} = {multiple} and at least {smallest} ({examples}, ...); {fix}")

    def forward(self, z: Tensor) -> Tensor:
        """The image :math:`f_\\theta(z)` ``[N, out_channels, H, W]`` in (0, 1) of a code ``z``
        ``[N, in_channels, H, W]``."""
        if z.dim() != 4 or z.shape[1] != self.in_channels:
            raise ValueError(f"SkipNet: the code must be [N, {self.in_channels}, H, W], got {list(z.shape)}")
        self.check_size(z.shape[2], z.shape[3])
        inputs = []
        h = z
        for level in range(self.levels):
            inputs.append(h)
            h = self.down[level](h)
        for level in reversed(range(self.levels)):
            # [s_i, up(e_i)], the skip first, as in the paper's code
            h = F.interpolate(h, scale_factor=2, mode="bilinear", align_corners=False)
            if self.skip_channels[level]:
                h = torch.cat([self.skip[level](inputs[level]), h], dim=1)
            h = self.up[level](h)
        return torch.sigmoid(self.head(h))
