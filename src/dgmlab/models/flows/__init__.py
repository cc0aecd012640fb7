"""Normalizing flows: invertible transforms with their log-determinants, composed into a density model.

:mod:`~dgmlab.models.flows.base` holds the core (:class:`Transform`, :class:`Compose`, :class:`Inverse`,
:class:`Flow`, the base density); the layers live in one module each, by family;
:mod:`~dgmlab.models.flows.residual` the invertible residual networks, on the spectrally normalised layers of
:mod:`~dgmlab.models.flows.lipschitz`.
"""

from dgmlab.models.flows.architectures import Glow, MultiScale, RealNVP
from dgmlab.models.flows.autoregressive import (
    InverseAutoregressiveFlow,
    MaskedAutoregressiveFlow,
)
from dgmlab.models.flows.base import (
    TRANSFORM_EXAMPLES,
    Compose,
    Flow,
    Inverse,
    StandardNormal,
    Transform,
    register_transform_example,
    sum_except_batch,
)
from dgmlab.models.flows.coupling import (
    AdditiveCoupling,
    AffineCoupling,
    Permutation,
    RandomPermutation,
    Reverse,
)
from dgmlab.models.flows.elementwise import ElementwiseAffine, Logit
from dgmlab.models.flows.glow import ActNorm, InvertibleConv1x1
from dgmlab.models.flows.lipschitz import (
    LipschitzNet,
    LipSwish,
    SpectralConv2d,
    SpectralLinear,
    lipschitz_cnn,
    lipschitz_mlp,
)
from dgmlab.models.flows.multiscale import Split, Squeeze
from dgmlab.models.flows.planar_radial import Planar, Radial
from dgmlab.models.flows.residual import InvertibleResNet, ResidualBlock, ResidualFlow

__all__ = ["TRANSFORM_EXAMPLES", "Compose", "Flow", "Inverse", "StandardNormal", "Transform",
           "register_transform_example", "sum_except_batch"]
__all__ += ["ActNorm", "InvertibleConv1x1", "Split", "Squeeze"]
__all__ += ["AdditiveCoupling", "AffineCoupling", "InverseAutoregressiveFlow", "MaskedAutoregressiveFlow",
            "Permutation", "RandomPermutation", "Reverse"]
__all__ += ["ElementwiseAffine", "Logit", "Planar", "Radial"]
__all__ += ["Glow", "MultiScale", "RealNVP"]
__all__ += ["InvertibleResNet", "LipSwish", "LipschitzNet", "ResidualBlock", "ResidualFlow", "SpectralConv2d",
            "SpectralLinear", "lipschitz_cnn", "lipschitz_mlp"]
