"""Run configurations: TOML files in, model + data + objective + settings out.

A configuration has four tables; every key has a default except ``model.name``::

    [model]                       # dgmlab.models.build_model(name, **rest)
    name = "vae"
    hidden_dims = [128, 32, 16, 4]
    likelihood = "gaussian"       # input_dim is taken from the data when omitted
    init_output_bias = false      # start the output biases at the training data's mean (its logit for
                                  # Bernoulli outputs): models with an init_output_bias method

    [data]
    name = "mnist"                # "mnist" or "torus"
    view = "grey"                 # grey | dynamic | static | threshold (MNIST)
    batch_size = 256
    limit = 0                     # use only the first N training examples (0: all)
    shape = "flat"                # flat ([N, 784], MLPs) | image ([N, 1, 28, 28], convolutions)
    labels = false                # put the class labels in every batch (class-conditional models)

    [objective]
    name = "pset_mse_kl"          # elbo | pset_mse_kl | reconstruction_mse | nll
    kl = "monte_carlo"            # analytic | monte_carlo
    coeff = 1e-4
    conditional = false           # nll only: the model's log_prob takes the labels, log p(x | y)

    [train]                       # dgmlab.train.TrainSettings
    epochs = 30
    lr = 1e-4
    weight_decay = 1e-8
    seed = 0

Any key can be overridden from the command line with ``--set table.key=value`` (TOML syntax for the value).
"""

from __future__ import annotations

import copy
import json
import sys
from collections.abc import Callable, Mapping
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

import torch
from torch import nn

from dgmlab import data as dgdata
from dgmlab.models import INPUT_DIM_ARGUMENT, build_model
from dgmlab.objectives import (
    KL_ESTIMATORS,
    Objective,
    exact_nll,
    negative_elbo,
    pset_mse_kl,
    reconstruction_mse,
)
from dgmlab.train import TrainSettings

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib


class ConfigError(ValueError):
    """A configuration value is missing or invalid; the message names the key and the valid choices."""


TABLES = ("model", "data", "objective", "train")


