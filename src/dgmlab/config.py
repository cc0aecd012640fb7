"""Run configurations: TOML files in, model + data + objective + settings out.

A configuration has four tables; every key has a default except ``model.name``::

    [model]                       # dgmlab.models.build_model(name, **rest)
    name = "vae"
    hidden_dims = [128, 32, 16, 4]
    likelihood = "gaussian"       # input_dim is taken from the data when omitted
    init_output_bias = false      # start the output biases at the training data's mean (its logit for
                                  # Bernoulli outputs): VAE, FVSBN, Bengio, NADE, MADE

    [data]
    name = "mnist"                # "mnist", "torus" or "toy2d" (dataset = "checkerboard" ...)
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
    levels = 256                  # nll only: dequantized data of 256 levels (the default for view = "dequantized")

    [train]                       # dgmlab.train.TrainSettings
    epochs = 30
    lr = 1e-4
    weight_decay = 1e-8
    seed = 0

Any key can be overridden from the command line with ``--set table.key=value`` (TOML syntax for the value).

The configurations of the problem sets and benchmarks ship inside the package (``dgmlab/configs/*.toml``):
:func:`load_config` takes a path or the name of a bundled one (``load_config("vae_mc")``), and
:func:`bundled_configs` lists them. A run's ``config.json`` adds a ``data_spec`` table (:class:`DataSpec`:
the data's kind and the shape of one example), so loading a run never guesses a shape. A bundled config with a
top-level ``command = "potentials"`` (:data:`COMMAND_KEY`) holds the settings of that experiment command
(``dgmlab potentials``), not a training run: ``dgmlab train`` refuses it and says which command reads it.
"""

from __future__ import annotations

import copy
import json
import math
import sys
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass, fields
from importlib import resources
from pathlib import Path
from typing import Any

import torch
from torch import nn

from dgmlab import data as dgdata
from dgmlab.data.mnist import IMAGE_SIDE
from dgmlab.errors import ConfigError
from dgmlab.models import INPUT_DIM_ARGUMENT, build_model
from dgmlab.objectives import (
    KL_ESTIMATORS,
    Objective,
    exact_nll,
    negative_elbo,
    pset_mse_kl,
    reconstruction_mse,
    vqvae_loss,
    vqvae_prior_nll,
)
from dgmlab.train import TrainSettings

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib


TABLES = ("model", "data", "objective", "train")
RECORDED = ("name", "data_spec")  # written into a run's config.json by dgmlab, not options
# the top-level key of an experiment's config: the dgmlab command that reads it (command = "potentials" for
# dgmlab potentials); a config without it is a training config for dgmlab train
COMMAND_KEY = "command"


def bundled_configs() -> dict[str, str]:
    """The configurations that ship with dgmlab: name -> the file's opening comment (its first
    100 characters), after ``[run with dgmlab COMMAND]`` for an experiment's config (:data:`COMMAND_KEY`)."""
    found = {}
    for entry in sorted(resources.files("dgmlab.configs").iterdir(), key=lambda e: e.name):
        if entry.name.endswith(".toml"):
            command = bundled_config_command(entry.name[: -len(".toml")])
            summary = [f"[run with dgmlab {command}]"] if command else []
            for line in entry.read_text(encoding="utf-8").splitlines():
                if not line.startswith("#") or (len(summary) > bool(command) and not line.lstrip("# ").strip()):
                    break
                summary.append(line.lstrip("# ").strip())
            text = " ".join(part for part in summary if part)
            found[entry.name[: -len(".toml")]] = text if len(text) <= 100 else text[:100].rsplit(" ", 1)[0] + " ..."
    return found


def bundled_config(name: str) -> str:
    """The TOML text of the bundled configuration ``name`` (``"vae_mc"``), or a ConfigError listing them."""
    entry = resources.files("dgmlab.configs") / f"{name}.toml"
    if not name or "/" in name or not entry.is_file():
        raise ConfigError(f"config {name!r} does not exist: no such file, and no bundled config of that name; "
                          f"bundled configs: {', '.join(bundled_configs())} (dgmlab configs lists them)")
    return entry.read_text(encoding="utf-8")


