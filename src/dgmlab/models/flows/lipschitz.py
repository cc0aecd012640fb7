r"""Lipschitz-constrained layers for invertible residual networks (Behrmann et al., 2019, "Invertible Residual
Networks"; Chen et al., 2019, "Residual Flows for Invertible Generative Modeling").

A residual block :math:`F(x) = x + g(x)` is invertible when its branch is a contraction,
:math:`\operatorname{Lip}(g) < 1`: then :math:`x = y - g(x)` has a unique fixed point (Banach). This module
builds branches :math:`g` whose Lipschitz constant is at most a chosen coefficient :math:`c`; :math:`c < 1` is
what invertibility needs (the layers accept any :math:`c > 0`).

A bound through the layers
--------------------------
Let :math:`g = W_L\circ\phi\circ W_{L-1}\circ\cdots\circ\phi\circ W_1` with affine layers
:math:`W_l x + b_l` and a 1-Lipschitz activation :math:`\phi`. Lipschitz constants multiply under composition,
an affine map's constant is its linear part's operator norm, and :math:`\operatorname{Lip}(\phi)\le 1`, so

.. math::

   \operatorname{Lip}(g) \le \prod_{l=1}^{L} \|W_l\|_2 ,
   \qquad \|W\|_2 = \max_{\|x\|=1}\|W x\| = \sigma_{\max}(W),

the spectral norm, the largest singular value. Rescaling each layer to :math:`\|W_l\|_2\le c` gives
:math:`\operatorname{Lip}(g)\le c^L\le c`.

Power iteration
---------------
:math:`\sigma_{\max}` is estimated by the power iteration on :math:`W^\top W`, with unit vectors :math:`u, v`:

.. math::

   v \leftarrow \frac{W^\top u}{\|W^\top u\|},\qquad
   u \leftarrow \frac{W v}{\|W v\|},\qquad
   \hat\sigma = u^\top W v .

:math:`u` and :math:`v` are kept between training steps (buffers in the ``state_dict``), and since the weights
move little per step, one iteration per step suffices to track :math:`\sigma_{\max}` (Miyato et al., 2018, and
i-ResNet). For unit :math:`u, v`, Cauchy-Schwarz gives :math:`\hat\sigma = u^\top W v \le \|W v\| \le
\sigma_{\max}`: the estimate never exceeds the true value, and after an update :math:`\hat\sigma = \|W v\|`
grows toward it. The weight used is i-ResNet's rescaling

.. math::

   \tilde W = \begin{cases} c\,W/\hat\sigma & \text{if } c/\hat\sigma < 1,\\ W & \text{otherwise,}\end{cases}
   \qquad\text{i.e.}\quad \tilde W = W\cdot\min(1, c/\hat\sigma),

with the gradient flowing through :math:`\hat\sigma = u^\top W v` (:math:`u, v` held fixed). Because
:math:`\hat\sigma\le\sigma_{\max}`, :math:`\|\tilde W\|_2 = c\,\sigma_{\max}/\hat\sigma` can exceed :math:`c`
until the iteration has converged: the bound :math:`c^L` holds up to the iteration's error. New layers run
``INITIAL_POWER_ITERATIONS`` iterations when built (as ``torch.nn.utils.parametrizations.spectral_norm`` does),
so that :math:`\hat\sigma` is sensible from the first step.

Convolutions
------------
A convolution with ``same`` padding on :math:`H\times W` images is a linear map
:math:`\mathbb{R}^{c_{in} H W}\to\mathbb{R}^{c_{out} H W}`, and its adjoint is the transposed convolution with
the same kernel. The same iteration, with :math:`u: [1, c_{out}, H, W]` and :math:`v: [1, c_{in}, H, W]`,

.. math::

   v \leftarrow \frac{\operatorname{conv}^\top(u)}{\|\operatorname{conv}^\top(u)\|},\qquad
   u \leftarrow \frac{\operatorname{conv}(v)}{\|\operatorname{conv}(v)\|},\qquad
   \hat\sigma = \langle u, \operatorname{conv}(v)\rangle,

estimates the norm of the convolution *operator* itself, which is what the Lipschitz bound needs (i-ResNet).
``torch.nn.utils.spectral_norm`` instead takes the norm of the kernel reshaped to a
:math:`c_{out}\times c_{in}k^2` matrix; that is a different number, and it can under- or over-estimate the
operator's norm, so it gives no Lipschitz guarantee by itself. :func:`conv_operator_matrix` builds the dense
operator for small images, for exact values.

LipSwish
--------
Chen et al. (2019) replace ELU by :math:`\phi(x) = x\,\sigma(\beta x)/1.1` with :math:`\beta =
\operatorname{softplus}(b) > 0` learned. With :math:`t = \beta x`,
:math:`\frac{d}{dx}\,x\,\sigma(\beta x) = \sigma(t) + t\,\sigma(t)(1 - \sigma(t))`, a function of :math:`t`
alone whose values lie in about :math:`[-0.0998, 1.0998]` for every :math:`\beta`; dividing by 1.1 makes
:math:`|\phi'| \le 1`, so :math:`\phi` is 1-Lipschitz, and, unlike ELU, its derivative is smooth (which the
log-determinant's gradient needs).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from dgmlab.errors import ModelConfigError
from dgmlab.utils import check_int, check_positive_number, is_int

__all__ = ["LipSwish", "LipschitzNet", "SpectralConv2d", "SpectralLinear", "conv_operator_matrix",
           "lipschitz_cnn", "lipschitz_mlp"]

#: Power iterations a layer runs when it is built, so that a fresh layer's estimate is already sensible.
INITIAL_POWER_ITERATIONS = 15

#: The divisor of LipSwish: above :math:`\sup_t |\sigma(t) + t\sigma(t)(1-\sigma(t))| \approx 1.0998`.
LIPSWISH_DIVISOR = 1.1

#: The activations of :func:`lipschitz_mlp` and :func:`lipschitz_cnn`, each 1-Lipschitz.
ACTIVATIONS = ("lipswish", "elu", "relu", "tanh")

#: Smallest norm divided by: a zero vector stays zero instead of becoming NaN.
_EPS = 1e-12

_COEFFICIENT_HINT = "the bound on each layer's spectral norm; below 1 for an invertible residual block"


def _unit(x: Tensor) -> Tensor:
    """``x`` divided by its Euclidean norm over all entries (a zero ``x`` stays zero)."""
    return x / x.norm().clamp_min(_EPS)


def _rescale(weight: Tensor, sigma: Tensor, coefficient: float) -> Tensor:
    """i-ResNet's :math:`\\tilde W = W \\min(1, c/\\hat\\sigma)`, differentiable through ``sigma`` where the
    factor is below 1."""
    # min(1, c / sigma_hat); sigma_hat kept positive so an all-zero weight stays zero
    factor = torch.clamp(coefficient / sigma.clamp_min(_EPS), max=1.0)
    return weight * factor


def _check_odd_kernel(kernel_size: object, owner: str) -> int:
    size = check_int(kernel_size, "kernel_size", minimum=1, owner=owner, error=ModelConfigError)
    if size % 2 == 0:
        raise ModelConfigError(f"{owner}: kernel_size must be odd (padding kernel_size // 2 keeps the image size "
                               f"only for odd kernels), got {size}")
    return size


def _check_input_size(input_size: object, owner: str) -> tuple[int, int]:
    if is_int(input_size):
        input_size = (input_size, input_size)
    if not (isinstance(input_size, Sequence) and len(input_size) == 2 and not isinstance(input_size, str)
            and all(is_int(side) and side >= 1 for side in input_size)):
        raise ModelConfigError(f"{owner}: input_size must be the image's spatial size (H, W), two positive "
                               f"integers, got {input_size!r}")
    return int(input_size[0]), int(input_size[1])


class SpectralLinear(nn.Module):
    r"""A linear layer :math:`y = \tilde W x + b` whose weight is rescaled to spectral norm at most
    ``coefficient`` (:math:`\tilde W = W\min(1, c/\hat\sigma)`, module docstring).

    ``weight`` ``[out_features, in_features]`` and ``bias`` ``[out_features]`` start as in ``nn.Linear``; the
    buffers ``u`` ``[out_features]`` and ``v`` ``[in_features]`` (unit vectors, in the ``state_dict``) carry the
    power iteration between steps. In training mode each forward first runs ``power_iterations`` updates of
    ``u, v``; in eval mode they stay as they are. ``coefficient < 1`` is what invertibility needs."""

    def __init__(self, in_features: int, out_features: int, coefficient: float = 0.97, power_iterations: int = 1,
                 bias: bool = True) -> None:
        super().__init__()
        owner = "SpectralLinear"
        self.in_features = check_int(in_features, "in_features", minimum=1, owner=owner, error=ModelConfigError)
        self.out_features = check_int(out_features, "out_features", minimum=1, owner=owner,
                                      error=ModelConfigError)
        self.coefficient = check_positive_number(coefficient, "coefficient", owner=owner, error=ModelConfigError,
                                                 hint=_COEFFICIENT_HINT)
        self.power_iterations = check_int(power_iterations, "power_iterations", minimum=1, owner=owner,
                                          error=ModelConfigError)
        if not isinstance(bias, bool):
            raise ModelConfigError(f"{owner}: bias must be True or False, got {bias!r}")
        self.weight = nn.Parameter(torch.empty(self.out_features, self.in_features))
        self.bias = nn.Parameter(torch.empty(self.out_features)) if bias else None
        # nn.Linear's initialisation: Kaiming-uniform weight, bias uniform in +-1/sqrt(fan_in)
        nn.init.kaiming_uniform_(self.weight, a=math.sqrt(5))
        if self.bias is not None:
            bound = 1 / math.sqrt(self.in_features)
            nn.init.uniform_(self.bias, -bound, bound)
        self.register_buffer("u", _unit(torch.randn(self.out_features)))
        self.register_buffer("v", _unit(torch.randn(self.in_features)))
        self.power_iterate(INITIAL_POWER_ITERATIONS)

    @torch.no_grad()
    def power_iterate(self, steps: int = 1) -> None:
        """Run ``steps`` power iterations, updating the buffers ``u`` and ``v`` in place."""
        weight = self.weight.detach()
        for _ in range(steps):
            # v <- W^T u / |W^T u|
            self.v.copy_(_unit(weight.T @ self.u))
            # u <- W v / |W v|
            self.u.copy_(_unit(weight @ self.v))

    def _sigma(self) -> Tensor:
        # sigma_hat = u^T W v, with gradient through W only (u, v copied: later steps update them in place)
        return torch.dot(self.u.clone(), self.weight @ self.v.clone())

    def normalized_weight(self) -> Tensor:
        """:math:`\\tilde W = W\\min(1, c/\\hat\\sigma)` ``[out_features, in_features]`` from the current ``u, v``
        (no update), differentiable in ``weight``."""
        return _rescale(self.weight, self._sigma(), self.coefficient)

    @torch.no_grad()
    def spectral_norm_estimate(self) -> Tensor:
        """:math:`\\hat\\sigma = u^\\top W v` (a scalar, no gradient): the estimate of :math:`\\|W\\|_2` of the raw
        weight, never above the true value."""
        return torch.dot(self.u, self.weight @ self.v)

    def forward(self, x: Tensor) -> Tensor:
        """:math:`\\tilde W x + b` for ``x`` ``[..., in_features]``, after the power iteration in training mode."""
        if x.shape[-1:] != (self.in_features,):
            raise ValueError(f"SpectralLinear expects inputs [..., {self.in_features}], got shape {tuple(x.shape)}")
        if self.training:
            self.power_iterate(self.power_iterations)
        return F.linear(x, self.normalized_weight(), self.bias)

    def extra_repr(self) -> str:
        return (f"in_features={self.in_features}, out_features={self.out_features}, "
                f"coefficient={self.coefficient}, power_iterations={self.power_iterations}, "
                f"bias={self.bias is not None}")


class SpectralConv2d(nn.Module):
    r"""A stride-1 convolution with ``same`` padding (``kernel_size // 2``, odd kernels) whose kernel is rescaled
    so that the convolution *operator* on ``input_size`` images has spectral norm at most ``coefficient``.

    ``weight`` ``[out_channels, in_channels, k, k]`` and ``bias`` start as in ``nn.Conv2d``; the buffers ``u``
    ``[1, out_channels, H, W]`` and ``v`` ``[1, in_channels, H, W]`` carry the power iteration (conv2d and
    conv_transpose2d, module docstring). The operator's norm depends on the image size, so inputs must be
    ``[B, in_channels, H, W]`` with ``(H, W) = input_size``. ``coefficient < 1`` is what invertibility needs."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int, input_size: Sequence[int] | int,
                 coefficient: float = 0.97, power_iterations: int = 1, bias: bool = True) -> None:
        super().__init__()
        owner = "SpectralConv2d"
        self.in_channels = check_int(in_channels, "in_channels", minimum=1, owner=owner, error=ModelConfigError)
        self.out_channels = check_int(out_channels, "out_channels", minimum=1, owner=owner,
                                      error=ModelConfigError)
        self.kernel_size = _check_odd_kernel(kernel_size, owner)
        self.input_size = _check_input_size(input_size, owner)
        self.padding = self.kernel_size // 2
        self.coefficient = check_positive_number(coefficient, "coefficient", owner=owner, error=ModelConfigError,
                                                 hint=_COEFFICIENT_HINT)
        self.power_iterations = check_int(power_iterations, "power_iterations", minimum=1, owner=owner,
                                          error=ModelConfigError)
        if not isinstance(bias, bool):
            raise ModelConfigError(f"{owner}: bias must be True or False, got {bias!r}")
        k = self.kernel_size
        self.weight = nn.Parameter(torch.empty(self.out_channels, self.in_channels, k, k))
        self.bias = nn.Parameter(torch.empty(self.out_channels)) if bias else None
        # nn.Conv2d's initialisation: Kaiming-uniform kernel, bias uniform in +-1/sqrt(fan_in)
        nn.init.kaiming_uniform_(self.weight, a=math.sqrt(5))
        if self.bias is not None:
            bound = 1 / math.sqrt(self.in_channels * k * k)
            nn.init.uniform_(self.bias, -bound, bound)
        height, width = self.input_size
        self.register_buffer("u", _unit(torch.randn(1, self.out_channels, height, width)))
        self.register_buffer("v", _unit(torch.randn(1, self.in_channels, height, width)))
        self.power_iterate(INITIAL_POWER_ITERATIONS)

    @torch.no_grad()
    def power_iterate(self, steps: int = 1) -> None:
        """Run ``steps`` power iterations of the convolution operator, updating ``u`` and ``v`` in place."""
        weight = self.weight.detach()
        for _ in range(steps):
            # v <- conv^T(u) / |conv^T(u)|
            self.v.copy_(_unit(F.conv_transpose2d(self.u, weight, padding=self.padding)))
            # u <- conv(v) / |conv(v)|
            self.u.copy_(_unit(F.conv2d(self.v, weight, padding=self.padding)))

    def _sigma(self) -> Tensor:
        # sigma_hat = <u, conv(v)>, with gradient through the kernel only
        return torch.sum(self.u.clone() * F.conv2d(self.v.clone(), self.weight, padding=self.padding))

    def normalized_weight(self) -> Tensor:
        """:math:`\\tilde W = W\\min(1, c/\\hat\\sigma)` ``[out_channels, in_channels, k, k]`` from the current
        ``u, v`` (no update), differentiable in ``weight``."""
        return _rescale(self.weight, self._sigma(), self.coefficient)

    @torch.no_grad()
    def spectral_norm_estimate(self) -> Tensor:
        """:math:`\\hat\\sigma = \\langle u, \\operatorname{conv}(v)\\rangle` (a scalar, no gradient): the estimate
        of the raw convolution operator's norm on ``input_size`` images, never above the true value."""
        return torch.sum(self.u * F.conv2d(self.v, self.weight, padding=self.padding))

    def forward(self, x: Tensor) -> Tensor:
        """The convolution of ``x`` ``[B, in_channels, H, W]`` with :math:`\\tilde W`, after the power iteration
        in training mode; output ``[B, out_channels, H, W]``."""
        if x.dim() != 4 or x.shape[1] != self.in_channels:
            raise ValueError(f"SpectralConv2d expects images [B, {self.in_channels}, H, W], got shape "
                             f"{tuple(x.shape)}")
        if tuple(x.shape[2:]) != self.input_size:
            raise ValueError(f"SpectralConv2d was built for input_size {self.input_size} (its power iteration "
                             f"estimates the operator's norm on images of that size), got images of size "
                             f"{tuple(x.shape[2:])}")
        if self.training:
            self.power_iterate(self.power_iterations)
        return F.conv2d(x, self.normalized_weight(), self.bias, padding=self.padding)

    def extra_repr(self) -> str:
        return (f"{self.in_channels}, {self.out_channels}, kernel_size={self.kernel_size}, "
                f"input_size={self.input_size}, coefficient={self.coefficient}, "
                f"power_iterations={self.power_iterations}, bias={self.bias is not None}")


