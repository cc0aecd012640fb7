r"""Glow's per-channel layers (Kingma and Dhariwal, 2018): activation normalisation and the invertible 1x1
convolution.

Both act on images :math:`x` of shape ``[B, c, h, w]`` (or on vectors ``[B, c]``, read as :math:`h = w = 1`)
by one and the same map at every spatial position, so the Jacobian is block diagonal with :math:`h\cdot w`
identical :math:`c\times c` blocks and its log-determinant is :math:`h\cdot w` times that of one block.
Glow's Table 1, in the normalizing direction (data to base):

.. list-table::
   :header-rows: 1

   * - Layer
     - Function
     - Reverse function
     - Log-determinant
   * - Actnorm
     - :math:`\forall i,j:\ y_{i,j} = s \odot (x_{i,j} + b)`
     - :math:`\forall i,j:\ x_{i,j} = y_{i,j} / s - b`
     - :math:`h\cdot w\cdot\operatorname{sum}(\log|s|)`
   * - Invertible 1x1 convolution, :math:`W: [c\times c]`
     - :math:`\forall i,j:\ y_{i,j} = W x_{i,j}`
     - :math:`\forall i,j:\ x_{i,j} = W^{-1} y_{i,j}`
     - :math:`h\cdot w\cdot\log|\det W|`
   * - LU-decomposed 1x1 convolution
     - :math:`W = P L\,(U + \operatorname{diag}(s))`
     - :math:`W^{-1} = (U + \operatorname{diag}(s))^{-1} L^{-1} P^{\top}`
     - :math:`h\cdot w\cdot\operatorname{sum}(\log|s|)`

Actnorm
-------
The paper writes :math:`y = s\odot x + b`; dgmlab uses the equivalent :math:`y = s\odot(x + b)` (bias first,
as in the authors' released code), whose initialisation reads directly off the data: over the first batch,
per channel, :math:`b = -\mu` and :math:`s = 1/(\sigma + \epsilon)`, so that batch comes out with zero mean
and unit variance per channel. The scale is stored as :math:`\log s` (so :math:`s > 0` and
:math:`\log|s| = \log s`). The initialisation runs once, through
:meth:`ActNorm.initialize_from_data` (the :class:`~dgmlab.models.protocols.DataInitialized` protocol); the
``initialized`` buffer records it and travels in the ``state_dict``, so a loaded model is not initialised
again. Before it runs, the layer is the identity.

Invertible 1x1 convolution
--------------------------
:math:`W` starts as a random rotation (the :math:`Q` of the QR decomposition of a Gaussian matrix, its
columns' signs fixed by :math:`\operatorname{diag} R`), so :math:`\log|\det W| = 0` at first. The plain
layer learns :math:`W` and pays :math:`O(c^3)` for ``slogdet`` and the inverse. The LU layer learns
:math:`W = P L (U + \operatorname{diag}(\operatorname{sign}(s)\, e^{\log|s|}))` with the permutation
:math:`P` and the signs :math:`\operatorname{sign}(s)` fixed at their initial values, :math:`L` strictly
lower triangular plus the identity, :math:`U` strictly upper triangular, and :math:`\log|s|` learned; its
log-determinant is :math:`h\cdot w\sum\log|s|` and its inverse two triangular solves.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn

from dgmlab.errors import ModelConfigError
from dgmlab.models.flows.base import Transform, register_transform_example
from dgmlab.utils import check_int, check_positive_number

__all__ = ["ActNorm", "InvertibleConv1x1", "random_rotation"]

#: How many examples ActNorm's data-dependent initialisation uses at most.
ACTNORM_INIT_EXAMPLES = 512


def _check_channels(x: Tensor, channels: int, owner: str) -> int:
    """The number of spatial positions :math:`h\\cdot w` of ``x`` (``[B, c, h, w]`` or ``[B, c]``), after
    checking that it has ``channels`` channels."""
    if x.dim() not in (2, 4) or x.shape[1] != channels:
        raise ValueError(f"{owner} expects images [B, {channels}, H, W] or vectors [B, {channels}], "
                         f"got shape {tuple(x.shape)}")
    return x.shape[2] * x.shape[3] if x.dim() == 4 else 1


def _per_channel(values: Tensor, x: Tensor) -> Tensor:
    """A per-channel vector ``[c]`` shaped to broadcast against ``x`` (``[1, c, 1, 1]`` or ``[1, c]``)."""
    return values.reshape(1, -1, *([1] * (x.dim() - 2)))


def _apply_per_pixel(matrix: Tensor, x: Tensor) -> Tensor:
    """:math:`y_{i,j} = M x_{i,j}` at every position of ``x`` ``[B, c, ...]``, in ``x``'s dtype (bf16 autocast runs
    the product in bf16; the flow's activations stay fp32)."""
    return torch.einsum("ij,bj...->bi...", matrix, x).to(x.dtype)


