r"""Invertible residual networks (Behrmann et al. 2019), Residual Flows (Chen et al. 2019) and RealNVP (Dinh et
al. 2017) of matched parameter counts, fitted by maximum likelihood to the 2-D toy densities of
:mod:`dgmlab.data.toy2d` (checkerboard, eight Gaussians, two moons, rings), with held-out log-likelihoods that
are exact for every model.

Fitting
-------
For each data set :math:`p`, a training set :math:`\{x_i\}_{i=1}^N` and a held-out set
:math:`\{x'_j\}_{j=1}^M` are drawn from :math:`p` with seeds of their own; every model :math:`q_\theta` is
fitted by Adam on

.. math:: \mathcal L(\theta) = -\frac1B\sum_{b=1}^B \widehat{\log q_\theta}(x_{i_b}),

:math:`B` training points drawn uniformly with replacement at each step, the learning rate decayed from
:math:`\eta` to 0 on a cosine. :math:`\widehat{\log q}` is the model's training-time ``log_prob``:

* **i-ResNet** ("iresnet"): ActNorm, then :math:`F(x) = x + g(x)` per block with spectrally normalised ELU
  MLPs (:math:`c = 0.9` per layer), :math:`\ln\det(I + J_g)` by the power series truncated at 5 terms with one
  Gaussian Hutchinson probe, back-propagated through (biased);
* **Residual Flow** ("residual_flow"): the same blocks with LipSwish and :math:`c = 0.98`, the unbiased Russian
  roulette estimator (2 terms + Geometric(0.5)) and the Neumann-series gradient;
* **RealNVP** ("realnvp", :func:`realnvp_2d`): steps of ActNorm and an affine coupling
  :math:`y_B = x_B e^{s(x_A)} + t(x_A)` whose transformed coordinate alternates (:math:`d = 2`: one
  coordinate conditions the other), exact by construction;

plus the maximum-likelihood Gaussian :math:`\mathcal N(\bar x, \hat\Sigma)` of the training set as the floor.

Held-out log-likelihood
-----------------------
For :math:`d = 2` the log-determinant of every residual block is computed exactly, by two backward passes and
``slogdet`` (:func:`~dgmlab.models.flows.residual.logdet_exact`), so every model's

.. math:: \widehat{\mathrm{LL}} = \frac1M\sum_{j=1}^M \log q_\theta(x'_j) \pm \frac{\hat s}{\sqrt M}

is exact up to the sampling of :math:`x'` (nats, mean ± standard error). Beside it, the residual models'
training-time estimator on the same points, evaluated in batches of ``estimate_batch``: the roulette draws one
truncation per batch, so the standard error of the estimate's difference from the exact value is taken over
the batch means, not the points. The truncated series is biased; its bias is at most
:math:`\sum_{\text{blocks}} d\big(-\ln(1 - L) - \sum_{k=1}^{n} L^k/k\big)` per point, :math:`L` the blocks'
Lipschitz bound (:func:`~dgmlab.models.flows.residual.truncation_bound`), recorded beside it.

The ceiling
-----------
The data's own log-density is exact (:mod:`dgmlab.data.toy2d`), so on the same held-out points

.. math:: \mathbb E_p[\log p] - \mathbb E_p[\log q_\theta] = \mathrm{KL}(p\,\Vert\,q_\theta) \ge 0,

i.e. :math:`\mathbb E_p[\log p] = -H(p)` is the ceiling of every model's expected log-likelihood; the paired
mean of :math:`\log p(x'_j) - \log q_\theta(x'_j)` estimates the KL with its standard error.

Densities on a grid
-------------------
Each density is evaluated exactly at the centres of the square cells of side :math:`h` tiling
:math:`[-\ell, \ell]^2` (``integral_limit``), and :math:`\sum_{\text{cells}} q\,h^2` (the midpoint rule) checks
that it integrates to 1; the figure shows the cells inside :math:`[-4, 4]^2` (``figure_limit``).

:func:`run_toy2d` writes ``results.json``, ``table.md`` and ``densities.png``.
"""

from __future__ import annotations

import json
import math
import time
import zlib
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
from matplotlib.figure import Figure
from torch import Tensor, nn

from dgmlab import plots
from dgmlab.checkpoint import atomic_write_text
from dgmlab.data.toy2d import TOY2D, toy2d_dataset
from dgmlab.errors import NonFiniteLossError
from dgmlab.models import build_model, count_parameters
from dgmlab.models.flows import Flow, RealNVP
from dgmlab.models.flows.residual import InvertibleResNet, truncation_bound
from dgmlab.rundir import lock_run, refuse_or_clear_results
from dgmlab.utils import check_int, cpu_threads, default_workers, eval_mode, run_in_processes