def conv_operator_matrix(weight: Tensor, input_size: Sequence[int] | int, padding: int) -> Tensor:
    r"""The dense matrix of the convolution ``x -> conv2d(x, weight, padding=padding)`` (stride 1, no bias) on
    images of ``input_size`` ``(H, W)``: ``[c_out * H' * W', c_in * H * W]``, rows and columns in the order of
    ``x.reshape(B, -1)`` (channel, row, column); :math:`H' = H` for odd kernels and ``padding = k // 2``.

    Column :math:`j` is the convolution of the :math:`j`-th standard basis image, so the matrix costs
    :math:`c_{in} H W` convolutions: for tests and exact norms of small operators."""
    if not isinstance(weight, Tensor) or weight.dim() != 4:
        shape = tuple(weight.shape) if isinstance(weight, Tensor) else type(weight).__name__
        raise ModelConfigError(f"conv_operator_matrix: weight must be a kernel [c_out, c_in, k, k], got {shape}")
    height, width = _check_input_size(input_size, "conv_operator_matrix")
    padding = check_int(padding, "padding", minimum=0, owner="conv_operator_matrix", error=ModelConfigError)
    in_channels = weight.shape[1]
    dimension = in_channels * height * width
    # the standard basis e_j as images [c_in H W, c_in, H, W]
    basis = torch.eye(dimension, dtype=weight.dtype, device=weight.device).reshape(dimension, in_channels,
                                                                                    height, width)
    # column j = conv(e_j)
    return F.conv2d(basis, weight, padding=padding).reshape(dimension, -1).T


