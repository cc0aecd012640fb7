r"""Rezende and Mohamed (2015), "Variational Inference with Normalizing Flows", Figure 3: planar and radial
flows fitted by reverse KL to the four unnormalised 2-D densities of their Table 1.

Targets (Table 1)
-----------------
With :math:`w_1(z) = \sin(2\pi z_1/4)`, :math:`w_2(z) = 3\exp\!\big(-\tfrac12((z_1-1)/0.6)^2\big)`,
:math:`w_3(z) = 3\sigma((z_1-1)/0.3)` and :math:`\sigma` the logistic function,

.. math::
    U_1(z) &= \tfrac12\Big(\frac{\lVert z\rVert - 2}{0.4}\Big)^2
              - \ln\Big(e^{-\frac12(\frac{z_1-2}{0.6})^2} + e^{-\frac12(\frac{z_1+2}{0.6})^2}\Big) \\
    U_2(z) &= \tfrac12\Big(\frac{z_2 - w_1(z)}{0.4}\Big)^2 \\
    U_3(z) &= -\ln\Big(e^{-\frac12(\frac{z_2-w_1(z)}{0.35})^2} + e^{-\frac12(\frac{z_2-w_1(z)+w_2(z)}{0.35})^2}\Big) \\
    U_4(z) &= -\ln\Big(e^{-\frac12(\frac{z_2-w_1(z)}{0.4})^2} + e^{-\frac12(\frac{z_2-w_1(z)+w_3(z)}{0.35})^2}\Big)

and the target is :math:`p(z) = e^{-U(z)}/Z`. Every :math:`-\ln(e^a + e^b)` is computed as
``-logsumexp([a, b])``.

*Normalisability.* :math:`U_2, U_3, U_4` depend on :math:`z_1` only through the bounded :math:`w_i`, so
:math:`\int e^{-U}\,dz_2` does not decay in :math:`z_1` and :math:`Z = \int_{\mathbb R^2} e^{-U} = \infty`:
the paper shows them on the box :math:`[-4, 4]^2`, and without a bound on :math:`z_1` the free energy below has
no minimum (:math:`q` gains entropy by spreading along :math:`z_1` for free). The experiment therefore fits

.. math:: E(z) = U(z) + W(z_1), \qquad W(z_1) = \tfrac12\Big(\frac{\max(0, |z_1| - a)}{s}\Big)^2, \qquad
          p(z) = e^{-E(z)}/Z, \qquad Z = \int e^{-E(z)}\,dz,

with the figure's half-width :math:`a = 4` and a wall width :math:`s = 0.4` (the potentials' own length scale):
:math:`E = U` on the figure's strip :math:`|z_1| \le 4`, where the paper draws it, and :math:`Z` is finite for
all four. :math:`z_2` needs no wall (each :math:`U_i` confines it). For :math:`U_1`, which is normalisable
anyway, the wall changes :math:`\ln Z` by less than :math:`10^{-10}`.

The flow :math:`q_K` (section 4.1)
----------------------------------
:math:`z_0 \sim q_0 = \mathcal N(0, I)` and :math:`z_K = f_K\circ\cdots\circ f_1(z_0)`, with planar
:math:`f(z) = z + \hat u\tanh(w^\top z + b)` or radial :math:`f(z) = z + \beta(z - z_0')/(\alpha + r)` layers, so

.. math:: \ln q_K(z_K) = \ln q_0(z_0) - \sum_{k=1}^K \ln\Big|\det\frac{\partial f_k}{\partial z_{k-1}}\Big|.
          \qquad\text{(Q)}

In dgmlab :class:`~dgmlab.models.flows.Planar` and :class:`~dgmlab.models.flows.Radial` implement the paper's
:math:`f` as ``forward`` (with its closed-form log-determinant), and :class:`~dgmlab.models.flows.Flow` maps data
to the base, so :math:`q_K` is ``Flow(StandardNormal([2]), Inverse(Compose(f_1, ..., f_K)))``:
``Flow.sample_and_log_prob`` draws :math:`z_0`, runs ``Compose.forward`` (the cheap :math:`f_1`, then
:math:`f_2`, ...) and returns (Q), differentiably; no inverse is computed in training. ``Flow.log_prob`` of
given points (the figure's grid) runs the inverses: radial in closed form, planar by the safeguarded Newton
solve of :mod:`dgmlab.models.flows.planar_radial` (to float64 rounding), so the figure shows the density
itself, not a histogram of samples.

Free energy and KL
------------------
The paper minimises the free energy (its variational bound with :math:`\ln p(x, z) = -U(z)`)

.. math:: \mathcal F = \mathbb E_{q_K}\big[\ln q_K(z_K) + E(z_K)\big]
          = \mathrm{KL}(q_K \,\Vert\, p) - \ln Z \ \ge\ -\ln Z, \qquad\text{(F)}

estimated from a batch of reparameterised samples, with the annealed energy
:math:`\beta_t E` and :math:`\beta_t = \min(1, 0.01 + t/T_\beta)` at iteration :math:`t` (the paper:
:math:`T_\beta = 10\,000`; ``annealing_iterations``, 0 for :math:`\beta = 1` throughout). The paper takes
500,000 RMSprop steps; the bundled config takes far fewer Adam steps on larger batches with a cosine
learning rate (each step costs the same at any batch size this small: the layers' per-operation overhead
dominates), and says so in its numbers. After fitting,

.. math:: \mathrm{KL}(q_K\,\Vert\,p) = \mathcal F + \ln Z
          \approx \frac1N\sum_{n=1}^N \big[\ln q_K(z^{(n)}) + E(z^{(n)}) + \ln Z\big], \quad z^{(n)}\sim q_K,

in nats, with the standard error :math:`\hat\sigma/\sqrt N` of that mean, on :math:`N` fresh samples.

The normaliser
--------------
:math:`\ln Z` is the trapezoid rule on the square :math:`[-L, L]^2` with :math:`n\times n` points (float64,
``logsumexp`` of :math:`-E` plus :math:`2\ln h`, :math:`h = 2L/(n-1)`). The rule is spectrally accurate for
smooth integrands that vanish at the border; :func:`log_normalizer` checks both: the integrand on the border is
below ``border_tolerance`` times its peak, and the rule on every other point (spacing :math:`2h`) agrees within
``tolerance`` nats. Choose :math:`h` so that :math:`a/h` is an integer (the wall's kink on a grid line).
"""

