"""Models, one module per family. ``build_model(name, **kwargs)`` builds one by its registered name."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from torch import nn

from dgmlab.models.autoencoders import AE, VAE, AEOutput, ModelConfigError, VAEOutput
from dgmlab.models.autoregressive import FVSBN, MADE, NADE, BengioNet, all_binary_configurations
from dgmlab.models.pixelcnn import GatedPixelCNN, MaskedConv2d, PixelCNN, receptive_field
from dgmlab.models.point_vae import POINT_DECODERS, PointVAE, PositionalEncoding3D

MODELS: dict[str, Callable[..., nn.Module]] = {"ae": AE, "vae": VAE}
MODELS["point_vae"] = PointVAE  # decoder="cartesian" | "polar" | "torus"
# autoregressive density models: log_prob(x) exact, in nats; sample(n)
MODELS.update({"fvsbn": FVSBN, "bengio": BengioNet, "nade": NADE, "made": MADE, "pixelcnn": PixelCNN,
               "gated_pixelcnn": GatedPixelCNN})
# the MLP models take the number of binary variables D, which a config gets from its data
INPUT_DIM_ARGUMENT: dict[str, str] = {"ae": "input_dim", "vae": "input_dim", "point_vae": "input_dim",
                                      "fvsbn": "num_inputs", "bengio": "num_inputs", "nade": "num_inputs",
                                      "made": "num_inputs"}


def build_model(name: str, **kwargs: Any) -> nn.Module:
    """Build a registered model: ``build_model("vae", input_dim=784, hidden_dims=[128, 32, 16, 4])``."""
    if name not in MODELS:
        raise ModelConfigError(f"unknown model {name!r}; choose one of {', '.join(sorted(MODELS))}")
    try:
        return MODELS[name](**kwargs)
    except TypeError as error:  # unknown or missing keyword
        raise ModelConfigError(f"model {name!r}: {error}") from None


def count_parameters(model: nn.Module) -> int:
    """Number of trainable parameters."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


__all__ = ["AE", "VAE", "AEOutput", "VAEOutput", "MODELS", "ModelConfigError", "build_model", "count_parameters"]
__all__ += ["POINT_DECODERS", "PointVAE", "PositionalEncoding3D", "INPUT_DIM_ARGUMENT"]
__all__ += ["FVSBN", "BengioNet", "NADE", "MADE", "all_binary_configurations"]
__all__ += ["PixelCNN", "GatedPixelCNN", "MaskedConv2d", "receptive_field"]