class LipSwish(nn.Module):
    r"""LipSwish (Chen et al., 2019): :math:`\phi(x) = x\,\sigma(\beta x)/1.1`, 1-Lipschitz for every
    :math:`\beta > 0` (module docstring), with :math:`\beta = \operatorname{softplus}(b)` learned.

    :math:`b` is stored as :math:`\operatorname{softplus}^{-1}(\beta) = \beta + \log(1 - e^{-\beta})`, so
    :math:`\beta` starts at ``beta``."""

    def __init__(self, beta: float = 1.0) -> None:
        super().__init__()
        beta = check_positive_number(beta, "beta", owner="LipSwish", error=ModelConfigError,
                                     hint="the slope of the sigmoid, softplus of a learned parameter")
        # b = softplus^{-1}(beta) = beta + log(-expm1(-beta)), stable for large beta
        b = torch.tensor(beta, dtype=torch.float64)
        self.b = nn.Parameter((b + torch.log(-torch.expm1(-b))).to(torch.get_default_dtype()))

    @property
    def beta(self) -> Tensor:
        """:math:`\\beta = \\operatorname{softplus}(b)`."""
        return F.softplus(self.b)

    def forward(self, x: Tensor) -> Tensor:
        # phi(x) = x sigmoid(beta x) / 1.1
        return x * torch.sigmoid(self.beta * x) / LIPSWISH_DIVISOR


