r"""Autoencoders of problem set 1: the deterministic AE and the VAE.

Both are multilayer perceptrons whose widths are given as one list, as in the problem set.

AE
--
``AE(784, [128, 32, 16, 2])`` encodes :math:`x \in \mathbb R^{784}` through Linear layers of widths
128, 32, 16 and 2, with a ReLU after every layer **but the last**, so the code :math:`h` is linear. The
decoder mirrors it (2 -> 16 -> 32 -> 128 -> 784, ReLU between) and ends with a sigmoid, so
:math:`\hat x \in (0, 1)^{784}`. It is trained on :math:`\frac1D \lVert \hat x - x\rVert^2`.

VAE
---
``VAE(784, [128, 32, 16, 4])`` has the same encoder, whose **last width holds the mean and the
log-variance** of :math:`q_\phi(z\mid x) = \mathcal N(\mu, \operatorname{diag} e^{\ell})`, so the
latent dimension is half of it (here 2) and the last width must be even. The decoder starts at the latent
dimension: 2 -> 16 -> 32 -> 128 -> 784. Samples are drawn with the reparameterisation

.. math:: z = \mu + e^{\ell/2} \odot \epsilon, \qquad \epsilon \sim \mathcal N(0, I),

which makes :math:`z` a differentiable function of :math:`(\mu, \ell)`.

The decoder likelihood :math:`p_\theta(x\mid z)` is a choice (``likelihood=``):

* ``"bernoulli"``: the decoder returns logits :math:`\eta`; :math:`p(x_d = 1\mid z) = \operatorname{sigmoid}(\eta_d)`.
  The right choice for binarized MNIST, and the one behind every published MNIST NLL.
* ``"gaussian"``: the decoder returns the mean :math:`\hat x` (through a sigmoid by default, as in the problem
  set) and :math:`p(x\mid z) = \mathcal N(\hat x, \sigma^2 I)` with fixed ``decoder_variance`` :math:`\sigma^2`.
  The problem set's MSE + c KL objective is this model with :math:`\sigma^2 = cD/2`.
* ``"gaussian_learned"``: as above with one learned log-variance per data dimension.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import NamedTuple

import torch
from torch import Tensor, nn

from dgmlab.densities import bernoulli_log_likelihood, gaussian_log_likelihood
from dgmlab.errors import ModelConfigError
from dgmlab.models.protocols import reject_context
from dgmlab.utils import check_int, check_widths, device_of

LIKELIHOODS: tuple[str, ...] = ("bernoulli", "gaussian", "gaussian_learned")
ACTIVATIONS: dict[str, type[nn.Module]] = {"relu": nn.ReLU, "tanh": nn.Tanh, "elu": nn.ELU, "gelu": nn.GELU}


def _check_widths(input_dim: int, hidden_dims: Sequence[int], name: str) -> list[int]:
    check_int(input_dim, "input_dim", minimum=1, owner=name, error=ModelConfigError)
    return check_widths(hidden_dims, owner=name, error=ModelConfigError, example="[128, 32, 16, 2]")


def _activation(name: str, model: str) -> type[nn.Module]:
    if name not in ACTIVATIONS:
        raise ModelConfigError(f"{model}: unknown activation {name!r}; choose one of {', '.join(ACTIVATIONS)}")
    return ACTIVATIONS[name]


def mlp(widths: Sequence[int], activation: type[nn.Module] = nn.ReLU) -> nn.Sequential:
    """Linear layers through ``widths`` with ``activation`` between them and none after the last."""
    layers: list[nn.Module] = []
    for i, (fan_in, fan_out) in enumerate(zip(widths[:-1], widths[1:], strict=True)):
        layers.append(nn.Linear(fan_in, fan_out))
        if i < len(widths) - 2:
            layers.append(activation())
    return nn.Sequential(*layers)


class AEOutput(NamedTuple):
    """``code`` ``[B, k]`` and ``reconstruction`` ``[B, D]`` (in (0, 1) through the sigmoid)."""

    code: Tensor
    reconstruction: Tensor


class AE(nn.Module):
    """Deterministic autoencoder of problem 1(a): ``AE(784, [128, 32, 16, 2])`` has 211,122 parameters.

    Encoder: Linear + ReLU through ``hidden_dims``, linear code of width ``hidden_dims[-1]``.
    Decoder: the mirror image, ending in Linear(``hidden_dims[0]`` -> ``input_dim``) and a sigmoid.
    """

    def __init__(self, input_dim: int, hidden_dims: Sequence[int], activation: str = "relu") -> None:
        super().__init__()
        dims = _check_widths(input_dim, hidden_dims, "AE")
        act = _activation(activation, "AE")
        self.input_dim, self.hidden_dims, self.code_dim = input_dim, dims, dims[-1]
        self.encoder = mlp([input_dim, *dims], act)
        self.decoder = nn.Sequential(mlp([*reversed(dims), input_dim], act), nn.Sigmoid())

    def encode(self, x: Tensor) -> Tensor:
        """Code :math:`h = \\mathrm{enc}(x)`: ``[B, D] -> [B, k]``."""
        return self.encoder(x)

    def decode(self, code: Tensor) -> Tensor:
        """Reconstruction :math:`\\hat x = \\operatorname{sigmoid}(\\mathrm{dec}(h))`: ``[..., k] -> [..., D]``."""
        return self.decoder(code)

    def forward(self, x: Tensor) -> AEOutput:
        code = self.encode(x)
        return AEOutput(code=code, reconstruction=self.decode(code))


class VAEOutput(NamedTuple):
    """One forward pass: posterior ``mean`` and ``logvar`` ``[B, d]``, latent samples ``z`` and the raw
    decoder output ``decoded`` (logits for a Bernoulli decoder, means for a Gaussian one). Without
    ``n_samples`` they are ``[B, d]`` and ``[B, D]``; with ``n_samples=S`` they are ``[S, B, d]`` and
    ``[S, B, D]``."""

    mean: Tensor
    logvar: Tensor
    z: Tensor
    decoded: Tensor


class VAE(nn.Module):
    """Variational autoencoder of problem 2 with a choice of decoder likelihood.

    ``VAE(784, [128, 32, 16, 4])``: 2-D latent, 211,156 parameters. ``VAE(784, [128, 64, 8])``: 4-D latent,
    219,032 parameters. ``likelihood`` is ``"gaussian"`` (default, the problem set's sigmoid-mean decoder),
    ``"gaussian_learned"`` or ``"bernoulli"`` (logits; ``output_activation`` must then be ``"none"``).
    """

    def __init__(
        self,
        input_dim: int,
        hidden_dims: Sequence[int],
        likelihood: str = "gaussian",
        decoder_variance: float = 0.039,
        activation: str = "relu",
        output_activation: str | None = None,
        init_output_bias: bool = False,
    ) -> None:
        super().__init__()
        dims = _check_widths(input_dim, hidden_dims, "VAE")
        if dims[-1] % 2 != 0:
            raise ModelConfigError(
                f"VAE: the last width of hidden_dims ({dims[-1]}) holds the posterior mean and log-variance "
                f"side by side, so it must be even (it is twice the latent dimension); for a 2-D latent use "
                f"{[*dims[:-1], 4]}")
        if likelihood not in LIKELIHOODS:
            raise ModelConfigError(f"VAE: unknown likelihood {likelihood!r}; choose one of {', '.join(LIKELIHOODS)}")
        if not decoder_variance > 0:
            raise ModelConfigError(f"VAE: decoder_variance must be > 0, got {decoder_variance}")
        if not isinstance(init_output_bias, bool):
            raise ModelConfigError(f"VAE: init_output_bias must be true or false, got {init_output_bias!r}")
        if output_activation is None:
            output_activation = "none" if likelihood == "bernoulli" else "sigmoid"
        if output_activation not in ("sigmoid", "none"):
            raise ModelConfigError(f"VAE: output_activation must be 'sigmoid' or 'none', got {output_activation!r}")
        if likelihood == "bernoulli" and output_activation != "none":
            raise ModelConfigError("VAE: a Bernoulli decoder returns logits, so output_activation must be 'none'")
        act = _activation(activation, "VAE")
        self.input_dim, self.hidden_dims = input_dim, dims
        self.latent_dim = dims[-1] // 2
        self.likelihood, self.output_activation = likelihood, output_activation
        self.init_output_bias = init_output_bias
        self.encoder = mlp([input_dim, *dims], act)
        # decoder: d -> hidden_dims[-2] -> ... -> hidden_dims[0] -> D
        decoder = mlp([self.latent_dim, *reversed(dims[:-1]), input_dim], act)
        self.decoder = nn.Sequential(decoder, nn.Sigmoid()) if output_activation == "sigmoid" else decoder
        self.decoder_variance = float(decoder_variance)
        if likelihood == "gaussian_learned":
            self.decoder_logvar = nn.Parameter(torch.full((input_dim,), math.log(decoder_variance)))

    # -- the model's surface ------------------------------------------------------------------------------
    def encode(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """Posterior parameters ``(mean, logvar)``, each ``[B, d]``, split from the encoder's last layer."""
        mean, logvar = self.encoder(x).chunk(2, dim=-1)
        return mean, logvar

    def reparameterize(self, mean: Tensor, logvar: Tensor, n_samples: int | None = None,
                       generator: torch.Generator | None = None) -> Tensor:
        """:math:`z = \\mu + e^{\\ell/2}\\odot\\epsilon`. ``[B, d]``, or ``[S, B, d]`` with ``n_samples=S``."""
        shape = mean.shape if n_samples is None else (n_samples, *mean.shape)
        if n_samples is not None and n_samples < 1:
            raise ValueError(f"n_samples must be >= 1, got {n_samples}")
        eps = torch.randn(shape, dtype=mean.dtype, device=mean.device, generator=generator)
        # z = mu + exp(l / 2) * eps
        return mean + torch.exp(0.5 * logvar) * eps

    def decode(self, z: Tensor) -> Tensor:
        """Raw decoder output for ``z`` ``[..., d]``: logits (Bernoulli) or means (Gaussian), ``[..., D]``."""
        return self.decoder(z)

    def decode_mean(self, z: Tensor) -> Tensor:
        """The decoder's expected image :math:`\\mathbb E[x\\mid z]`, ``[..., D]`` (probabilities for Bernoulli)."""
        decoded = self.decode(z)
        return torch.sigmoid(decoded) if self.likelihood == "bernoulli" else decoded

    def log_likelihood(self, x: Tensor, decoded: Tensor) -> Tensor:
        """:math:`\\log p_\\theta(x\\mid z)` in nats, summed over ``D``; ``decoded`` may carry leading sample dims."""
        if self.likelihood == "bernoulli":
            return bernoulli_log_likelihood(x, decoded)
        logvar = self.decoder_logvar if self.likelihood == "gaussian_learned" else math.log(self.decoder_variance)
        return gaussian_log_likelihood(x, decoded, logvar)

    def forward(self, x: Tensor, n_samples: int | None = None) -> VAEOutput:
        mean, logvar = self.encode(x)
        z = self.reparameterize(mean, logvar, n_samples=n_samples)
        return VAEOutput(mean=mean, logvar=logvar, z=z, decoded=self.decode(z))

    @torch.no_grad()
    def sample(self, n: int, *, generator: torch.Generator | None = None, context: None = None) -> Tensor:
        """``n`` images from the model: :math:`z\\sim\\mathcal N(0, I)`, returned as decoder means ``[n, D]``."""
        reject_context(self, context)
        n = check_int(n, "n", minimum=1, owner=f"{type(self).__name__}.sample")
        z = torch.randn(n, self.latent_dim, device=device_of(self), generator=generator)
        return self.decode_mean(z)

    @torch.no_grad()
    def initialize_from_data(self, examples: Tensor) -> None:
        """With ``init_output_bias=True``: :meth:`set_output_bias` to the mean of the training ``examples``
        ``[N, D]`` (grey levels for dynamically binarized data: the mean of their binarizations). Else nothing."""
        if self.init_output_bias:
            self.set_output_bias(examples.reshape(len(examples), -1).mean(0))

    @torch.no_grad()
    def set_output_bias(self, data_mean: Tensor, eps: float = 1e-3) -> None:
        """Set the decoder's output bias to the data mean (its logit for a Bernoulli decoder), as
        Burda et al. (2015) do: the untrained decoder then predicts the average image."""
        last = [m for m in self.decoder.modules() if isinstance(m, nn.Linear)][-1]
        p = data_mean.clamp(eps, 1 - eps).to(last.bias)
        last.bias.copy_(torch.logit(p) if self.likelihood == "bernoulli" or self.output_activation == "sigmoid" else p)