from __future__ import annotations

import copy
import json
import math
import time
import zlib
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
import torch
from matplotlib.figure import Figure
from torch import Tensor

from dgmlab import plots
from dgmlab.checkpoint import atomic_write_text
from dgmlab.config import COMMAND_KEY, load_config
from dgmlab.errors import ConfigError, NonFiniteLossError
from dgmlab.models.flows import Compose, Flow, Inverse, Planar, Radial, StandardNormal, Transform
from dgmlab.rundir import lock_run, refuse_or_clear_results
from dgmlab.utils import check_int, check_positive_number, cpu_threads, default_workers, run_in_processes

COMMAND = "potentials"  # the config's COMMAND_KEY: dgmlab potentials reads it
OUTPUT_FILES = ("results.json", "table.md", "figure.png")  # a finished run; results.json is written last
OPTIMIZERS = ("adam", "rmsprop")
SCHEDULES = ("constant", "cosine")  # of the learning rate


# ----------------------------------------------------------------------------------------------------------
# The potentials of Table 1
# ----------------------------------------------------------------------------------------------------------
def _check_points(z: Tensor) -> None:
    if not isinstance(z, Tensor) or z.dim() < 1 or z.shape[-1] != 2:
        raise ValueError(f"the potentials take points z of shape [..., 2], got "
                         f"{list(z.shape) if isinstance(z, Tensor) else type(z).__name__}")


def w1(z: Tensor) -> Tensor:
    r""":math:`w_1(z) = \sin(2\pi z_1/4)`, ``[..., 2] -> [...]``."""
    return torch.sin(2 * math.pi * z[..., 0] / 4)


def w2(z: Tensor) -> Tensor:
    r""":math:`w_2(z) = 3\exp(-\tfrac12((z_1 - 1)/0.6)^2)`, ``[..., 2] -> [...]``."""
    return 3 * torch.exp(-0.5 * ((z[..., 0] - 1) / 0.6) ** 2)


def w3(z: Tensor) -> Tensor:
    r""":math:`w_3(z) = 3\sigma((z_1 - 1)/0.3)` with the logistic :math:`\sigma`, ``[..., 2] -> [...]``."""
    return 3 * torch.sigmoid((z[..., 0] - 1) / 0.3)


def _minus_log_sum_exp(a: Tensor, b: Tensor) -> Tensor:
    # -ln(e^a + e^b), stably
    return -torch.logsumexp(torch.stack([a, b]), dim=0)


def U1(z: Tensor) -> Tensor:  # noqa: N802 - the paper's symbol
    r""":math:`U_1(z) = \tfrac12((\lVert z\rVert - 2)/0.4)^2
    - \ln(e^{-\frac12((z_1-2)/0.6)^2} + e^{-\frac12((z_1+2)/0.6)^2})`: a ring of radius 2 with two modes on the
    :math:`z_1` axis. ``z`` ``[..., 2]`` -> ``[...]``."""
    _check_points(z)
    z1 = z[..., 0]
    ring = 0.5 * ((torch.linalg.vector_norm(z, dim=-1) - 2) / 0.4) ** 2
    return ring + _minus_log_sum_exp(-0.5 * ((z1 - 2) / 0.6) ** 2, -0.5 * ((z1 + 2) / 0.6) ** 2)


def U2(z: Tensor) -> Tensor:  # noqa: N802
    r""":math:`U_2(z) = \tfrac12((z_2 - w_1(z))/0.4)^2`: a sine wave. ``z`` ``[..., 2]`` -> ``[...]``."""
    _check_points(z)
    return 0.5 * ((z[..., 1] - w1(z)) / 0.4) ** 2


def U3(z: Tensor) -> Tensor:  # noqa: N802
    r""":math:`U_3(z) = -\ln(e^{-\frac12((z_2 - w_1)/0.35)^2} + e^{-\frac12((z_2 - w_1 + w_2)/0.35)^2})`: the sine
    wave and a copy bent down by the bump :math:`w_2`. ``z`` ``[..., 2]`` -> ``[...]``."""
    _check_points(z)
    offset = z[..., 1] - w1(z)
    return _minus_log_sum_exp(-0.5 * (offset / 0.35) ** 2, -0.5 * ((offset + w2(z)) / 0.35) ** 2)


def U4(z: Tensor) -> Tensor:  # noqa: N802
    r""":math:`U_4(z) = -\ln(e^{-\frac12((z_2 - w_1)/0.4)^2} + e^{-\frac12((z_2 - w_1 + w_3)/0.35)^2})`: the sine
    wave and a copy shifted down by the step :math:`w_3`. ``z`` ``[..., 2]`` -> ``[...]``."""
    _check_points(z)
    offset = z[..., 1] - w1(z)
    return _minus_log_sum_exp(-0.5 * (offset / 0.4) ** 2, -0.5 * ((offset + w3(z)) / 0.35) ** 2)