__all__ = ["MODELS", "QUICK", "SETTINGS", "Toy2DSettings", "build_toy2d_model", "gaussian_log_likelihood",
           "grid_centres", "realnvp_2d", "run_toy2d", "toy2d_figure", "toy2d_table"]

OUTPUT_FILES = ("results.json", "table.md", "densities.png")  # a finished run; results.json is written last
MODELS = {"iresnet": "i-ResNet", "residual_flow": "Residual Flow", "realnvp": "RealNVP"}  # name -> label
D = 2


@dataclass(frozen=True)
class Toy2DSettings:
    """Every setting of :func:`run_toy2d` (module docstring)."""

    datasets: tuple[str, ...] = tuple(TOY2D)
    train_points: int = 50_000
    test_points: int = 10_000
    # the models: residual blocks of a 3-layer MLP branch; RealNVP steps of a coupling with a 2-hidden-layer MLP
    blocks: int = 8
    hidden: int = 64
    coupling_steps: int = 8
    coupling_hidden: int = 64
    # the fit
    steps: int = 2000
    batch_size: int = 512
    learning_rate: float = 5e-3
    # the evaluation
    estimate_batch: int = 100  # points per call of the training-time estimator (one roulette draw per call)
    grid_spacing: float = 0.05  # h, the side of the grid's cells
    integral_limit: float = 8.0  # the grid tiles [-limit, limit]^2
    figure_limit: float = 4.0  # the figure shows the cells inside [-limit, limit]^2


SETTINGS = Toy2DSettings()
#: The smoke run (seconds): small data, two blocks of width 16, 40 steps, a coarse grid.
QUICK = replace(SETTINGS, train_points=2000, test_points=1000, blocks=2, hidden=16, coupling_steps=2,
                coupling_hidden=16, steps=40, batch_size=128, grid_spacing=0.25)


def _seed(seed: int, *parts: object) -> int:
    """A seed of its own for each part of the experiment, from the run's seed."""
    return zlib.crc32(repr((seed, *parts)).encode())


# ----------------------------------------------------------------------------------------------------------
# The models
# ----------------------------------------------------------------------------------------------------------
def realnvp_2d(steps: int = 8, hidden: int = 64, features: int = D) -> Flow:
    """The experiment's RealNVP: :class:`~dgmlab.models.flows.architectures.RealNVP` (model ``realnvp_vectors``,
    config ``realnvp_toy2d``) of ``steps`` steps of width ``hidden`` on ``features`` = 2 coordinates."""
    return RealNVP(features=features, steps=steps, hidden=hidden)


def build_toy2d_model(name: str, settings: Toy2DSettings) -> nn.Module:
    """The model ``name`` (a key of :data:`MODELS`) at the sizes of ``settings``; the residual models with their
    families' default estimators (the configs ``iresnet_toy2d`` and ``residual_flow_toy2d`` build the same)."""
    if name == "realnvp":
        return realnvp_2d(settings.coupling_steps, settings.coupling_hidden)
    if name in ("iresnet", "residual_flow"):
        return build_model(name, features=D, blocks=settings.blocks, hidden=settings.hidden)
    raise ValueError(f"build_toy2d_model: unknown model {name!r}; choose one of {', '.join(MODELS)}")


def gaussian_log_likelihood(train: Tensor, test: Tensor) -> Tensor:
    r""":math:`\log\mathcal N(x'; \bar x, \hat\Sigma)` of every ``test`` point ``[M, D]`` under the maximum-likelihood
    Gaussian of ``train`` ``[N, D]`` (mean and biased covariance), ``[M]`` float64 nats."""
    train, test = train.double(), test.double()
    mean = train.mean(0)
    covariance = torch.cov(train.T, correction=0)
    return torch.distributions.MultivariateNormal(mean, covariance_matrix=covariance).log_prob(test)


# ----------------------------------------------------------------------------------------------------------
# The grid
# ----------------------------------------------------------------------------------------------------------
def _cells(limit: float, spacing: float, what: str) -> int:
    cells = 2 * limit / spacing
    if not (spacing > 0 and limit > 0 and abs(cells - round(cells)) < 1e-9 and round(cells) >= 2):
        raise ValueError(f"toy2d: {what} = {limit:g} must be a positive multiple of grid_spacing = {spacing:g}")
    return round(cells)


