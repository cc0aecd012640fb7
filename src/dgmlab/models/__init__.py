"""Models, one module per family. ``build_model(name, **kwargs)`` builds one by its registered name."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from torch import nn

from dgmlab.models.autoencoders import AE, VAE, AEOutput, ModelConfigError, VAEOutput
from dgmlab.models.point_vae import POINT_DECODERS, PointVAE, PositionalEncoding3D

MODELS: dict[str, Callable[..., nn.Module]] = {"ae": AE, "vae": VAE}
MODELS["point_vae"] = PointVAE  # decoder="cartesian" | "polar" | "torus"


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
__all__ += ["POINT_DECODERS", "PointVAE", "PositionalEncoding3D"]
