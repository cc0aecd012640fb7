"""Runs driven by a configuration: train (or resume), evaluate, sample, and the standard figures.

These functions are what ``dgmlab train``, ``dgmlab eval`` and ``dgmlab sample`` call.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from torch import nn

from dgmlab import plots
from dgmlab.checkpoint import atomic_write_text, load_weights
from dgmlab.config import (
    ConfigError,
    DataBundle,
    apply_overrides,
    build_data,
    build_model_from_config,
    build_objective,
    build_settings,
    load_config,
)
from dgmlab.evaluate import complete_images, importance_weighted_nll, mean_pixel_nll, samples_per_class
from dgmlab.models import AE, VAE, count_parameters
from dgmlab.objectives import negative_elbo
from dgmlab.train import History, evaluate, fit, resolve_device


def _read_history(run_dir: Path) -> list[dict[str, Any]]:
    path = run_dir / "metrics.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()] if path.exists() else []


def prepare(config: Mapping[str, Any]) -> tuple[nn.Module, Any, DataBundle]:
    """Build model, objective and data of a configuration, seeding the model's initialisation."""
    settings = build_settings(config)
    data = build_data(config, seed=settings.seed)
    torch.manual_seed(settings.seed)
    model = build_model_from_config(config, input_dim=data.input_dim)
    if config.get("model", {}).get("init_output_bias", False):
        no_bias = ConfigError(f"[model] init_output_bias = true: the model {config['model'].get('name')!r} has no "
                              f"output bias to initialise from the data; remove the key")
        if not hasattr(model, "init_output_bias"):
            raise no_bias
        # the mean training example (grey levels for the dynamic view: the mean of its binarizations)
        examples = data.train.tensors[0]
        try:
            model.init_output_bias(examples.reshape(len(examples), -1).mean(0))
        except NotImplementedError:
            raise no_bias from None
    objective = build_objective(config)
    return model, objective, data


def train_run(config_path: str | Path, out: str | Path | None = None, overrides: list[str] | None = None) -> Path:
    """Train the model of a TOML config into a run directory and write its figures; returns the directory."""
    config = apply_overrides(load_config(config_path), overrides or [])
    config.setdefault("name", Path(config_path).stem)
    run_dir = Path(out) if out is not None else Path("runs") / str(config["name"])
    model, objective, data = prepare(config)
    settings = build_settings(config)
    fit(model, objective, data.train, data.test, settings, run_dir=run_dir, config=config,
        description=str(config["name"]))
    write_figures(model, data, run_dir)
    return run_dir


def resume_run(run_dir: str | Path, epochs: int | None = None, device: str | None = None,
               precision: str | None = None, progress: bool = True) -> Path:
    """Continue a run from its last checkpoint, up to ``epochs`` in total (default: its configured epochs),
    optionally on another ``device`` or in another training ``precision`` (``"fp32"`` or ``"bf16"``)."""
    run_dir = Path(run_dir)
    config_path = run_dir / "config.json"
    if not config_path.is_file():
        raise ConfigError(f"{run_dir} is not a run directory (no config.json); pass the --out folder of a run")
    config = load_config(config_path)
    train_table = config.setdefault("train", {})
    if epochs is not None:
        train_table["epochs"] = epochs
    if device is not None:
        train_table["device"] = device
    if precision is not None:
        train_table["precision"] = precision
    train_table["progress"] = progress
    model, objective, data = prepare(config)
    settings = build_settings(config)
    fit(model, objective, data.train, data.test, settings, run_dir=run_dir, config=config, resume=True,
        description=str(config.get("name", run_dir.name)))
    write_figures(model, data, run_dir)
    return run_dir


def load_run(run_dir: str | Path, device: str = "cpu") -> tuple[nn.Module, dict[str, Any]]:
    """The trained model of a run directory (weights from its checkpoint) and its configuration."""
    run_dir = Path(run_dir)
    if not (run_dir / "config.json").is_file():
        raise ConfigError(f"{run_dir} is not a run directory (no config.json); pass the --out folder of a run")
    config = load_config(run_dir / "config.json")
    input_dim = config.get("model", {}).get("input_dim")
    if input_dim is None:
        input_dim = 3 if config.get("data", {}).get("name") == "torus" else 784
    model = build_model_from_config(config, input_dim=input_dim)
    load_weights(run_dir / "checkpoint", model)
    model.to(resolve_device(device)).eval()
    return model, config