POTENTIALS: dict[str, Callable[[Tensor], Tensor]] = {"U1": U1, "U2": U2, "U3": U3, "U4": U4}


def box_wall(z: Tensor, box: float = 4.0, width: float = 0.4) -> Tensor:
    r""":math:`W(z_1) = \tfrac12(\max(0, |z_1| - a)/s)^2` with :math:`a` = ``box`` and :math:`s` = ``width``:
    zero on the strip :math:`|z_1| \le a`, a Gaussian wall outside (module docstring). ``[..., 2] -> [...]``."""
    _check_points(z)
    return 0.5 * (torch.relu(z[..., 0].abs() - box) / width) ** 2


@dataclass(frozen=True)
class Target:
    r"""The energy :math:`E(z) = U(z) + W(z_1)` of the target :math:`p \propto e^{-E}`: ``potential`` names a
    :math:`U` of :data:`POTENTIALS`, ``box`` and ``wall_width`` are the wall's :math:`a` and :math:`s`
    (``box = inf``: no wall). Calling it maps ``z`` ``[..., 2]`` to ``E(z)`` ``[...]``. A plain dataclass, so
    it travels to worker processes."""

    potential: str
    box: float = 4.0
    wall_width: float = 0.4

    def __post_init__(self) -> None:
        if self.potential not in POTENTIALS:
            raise ValueError(f"Target: unknown potential {self.potential!r}; choose one of {', '.join(POTENTIALS)}")
        check_positive_number(self.wall_width, "wall_width", owner="Target")
        if not (isinstance(self.box, (int, float)) and self.box > 0):
            raise ValueError(f"Target: box must be a positive number (the wall's half-width), got {self.box!r}")

    def __call__(self, z: Tensor) -> Tensor:
        # E(z) = U(z) + W(z_1)
        return POTENTIALS[self.potential](z) + box_wall(z, self.box, self.wall_width)


# ----------------------------------------------------------------------------------------------------------
# log Z by quadrature
# ----------------------------------------------------------------------------------------------------------
class Normalizer(NamedTuple):
    """The result of :func:`log_normalizer`: ``log_z`` (nats) on the full grid, ``log_z_coarse`` on every other
    point, ``border_ratio`` (the largest integrand on the box's border over its peak), the box half-width
    ``limit`` and ``points`` per side."""

    log_z: float
    log_z_coarse: float
    border_ratio: float
    limit: float
    points: int


def log_normalizer(energy: Callable[[Tensor], Tensor], *, limit: float = 8.0, points: int = 1601,
                   tolerance: float = 1e-4, border_tolerance: float = 1e-10, rows: int = 128) -> Normalizer:
    r""":math:`\ln Z = \ln\int e^{-E(z)}\,dz` by the trapezoid rule on :math:`[-L, L]^2` (``limit`` :math:`L`,
    ``points`` :math:`n` per side, odd), in float64: ``logsumexp`` of :math:`-E` over the grid plus
    :math:`2\ln h`, :math:`h = 2L/(n-1)`, ``rows`` grid rows at a time.

    Checked, or a :class:`~dgmlab.errors.ConfigError` that says what to change: the integrand on the border is
    at most ``border_tolerance`` of its peak (else widen ``limit``), and the same rule on every other point
    (spacing :math:`2h`) agrees within ``tolerance`` nats (else raise ``points``). ``energy`` maps ``[N, 2]``
    float64 points to ``[N]``. The defaults (spacing 0.01) put :math:`\pm 4` on grid lines."""
    limit = check_positive_number(limit, "limit", owner="log_normalizer", error=ConfigError)
    points = check_int(points, "points", minimum=5, owner="log_normalizer", error=ConfigError)
    if points % 2 == 0:
        raise ConfigError(f"log_normalizer: points must be odd (the coarse check uses every other point, ends "
                          f"included), got {points}")
    axis = torch.linspace(-limit, limit, points, dtype=torch.float64)
    spacing = 2 * limit / (points - 1)
    fine, coarse, peak, border = [], [], -math.inf, -math.inf
    with torch.no_grad():
        for start in range(0, points, rows):
            z2 = axis[start:start + rows]
            grid = torch.stack(torch.meshgrid(axis, z2, indexing="xy"), dim=-1)  # [rows, n, 2]: z1 along a row
            log_f = -energy(grid.reshape(-1, 2)).reshape(grid.shape[:2])
            if torch.isnan(log_f).any() or (log_f == math.inf).any():
                raise ValueError("log_normalizer: the energy is NaN or -inf on the grid")
            fine.append(torch.logsumexp(log_f.flatten(), dim=0))
            even = (torch.arange(start, start + len(z2)) % 2) == 0
            if even.any():
                coarse.append(torch.logsumexp(log_f[even][:, ::2].flatten(), dim=0))
            peak = max(peak, float(log_f.max()))
            edges = [log_f[:, 0], log_f[:, -1]]
            if start == 0:
                edges.append(log_f[0])
            if start + len(z2) == points:
                edges.append(log_f[-1])
            border = max(border, float(torch.cat(edges).max()))
    # ln Z ~ ln(h^2 sum_ij e^{-E(z_ij)}): the trapezoid rule, whose end weights 1/2 do not matter on a
    # border where the integrand vanishes
    log_z = float(torch.logsumexp(torch.stack(fine), dim=0)) + 2 * math.log(spacing)
    log_z_coarse = float(torch.logsumexp(torch.stack(coarse), dim=0)) + 2 * math.log(2 * spacing)
    border_ratio = math.exp(border - peak) if peak > -math.inf else math.nan
    if not border_ratio <= border_tolerance:
        raise ConfigError(f"log_normalizer: the integrand on the border of [-{limit:g}, {limit:g}]^2 is "
                          f"{border_ratio:.2g} of its peak (more than {border_tolerance:g}): widen the box (limit)")
    if not abs(log_z - log_z_coarse) <= tolerance:
        raise ConfigError(f"log_normalizer: ln Z is {log_z:.8f} with {points} points per side and "
                          f"{log_z_coarse:.8f} with every other point (apart by more than {tolerance:g} nats): "
                          f"use more points")
    return Normalizer(log_z, log_z_coarse, border_ratio, limit, points)


