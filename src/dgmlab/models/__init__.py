"""Models, one module per family. ``build_model(name, **kwargs)`` builds one by its registered name;
:func:`register_model` adds a family (a user's own too) to ``dgmlab train``'s ``[model] name``. What a model
can do is declared in :mod:`dgmlab.models.protocols`."""

from __future__ import annotations

import inspect
from collections.abc import Callable
from typing import Any

from torch import nn

from dgmlab.errors import ModelConfigError
from dgmlab.models.autoencoders import AE, VAE, AEOutput, VAEOutput
from dgmlab.models.autoregressive import FVSBN, MADE, NADE, BengioNet, all_binary_configurations
from dgmlab.models.deep_image_prior import SkipNet
from dgmlab.models.flow_vae import PlanarVAE
from dgmlab.models.flows import Glow, InvertibleResNet, RealNVP, ResidualFlow
from dgmlab.models.mixtures import GaussianMixture, em_fit, kmeans
from dgmlab.models.pixelcnn import CategoricalPixelCNN, GatedPixelCNN, MaskedConv2d, PixelCNN, receptive_field
from dgmlab.models.point_vae import POINT_DECODERS, PointVAE, PositionalEncoding3D
from dgmlab.models.protocols import (
    Autoencoder,
    Completer,
    ConditionalModel,
    DataInitialized,
    DensityModel,
    EstimatedDensity,
    FlowPosterior,
    ImageModel,
    LatentVariableModel,
    PerDimensionDensity,
    Sampler,
    context_classes,
)
from dgmlab.models.vqvae import VQVAE, VQVAEPrior

MODELS: dict[str, Callable[..., nn.Module]] = {"ae": AE, "vae": VAE}
MODELS["point_vae"] = PointVAE  # decoder="cartesian" | "polar" | "torus"
# autoregressive density models: log_prob(x) exact, in nats; sample(n)
MODELS.update({"fvsbn": FVSBN, "bengio": BengioNet, "nade": NADE, "made": MADE, "pixelcnn": PixelCNN,
               "gated_pixelcnn": GatedPixelCNN})
MODELS["glow"] = Glow  # normalizing flows on dequantized images: permutation="shuffle" gives RealNVP
MODELS["vqvae"] = VQVAE  # discrete latents: a grid of codes (quantizer = "vq" | "vq_ema" | "fsq" | "lfq")
MODELS["vqvae_prior"] = VQVAEPrior  # its second stage: a categorical PixelCNN over a trained VQ-VAE's codes
# the MLP models take the number of binary variables D, which a config gets from its data
INPUT_DIM_ARGUMENT: dict[str, str] = {"ae": "input_dim", "vae": "input_dim", "point_vae": "input_dim",
                                      "fvsbn": "num_inputs", "bengio": "num_inputs", "nade": "num_inputs",
                                      "made": "num_inputs"}


def register_model(name: str, constructor: Callable[..., nn.Module], input_dim_argument: str | None = None,
                   replace: bool = False) -> None:
    """Make ``[model] name = "<name>"`` build ``constructor(**rest of the table)``.

    ``input_dim_argument``: the constructor's keyword for the number of values per example (e.g.
    ``"num_inputs"``), which a config then takes from its data when the table omits it. The model only has to
    implement the protocols of :mod:`dgmlab.models.protocols` that fit it; nothing else in dgmlab needs to
    know it. Registering a taken name is an error unless ``replace=True``."""
    if not isinstance(name, str) or not name.isidentifier():
        raise ModelConfigError(f"register_model: name must be an identifier such as 'my_flow', got {name!r}")
    if not callable(constructor):
        raise ModelConfigError(f"register_model: constructor must be callable (a class), got {constructor!r}")
    if name in MODELS and not replace and MODELS[name] is not constructor:
        raise ModelConfigError(f"register_model: a model named {name!r} exists already; pick another name or "
                               f"pass replace=True")
    MODELS[name] = constructor
    if input_dim_argument is None:
        INPUT_DIM_ARGUMENT.pop(name, None)
    else:
        INPUT_DIM_ARGUMENT[name] = input_dim_argument


register_model("vae_planar", PlanarVAE, input_dim_argument="input_dim")  # VAE + amortised planar-flow posterior
# invertible residual networks: the log-determinant's estimator is a setting (logdet = "exact" | "series" | "roulette")
register_model("iresnet", InvertibleResNet, input_dim_argument="features")
register_model("residual_flow", ResidualFlow, input_dim_argument="features")
# RealNVP on vectors (2-D densities); on images it is a Glow variant: [model] name = "glow", permutation = "shuffle"
register_model("realnvp_vectors", RealNVP, input_dim_argument="features")


def build_model(name: str, **kwargs: Any) -> nn.Module:
    """Build a registered model: ``build_model("vae", input_dim=784, hidden_dims=[128, 32, 16, 4])``."""
    if name not in MODELS:
        raise ModelConfigError(f"unknown model {name!r}; choose one of {', '.join(sorted(MODELS))}")
    constructor = MODELS[name]
    try:
        options = inspect.signature(constructor).parameters
    except (TypeError, ValueError):  # a builtin or C constructor: let the call say what is wrong
        options = {}
    unknown = sorted(set(kwargs) - set(options)) if options and not any(
        p.kind is p.VAR_KEYWORD for p in options.values()) else []
    if unknown:
        valid = ", ".join(k for k, p in options.items() if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY))
        raise ModelConfigError(f"model {name!r} has no option {', '.join(unknown)}; its options are: {valid}")
    try:
        return constructor(**kwargs)
    except TypeError as error:  # a missing keyword
        raise ModelConfigError(f"model {name!r}: {error}") from None


def count_parameters(model: nn.Module) -> int:
    """Number of trainable parameters."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


__all__ = ["AE", "VAE", "AEOutput", "VAEOutput", "MODELS", "ModelConfigError", "build_model", "count_parameters",
           "register_model"]
__all__ += ["Autoencoder", "Completer", "ConditionalModel", "DataInitialized", "DensityModel", "EstimatedDensity",
            "ImageModel", "LatentVariableModel", "PerDimensionDensity", "Sampler", "context_classes"]
__all__ += ["POINT_DECODERS", "PointVAE", "PositionalEncoding3D", "INPUT_DIM_ARGUMENT"]
__all__ += ["FVSBN", "BengioNet", "NADE", "MADE", "all_binary_configurations"]
__all__ += ["PixelCNN", "GatedPixelCNN", "CategoricalPixelCNN", "MaskedConv2d", "receptive_field"]
__all__ += ["VQVAE", "VQVAEPrior"]
__all__ += ["InvertibleResNet", "ResidualFlow"]
__all__ += ["FlowPosterior", "PlanarVAE"]
__all__ += ["GaussianMixture", "em_fit", "kmeans"]  # fitted by EM (dgmlab.models.mixtures), not by the trainer
__all__ += ["SkipNet"]  # fitted to one image by dgmlab.restoration.deep_image_prior, not by the trainer
