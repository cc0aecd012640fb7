"""What a model can do, declared once.

The run layer (:mod:`dgmlab.experiments.runs`), ``dgmlab train/eval/sample``, the evaluations and the figures
ask a model what it can do through these protocols, never by its class or family name, so a new family
(a normalizing flow, a mixture prior, a tokenizer) slots in by implementing the methods below and being
registered with :func:`dgmlab.models.register_model`.

Every protocol is ``runtime_checkable``: ``isinstance(model, DensityModel)`` checks that the methods (and
attributes) exist, not their signatures; the signatures below are the contract that the tests check.

Conventions shared by every family:

* log-densities are per example, in nats: ``log_prob(x) -> [B]``;
* conditioning (class labels and the like) is the keyword ``context=`` everywhere; an unconditional model
  raises :class:`~dgmlab.errors.CapabilityError` when given one (:func:`reject_context`);
* randomness comes from ``generator=`` (a ``torch.Generator``), so samples are reproducible.
"""

from __future__ import annotations

import inspect
from typing import Any, Protocol, runtime_checkable

import torch
from torch import Tensor

from dgmlab.errors import CapabilityError


@runtime_checkable
class Sampler(Protocol):
    """Draws examples: ``sample(n) -> [n, *example_shape]``."""

    def sample(self, n: int, *, generator: torch.Generator | None = None, context: Any = None) -> Tensor: ...


@runtime_checkable
class DensityModel(Protocol):
    """An exact (normalised) density :math:`p(x \\mid c)`: ``log_prob(x) -> [B]`` in nats, and sampling."""

    def log_prob(self, x: Tensor, *, context: Any = None) -> Tensor: ...

    def sample(self, n: int, *, generator: torch.Generator | None = None, context: Any = None) -> Tensor: ...


@runtime_checkable
class PerDimensionDensity(Protocol):
    """A density that factorises over dimensions: ``log_prob_per_dimension(x)`` has ``x``'s shape and sums
    over every non-batch dimension to ``log_prob(x)`` (the terms :math:`\\log p(x_i \\mid x_{<i})` of an
    autoregressive model). A model may raise :class:`~dgmlab.errors.CapabilityError` where no such
    decomposition exists (a mixture over orderings)."""

    def log_prob_per_dimension(self, x: Tensor, *, context: Any = None) -> Tensor: ...


@runtime_checkable
class LatentVariableModel(Protocol):
    """A VAE-style model :math:`p_\\theta(x, z) = p_\\theta(x\\mid z)\\,\\mathcal N(z; 0, I)` with an
    amortised Gaussian posterior :math:`q_\\phi(z\\mid x) = \\mathcal N(\\mu, \\operatorname{diag} e^{\\ell})`.

    ``encode(x) -> (mean, logvar)`` ``[B, d]`` each; ``decode(z)`` the decoder's raw output (logits or
    means); ``decode_mean(z) = E[x | z]``; ``log_likelihood(x, decoded) = log p(x | z)`` summed over
    dimensions; ``reparameterize(mean, logvar, n_samples)`` draws :math:`z = \\mu + e^{\\ell/2}\\epsilon`;
    ``sample(n)`` decodes prior draws."""

    latent_dim: int

    def encode(self, x: Tensor) -> tuple[Tensor, Tensor]: ...

    def decode(self, z: Tensor) -> Tensor: ...

    def decode_mean(self, z: Tensor) -> Tensor: ...

    def log_likelihood(self, x: Tensor, decoded: Tensor) -> Tensor: ...

    def reparameterize(self, mean: Tensor, logvar: Tensor, n_samples: int | None = None) -> Tensor: ...

    def sample(self, n: int, *, generator: torch.Generator | None = None, context: Any = None) -> Tensor: ...


@runtime_checkable
class FlowPosterior(Protocol):
    """A latent-variable model whose posterior is a normalizing flow on the Gaussian of ``encode(x)``:
    :math:`z_0 \\sim q_0(z\\mid x) = \\mathcal N(\\mu, \\operatorname{diag} e^{\\ell})`,
    :math:`z_K = f_K \\circ \\dots \\circ f_1(z_0)`,
    :math:`\\log q_K(z_K\\mid x) = \\log q_0(z_0\\mid x) - \\sum_k \\log|\\det \\partial f_k/\\partial z|`.

    ``sample_posterior(x, n_samples=None) -> (z, log_q)``: reparameterised samples of :math:`q_K` (``[B, d]``, or
    ``[S, B, d]`` with ``n_samples=S``) and :math:`\\log q_K(z\\mid x)` in nats (``[B]`` or ``[S, B]``).
    ``flow_length`` is :math:`K`; with ``K = 0`` the posterior is the plain Gaussian of ``encode(x)``. The objectives
    (:func:`dgmlab.objectives.negative_elbo`, :func:`~dgmlab.objectives.importance_weighted_bound`) draw from
    ``sample_posterior`` when ``K > 0``; ``encode(x)`` then describes only the base :math:`q_0`."""

    flow_length: int

    def sample_posterior(self, x: Tensor, n_samples: int | None = None) -> tuple[Tensor, Tensor]: ...


