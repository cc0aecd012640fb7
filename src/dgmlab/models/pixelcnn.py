r"""PixelCNN (problem set 2) and the Gated PixelCNN, for binary single-channel images, and a categorical
PixelCNN for grids of discrete codes (the prior of a VQ-VAE).

References: A. van den Oord, N. Kalchbrenner, K. Kavukcuoglu, *Pixel Recurrent Neural Networks*, ICML 2016
(2016a: the PixelCNN, masks A and B); A. van den Oord, N. Kalchbrenner, O. Vinyals, L. Espeholt, A. Graves,
K. Kavukcuoglu, *Conditional Image Generation with PixelCNN Decoders*, NeurIPS 2016 (2016b: the gated
PixelCNN, its vertical and horizontal stacks and the conditional bias :math:`V^\top h`).

Raster-order factorisation
--------------------------
An image :math:`x \in \{0, 1\}^{H\times W}` is read row by row, left to right, as :math:`x_1, \dots, x_{n}`,
:math:`n = HW`. The chain rule of probability holds for any order, so

.. math:: p(x) = \prod_{i=1}^{n} p(x_i \mid x_{<i}), \qquad p(x_i = 1\mid x_{<i}) = \sigma(\ell_i(x_{<i})),

where a network maps the whole image to one logit :math:`\ell_i` per pixel in a single pass. The density is
normalised (:math:`\sum_x p(x) = 1`, checked exactly on all :math:`2^{16}` images of size 4x4 in the
tests) **if and only if** :math:`\ell_i` depends on :math:`x_{<i}` alone. With
:math:`\log\sigma(\ell) = -\operatorname{softplus}(-\ell)` and :math:`\log(1-\sigma(\ell)) =
-\operatorname{softplus}(\ell)` the log-likelihood, in nats per image, is

.. math:: \log p(x) = \sum_{i=1}^{n} \big[x_i\log\sigma(\ell_i) + (1 - x_i)\log(1 - \sigma(\ell_i))\big]
    = -\sum_{i} \mathrm{BCE}(\sigma(\ell_i), x_i),

problem set 2's problem 1 (NLL = summed binary cross-entropy), computed here stably from the logits
(``binary_cross_entropy_with_logits``); :meth:`log_prob` returns it, :meth:`forward` the logits.

Masked convolutions (2016a)
---------------------------
A :math:`k\times k` kernel, :math:`k = 2c + 1`, centred on pixel :math:`(r, s)` reads the offsets
:math:`(a, b) \in [-c, c]^2` (row, column). Its mask keeps the rows above and, on the centre row, the
columns to the left:

.. math:: M^{A}_{ab} = [a < 0] + [a = 0,\ b < 0], \qquad M^{B}_{ab} = M^{A}_{ab} + [a = 0,\ b = 0].

The first layer (type A) must not see :math:`x_i` itself. Every later feature at position :math:`i`
already depends on :math:`x_{<i}` only, so later layers (type B) may read their own centre. The weight is
multiplied by the mask in every forward pass, so masked weights receive zero gradient and stay inert.
With several input colours the masks would also order the channels (R before G before B); the data here
have one channel, as in problem set 2, so A and B above are the whole story.

The blind spot
--------------
A type-B :math:`3\times 3` layer moves the dependency of the centre pixel by one row up with a column
shift of -1, 0 or +1, or along the same row to the left (shift -1 or 0): **a step to the right costs a step
up**. After the first layer (type A, half-width :math:`c_1`) a pixel :math:`d \ge 1` rows above the target
can therefore be seen only at a column offset

.. math:: b \le c_1 + c\,\min(d - 1, L - 1) \qquad (c = \text{half-width of the hidden kernels},\ c \le c_1),

although the stack reaches :math:`c_1 + c(L - 1)` columns to the right. The triangle of earlier pixels to
the upper right that is never read is the *blind spot* (2016b, figure 1). For the problem set's network
(:math:`c_1 = 3`, :math:`c = 1`, :math:`L = 10`) the row just above is seen only up to 3 columns to the
right, but the stack reaches 12: columns +4..+12 of that row, all earlier in raster order, are ignored.
:func:`receptive_field` computes this map; the tests check it against a path count.

Gated PixelCNN: vertical and horizontal stacks (2016b)
------------------------------------------------------
The gated PixelCNN removes the blind spot with two stacks of unmasked convolutions:

* the **vertical stack** :math:`v` uses :math:`(c+1)\times k` kernels whose output at row :math:`r` reads
  rows :math:`r-c, \dots, r` and columns :math:`s-c, \dots, s+c`: whole rows above, nothing below. It looks
  at the current row too (even to the right), so it may feed the rest of the network only **after a
  down-shift by one row**: the horizontal stack at row :math:`r` receives :math:`W_{v\to h} * v_{r-1}`
  (a :math:`1\times 1` convolution of the vertical pre-activation one row up), which depends on rows
  :math:`< r` only;
* the **horizontal stack** :math:`h` uses :math:`1\times (c+1)` kernels on the current row, columns
  :math:`s-c, \dots, s` (type B), and in the first layer :math:`1\times c_1` kernels on columns
  :math:`s - c_1, \dots, s-1` (type A: the current pixel is excluded).

The horizontal output at :math:`(r, s)` thus depends on the current row to the left and on a full
rectangle of rows above: every earlier pixel within the reach is seen, no blind spot (checked in the
tests). Each layer :math:`\ell` computes (2016b, eq. 2 and figure 2)

.. math::
    \tilde v = W^{v}_{\ell} * v_{\ell-1} + V^{v\top}_{\ell} h_y, \qquad
    v_\ell = \tanh(\tilde v_f) \odot \sigma(\tilde v_g),

    \tilde h = W^{h}_{\ell} * h_{\ell-1} + W_{v\to h}\,\operatorname{shift}_{\downarrow}(\tilde v)
    + V^{h\top}_{\ell} h_y, \qquad
    h_\ell = h_{\ell-1} + W^{o}_{\ell}\big(\tanh(\tilde h_f) \odot \sigma(\tilde h_g)\big),

where :math:`\tilde v = (\tilde v_f, \tilde v_g)` splits the :math:`2p` channels into the filter and the
gate halves, :math:`W^{o}` is a :math:`1\times 1` convolution and the residual connection
:math:`h_{\ell-1} +` is left out of the first layer (whose input has one channel). The *gated activation*
:math:`\tanh(\cdot)\odot\sigma(\cdot)` replaces the ReLU: the sigmoid gate multiplies the tanh "content",
as in an LSTM. The head is ReLU, :math:`1\times 1` conv, ReLU, :math:`1\times 1` conv to one logit per
pixel. There is no BatchNorm in the gated network (nor in the paper).

Class conditioning
------------------
With a one-hot label :math:`h_y \in \{0, 1\}^K` a matrix :math:`V \in \mathbb R^{C \times K}` adds the
per-channel bias :math:`V h_y = V_{:, y}` to every position of a layer's pre-activation (2016b, eq. 4):
a learned class embedding, the same at all pixels, so the autoregressive masks are untouched. The
PixelCNN adds it after every masked convolution (before BatchNorm), as problem set 2's
``ConditionalMaskedConv2d`` does (10 x 128 x 10 = 12,800 extra parameters); the gated network adds one to
the vertical and one to the horizontal pre-activation of every layer.

BatchNorm and the autoregressive property
-----------------------------------------
In **training mode** BatchNorm subtracts the mean over the batch and over all pixels, so every logit
depends (weakly, through :math:`1/(BHW)`) on every pixel, later ones included: the training loss is not
exactly the log-likelihood of a normalised model. In **evaluation mode** BatchNorm is a fixed per-channel
affine map and the model is exactly autoregressive. :meth:`~RasterScanModel.sample` and
:meth:`~RasterScanModel.complete` therefore run in evaluation mode (running statistics) and restore
every submodule's previous mode afterwards; problem set 2 sampled in training mode, from a near-empty
canvas whose batch statistics are unlike any training batch.

Sampling, naive and fast
------------------------
Sampling fills the canvas in raster order. The naive way (``fast=False``, the problem set's loop) runs a
full forward pass for each of the :math:`HW` pixels: :math:`O(H^2W^2 L C^2 k^2)` multiply-adds. Two exact
shortcuts follow from the architecture:

* *vertical reach.* Logit :math:`(r, s)` reads input rows :math:`r - R, \dots, r` only, with
  :math:`R = c_1 + c(L-1)` for the PixelCNN and :math:`R = 1 + c_1 + c(L - 1)` for the gated network
  (the extra row is the down-shift): :attr:`receptive_field_reach`. A forward pass on that strip gives the
  same last row, because a wrong zero padding at the strip's top edge corrupts at most :math:`c` more rows
  per layer, :math:`R` in total (and the rows below :math:`r` are never read). Strips of
  :math:`\min(r, R) + 1` rows instead of :math:`H` need 2.7x fewer multiply-adds on a 28x28 image with
  the default :math:`R = 12`; the crop at the top gains nothing once :math:`R \ge H - 1`, only dropping the
  rows below is left (about 2x).
* *row cache* (``fast=True``, used here). While row :math:`r` is being sampled, all activations in rows
  :math:`< r` are final: they depend on rows :math:`< r` of the canvas only. Every layer's activations are
  kept for the whole image; for each pixel only row :math:`r` of each layer is recomputed, with the top
  :math:`(c + 1)` rows of each masked kernel (the rest are masked to zero) on the cached rows above. The
  gated network recomputes its vertical stack once per row (row :math:`r - 1`, when row :math:`r` starts)
  and only its horizontal stack per pixel. Cost per pixel: one row per layer, :math:`O(W L C^2 (c+1) k)`,
  about :math:`Hk/(c+1) = 42` times fewer multiply-adds than a full pass for the default PixelCNN. How
  much of that a device turns into speed depends on it (``benchmarks/ar_mnist_nll.py --sampling-only``
  measures it).

Both draw the uniform noise :math:`u_{rs}` of all pixels up front and set :math:`x_{rs} = [u_{rs} <
\sigma(\ell_{rs})]`, so for the same generator they give identical samples (unless a logit differs in its
last float bits between the two computations and a :math:`u` falls in between: probability about
:math:`10^{-7}` per pixel).

Categorical PixelCNN: a prior over grids of discrete codes
----------------------------------------------------------
A VQ-VAE encodes an image as a grid :math:`z \in \{0, \dots, K-1\}^{H\times W}` of codebook indices (e.g.
7x7 codes, :math:`K = 64 \dots 4096`). :class:`CategoricalPixelCNN` models it in the same raster order with a
softmax over the :math:`K` values at each position:

.. math:: \log p(z) = \sum_{i=1}^{n} \log p(z_i \mid z_{<i}), \qquad
    p(z_i = k \mid z_{<i}) = \operatorname{softmax}(\ell_i)_k = \frac{e^{\ell_{ik}}}{\sum_{j=0}^{K-1} e^{\ell_{ij}}},

so :math:`\log p(z_i\mid z_{<i}) = \ell_{i z_i} - \operatorname{logsumexp}_j \ell_{ij}`, minus the cross-entropy
of the logits :math:`\ell_i \in \mathbb R^K` at the observed code. Summing over :math:`z_n` first, then
:math:`z_{n-1}`, ..., shows :math:`\sum_z p(z) = 1` exactly when :math:`\ell_i` depends on :math:`z_{<i}` alone.

A code is a category, not a number, so it enters as a learned embedding :math:`e_i = E_{z_i} \in \mathbb
R^{d}` (``nn.Embedding``), a :math:`d`-channel map :math:`[B, d, H, W]`. All :math:`d` channels describe the one
variable :math:`z_i`: they form **one channel group**, so one spatial mask serves every channel pair (the
``[1, 1, k, k]`` mask of :class:`MaskedConv2d` is broadcast over them). Type A removes the centre tap for all
:math:`d` channels at once, so no channel of :math:`e_i` reaches :math:`\ell_i`; type B keeps it in later
layers, whose centre features already depend on :math:`z_{<i}` only. (A per-channel ordering as for RGB, with
:math:`d` groups, would let later embedding channels read earlier ones of the same code, a leak.) The gated
stack is unchanged: its first horizontal kernel (type A) excludes the centre, and the vertical stack reaches
the horizontal one only after the down-shift. There is no BatchNorm, so the model is exactly autoregressive
in training mode too.

Sampling draws :math:`u_i \sim U[0, 1)` for every position up front and sets :math:`z_i = \#\{k : F_{ik} \le
u_i\}` with :math:`F_{ik} = \sum_{j\le k} p(z_i = j\mid z_{<i})` (inverse CDF), so
:math:`P(z_i = k) = F_{ik} - F_{i,k-1} = p(z_i = k\mid z_{<i})`; one full forward pass per position, on the rows
filled so far (row :math:`r`'s logits read rows :math:`\le r` only).
"""