# ----------------------------------------------------------------------------------------------------------
# q_K and its fitting
# ----------------------------------------------------------------------------------------------------------
FLOW_LAYERS: dict[str, type[Transform]] = {"planar": Planar, "radial": Radial}


def build_q(flow: str, length: int, dim: int = 2) -> Flow:
    r""":math:`q_K`: :math:`\mathcal N(0, I_{dim})` through ``length`` :math:`K` layers of ``flow``
    (``"planar"`` or ``"radial"``) in the paper's sampling direction,
    ``Flow(StandardNormal([dim]), Inverse(Compose(f_1, ..., f_K)))``: ``sample_and_log_prob`` returns
    :math:`z_K = f_K\circ\cdots\circ f_1(z_0)` and (Q) by the layers' cheap ``forward``; ``log_prob`` of given
    points runs their inverses. Layers start at their own random initialisation (the global generator)."""
    if flow not in FLOW_LAYERS:
        raise ValueError(f"build_q: unknown flow {flow!r}; choose one of {', '.join(FLOW_LAYERS)}")
    length = check_int(length, "length", minimum=1, owner="build_q", hint="the number of layers K")
    layer = FLOW_LAYERS[flow]
    return Flow(StandardNormal([dim]), Inverse(Compose(*[layer(dim) for _ in range(length)])))


def annealing_beta(iteration: int, annealing_iterations: int) -> float:
    r""":math:`\beta_t = \min(1, 0.01 + t/T_\beta)` (the paper's schedule with :math:`T_\beta = 10\,000`);
    1 throughout for ``annealing_iterations`` :math:`T_\beta = 0`."""
    if annealing_iterations <= 0:
        return 1.0
    return min(1.0, 0.01 + iteration / annealing_iterations)


def free_energy_terms(q: Flow, energy: Callable[[Tensor], Tensor], n: int, *, beta: float = 1.0,
                      generator: torch.Generator | None = None) -> Tensor:
    r"""Per-sample terms of the free energy (F), :math:`\ln q_K(z) + \beta E(z)` for ``n`` reparameterised
    samples :math:`z\sim q_K`, ``[n]`` nats, differentiable in :math:`q`'s parameters."""
    z, log_q = q.sample_and_log_prob(n, generator=generator)
    # ln q_K(z_K) + beta E(z_K), with ln q_K from (Q)
    return log_q + beta * energy(z)


def _optimizer(name: str, parameters: Sequence[torch.nn.Parameter], learning_rate: float) -> torch.optim.Optimizer:
    if name == "adam":
        try:  # one fused step for the many tiny parameters (torch >= 2.4 on the CPU)
            return torch.optim.Adam(parameters, lr=learning_rate, fused=True)
        except (RuntimeError, TypeError):  # pragma: no cover - older torch
            return torch.optim.Adam(parameters, lr=learning_rate, foreach=True)
    if name == "rmsprop":  # the paper's optimiser
        return torch.optim.RMSprop(parameters, lr=learning_rate, momentum=0.9)
    raise ValueError(f"unknown optimizer {name!r}; choose one of {', '.join(OPTIMIZERS)}")


class FitHistory(NamedTuple):
    """What :func:`fit_reverse_kl` did: the batch estimate of the annealed free energy
    :math:`\\mathbb E_q[\\ln q + \\beta_t E]` (nats) and :math:`\\beta_t` at every iteration, and the seconds."""

    free_energy: list[float]
    beta: list[float]
    seconds: float


def learning_rate_at(iteration: int, iterations: int, learning_rate: float, schedule: str) -> float:
    r"""The learning rate of iteration :math:`t` of :math:`T`: ``"constant"``, or ``"cosine"``
    :math:`\eta_t = \eta\,\tfrac12(1 + \cos(\pi t/T))`, from :math:`\eta` down to nearly 0."""
    if schedule == "constant":
        return learning_rate
    if schedule == "cosine":
        return learning_rate * 0.5 * (1 + math.cos(math.pi * iteration / iterations))
    raise ValueError(f"unknown learning-rate schedule {schedule!r}; choose one of {', '.join(SCHEDULES)}")


