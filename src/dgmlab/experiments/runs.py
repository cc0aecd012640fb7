"""Runs driven by a configuration: train (or resume), evaluate, sample, and the standard figures.

These functions are what ``dgmlab train``, ``dgmlab eval`` and ``dgmlab sample`` call.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from torch import nn

from dgmlab import distributed, plots
from dgmlab.checkpoint import atomic_write_text, load_weights
from dgmlab.config import (
    ConfigError,
    DataBundle,
    DataSpec,
    apply_overrides,
    build_data,
    build_model_from_config,
    build_objective,
    build_settings,
    load_config,
    recorded_data_spec,
)
from dgmlab.errors import CapabilityError
from dgmlab.evaluate import complete_images, importance_weighted_nll, mean_nll_per_dimension, samples_per_class
from dgmlab.models import count_parameters
from dgmlab.models.protocols import (
    Autoencoder,
    Completer,
    DataInitialized,
    DensityModel,
    EstimatedDensity,
    LatentVariableModel,
    PerDimensionDensity,
    Sampler,
    context_classes,
    decode_representation,
    representation,
    representation_dim,
    samples_at_temperature,
)
from dgmlab.objectives import negative_elbo
from dgmlab.rundir import check_new_run, check_unlocked, refuse_existing_run
from dgmlab.train import History, evaluate, fit, resolve_device
from dgmlab.utils import device_of, eval_mode


def _read_history(run_dir: Path) -> list[dict[str, Any]]:
    path = run_dir / "metrics.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()] if path.exists() else []


def prepare(config: dict[str, Any]) -> tuple[nn.Module, Any, DataBundle]:
    """Build the model, objective and data of a configuration: the model's initialisation is seeded, and a
    model with a data-dependent initialisation (:class:`~dgmlab.models.protocols.DataInitialized`) gets the
    training examples. Records the data's :class:`~dgmlab.config.DataSpec` in ``config["data_spec"]``, so the
    run's ``config.json`` says what its examples are."""
    settings = build_settings(config)
    data = build_data(config, seed=settings.seed)
    config["data_spec"] = data.spec.to_json()
    torch.manual_seed(settings.seed)
    model = build_model_from_config(config, input_dim=data.input_dim)
    if isinstance(model, DataInitialized):
        model.initialize_from_data(data.train_examples)
    objective = build_objective(config)
    return model, objective, data


def _check_early(run_dir: Path, *, overwrite: bool, new: bool) -> None:
    """The checks before any data is loaded. The lock is probed by rank 0 alone: under torchrun the other
    ranks would find it held by rank 0 once training starts (or collide with rank 0's own probe), and rank 0
    refuses a run in use for the whole group (the trainer then waits for it at its first barrier)."""
    if distributed.current().is_main:
        if new:
            check_new_run(run_dir, overwrite=overwrite)
        else:
            check_unlocked(run_dir)
    elif new and not overwrite:
        refuse_existing_run(run_dir)


def train_run(config_path: str | Path, out: str | Path | None = None, overrides: list[str] | None = None,
              overwrite: bool = False) -> Path:
    """Train the model of a TOML config into a run directory (``out``, default ``runs/<config name>``) and
    write its figures; returns the directory. A directory that already holds a run is refused
    (:class:`~dgmlab.errors.RunExistsError`) unless ``overwrite`` replaces it, and one in use by another
    process is refused (:class:`~dgmlab.errors.RunLockedError`), both before any data is loaded."""
    config = apply_overrides(load_config(config_path), overrides or [])
    config.setdefault("name", Path(config_path).stem)
    run_dir = Path(out) if out is not None else Path("runs") / str(config["name"])
    _check_early(run_dir, overwrite=overwrite, new=True)
    model, objective, data = prepare(config)
    settings = build_settings(config)
    fit(model, objective, data.train, data.test, settings, run_dir=run_dir, config=config,
        description=str(config["name"]), overwrite=overwrite)
    if distributed.current().is_main:
        write_figures(model, data, run_dir)
    return run_dir


