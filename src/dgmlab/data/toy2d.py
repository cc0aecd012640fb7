r"""The 2-D toy densities of FFJORD (Grathwohl et al. 2019) and Residual Flows (Chen et al. 2019): samplers and
the exact log-density of each data distribution itself.

Each distribution :math:`p` is an object with ``sample(n, *, generator) -> [n, 2]`` (float32, drawn from the
given ``torch.Generator`` only; the global random state is never touched) and ``log_prob(x) -> [...]`` (nats,
computed in float64). The scales are FFJORD's, so the data lie mostly inside :math:`[-4, 4]^2`. Below
:math:`\mathcal N(x; m, \sigma^2)` is the isotropic 2-D Gaussian density
:math:`\frac{1}{2\pi\sigma^2}\exp(-\lVert x - m\rVert^2 / 2\sigma^2)` and :math:`u(\theta) = (\cos\theta, \sin\theta)`.

Checkerboard
    Uniform on the 8 squares :math:`[2i, 2i + 2)\times[2j, 2j + 2)`, :math:`i, j \in \{-2, \ldots, 1\}`,
    :math:`i + j` even, of :math:`[-4, 4)^2`: :math:`p(x) = 1/32` there and 0 elsewhere, so
    :math:`\mathbb E_p[\log p] = -\log 32`.
Eight Gaussians
    :math:`p(x) = \frac18\sum_{k=0}^{7}\mathcal N(x; \rho\,u(k\pi/4), \sigma^2)` with :math:`\rho = 2\sqrt2`,
    :math:`\sigma = 1/(2\sqrt2)` (FFJORD divides its radius 4 and standard deviation 0.5 by 1.414, not
    :math:`\sqrt2`).
Two moons
    scikit-learn's moons scaled by 2 and shifted by :math:`(-1, -0.2)`, with the angle uniform instead of
    evenly spaced: two half circles of radius :math:`R = 2`, the upper one about :math:`c_1 = (-1, -0.2)` for
    :math:`\theta\in[0, \pi]`, the lower one about :math:`c_2 = (1, 0.8)` for :math:`\theta\in[\pi, 2\pi]`,
    each with probability 1/2, plus isotropic Gaussian noise :math:`\sigma = 0.2`:

    .. math:: p(x) = \frac12\sum_{k=1}^{2}\frac1\pi\int_{a_k}^{a_k + \pi}
              \mathcal N\big(x; c_k + R\,u(\theta), \sigma^2\big)\,d\theta .

    The integral has no closed form; :func:`noisy_arc_log_prob` computes it by Gauss-Legendre quadrature in
    :math:`\theta`, as a ``logsumexp`` over the nodes.
Rings
    Four concentric circles about the origin of radii :math:`R_k \in \{3, 2.25, 1.5, 0.75\}`, each with
    probability 1/4, the angle uniform, plus isotropic Gaussian noise :math:`\sigma = 0.08`. Averaging the
    Gaussian over a whole circle has a closed form (:func:`noisy_circle_log_prob`): with :math:`r = \lVert x\rVert`,

    .. math:: \frac{1}{2\pi}\int_0^{2\pi}\mathcal N\big(x; R\,u(\theta), \sigma^2\big)\,d\theta
              = \frac{1}{2\pi\sigma^2}\exp\Big(-\frac{(r - R)^2}{2\sigma^2}\Big)\,
                \tilde I_0\Big(\frac{rR}{\sigma^2}\Big),

    since :math:`\lVert x - R u(\theta)\rVert^2 = r^2 + R^2 - 2rR\cos(\theta - \varphi)` and
    :math:`\frac1{2\pi}\int_0^{2\pi} e^{z\cos\theta}\,d\theta = I_0(z)`, where
    :math:`\tilde I_0(z) = e^{-z}I_0(z)` is the exponentially scaled Bessel function (``torch.special.i0e``).
    The quadrature of the moons is tested against it on whole circles.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import torch
from torch import Tensor

from dgmlab.utils import check_int, check_positive_number

__all__ = ["TOY2D", "Checkerboard", "EightGaussians", "Rings", "Toy2D", "TwoMoons", "noisy_arc_log_prob",
           "noisy_circle_log_prob", "toy2d_dataset"]

F64 = torch.float64
_CHUNK = 8192  # points at a time in the quadrature: [chunk, nodes] float64 values


def _check_generator(generator: object, owner: str) -> torch.Generator:
    if not isinstance(generator, torch.Generator):
        raise TypeError(f"{owner}: generator must be a torch.Generator (e.g. torch.Generator().manual_seed(0)), so "
                        f"that the sample is reproducible and the global random state untouched; got "
                        f"{type(generator).__name__}")
    return generator


def _check_points(x: object, owner: str) -> Tensor:
    if not isinstance(x, Tensor) or x.dim() < 1 or x.shape[-1] != 2 or not x.is_floating_point():
        got = f"shape {list(x.shape)} and dtype {x.dtype}" if isinstance(x, Tensor) else type(x).__name__
        raise ValueError(f"{owner}: x must be a float tensor of points [N, 2] (or [..., 2]), got {got}")
    return x


def _gaussian_log_density(squared_distance: Tensor, std: float) -> Tensor:
    # log N(x; m, sigma^2 I) in 2-D: -log(2 pi sigma^2) - |x - m|^2 / (2 sigma^2)
    return -math.log(2 * math.pi * std**2) - squared_distance / (2 * std**2)


def noisy_circle_log_prob(x: Tensor, radius: float, std: float, centre: Sequence[float] = (0.0, 0.0)) -> Tensor:
    r""":math:`\log\frac{1}{2\pi}\int_0^{2\pi}\mathcal N(x; c + R\,u(\theta), \sigma^2)\,d\theta` in closed form:
    :math:`-\log(2\pi\sigma^2) - (r - R)^2/2\sigma^2 + \log\tilde I_0(rR/\sigma^2)`, :math:`r = \lVert x - c\rVert`
    (module docstring). ``x`` ``[..., 2]`` -> ``[...]`` float64."""
    x = _check_points(x, "noisy_circle_log_prob")
    radius = check_positive_number(radius, "radius", owner="noisy_circle_log_prob")
    std = check_positive_number(std, "std", owner="noisy_circle_log_prob")
    r = torch.linalg.vector_norm(x.to(F64) - torch.tensor(centre, dtype=F64, device=x.device), dim=-1)
    z = r * radius / std**2
    return _gaussian_log_density((r - radius) ** 2, std) + torch.log(torch.special.i0e(z))


def noisy_arc_log_prob(x: Tensor, radius: float, std: float, start: float, stop: float,
                       centre: Sequence[float] = (0.0, 0.0), nodes: int = 256) -> Tensor:
    r""":math:`\log\frac{1}{b - a}\int_a^b\mathcal N(x; c + R\,u(\theta), \sigma^2)\,d\theta`: the density of a point
    drawn uniformly in angle on the arc :math:`\theta\in[a, b]` (``start``, ``stop``) of the circle of radius
    :math:`R` about :math:`c`, plus isotropic Gaussian noise :math:`\sigma`.

    Gauss-Legendre quadrature with ``nodes`` nodes :math:`\theta_q` and weights :math:`w_q` on :math:`[a, b]`:
    :math:`\log\sum_q \frac{w_q}{b - a}\mathcal N(x; c + R\,u(\theta_q), \sigma^2)`, a ``logsumexp`` in float64.
    The integrand is a bump of angular width about :math:`\sigma/R`; the default 256 nodes resolve it for
    :math:`\sigma/R \ge 0.02` over a half circle to about :math:`10^{-10}` (tested against
    :func:`noisy_circle_log_prob`). ``x`` ``[..., 2]`` -> ``[...]`` float64."""
    owner = "noisy_arc_log_prob"
    x = _check_points(x, owner)
    radius = check_positive_number(radius, "radius", owner=owner)
    std = check_positive_number(std, "std", owner=owner)
    nodes = check_int(nodes, "nodes", minimum=2, owner=owner)
    if not (math.isfinite(start) and math.isfinite(stop) and stop > start):
        raise ValueError(f"{owner}: the arc needs finite angles start < stop, got {start!r} and {stop!r}")
    unit_nodes, unit_weights = np.polynomial.legendre.leggauss(nodes)  # on [-1, 1], weights summing to 2
    theta = torch.tensor(start + (stop - start) * (unit_nodes + 1) / 2, dtype=F64, device=x.device)
    # w_q / (b - a) on [a, b]: the Legendre weights / 2, which sum to 1
    log_weights = torch.log(torch.tensor(unit_weights / 2, dtype=F64, device=x.device))
    means = radius * torch.stack([theta.cos(), theta.sin()], -1)  # [nodes, 2], about the centre
    flat = x.to(F64).reshape(-1, 2) - torch.tensor(centre, dtype=F64, device=x.device)
    # |x - m_q|^2 = |x|^2 - 2 x.m_q + |m_q|^2: the node terms by one matrix product, |x|^2 outside the logsumexp
    node_terms = log_weights - (means**2).sum(-1) / (2 * std**2)
    parts = []
    for begin in range(0, len(flat), _CHUNK):
        points = flat[begin:begin + _CHUNK]
        # log sum_q (w_q / (b - a)) N(x; c + R u(theta_q), sigma^2)
        inner = torch.logsumexp(points @ (means.T / std**2) + node_terms, dim=1)
        parts.append(_gaussian_log_density((points**2).sum(-1), std) + inner)
    values = torch.cat(parts) if parts else flat.new_zeros(0)
    return values.reshape(x.shape[:-1])


class Toy2D:
    """A 2-D data distribution with a sampler and its exact log-density (module docstring). Subclasses set
    ``name`` and implement :meth:`_draw` (float64 points from a generator) and :meth:`_log_prob` (float64)."""

    name = ""

    def sample(self, n: int, *, generator: torch.Generator) -> Tensor:
        """``n`` i.i.d. points ``[n, 2]`` float32, drawn from ``generator`` alone."""
        owner = f"{type(self).__name__}.sample"
        n = check_int(n, "n", minimum=1, owner=owner, hint="the number of points")
        return self._draw(n, _check_generator(generator, owner)).to(torch.float32)

    def log_prob(self, x: Tensor) -> Tensor:
        """The exact :math:`\\log p(x)` in nats, ``[..., 2]`` -> ``[...]``, computed in float64 and returned in
        ``x``'s dtype (``-inf`` where the density is zero)."""
        x = _check_points(x, f"{type(self).__name__}.log_prob")
        return self._log_prob(x.to(F64)).to(x.dtype)

    def _draw(self, n: int, generator: torch.Generator) -> Tensor:  # pragma: no cover - abstract
        raise NotImplementedError

    def _log_prob(self, x: Tensor) -> Tensor:  # pragma: no cover - abstract
        raise NotImplementedError

    def __repr__(self) -> str:
        return f"{type(self).__name__}()"