from __future__ import annotations

import copy
import operator
from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from dgmlab import checks
from dgmlab.densities import bernoulli_log_likelihood
from dgmlab.errors import CapabilityError, ModelConfigError
from dgmlab.utils import check_int, eval_mode
from dgmlab.utils import is_int as _is_int

MASK_TYPES: tuple[str, ...] = ("A", "B")

__all__ = [
    "MASK_TYPES", "CategoricalPixelCNN", "GatedLayer", "GatedPixelCNN", "MaskedConv2d", "PixelCNN", "RasterScanModel",
    "receptive_field",
]


# ----------------------------------------------------------------------------------------------------------
# Argument checks
# ----------------------------------------------------------------------------------------------------------
def _check_int(value: object, name: str, model: str, minimum: int) -> int:
    return check_int(value, name, minimum=minimum, owner=model, error=ModelConfigError)


def _check_kernel(value: object, name: str, model: str, minimum: int = 1) -> int:
    if not _is_int(value) or value < minimum or value % 2 == 0:  # type: ignore[operator]
        raise ModelConfigError(
            f"{model}: {name} must be an odd integer >= {minimum} (a masked kernel needs a centre pixel, "
            f"and 'same' padding of k // 2 keeps the image size only for odd k), got {value!r}"
        )
    return value  # type: ignore[return-value]


def _image_shape(image_size: object, name: str = "image_size") -> tuple[int, int]:
    """``int`` -> square ``(s, s)``; ``(H, W)`` -> itself; both positive."""
    if _is_int(image_size) and image_size >= 1:  # type: ignore[operator]
        return int(image_size), int(image_size)  # type: ignore[call-overload]
    if (
        isinstance(image_size, Sequence)
        and len(image_size) == 2
        and all(_is_int(side) and side >= 1 for side in image_size)
    ):
        return int(image_size[0]), int(image_size[1])
    raise ValueError(f"{name} must be a positive integer or a pair (H, W) of positive integers, got {image_size!r}")