class LipschitzNet(nn.Sequential):
    """A sequence of spectrally normalised layers and 1-Lipschitz activations (built by :func:`lipschitz_mlp`
    and :func:`lipschitz_cnn`), with the Lipschitz bound its layers give."""

    def spectral_layers(self) -> list[SpectralLinear | SpectralConv2d]:
        """The spectrally normalised layers, in order."""
        return [layer for layer in self if isinstance(layer, (SpectralLinear, SpectralConv2d))]

    @property
    def coefficient(self) -> float:
        """The bound on each layer's spectral norm: the largest of the layers' coefficients (1 without any, the
        activations being 1-Lipschitz)."""
        return max((layer.coefficient for layer in self.spectral_layers()), default=1.0)

    def lipschitz_bound(self) -> float:
        """:math:`\\prod_l c_l` over the spectral layers (:math:`c^L`): a bound on the network's Lipschitz
        constant once the power iteration has converged (its estimate approaches :math:`\\sigma_{\\max}` from
        below, so before that each layer's norm may exceed its :math:`c_l` a little)."""
        return math.prod(layer.coefficient for layer in self.spectral_layers())


def _activation(name: object, owner: str) -> nn.Module:
    if name == "lipswish":
        return LipSwish()
    if name == "elu":
        return nn.ELU()
    if name == "relu":
        return nn.ReLU()
    if name == "tanh":
        return nn.Tanh()
    raise ModelConfigError(f"{owner}: activation must be one of {', '.join(ACTIVATIONS)} (each 1-Lipschitz), "
                           f"got {name!r}")