class Checkerboard(Toy2D):
    r"""Uniform on the 8 squares of side 2 of :math:`[-4, 4)^2` whose indices :math:`(\lfloor x_1/2\rfloor,
    \lfloor x_2/2\rfloor)` have an even sum: :math:`p(x) = 1/32` there, 0 elsewhere; drawn as FFJORD does."""

    name = "checkerboard"
    side = 2.0
    density = 1.0 / 32.0  # 8 squares of area 4

    def _draw(self, n: int, generator: torch.Generator) -> Tensor:
        # FFJORD: x1 ~ U[-2, 2); x2 ~ U[0, 1) - 2 * Bernoulli(1/2), then + (floor(x1) mod 2); both times 2
        x1 = torch.rand(n, generator=generator, dtype=F64) * 4 - 2
        x2 = torch.rand(n, generator=generator, dtype=F64) - 2 * torch.randint(0, 2, (n,), generator=generator)
        x2 = x2 + torch.remainder(torch.floor(x1), 2)
        return torch.stack([x1, x2], dim=1) * self.side

    def _log_prob(self, x: Tensor) -> Tensor:
        cells = torch.floor(x / self.side)
        inside = ((x >= -4) & (x < 4)).all(-1)
        # p(x) = 1/32 on the squares with an even index sum, 0 elsewhere
        occupied = inside & (torch.remainder(cells.sum(-1), 2) == 0)
        return torch.where(occupied, torch.full_like(x[..., 0], math.log(self.density)),
                           torch.full_like(x[..., 0], -math.inf))