def evaluate_run(run_dir: str | Path, iw_samples: int = 0, device: str = "auto") -> dict[str, Any]:
    """Test-split metrics of a trained run; with a VAE also the negative ELBO and, if ``iw_samples`` > 0,
    the importance-weighted NLL bound ``-L_k`` in nats. Writes ``eval.json`` into the run directory."""
    run_dir = Path(run_dir)
    model, config = load_run(run_dir, device=device)
    settings = build_settings(config)
    data_table = dict(config.get("data", {}))
    if data_table.get("name", "mnist") == "mnist":
        data_table["test"] = True  # a run may have trained without test evaluation
    data = build_data({**config, "data": data_table}, seed=settings.seed)
    objective = build_objective(config)
    dev = next(model.parameters()).device
    results: dict[str, Any] = {"objective": config.get("objective", {}).get("name"),
                               "test": evaluate(model, objective, data.test, dev, seed=settings.seed),
                               "parameters": count_parameters(model)}
    if isinstance(model, VAE):
        results["test_neg_elbo_nats"] = evaluate(
            model, lambda m, b: negative_elbo(m, b[0]), data.test, dev, seed=settings.seed)["loss"]
        if iw_samples > 0:
            results[f"test_nll_iw{iw_samples}_nats"] = importance_weighted_nll(
                model, data.test_x, num_samples=iw_samples, seed=settings.seed)
        results["likelihood"] = model.likelihood
    atomic_write_text(run_dir / "eval.json", json.dumps(results, indent=2) + "\n")
    return results