def load_config(path: str | Path) -> dict[str, Any]:
    """Read a TOML (or JSON, e.g. a run's ``config.json``) configuration file."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"config file {path} does not exist")
    text = path.read_text(encoding="utf-8")
    try:
        config = json.loads(text) if path.suffix == ".json" else tomllib.loads(text)
    except (tomllib.TOMLDecodeError, json.JSONDecodeError) as error:
        raise ConfigError(f"config file {path} is not valid {'JSON' if path.suffix == '.json' else 'TOML'}: "
                          f"{error}") from None
    unknown = sorted(set(config) - set(TABLES) - {"name"})
    if unknown:
        raise ConfigError(f"config file {path}: unknown table(s) {', '.join(unknown)}; "
                          f"valid tables are {', '.join(TABLES)}")
    return config


def apply_overrides(config: Mapping[str, Any], overrides: list[str]) -> dict[str, Any]:
    """Return a copy of ``config`` with ``table.key=value`` overrides applied (values in TOML syntax)."""
    result = copy.deepcopy(dict(config))
    for item in overrides:
        key, sep, raw = item.partition("=")
        table, dot, name = key.strip().partition(".")
        if not sep or not dot or table not in TABLES or not name:
            raise ConfigError(f"override {item!r} must look like table.key=value with table one of "
                              f"{', '.join(TABLES)} (e.g. train.lr=1e-3)")
        try:
            value = tomllib.loads(f"v = {raw.strip()}")["v"]
        except tomllib.TOMLDecodeError:
            value = raw.strip()  # a bare word: take it as a string
        result.setdefault(table, {})[name] = value
    return result


# ----------------------------------------------------------------------------------------------------------
# Data
# ----------------------------------------------------------------------------------------------------------
@dataclass
class DataBundle:
    """Batches for training and evaluation, plus what figures need (test images and labels)."""

    train: Any
    test: Any | None
    input_dim: int
    test_x: torch.Tensor | None = None
    test_labels: torch.Tensor | None = None
    kind: str = "images"


def _mnist_data(cfg: dict[str, Any], seed: int) -> DataBundle:
    view = cfg.pop("view", "grey")
    batch_size = int(cfg.pop("batch_size", 256))
    limit = int(cfg.pop("limit", 0)) or None
    test_limit = int(cfg.pop("test_limit", 0)) or None
    use_test = bool(cfg.pop("test", True))
    data_dir = cfg.pop("data_dir", None)
    shape = cfg.pop("shape", "flat")
    with_labels = cfg.pop("labels", False)
    _reject_unknown("data", cfg)
    if shape not in ("flat", "image"):
        raise ConfigError(f"data.shape must be flat ([N, 784], for MLPs) or image ([N, 1, 28, 28], for "
                          f"convolutions), got {shape!r}")
    if not isinstance(with_labels, bool):
        raise ConfigError(f"data.labels must be true or false, got {with_labels!r}")
    flatten = shape == "flat"
    x, labels, transform = dgdata.mnist_tensors("train", view=view, flatten=flatten, seed=seed,
                                                data_dir=data_dir, limit=limit)
    tensors = (x, labels) if with_labels else (x,)
    train = dgdata.TensorBatches(*tensors, batch_size=batch_size, shuffle=True, seed=seed, transform=transform)
    test = test_x = test_labels = None
    if use_test:
        # the test split is evaluated with one fixed binarisation, so epochs are comparable
        test_view = "static" if view == "dynamic" else view
        test_x, test_labels, _ = dgdata.mnist_tensors("test", view=test_view, flatten=flatten, seed=seed + 1,
                                                      data_dir=data_dir, limit=test_limit)
        test_tensors = (test_x, test_labels) if with_labels else (test_x,)
        test = dgdata.TensorBatches(*test_tensors, batch_size=1000 if flatten else 250, shuffle=False, seed=seed)
    return DataBundle(train=train, test=test, input_dim=x[0].numel(), test_x=test_x, test_labels=test_labels)


def _torus_data(cfg: dict[str, Any], seed: int) -> DataBundle:
    batch_size = int(cfg.pop("batch_size", 3000))
    sampler = {k: cfg.pop(k) for k in ("R", "r", "num_points", "seed", "area_uniform", "noise_std") if k in cfg}
    _reject_unknown("data", cfg)
    points, _ = dgdata.torus_point_cloud(**sampler)
    held_out = {**sampler, "seed": int(sampler.get("seed", 1234)) + 10_000}
    test_points, _ = dgdata.torus_point_cloud(**held_out)
    train = dgdata.TensorBatches(points, batch_size=batch_size, shuffle=True, seed=seed)
    test = dgdata.TensorBatches(test_points, batch_size=len(test_points), shuffle=False, seed=seed)
    return DataBundle(train=train, test=test, input_dim=3, test_x=test_points, kind="points")


DATASETS: dict[str, Callable[[dict[str, Any], int], DataBundle]] = {"mnist": _mnist_data, "torus": _torus_data}


def _reject_unknown(table: str, rest: Mapping[str, Any]) -> None:
    if rest:
        raise ConfigError(f"[{table}] has unknown key(s): {', '.join(sorted(rest))}")


def build_data(config: Mapping[str, Any], seed: int = 0) -> DataBundle:
    """Build the data of a configuration's ``[data]`` table."""
    cfg = dict(config.get("data", {}))
    name = cfg.pop("name", "mnist")
    if name not in DATASETS:
        raise ConfigError(f"unknown data name {name!r}; choose one of {', '.join(sorted(DATASETS))}")
    return DATASETS[name](cfg, seed)


# ----------------------------------------------------------------------------------------------------------
# Objectives
# ----------------------------------------------------------------------------------------------------------
def _first(batch: tuple[torch.Tensor, ...]) -> torch.Tensor:
    return batch[0]