def fit_reverse_kl(q: Flow, energy: Callable[[Tensor], Tensor], *, iterations: int, batch_size: int = 256,
                   learning_rate: float = 1e-2, optimizer: str = "adam", schedule: str = "constant",
                   annealing_iterations: int = 10_000, generator: torch.Generator | None = None,
                   description: str = "fit_reverse_kl") -> FitHistory:
    r"""Fit ``q`` to :math:`p\propto e^{-E}` by minimising the free energy (F), annealed: at iteration
    :math:`t`, one step of ``optimizer`` (``"adam"``, or ``"rmsprop"`` with momentum 0.9 as in the paper) on
    :math:`\frac1B\sum_b[\ln q_K(z_b) + \beta_t E(z_b)]`, :math:`B` = ``batch_size`` fresh reparameterised
    samples, :math:`\beta_t` from :func:`annealing_beta`, the learning rate from :func:`learning_rate_at`
    (``schedule``). Raises :class:`~dgmlab.errors.NonFiniteLossError` (naming ``description``) if the objective
    stops being finite."""
    iterations = check_int(iterations, "iterations", minimum=1, owner="fit_reverse_kl")
    batch_size = check_int(batch_size, "batch_size", minimum=1, owner="fit_reverse_kl")
    check_positive_number(learning_rate, "learning_rate", owner="fit_reverse_kl")
    learning_rate_at(0, iterations, learning_rate, schedule)  # a ValueError for an unknown schedule, before any step
    step = _optimizer(optimizer, list(q.parameters()), learning_rate)
    started = time.perf_counter()
    history, betas = [], []
    for t in range(iterations):
        for group in step.param_groups:
            group["lr"] = learning_rate_at(t, iterations, learning_rate, schedule)
        beta = annealing_beta(t, annealing_iterations)
        loss = free_energy_terms(q, energy, batch_size, beta=beta, generator=generator).mean()
        if not torch.isfinite(loss):
            raise NonFiniteLossError(f"{description}: the free energy became {float(loss)} at iteration {t}; lower "
                                     f"the learning rate")
        step.zero_grad(set_to_none=True)
        loss.backward()
        step.step()
        history.append(float(loss.detach()))
        betas.append(beta)
    return FitHistory(history, betas, time.perf_counter() - started)


class KLEstimate(NamedTuple):
    r""":math:`\mathrm{KL}(q\,\Vert\,p)` (nats) and its standard error from ``samples`` fresh samples, and the
    free energy :math:`\mathcal F = \mathrm{KL} - \ln Z` (nats)."""

    kl: float
    standard_error: float
    free_energy: float
    samples: int


@torch.no_grad()
def estimate_kl(q: Flow, energy: Callable[[Tensor], Tensor], log_z: float, *, samples: int = 100_000,
                chunk: int = 25_000, generator: torch.Generator | None = None) -> KLEstimate:
    r""":math:`\mathrm{KL}(q_K\,\Vert\,p) = \mathbb E_q[\ln q_K(z) + E(z)] + \ln Z` by the mean over ``samples``
    fresh :math:`z\sim q_K` (drawn ``chunk`` at a time), with the standard error :math:`\hat\sigma/\sqrt N` of
    that mean; accumulated in float64. ``log_z`` from :func:`log_normalizer`."""
    samples = check_int(samples, "samples", minimum=2, owner="estimate_kl")
    values = []
    for start in range(0, samples, chunk):
        values.append(free_energy_terms(q, energy, min(chunk, samples - start), generator=generator).double())
    terms = torch.cat(values)
    if not torch.isfinite(terms).all():
        raise NonFiniteLossError("estimate_kl: ln q + E is not finite at some samples of q")
    free_energy = float(terms.mean())
    standard_error = float(terms.std() / math.sqrt(samples))
    return KLEstimate(free_energy + log_z, standard_error, free_energy, samples)


def grid_axis(limit: float, points: int) -> Tensor:
    """The figure's coordinates along each axis, ``[points]`` float64 in ``[-limit, limit]``."""
    return torch.linspace(-limit, limit, points, dtype=torch.float64)


@torch.no_grad()
def log_density_on_grid(log_density: Callable[[Tensor], Tensor], limit: float, points: int) -> Tensor:
    """``log_density`` at the grid points of ``[-limit, limit]^2``, ``[points (z2), points (z1)]`` float64:
    row ``i`` is :math:`z_2` = ``grid_axis[i]``, column ``j`` is :math:`z_1` = ``grid_axis[j]``."""
    axis = grid_axis(limit, points)
    grid = torch.stack(torch.meshgrid(axis, axis, indexing="xy"), dim=-1)
    return log_density(grid.reshape(-1, 2)).reshape(points, points)


def q_log_density(q: Flow) -> Callable[[Tensor], Tensor]:
    """:math:`\\ln q_K` at given points ``[N, 2] -> [N]`` in float64 (a float64 copy of ``q``; ``Flow.log_prob``
    through the layers' inverses)."""
    exact = copy.deepcopy(q).double()
    return lambda z: exact.log_prob(z.double())


# ----------------------------------------------------------------------------------------------------------
# Settings
# ----------------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class PotentialsSettings:
    """Every setting of :func:`run_potentials` (the bundled ``planar_potentials`` config says what each means)."""

    potentials: tuple[str, ...]
    box: float
    wall_width: float
    flows: tuple[tuple[str, tuple[int, ...]], ...]  # (flow, lengths K) in the config's order
    iterations: int
    batch_size: int
    learning_rate: float
    optimizer: str
    schedule: str
    annealing_iterations: int
    eval_samples: int
    normalizer_limit: float
    normalizer_points: int
    figure_limit: float
    figure_points: int


def _positive_int(value: Any, name: str) -> int:
    return check_int(value, name, minimum=1, error=ConfigError)


def _nonnegative_int(value: Any, name: str) -> int:
    return check_int(value, name, minimum=0, error=ConfigError)