def bundled_config_command(name: str) -> str | None:
    """The dgmlab command that reads the bundled configuration ``name`` (its :data:`COMMAND_KEY`, e.g.
    ``"potentials"``), or ``None`` for a training config of ``dgmlab train``."""
    command = tomllib.loads(bundled_config(name)).get(COMMAND_KEY)
    return None if command is None else str(command)


def config_name(source: str | Path) -> str:
    """The name a run of ``source`` (a path or a bundled name) gets by default: the file's stem."""
    return Path(source).stem


def load_config(path: str | Path, *, command: str | None = None) -> dict[str, Any]:
    """Read a TOML (or JSON, e.g. a run's ``config.json``) configuration file, or a bundled configuration by
    name (``load_config("vae_mc")``; a file of that name in the working directory comes first).

    ``command``: the experiment whose config it must be (``"potentials"``: its :data:`COMMAND_KEY` says so,
    and its tables are the experiment's to check); ``None``: a training config, and a ConfigError for an
    experiment's config that says which command reads it."""
    path = Path(path)
    if path.is_file():
        return _parse(path.read_text(encoding="utf-8"), str(path), json_text=path.suffix == ".json", command=command)
    if path.suffix in ("", ".toml") and len(path.parts) == 1:
        if (resources.files("dgmlab.configs") / f"{path.stem}.toml").is_file():
            return load_bundled_config(path.stem, command=command)
        raise ConfigError(f"config file {path} does not exist, and no bundled config is named {path.stem!r}; bundled "
                          f"configs: {', '.join(bundled_configs())} (dgmlab configs lists them)")
    raise ConfigError(f"config file {path} does not exist; give a TOML file or the name of a bundled config "
                      f"({', '.join(bundled_configs())})")


def load_bundled_config(name: str, *, command: str | None = None) -> dict[str, Any]:
    """The bundled configuration ``name`` (``"ae"``, ``"vae_mc"``...), whatever files the working directory holds;
    ``command`` as in :func:`load_config`."""
    return _parse(bundled_config(name), f"bundled config {name!r}", json_text=False, command=command)


