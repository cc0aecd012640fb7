r"""The masked MLP of MADE (Germain, Gregor, Murray and Larochelle, 2015), shared by MADE and the affine
autoregressive flows (MAF, IAF): degrees, masks, the masked forward pass, and a network with several outputs
per input.

Degrees and masks
-----------------
Every unit gets a *degree*. Input :math:`d` has degree :math:`m^0(d)\in\{1..D\}`, its position in the
ordering. A hidden unit :math:`k` of layer :math:`l` has degree :math:`m^l(k)\in\{1..D-1\}`, either drawn as
MADE does, :math:`m^l(k)\sim\mathcal U\{\min_{k'} m^{l-1}(k'), \dots, D-1\}` (``rule="random"``), or cycled,
:math:`m^l(k) = (k \bmod (D-1)) + 1` (``rule="cyclic"``, which uses every degree once a layer has :math:`D-1`
units). With :math:`D = 1` every hidden unit has degree 0 and sees no input. The masks are

.. math:: M^{W^l}_{k', k} = \mathbb 1\big[m^l(k') \ge m^{l-1}(k)\big], \qquad
    M^{V}_{(p, d), k} = \mathbb 1\big[m^0(d) > m^L(k)\big],

for every output :math:`p = 1..P` of input :math:`d`. By induction a hidden unit of degree :math:`m` depends
only on the inputs of degree :math:`\le m`, and output :math:`(p, d)` only on hidden units of degree
:math:`< m^0(d)`: only on the variables before :math:`d` in the ordering. The masked pass is

.. math:: h^l = \mathrm{act}\big((W^l\odot M^{W^l})\,h^{l-1} + b^l\big),\qquad o = (V\odot M^V)\,h^L + c.

MADE uses :math:`P = 1` output per input (a Bernoulli logit); MAF and IAF use :math:`P = 2` (a shift and a
log-scale). :class:`MaskedMLP` is that network for one ordering; :class:`~dgmlab.models.autoregressive.MADE`
keeps :math:`K` sets of masks and builds each with :func:`hidden_degrees` and :func:`autoregressive_masks`, and
runs :func:`masked_forward`.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from dgmlab.errors import ModelConfigError
from dgmlab.utils import check_int, check_widths

__all__ = ["DEGREE_RULES", "MASKED_ACTIVATIONS", "MaskedMLP", "autoregressive_masks", "hidden_degrees",
           "masked_forward"]

DEGREE_RULES = ("random", "cyclic")
MASKED_ACTIVATIONS: dict[str, Callable[[Tensor], Tensor]] = {"relu": torch.relu, "gelu": F.gelu}


def hidden_degrees(input_degrees: Tensor, widths: Sequence[int], *, rule: str = "random",
                   generator: torch.Generator | None = None) -> list[Tensor]:
    """The degrees :math:`m^l(k)` of the hidden units, one ``[H_l]`` tensor per hidden layer (module
    docstring); ``rule="random"`` draws them from ``generator`` layer by layer, as MADE does."""
    if rule not in DEGREE_RULES:
        raise ModelConfigError(f"unknown degree rule {rule!r}; choose one of {', '.join(DEGREE_RULES)}")
    dim = len(input_degrees)
    previous, degrees = input_degrees, []
    for width in widths:
        if rule == "random":
            # m^l(k) ~ U{min m^{l-1}, ..., D-1} (all 0 when D = 1: the units see no input)
            low = min(int(previous.min()), dim - 1)
            current = torch.randint(low, dim, (width,), generator=generator)
        elif dim == 1:
            current = torch.zeros(width, dtype=torch.long)  # the units see no input
        else:
            # m^l(k) = (k mod (D - 1)) + 1
            current = torch.arange(width) % (dim - 1) + 1
        degrees.append(current)
        previous = current
    return degrees


def autoregressive_masks(input_degrees: Tensor, degrees: Sequence[Tensor], outputs_per_input: int = 1) -> list[Tensor]:
    """The boolean masks ``[out, in]`` of every layer, first to output (module docstring); the output layer has
    ``outputs_per_input * D`` rows, row ``p * D + d`` for output ``p`` of input ``d``."""
    masks, previous = [], input_degrees
    for current in degrees:
        # M^{W^l}_{k', k} = 1[m^l(k') >= m^{l-1}(k)]
        masks.append(current[:, None] >= previous[None, :])
        previous = current
    # M^V_{(p, d), k} = 1[m^0(d) > m^L(k)]
    output_degrees = input_degrees.repeat(outputs_per_input)
    masks.append(output_degrees[:, None] > previous[None, :])
    return masks


def masked_forward(x: Tensor, layers: Sequence[nn.Linear], masks: Sequence[Tensor],
                   activation: Callable[[Tensor], Tensor]) -> Tensor:
    """:math:`h^l = \\mathrm{act}((W^l\\odot M^{W^l}) h^{l-1} + b^l)`, the last layer without activation."""
    h = x
    for l, (layer, mask) in enumerate(zip(layers, masks, strict=True)):
        h = F.linear(h, layer.weight * mask, layer.bias)
        if l < len(layers) - 1:
            h = activation(h)
    return h


class MaskedMLP(nn.Module):
    """A MADE-masked MLP with ``outputs_per_input`` outputs per input, each depending on the inputs before it.

    ``MaskedMLP(dim, hidden_dims, outputs_per_input=2, *, rule="cyclic", order=None, seed=0,
    activation="relu", identity_init=True)``: ``[B, D] -> [B, P, D]`` (``[:, p, d]`` is output :math:`p` of
    input :math:`d`). ``order`` is a permutation of ``0..D-1`` (``order[k]`` comes ``k``-th; default the natural
    order); ``rule="random"`` draws the hidden degrees from a generator seeded with ``seed``, exactly as MADE's
    first mask with the same ordering. The masks ``mask_0 ... mask_L`` ``[out, in]`` are buffers (saved with the
    weights); ``input_degrees [D]`` is a buffer rebuilt from ``order``. ``identity_init`` zeroes the output
    layer (every output starts at 0).
    """

    def __init__(self, dim: int, hidden_dims: Sequence[int], outputs_per_input: int = 2, *, rule: str = "cyclic",
                 order: Sequence[int] | Tensor | None = None, seed: int = 0, activation: str = "relu",
                 identity_init: bool = True) -> None:
        super().__init__()
        owner = type(self).__name__
        self.dim = check_int(dim, "dim", minimum=1, owner=owner, error=ModelConfigError)
        self.hidden_dims = check_widths(hidden_dims, owner=owner, error=ModelConfigError, example="[64, 64]")
        self.outputs_per_input = check_int(outputs_per_input, "outputs_per_input", minimum=1, owner=owner,
                                           error=ModelConfigError)
        if not isinstance(identity_init, bool):
            raise ModelConfigError(f"{owner}: identity_init must be true or false, got {identity_init!r}")
        if activation not in MASKED_ACTIVATIONS:
            raise ModelConfigError(f"{owner}: unknown activation {activation!r}; choose one of "
                                   f"{', '.join(MASKED_ACTIVATIONS)}")
        pi = torch.arange(self.dim) if order is None else torch.as_tensor(order, dtype=torch.long)
        if sorted(pi.tolist()) != list(range(self.dim)):
            raise ModelConfigError(f"{owner}: order must be a permutation of 0..{self.dim - 1}, got {pi.tolist()}")
        self.activation = activation
        self._act = MASKED_ACTIVATIONS[activation]
        widths = [self.dim, *self.hidden_dims, self.outputs_per_input * self.dim]
        self.layers = nn.ModuleList(nn.Linear(a, b) for a, b in zip(widths[:-1], widths[1:], strict=True))
        # m^0(d) = position of d in the ordering, 1..D
        input_degrees = torch.empty(self.dim, dtype=torch.long)
        input_degrees[pi] = torch.arange(1, self.dim + 1)
        degrees = hidden_degrees(input_degrees, self.hidden_dims, rule=rule,
                                 generator=torch.Generator().manual_seed(seed))
        self.register_buffer("input_degrees", input_degrees, persistent=False)
        for l, mask in enumerate(autoregressive_masks(input_degrees, degrees, self.outputs_per_input)):
            self.register_buffer(f"mask_{l}", mask)
        if identity_init:
            nn.init.zeros_(self.layers[-1].weight)
            nn.init.zeros_(self.layers[-1].bias)

    def masks(self) -> list[Tensor]:
        """The masks ``[out, in]`` per layer, first to output layer."""
        return [getattr(self, f"mask_{l}") for l in range(len(self.layers))]

    def forward(self, v: Tensor) -> Tensor:
        return masked_forward(v, self.layers, self.masks(), self._act).reshape(v.shape[0], self.outputs_per_input,
                                                                               self.dim)