def _positive_number(value: Any, name: str) -> float:
    return check_positive_number(value, name, error=ConfigError)


def _optimizer_name(value: Any, name: str) -> str:
    if value not in OPTIMIZERS:
        raise ConfigError(f"{name} must be one of {', '.join(OPTIMIZERS)}, got {value!r}")
    return str(value)


def _schedule_name(value: Any, name: str) -> str:
    if value not in SCHEDULES:
        raise ConfigError(f"{name} must be one of {', '.join(SCHEDULES)}, got {value!r}")
    return str(value)


def _potential_names(value: Any, name: str) -> tuple[str, ...]:
    if (not isinstance(value, list) or not value or any(v not in POTENTIALS for v in value)
            or len(set(value)) != len(value)):
        raise ConfigError(f"{name} must be a non-empty list of distinct potentials among {', '.join(POTENTIALS)}, "
                          f"got {value!r}")
    return tuple(value)


def _lengths(value: Any, name: str) -> tuple[int, ...]:
    if not isinstance(value, list) or not value:
        raise ConfigError(f"{name} must be a non-empty list of flow lengths K, e.g. [2, 8, 32], got {value!r}")
    return tuple(_positive_int(v, f"{name} entries") for v in value)


# table -> key -> (validator, the PotentialsSettings field)
_SCHEMA: dict[str, dict[str, tuple[Callable[[Any, str], Any], str]]] = {
    "target": {"potentials": (_potential_names, "potentials"), "box": (_positive_number, "box"),
               "wall_width": (_positive_number, "wall_width")},
    "fit": {"iterations": (_positive_int, "iterations"), "batch_size": (_positive_int, "batch_size"),
            "learning_rate": (_positive_number, "learning_rate"), "optimizer": (_optimizer_name, "optimizer"),
            "schedule": (_schedule_name, "schedule"),
            "annealing_iterations": (_nonnegative_int, "annealing_iterations"),
            "eval_samples": (_positive_int, "eval_samples")},
    "normalizer": {"limit": (_positive_number, "normalizer_limit"), "points": (_positive_int, "normalizer_points")},
    "figure": {"limit": (_positive_number, "figure_limit"), "points": (_positive_int, "figure_points")},
}
_TOP_LEVEL = (COMMAND_KEY, "name", "flows", "quick", *_SCHEMA)


def _table(config: Mapping[str, Any], key: str, source: str) -> Mapping[str, Any]:
    table = config.get(key)
    if not isinstance(table, Mapping):
        raise ConfigError(f"{source} needs a [{key}] table")
    return table


def read_settings(config: Mapping[str, Any], *, quick: bool = False, source: str = "config") -> PotentialsSettings:
    """Validate a ``planar_potentials``-style config (as :func:`dgmlab.config.load_config` with
    ``command="potentials"`` returns it) into :class:`PotentialsSettings`; with ``quick``, its ``[quick]``
    tables replace the keys they name. Every key is required; an unknown or missing table or key, or a bad
    value, is a :class:`~dgmlab.errors.ConfigError` that names it."""
    unknown = sorted(set(config) - set(_TOP_LEVEL))
    if unknown:
        raise ConfigError(f"{source}: unknown key(s) or table(s) {', '.join(unknown)}; valid ones are "
                          f"{', '.join(_TOP_LEVEL)}")
    quick_tables = config.get("quick", {})
    if not isinstance(quick_tables, Mapping) or set(quick_tables) - set(_SCHEMA):
        raise ConfigError(f"{source}: [quick] may only hold the tables {', '.join(_SCHEMA)}, got "
                          f"{sorted(quick_tables) if isinstance(quick_tables, Mapping) else quick_tables!r}")
    values: dict[str, Any] = {}
    for table_name, keys in _SCHEMA.items():
        table = dict(_table(config, table_name, source))
        overrides = quick_tables.get(table_name, {})
        for part, where in ((table, f"[{table_name}]"), (overrides, f"[quick.{table_name}]")):
            if not isinstance(part, Mapping):
                raise ConfigError(f"{source}: {where} must be a table")
            extra = sorted(set(part) - set(keys))
            if extra:
                raise ConfigError(f"{source}: {where} has unknown key(s) {', '.join(extra)}; valid keys are "
                                  f"{', '.join(keys)}")
        if quick:
            table.update(overrides)
        for key, (validate, field_name) in keys.items():
            if key not in table:
                raise ConfigError(f"{source}: [{table_name}] needs the key {key}")
            values[field_name] = validate(table[key], f"{source}: [{table_name}] {key}")
    flows = _table(config, "flows", source)
    extra = sorted(set(flows) - set(FLOW_LAYERS))
    if extra or not flows:
        raise ConfigError(f"{source}: [flows] maps flow families ({', '.join(FLOW_LAYERS)}) to lists of lengths K; "
                          f"got {', '.join(extra) if extra else 'none'}")
    values["flows"] = tuple((name, _lengths(lengths, f"{source}: [flows] {name}")) for name, lengths in flows.items())
    if values["normalizer_points"] % 2 == 0:
        raise ConfigError(f"{source}: [normalizer] points must be odd, got {values['normalizer_points']}")
    return PotentialsSettings(**values)


# ----------------------------------------------------------------------------------------------------------
# One fit, and the experiment
# ----------------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class FitJob:
    """One fit of the experiment: a flow of ``length`` layers to ``target``, with its seed."""

    target: Target
    flow: str
    length: int
    seed: int
    log_z: float