@runtime_checkable
class Autoencoder(Protocol):
    """A deterministic autoencoder: ``encode(x) -> code [B, code_dim]``, ``decode(code) -> x_hat``."""

    code_dim: int

    def encode(self, x: Tensor) -> Tensor: ...

    def decode(self, code: Tensor) -> Tensor: ...


@runtime_checkable
class ConditionalModel(Protocol):
    """A model with class labels as ``context=``: ``num_classes`` labels ``0..K-1`` (``0``: built
    unconditional, takes no context)."""

    num_classes: int


@runtime_checkable
class ImageModel(Protocol):
    """A model whose examples are images ``[C, H, W]`` (convolutional models); ``image_shape`` is the shape
    it was built for."""

    image_shape: tuple[int, int, int]


@runtime_checkable
class Completer(Protocol):
    """Fills in images from their first ``known_rows`` rows: ``complete(x, known_rows) -> x'``."""

    def complete(self, x: Tensor, known_rows: int, *, generator: torch.Generator | None = None,
                 context: Any = None) -> Tensor: ...


@runtime_checkable
class EstimatedDensity(Protocol):
    """A density model whose ``log_prob`` may be a stochastic estimate (an invertible residual network's
    log-determinant): ``log_prob_estimator()`` says what it computes (``"exact"`` or the estimator);
    ``exact_dimension()`` is what the exact value costs (backward passes per block); ``set_estimator(logdet,
    **settings)`` and ``estimator_settings()`` switch to another estimator and back."""

    def log_prob_estimator(self) -> str: ...

    def exact_dimension(self) -> int: ...

    def set_estimator(self, logdet: str | None = None, **settings: Any) -> None: ...

    def estimator_settings(self) -> dict[str, Any]: ...


@runtime_checkable
class DataInitialized(Protocol):
    """A model with a data-dependent initialisation, run once before training on the training examples
    (all of them, in the data's training view: ``[N, *example_shape]``; the model takes what it needs, e.g.
    their mean for an output bias, or a first batch for ActNorm)."""

    def initialize_from_data(self, examples: Tensor) -> None: ...


def representation(model: LatentVariableModel | Autoencoder, x: Tensor) -> Tensor:
    """The point code of ``x`` ``[B, k]``: the posterior mean :math:`\\mu_\\phi(x)` of a latent-variable model,
    the code :math:`h = \\mathrm{enc}(x)` of an autoencoder."""
    if isinstance(model, LatentVariableModel):
        return model.encode(x)[0]
    if isinstance(model, Autoencoder):
        return model.encode(x)
    raise CapabilityError(f"{type(model).__name__} has no encoder (it is neither a latent-variable model nor an "
                          f"autoencoder)")


def decode_representation(model: LatentVariableModel | Autoencoder, code: Tensor) -> Tensor:
    """The expected example of a code ``[B, k]``: :math:`\\mathbb E[x\\mid z]` (``decode_mean``) of a
    latent-variable model, :math:`\\hat x = \\mathrm{dec}(h)` of an autoencoder."""
    if isinstance(model, LatentVariableModel):
        return model.decode_mean(code)
    if isinstance(model, Autoencoder):
        return model.decode(code)
    raise CapabilityError(f"{type(model).__name__} has no decoder (it is neither a latent-variable model nor an "
                          f"autoencoder)")


def representation_dim(model: LatentVariableModel | Autoencoder) -> int:
    """The width :math:`k` of :func:`representation`: ``latent_dim`` or ``code_dim``."""
    if isinstance(model, LatentVariableModel):
        return int(model.latent_dim)
    if isinstance(model, Autoencoder):
        return int(model.code_dim)
    raise CapabilityError(f"{type(model).__name__} has no code")


def context_classes(model: object) -> int:
    """The number of classes a model takes as ``context=`` (0 for an unconditional model)."""
    return int(model.num_classes) if isinstance(model, ConditionalModel) else 0


def samples_at_temperature(model: object) -> bool:
    r"""Whether ``model.sample`` takes a ``temperature=`` :math:`T` (a flow: :math:`z = T\epsilon`)."""
    sample = getattr(type(model), "sample", None)
    return sample is not None and "temperature" in inspect.signature(sample).parameters


def reject_context(model: object, context: Any) -> None:
    """Raise :class:`CapabilityError` if an unconditional ``model`` is given a ``context``."""
    if context is not None:
        raise CapabilityError(f"{type(model).__name__} is unconditional: it takes no context (class labels); "
                              f"drop context=, or build a class-conditional model")


__all__ = [
    "Autoencoder",
    "Completer",
    "ConditionalModel",
    "DataInitialized",
    "DensityModel",
    "EstimatedDensity",
    "FlowPosterior",
    "ImageModel",
    "LatentVariableModel",
    "PerDimensionDensity",
    "Sampler",
    "context_classes",
    "decode_representation",
    "reject_context",
    "representation",
    "representation_dim",
    "samples_at_temperature",
]
