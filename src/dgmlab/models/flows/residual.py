r"""Invertible residual networks (Behrmann et al., ICML 2019) and Residual Flows (Chen et al., NeurIPS 2019):
the block :math:`F(x) = x + g(x)` with :math:`\mathrm{Lip}(g) \le c < 1`, its inverse by fixed-point
iteration, and its log-determinant by the exact Jacobian, the truncated power series or the unbiased Russian
roulette estimator.

The inverse (Banach's fixed-point theorem)
------------------------------------------
For fixed :math:`y`, :math:`F(x) = y` if and only if :math:`x = T_y(x) = y - g(x)`, and :math:`T_y` is a
contraction with constant :math:`c`. The iteration

.. math:: x^{(0)} = y, \qquad x^{(k+1)} = y - g\big(x^{(k)}\big)

converges to the unique preimage :math:`x^\star = F^{-1}(y)` with the *a-priori* and *a-posteriori* bounds

.. math:: \lVert x^{(k)} - x^\star\rVert \le \frac{c^k}{1 - c}\lVert x^{(1)} - x^{(0)}\rVert, \qquad
          \lVert x^{(k)} - x^\star\rVert \le \frac{c}{1 - c}\lVert x^{(k)} - x^{(k-1)}\rVert

(:func:`fixed_point_inverse`, :func:`a_priori_bound`, :func:`a_posteriori_bound`).

The log-determinant as a power series
-------------------------------------
Every eigenvalue of :math:`J_g` has modulus at most :math:`\lVert J_g\rVert_2 \le c < 1`, so
:math:`\det(I + J_g) > 0` and

.. math:: \ln\det(I + J_g) = \operatorname{tr}\ln(I + J_g)
          = \sum_{k=1}^{\infty}\frac{(-1)^{k+1}}{k}\operatorname{tr}\big(J_g^k\big).

Hutchinson's estimator :math:`\operatorname{tr}A = \mathbb E[v^\top A v]` for any probe with
:math:`\mathbb E[vv^\top] = I` (standard Gaussian or Rademacher entries) turns each trace into
:math:`v^\top J_g^k v`, where :math:`v^\top J_g^k` takes :math:`k` vector-Jacobian products
:math:`w^\top \leftarrow w^\top J_g` (one backward pass through :math:`g` each), never forming :math:`J_g`.

* ``logdet="series"`` (the i-ResNet's estimator) truncates at :math:`n` terms. Hutchinson's estimator is unbiased
  for the truncated sum, and the truncation biases it by at most
  :math:`d\big(-\ln(1 - c) - \sum_{k=1}^{n} c^k/k\big)` (:func:`truncation_bound`).
* ``logdet="roulette"`` (Residual Flows' estimator) always computes the first :math:`m` terms and then a random
  number :math:`N\sim\operatorname{Geometric}(p)` more, :math:`P(N \ge j) = (1 - p)^j`, and divides term
  :math:`k` by the probability that it is computed:

  .. math:: \widehat{\ln\det} = \sum_{k=1}^{m + N}\frac{(-1)^{k+1}}{k}\,
            \frac{v^\top J_g^k v}{P(m + N \ge k)}, \qquad P(m + N \ge k) = (1 - p)^{\max(0, k - m)},

  whose expectation is the whole series: the estimator is unbiased.
* ``logdet="exact"`` builds :math:`J_g` by :math:`d` backward passes and takes ``slogdet``; for small
  :math:`d` and for measuring the other two.

The gradient (Neumann series)
-----------------------------
Back-propagating through :math:`n` vector-Jacobian products keeps :math:`n` graphs of :math:`g` in memory
(``gradient="backprop"``). Residual Flows differentiate the log-determinant directly instead,

.. math:: \frac{\partial}{\partial\theta}\ln\det(I + J_g)
          = \operatorname{tr}\Big((I + J_g)^{-1}\frac{\partial J_g}{\partial\theta}\Big)
          = \sum_{k=0}^{\infty}(-1)^k\operatorname{tr}\Big(J_g^k\frac{\partial J_g}{\partial\theta}\Big),

estimated with the same probe and the same random truncation as
:math:`\big[\sum_{k=1}^{m+N}\frac{(-1)^{k-1}}{P(m+N\ge k)}v^\top J_g^{k-1}\big]\frac{\partial J_g}{\partial\theta}v`.
``gradient="neumann"`` computes the bracket :math:`w^\top` without a graph and differentiates the one product
:math:`w^\top J_g v`: the memory of one backward pass, whatever the number of terms. The value returned is
the estimate above; only its gradient comes from the surrogate.

Cost: ``series`` and ``roulette`` take :math:`n` (or :math:`m + N`, :math:`m + (1-p)/p` on average)
vector-Jacobian products per block, plus one with ``gradient="neumann"``; ``exact`` takes :math:`d`.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor, nn

from dgmlab.errors import ModelConfigError
from dgmlab.models.flows.base import Compose, Flow, StandardNormal, Transform, register_transform_example
from dgmlab.models.flows.elementwise import Logit
from dgmlab.models.flows.glow import ActNorm
from dgmlab.models.flows.lipschitz import LipschitzNet, lipschitz_cnn, lipschitz_mlp
from dgmlab.models.flows.multiscale import Squeeze
from dgmlab.models.protocols import reject_context
from dgmlab.utils import check_int, check_positive_number

__all__ = ["ESTIMATORS", "GRADIENTS", "PROBES", "InvertibleResNet", "LogdetEstimate", "ResidualBlock",
           "ResidualFlow", "a_posteriori_bound", "a_priori_bound", "fixed_point_inverse", "logdet_exact",
           "logdet_power_series", "truncation_bound"]

ESTIMATORS = ("exact", "series", "roulette")
GRADIENTS = ("backprop", "neumann")
PROBES = ("gaussian", "rademacher")


# ----------------------------------------------------------------------------------------------------------
# Bounds
# ----------------------------------------------------------------------------------------------------------
def a_priori_bound(c: float, k: int, first_step: Tensor | float) -> Tensor | float:
    r"""Banach's a-priori bound on the error after ``k`` iterations: :math:`\frac{c^k}{1-c}\lVert x^{(1)} -
    x^{(0)}\rVert` (``first_step`` is that norm)."""
    return c**k / (1.0 - c) * first_step


def a_posteriori_bound(c: float, last_step: Tensor | float) -> Tensor | float:
    r"""Banach's a-posteriori bound on the error of :math:`x^{(k)}`:
    :math:`\frac{c}{1-c}\lVert x^{(k)} - x^{(k-1)}\rVert` (``last_step`` is that norm)."""
    return c / (1.0 - c) * last_step


def truncation_bound(d: int, c: float, n: int) -> float:
    r"""The bias of the power series truncated at ``n`` terms, at most
    :math:`\sum_{k>n} d\,c^k/k = d\big(-\ln(1-c) - \sum_{k=1}^n c^k/k\big)` for :math:`\lVert J_g\rVert_2\le c`."""
    # |tr(J^k)| <= d ||J^k||_2 <= d c^k
    return d * (-math.log1p(-c) - sum(c**k / k for k in range(1, n + 1)))


# ----------------------------------------------------------------------------------------------------------
# The inverse
# ----------------------------------------------------------------------------------------------------------
def _norms(values: Tensor) -> Tensor:
    return values.reshape(values.shape[0], -1).norm(dim=1)


@torch.no_grad()
def fixed_point_inverse(g: nn.Module, y: Tensor, *, iterations: int = 100, atol: float | None = None,
                        history: bool = False) -> tuple[Tensor, int] | tuple[Tensor, int, list[Tensor]]:
    r"""Solve :math:`x + g(x) = y` by :math:`x^{(k+1)} = y - g(x^{(k)})` from :math:`x^{(0)} = y`.

    Stops after ``iterations`` steps or once every example's step :math:`\lVert x^{(k)} - x^{(k-1)}\rVert` is at
    most ``atol`` (default: 20 units of rounding of ``y``'s dtype times the size of ``y``). Returns the solution
    and the number of steps; with ``history=True`` also the iterates :math:`[x^{(0)}, x^{(1)}, \ldots]`."""
    iterations = check_int(iterations, "iterations", minimum=1, owner="fixed_point_inverse")
    if atol is None:
        atol = 20 * torch.finfo(y.dtype).eps * max(1.0, float(_norms(y).max()) if y.numel() else 1.0)
    x = y.clone()
    iterates = [x]
    steps = 0
    while steps < iterations:
        # x^(k+1) = y - g(x^(k))
        x_next = y - g(x)
        steps += 1
        change = _norms(x_next - x)
        x = x_next
        if history:
            iterates.append(x)
        if bool((change <= atol).all()):
            break
    return (x, steps, iterates) if history else (x, steps)


# ----------------------------------------------------------------------------------------------------------
# The log-determinant
# ----------------------------------------------------------------------------------------------------------
def _dot(a: Tensor, b: Tensor) -> Tensor:
    return (a * b).reshape(a.shape[0], -1).sum(dim=1)


def _probe(like: Tensor, kind: str, generator: torch.Generator | None) -> Tensor:
    if kind == "gaussian":
        return torch.randn(like.shape, generator=generator, device=like.device, dtype=like.dtype)
    # Rademacher: +-1 with probability 1/2 each
    bits = torch.randint(0, 2, like.shape, generator=generator, device=like.device)
    return (2 * bits - 1).to(like.dtype)


def logdet_exact(gx: Tensor, x: Tensor, *, create_graph: bool = False) -> Tensor:
    r""":math:`\ln\det(I + J_g(x))` per example from the full Jacobian (``d`` backward passes); ``gx = g(x)``
    computed with ``x`` requiring grad. Examples must not interact inside ``g`` (no batch statistics)."""
    batch, d = x.shape[0], x[0].numel()
    rows = []
    flat = gx.reshape(batch, d)
    for i in range(d):
        # row i of J_g for every example at once: d(sum_b g_i(x_b))/dx
        (row,) = torch.autograd.grad(flat[:, i].sum(), x, retain_graph=True, create_graph=create_graph)
        rows.append(row.reshape(batch, d))
    jacobian = torch.stack(rows, dim=1)
    eye = torch.eye(d, dtype=x.dtype, device=x.device)
    # det(I + J_g) > 0 when ||J_g||_2 < 1, so the log-abs-determinant is the log-determinant
    return torch.linalg.slogdet(eye + jacobian).logabsdet


class LogdetEstimate:
    """The terms of one estimate, for measurement: ``value`` ``[B]``, the number of vector-Jacobian products
    ``vjps`` and the ``terms`` used."""

    __slots__ = ("terms", "value", "vjps")

    def __init__(self, value: Tensor, terms: int, vjps: int) -> None:
        self.value, self.terms, self.vjps = value, terms, vjps


def _roulette_terms(exact_terms: int, p: float, generator: torch.Generator | None, device: torch.device) -> int:
    # N ~ Geometric(p) on {0, 1, ...}: the number of failures before the first success
    uniform = torch.rand((), generator=generator, device=device).item()
    extra = int(math.floor(math.log1p(-uniform) / math.log1p(-p))) if p < 1 else 0
    return exact_terms + extra


def logdet_power_series(gx: Tensor, x: Tensor, *, terms: int, probe: str = "gaussian",
                        generator: torch.Generator | None = None, roulette_p: float | None = None,
                        gradient: str = "backprop", create_graph: bool = False) -> LogdetEstimate:
    r"""Hutchinson's estimate of :math:`\ln\det(I + J_g)` per example (module docstring), ``gx = g(x)``.

    ``roulette_p=None``: the series truncated at ``terms`` terms (biased). Otherwise the Russian roulette
    estimator that computes ``terms`` terms always and :math:`N\sim\operatorname{Geometric}(p)` more, reweighted
    (unbiased). ``create_graph``: make the estimate differentiable, by back-propagating through every product
    (``gradient="backprop"``) or through the one Neumann-series surrogate (``gradient="neumann"``)."""
    v = _probe(x, probe, generator)
    n = terms if roulette_p is None else _roulette_terms(terms, roulette_p, generator, x.device)

    def weight(k: int) -> float:  # 1 / P(term k is computed)
        return 1.0 if roulette_p is None or k <= terms else (1.0 - roulette_p) ** (-(k - terms))

    neumann = create_graph and gradient == "neumann"
    graph_through = create_graph and not neumann
    w = v
    total = x.new_zeros(x.shape[0])
    bracket = torch.zeros_like(v) if neumann else None
    vjps = 0
    for k in range(1, n + 1):
        if neumann:
            # the Neumann bracket: sum_k (-1)^(k-1) / P(N >= k) v^T J^(k-1)
            bracket = bracket + ((-1) ** (k - 1) * weight(k)) * w.detach()
        # w^T <- w^T J_g: one vector-Jacobian product
        (w,) = torch.autograd.grad(gx, x, w, retain_graph=True, create_graph=graph_through)
        vjps += 1
        # (-1)^(k+1) / k * v^T J_g^k v, divided by the probability of computing term k
        total = total + ((-1) ** (k + 1) * weight(k) / k) * _dot(w, v)
    if neumann:
        # d/dtheta [bracket^T J_g v]: the Neumann-series gradient, one differentiable product
        (surrogate,) = torch.autograd.grad(gx, x, bracket, retain_graph=True, create_graph=True)
        vjps += 1
        estimate = _dot(surrogate, v)
        total = total.detach() + estimate - estimate.detach()
    elif not create_graph:
        total = total.detach()
    return LogdetEstimate(total, n, vjps)


# ----------------------------------------------------------------------------------------------------------
# The block
# ----------------------------------------------------------------------------------------------------------
class ResidualBlock(Transform):
    r"""The invertible residual block :math:`y = F(x) = x + g(x)`, :math:`\mathrm{Lip}(g) < 1` (module docstring).

    ``g``: a :class:`~dgmlab.models.flows.lipschitz.LipschitzNet` (or any module mapping ``[B, ...]`` to the same
    shape with examples independent; its ``lipschitz_bound()`` is used for the inverse's error bound).
    ``logdet``: ``"exact"``, ``"series"`` or ``"roulette"``; ``terms``: the series' length, or the roulette's
    always-computed terms; ``probe``: ``"gaussian"`` or ``"rademacher"``; ``gradient``: ``"backprop"`` or
    ``"neumann"``. The inverse iterates at most ``inverse_iterations`` times (:func:`fixed_point_inverse`) and
    returns minus the forward log-determinant at the solution."""

    def __init__(self, g: nn.Module, *, logdet: str = "series", terms: int = 5, probe: str = "gaussian",
                 gradient: str = "backprop", roulette_p: float = 0.5, inverse_iterations: int = 100) -> None:
        super().__init__()
        self.g = g
        self.set_estimator(logdet, terms=terms, probe=probe, gradient=gradient, roulette_p=roulette_p)
        self.inverse_iterations = check_int(inverse_iterations, "inverse_iterations", minimum=1,
                                            owner="ResidualBlock", error=ModelConfigError)
        self.generator: torch.Generator | None = None  # probes and roulette draws; None: torch's global RNG

    def set_estimator(self, logdet: str | None = None, *, terms: int | None = None, probe: str | None = None,
                      gradient: str | None = None, roulette_p: float | None = None) -> None:
        """Change the log-determinant estimator (arguments as the constructor's; ``None`` keeps a setting)."""
        logdet = getattr(self, "logdet", None) if logdet is None else logdet
        if logdet not in ESTIMATORS:
            raise ModelConfigError(f"ResidualBlock: logdet must be one of {', '.join(ESTIMATORS)}, got {logdet!r}")
        probe = getattr(self, "probe", "gaussian") if probe is None else probe
        if probe not in PROBES:
            raise ModelConfigError(f"ResidualBlock: probe must be one of {', '.join(PROBES)}, got {probe!r}")
        gradient = getattr(self, "gradient", "backprop") if gradient is None else gradient
        if gradient not in GRADIENTS:
            raise ModelConfigError(f"ResidualBlock: gradient must be one of {', '.join(GRADIENTS)}, got "
                                   f"{gradient!r}")
        if gradient == "neumann" and logdet == "exact":
            gradient = "backprop"  # the exact log-determinant is differentiated directly
        terms = getattr(self, "terms", 5) if terms is None else terms
        terms = check_int(terms, "terms", minimum=0 if logdet == "roulette" else 1, owner="ResidualBlock",
                          error=ModelConfigError)
        roulette_p = getattr(self, "roulette_p", 0.5) if roulette_p is None else roulette_p
        roulette_p = check_positive_number(roulette_p, "roulette_p", owner="ResidualBlock", error=ModelConfigError)
        if roulette_p > 1:
            raise ModelConfigError(f"ResidualBlock: roulette_p is a probability in (0, 1], got {roulette_p}")
        self.logdet, self.terms, self.probe, self.gradient, self.roulette_p = logdet, terms, probe, gradient, \
            roulette_p

    def lipschitz_bound(self) -> float | None:
        """The bound on :math:`\\mathrm{Lip}(g)` that ``g`` guarantees, or ``None`` if it states none."""
        bound = getattr(self.g, "lipschitz_bound", None)
        return float(bound()) if callable(bound) else None

    def _logdet(self, gx: Tensor, x: Tensor, differentiable: bool) -> Tensor:
        if self.logdet == "exact":
            return logdet_exact(gx, x, create_graph=differentiable)
        p = self.roulette_p if self.logdet == "roulette" else None
        return logdet_power_series(gx, x, terms=self.terms, probe=self.probe, generator=self.generator,
                                   roulette_p=p, gradient=self.gradient, create_graph=differentiable).value

    def forward(self, x: Tensor, *, context: Any = None) -> tuple[Tensor, Tensor]:
        reject_context(self, context)
        differentiable = torch.is_grad_enabled()
        with torch.enable_grad():
            inner = x if x.requires_grad and differentiable else x.detach().requires_grad_(True)
            gx = self.g(inner)
            logdet = self._logdet(gx, inner, differentiable)
        # y = x + g(x)
        y = x + gx if differentiable else (x + gx).detach()
        return y, logdet if differentiable else logdet.detach()

    def inverse(self, y: Tensor, *, context: Any = None) -> tuple[Tensor, Tensor]:
        reject_context(self, context)
        was_training = self.g.training
        self.g.eval()  # no power-iteration updates inside the fixed-point loop
        try:
            x, _ = fixed_point_inverse(self.g, y.detach(), iterations=self.inverse_iterations)
            with torch.no_grad():
                _, logdet = self.forward(x)
        finally:
            self.g.train(was_training)
        return x, -logdet


# ----------------------------------------------------------------------------------------------------------
# Whole flows
# ----------------------------------------------------------------------------------------------------------
class InvertibleResNet(Flow):
    r"""A flow of invertible residual blocks, each preceded by ActNorm, onto :math:`\mathcal N(0, I)`.

    Vectors (``features = d``, e.g. 2-D densities): ``blocks`` blocks with an MLP branch of ``layers`` layers of
    width ``hidden``. Images (``image_shape = [C, H, W]``, dequantized to [0, 1)): the logit pre-processing, then
    ``levels`` levels of squeeze and ``blocks`` blocks with i-ResNet's convolutional branch (3x3, 1x1, 3x3 of
    ``hidden`` channels); no dimensions are factored out. Every weight is spectrally normalised to
    ``coefficient`` (so :math:`\mathrm{Lip}(g) \le c^{\text{layers}}`). ``logdet``, ``terms``, ``probe``,
    ``gradient``, ``roulette_p``: the blocks' estimator (:class:`ResidualBlock`); the i-ResNet's defaults, a
    series of 5 terms with back-propagation through it. ``InvertibleResNet(features=2, blocks=4, hidden=64)``."""

    def __init__(self, features: int | None = None, image_shape: Sequence[int] | None = None, blocks: int = 4,
                 hidden: int = 64, layers: int = 3, levels: int = 2, coefficient: float = 0.9,
                 activation: str = "elu", power_iterations: int = 1, logdet: str = "series", terms: int = 5,
                 probe: str = "gaussian", gradient: str = "backprop", roulette_p: float = 0.5,
                 actnorm: bool = True, logit_alpha: float = 0.05, inverse_iterations: int = 100) -> None:
        blocks = check_int(blocks, "blocks", minimum=1, owner=type(self).__name__, error=ModelConfigError)
        hidden = check_int(hidden, "hidden", minimum=1, owner=type(self).__name__, error=ModelConfigError)
        estimator = {"logdet": logdet, "terms": terms, "probe": probe, "gradient": gradient,
                     "roulette_p": roulette_p, "inverse_iterations": inverse_iterations}
        transforms: list[Transform] = []
        if image_shape is None:
            if features is None:
                raise ModelConfigError(f"{type(self).__name__}: give features = d for vectors or image_shape = "
                                       f"[C, H, W] for images")
            d = check_int(features, "features", minimum=1, owner=type(self).__name__, error=ModelConfigError)
            for _ in range(blocks):
                if actnorm:
                    transforms.append(ActNorm(d))
                g = lipschitz_mlp(d, hidden, layers=layers, coefficient=coefficient, activation=activation,
                                  power_iterations=power_iterations)
                transforms.append(ResidualBlock(g, **estimator))
            total, self_shape = d, (d,)
        else:
            if not isinstance(image_shape, Sequence) or len(image_shape) != 3:
                raise ModelConfigError(f"{type(self).__name__}: image_shape must be [C, H, W], got {image_shape!r}; "
                                       f"train it on images: [data] shape = \"image\"")
            c, h, w = (check_int(v, "image_shape entries", minimum=1, owner=type(self).__name__,
                                 error=ModelConfigError) for v in image_shape)
            total = c * h * w
            if features is not None and int(features) != total:
                raise ModelConfigError(f"{type(self).__name__}: features = {features} does not match image_shape "
                                       f"{list(image_shape)} ({total} values)")
            levels = check_int(levels, "levels", minimum=0, owner=type(self).__name__, error=ModelConfigError)
            transforms.append(Logit(logit_alpha))
            for level in range(max(levels, 1)):
                if levels:
                    if h % 2 or w % 2:
                        raise ModelConfigError(f"{type(self).__name__}: level {level + 1} of {levels} gets {h}x{w} "
                                               f"images, which cannot be squeezed (odd sides); use fewer levels")
                    transforms.append(Squeeze())
                    c, h, w = 4 * c, h // 2, w // 2
                for _ in range(blocks):
                    if actnorm:
                        transforms.append(ActNorm(c))
                    g = lipschitz_cnn(c, hidden, (h, w), coefficient=coefficient, activation=activation,
                                      power_iterations=power_iterations)
                    transforms.append(ResidualBlock(g, **estimator))
            transforms.append(_Flatten((c, h, w)))
            self_shape = tuple(int(v) for v in image_shape)
        super().__init__(StandardNormal((total,)), Compose(*transforms))
        self.example_shape = self_shape
        if image_shape is not None:
            self.image_shape = self_shape

    def residual_blocks(self) -> list[ResidualBlock]:
        """Every :class:`ResidualBlock`, in order."""
        return [m for m in self.modules() if isinstance(m, ResidualBlock)]

    def log_prob_estimator(self) -> str:
        """What ``log_prob`` computes: ``"exact"``, or the estimator's description (e.g. ``"series, 5 terms,
        gaussian probe"``); the run layer reports it beside every number."""
        block = self.residual_blocks()[0]
        if block.logdet == "exact":
            return "exact"
        if block.logdet == "series":
            return f"power series truncated at {block.terms} terms (biased), {block.probe} probe"
        return (f"Russian roulette, {block.terms} terms + Geometric({block.roulette_p:g}) (unbiased), "
                f"{block.probe} probe")

    def exact_dimension(self) -> int:
        """The dimension of each block's Jacobian (the size of one example): the exact log-determinant costs
        this many backward passes per block."""
        return int(math.prod(self.example_shape))

    def set_estimator(self, logdet: str | None = None, **settings: Any) -> None:
        """Change every block's estimator (:meth:`ResidualBlock.set_estimator`)."""
        for block in self.residual_blocks():
            block.set_estimator(logdet, **settings)

    def estimator_settings(self) -> dict[str, Any]:
        """The blocks' current estimator settings, to restore after :meth:`set_estimator`."""
        block = self.residual_blocks()[0]
        return {"logdet": block.logdet, "terms": block.terms, "probe": block.probe, "gradient": block.gradient,
                "roulette_p": block.roulette_p}

    @torch.no_grad()
    def sample(self, n: int, *, generator: torch.Generator | None = None, context: Any = None,
               temperature: float = 1.0) -> Tensor:
        x = super().sample(n, generator=generator, context=context, temperature=temperature)
        return x.clamp(0.0, 1.0) if hasattr(self, "image_shape") else x

    @torch.no_grad()
    def initialize_from_data(self, examples: Tensor, limit: int = 512) -> None:
        """ActNorm's data-dependent start; 8-bit images (the dequantized view stores bytes) are dequantized with a
        fixed seed first."""
        examples = examples[:limit]
        if not examples.is_floating_point():
            from dgmlab.data.views import uniform_dequantize

            examples = uniform_dequantize(examples, torch.Generator(device=examples.device).manual_seed(0))
        super().initialize_from_data(examples, limit=limit)


class _Flatten(Transform):
    """Images ``[B, C, H, W]`` to vectors ``[B, C*H*W]`` and back (a reshape: log-determinant 0), so the base
    space of an image flow is flat, as Glow's."""

    def __init__(self, shape: tuple[int, int, int]) -> None:
        super().__init__()
        self.shape = tuple(shape)

    def forward(self, x: Tensor, *, context: Any = None) -> tuple[Tensor, Tensor]:
        return x.flatten(1), x.new_zeros(x.shape[0])

    def inverse(self, y: Tensor, *, context: Any = None) -> tuple[Tensor, Tensor]:
        return y.reshape(len(y), *self.shape), y.new_zeros(y.shape[0])


class ResidualFlow(InvertibleResNet):
    """:class:`InvertibleResNet` with Residual Flows' choices as defaults: the unbiased Russian roulette estimator
    (2 terms always, then Geometric(0.5)), the Neumann-series gradient, LipSwish activations, c = 0.98."""

    def __init__(self, features: int | None = None, image_shape: Sequence[int] | None = None, blocks: int = 4,
                 hidden: int = 64, layers: int = 3, levels: int = 2, coefficient: float = 0.98,
                 activation: str = "lipswish", power_iterations: int = 1, logdet: str = "roulette", terms: int = 2,
                 probe: str = "gaussian", gradient: str = "neumann", roulette_p: float = 0.5,
                 actnorm: bool = True, logit_alpha: float = 0.05, inverse_iterations: int = 100) -> None:
        super().__init__(features=features, image_shape=image_shape, blocks=blocks, hidden=hidden, layers=layers,
                         levels=levels, coefficient=coefficient, activation=activation,
                         power_iterations=power_iterations, logdet=logdet, terms=terms, probe=probe,
                         gradient=gradient, roulette_p=roulette_p, actnorm=actnorm, logit_alpha=logit_alpha,
                         inverse_iterations=inverse_iterations)


# ----------------------------------------------------------------------------------------------------------
# Examples for the shared transform tests (exact log-determinant; the estimators have their own tests)
# ----------------------------------------------------------------------------------------------------------
def _dense_block() -> ResidualBlock:
    g = lipschitz_mlp(3, 8, layers=2, coefficient=0.7, activation="elu")
    _warm(g, torch.randn(16, 3))
    return ResidualBlock(g, logdet="exact", inverse_iterations=500)


def _conv_block() -> ResidualBlock:
    g = lipschitz_cnn(2, 3, (4, 4), coefficient=0.7, activation="lipswish")
    _warm(g, torch.randn(4, 2, 4, 4))
    return ResidualBlock(g, logdet="exact", inverse_iterations=500)


@torch.no_grad()
def _warm(g: LipschitzNet, x: Tensor, steps: int = 50) -> None:
    """Converge the power iteration (training-mode calls), then freeze the weights' normalisation (eval mode)."""
    g.train()
    for _ in range(steps):
        g(x)
    g.eval()


register_transform_example("residual_block_mlp", _dense_block, (3,))
register_transform_example("residual_block_conv", _conv_block, (2, 4, 4))