def resume_run(run_dir: str | Path, epochs: int | None = None, device: str | None = None,
               precision: str | None = None, progress: bool = True, compile: bool | None = None) -> Path:
    """Continue a run from its last checkpoint (inside an epoch, if it was written there), up to ``epochs``
    in total (default: its configured epochs), optionally on another ``device``, in another training
    ``precision`` (``"fp32"`` or ``"bf16"``) or with compiled steps switched on or off (``compile``). A run
    in use by another process is refused (:class:`~dgmlab.errors.RunLockedError`)."""
    run_dir = Path(run_dir)
    config_path = run_dir / "config.json"
    if not config_path.is_file():
        raise ConfigError(f"{run_dir} is not a run directory (no config.json); pass the --out folder of a run")
    _check_early(run_dir, overwrite=False, new=False)
    config = load_config(config_path)
    train_table = config.setdefault("train", {})
    if epochs is not None:
        train_table["epochs"] = epochs
    if device is not None:
        train_table["device"] = device
    if precision is not None:
        train_table["precision"] = precision
    if compile is not None:
        train_table["compile"] = compile
    train_table["progress"] = progress
    model, objective, data = prepare(config)
    settings = build_settings(config)
    fit(model, objective, data.train, data.test, settings, run_dir=run_dir, config=config, resume=True,
        description=str(config.get("name", run_dir.name)))
    if distributed.current().is_main:
        write_figures(model, data, run_dir)
    return run_dir


def load_run(run_dir: str | Path, device: str = "cpu") -> tuple[nn.Module, dict[str, Any]]:
    """The trained model of a run directory (weights from its checkpoint) and its configuration."""
    run_dir = Path(run_dir)
    if not (run_dir / "config.json").is_file():
        raise ConfigError(f"{run_dir} is not a run directory (no config.json); pass the --out folder of a run")
    config = load_config(run_dir / "config.json")
    spec = recorded_data_spec(config)
    model = build_model_from_config(config, input_dim=spec.dims)
    load_weights(run_dir / "checkpoint", model)
    model.to(resolve_device(device)).eval()
    return model, config


#: The largest example size for which :func:`evaluate_run` adds the exact log-density of a model whose
#: ``log_prob`` is an estimate (:class:`~dgmlab.models.protocols.EstimatedDensity`) without being asked: the
#: exact log-determinant costs one backward pass per dimension and block.
EXACT_EVAL_MAX_DIMENSION = 64


def evaluate_run(run_dir: str | Path, iw_samples: int = 0, device: str = "auto",
                 exact_logdet: bool | None = None) -> dict[str, Any]:
    """Test-split metrics of a trained run: the mean of every term of its objective; for a latent-variable
    model also the negative ELBO and, if ``iw_samples`` > 0, the importance-weighted NLL bound ``-L_k``, in
    nats; for a density model whose objective reports bits per dimension (the ``nll`` objective) also
    ``test_bits_per_dim`` (of the 8-bit images for a flow on dequantized images). For a model whose
    ``log_prob`` is an estimate (an invertible residual network), ``log_prob_estimator`` says which, and
    ``test_exact`` holds the same metrics with the exact log-determinant: by default when one example has at most
    :data:`EXACT_EVAL_MAX_DIMENSION` values; ``exact_logdet=True`` forces it (a CapabilityError for a model with
    no estimate), ``False`` skips it. Writes ``eval.json`` into the run directory."""
    run_dir = Path(run_dir)
    model, config = load_run(run_dir, device=device)
    if iw_samples > 0 and not isinstance(model, LatentVariableModel):
        raise CapabilityError(f"--iw-samples estimates the NLL of a latent-variable model; the model "
                              f"{config['model']['name']!r} is not one (a density model's test nll is exact already)")
    if exact_logdet and not isinstance(model, EstimatedDensity):
        raise CapabilityError(f"--exact-logdet computes the exact log-likelihood of a flow whose log-determinant is "
                              f"estimated (iresnet, residual_flow); the model {config['model']['name']!r} has no "
                              f"estimate to replace: drop --exact-logdet")
    settings = build_settings(config)
    data_table = dict(config.get("data", {}))
    if data_table.get("name", "mnist") == "mnist":
        data_table["test"] = True  # a run may have trained without test evaluation
    data = build_data({**config, "data": data_table}, seed=settings.seed)
    objective = build_objective(config)
    dev = device_of(model)
    results: dict[str, Any] = {"objective": config.get("objective", {}).get("name"),
                               "test": evaluate(model, objective, data.test, dev, seed=settings.seed),
                               "parameters": count_parameters(model), "data_spec": data.spec.to_json()}
    if "bits_per_dim" in results["test"]:
        # a density model's test NLL in bits per dimension (for dequantized 8-bit images: the 8-bit bound)
        results["test_bits_per_dim"] = results["test"]["bits_per_dim"]
    if isinstance(model, EstimatedDensity):
        results["log_prob_estimator"] = model.log_prob_estimator()
        if exact_logdet is None:
            exact_logdet = model.exact_dimension() <= EXACT_EVAL_MAX_DIMENSION
        if exact_logdet and results["log_prob_estimator"] != "exact":
            settings_before = model.estimator_settings()
            model.set_estimator("exact")
            try:
                results["test_exact"] = evaluate(model, objective, data.test, dev, seed=settings.seed)
            finally:
                model.set_estimator(**settings_before)
            if "bits_per_dim" in results["test_exact"]:
                results["test_bits_per_dim_exact"] = results["test_exact"]["bits_per_dim"]
    if isinstance(model, LatentVariableModel):
        results["test_neg_elbo_nats"] = evaluate(
            model, lambda m, b: negative_elbo(m, b[0]), data.test, dev, seed=settings.seed)["loss"]
        if iw_samples > 0:
            results[f"test_nll_iw{iw_samples}_nats"] = importance_weighted_nll(
                model, data.test_x, num_samples=iw_samples, seed=settings.seed)
    if distributed.current().is_main:
        atomic_write_text(run_dir / "eval.json", json.dumps(results, indent=2) + "\n")
    return results