def random_rotation(channels: int, seed: int | None = None) -> Tensor:
    """A random orthogonal ``[channels, channels]`` matrix: :math:`Q` of the QR decomposition of a standard
    Gaussian matrix (drawn from ``torch.Generator().manual_seed(seed)``, or the global generator when
    ``seed`` is None), with :math:`Q`'s columns multiplied by :math:`\\operatorname{sign}(\\operatorname{diag} R)`
    so it is Haar-distributed."""
    generator = None if seed is None else torch.Generator().manual_seed(seed)
    gaussian = torch.randn(channels, channels, generator=generator, dtype=torch.float64)
    q, r = torch.linalg.qr(gaussian)
    # Q diag(sign(diag R)): the unique QR with a positive diagonal of R, Haar-distributed
    return (q * torch.sign(torch.diagonal(r))).to(torch.get_default_dtype())


class ActNorm(Transform):
    r"""Glow's activation normalisation over ``channels``: :math:`y = s\odot(x + b)` per channel, with
    log-determinant :math:`h\cdot w\sum_c\log s_c`, and a data-dependent initialisation (module docstring).

    Input ``[B, channels, H, W]`` or ``[B, channels]``. ``eps`` guards the initial scale
    :math:`s = 1/(\sigma + \epsilon)` against constant channels."""

    def __init__(self, channels: int, eps: float = 1e-6) -> None:
        super().__init__()
        self.channels = check_int(channels, "channels", minimum=1, owner="ActNorm", error=ModelConfigError)
        self.eps = check_positive_number(eps, "eps", owner="ActNorm", error=ModelConfigError)
        self.bias = nn.Parameter(torch.zeros(self.channels))
        self.log_scale = nn.Parameter(torch.zeros(self.channels))
        self.register_buffer("initialized", torch.tensor(False))

    @torch.no_grad()
    def initialize_from_data(self, examples: Tensor) -> None:
        """Set :math:`b = -\\mu` and :math:`s = 1/(\\sigma + \\epsilon)` from the per-channel mean and standard
        deviation of (at most the first 512 of) ``examples`` ``[N, channels, H, W]`` or ``[N, channels]``;
        does nothing if the layer was initialised already."""
        if bool(self.initialized):
            return
        _check_channels(examples, self.channels, "ActNorm.initialize_from_data")
        batch = examples[:ACTNORM_INIT_EXAMPLES].to(self.bias)
        # every dimension but the channels: the batch and the spatial positions
        over = [d for d in range(batch.dim()) if d != 1]
        # mu_c = E[x_c], sigma_c = sqrt(Var[x_c]) over examples and positions
        mu = batch.mean(dim=over)
        sigma = batch.std(dim=over, unbiased=False)
        # b = -mu: centred channels
        self.bias.copy_(-mu)
        # log s = -log(sigma + eps): unit variance
        self.log_scale.copy_(-torch.log(sigma + self.eps))
        self.initialized.fill_(True)

    def forward(self, x: Tensor, *, context: Any = None) -> tuple[Tensor, Tensor]:
        positions = _check_channels(x, self.channels, "ActNorm")
        # y = s * (x + b)
        y = torch.exp(_per_channel(self.log_scale, x)) * (x + _per_channel(self.bias, x))
        # log|det dy/dx| = h w sum_c log|s_c|
        logdet = positions * self.log_scale.sum()
        return y, logdet.expand(x.shape[0])

    def inverse(self, y: Tensor, *, context: Any = None) -> tuple[Tensor, Tensor]:
        positions = _check_channels(y, self.channels, "ActNorm.inverse")
        # x = y / s - b
        x = y * torch.exp(-_per_channel(self.log_scale, y)) - _per_channel(self.bias, y)
        # log|det dx/dy| = -h w sum_c log|s_c|
        logdet = -positions * self.log_scale.sum()
        return x, logdet.expand(y.shape[0])