# ----------------------------------------------------------------------------------------------------------
# Building blocks
# ----------------------------------------------------------------------------------------------------------
class MaskedConv2d(nn.Conv2d):
    r"""A square convolution whose kernel is multiplied by the raster-order mask of type A or B.

    ``MaskedConv2d(in_channels, out_channels, kernel_size, mask_type)`` with an odd ``kernel_size``
    :math:`k = 2c + 1`, stride 1 and padding :math:`c` ("same" size). The mask (a buffer of shape
    ``[1, 1, k, k]``, broadcast over the channels) is 1 on the :math:`c` rows above the centre and on the
    centre row left of the centre (type A) or up to and including it (type B), 0 elsewhere; see the module
    docstring. For single-channel data (no ordering between colour channels).

    Shapes: ``[B, in_channels, H, W] -> [B, out_channels, H, W]``.
    """

    def __init__(
        self, in_channels: int, out_channels: int, kernel_size: int, mask_type: str = "A", bias: bool = True
    ) -> None:
        _check_int(in_channels, "in_channels", "MaskedConv2d", 1)
        _check_int(out_channels, "out_channels", "MaskedConv2d", 1)
        _check_kernel(kernel_size, "kernel_size", "MaskedConv2d")
        if mask_type not in MASK_TYPES:
            raise ModelConfigError(
                f"MaskedConv2d: mask_type must be 'A' (first layer: excludes the centre pixel) or 'B' (later "
                f"layers: includes it), got {mask_type!r}"
            )
        if mask_type == "A" and kernel_size == 1:
            raise ModelConfigError("MaskedConv2d: a 1x1 kernel of type A masks every weight, so it sees nothing")
        super().__init__(in_channels, out_channels, kernel_size, stride=1, padding=kernel_size // 2, bias=bias)
        self.mask_type = mask_type
        centre = kernel_size // 2
        mask = torch.zeros(1, 1, kernel_size, kernel_size)
        # M_ab = [a < 0] + [a = 0, b < 0] (+ [a = 0, b = 0] for type B)
        mask[..., :centre, :] = 1.0
        mask[..., centre, : centre + (1 if mask_type == "B" else 0)] = 1.0
        self.register_buffer("mask", mask)

    def forward(self, x: Tensor) -> Tensor:
        return self._conv_forward(x, self.weight * self.mask, self.bias)

    def forward_last_row(self, rows: Tensor) -> Tensor:
        """The output row at the bottom of ``rows`` ``[B, C, c + 1, W]`` (the current row and the ``c`` rows
        above it, zeros above the image): ``[B, out_channels, 1, W]``, equal to that row of :meth:`forward`.
        Only the top ``c + 1`` kernel rows are used; the rows below the centre are masked to zero."""
        centre = self.kernel_size[0] // 2
        weight = (self.weight * self.mask)[:, :, : centre + 1]
        return F.conv2d(rows, weight, self.bias, padding=(0, centre))

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, mask_type={self.mask_type!r}"


def _rows_ending_at(values: Tensor, row: int, count: int) -> Tensor:
    """Rows ``row - count + 1 .. row`` of ``values`` ``[B, C, H, W]``, zero-padded above the image."""
    top = row - count + 1
    strip = values[:, :, max(top, 0) : row + 1]
    return F.pad(strip, (0, 0, -top, 0)) if top < 0 else strip


def _class_bias(V: Tensor, one_hot: Tensor | None) -> Tensor | float:
    """:math:`V h_y` as ``[B, C, 1, 1]`` (``V`` is ``[C, K]``, ``one_hot`` ``[B, K]``); 0 without labels."""
    if one_hot is None:
        return 0.0
    return (one_hot @ V.t())[:, :, None, None]


def _labels_one_hot(name: str, num_classes: int, context: Any, batch: int, reference: Tensor) -> Tensor | None:
    """``context`` (labels ``[batch]`` or one ``int``) as one-hot ``[batch, num_classes]`` in ``reference``'s dtype
    and device, or ``None`` for an unconditional model (``num_classes = 0``); ``name`` is the model's, for the
    messages. Raises :class:`CapabilityError` for labels given to an unconditional model or missing from a
    conditional one, ``ValueError`` for labels of the wrong type, shape or range."""
    y = context
    if num_classes == 0:
        if y is not None:
            raise CapabilityError(
                f"{name} is unconditional (num_classes=0) but class labels were given as context=; build it "
                f"with num_classes=K to condition on labels"
            )
        return None
    if y is None:
        raise CapabilityError(
            f"{name} is class-conditional (num_classes={num_classes}): pass labels as context=, a "
            f"LongTensor of shape [{batch}] with values in 0..{num_classes - 1} (or one int for all)"
        )
    if _is_int(y):
        y = torch.full((batch,), y, dtype=torch.long)
    if not isinstance(y, Tensor) or y.is_floating_point() or y.is_complex() or y.dtype == torch.bool:
        raise ValueError(f"{name}: context must be an integer tensor of class labels, got {y!r:.80}")
    if y.shape != (batch,):
        raise ValueError(f"{name}: context must have shape [{batch}] (one label per image), got {list(y.shape)}")
    if batch > 0 and (int(y.min()) < 0 or int(y.max()) >= num_classes):
        raise ValueError(
            f"{name}: labels must lie in 0..{num_classes - 1} (num_classes={num_classes}), "
            f"got values in {int(y.min())}..{int(y.max())}"
        )
    return F.one_hot(y.to(reference.device), num_classes).to(reference.dtype)


def _gate(pre_activation: Tensor) -> Tensor:
    """:math:`\\tanh(a_f) \\odot \\sigma(a_g)` with ``(a_f, a_g)`` the two channel halves of the input."""
    filter_half, gate_half = pre_activation.chunk(2, dim=1)
    return torch.tanh(filter_half) * torch.sigmoid(gate_half)


def _check_sample_count(owner: str, n: object) -> None:
    """``n`` (how many examples ``owner.sample`` draws) must be a positive integer."""
    if not _is_int(n) or n < 1:  # type: ignore[operator]
        raise ValueError(f"{owner}.sample: n must be a positive integer, got {n!r}")


def _check_known_rows(owner: str, known_rows: object, height: int, what: str) -> None:
    """``known_rows`` (kept by ``owner.complete``) must be an integer in ``0..height``."""
    if not _is_int(known_rows) or not 0 <= known_rows <= height:  # type: ignore[operator]
        raise ValueError(
            f"{owner}.complete: known_rows must be an integer in 0..{height} (the {what} height), got {known_rows!r}"
        )


def _uniform_noise(shape: tuple[int, ...], generator: torch.Generator | None, device: torch.device,
                   dtype: torch.dtype) -> Tensor:
    r""":math:`u \sim U[0, 1)` of ``shape`` on ``device``, drawn on the generator's device (so that a CPU
    generator gives the same numbers whatever the model's device)."""
    noise_device = generator.device if generator is not None else device
    return torch.rand(shape, generator=generator, device=noise_device, dtype=dtype).to(device)


def _channels_last(x: Tensor) -> Tensor:
    """``x`` in the channels-last memory layout (``[B, C, H, W]`` stored as ``B, H, W, C``), the layout the
    convolutions run fastest in on the CPU (oneDNN) and on tensor-core GPUs. The weights of both models are
    stored channels-last from construction (``_store_channels_last``), so every layer stays in it
    (``benchmarks/train_step_speed.py`` measures a training step in each layout and precision)."""
    return x.contiguous(memory_format=torch.channels_last)


def _shift_down(values: Tensor) -> Tensor:
    """Row ``r`` of the result is row ``r - 1`` of ``values``; row 0 is zero."""
    return F.pad(values, (0, 0, 1, 0))[:, :, :-1]


# ----------------------------------------------------------------------------------------------------------
# The shared surface: log_prob, sample, complete
# ----------------------------------------------------------------------------------------------------------
class RasterScanModel(nn.Module):
    """The surface shared by :class:`PixelCNN` and :class:`GatedPixelCNN`: binary images ``[B, 1, H, W]``
    modelled in raster order, ``forward`` (logits), ``log_prob``, ``log_prob_per_pixel``, ``sample`` and
    ``complete``. Subclasses provide ``_logits(x, one_hot)`` and the row cache used by fast sampling
    (``_start_cache``, ``_start_row``, ``_row_logits``)."""

    def __init__(self, channels: int, num_layers: int, kernel_size: int, hidden_kernel: int, num_classes: int,
                 image_size: int) -> None:
        """Validate and keep the architecture's numbers (what every raster-scan model here is built from)."""
        super().__init__()
        _check_common(type(self).__name__, channels, num_layers, kernel_size, hidden_kernel, num_classes,
                      image_size)
        self.channels, self.num_layers = channels, num_layers
        self.kernel_size, self.hidden_kernel = kernel_size, hidden_kernel
        self.num_classes, self.image_size = num_classes, image_size

    def _store_channels_last(self) -> None:
        """Store every 4-D weight channels-last (see ``_channels_last``); ``.to(device)`` keeps the layout,
        and checkpoints hold contiguous copies, so saved weights do not depend on it."""
        self.to(memory_format=torch.channels_last)

    # -- inputs --------------------------------------------------------------------------------------------
    def _check_images(self, x: Any, name: str = "x") -> Tensor:
        if not isinstance(x, Tensor):
            raise ValueError(f"{type(self).__name__}: {name} must be a tensor, got {type(x).__name__}")
        if x.dim() != 4 or x.shape[1] != 1 or x.shape[2] < 1 or x.shape[3] < 1:
            raise ValueError(
                f"{type(self).__name__}: {name} must be binary images of shape [B, 1, H, W], got "
                f"{list(x.shape)}; reshape flat MNIST with x.view(-1, 1, 28, 28) (or load it with flatten=False)"
            )
        if not x.is_floating_point():
            raise ValueError(f"{type(self).__name__}: {name} must be a floating-point tensor, got {x.dtype}")
        return x

    def _one_hot(self, context: Any, batch: int) -> Tensor | None:
        """Validated one-hot labels ``[batch, K]`` in the model's dtype, or ``None`` for an unconditional model."""
        return _labels_one_hot(type(self).__name__, self.num_classes, context, batch, self._reference_parameter())

    def _reference_parameter(self) -> Tensor:
        return next(self.parameters())

    # -- the density ---------------------------------------------------------------------------------------
    @property
    def image_shape(self) -> tuple[int, int, int]:
        """``(1, image_size, image_size)``: the binary images the model was built for (it accepts any size)."""
        return (1, self.image_size, self.image_size)

    def forward(self, x: Tensor, *, context: Tensor | int | None = None) -> Tensor:
        """Logits :math:`\\ell` ``[B, 1, H, W]`` of :math:`p(x_{rs} = 1\\mid x_{<rs}, y)`; ``context`` the labels
        :math:`y` ``[B]`` (class-conditional models only)."""
        x = self._check_images(x)
        return self._logits(_channels_last(x), self._one_hot(context, x.shape[0]))

    def log_prob_per_dimension(self, x: Tensor, *, context: Tensor | int | None = None) -> Tensor:
        """:math:`\\log p(x_{rs}\\mid x_{<rs}, y)` in nats, ``[B, 1, H, W]`` (the shape of ``x``); sums to
        :meth:`log_prob`.

        ``x`` should be binary; values in [0, 1] give a cross-entropy. Exact only in evaluation mode
        (BatchNorm running statistics), see the module docstring."""
        x = self._check_images(x)
        checks.require(((x >= 0) & (x <= 1)).all(), lambda: (
            f"{type(self).__name__}: x must hold pixel values in [0, 1] (binary images), got values in "
            f"[{float(x.min()):.4g}, {float(x.max()):.4g}]"))
        logits = self._logits(_channels_last(x), self._one_hot(context, x.shape[0]))
        # x log sigma(l) + (1 - x) log(1 - sigma(l)), stably from logits
        return bernoulli_log_likelihood(x.unsqueeze(-1), logits.unsqueeze(-1))

    def log_prob_per_pixel(self, x: Tensor, *, context: Tensor | int | None = None) -> Tensor:
        """:math:`\\log p(x_{rs}\\mid x_{<rs}, y)` in nats, ``[B, H, W]`` (minus it is a per-pixel NLL map)."""
        return self.log_prob_per_dimension(x, context=context)[:, 0]

    def log_prob(self, x: Tensor, *, context: Tensor | int | None = None) -> Tensor:
        """:math:`\\log p(x\\mid y) = \\sum_{rs}\\log p(x_{rs}\\mid x_{<rs}, y)` in nats per image, ``[B]``."""
        return self.log_prob_per_pixel(x, context=context).sum(dim=(1, 2))

    # -- sampling ------------------------------------------------------------------------------------------
    @property
    def receptive_field_reach(self) -> int:
        """How many rows above the current one can influence its logits (:math:`R` in the module docstring)."""
        raise NotImplementedError

    def sample(
        self,
        n: int,
        *,
        generator: torch.Generator | None = None,
        context: Tensor | int | None = None,
        image_size: int | tuple[int, int] | None = None,
        fast: bool = True,
    ) -> Tensor:
        """``n`` binary images ``[n, 1, H, W]`` drawn pixel by pixel in raster order.

        Runs in evaluation mode and restores every submodule's mode afterwards. ``context``: labels ``[n]``
        or one ``int`` for all (class-conditional models only). ``image_size``: ``int`` or ``(H, W)``, default
        the model's ``image_size``. ``fast=True`` uses the row cache, ``fast=False`` one full forward pass
        per pixel; both give the same images for the same ``generator`` (the noise of every pixel is drawn
        up front)."""
        _check_sample_count(type(self).__name__, n)
        height, width = _image_shape(self.image_size if image_size is None else image_size)
        reference = self._reference_parameter()
        canvas = torch.zeros(n, 1, height, width, dtype=reference.dtype, device=reference.device)
        return self._fill(canvas, 0, context, generator, fast)

    def complete(
        self,
        x: Tensor,
        known_rows: int,
        *,
        generator: torch.Generator | None = None,
        context: Tensor | int | None = None,
        fast: bool = True,
    ) -> Tensor:
        """Keep the first ``known_rows`` rows of ``x`` ``[B, 1, H, W]`` and sample the rest in raster order.

        Returns a new tensor ``[B, 1, H, W]``; rows ``< known_rows`` equal ``x``'s exactly. The noise is drawn
        for every pixel as in :meth:`sample`, so ``complete(x, 0)`` equals ``sample(B)`` for the same generator.
        """
        x = self._check_images(x)
        height = x.shape[2]
        _check_known_rows(type(self).__name__, known_rows, height, "image")
        reference = self._reference_parameter()
        canvas = x.detach().to(device=reference.device, dtype=reference.dtype, copy=True)
        canvas[:, :, known_rows:] = 0.0
        return self._fill(canvas, known_rows, context, generator, fast)

    @torch.no_grad()
    def _fill(
        self, canvas: Tensor, start_row: int, y: Any, generator: torch.Generator | None, fast: bool
    ) -> Tensor:
        batch, _, height, width = canvas.shape
        one_hot = self._one_hot(y, batch)
        # u_rs for every pixel, drawn before any pixel so that both samplers consume the same numbers
        noise = _uniform_noise((batch, height, width), generator, canvas.device, canvas.dtype)
        with eval_mode(self):
            cache = self._start_cache(canvas, one_hot) if fast else None
            for r in range(start_row, height):
                if cache is not None:
                    self._start_row(cache, r, one_hot)
                for s in range(width):
                    if cache is not None:
                        logits = self._row_logits(cache, r, one_hot)[:, s]
                    else:
                        logits = self._logits(canvas, one_hot)[:, 0, r, s]
                    # x_rs = [u_rs < sigma(l_rs)] ~ Bernoulli(sigma(l_rs))
                    canvas[:, 0, r, s] = (noise[:, r, s] < torch.sigmoid(logits)).to(canvas.dtype)
        return canvas

    # -- subclass hooks ------------------------------------------------------------------------------------
    def _logits(self, x: Tensor, one_hot: Tensor | None) -> Tensor:
        raise NotImplementedError

    def _start_cache(self, canvas: Tensor, one_hot: Tensor | None) -> Any:
        raise NotImplementedError

    def _start_row(self, cache: Any, row: int, one_hot: Tensor | None) -> None:
        """Update the cache when sampling of ``row`` begins (all rows above it are final)."""

    def _row_logits(self, cache: Any, row: int, one_hot: Tensor | None) -> Tensor:
        raise NotImplementedError


def _check_common(
    model: str, channels: int, num_layers: int, kernel_size: int, hidden_kernel: int, num_classes: int,
    image_size: int,
) -> None:
    _check_int(channels, "channels", model, 1)
    _check_int(num_layers, "num_layers", model, 1)
    _check_kernel(kernel_size, "kernel_size (first, type-A layer)", model, minimum=3)
    _check_kernel(hidden_kernel, "hidden_kernel", model)
    _check_int(num_classes, "num_classes (0 for an unconditional model)", model, 0)
    _check_int(image_size, "image_size", model, 1)


# ----------------------------------------------------------------------------------------------------------
# PixelCNN (problem set 2)
# ----------------------------------------------------------------------------------------------------------
class PixelCNN(RasterScanModel):
    """Problem set 2's PixelCNN, returning logits: one type-A ``kernel_size`` masked conv (1 -> channels),
    ``num_layers - 1`` type-B ``hidden_kernel`` masked convs (channels -> channels), each followed by
    BatchNorm2d and ReLU, and a 1x1 conv head (channels -> 1 logit per pixel).

    ``PixelCNN()`` (128 channels, 10 layers, 7x7 then 3x3) has **1,337,345** parameters, problem set 2's
    "about 1.337M" (BatchNorm's affine weights included; 744,321 of them are not masked to zero);
    ``PixelCNN(num_classes=10)`` adds :math:`V_\\ell \\in \\mathbb R^{128\\times 10}` per layer: 1,350,145.
    Vertical reach :math:`R = \\lfloor k_1/2\\rfloor + (L-1)\\lfloor k/2\\rfloor` = 12 rows by default.
    """

    def __init__(
        self,
        channels: int = 128,
        num_layers: int = 10,
        kernel_size: int = 7,
        hidden_kernel: int = 3,
        num_classes: int = 0,
        image_size: int = 28,
    ) -> None:
        super().__init__(channels, num_layers, kernel_size, hidden_kernel, num_classes, image_size)
        self.convs = nn.ModuleList(
            [MaskedConv2d(1, channels, kernel_size, "A")]
            + [MaskedConv2d(channels, channels, hidden_kernel, "B") for _ in range(num_layers - 1)]
        )
        self.norms = nn.ModuleList(nn.BatchNorm2d(channels) for _ in range(num_layers))
        # V_l [channels, K] per layer. Problem set 2 drew V from an unscaled randn: class biases of size ~1 on
        # conv outputs of size ~0.1-1 at initialisation, so the untrained network is dominated by a random
        # class offset. Zeros start from the unconditional model; dL/dV is not zero there (it is the gradient
        # of the layer's bias for that class), so the labels are learned from the first step.
        self.V = nn.ParameterList(
            nn.Parameter(torch.zeros(channels, num_classes)) for _ in range(num_layers if num_classes else 0)
        )
        self.head = nn.Conv2d(channels, 1, kernel_size=1)
        self._store_channels_last()

    @property
    def receptive_field_reach(self) -> int:
        return self.kernel_size // 2 + (self.num_layers - 1) * (self.hidden_kernel // 2)

    def _activate(self, layer: int, pre_activation: Tensor, one_hot: Tensor | None) -> Tensor:
        if one_hot is not None:
            # conv(x) + V h_y, broadcast over positions
            pre_activation = pre_activation + _class_bias(self.V[layer], one_hot)
        return F.relu(self.norms[layer](pre_activation))

    def _activations(self, x: Tensor, one_hot: Tensor | None) -> list[Tensor]:
        """``[x, a_1, ..., a_L]``: the input and every layer's output (the first entry *is* ``x``)."""
        activations = [x]
        for layer, conv in enumerate(self.convs):
            activations.append(self._activate(layer, conv(activations[-1]), one_hot))
        return activations

    def _logits(self, x: Tensor, one_hot: Tensor | None) -> Tensor:
        return self.head(self._activations(x, one_hot)[-1])

    def _start_cache(self, canvas: Tensor, one_hot: Tensor | None) -> list[Tensor]:
        return self._activations(canvas, one_hot)  # entry 0 is the canvas itself: it sees every new pixel

    def _row_logits(self, cache: list[Tensor], row: int, one_hot: Tensor | None) -> Tensor:
        for layer, conv in enumerate(self.convs):
            above = _rows_ending_at(cache[layer], row, conv.kernel_size[0] // 2 + 1)
            cache[layer + 1][:, :, row : row + 1] = self._activate(layer, conv.forward_last_row(above), one_hot)
        return self.head(cache[-1][:, :, row : row + 1])[:, 0, 0]


# ----------------------------------------------------------------------------------------------------------
# Gated PixelCNN (van den Oord et al. 2016b)
# ----------------------------------------------------------------------------------------------------------
class GatedLayer(nn.Module):
    """One gated layer: vertical and horizontal stack, down-shifted link, gates, residual (not in the first).

    ``first=True``: input has ``in_channels`` (1), the horizontal kernel is ``1 x c`` on columns ``s-c..s-1``
    (type A) and there is no residual. Otherwise ``1 x (c+1)`` on columns ``s-c..s`` (type B)."""

    def __init__(self, in_channels: int, channels: int, kernel_size: int, first: bool, num_classes: int) -> None:
        super().__init__()
        half = kernel_size // 2
        self.half, self.first = half, first
        self.vertical = nn.Conv2d(in_channels, 2 * channels, (half + 1, kernel_size))
        self.horizontal = nn.Conv2d(in_channels, 2 * channels, (1, half if first else half + 1))
        self.link = nn.Conv2d(2 * channels, 2 * channels, 1)  # W_{v->h}
        self.out = nn.Conv2d(channels, channels, 1)  # W^o
        self.V_vertical = nn.Parameter(torch.zeros(2 * channels, num_classes)) if num_classes else None
        self.V_horizontal = nn.Parameter(torch.zeros(2 * channels, num_classes)) if num_classes else None

    def vertical_pre(self, v: Tensor, one_hot: Tensor | None, pad_top: bool = True) -> Tensor:
        """:math:`\\tilde v = W^v * v + V^v h_y`; output row ``r`` reads rows ``r-c..r`` and columns ``s-c..s+c``.
        With ``pad_top=False``, ``v`` holds exactly ``c + 1`` rows and one output row is returned."""
        padded = F.pad(v, (self.half, self.half, self.half if pad_top else 0, 0))
        bias = _class_bias(self.V_vertical, one_hot) if self.V_vertical is not None else 0.0
        return self.vertical(padded) + bias

    def horizontal_pre(self, h: Tensor, v_pre_above: Tensor, one_hot: Tensor | None) -> Tensor:
        """:math:`\\tilde h = W^h * h + W_{v\\to h}\\tilde v_{r-1} + V^h h_y` (``v_pre_above`` already shifted)."""
        width = h.shape[-1]
        # type A: columns s-c..s-1 (pad c, kernel width c, drop the last output); type B: columns s-c..s
        conv = self.horizontal(F.pad(h, (self.half, 0, 0, 0)))[..., :width]
        bias = _class_bias(self.V_horizontal, one_hot) if self.V_horizontal is not None else 0.0
        return conv + self.link(v_pre_above) + bias

    def horizontal_out(self, h: Tensor, h_pre: Tensor) -> Tensor:
        """:math:`h_\\ell = h_{\\ell-1} + W^o(\\tanh\\odot\\sigma)` (no residual in the first layer)."""
        gated = self.out(_gate(h_pre))
        return gated if self.first else h + gated

    def forward(self, v: Tensor, h: Tensor, one_hot: Tensor | None) -> tuple[Tensor, Tensor, Tensor]:
        """``(v_pre, v_out, h_out)`` on whole images."""
        v_pre = self.vertical_pre(v, one_hot)
        h_out = self.horizontal_out(h, self.horizontal_pre(h, _shift_down(v_pre), one_hot))
        return v_pre, _gate(v_pre), h_out


def _gated_stacks(
    layers: Sequence[GatedLayer], x: Tensor, one_hot: Tensor | None
) -> tuple[list[Tensor], list[Tensor], Tensor]:
    """Run gated ``layers`` on ``x`` (both stacks start from it): vertical inputs ``[x, v_1, ..., v_L]``, vertical
    pre-activations ``[v~_1..v~_L]`` and the last horizontal output ``h_L``."""
    v_inputs, v_pres, h = [x], [], x
    for layer in layers:
        v_pre, v_out, h = layer(v_inputs[-1], h, one_hot)
        v_pres.append(v_pre)
        v_inputs.append(v_out)
    return v_inputs, v_pres, h


class GatedPixelCNN(RasterScanModel):
    r"""Gated PixelCNN (van den Oord et al. 2016b) for binary images, returning logits.

    ``num_layers`` gated layers of ``channels`` feature maps (``2 * channels`` before each gate): the first
    with ``kernel_size`` (vertical ``(c1+1) x k1``, horizontal ``1 x c1`` type A), the rest with
    ``hidden_kernel`` (vertical ``(c+1) x k``, horizontal ``1 x (c+1)``), then ReLU, 1x1 conv, ReLU, 1x1 conv
    to one logit per pixel. ``GatedPixelCNN()`` (64 channels, 8 layers, 7 then 3) has **634,369** parameters;
    ``num_classes=10`` adds :math:`V^v, V^h \in \mathbb R^{128\times 10}` per layer (20,480 in all).
    Vertical reach :math:`R = 1 + c_1 + c(L-1)` = 11 rows by default. No blind spot (module docstring).
    """

    def __init__(
        self,
        channels: int = 64,
        num_layers: int = 8,
        kernel_size: int = 7,
        hidden_kernel: int = 3,
        num_classes: int = 0,
        image_size: int = 28,
    ) -> None:
        super().__init__(channels, num_layers, kernel_size, hidden_kernel, num_classes, image_size)
        # V^v, V^h start at zero, as in PixelCNN (see there): the untrained model is the unconditional one
        self.layers = nn.ModuleList(
            [GatedLayer(1, channels, kernel_size, first=True, num_classes=num_classes)]
            + [
                GatedLayer(channels, channels, hidden_kernel, first=False, num_classes=num_classes)
                for _ in range(num_layers - 1)
            ]
        )
        self.head = nn.Sequential(
            nn.ReLU(), nn.Conv2d(channels, channels, 1), nn.ReLU(), nn.Conv2d(channels, 1, 1)
        )
        self._store_channels_last()

    @property
    def receptive_field_reach(self) -> int:
        return 1 + self.kernel_size // 2 + (self.num_layers - 1) * (self.hidden_kernel // 2)

    def _stacks(self, x: Tensor, one_hot: Tensor | None) -> tuple[list[Tensor], list[Tensor], Tensor]:
        """Vertical inputs ``[x, v_1, ..., v_L]``, vertical pre-activations ``[v~_1..v~_L]``, last ``h``."""
        return _gated_stacks(self.layers, x, one_hot)

    def _logits(self, x: Tensor, one_hot: Tensor | None) -> Tensor:
        return self.head(self._stacks(x, one_hot)[2])

    def _start_cache(self, canvas: Tensor, one_hot: Tensor | None) -> tuple[list[Tensor], list[Tensor]]:
        v_inputs, v_pres, _ = self._stacks(canvas, one_hot)  # v_inputs[0] is the canvas itself
        return v_inputs, v_pres

    def _start_row(self, cache: tuple[list[Tensor], list[Tensor]], row: int, one_hot: Tensor | None) -> None:
        # row - 1 of the canvas is now final: recompute row - 1 of the vertical stack, which row `row` reads
        if row == 0:
            return
        v_inputs, v_pres = cache
        for index, layer in enumerate(self.layers):
            above = _rows_ending_at(v_inputs[index], row - 1, layer.half + 1)
            v_pre = layer.vertical_pre(above, one_hot, pad_top=False)
            v_pres[index][:, :, row - 1 : row] = v_pre
            v_inputs[index + 1][:, :, row - 1 : row] = _gate(v_pre)

    def _row_logits(self, cache: tuple[list[Tensor], list[Tensor]], row: int, one_hot: Tensor | None) -> Tensor:
        v_inputs, v_pres = cache
        h = v_inputs[0][:, :, row : row + 1]
        for index, layer in enumerate(self.layers):
            # shift_down: row r of the horizontal stack reads row r - 1 of the vertical one (zeros for r = 0)
            above = v_pres[index][:, :, row - 1 : row] if row > 0 else torch.zeros_like(v_pres[index][:, :, :1])
            h = layer.horizontal_out(h, layer.horizontal_pre(h, above, one_hot))
        return self.head(h)[:, 0, 0]


# ----------------------------------------------------------------------------------------------------------
# Categorical PixelCNN: a prior over code grids
# ----------------------------------------------------------------------------------------------------------
class CategoricalPixelCNN(nn.Module):
    r"""An autoregressive prior over grids of discrete codes :math:`z \in \{0..K-1\}^{H\times W}` (a VQ-VAE's
    code grid), in raster order with a softmax over the :math:`K` values (module docstring):

    .. math:: \log p(z \mid y) = \sum_{i} \log p(z_i \mid z_{<i}, y), \qquad
        p(z_i = k\mid z_{<i}, y) = \operatorname{softmax}_k(\ell_i).

    ``CategoricalPixelCNN(num_codes, image_size=7, *, channels=64, num_layers=6, kernel_size=5,
    hidden_kernel=3, embedding_dim=32, gated=True, num_classes=0)``: ``num_codes`` is :math:`K`;
    ``image_size`` an ``int`` or ``(H, W)``, the grid that :meth:`sample` draws (the network takes any size).
    Each code is embedded (``nn.Embedding(K, embedding_dim)``, the channels of the first layer), then

    * ``gated=True``: ``num_layers`` :class:`GatedLayer` s, the first with ``kernel_size`` (horizontal type A),
      the rest with ``hidden_kernel``; vertical reach :math:`R = 1 + c_1 + c(L-1)` rows, no blind spot. The
      defaults (:math:`R = 8`, :math:`c_1 + c(L-1) = 7` columns either side) see every earlier code of a 7x7
      grid;
    * ``gated=False``: one type-A ``kernel_size`` :class:`MaskedConv2d` and ``num_layers - 1`` type-B
      ``hidden_kernel`` ones, each followed by ReLU (no BatchNorm); reach :math:`c_1 + c(L-1)`, with the blind
      spot of the PixelCNN;

    and a head ReLU, 1x1 conv, ReLU, 1x1 conv to :math:`K` logits per position. ``num_classes = C > 0`` adds the
    class bias :math:`V h_y` (zero at initialisation) to every layer's pre-activation, as in the binary models;
    labels are then passed as ``context=``. ``CategoricalPixelCNN(512)`` has 576,704 parameters (+ 2 x 128 x
    ``C`` per layer with labels).

    Shapes: codes ``[B, H, W]`` (integers) -> logits ``[B, K, H, W]`` (:meth:`forward`), ``[B, H, W]``
    (:meth:`log_prob_per_dimension`), ``[B]`` (:meth:`log_prob`, nats, the loss of the ``nll`` objective).
    """

    def __init__(
        self,
        num_codes: int,
        image_size: int | Sequence[int] = 7,
        *,
        channels: int = 64,
        num_layers: int = 6,
        kernel_size: int = 5,
        hidden_kernel: int = 3,
        embedding_dim: int = 32,
        gated: bool = True,
        num_classes: int = 0,
    ) -> None:
        super().__init__()
        name = type(self).__name__
        _check_int(num_codes, "num_codes (the codebook size K; a single code carries no information)", name, 2)
        _check_int(embedding_dim, "embedding_dim", name, 1)
        _check_int(channels, "channels", name, 1)
        _check_int(num_layers, "num_layers", name, 1)
        _check_kernel(kernel_size, "kernel_size (first, type-A layer)", name, minimum=3)
        _check_kernel(hidden_kernel, "hidden_kernel", name)
        _check_int(num_classes, "num_classes (0 for an unconditional model)", name, 0)
        if not isinstance(gated, bool):
            raise ModelConfigError(f"{name}: gated must be True (gated stacks, no blind spot) or False (masked "
                                   f"convolutions), got {gated!r}")
        try:
            self.image_size = _image_shape(image_size)
        except ValueError as error:
            raise ModelConfigError(f"{name}: {error} (the code grid that sample() draws)") from None
        self.num_codes, self.embedding_dim, self.num_classes = num_codes, embedding_dim, num_classes
        self.channels, self.num_layers, self.gated = channels, num_layers, gated
        self.kernel_size, self.hidden_kernel = kernel_size, hidden_kernel
        # E: code k -> e = E_k in R^d
        self.embedding = nn.Embedding(num_codes, embedding_dim)
        if gated:
            self.layers = nn.ModuleList(
                [GatedLayer(embedding_dim, channels, kernel_size, first=True, num_classes=num_classes)]
                + [GatedLayer(channels, channels, hidden_kernel, first=False, num_classes=num_classes)
                   for _ in range(num_layers - 1)]
            )
        else:
            # one channel group: the [1, 1, k, k] mask is shared by all d embedding channels
            self.layers = nn.ModuleList(
                [MaskedConv2d(embedding_dim, channels, kernel_size, "A")]
                + [MaskedConv2d(channels, channels, hidden_kernel, "B") for _ in range(num_layers - 1)]
            )
            self.V = nn.ParameterList(
                nn.Parameter(torch.zeros(channels, num_classes)) for _ in range(num_layers if num_classes else 0)
            )
        self.head = nn.Sequential(
            nn.ReLU(), nn.Conv2d(channels, channels, 1), nn.ReLU(), nn.Conv2d(channels, num_codes, 1)
        )
        self.to(memory_format=torch.channels_last)  # as the binary models (see _channels_last)

    @property
    def receptive_field_reach(self) -> int:
        """How many rows above the current one can influence its logits (:math:`R` in the module docstring)."""
        reach = self.kernel_size // 2 + (self.num_layers - 1) * (self.hidden_kernel // 2)
        return reach + 1 if self.gated else reach

    # -- inputs --------------------------------------------------------------------------------------------
    def _check_codes(self, codes: Any, name: str = "codes") -> Tensor:
        """``codes`` as a LongTensor ``[B, H, W]`` of values in ``0..K-1``, or a ``ValueError`` saying how to fix it."""
        model = type(self).__name__
        if not isinstance(codes, Tensor):
            raise ValueError(f"{model}: {name} must be a tensor of code indices [B, H, W], got {type(codes).__name__}")
        if codes.is_floating_point() or codes.is_complex() or codes.dtype == torch.bool:
            raise ValueError(
                f"{model}: {name} must be an integer tensor of code indices (torch.long), got {codes.dtype}; "
                f"convert with codes.long() (the indices a VQ-VAE's quantiser returns, not the code vectors)"
            )
        if codes.dim() != 3 or codes.shape[1] < 1 or codes.shape[2] < 1:
            raise ValueError(
                f"{model}: {name} must be a grid of code indices of shape [B, H, W], got {list(codes.shape)}; "
                f"use codes.squeeze(1) for [B, 1, H, W] and codes.view(-1, H, W) for flat [B, H*W]"
            )
        if codes.numel() and (int(codes.min()) < 0 or int(codes.max()) >= self.num_codes):
            raise ValueError(
                f"{model}: {name} must lie in 0..{self.num_codes - 1} (num_codes={self.num_codes}), got values in "
                f"{int(codes.min())}..{int(codes.max())}; build the model with num_codes = the codebook size"
            )
        return codes.long()

    def _one_hot(self, context: Any, batch: int) -> Tensor | None:
        return _labels_one_hot(type(self).__name__, self.num_classes, context, batch, self.embedding.weight)

    # -- the density ---------------------------------------------------------------------------------------
    def _logits(self, codes: Tensor, one_hot: Tensor | None) -> Tensor:
        # e_i = E_{z_i}: [B, H, W, d] viewed as [B, d, H, W] (channels-last in memory)
        features = self.embedding(codes).permute(0, 3, 1, 2)
        if self.gated:
            features = _gated_stacks(self.layers, features, one_hot)[2]
        else:
            for layer, conv in enumerate(self.layers):
                pre_activation = conv(features)
                if one_hot is not None:
                    # conv(a) + V h_y, broadcast over positions
                    pre_activation = pre_activation + _class_bias(self.V[layer], one_hot)
                features = F.relu(pre_activation)
        return self.head(features)

    def forward(self, codes: Tensor, *, context: Tensor | int | None = None) -> Tensor:
        """Logits :math:`\\ell` ``[B, K, H, W]`` of :math:`p(z_i = k\\mid z_{<i}, y)`; ``codes`` ``[B, H, W]``;
        ``context`` the labels :math:`y` ``[B]`` (class-conditional models only)."""
        codes = self._check_codes(codes)
        return self._logits(codes, self._one_hot(context, codes.shape[0]))

    def log_prob_per_dimension(self, codes: Tensor, *, context: Tensor | int | None = None) -> Tensor:
        """:math:`\\log p(z_i\\mid z_{<i}, y) = \\ell_{i z_i} - \\operatorname{logsumexp}_k \\ell_{ik}` in nats,
        ``[B, H, W]`` (the shape of ``codes``); sums to :meth:`log_prob`."""
        codes = self._check_codes(codes)
        logits = self._logits(codes, self._one_hot(context, codes.shape[0]))
        # log softmax(l_i)[z_i] = -CE(l_i, z_i)
        return -F.cross_entropy(logits, codes, reduction="none")

    def log_prob(self, codes: Tensor, *, context: Tensor | int | None = None) -> Tensor:
        """:math:`\\log p(z\\mid y) = \\sum_i \\log p(z_i\\mid z_{<i}, y)` in nats per grid, ``[B]``."""
        return self.log_prob_per_dimension(codes, context=context).sum(dim=(1, 2))

    # -- sampling ------------------------------------------------------------------------------------------
    def sample(
        self,
        n: int,
        *,
        generator: torch.Generator | None = None,
        context: Tensor | int | None = None,
        image_size: int | tuple[int, int] | None = None,
    ) -> Tensor:
        """``n`` code grids ``[n, H, W]`` (``torch.long``) drawn position by position in raster order.

        ``generator`` makes the draw reproducible (one uniform per position, drawn up front, turned into a code
        by the inverse CDF: module docstring). ``context``: labels ``[n]`` or one ``int`` (class-conditional
        models only). ``image_size``: ``int`` or ``(H, W)``, default the model's. Runs in evaluation mode and
        restores every submodule's mode afterwards."""
        _check_sample_count(type(self).__name__, n)
        height, width = _image_shape(self.image_size if image_size is None else image_size)
        canvas = torch.zeros(n, height, width, dtype=torch.long, device=self.embedding.weight.device)
        return self._fill(canvas, 0, context, generator)

    def complete(
        self,
        codes: Tensor,
        known_rows: int,
        *,
        generator: torch.Generator | None = None,
        context: Tensor | int | None = None,
    ) -> Tensor:
        """Keep the first ``known_rows`` rows of ``codes`` ``[B, H, W]`` and sample the rest in raster order.

        Returns a new LongTensor ``[B, H, W]``; ``complete(codes, 0)`` equals ``sample(B)`` for the same
        generator."""
        codes = self._check_codes(codes)
        height = codes.shape[1]
        _check_known_rows(type(self).__name__, known_rows, height, "grid")
        canvas = codes.detach().to(device=self.embedding.weight.device, copy=True)
        canvas[:, known_rows:] = 0
        return self._fill(canvas, known_rows, context, generator)

    @torch.no_grad()
    def _fill(self, canvas: Tensor, start_row: int, context: Any, generator: torch.Generator | None) -> Tensor:
        batch, height, width = canvas.shape
        one_hot = self._one_hot(context, batch)
        # u_i ~ U[0, 1) for every position, drawn before any code
        noise = _uniform_noise((batch, height, width), generator, canvas.device, torch.float64)
        with eval_mode(self):
            for r in range(start_row, height):
                for s in range(width):
                    # row r's logits read rows <= r only: the rows below are left out
                    logits = self._logits(canvas[:, : r + 1], one_hot)[:, :, r, s]
                    # F_ik = sum_{j <= k} p(z_i = j | z_<i)
                    cdf = torch.softmax(logits.double(), dim=1).cumsum(dim=1)
                    # z_i = #{k : F_ik <= u_i}, so P(z_i = k) = F_ik - F_i,k-1 (clamped: F_i,K-1 may round below u_i)
                    code = torch.searchsorted(cdf, noise[:, r, s, None].contiguous(), right=True)[:, 0]
                    canvas[:, r, s] = code.clamp_(max=self.num_codes - 1)
        return canvas


# ----------------------------------------------------------------------------------------------------------
# Receptive fields
# ----------------------------------------------------------------------------------------------------------
@torch.no_grad()
def _make_weights_positive_(model: nn.Module, generator: torch.Generator) -> None:
    """Every weight and bias positive (weights ~ U(0.5, 1.5) / fan-in), BatchNorm the identity map."""
    for module in model.modules():
        if isinstance(module, nn.modules.batchnorm._BatchNorm):
            module.reset_running_stats()  # mean 0, variance 1
            if module.affine:
                module.weight.fill_(1.0)
                module.bias.fill_(0.0)
            continue
        for parameter in module.parameters(recurse=False):
            if parameter.dim() >= 2:
                fan_in = max(parameter[0].numel(), 1)
                values = torch.rand(parameter.shape, generator=generator, dtype=parameter.dtype)
                parameter.copy_((0.5 + values) / fan_in)
            else:
                parameter.fill_(0.01)


def receptive_field(
    model: RasterScanModel,
    position: tuple[int, int],
    image_size: int | tuple[int, int] | None = None,
    context: int | None = None,
) -> Tensor:
    """Which input pixels can influence the logit at ``position = (row, column)``: a bool map ``[H, W]``.

    The map is :math:`|\\partial \\ell_{rs} / \\partial x| > 0`, computed on a float64 copy of ``model`` in
    evaluation mode whose weights and biases are all made positive (BatchNorm set to the identity) and on an
    input in (0.25, 0.75). Then every pre-activation is positive, ReLU passes every gradient, the gates'
    derivatives :math:`\\operatorname{sech}^2(a_f)\\sigma(a_g)` and :math:`\\tanh(a_f)\\sigma'(a_g)` are
    positive, and the gradient is a sum over connecting paths of products of positive numbers: it is non-zero
    exactly where the *architecture* connects the pixel, never hidden by a ReLU that happens to be off or by
    cancelling terms. (With the trained weights a zero gradient could mean either.) Masked weights stay
    exactly zero, because the mask multiplies them in the forward pass. Valid for networks of convolutions,
    positive-slope activations and gates, as both models here; ``model`` itself is not changed.

    ``context``: the class for a conditional model (default 0; the class bias does not change which pixels are read).
    """
    height, width = _image_shape(model.image_size if image_size is None else image_size)
    if (
        not isinstance(position, Sequence)
        or len(position) != 2
        or not all(_is_int(index) for index in position)
        or not (0 <= position[0] < height and 0 <= position[1] < width)
    ):
        raise ValueError(f"position must be (row, column) inside the {height}x{width} image, got {position!r}")
    generator = torch.Generator().manual_seed(0)
    probe = copy.deepcopy(model).to(torch.float64).eval()
    _make_weights_positive_(probe, generator)
    reference = probe._reference_parameter()
    x = 0.25 + 0.5 * torch.rand(1, 1, height, width, generator=generator, dtype=torch.float64)
    x = x.to(reference.device).requires_grad_(True)
    labels = None if model.num_classes == 0 else torch.tensor([0 if context is None else operator.index(context)])
    with torch.enable_grad():
        logits = probe(x, context=labels)
        (gradient,) = torch.autograd.grad(logits[0, 0, position[0], position[1]], x)
    return gradient[0, 0] != 0