class EightGaussians(Toy2D):
    r""":math:`\frac18\sum_k\mathcal N(x; \rho\,u(k\pi/4), \sigma^2)` with :math:`\rho = 2\sqrt2` and
    :math:`\sigma = 1/(2\sqrt2)` by default (``radius``, ``std``)."""

    name = "eight_gaussians"

    def __init__(self, radius: float = 2 * math.sqrt(2), std: float = 1 / (2 * math.sqrt(2))) -> None:
        self.radius = check_positive_number(radius, "radius", owner="EightGaussians")
        self.std = check_positive_number(std, "std", owner="EightGaussians")
        angles = torch.arange(8, dtype=F64) * math.pi / 4
        self.centres = self.radius * torch.stack([angles.cos(), angles.sin()], dim=1)  # [8, 2]

    def _draw(self, n: int, generator: torch.Generator) -> Tensor:
        component = torch.randint(0, 8, (n,), generator=generator)
        return self.centres[component] + self.std * torch.randn(n, 2, generator=generator, dtype=F64)

    def _log_prob(self, x: Tensor) -> Tensor:
        squared = ((x[..., None, :] - self.centres.to(x.device)) ** 2).sum(-1)  # [..., 8]
        # log (1/8) sum_k N(x; mu_k, sigma^2)
        return torch.logsumexp(_gaussian_log_density(squared, self.std), dim=-1) - math.log(8)

    def __repr__(self) -> str:
        return f"EightGaussians(radius={self.radius:g}, std={self.std:g})"