def lipschitz_mlp(features: int, hidden: int, layers: int = 3, coefficient: float = 0.97,
                  activation: str = "lipswish", power_iterations: int = 1) -> LipschitzNet:
    r"""A residual branch :math:`g: \mathbb{R}^{features}\to\mathbb{R}^{features}` of ``layers``
    :class:`SpectralLinear` layers (``features -> hidden -> ... -> hidden -> features``) with ``activation``
    between them, so :math:`\operatorname{Lip}(g)\le c^{layers}\le c` (``lipschitz_bound()``)."""
    owner = "lipschitz_mlp"
    features = check_int(features, "features", minimum=1, owner=owner, error=ModelConfigError)
    hidden = check_int(hidden, "hidden", minimum=1, owner=owner, error=ModelConfigError)
    layers = check_int(layers, "layers", minimum=2, owner=owner, error=ModelConfigError,
                       hint="the first maps features to hidden, the last hidden back to features")
    _activation(activation, owner)
    widths = [features] + [hidden] * (layers - 1) + [features]
    modules: list[nn.Module] = []
    for index, (width_in, width_out) in enumerate(zip(widths[:-1], widths[1:], strict=True)):
        if index > 0:
            modules.append(_activation(activation, owner))
        modules.append(SpectralLinear(width_in, width_out, coefficient=coefficient,
                                      power_iterations=power_iterations))
    return LipschitzNet(*modules)