def sample_run(run_dir: str | Path, n: int = 64, seed: int = 0, out: str | Path | None = None,
               label: int | None = None) -> Path:
    """Save a grid of ``n`` samples of a trained run's model as a PNG; returns its path.

    For a class-conditional model, ``label`` picks the class; without it the grid cycles through the classes
    (row by row). An unconditional model given a ``label`` is an error."""
    run_dir = Path(run_dir)
    model, config = load_run(run_dir)
    if not hasattr(model, "sample"):
        raise ConfigError(f"model {config['model']['name']!r} cannot sample (it has no prior); "
                          f"train a VAE or a density model to draw samples")
    num_classes = int(getattr(model, "num_classes", 0) or 0)
    generator = torch.Generator().manual_seed(seed)
    nrow = int(round(n**0.5)) or 1
    name = config.get("name", run_dir.name)
    if num_classes:
        if label is not None and not 0 <= label < num_classes:
            raise ConfigError(f"--class must be in 0..{num_classes - 1} for this model, got {label}")
        labels = (torch.full((n,), label, dtype=torch.long) if label is not None
                  else torch.arange(n) // max(1, -(-n // num_classes)) % num_classes)
        images = model.sample(n, y=labels, generator=generator).cpu()
        title = (f"{n} samples of class {label}, {name}" if label is not None
                 else f"{n} samples, classes 0-{num_classes - 1}, {name}")
    else:
        if label is not None:
            raise ConfigError(f"model {config['model']['name']!r} is not class-conditional; drop --class")
        images = model.sample(n, generator=generator).cpu()
        title = f"{n} samples from the model, {name}"
    side = int(round(images[0].numel() ** 0.5))
    fig = plots.image_grid(images.reshape(n, side, side).float(), nrow=nrow, title=title)
    return plots.save_figure(fig, Path(out) if out is not None else run_dir / "samples.png")


def write_figures(model: nn.Module, data: DataBundle, run_dir: str | Path) -> list[Path]:
    """The standard figures of a trained image model: loss curves, reconstructions, latent codes, and for a
    VAE samples from the prior; the 2-D latent manifold when the code is 2-D. Returns the PNG paths."""
    run_dir = Path(run_dir)
    written = []
    history = _read_history(run_dir)
    if history:
        written.append(plots.save_figure(plots.loss_curves(history, title=f"Loss per epoch, {run_dir.name}"),
                                         run_dir / "loss_curves.png"))
    if data.kind == "images" and data.test_x is not None and hasattr(model, "log_prob") and hasattr(model, "sample"):
        return written + density_figures(model, data, run_dir)
    if data.kind != "images" or data.test_x is None or not isinstance(model, (AE, VAE)):
        return written
    model.eval()
    device = next(model.parameters()).device
    x = data.test_x[:10].to(device)
    if isinstance(model, VAE):
        mean, _ = model.encode(x)
        recon = model.decode_mean(mean)
    else:
        recon = model(x).reconstruction
    side = int(round(x.shape[-1] ** 0.5))
    labels = data.test_labels[:10].tolist() if data.test_labels is not None else None
    written.append(plots.save_figure(
        plots.reconstructions(x.cpu().reshape(-1, side, side), recon.cpu().reshape(-1, side, side), labels=labels,
                              title="Test digits and their reconstructions (posterior mean)"),
        run_dir / "reconstructions.png"))
    codes = []
    for start in range(0, min(len(data.test_x), 5000), 1000):
        batch = data.test_x[start:start + 1000].to(device)
        codes.append((model.encode(batch)[0] if isinstance(model, VAE) else model.encode(batch)).cpu())
    code = torch.cat(codes)
    labels_all = data.test_labels[: len(code)] if data.test_labels is not None else torch.zeros(len(code))
    written.append(plots.save_figure(plots.latent_scatter(code, labels_all, title="Test-set codes by digit"),
                                     run_dir / "latent_scatter.png"))
    code_dim = model.latent_dim if isinstance(model, VAE) else model.code_dim
    if code_dim == 2:
        grid_values, points = plots.latent_grid_points(n=8)
        decoded = (model.decode_mean(points.to(device)) if isinstance(model, VAE) else model.decode(points.to(device)))
        written.append(plots.save_figure(
            plots.latent_manifold(decoded.cpu().reshape(8, 8, side, side), grid_values,
                                  title="Decoded 2-D latent grid over [-2, 2]^2"),
            run_dir / "latent_manifold.png"))
    if isinstance(model, VAE):
        generator = torch.Generator().manual_seed(0)
        samples = model.sample(64, generator=generator).cpu().reshape(64, side, side)
        written.append(plots.save_figure(plots.image_grid(samples, nrow=8, title="64 samples from the prior"),
                                         run_dir / "samples.png"))
    return written


@torch.no_grad()
def density_figures(model: nn.Module, data: DataBundle, run_dir: Path, count: int = 16,
                    test_images: int = 500) -> list[Path]:
    """Figures of a trained density model (``log_prob`` and ``sample``): samples (per class for a conditional
    model), the per-pixel NLL of test images as a heat map, and for an image model completions of test digits
    from their top half. Sampling runs in evaluation mode; returns the PNG paths."""
    model.eval()
    device = next(model.parameters()).device
    num_classes = int(getattr(model, "num_classes", 0) or 0)
    generator = torch.Generator(device=device).manual_seed(0)
    x = data.test_x[:test_images].to(device)
    y = data.test_labels[: len(x)].to(device) if num_classes and data.test_labels is not None else None
    side = int(round(x[0].numel() ** 0.5))
    written = []
    if num_classes:
        samples, _ = samples_per_class(model, 2, generator=generator)
        title = f"Samples, two per class (0-{num_classes - 1}, row by row)"
    else:
        samples = model.sample(count, generator=generator)
        title = f"{count} samples from the model"
    written.append(plots.save_figure(plots.image_grid(samples.cpu().reshape(-1, side, side).float(),
                                                      nrow=num_classes or int(count**0.5), title=title),
                                     run_dir / "samples.png"))
    which = ""
    if hasattr(model, "log_prob_per_pixel"):
        per_pixel = mean_pixel_nll(model, x, y)
    else:  # an MLP over flattened images: the per-variable terms of log p(x), -BCE of each conditional
        masks = int(getattr(model, "num_masks", 1))
        # a mixture of K masks has no per-pixel decomposition; show its first component's
        logits = model(x, mask_index=0) if masks > 1 else model(x)
        per_pixel = torch.nn.functional.binary_cross_entropy_with_logits(logits, x, reduction="none").mean(0)
        which = f" (mask 0 of the {masks}-mask mixture)" if masks > 1 else ""
    written.append(plots.save_figure(
        plots.pixel_nll_heatmap(per_pixel.cpu().reshape(side, side),
                                title=f"Per-pixel NLL, mean over {len(x)} test images{which}"),
        run_dir / "pixel_nll.png"))
    if hasattr(model, "complete"):
        originals = x[:8]
        completed = complete_images(model, originals, side // 2, samples=2, y=None if y is None else y[:8],
                                    generator=generator)
        written.append(plots.save_figure(
            plots.completions(originals.cpu(), completed.cpu(), side // 2,
                              title="Test digits completed from their top half (two samples each)"),
            run_dir / "completions.png"))
    return written


def history_of(run_dir: str | Path) -> History:
    """The :class:`History` recorded in a run directory's ``metrics.jsonl``."""
    return History(records=_read_history(Path(run_dir)))