class InvertibleConv1x1(Transform):
    r"""Glow's invertible 1x1 convolution over ``channels``: :math:`y_{i,j} = W x_{i,j}` at every position,
    log-determinant :math:`h\cdot w\log|\det W|`; :math:`W` starts as :func:`random_rotation` (``seed``).

    ``lu=False`` learns :math:`W` itself; ``lu=True`` learns it through
    :math:`W = P L (U + \operatorname{diag}(\operatorname{sign}(s)\,e^{\log|s|}))` (module docstring), which
    makes the log-determinant :math:`h\cdot w\sum\log|s|` and the inverse two triangular solves. Input
    ``[B, channels, H, W]`` or ``[B, channels]``."""

    def __init__(self, channels: int, lu: bool = False, seed: int | None = None) -> None:
        super().__init__()
        self.channels = check_int(channels, "channels", minimum=1, owner="InvertibleConv1x1",
                                  error=ModelConfigError)
        if not isinstance(lu, bool):
            raise ModelConfigError(f"InvertibleConv1x1: lu must be True or False, got {lu!r}")
        self.lu = lu
        rotation = random_rotation(self.channels, seed)
        if not lu:
            self.weight = nn.Parameter(rotation)
            return
        # W_0 = P L U: the fixed permutation P, the unit-lower L and the upper U (diagonal s) of the rotation
        permutation, lower, upper = torch.linalg.lu(rotation)
        s = torch.diagonal(upper)
        self.register_buffer("permutation", permutation)
        self.register_buffer("sign_s", torch.sign(s))
        self.lower = nn.Parameter(torch.tril(lower, diagonal=-1))
        self.upper = nn.Parameter(torch.triu(upper, diagonal=1))
        self.log_abs_s = nn.Parameter(torch.log(torch.abs(s)))

    def _lower_unit(self) -> Tensor:
        # L: strictly lower part learned, unit diagonal
        return torch.tril(self.lower, diagonal=-1) + torch.eye(self.channels, dtype=self.lower.dtype,
                                                              device=self.lower.device)

    def _upper_with_s(self) -> Tensor:
        # U + diag(sign(s) exp(log|s|))
        return torch.triu(self.upper, diagonal=1) + torch.diag(self.sign_s * torch.exp(self.log_abs_s))

    def matrix(self) -> Tensor:
        """The current :math:`W` ``[channels, channels]`` (assembled from its LU factors when ``lu``)."""
        if not self.lu:
            return self.weight
        # W = P L (U + diag(s))
        return self.permutation @ self._lower_unit() @ self._upper_with_s()

    def log_abs_det(self) -> Tensor:
        """:math:`\\log|\\det W|` of one position (a scalar)."""
        if self.lu:
            # log|det W| = sum log|s|  (det P = +-1, det L = 1)
            return self.log_abs_s.sum()
        # log|det W| by an LU factorisation
        return torch.linalg.slogdet(self.weight).logabsdet

    def forward(self, x: Tensor, *, context: Any = None) -> tuple[Tensor, Tensor]:
        positions = _check_channels(x, self.channels, "InvertibleConv1x1")
        # y_{i,j} = W x_{i,j}
        y = _apply_per_pixel(self.matrix(), x)
        # log|det dy/dx| = h w log|det W|
        logdet = positions * self.log_abs_det()
        return y, logdet.expand(x.shape[0])

    def inverse(self, y: Tensor, *, context: Any = None) -> tuple[Tensor, Tensor]:
        positions = _check_channels(y, self.channels, "InvertibleConv1x1.inverse")
        if not self.lu:
            # x_{i,j} = W^{-1} y_{i,j}
            x = _apply_per_pixel(torch.linalg.inv(self.weight), y)
        else:
            # the positions as columns: [c, B h w]
            columns = y.movedim(1, -1).reshape(-1, self.channels).T
            # L v = P^T y  (unit lower triangular solve)
            v = torch.linalg.solve_triangular(self._lower_unit(), self.permutation.T @ columns, upper=False,
                                              unitriangular=True)
            # (U + diag(s)) x = v  (upper triangular solve)
            columns = torch.linalg.solve_triangular(self._upper_with_s(), v, upper=True)
            x = columns.T.reshape(*y.movedim(1, -1).shape).movedim(-1, 1)
        # log|det dx/dy| = -h w log|det W|
        logdet = -positions * self.log_abs_det()
        return x, logdet.expand(y.shape[0])


def _actnorm_inputs(n: int, generator: torch.Generator) -> Tensor:
    """Images ``[n, 3, 4, 4]`` with per-channel means and scales far from 0 and 1, so the initialised
    ActNorm is far from the identity."""
    shift = torch.tensor([2.0, -1.0, 0.5]).reshape(1, 3, 1, 1)
    scale = torch.tensor([3.0, 0.5, 1.5]).reshape(1, 3, 1, 1)
    return shift + scale * torch.randn(n, 3, 4, 4, generator=generator)


@torch.no_grad()
def _perturbed_conv1x1(lu: bool) -> InvertibleConv1x1:
    """A 3-channel 1x1 convolution moved off its rotation (so its log-determinant is not 0)."""
    layer = InvertibleConv1x1(3, lu=lu)
    for parameter in layer.parameters():
        parameter.add_(0.3 * torch.randn_like(parameter))
    return layer


register_transform_example("actnorm", lambda: ActNorm(3), (3, 4, 4), sample_input=_actnorm_inputs)
register_transform_example("conv1x1", lambda: _perturbed_conv1x1(lu=False), (3, 4, 4))
register_transform_example("conv1x1_lu", lambda: _perturbed_conv1x1(lu=True), (3, 4, 4))
