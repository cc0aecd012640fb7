r"""Coupling layers (NICE, RealNVP, Glow) and fixed permutations.

References: L. Dinh, D. Krueger, Y. Bengio, *NICE: Non-linear Independent Components Estimation*, ICLR 2015
workshop; L. Dinh, J. Sohl-Dickstein, S. Bengio, *Density estimation using Real NVP*, ICLR 2017;
D. P. Kingma, P. Dhariwal, *Glow: Generative Flow with Invertible 1x1 Convolutions*, NeurIPS 2018.

Coupling
--------
A binary mask :math:`b` splits an example into the part :math:`x_A = b\odot x` that passes through
unchanged and the part :math:`x_B = (1-b)\odot x` that is transformed, with a conditioner network reading
:math:`x_A` only (RealNVP's masked form, eq. 9 of Dinh et al. 2017). The *additive* coupling of NICE
(its eq. 5, with :math:`m = t`) is

.. math:: y_A = x_A, \qquad y_B = x_B + t(x_A), \qquad \log\Big|\det\frac{\partial y}{\partial x}\Big| = 0,

and the *affine* coupling of RealNVP (eqs. 4-6) is

.. math:: y_A = x_A, \qquad y_B = x_B \odot \exp\big(s(x_A)\big) + t(x_A), \qquad
    \log\Big|\det\frac{\partial y}{\partial x}\Big| = \sum_j (1-b_j)\, s_j(x_A).

The Jacobian is triangular (block-diagonal up to the ordering) because :math:`y_A` does not depend on
:math:`x_B` and :math:`\partial y_B / \partial x_B = \operatorname{diag}(e^{s})`, so neither :math:`s` nor
:math:`t` needs to be invertible. The inverse costs one pass too:

.. math:: x_A = y_A, \qquad x_B = \big(y_B - t(y_A)\big) \odot \exp\big(-s(y_A)\big).

*The scale.* The conditioner's raw output :math:`h` becomes a bounded log-scale

.. math:: s = \beta \tanh(h / \beta), \qquad |s| < \beta \;(\beta = \texttt{scale\_bound}, \text{default } 2),

a smooth clamp that keeps :math:`e^{\pm s}` within :math:`[e^{-\beta}, e^{\beta}]`.
It is *not* Glow's :math:`s = \log\sigma(h + 2)`: that choice only shrinks
(:math:`e^{s} < 1`) and is not the identity at :math:`h = 0` (:math:`e^{s} = \sigma(2) \approx 0.88`),
whereas :math:`s(0) = 0` here, so a zero conditioner output gives the identity map.

*Identity at initialisation* (Glow, section 3.3): the conditioner's last layer starts at zero, so
:math:`s = t = 0` and every coupling starts as the identity (``identity_init=True``, the default; the shared
tests build their examples with ``identity_init=False`` so that the Jacobian check sees a non-trivial map).

Masks
-----
* images ``[B, C, H, W]``: ``"checkerboard"``, :math:`b_{c,h,w} = \mathbb 1[(h + w) \bmod 2 = 0]`, and
  ``"channel"``, :math:`b_{c,h,w} = \mathbb 1[c < \lceil C/2 \rceil]` (RealNVP section 3.4);
* vectors ``[B, D]``: ``"half"``, :math:`b_j = \mathbb 1[j < \lceil D/2 \rceil]`, and ``"alternating"``,
  :math:`b_j = \mathbb 1[j \bmod 2 = 0]`.

``invert_mask=True`` uses :math:`1 - b` instead, so that alternating layers transform the other part
(RealNVP's alternating pattern); a :class:`Permutation` between layers does the same job for channels.

Conditioners
------------
For images a small convolutional network (RealNVP/Glow's shape: 3x3 conv, ReLU, 1x1 conv, ReLU, 3x3 conv,
zero-padded so the spatial size is kept); for vectors an MLP with two ReLU hidden layers. ``hidden`` sets
the width. What the network reads and writes depends on the mask:

* the **channel** mask and the vector masks select whole channels (features), so the network reads only
  the :math:`C_A` channels of :math:`x_A` and writes :math:`s, t` for the :math:`C_B` channels of
  :math:`x_B` only, the split form :math:`(x_A, x_B) = \operatorname{split}(x)` of Glow's coupling
  (RealNVP's eq. 9 with a channel mask, written without the zeros): no multiply-adds are spent on the
  masked half;
* the **checkerboard** mask interleaves :math:`x_A` and :math:`x_B` within every channel, so the network
  keeps the spatial layout: it reads :math:`b\odot x` (all :math:`C` channels) and its outputs are
  multiplied by :math:`1 - b`.

The affine coupling's net outputs two values per transformed entry (:math:`h` for :math:`s` and
:math:`t`), the additive one one (:math:`t`).

Context
-------
``context_dim = K > 0``: ``context=`` is a float tensor ``[B, K]``; ``num_classes = K > 0``: ``context=``
holds class labels (a LongTensor ``[B]`` or one int), one-hot encoded to ``[B, K]``. Either way the
:math:`K` features are concatenated to the conditioner's input (as :math:`K` constant planes for images),
so :math:`s(x_A, c)`, :math:`t(x_A, c)`; the log-determinant formula is unchanged. A coupling built with
neither raises :class:`~dgmlab.errors.CapabilityError` when given a context, and a conditional one when
given none.

Permutations
------------
:class:`Permutation` reorders dimension 1 (features of a vector, channels of an image), :math:`y = P x`,
:math:`\log|\det P| = 0`; :class:`Reverse` is :math:`y_j = x_{D-1-j}` (RealNVP/Glow's reversal) and
:class:`RandomPermutation` a fixed shuffle drawn from a seed. Permutations ignore ``context=`` (nothing in them
depends on it), so they fit between conditional couplings.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from dgmlab.errors import CapabilityError, ModelConfigError
from dgmlab.models.flows.base import Transform, register_transform_example, sum_except_batch
from dgmlab.models.protocols import reject_context
from dgmlab.utils import check_int, check_positive_number, is_int

IMAGE_MASKS: tuple[str, ...] = ("checkerboard", "channel")
VECTOR_MASKS: tuple[str, ...] = ("half", "alternating")

__all__ = [
    "AdditiveCoupling",
    "AffineCoupling",
    "IMAGE_MASKS",
    "Permutation",
    "RandomPermutation",
    "Reverse",
    "VECTOR_MASKS",
    "coupling_mask",
]


def coupling_mask(shape: Sequence[int], mask: str, invert_mask: bool = False) -> Tensor:
    """The binary mask :math:`b` of one example (``1`` = the part :math:`x_A` that passes through), as a
    float tensor of ``shape`` (``(D,)`` or ``(C, H, W)``); see the module docstring for the patterns."""
    shape = tuple(shape)
    if len(shape) == 1:
        if mask not in VECTOR_MASKS:
            raise ModelConfigError(f"coupling mask {mask!r} does not apply to vectors [B, D]; choose one of "
                                   f"{', '.join(VECTOR_MASKS)}")
        (dim,) = shape
        index = torch.arange(dim)
        # b_j = 1[j < ceil(D/2)] or b_j = 1[j mod 2 = 0]
        b = index < math.ceil(dim / 2) if mask == "half" else index % 2 == 0
    elif len(shape) == 3:
        if mask not in IMAGE_MASKS:
            raise ModelConfigError(f"coupling mask {mask!r} does not apply to images [B, C, H, W]; choose one of "
                                   f"{', '.join(IMAGE_MASKS)}")
        channels, height, width = shape
        if mask == "checkerboard":
            if height * width < 2:
                raise ModelConfigError(f"a checkerboard mask needs at least two pixels, got image shape {shape}")
            rows, cols = torch.arange(height)[:, None], torch.arange(width)[None, :]
            # b_{c,h,w} = 1[(h + w) mod 2 = 0]
            b = ((rows + cols) % 2 == 0).expand(channels, height, width)
        else:
            if channels < 2:
                raise ModelConfigError(f"a channel mask needs at least two channels, got image shape {shape}; "
                                       f"use mask='checkerboard'")
            # b_{c,h,w} = 1[c < ceil(C/2)]
            b = (torch.arange(channels) < math.ceil(channels / 2))[:, None, None].expand(channels, height, width)
    else:
        raise ModelConfigError(f"coupling layers take vectors (D,) or images (C, H, W), got example shape {shape}")
    b = b.clone()
    if invert_mask:
        b = ~b
    if bool(b.all()) or not bool(b.any()):
        raise ModelConfigError(f"coupling mask {mask!r} on shape {shape} leaves nothing to transform or nothing to "
                               f"condition on; an example needs at least two entries")
    return b.to(torch.get_default_dtype())


def _check_shape(shape: Any, owner: str) -> tuple[int, ...]:
    if is_int(shape):
        shape = (shape,)
    if not isinstance(shape, Sequence) or isinstance(shape, str) or len(shape) not in (1, 3):
        raise ModelConfigError(f"{owner}: shape must be (D,) for vectors or (C, H, W) for images, got {shape!r}")
    return tuple(check_int(s, "shape entries", minimum=1, owner=owner, error=ModelConfigError) for s in shape)


class _Conditioner(nn.Module):
    """The coupling's network: ``[B, C_in, H, W]`` (images) or ``[B, D_in]`` (vectors), with context features
    ``[B, K]``, to ``[B, P * C_out, H, W]`` or ``[B, P * D_out]`` raw outputs, ``P`` = outputs per entry; last
    layer zero when ``identity_init``."""

    def __init__(self, is_image: bool, inputs: int, outputs: int, context_features: int, hidden: int,
                 identity_init: bool) -> None:
        super().__init__()
        self.is_image = is_image
        if is_image:
            # 3x3 conv -> ReLU -> 1x1 conv -> ReLU -> 3x3 conv (RealNVP/Glow's conditioner shape)
            self.layers = nn.Sequential(
                nn.Conv2d(inputs + context_features, hidden, 3, padding=1), nn.ReLU(),
                nn.Conv2d(hidden, hidden, 1), nn.ReLU(),
                nn.Conv2d(hidden, outputs, 3, padding=1))
        else:
            self.layers = nn.Sequential(
                nn.Linear(inputs + context_features, hidden), nn.ReLU(),
                nn.Linear(hidden, hidden), nn.ReLU(),
                nn.Linear(hidden, outputs))
        if identity_init:
            # Glow's zero initialisation of the last layer: s = t = 0, the coupling starts as the identity
            nn.init.zeros_(self.layers[-1].weight)
            nn.init.zeros_(self.layers[-1].bias)

    def forward(self, x_a: Tensor, features: Tensor | None) -> Tensor:
        if features is not None:
            if self.is_image:
                # the context as K constant planes beside the image channels
                features = features[:, :, None, None].expand(-1, -1, *x_a.shape[2:])
            x_a = torch.cat([x_a, features.to(x_a.dtype)], dim=1)
        if self.is_image:
            # channels-last: the layout in which the CPU's convolutions and their gradients run fastest here
            x_a = x_a.contiguous(memory_format=torch.channels_last)
        return self.layers(x_a)


class _Coupling(Transform):
    """Shared part of the coupling layers: mask, conditioner, input and context checks."""

    outputs_per_entry = 1

    def __init__(self, shape: Sequence[int] | int, mask: str | None = None, *, hidden: int = 64,
                 invert_mask: bool = False, context_dim: int = 0, num_classes: int = 0,
                 identity_init: bool = True) -> None:
        super().__init__()
        owner = type(self).__name__
        self.shape = _check_shape(shape, owner)
        if mask is None:
            mask = "checkerboard" if len(self.shape) == 3 else "half"
        if not isinstance(invert_mask, bool) or not isinstance(identity_init, bool):
            raise ModelConfigError(f"{owner}: invert_mask and identity_init must be true or false, got "
                                   f"{invert_mask!r} and {identity_init!r}")
        hidden = check_int(hidden, "hidden (the conditioner's width)", minimum=1, owner=owner, error=ModelConfigError)
        self.context_dim = check_int(context_dim, "context_dim", minimum=0, owner=owner, error=ModelConfigError)
        self.num_classes = check_int(num_classes, "num_classes", minimum=0, owner=owner, error=ModelConfigError)
        if self.context_dim and self.num_classes:
            raise ModelConfigError(f"{owner}: give context_dim (a [B, K] float context) or num_classes (class "
                                   f"labels), not both; got {context_dim} and {num_classes}")
        self.mask_kind, self.hidden = mask, hidden
        b = coupling_mask(self.shape, mask, invert_mask)
        self.register_buffer("mask", b)
        # channel and vector masks select whole entries of dimension 1: the net reads x_A's, writes x_B's only
        self.split = mask != "checkerboard"
        if self.split:
            selected = b.reshape(self.shape[0], -1)[:, 0].bool()
            self.register_buffer("pass_index", selected.nonzero()[:, 0], persistent=False)
            self.register_buffer("transform_index", (~selected).nonzero()[:, 0], persistent=False)
            inputs, outputs = len(self.pass_index), len(self.transform_index)
        else:
            inputs = outputs = self.shape[0]
        self.net = _Conditioner(len(self.shape) == 3, inputs, self.outputs_per_entry * outputs,
                                self.context_dim + self.num_classes, hidden, identity_init)

    def _check_input(self, x: Any, name: str) -> Tensor:
        if not isinstance(x, Tensor) or tuple(x.shape[1:]) != self.shape:
            got = list(x.shape) if isinstance(x, Tensor) else type(x).__name__
            raise ValueError(f"{type(self).__name__}: {name} must have shape [B, {', '.join(map(str, self.shape))}], "
                             f"got {got}")
        return x

    def _context_features(self, context: Any, batch: int) -> Tensor | None:
        """The context as features ``[B, K]``: the tensor itself, or one-hot class labels; ``None`` if unconditional."""
        name = type(self).__name__
        if not self.context_dim and not self.num_classes:
            reject_context(self, context)
            return None
        if context is None:
            what = (f"a float tensor [{batch}, {self.context_dim}]" if self.context_dim
                    else f"class labels, a LongTensor [{batch}] with values in 0..{self.num_classes - 1}")
            raise CapabilityError(f"{name} is conditional: pass context= ({what})")
        if self.context_dim:
            if not isinstance(context, Tensor) or not context.is_floating_point() \
                    or tuple(context.shape) != (batch, self.context_dim):
                got = list(context.shape) if isinstance(context, Tensor) else type(context).__name__
                raise ValueError(f"{name}: context must be a float tensor of shape [{batch}, {self.context_dim}], "
                                 f"got {got}")
            return context
        labels = torch.full((batch,), context, dtype=torch.long) if is_int(context) else context
        if not isinstance(labels, Tensor) or labels.is_floating_point() or labels.dtype == torch.bool \
                or tuple(labels.shape) != (batch,):
            raise ValueError(f"{name}: context must be integer class labels of shape [{batch}] (or one int), "
                             f"got {context!r:.80}")
        if batch > 0 and (int(labels.min()) < 0 or int(labels.max()) >= self.num_classes):
            raise ValueError(f"{name}: labels must lie in 0..{self.num_classes - 1}, got values in "
                             f"{int(labels.min())}..{int(labels.max())}")
        return F.one_hot(labels.to(self.mask.device), self.num_classes)

    def _condition(self, x: Tensor, context: Any) -> tuple[Tensor, tuple[Tensor, ...]]:
        """``(x_B, h)``: the part that is transformed and the net's ``P`` raw outputs at :math:`x_A`, a tuple of
        tensors shaped like ``x_B``. With a split mask :math:`x_B` is the selected channels (features); with the
        checkerboard it is all of ``x`` and ``h`` is zero on :math:`x_A` (multiplied by :math:`1 - b`)."""
        features = self._context_features(context, x.shape[0])
        if self.split:
            # (x_A, x_B) = split(x): the net reads x_A only
            x_b = x.index_select(1, self.transform_index)
            h = self.net(x.index_select(1, self.pass_index), features)
        else:
            # the net reads b * x
            x_b = x
            h = self.net(self.mask * x, features)
        # under bf16 autocast only the network runs in bf16: its outputs, and so s, t and log|det|, are x's dtype;
        # the P outputs per entry are P blocks of channels (features), split without a copy
        h = h.to(x.dtype).chunk(self.outputs_per_entry, dim=1)
        if not self.split:
            # only x_B is changed: h = 0 on x_A, so s = t = 0 there
            h = tuple((1 - self.mask) * part for part in h)
        return x_b, h

    def _assemble(self, x: Tensor, y_b: Tensor) -> Tensor:
        """``y`` from the unchanged :math:`x_A` (in ``x``) and the transformed :math:`y_B`."""
        # y = concat(y_A = x_A, y_B) in x's order
        return x.index_copy(1, self.transform_index, y_b) if self.split else y_b


class AdditiveCoupling(_Coupling):
    """NICE's additive coupling :math:`y_B = x_B + t(x_A)`, :math:`\\log|\\det| = 0` (module docstring).

    ``AdditiveCoupling(shape, mask=None, *, hidden=64, invert_mask=False, context_dim=0, num_classes=0,
    identity_init=True)``: ``shape`` is ``(D,)`` (masks ``"half"``, default, or ``"alternating"``) or
    ``(C, H, W)`` (``"checkerboard"``, default, or ``"channel"``).
    """

    outputs_per_entry = 1

    def forward(self, x: Tensor, *, context: Any = None) -> tuple[Tensor, Tensor]:
        x = self._check_input(x, "x")
        x_b, h = self._condition(x, context)
        # y_B = x_B + t(x_A), log|det| = 0
        return self._assemble(x, x_b + h[0]), x.new_zeros(x.shape[0])

    def inverse(self, y: Tensor, *, context: Any = None) -> tuple[Tensor, Tensor]:
        y = self._check_input(y, "y")
        y_b, h = self._condition(y, context)
        # x_B = y_B - t(y_A)
        return self._assemble(y, y_b - h[0]), y.new_zeros(y.shape[0])


class AffineCoupling(_Coupling):
    """RealNVP's affine coupling :math:`y_B = x_B \\odot e^{s(x_A)} + t(x_A)`, :math:`\\log|\\det| = \\sum s`,
    with the bounded log-scale :math:`s = \\beta\\tanh(h/\\beta)` (module docstring).

    ``AffineCoupling(shape, mask=None, *, hidden=64, scale_bound=2.0, invert_mask=False, context_dim=0,
    num_classes=0, identity_init=True)``; shapes and masks as :class:`AdditiveCoupling`.
    """

    outputs_per_entry = 2

    def __init__(self, shape: Sequence[int] | int, mask: str | None = None, *, hidden: int = 64,
                 scale_bound: float = 2.0, invert_mask: bool = False, context_dim: int = 0, num_classes: int = 0,
                 identity_init: bool = True) -> None:
        super().__init__(shape, mask, hidden=hidden, invert_mask=invert_mask, context_dim=context_dim,
                         num_classes=num_classes, identity_init=identity_init)
        self.scale_bound = check_positive_number(scale_bound, "scale_bound", owner="AffineCoupling",
                                                 error=ModelConfigError, hint="|s| < scale_bound")

    def _scale_and_shift(self, x: Tensor, context: Any) -> tuple[Tensor, Tensor, Tensor]:
        """``(x_B, s, t)`` at :math:`x_A` (``s = t = 0`` on :math:`x_A` under the checkerboard)."""
        x_b, h = self._condition(x, context)
        # s = beta tanh(h / beta), t = h_t
        s = self.scale_bound * torch.tanh(h[0] / self.scale_bound)
        return x_b, s, h[1]

    def forward(self, x: Tensor, *, context: Any = None) -> tuple[Tensor, Tensor]:
        x = self._check_input(x, "x")
        x_b, s, t = self._scale_and_shift(x, context)
        # y_B = x_B exp(s(x_A)) + t(x_A), y_A = x_A
        y = self._assemble(x, x_b * torch.exp(s) + t)
        # log|det dy/dx| = sum_j (1 - b_j) s_j
        return y, sum_except_batch(s)

    def inverse(self, y: Tensor, *, context: Any = None) -> tuple[Tensor, Tensor]:
        y = self._check_input(y, "y")
        y_b, s, t = self._scale_and_shift(y, context)
        # x_B = (y_B - t(y_A)) exp(-s(y_A))
        x = self._assemble(y, (y_b - t) * torch.exp(-s))
        return x, -sum_except_batch(s)


class Permutation(Transform):
    """A fixed permutation of dimension 1 (features or channels): :math:`y_{:, j} = x_{:, \\pi(j)}`,
    :math:`\\log|\\det| = 0`. ``Permutation(permutation)`` takes :math:`\\pi` as a list of ``0..D-1``.
    It has no parameters, so it accepts and ignores ``context=`` (it can sit between conditional couplings in a
    :class:`~dgmlab.models.flows.base.Compose`, which passes the context to every transform)."""

    def __init__(self, permutation: Sequence[int] | Tensor) -> None:
        super().__init__()
        owner = type(self).__name__
        values = permutation.tolist() if isinstance(permutation, Tensor) else permutation
        if not isinstance(values, Sequence) or isinstance(values, str) or not values \
                or not all(is_int(v) for v in values) or sorted(int(v) for v in values) != list(range(len(values))):
            raise ModelConfigError(f"{owner}: permutation must hold each of 0..D-1 exactly once, got "
                                   f"{permutation!r:.80}")
        pi = torch.tensor([int(v) for v in values], dtype=torch.long)
        self.register_buffer("permutation", pi)
        self.register_buffer("inverse_permutation", torch.argsort(pi))

    @property
    def num_features(self) -> int:
        """:math:`D`, the size of dimension 1 that this permutation reorders."""
        return int(self.permutation.numel())

    def _check_input(self, x: Any, name: str) -> Tensor:
        if not isinstance(x, Tensor) or x.dim() < 2 or x.shape[1] != self.num_features:
            got = list(x.shape) if isinstance(x, Tensor) else type(x).__name__
            raise ValueError(f"{type(self).__name__}: {name} must have {self.num_features} features or channels in "
                             f"dimension 1, got shape {got}")
        return x

    def forward(self, x: Tensor, *, context: Any = None) -> tuple[Tensor, Tensor]:
        x = self._check_input(x, "x")
        # y_{:, j} = x_{:, pi(j)}, log|det P| = 0
        return x[:, self.permutation], x.new_zeros(x.shape[0])

    def inverse(self, y: Tensor, *, context: Any = None) -> tuple[Tensor, Tensor]:
        y = self._check_input(y, "y")
        # x_{:, i} = y_{:, pi^{-1}(i)}
        return y[:, self.inverse_permutation], y.new_zeros(y.shape[0])


class Reverse(Permutation):
    """Reverses dimension 1 (features or channels): :math:`y_j = x_{D-1-j}`. ``Reverse(num_features)``."""

    def __init__(self, num_features: int) -> None:
        num_features = check_int(num_features, "num_features", minimum=1, owner="Reverse", error=ModelConfigError)
        super().__init__(list(range(num_features - 1, -1, -1)))


class RandomPermutation(Permutation):
    """A fixed random shuffle of dimension 1, drawn from ``seed`` with a private generator (the global RNG is
    untouched). ``RandomPermutation(num_features, seed=0)``."""

    def __init__(self, num_features: int, seed: int = 0) -> None:
        num_features = check_int(num_features, "num_features", minimum=1, owner="RandomPermutation",
                                 error=ModelConfigError)
        seed = check_int(seed, "seed", owner="RandomPermutation", error=ModelConfigError)
        super().__init__(torch.randperm(num_features, generator=torch.Generator().manual_seed(seed)))


# -- examples for the shared transform tests (random last layers, so the Jacobian check is non-trivial) -----
_VECTOR, _IMAGE = (6,), (2, 4, 4)

for _cls in (AdditiveCoupling, AffineCoupling):
    _kind = "additive" if _cls is AdditiveCoupling else "affine"
    for _mask in VECTOR_MASKS:
        register_transform_example(
            f"{_kind}_coupling_vector_{_mask}",
            lambda cls=_cls, mask=_mask: cls(_VECTOR, mask, hidden=16, identity_init=False).double(), _VECTOR)
    for _mask in IMAGE_MASKS:
        register_transform_example(
            f"{_kind}_coupling_image_{_mask}",
            lambda cls=_cls, mask=_mask: cls(_IMAGE, mask, hidden=8, identity_init=False).double(), _IMAGE)
register_transform_example("reverse_vector", lambda: Reverse(_VECTOR[0]), _VECTOR)
register_transform_example("reverse_image_channels", lambda: Reverse(_IMAGE[0]), _IMAGE)
register_transform_example("random_permutation_vector", lambda: RandomPermutation(_VECTOR[0], seed=1), _VECTOR)