def grid_centres(limit: float, spacing: float) -> Tensor:
    """The centres :math:`-\\ell + (i + 1/2)h` of the cells of side ``spacing`` :math:`h` tiling
    ``[-limit, limit]``, ``[2 limit / h]`` float64."""
    cells = _cells(limit, spacing, "integral_limit")
    return -limit + (torch.arange(cells, dtype=torch.float64) + 0.5) * spacing


@torch.no_grad()
def _on_grid(log_density: Callable[[Tensor], Tensor], settings: Toy2DSettings, chunk: int = 10_000) -> Tensor:
    """``log_density`` at the grid's cell centres, ``[n (x2), n (x1)]`` float64 (row ``i`` at :math:`x_2`)."""
    axis = grid_centres(settings.integral_limit, settings.grid_spacing)
    points = torch.stack(torch.meshgrid(axis, axis, indexing="xy"), dim=-1).reshape(-1, D)
    values = torch.cat([log_density(points[start:start + chunk]).double() for start in range(0, len(points), chunk)])
    return values.reshape(len(axis), len(axis))


def _grid_integral(log_values: Tensor, spacing: float) -> float:
    # the midpoint rule: sum over cells of q(centre) h^2
    return float(torch.exp(log_values).sum() * spacing**2)


def _figure_crop(log_values: Tensor, settings: Toy2DSettings) -> np.ndarray:
    """The cells of the grid inside ``[-figure_limit, figure_limit]^2``."""
    outer = _cells(settings.integral_limit, settings.grid_spacing, "integral_limit")
    inner = _cells(settings.figure_limit, settings.grid_spacing, "figure_limit")
    if inner > outer:
        raise ValueError(f"toy2d: figure_limit = {settings.figure_limit:g} must be at most integral_limit = "
                         f"{settings.integral_limit:g}")
    start = (outer - inner) // 2
    return log_values[start:start + inner, start:start + inner].numpy()


# ----------------------------------------------------------------------------------------------------------
# One fit
# ----------------------------------------------------------------------------------------------------------
def _data(name: str, settings: Toy2DSettings, seed: int) -> tuple[Tensor, Tensor]:
    """The training and held-out points of data set ``name``, each from a seed of its own."""
    distribution = toy2d_dataset(name)
    train = distribution.sample(settings.train_points, generator=torch.Generator().manual_seed(
        _seed(seed, name, "train")))
    test = distribution.sample(settings.test_points, generator=torch.Generator().manual_seed(
        _seed(seed, name, "test")))
    return train, test


def _mean_and_error(values: Tensor) -> tuple[float, float]:
    values = values.double()
    return float(values.mean()), float(values.std() / math.sqrt(len(values)))


@dataclass
class FitOutcome:
    """The numbers of one fit (nats, seconds), the held-out log-densities and the log-density on the grid."""

    dataset: str
    model: str
    parameters: int
    steps: int
    train_seconds: float
    final_training_loss: float
    test_log_prob: np.ndarray  # exact, [M]
    estimator: str
    estimate_minus_exact: np.ndarray | None  # per batch of estimate_batch points (residual models)
    series_bias_bound: float | None
    grid_log_density: np.ndarray


def _fit(model: nn.Module, train: Tensor, settings: Toy2DSettings, generator: torch.Generator,
         description: str) -> list[float]:
    """Adam on the mean negative training-time log-likelihood of batches drawn with replacement, the learning
    rate on a cosine from ``learning_rate`` to 0; returns the loss of every step."""
    optimizer = torch.optim.Adam(model.parameters(), lr=settings.learning_rate)
    losses = []
    model.train()
    for step in range(settings.steps):
        for group in optimizer.param_groups:
            # eta_t = eta (1 + cos(pi t / T)) / 2
            group["lr"] = settings.learning_rate * 0.5 * (1 + math.cos(math.pi * step / settings.steps))
        batch = train[torch.randint(0, len(train), (settings.batch_size,), generator=generator)]
        # L = -(1/B) sum_b log q(x_b), with the training-time estimator of log q
        loss = -model.log_prob(batch).mean()
        if not torch.isfinite(loss):
            raise NonFiniteLossError(f"{description}: the loss became {float(loss)} at step {step}; lower the "
                                     f"learning rate")
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        losses.append(float(loss.detach()))
    return losses