class TwoMoons(Toy2D):
    r"""Two noisy half circles of radius 2 (module docstring): about :math:`(-1, -0.2)` for
    :math:`\theta\in[0,\pi]` and about :math:`(1, 0.8)` for :math:`\theta\in[\pi, 2\pi]`, each with probability
    1/2, noise ``noise_std`` (0.2); the log-density by :func:`noisy_arc_log_prob` with ``nodes`` nodes."""

    name = "two_moons"
    radius = 2.0
    arcs = (((-1.0, -0.2), 0.0, math.pi), ((1.0, 0.8), math.pi, 2 * math.pi))  # (centre, start, stop)

    def __init__(self, noise_std: float = 0.2, nodes: int = 256) -> None:
        self.noise_std = check_positive_number(noise_std, "noise_std", owner="TwoMoons")
        self.nodes = check_int(nodes, "nodes", minimum=2, owner="TwoMoons", hint="quadrature nodes per arc")

    def _draw(self, n: int, generator: torch.Generator) -> Tensor:
        moon = torch.randint(0, 2, (n,), generator=generator)
        # theta ~ U[0, pi] on the upper moon, U[pi, 2 pi] on the lower one
        theta = math.pi * (torch.rand(n, generator=generator, dtype=F64) + moon)
        centres = torch.tensor([centre for centre, _, _ in self.arcs], dtype=F64)[moon]
        on_arc = centres + self.radius * torch.stack([theta.cos(), theta.sin()], dim=1)
        return on_arc + self.noise_std * torch.randn(n, 2, generator=generator, dtype=F64)

    def _log_prob(self, x: Tensor) -> Tensor:
        arcs = [noisy_arc_log_prob(x, self.radius, self.noise_std, start, stop, centre, nodes=self.nodes)
                for centre, start, stop in self.arcs]
        # log (1/2)(p_1 + p_2)
        return torch.logsumexp(torch.stack(arcs, dim=-1), dim=-1) - math.log(2)

    def __repr__(self) -> str:
        return f"TwoMoons(noise_std={self.noise_std:g})"


class Rings(Toy2D):
    r"""Four concentric noisy circles of radii 3, 2.25, 1.5 and 0.75 about the origin, each with probability 1/4,
    the angle uniform, noise ``noise_std`` (0.08); the log-density in closed form (:func:`noisy_circle_log_prob`)."""

    name = "rings"
    radii = (3.0, 2.25, 1.5, 0.75)

    def __init__(self, noise_std: float = 0.08) -> None:
        self.noise_std = check_positive_number(noise_std, "noise_std", owner="Rings")

    def _draw(self, n: int, generator: torch.Generator) -> Tensor:
        ring = torch.randint(0, len(self.radii), (n,), generator=generator)
        theta = 2 * math.pi * torch.rand(n, generator=generator, dtype=F64)
        radius = torch.tensor(self.radii, dtype=F64)[ring]
        on_circle = radius[:, None] * torch.stack([theta.cos(), theta.sin()], dim=1)
        return on_circle + self.noise_std * torch.randn(n, 2, generator=generator, dtype=F64)

    def _log_prob(self, x: Tensor) -> Tensor:
        circles = [noisy_circle_log_prob(x, radius, self.noise_std) for radius in self.radii]
        # log (1/4) sum_k p_k(x)
        return torch.logsumexp(torch.stack(circles, dim=-1), dim=-1) - math.log(len(self.radii))

    def __repr__(self) -> str:
        return f"Rings(noise_std={self.noise_std:g})"


TOY2D: dict[str, type[Toy2D]] = {cls.name: cls for cls in (Checkerboard, EightGaussians, TwoMoons, Rings)}


def toy2d_dataset(name: str) -> Toy2D:
    """The toy distribution ``name`` (``"checkerboard"``, ``"eight_gaussians"``, ``"two_moons"``, ``"rings"``)
    with its default scales; a ValueError listing the names for any other."""
    if not isinstance(name, str) or name not in TOY2D:
        raise ValueError(f"unknown 2-D toy dataset {name!r}; choose one of {', '.join(TOY2D)}")
    return TOY2D[name]()