def _parse(text: str, source: str, json_text: bool, command: str | None = None) -> dict[str, Any]:
    try:
        config = json.loads(text) if json_text else tomllib.loads(text)
    except (tomllib.TOMLDecodeError, json.JSONDecodeError) as error:
        raise ConfigError(f"config file {source} is not valid {'JSON' if json_text else 'TOML'}: {error}") from None
    found = config.get(COMMAND_KEY)
    if found != command:
        if command is None:
            raise ConfigError(f"{source} is the config of the experiment command dgmlab {found}, not a training "
                              f"config for dgmlab train: run dgmlab {found} instead")
        has = f"it has {found!r}" if found is not None else "it looks like a training config for dgmlab train"
        raise ConfigError(f"{source} is not a config of dgmlab {command}: it needs the top-level key "
                          f"{COMMAND_KEY} = \"{command}\" ({has})")
    if command is not None:
        return config  # the experiment checks its own tables
    unknown = sorted(set(config) - set(TABLES) - set(RECORDED))
    if unknown:
        raise ConfigError(f"config file {source}: unknown table(s) {', '.join(unknown)}; "
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
DATA_KINDS = ("images", "points")


@dataclass(frozen=True)
class DataSpec:
    """What one example of a data set is, recorded in every run's ``config.json`` as ``data_spec``.

    ``kind``: ``"images"`` or ``"points"``; ``example_shape``: the shape of one example as the model sees it
    (``(784,)`` flat, ``(1, 28, 28)`` as images, ``(3,)`` for points); ``image_shape``: ``(C, H, W)`` to show an
    example as an image (``None`` for points); ``view``: the values (``"dynamic"``, ``"grey"``,
    ``"dequantized"``...); ``num_classes``: labels in every batch (``0``: none)."""

    kind: str
    example_shape: tuple[int, ...]
    image_shape: tuple[int, int, int] | None = None
    view: str = ""
    num_classes: int = 0

    @property
    def dims(self) -> int:
        """Values per example, :math:`D` (784 for MNIST)."""
        return math.prod(self.example_shape)

    def to_json(self) -> dict[str, Any]:
        return {k: (list(v) if isinstance(v, tuple) else v) for k, v in asdict(self).items()}

    @classmethod
    def from_json(cls, table: Mapping[str, Any]) -> DataSpec:
        try:
            spec = cls(kind=str(table["kind"]), example_shape=tuple(int(v) for v in table["example_shape"]),
                       image_shape=(None if table.get("image_shape") is None
                                    else tuple(int(v) for v in table["image_shape"])),  # type: ignore[arg-type]
                       view=str(table.get("view", "")), num_classes=int(table.get("num_classes", 0)))
        except (KeyError, TypeError, ValueError) as error:
            raise ConfigError(f"data_spec {dict(table)!r} is not a valid data description ({error}); it needs kind "
                              f"and example_shape") from None
        if spec.kind not in DATA_KINDS:
            raise ConfigError(f"data_spec.kind must be one of {', '.join(DATA_KINDS)}, got {spec.kind!r}")
        return spec


@dataclass
class DataBundle:
    """Batches for training and evaluation, plus what figures need (test images and labels)."""

    train: Any
    test: Any | None
    spec: DataSpec
    test_x: torch.Tensor | None = None
    test_labels: torch.Tensor | None = None

    @property
    def input_dim(self) -> int:
        """Values per example (``spec.dims``)."""
        return self.spec.dims

    @property
    def kind(self) -> str:
        return self.spec.kind

    @property
    def train_examples(self) -> torch.Tensor:
        """Every training example in its stored view (grey levels for per-epoch binarizations)."""
        return self.train.tensors[0]


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
    spec = DataSpec(kind="images", example_shape=tuple(x.shape[1:]), image_shape=(1, IMAGE_SIDE, IMAGE_SIDE),
                    view=view, num_classes=10 if with_labels else 0)
    return DataBundle(train=train, test=test, spec=spec, test_x=test_x, test_labels=test_labels)


def _torus_data(cfg: dict[str, Any], seed: int) -> DataBundle:
    batch_size = int(cfg.pop("batch_size", 3000))
    sampler = {k: cfg.pop(k) for k in ("R", "r", "num_points", "seed", "area_uniform", "noise_std") if k in cfg}
    _reject_unknown("data", cfg)
    points, _ = dgdata.torus_point_cloud(**sampler)
    held_out = {**sampler, "seed": int(sampler.get("seed", 1234)) + 10_000}
    test_points, _ = dgdata.torus_point_cloud(**held_out)
    train = dgdata.TensorBatches(points, batch_size=batch_size, shuffle=True, seed=seed)
    test = dgdata.TensorBatches(test_points, batch_size=len(test_points), shuffle=False, seed=seed)
    spec = DataSpec(kind="points", example_shape=(3,), view="points")
    return DataBundle(train=train, test=test, spec=spec, test_x=test_points)


def _toy2d_data(cfg: dict[str, Any], seed: int) -> DataBundle:
    dataset = cfg.pop("dataset", "checkerboard")
    num_points = cfg.pop("num_points", 50_000)
    test_points = cfg.pop("test_points", 10_000)
    sample_seed = cfg.pop("seed", 1234)
    batch_size = int(cfg.pop("batch_size", 500))
    _reject_unknown("data", cfg)
    try:
        distribution = dgdata.toy2d_dataset(dataset)
    except ValueError as error:
        raise ConfigError(f"data.dataset: {error}") from None
    for key, value in (("num_points", num_points), ("test_points", test_points), ("seed", sample_seed)):
        if isinstance(value, bool) or not isinstance(value, int) or value < (0 if key == "seed" else 1):
            raise ConfigError(f"data.{key} must be an integer >= {0 if key == 'seed' else 1}, got {value!r}")
    points = distribution.sample(num_points, generator=torch.Generator().manual_seed(sample_seed))
    # the held-out points: the same distribution, another seed
    test_points = distribution.sample(test_points, generator=torch.Generator().manual_seed(sample_seed + 10_000))
    train = dgdata.TensorBatches(points, batch_size=batch_size, shuffle=True, seed=seed)
    test = dgdata.TensorBatches(test_points, batch_size=min(len(test_points), 5000), shuffle=False, seed=seed)
    spec = DataSpec(kind="points", example_shape=(2,), view=f"toy2d {dataset}")
    return DataBundle(train=train, test=test, spec=spec, test_x=test_points)


DATASETS: dict[str, Callable[[dict[str, Any], int], DataBundle]] = {"mnist": _mnist_data, "torus": _torus_data,
                                                                    "toy2d": _toy2d_data}


def _reject_unknown(table: str, rest: Mapping[str, Any]) -> None:
    if rest:
        raise ConfigError(f"[{table}] has unknown key(s): {', '.join(sorted(rest))}")


def recorded_data_spec(config: Mapping[str, Any]) -> DataSpec:
    """The ``data_spec`` a run recorded in its ``config.json``; a ConfigError for a run that has none."""
    table = config.get("data_spec")
    if not isinstance(table, Mapping):
        raise ConfigError("the run's config.json has no data_spec table (the kind and shape of its data); it was "
                          "written by an older dgmlab: retrain it, or add the table by hand")
    return DataSpec.from_json(table)


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
    levels = cfg.pop("levels", 0)
    if not isinstance(conditional, bool):
        raise ConfigError(f"objective.conditional must be true or false, got {conditional!r}")
    if isinstance(levels, bool) or not isinstance(levels, int) or levels < 0:
        raise ConfigError(f"objective.levels must be the number of discrete levels of dequantized data (256 for "
                          f"8-bit images) or 0, got {levels!r}")
    if conditional:
        def conditional_nll(model: nn.Module, batch: tuple[torch.Tensor, ...]) -> Any:
            if len(batch) < 2:
                raise ConfigError("objective.conditional = true needs the labels in the batches: set "
                                  "data.labels = true")
            return exact_nll(model, batch[0], context=batch[1], levels=levels)
        return conditional_nll
    return lambda model, batch: exact_nll(model, _first(batch), levels=levels)


def _vqvae(cfg: dict[str, Any]) -> Objective:
    return lambda model, batch: vqvae_loss(model, _first(batch))


def _vqvae_prior(cfg: dict[str, Any]) -> Objective:
    return lambda model, batch: vqvae_prior_nll(model, _first(batch))


def _check_kl(kl: str) -> None:
    if kl not in KL_ESTIMATORS:
        raise ConfigError(f"objective.kl must be one of {', '.join(KL_ESTIMATORS)}, got {kl!r}")


OBJECTIVES: dict[str, Callable[[dict[str, Any]], Objective]] = {
    "elbo": _elbo,
    "pset_mse_kl": _pset,
    "reconstruction_mse": _mse,
    "nll": _nll,
    "vqvae": _vqvae,
    "vqvae_prior": _vqvae_prior,
}


def build_objective(config: Mapping[str, Any]) -> Objective:
    """Build the objective of a configuration's ``[objective]`` table."""
    cfg = dict(config.get("objective", {}))
    name = cfg.pop("name", None)
    if name == "nll" and config.get("data", {}).get("view") == "dequantized":
        cfg.setdefault("levels", 256)  # a density of (b + u) / 256: report the 8-bit images' NLL bound
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