@dataclass
class FitOutcome:
    """The numbers of one fit (nats, seconds) and :math:`\\ln q_K` on the figure's grid."""

    potential: str
    flow: str
    length: int
    kl: float
    kl_standard_error: float
    free_energy: float
    final_training_free_energy: float
    final_beta: float
    iterations: int
    seconds: float
    log_density: np.ndarray


def fit_seed(seed: int, potential: str, flow: str, length: int) -> int:
    """A seed for one fit that depends on the experiment's ``seed`` and the fit alone (not on the order or the
    process the fits run in)."""
    return zlib.crc32(f"{seed}/{potential}/{flow}/{length}".encode())


def _run_fit(job: FitJob, settings: PotentialsSettings) -> FitOutcome:
    """Build, fit and measure one :math:`q_K` (what a worker process runs)."""
    started = time.perf_counter()
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(job.seed)
        q = build_q(job.flow, job.length)
    generator = torch.Generator().manual_seed(job.seed + 1)
    name = f"{job.target.potential} {job.flow} K={job.length}"
    history = fit_reverse_kl(q, job.target, iterations=settings.iterations, batch_size=settings.batch_size,
                             learning_rate=settings.learning_rate, optimizer=settings.optimizer,
                             schedule=settings.schedule, annealing_iterations=settings.annealing_iterations,
                             generator=generator, description=name)
    estimate = estimate_kl(q, job.target, job.log_z, samples=settings.eval_samples, generator=generator)
    log_density = log_density_on_grid(q_log_density(q), settings.figure_limit, settings.figure_points)
    last = max(1, settings.iterations // 20)  # the training objective over the last 5% of iterations
    return FitOutcome(
        potential=job.target.potential, flow=job.flow, length=job.length, kl=estimate.kl,
        kl_standard_error=estimate.standard_error, free_energy=estimate.free_energy,
        final_training_free_energy=float(np.mean(history.free_energy[-last:])), final_beta=history.beta[-1],
        iterations=settings.iterations, seconds=time.perf_counter() - started, log_density=log_density.numpy())


def _worker_start() -> None:
    # one intra-op thread per process: these small tensors gain nothing from a second thread, and two threads
    # that wait on each other on a busy machine are many times slower (float64 tanh of the planar inverse:
    # about 3 ms instead of 20 us for 1,600 values on two shared cores)
    torch.set_num_threads(1)


def _column_name(flow: str, length: int) -> str:
    return f"{flow} K={length}"


def _format_kl(outcome: FitOutcome) -> str:
    # the standard error to two significant digits (at least three decimals), the KL to the same decimal
    error = outcome.kl_standard_error
    decimals = 3 if not error > 0 else min(6, max(3, 1 - math.floor(math.log10(error))))
    return f"{outcome.kl:.{decimals}f} ± {error:.{decimals}f}"


def potentials_table(outcomes: Mapping[tuple[str, str, int], FitOutcome], settings: PotentialsSettings) -> str:
    """The Markdown table of :func:`run_potentials`: a row per potential, a column per flow and length,
    :math:`\\mathrm{KL}(q_K\\,\\Vert\\,p)` in nats ± its standard error."""
    columns = [(flow, length) for flow, lengths in settings.flows for length in lengths]
    lines = [
        f"KL(q_K ‖ p) in nats ± standard error ({settings.eval_samples:,} samples of q_K; p ∝ exp(-U) with a wall "
        f"outside |z1| ≤ {settings.box:g}), after {settings.iterations:,} iterations of {settings.optimizer} "
        f"(batch {settings.batch_size}, {settings.schedule} learning rate from {settings.learning_rate:g}).",
        "",
        "| potential | " + " | ".join(_column_name(flow, length) for flow, length in columns) + " |",
        "|---|" + "---:|" * len(columns),
    ]
    for potential in settings.potentials:
        cells = [_format_kl(outcomes[potential, flow, length]) for flow, length in columns]
        lines.append(f"| {potential} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def potentials_figure(true_log_density: Mapping[str, np.ndarray],
                      outcomes: Mapping[tuple[str, str, int], FitOutcome], settings: PotentialsSettings) -> Figure:
    """The paper's Figure 3: a row per potential; the true density :math:`e^{-E}/Z`, then :math:`q_K`'s density
    for each flow and length (evaluated exactly on the grid, through the flows' inverses), each panel with its
    own colour scale from 0 to its maximum and titled with :math:`K` and the KL."""
    columns = [(flow, length) for flow, lengths in settings.flows for length in lengths]
    rows = []
    for potential in settings.potentials:
        panels = [(f"{potential}: exp(-U)/Z", true_log_density[potential])]
        for flow, length in columns:
            outcome = outcomes[potential, flow, length]
            panels.append((f"{flow} K={length}\nKL {outcome.kl:.3f} nats", outcome.log_density))
        rows.append(panels)
    return plots.density_grid(
        rows, settings.figure_limit,
        title="Rezende & Mohamed (2015), Figure 3: the target (left) and q_K fitted by reverse KL; q_K's density "
              "evaluated exactly on the grid\n(change of variables through the flows' inverses), after "
              f"{settings.iterations:,} iterations; KL(q_K ‖ p) in nats")


def run_potentials(out: Path, *, quick: bool = False, config: str | Path = "planar_potentials", seed: int = 0,
                   overwrite: bool = False, progress: bool = True, workers: int | None = None,
                   log: Callable[[str], None] = print) -> Path:
    r"""Rezende and Mohamed's Figure 3: fit every flow and length of ``config`` (a bundled config's name or a
    TOML file with ``command = "potentials"``; see :func:`read_settings`) to every potential by reverse KL,
    and write into ``out``:

    * ``results.json``: per potential :math:`\ln Z` (with its checks), and per flow and :math:`K` the KL in nats
      and its standard error, the free energy :math:`\mathcal F` on fresh samples, the training objective over
      the last 5% of iterations, the iterations and the seconds; the settings, ``seed``, ``quick``;
    * ``table.md``: KL ± standard error, a row per potential and a column per flow and :math:`K`;
    * ``figure.png``: the grid of :func:`potentials_figure`.

    ``quick`` uses the config's ``[quick]`` settings (a smoke run of seconds). Each fit has its own seed
    (:func:`fit_seed`), so the numbers do not depend on ``workers``: forked processes of one thread
    (default: 2 on a machine with two or more cores, none for a quick run; 0 or 1: here, in order).
    ``progress`` logs a line per finished fit; the table is logged at the end. ``out`` is locked while this
    runs (:func:`dgmlab.rundir.lock_run`), and one that holds any of the output files is refused with
    :class:`~dgmlab.errors.RunExistsError` unless ``overwrite``, which replaces them once the fits are done.
    Returns ``out``."""
    out = Path(out)
    source = str(config)
    settings = read_settings(load_config(config, command=COMMAND), quick=quick, source=source)
    seed = check_int(seed, "seed", minimum=0, owner="run_potentials")
    started = time.perf_counter()
    with lock_run(out):
        refuse_or_clear_results(out, OUTPUT_FILES, "potentials", overwrite=overwrite, clear=False)
        targets = {name: Target(name, settings.box, settings.wall_width) for name in settings.potentials}
        normalizers = {name: log_normalizer(target, limit=settings.normalizer_limit,
                                            points=settings.normalizer_points) for name, target in targets.items()}
        jobs = [FitJob(targets[potential], flow, length, fit_seed(seed, potential, flow, length),
                       normalizers[potential].log_z)
                for flow, lengths in settings.flows for length in lengths for potential in settings.potentials]
        jobs.sort(key=lambda job: -job.length)  # the longest first, for two processes to finish together
        if workers is None:
            workers = 0 if quick else default_workers(True, len(jobs))

        def report(_: int, outcome: FitOutcome) -> None:
            if progress:
                log(f"{outcome.potential} {_column_name(outcome.flow, outcome.length)}: KL {_format_kl(outcome)} "
                    f"nats ({outcome.iterations:,} iterations, {outcome.seconds:.1f} s)")

        with cpu_threads(1):  # the fits run here: one thread, as in a worker
            finished = run_in_processes(_run_fit, [(job, settings) for job in jobs], workers, on_result=report,
                                        initializer=_worker_start, what="run_potentials")
        outcomes = {(o.potential, o.flow, o.length): o for o in finished}
        true_log_density = {
            name: log_density_on_grid(lambda z, t=target, n=name: -t(z) - normalizers[n].log_z,
                                      settings.figure_limit, settings.figure_points).numpy()
            for name, target in targets.items()}
        table = potentials_table(outcomes, settings)
        figure = potentials_figure(true_log_density, outcomes, settings)
        seconds = time.perf_counter() - started
        results = {
            "experiment": "Rezende and Mohamed (2015), Figure 3: reverse-KL fits of planar and radial flows to the "
                          "potentials of Table 1",
            "units": {"kl": "nats", "log_z": "nats", "free_energy": "nats", "seconds": "s"},
            "config": source, "quick": quick, "seed": seed, "workers": workers, "seconds": round(seconds, 1),
            "settings": {key: (list(value) if isinstance(value, tuple) else value)
                         for key, value in asdict(settings).items()},
            "potentials": {
                name: {
                    "log_z": normalizers[name].log_z,
                    "log_z_check": {"coarse_grid": normalizers[name].log_z_coarse,
                                    "border_ratio": normalizers[name].border_ratio,
                                    "limit": normalizers[name].limit, "points": normalizers[name].points},
                    "fits": {flow: {str(length): _outcome_record(outcomes[name, flow, length]) for length in lengths}
                             for flow, lengths in settings.flows},
                } for name in settings.potentials},
        }
        refuse_or_clear_results(out, OUTPUT_FILES, "potentials", overwrite=overwrite, clear=True)
        plots.save_figure(figure, out / "figure.png")
        atomic_write_text(out / "table.md", table)
        atomic_write_text(out / "results.json", json.dumps(results, indent=2) + "\n")
    log(table + f"\n{len(jobs)} fits in {seconds:.0f} s; written to {out}")
    return out


def _outcome_record(outcome: FitOutcome) -> dict[str, Any]:
    return {"kl": outcome.kl, "kl_standard_error": outcome.kl_standard_error, "free_energy": outcome.free_energy,
            "final_training_free_energy": outcome.final_training_free_energy, "final_beta": outcome.final_beta,
            "iterations": outcome.iterations, "seconds": round(outcome.seconds, 2)}


__all__ = ["FLOW_LAYERS", "POTENTIALS", "FitHistory", "KLEstimate", "Normalizer", "PotentialsSettings", "Target",
           "U1", "U2", "U3", "U4", "annealing_beta", "box_wall", "build_q", "estimate_kl", "fit_reverse_kl",
           "fit_seed", "free_energy_terms", "grid_axis", "learning_rate_at", "log_density_on_grid", "log_normalizer",
           "potentials_figure", "potentials_table", "q_log_density", "read_settings", "run_potentials", "w1", "w2",
           "w3"]