def _as_images(x: torch.Tensor, spec: DataSpec) -> torch.Tensor:
    """Examples ``[N, ...]`` as grey images ``[N, H, W]`` (the first channel) for the figures."""
    if spec.image_shape is None:
        raise CapabilityError(f"the data are {spec.kind}, not images")
    return x.detach().cpu().float().reshape(len(x), *spec.image_shape)[:, 0]


def sample_run(run_dir: str | Path, n: int = 64, seed: int = 0, out: str | Path | None = None,
               label: int | None = None, temperature: float | None = None) -> Path:
    r"""Save ``n`` samples of a trained run's model as a PNG (a grid of images, or a 2-D or 3-D scatter of points);
    returns its path.

    For a class-conditional model, ``label`` picks the class; without it the grid cycles through the classes
    (row by row). An unconditional model given a ``label`` is an error. ``temperature`` :math:`T \ge 0`, for a
    model that samples at a temperature (a flow, :math:`z = T\epsilon`), scales the base noise; other models
    refuse it."""
    run_dir = Path(run_dir)
    model, config = load_run(run_dir)
    spec = recorded_data_spec(config)
    if not isinstance(model, Sampler):
        raise CapabilityError(f"model {config['model']['name']!r} cannot sample (it has no prior); "
                              f"train a VAE or a density model to draw samples")
    options: dict[str, float] = {}
    if temperature is not None:
        if not samples_at_temperature(model):
            raise CapabilityError(f"model {config['model']['name']!r} has no sampling temperature (flows have one: "
                                  f"z = T * noise); drop --temperature")
        if not temperature >= 0:
            raise ConfigError(f"--temperature must be >= 0 (1 samples the model itself), got {temperature}")
        options["temperature"] = float(temperature)
    num_classes = context_classes(model)
    generator = torch.Generator(device=device_of(model)).manual_seed(seed)
    name = config.get("name", run_dir.name)
    labels = None
    if num_classes:
        if label is not None and not 0 <= label < num_classes:
            raise ConfigError(f"--class must be in 0..{num_classes - 1} for this model, got {label}")
        labels = (torch.full((n,), label, dtype=torch.long) if label is not None
                  else torch.arange(n) // max(1, -(-n // num_classes)) % num_classes)
        title = (f"{n} samples of class {label}, {name}" if label is not None
                 else f"{n} samples, classes 0-{num_classes - 1}, {name}")
    else:
        if label is not None:
            raise ConfigError(f"model {config['model']['name']!r} is not class-conditional; drop --class")
        title = f"{n} samples from the model, {name}"
    if options:
        title += f", T = {options['temperature']:g}"
    samples = model.sample(n, generator=generator, context=labels, **options).cpu()
    if spec.kind == "points":
        if spec.example_shape not in ((2,), (3,)):
            raise CapabilityError(f"dgmlab sample draws points in 2-D or 3-D; this run's points have shape "
                                  f"{list(spec.example_shape)}: call model.sample(n) from Python instead")
        draw = plots.point_cloud_2d if spec.example_shape == (2,) else plots.point_cloud_3d
        fig = draw(samples.reshape(n, -1).numpy(), title=title)
    else:
        fig = plots.image_grid(_as_images(samples, spec), nrow=int(round(n**0.5)) or 1, title=title)
    return plots.save_figure(fig, Path(out) if out is not None else run_dir / "samples.png")


def write_figures(model: nn.Module, data: DataBundle, run_dir: str | Path) -> list[Path]:
    """The standard figures of a trained model, chosen by what it can do: loss curves; for image data, a
    density model's :func:`density_figures`, or an encoder's :func:`autoencoder_figures`. Returns the PNG paths."""
    run_dir = Path(run_dir)
    written = []
    history = _read_history(run_dir)
    if history:
        written.append(plots.save_figure(plots.loss_curves(history, title=f"Loss per epoch, {run_dir.name}"),
                                         run_dir / "loss_curves.png"))
    if data.kind != "images" or data.test_x is None:
        return written
    if isinstance(model, DensityModel):
        return written + density_figures(model, data, run_dir)
    if isinstance(model, (LatentVariableModel, Autoencoder)):
        return written + autoencoder_figures(model, data, run_dir)
    return written


@torch.no_grad()
def autoencoder_figures(model: nn.Module, data: DataBundle, run_dir: Path) -> list[Path]:
    """Figures of a model with an encoder (an autoencoder or a latent-variable model) on image data: test
    digits and their reconstructions from the point code, the codes of 5,000 test digits by label, the decoded
    grid when the code is 2-D, and samples when the model can sample. In evaluation mode; returns PNG paths."""
    written = []
    spec = data.spec
    with eval_mode(model):
        device = device_of(model)
        x = data.test_x[:10].to(device)
        recon = decode_representation(model, representation(model, x))
        labels = data.test_labels[:10].tolist() if data.test_labels is not None else None
        written.append(plots.save_figure(
            plots.reconstructions(_as_images(x, spec), _as_images(recon, spec), labels=labels,
                                  title="Test digits and their reconstructions (from the point code)"),
            run_dir / "reconstructions.png"))
        code = torch.cat([representation(model, data.test_x[start:start + 1000].to(device)).cpu()
                          for start in range(0, min(len(data.test_x), 5000), 1000)])
        labels_all = data.test_labels[: len(code)] if data.test_labels is not None else torch.zeros(len(code))
        written.append(plots.save_figure(plots.latent_scatter(code, labels_all, title="Test-set codes by digit"),
                                         run_dir / "latent_scatter.png"))
        if representation_dim(model) == 2:
            grid_values, points = plots.latent_grid_points(n=8)
            decoded = _as_images(decode_representation(model, points.to(device)), spec)
            written.append(plots.save_figure(
                plots.latent_manifold(decoded.reshape(8, 8, *decoded.shape[1:]), grid_values,
                                      title="Decoded 2-D latent grid over [-2, 2]^2"),
                run_dir / "latent_manifold.png"))
        if isinstance(model, Sampler):
            samples = model.sample(64, generator=torch.Generator(device=device).manual_seed(0))
            written.append(plots.save_figure(plots.image_grid(_as_images(samples, spec), nrow=8,
                                                              title="64 samples from the prior"),
                                             run_dir / "samples.png"))
    return written


@torch.no_grad()
def density_figures(model: nn.Module, data: DataBundle, run_dir: Path, count: int = 16,
                    test_images: int = 500) -> list[Path]:
    """Figures of a trained density model on image data: samples (two per class for a conditional model), the
    mean NLL of each pixel over test images as a heat map (for a density that factorises over pixels), and
    completions of test digits from their top half (for a model that completes). In evaluation mode; returns
    the PNG paths."""
    spec = data.spec
    written = []
    with eval_mode(model):
        device = device_of(model)
        num_classes = context_classes(model)
        generator = torch.Generator(device=device).manual_seed(0)
        x = data.test_x[:test_images].to(device)
        y = data.test_labels[: len(x)].to(device) if num_classes and data.test_labels is not None else None
        if num_classes:
            samples, _ = samples_per_class(model, 2, generator=generator)
            title, nrow = f"Samples, two per class (0-{num_classes - 1}, row by row)", num_classes
        else:
            samples = model.sample(count, generator=generator)
            title, nrow = f"{count} samples from the model", int(count**0.5)
        written.append(plots.save_figure(plots.image_grid(_as_images(samples, spec), nrow=nrow, title=title),
                                         run_dir / "samples.png"))
        if isinstance(model, PerDimensionDensity):
            try:
                per_pixel = mean_nll_per_dimension(model, x, context=y)
            except CapabilityError:  # no per-pixel decomposition (a mixture over orderings)
                per_pixel = None
            if per_pixel is not None:
                heat = _as_images(per_pixel[None], spec)[0]
                written.append(plots.save_figure(
                    plots.pixel_nll_heatmap(heat, title=f"Per-pixel NLL, mean over {len(x)} test images "
                                                        f"(sum {float(heat.sum()):.2f} nats)"),
                    run_dir / "pixel_nll.png"))
        if isinstance(model, Completer) and x.dim() == 4:
            originals = x[:8]
            side = originals.shape[2]
            completed = complete_images(model, originals, side // 2, samples=2,
                                        context=None if y is None else y[:8], generator=generator)
            written.append(plots.save_figure(
                plots.completions(originals.cpu(), completed.cpu(), side // 2,
                                  title="Test digits completed from their top half (two samples each)"),
                run_dir / "completions.png"))
    return written


def history_of(run_dir: str | Path) -> History:
    """The :class:`History` recorded in a run directory's ``metrics.jsonl``."""
    return History(records=_read_history(Path(run_dir)))