@torch.no_grad()
def _log_prob(model: nn.Module, x: Tensor, chunk: int = 2000) -> Tensor:
    return torch.cat([model.log_prob(x[start:start + chunk]) for start in range(0, len(x), chunk)])


def _run_fit(dataset: str, name: str, settings: Toy2DSettings, seed: int) -> FitOutcome:
    """Build, fit and measure one model on one data set (what a worker process runs)."""
    train, test = _data(dataset, settings, seed)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(_seed(seed, dataset, name, "init"))
        model = build_toy2d_model(name, settings)
    model.initialize_from_data(train)  # ActNorm's data-dependent start
    residual = isinstance(model, InvertibleResNet)
    if residual:  # the probes and roulette draws from a generator of their own
        probes = torch.Generator().manual_seed(_seed(seed, dataset, name, "probes"))
        for block in model.residual_blocks():
            block.generator = probes
    started = time.perf_counter()
    losses = _fit(model, train, settings, torch.Generator().manual_seed(_seed(seed, dataset, name, "batches")),
                  f"toy2d {dataset} {name}")
    train_seconds = time.perf_counter() - started
    estimate_minus_exact, bound, estimator = None, None, "exact"
    with eval_mode(model), torch.no_grad():
        if residual:
            estimator = model.log_prob_estimator()
            trained_with = model.estimator_settings()
            batches = [test[start:start + settings.estimate_batch]
                       for start in range(0, len(test), settings.estimate_batch)]
            estimates = [float(model.log_prob(batch).double().mean()) for batch in batches]
            model.set_estimator("exact")
            exact_means = [float(model.log_prob(batch).double().mean()) for batch in batches]
            estimate_minus_exact = np.array(estimates) - np.array(exact_means)
            if trained_with["logdet"] == "series":
                bound = sum(truncation_bound(D, block.lipschitz_bound(), trained_with["terms"])
                            for block in model.residual_blocks())
        test_log_prob = _log_prob(model, test).double().numpy()
        grid = _on_grid(lambda x: model.log_prob(x.float()), settings).numpy()
        if residual:
            model.set_estimator(**trained_with)
    last = max(1, settings.steps // 20)  # the training objective over the last 5% of steps
    return FitOutcome(dataset=dataset, model=name, parameters=count_parameters(model), steps=settings.steps,
                      train_seconds=train_seconds, final_training_loss=float(np.mean(losses[-last:])),
                      test_log_prob=test_log_prob, estimator=estimator, estimate_minus_exact=estimate_minus_exact,
                      series_bias_bound=bound, grid_log_density=grid)


def _worker_start() -> None:
    torch.set_num_threads(1)  # one thread per process: these small tensors gain nothing from a second


# ----------------------------------------------------------------------------------------------------------
# The table, the figure and the run
# ----------------------------------------------------------------------------------------------------------
def _pm(mean: float, error: float, decimals: int = 3) -> str:
    return f"{mean:.{decimals}f} ± {error:.{decimals}f}"


def toy2d_table(results: Mapping[str, Any]) -> str:
    """The Markdown tables of :func:`run_toy2d` from its ``results.json`` contents: the held-out log-likelihood
    per data set and model, then every number of each fit."""
    settings = results["settings"]
    models = list(MODELS)
    lines = [f"Held-out log-likelihood in nats per point (mean ± standard error over {settings['test_points']:,} "
             f"held-out points; exact for every model, the residual blocks' log-determinants by the 2x2 Jacobian), "
             f"after {settings['steps']:,} Adam steps of batch {settings['batch_size']} on "
             f"{settings['train_points']:,} training points (seed {results['seed']}"
             f"{', quick' if results['quick'] else ''}). The data's own E[log p] = -H(p) is the ceiling.", "",
             "| data set | data E[log p] | Gaussian | " + " | ".join(MODELS[m] for m in models) + " |",
             "|---|---:|---:|" + "---:|" * len(models)]
    for name, record in results["datasets"].items():
        cells = [_pm(record["data"]["expected_log_prob"], record["data"]["standard_error"]),
                 _pm(record["gaussian"]["log_likelihood"], record["gaussian"]["standard_error"])]
        cells += [_pm(record["models"][m]["log_likelihood"], record["models"][m]["standard_error"]) for m in models]
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    first = next(iter(results["datasets"].values()))["models"]
    lines += ["", "Each fit: parameters; KL(p ‖ q) = E_p[log p − log q] from the paired held-out points; the "
              "training-time estimator's held-out log-likelihood and its difference from the exact one (± standard "
              "error over batches of " f"{settings['estimate_batch']}; the series' bias bound); the density's "
              f"integral on the grid of [-{settings['integral_limit']:g}, {settings['integral_limit']:g}]² (cells "
              f"of side {settings['grid_spacing']:g}); training seconds (one CPU thread).", "",
              "Parameters: " + ", ".join(f"{MODELS[m]} {first[m]['parameters']:,}" for m in models) + ".", "",
              "| data set | model | KL(p ‖ q) | estimator's LL | estimate − exact | ∫ q on the grid | train s |",
              "|---|---|---:|---:|---:|---:|---:|"]
    for name, record in results["datasets"].items():
        lines.append(f"| {name} | data p | — | — | — | {record['data']['grid_integral']:.4f} | — |")
        for m in models:
            fit = record["models"][m]
            estimate = fit.get("estimate")
            if estimate is None:
                estimated, difference = "(exact)", "—"
            else:
                estimated = f"{estimate['log_likelihood']:.3f}"
                difference = _pm(estimate["minus_exact"], estimate["standard_error"], 4)
                if estimate.get("series_bias_bound") is not None:
                    difference += f" (bias ≤ {estimate['series_bias_bound']:.3f})"
            lines.append(f"| {name} | {MODELS[m]} | {_pm(fit['kl'], fit['kl_standard_error'])} | {estimated} | "
                         f"{difference} | {fit['grid_integral']:.4f} | {fit['train_seconds']:.0f} |")
    return "\n".join(lines) + "\n"


def toy2d_figure(results: Mapping[str, Any], data_grids: Mapping[str, np.ndarray],
                 model_grids: Mapping[tuple[str, str], np.ndarray], limit: float) -> Figure:
    """A row per data set: the data's density, then each model's, on ``[-limit, limit]^2``, each titled with its
    held-out log-likelihood (the data's: :math:`\\mathbb E_p[\\log p]`)."""
    rows = []
    for name, record in results["datasets"].items():
        panels = [(f"{name}: data p\nE log p = {record['data']['expected_log_prob']:.3f}", data_grids[name])]
        for m in MODELS:
            fit = record["models"][m]
            panels.append((f"{MODELS[m]}\nLL {_pm(fit['log_likelihood'], fit['standard_error'])}",
                           model_grids[name, m]))
        rows.append(panels)
    settings = results["settings"]
    return plots.density_grid(
        rows, limit, xlabel="$x_1$", ylabel="$x_2$",
        title=f"2-D densities (left) and flows of matched size fitted by maximum likelihood, {settings['steps']:,} "
              f"steps; held-out log-likelihood in nats per point (exact)")


def _fit_record(outcome: FitOutcome, data_log_prob: Tensor, settings: Toy2DSettings) -> dict[str, Any]:
    log_q = torch.from_numpy(outcome.test_log_prob)
    record: dict[str, Any] = {"parameters": outcome.parameters}
    record["log_likelihood"], record["standard_error"] = _mean_and_error(log_q)
    # KL(p || q) = E_p[log p - log q], paired on the held-out points
    record["kl"], record["kl_standard_error"] = _mean_and_error(data_log_prob - log_q)
    record["estimator"] = outcome.estimator
    if outcome.estimate_minus_exact is not None:
        differences = torch.from_numpy(outcome.estimate_minus_exact)
        minus_exact, error = _mean_and_error(differences)
        record["estimate"] = {"log_likelihood": record["log_likelihood"] + minus_exact, "minus_exact": minus_exact,
                              "standard_error": error, "batches": len(differences),
                              "batch_size": settings.estimate_batch, "series_bias_bound": outcome.series_bias_bound}
    record["grid_integral"] = _grid_integral(torch.from_numpy(outcome.grid_log_density), settings.grid_spacing)
    record.update(steps=outcome.steps, train_seconds=round(outcome.train_seconds, 2),
                  final_training_loss=outcome.final_training_loss)
    return record


def run_toy2d(out: str | Path, *, quick: bool = False, seed: int = 0, overwrite: bool = False,
              workers: int | None = None, log: Callable[[str], None] = print) -> Path:
    r"""Fit an i-ResNet, a Residual Flow and a RealNVP of matched parameter counts to each 2-D toy density by
    maximum likelihood (module docstring) and write into ``out``:

    * ``results.json``: per data set the data's :math:`\mathbb E_p[\log p]` on the held-out points and the
      integral of its density on the grid; the Gaussian floor's held-out log-likelihood; per model its
      parameters, exact held-out log-likelihood, :math:`\mathrm{KL}(p\,\Vert\,q)` (each ± standard error), for
      the residual models the training-time estimate and its difference from the exact value, the grid
      integral, the training seconds and final loss; the settings, ``seed``, ``quick``, ``workers``, seconds;
    * ``table.md``: the tables of :func:`toy2d_table`;
    * ``densities.png``: :func:`toy2d_figure`.

    ``quick`` uses :data:`QUICK` (seconds), else :data:`SETTINGS`. Every fit has seeds of its own (data,
    initialisation, batches, probes) derived from ``seed``, so the numbers do not depend on ``workers``: forked
    processes of one thread (default: 2 on a machine with two or more cores, none for a quick run; 0 or 1:
    here, in order). ``log`` receives a line per finished fit and the tables. ``out`` is locked while this runs
    (:func:`dgmlab.rundir.lock_run`), and one that holds any of the output files is refused with
    :class:`~dgmlab.errors.RunExistsError` unless ``overwrite``, which replaces them once the fits are done.
    Returns ``out``."""
    out = Path(out)
    seed = check_int(seed, "seed", minimum=0, owner="run_toy2d")
    settings = QUICK if quick else SETTINGS
    started = time.perf_counter()
    with lock_run(out):
        refuse_or_clear_results(out, OUTPUT_FILES, "toy2d", overwrite=overwrite, clear=False)
        jobs = [(dataset, name, settings, seed) for name in MODELS for dataset in settings.datasets]
        if workers is None:
            workers = 0 if quick else default_workers(True, len(jobs))

        def report(_: int, outcome: FitOutcome) -> None:
            mean, error = _mean_and_error(torch.from_numpy(outcome.test_log_prob))
            log(f"{outcome.dataset} {MODELS[outcome.model]}: held-out LL {_pm(mean, error)} nats "
                f"({outcome.steps:,} steps, {outcome.train_seconds:.1f} s)")

        with cpu_threads(1):  # the fits run here: one thread, as in a worker
            finished = run_in_processes(_run_fit, jobs, workers, on_result=report, initializer=_worker_start,
                                        what="run_toy2d")
            outcomes = {(o.dataset, o.model): o for o in finished}
            datasets: dict[str, Any] = {}
            data_grids = {}
            for name in settings.datasets:
                distribution = toy2d_dataset(name)
                train, test = _data(name, settings, seed)
                data_log_prob = distribution.log_prob(test.double())
                grid = _on_grid(distribution.log_prob, settings)
                data_grids[name] = _figure_crop(grid, settings)
                expected, error = _mean_and_error(data_log_prob)
                gaussian, gaussian_error = _mean_and_error(gaussian_log_likelihood(train, test))
                datasets[name] = {
                    "data": {"expected_log_prob": expected, "standard_error": error,
                             "grid_integral": _grid_integral(grid, settings.grid_spacing)},
                    "gaussian": {"log_likelihood": gaussian, "standard_error": gaussian_error, "parameters": 5},
                    "models": {m: _fit_record(outcomes[name, m], data_log_prob, settings) for m in MODELS},
                }
        model_grids = {key: _figure_crop(torch.from_numpy(o.grid_log_density), settings)
                       for key, o in outcomes.items()}
        results: dict[str, Any] = {
            "experiment": "i-ResNet, Residual Flow and RealNVP of matched parameter counts fitted by maximum "
                          "likelihood to 2-D toy densities; exact held-out log-likelihoods",
            "units": {"log_likelihood": "nats per point", "kl": "nats", "expected_log_prob": "nats per point",
                      "grid_integral": "probability", "seconds": "s"},
            "quick": quick, "seed": seed, "workers": workers,
            "settings": {key: (list(value) if isinstance(value, tuple) else value)
                         for key, value in asdict(settings).items()},
            "datasets": datasets,
        }
        table = toy2d_table(results)
        figure = toy2d_figure(results, data_grids, model_grids, settings.figure_limit)
        results["seconds"] = round(time.perf_counter() - started, 1)
        refuse_or_clear_results(out, OUTPUT_FILES, "toy2d", overwrite=overwrite, clear=True)
        plots.save_figure(figure, out / "densities.png")
        atomic_write_text(out / "table.md", table)
        atomic_write_text(out / "results.json", json.dumps(results, indent=2) + "\n")
    log(table + f"\n{len(jobs)} fits in {results['seconds']:.0f} s; written to {out}")
    return out