def _elbo(cfg: dict[str, Any]) -> Objective:
    kl = cfg.pop("kl", "analytic")
    n_samples = int(cfg.pop("n_samples", 1))
    _check_kl(kl)
    return lambda model, batch: negative_elbo(model, _first(batch), kl=kl, n_samples=n_samples)


def _pset(cfg: dict[str, Any]) -> Objective:
    kl = cfg.pop("kl", "analytic")
    coeff = float(cfg.pop("coeff", 1e-4))
    _check_kl(kl)
    if coeff < 0:
        raise ConfigError(f"objective.coeff must be >= 0, got {coeff}")
    return lambda model, batch: pset_mse_kl(model, _first(batch), coeff=coeff, kl=kl)


def _mse(cfg: dict[str, Any]) -> Objective:
    return lambda model, batch: reconstruction_mse(model, _first(batch))


def _nll(cfg: dict[str, Any]) -> Objective:
    conditional = cfg.pop("conditional", False)
    if not isinstance(conditional, bool):
        raise ConfigError(f"objective.conditional must be true or false, got {conditional!r}")
    if conditional:
        def conditional_nll(model: nn.Module, batch: tuple[torch.Tensor, ...]) -> Any:
            if len(batch) < 2:
                raise ConfigError("objective.conditional = true needs the labels in the batches: set "
                                  "data.labels = true")
            return exact_nll(model, batch[0], batch[1])
        return conditional_nll
    return lambda model, batch: exact_nll(model, _first(batch))


def _check_kl(kl: str) -> None:
    if kl not in KL_ESTIMATORS:
        raise ConfigError(f"objective.kl must be one of {', '.join(KL_ESTIMATORS)}, got {kl!r}")


OBJECTIVES: dict[str, Callable[[dict[str, Any]], Objective]] = {
    "elbo": _elbo,
    "pset_mse_kl": _pset,
    "reconstruction_mse": _mse,
    "nll": _nll,
}


def build_objective(config: Mapping[str, Any]) -> Objective:
    """Build the objective of a configuration's ``[objective]`` table."""
    cfg = dict(config.get("objective", {}))
    name = cfg.pop("name", None)
    if name not in OBJECTIVES:
        raise ConfigError(f"unknown objective name {name!r}; choose one of {', '.join(sorted(OBJECTIVES))}")
    objective = OBJECTIVES[name](cfg)
    _reject_unknown("objective", cfg)
    return objective


# ----------------------------------------------------------------------------------------------------------
# Models and settings
# ----------------------------------------------------------------------------------------------------------
def build_model_from_config(config: Mapping[str, Any], input_dim: int | None = None) -> nn.Module:
    """Build the model of a configuration's ``[model]`` table (``input_dim`` defaults to the data's)."""
    cfg = dict(config.get("model", {}))
    cfg.pop("init_output_bias", None)  # an initialisation step, done by dgmlab.experiments.runs.prepare
    name = cfg.pop("name", None)
    if name is None:
        raise ConfigError("[model] needs a name, e.g. name = \"vae\"")
    if input_dim is not None and name in INPUT_DIM_ARGUMENT:
        cfg.setdefault(INPUT_DIM_ARGUMENT[name], input_dim)
    return build_model(name, **cfg)


def build_settings(config: Mapping[str, Any]) -> TrainSettings:
    """Build :class:`TrainSettings` from a configuration's ``[train]`` table."""
    cfg = dict(config.get("train", {}))
    known = {f.name for f in fields(TrainSettings)}
    unknown = sorted(set(cfg) - known)
    if unknown:
        raise ConfigError(f"[train] has unknown key(s): {', '.join(unknown)}; "
                          f"valid keys are {', '.join(sorted(known))}")
    settings = TrainSettings(**cfg)
    try:
        settings.validate()
    except ValueError as error:
        raise ConfigError(f"[train] {error}") from None
    return settings