def lipschitz_cnn(channels: int, hidden: int, input_size: Sequence[int] | int,
                  kernel_sizes: Sequence[int] = (3, 1, 3), coefficient: float = 0.97, activation: str = "lipswish",
                  power_iterations: int = 1) -> LipschitzNet:
    r"""i-ResNet's convolutional residual branch on ``[B, channels, H, W]`` images of ``input_size``:
    ``act -> conv k1 (channels -> hidden) -> act -> conv k2 (hidden -> hidden) -> act -> conv k3 (hidden ->
    channels)`` for the default ``kernel_sizes=(3, 1, 3)`` (more kernel sizes add hidden convolutions), each a
    :class:`SpectralConv2d`, so :math:`\operatorname{Lip}(g)\le c^{L}` with :math:`L` = ``len(kernel_sizes)``.
    The activation at the input is i-ResNet's (still 1-Lipschitz)."""
    owner = "lipschitz_cnn"
    channels = check_int(channels, "channels", minimum=1, owner=owner, error=ModelConfigError)
    hidden = check_int(hidden, "hidden", minimum=1, owner=owner, error=ModelConfigError)
    input_size = _check_input_size(input_size, owner)
    if not (isinstance(kernel_sizes, Sequence) and not isinstance(kernel_sizes, str) and len(kernel_sizes) >= 2):
        raise ModelConfigError(f"{owner}: kernel_sizes must list at least two odd kernel sizes (the first "
                               f"convolution maps channels to hidden, the last hidden back to channels), e.g. "
                               f"(3, 1, 3); got {kernel_sizes!r}")
    kernels = [_check_odd_kernel(size, owner) for size in kernel_sizes]
    _activation(activation, owner)
    widths = [channels] + [hidden] * (len(kernels) - 1) + [channels]
    modules: list[nn.Module] = []
    for kernel, width_in, width_out in zip(kernels, widths[:-1], widths[1:], strict=True):
        modules.append(_activation(activation, owner))
        modules.append(SpectralConv2d(width_in, width_out, kernel, input_size, coefficient=coefficient,
                                      power_iterations=power_iterations))
    return LipschitzNet(*modules)
