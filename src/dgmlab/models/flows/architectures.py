r"""Whole flows: for images, Glow (Kingma and Dhariwal, 2018) and RealNVP (Dinh et al., 2017) as its
shuffle or reverse, additive or affine variants, on dequantized 8-bit images; for vectors (2-D densities),
:class:`RealNVP`, steps of ActNorm and an affine coupling of alternating halves.

The multi-scale architecture
----------------------------
With :math:`L` levels, level :math:`\ell` squeezes its input (:math:`c\times h\times w \to 4c\times\frac h2
\times\frac w2`), applies :math:`K` steps of flow, and (except at the last level) factors out half of the
channels (:class:`~dgmlab.models.flows.multiscale.Split`, Glow's learned prior); the next level transforms the
other half only. One step of flow is Glow's

.. math:: \text{ActNorm} \;\to\; \text{invertible } 1\times1 \text{ convolution (or a fixed permutation)}
   \;\to\; \text{affine (or additive) coupling over the channels}.

Before the first level, the logit pre-processing :math:`y = \operatorname{logit}(\alpha + (1 - 2\alpha)x)`
maps the dequantized pixels :math:`x\in[0, 1)` to the real line
(:class:`~dgmlab.models.flows.elementwise.Logit`). :class:`MultiScale` returns every factored-out part and
the last level's output flattened into one vector ``[B, C*H*W]``, so the base density is
:math:`\mathcal N(0, I)` over it and every log-determinant of the way adds up:

.. math:: \log p(x) = \log\mathcal N(z; 0, I) + \sum_{\text{layers}}\log|\det J|.

On 8-bit data the discrete likelihood is bounded through uniform dequantization,
:math:`\log P(b) \ge \mathbb E_u[\log p((b + u)/256)] - D\log 256`; the ``nll`` objective adds the
:math:`D\log 256` when the data are dequantized, so the reported bits per dimension are those of the 8-bit
images.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor, nn

from dgmlab.data.views import uniform_dequantize
from dgmlab.errors import ModelConfigError
from dgmlab.models.flows.base import Compose, Flow, StandardNormal, Transform
from dgmlab.models.flows.coupling import AdditiveCoupling, AffineCoupling, RandomPermutation, Reverse
from dgmlab.models.flows.elementwise import Logit
from dgmlab.models.flows.glow import ActNorm, InvertibleConv1x1
from dgmlab.models.flows.multiscale import Split, Squeeze
from dgmlab.models.protocols import reject_context
from dgmlab.utils import check_int

__all__ = ["COUPLINGS", "Glow", "MultiScale", "PERMUTATIONS", "RealNVP"]

PERMUTATIONS = ("conv1x1", "shuffle", "reverse")  # Glow's ablation: 1x1 convolution vs fixed permutations
COUPLINGS = ("affine", "additive")


def _step(channels: int, height: int, width: int, hidden: int, permutation: str, coupling: str, lu: bool,
          seed: int) -> Compose:
    """One step of flow: ActNorm -> permutation -> coupling over the channels."""
    if permutation == "conv1x1":
        mixing: Transform = InvertibleConv1x1(channels, lu=lu, seed=seed)
    elif permutation == "shuffle":
        mixing = RandomPermutation(channels, seed=seed)
    else:
        mixing = Reverse(channels)
    coupling_class = AffineCoupling if coupling == "affine" else AdditiveCoupling
    return Compose(ActNorm(channels), mixing, coupling_class((channels, height, width), "channel", hidden=hidden))


class MultiScale(Transform):
    """Levels of squeeze -> ``steps`` steps of flow -> split (module docstring), from images ``[B, C, H, W]``
    to one flat vector ``[B, C*H*W]`` (every factored-out part, then the last level's output)."""

    def __init__(self, image_shape: Sequence[int], levels: int = 2, steps: int = 4, hidden: int = 64,
                 permutation: str = "conv1x1", coupling: str = "affine", lu: bool = True) -> None:
        super().__init__()
        channels, height, width = (check_int(v, "image_shape entries", minimum=1, owner="MultiScale",
                                             error=ModelConfigError) for v in image_shape)
        levels = check_int(levels, "levels", minimum=1, owner="Glow", error=ModelConfigError)
        steps = check_int(steps, "steps", minimum=1, owner="Glow", error=ModelConfigError)
        hidden = check_int(hidden, "hidden", minimum=1, owner="Glow", error=ModelConfigError)
        if permutation not in PERMUTATIONS:
            raise ModelConfigError(f"Glow: permutation must be one of {', '.join(PERMUTATIONS)}, got {permutation!r}")
        if coupling not in COUPLINGS:
            raise ModelConfigError(f"Glow: coupling must be one of {', '.join(COUPLINGS)}, got {coupling!r}")
        self.image_shape = (channels, height, width)
        self.squeeze = Squeeze()
        self.steps, self.splits = nn.ModuleList(), nn.ModuleList()
        self.factored_shapes: list[tuple[int, int, int]] = []
        for level in range(levels):
            if height % 2 or width % 2:
                raise ModelConfigError(f"Glow: {levels} levels squeeze {tuple(image_shape)} images {levels} times, but "
                                       f"level {level + 1} gets {height}x{width} (odd sides cannot be squeezed); use "
                                       f"fewer levels or pad the images")
            channels, height, width = 4 * channels, height // 2, width // 2
            self.steps.append(Compose(*(_step(channels, height, width, hidden, permutation, coupling, lu,
                                              seed=100 * level + k) for k in range(steps))))
            if level < levels - 1:
                self.splits.append(Split(channels))
                self.factored_shapes.append((channels // 2, height, width))
                channels -= channels // 2
        self.final_shape = (channels, height, width)

    def _levels(self) -> range:
        return range(len(self.steps))

    def forward(self, x: Tensor, *, context: Any = None) -> tuple[Tensor, Tensor]:
        reject_context(self, context)
        total = x.new_zeros(x.shape[0])
        parts = []
        for level in self._levels():
            x, _ = self.squeeze(x)  # log|det| = 0: a permutation
            x, logdet = self.steps[level](x)
            total = total + logdet
            if level < len(self.splits):
                x, logdet = self.splits[level](x)
                total = total + logdet
                kept = x.shape[1] - self.factored_shapes[level][0]
                parts.append(x[:, kept:].flatten(1))  # epsilon_2: at the base already
                x = x[:, :kept]
        parts.append(x.flatten(1))
        return torch.cat(parts, dim=1), total

    def inverse(self, z: Tensor, *, context: Any = None) -> tuple[Tensor, Tensor]:
        reject_context(self, context)
        total = z.new_zeros(z.shape[0])
        sizes = [c * h * w for c, h, w in self.factored_shapes] + [
            self.final_shape[0] * self.final_shape[1] * self.final_shape[2]]
        pieces = list(torch.split(z, sizes, dim=1))
        x = pieces[-1].reshape(len(z), *self.final_shape)
        for level in reversed(self._levels()):
            if level < len(self.splits):
                factored = pieces[level].reshape(len(z), *self.factored_shapes[level])
                x, logdet = self.splits[level].inverse(torch.cat([x, factored], dim=1))
                total = total + logdet
            x, logdet = self.steps[level].inverse(x)
            total = total + logdet
            x, _ = self.squeeze.inverse(x)
        return x, total

    @torch.no_grad()
    def initialize_from_data(self, x: Tensor) -> None:
        """Every ActNorm on its own input (as :meth:`Compose.initialize_from_data`), level by level."""
        for level in self._levels():
            x, _ = self.squeeze(x)
            self.steps[level].initialize_from_data(x)
            x, _ = self.steps[level](x)
            if level < len(self.splits):
                x, _ = self.splits[level](x)
                x = x[:, : x.shape[1] - self.factored_shapes[level][0]]


class Glow(Flow):
    """Glow on dequantized images ``[B, C, H, W]`` in [0, 1): logit pre-processing, then :class:`MultiScale`,
    then :math:`\\mathcal N(0, I)`. ``permutation="shuffle"`` or ``"reverse"`` with ``coupling="affine"`` is
    RealNVP's choice; ``coupling="additive"`` NICE's. ``Glow(image_shape=[1, 28, 28], levels=2, steps=4)``."""

    def __init__(self, image_shape: Sequence[int] = (1, 28, 28), levels: int = 2, steps: int = 4, hidden: int = 64,
                 permutation: str = "conv1x1", coupling: str = "affine", lu: bool = True,
                 logit_alpha: float = 0.05) -> None:
        if not isinstance(image_shape, Sequence) or len(image_shape) != 3:
            raise ModelConfigError(f"Glow: image_shape must be [C, H, W] (e.g. [1, 28, 28]), got {image_shape!r}; "
                                   f"train it on images: [data] shape = \"image\"")
        multiscale = MultiScale(image_shape, levels, steps, hidden, permutation, coupling, lu)
        total = image_shape[0] * image_shape[1] * image_shape[2]
        super().__init__(StandardNormal((total,)), Compose(Logit(logit_alpha), multiscale))
        self.image_shape = tuple(int(v) for v in image_shape)

    @torch.no_grad()
    def initialize_from_data(self, examples: Tensor, limit: int = 512) -> None:
        """ActNorm's data-dependent start on the first ``limit`` training images; 8-bit training images (the
        dequantized view stores bytes) are dequantized with a fixed seed first."""
        examples = examples[:limit]
        if not examples.is_floating_point():
            examples = uniform_dequantize(examples, torch.Generator(device=examples.device).manual_seed(0))
        super().initialize_from_data(examples, limit=limit)

    @torch.no_grad()
    def sample(self, n: int, *, generator: torch.Generator | None = None, context: Any = None,
               temperature: float = 1.0) -> Tensor:
        """``n`` images ``[n, C, H, W]`` in [0, 1] at ``temperature`` :math:`T` (:math:`z = T\\epsilon`)."""
        return super().sample(n, generator=generator, context=context, temperature=temperature).clamp(0.0, 1.0)


class RealNVP(Flow):
    r"""RealNVP on vectors :math:`x\in\mathbb R^D` onto :math:`\mathcal N(0, I)`: ``steps`` steps of ActNorm and an
    affine coupling (:class:`~dgmlab.models.flows.coupling.AffineCoupling`, mask ``"half"``: the first
    :math:`\lceil D/2\rceil` coordinates condition the others, a conditioner of two ReLU layers of width
    ``hidden``), the mask inverted at every other step so that each half is transformed in turn:

    .. math:: y_B = x_B\odot\exp\big(s(x_A)\big) + t(x_A), \qquad \log|\det J| = \textstyle\sum s(x_A).

    Parameters per step: :math:`2D + H^2 + (\lceil D/2\rceil + 2\lfloor D/2\rfloor + 2)H + 2\lfloor D/2\rfloor`
    (:math:`H^2 + 5H + 6` for :math:`D = 2`). ``RealNVP(features=2, steps=8, hidden=64)``."""

    def __init__(self, features: int, steps: int = 8, hidden: int = 64) -> None:
        owner = "RealNVP"
        features = check_int(features, "features", minimum=2, owner=owner, error=ModelConfigError,
                             hint="a coupling splits the vector into two non-empty halves")
        steps = check_int(steps, "steps", minimum=1, owner=owner, error=ModelConfigError)
        hidden = check_int(hidden, "hidden", minimum=1, owner=owner, error=ModelConfigError)
        transforms: list[Transform] = []
        for step in range(steps):
            transforms += [ActNorm(features),
                           AffineCoupling((features,), "half", hidden=hidden, invert_mask=bool(step % 2))]
        super().__init__(StandardNormal((features,)), Compose(*transforms))
        self.features, self.steps, self.hidden = features, steps, hidden

