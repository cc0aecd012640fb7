r"""A VAE whose posterior is a planar flow with amortised parameters (Rezende and Mohamed 2015, section 4.2).

The approximate posterior
-------------------------
The encoder gives a diagonal Gaussian :math:`q_0(z_0\mid x) = \mathcal N(\mu(x), \operatorname{diag}\sigma^2(x))`
as in :class:`~dgmlab.models.autoencoders.VAE`, and :math:`K` planar steps carry its samples on:

.. math::

    z_0 = \mu(x) + \sigma(x)\odot\epsilon,\qquad z_k = f_k(z_{k-1}) = z_{k-1} + \hat u_k\, h(w_k^\top z_{k-1} + b_k),
    \qquad h = \tanh. \qquad\text{(F1)}

The change of variables gives the log-density of :math:`z_K` at no extra cost,

.. math::

    \log q_K(z_K\mid x) = \log \mathcal N(z_0; \mu, \sigma^2)
    - \sum_{k=1}^K \log\big|1 + \hat u_k^\top\psi_k(z_{k-1})\big|,
    \qquad \psi_k(z) = h'(w_k^\top z + b_k)\, w_k, \qquad\text{(F2)}

and the negative ELBO of the model (the paper's flow-augmented free energy, its eq. 15) is

.. math::

    \mathcal F(x) = \mathbb E_{q_0(z_0\mid x)}\Big[\log q_0(z_0\mid x) - \sum_{k=1}^K \log\big|1 + \hat u_k^\top
    \psi_k(z_{k-1})\big| - \log p_\theta(x, z_K)\Big] \ \ge\ -\log p_\theta(x), \qquad\text{(F3)}

estimated by Monte Carlo: no closed form exists for the KL term once :math:`K > 0`.

Amortised flow parameters
-------------------------
As in the paper, :math:`(u_k, w_k, b_k)_{k=1}^K` are computed from :math:`x` by the inference network: one linear
head on the encoder's last hidden layer (the activations that also feed the layer of :math:`(\mu, \log\sigma^2)`;
the input itself when ``hidden_dims`` has one width) returns :math:`K(2d + 1)` numbers per example. Each raw
:math:`u_k` is mapped, per example, to

.. math::

    \hat u = u + \big(m(w^\top u) - w^\top u\big)\frac{w}{\lVert w\rVert^2}, \qquad m(a) = -1 + \log(1 + e^{a}),
    \qquad\text{(F4)}

so that :math:`w^\top\hat u = m(w^\top u) > -1` and every :math:`f_k` is invertible (the paper's appendix A). The
layer :class:`~dgmlab.models.flows.Planar` holds one shared :math:`(w, u, b)` as parameters, so the steps here use
:func:`planar_transform`, the same equations with a parameter vector per example (the tests check one against the
other). Its log-determinant uses :math:`1 + \hat u^\top\psi = 1 + h'\,m(w^\top u) = h^2 + (1 - h^2)\log(1 + e^{w^\top
u})` (with :math:`h' = 1 - h^2`), a sum of two non-negative terms, so it stays finite where :math:`w^\top\hat u`
rounds to just below :math:`-1`.

Two choices the paper leaves open. The head is :math:`c + s\,W h` with :math:`s` = ``FLOW_HEAD_SCALE`` = 0.1: Adam
moves every weight by about the learning rate per step whatever its gradient, so each of the :math:`K(2d+1)` flow
parameters moves as fast as :math:`\mu` does, and the :math:`K` steps compound those moves in :math:`z_K`; the scale
slows the x-dependent part tenfold without changing what the head can represent. And the flow starts as the
identity: the bias :math:`c` of each step has a random :math:`w` of norm about 1 and
:math:`u = \log(e - 1)\,w/\lVert w\rVert^2`, so :math:`m(w^\top u) = 0` and :math:`\hat u = 0`, away from
:math:`w = 0` where (F4) diverges like :math:`w/\lVert w\rVert^2` (and where a zero initialisation would leave every
gradient of the flow zero).

With ``flow_length = 0`` the model is exactly the plain :class:`~dgmlab.models.autoencoders.VAE`: the same modules
(no flow head), the same parameters and, through :mod:`dgmlab.objectives`, the same objectives.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from dgmlab.densities import log_normal_pdf
from dgmlab.errors import ModelConfigError
from dgmlab.models.autoencoders import VAE
from dgmlab.utils import check_int

__all__ = ["FLOW_HEAD_SCALE", "PlanarFlowParameters", "PlanarVAE", "PlanarVAEOutput", "planar_transform",
           "planar_u_hat"]

FLOW_HEAD_SCALE = 0.1  # the flow head's x-dependent part is FLOW_HEAD_SCALE * W h (see PlanarVAE)


def planar_u_hat(w: Tensor, u: Tensor) -> Tensor:
    r""":math:`\hat u` of (F4) for raw ``w`` and ``u`` of shape ``[..., d]`` (one pair per leading index), with
    :math:`w^\top\hat u = m(w^\top u) > -1`; returns ``[..., d]``."""
    w_u = (w * u).sum(dim=-1, keepdim=True)
    # (F4) m(w^T u) = -1 + softplus(w^T u)
    m = -1 + F.softplus(w_u)
    # (F4) u_hat = u + (m(w^T u) - w^T u) w / |w|^2
    w_norm2 = (w * w).sum(dim=-1, keepdim=True).clamp_min(torch.finfo(w.dtype).tiny)
    return u + (m - w_u) * w / w_norm2


def _one_plus_w_u_hat(w: Tensor, u: Tensor) -> Tensor:
    r""":math:`1 + w^\top\hat u = \log(1 + e^{w^\top u})` by (F4), ``[...]`` for ``w``, ``u`` ``[..., d]``; 1 where
    :math:`w = 0` (then :math:`\hat u = u` and :math:`w^\top\hat u = 0`)."""
    w_u = (w * u).sum(dim=-1)
    return torch.where((w * w).sum(dim=-1) > 0, F.softplus(w_u), torch.ones_like(w_u))


def _planar_step(z: Tensor, w: Tensor, u_hat: Tensor, b: Tensor, one_plus_w_u_hat: Tensor) -> tuple[Tensor, Tensor]:
    h = torch.tanh((z * w).sum(dim=-1) + b)
    # (F1) f(z) = z + u_hat h(w^T z + b)
    y = z + h.unsqueeze(-1) * u_hat
    # (F2) 1 + u_hat^T psi = 1 + (1 - h^2) w^T u_hat = h^2 + (1 - h^2)(1 + w^T u_hat), both terms >= 0
    h2 = h * h
    log_det = torch.log(h2 + (1 - h2) * one_plus_w_u_hat)
    return y, log_det


def planar_transform(z: Tensor, w: Tensor, u: Tensor, b: Tensor) -> tuple[Tensor, Tensor]:
    r"""One planar step (F1) with parameters per example: :math:`y = z + \hat u\tanh(w^\top z + b)` and
    :math:`\log|\det\partial y/\partial z| = \log|1 + \hat u^\top\psi(z)|` (F2), :math:`\hat u` from the raw ``u``
    by (F4).

    Shapes: ``w``, ``u`` ``[B, d]`` and ``b`` ``[B]`` (example ``i`` has its own step); ``z`` ``[..., B, d]``
    (leading sample dimensions share the parameters of their example). Returns ``y`` ``[..., B, d]`` and the
    log-determinant ``[..., B]``."""
    return _planar_step(z, w, planar_u_hat(w, u), b, _one_plus_w_u_hat(w, u))


def _at_least_fp32(t: Tensor) -> Tensor:
    """A network output in at least fp32: under bfloat16 autocast linear layers return bfloat16, too coarse for
    log-densities summed over dimensions (the same rule as the objectives apply to ``encode``'s outputs)."""
    return t.float() if t.dtype in (torch.bfloat16, torch.float16) else t


class PlanarFlowParameters(NamedTuple):
    """The flow of each example: raw ``w`` and ``u`` ``[B, K, d]`` (``u`` before (F4)) and ``b`` ``[B, K]``."""

    w: Tensor
    u: Tensor
    b: Tensor


class PlanarVAEOutput(NamedTuple):
    """One forward pass: the base posterior's ``mean`` and ``logvar`` ``[B, d]``, the flow's output ``z`` = z_K,
    its log-density ``log_q`` = log q_K(z_K | x), and the raw decoder output ``decoded`` of z_K. Without
    ``n_samples``: ``z`` ``[B, d]``, ``log_q`` ``[B]``, ``decoded`` ``[B, D]``; with ``n_samples=S`` a leading
    ``S``."""

    mean: Tensor
    logvar: Tensor
    z: Tensor
    log_q: Tensor
    decoded: Tensor


class PlanarVAE(VAE):
    r"""A VAE with the posterior :math:`q_K(z_K\mid x)` of (F1, F2): a Gaussian followed by ``flow_length`` planar
    steps whose parameters the encoder computes per example (module docstring).

    ``PlanarVAE(784, [1024, 1024, 64], flow_length=10)``: the encoder and decoder of
    ``VAE(784, [1024, 1024, 64], likelihood="bernoulli")`` (a 32-D latent) plus a linear head 1024 -> 10 * 65 for
    the flow. The options are the VAE's, with a Bernoulli decoder by default (the paper's experiment is binarized
    MNIST), and ``flow_length`` :math:`K \ge 0`; ``flow_length=0`` is exactly the VAE. ``encode(x)`` gives the base
    :math:`q_0`; :meth:`sample_posterior` gives samples of :math:`q_K` with their log-density, which is what
    :func:`dgmlab.objectives.negative_elbo` and :func:`~dgmlab.objectives.importance_weighted_bound` use (the model
    is a :class:`~dgmlab.models.protocols.FlowPosterior`)."""

    def __init__(
        self,
        input_dim: int,
        hidden_dims: Sequence[int],
        likelihood: str = "bernoulli",
        decoder_variance: float = 0.039,
        activation: str = "relu",
        output_activation: str | None = None,
        init_output_bias: bool = False,
        flow_length: int = 10,
    ) -> None:
        flow_length = check_int(flow_length, "flow_length", minimum=0, owner="PlanarVAE", error=ModelConfigError,
                                hint="the number of planar steps; 0 is the plain VAE")
        super().__init__(input_dim, hidden_dims, likelihood=likelihood, decoder_variance=decoder_variance,
                         activation=activation, output_activation=output_activation,
                         init_output_bias=init_output_bias)
        self.flow_length = flow_length
        # the head reads the encoder's last hidden layer (the input itself for a one-layer encoder)
        hidden_width = self.hidden_dims[-2] if len(self.hidden_dims) > 1 else input_dim
        # K steps of (w [d], u [d], b) per example; none for K = 0, so the modules are exactly the VAE's
        self.flow_head = (nn.Linear(hidden_width, flow_length * (2 * self.latent_dim + 1)) if flow_length
                          else None)
        if self.flow_head is not None:
            self._start_flow_at_identity()

    @torch.no_grad()
    def _start_flow_at_identity(self) -> None:
        r"""Each step's bias: a random :math:`w` of norm about 1, :math:`u = \log(e - 1)\, w/\lVert w\rVert^2` and
        :math:`b = 0`, so :math:`m(w^\top u) = 0` and :math:`\hat u = 0` by (F4): the flow is the identity, yet
        away from :math:`w = 0`, where :math:`\hat u` diverges like :math:`w/\lVert w\rVert^2`. The weights on the
        hidden layer start at a tenth of their default scale."""
        head, d = self.flow_head, self.latent_dim
        head.weight.mul_(0.1)
        bias = head.bias.view(self.flow_length, 2 * d + 1)
        w = torch.randn(self.flow_length, d) / math.sqrt(d)
        bias[:, :d] = w
        bias[:, d:2 * d] = math.log(math.e - 1) * w / (w * w).sum(dim=-1, keepdim=True)
        bias[:, 2 * d] = 0.0

    # -- the posterior ----------------------------------------------------------------------------------------
    def encode_posterior(self, x: Tensor) -> tuple[Tensor, Tensor, PlanarFlowParameters]:
        """``(mean, logvar, flow)`` of every example: :math:`q_0`'s parameters ``[B, d]`` (those of :meth:`encode`)
        and the raw parameters of its ``flow_length`` planar steps (:class:`PlanarFlowParameters`; empty tensors for
        ``K = 0``), from one pass through the encoder."""
        hidden = self.encoder[:-1](x)
        mean, logvar = self.encoder[-1](hidden).chunk(2, dim=-1)
        d = self.latent_dim
        if self.flow_head is None:
            empty = mean.new_zeros(len(mean), 0, d)
            return mean, logvar, PlanarFlowParameters(w=empty, u=empty, b=empty[..., 0])
        # the head W h + c, with its x-dependent part scaled: Adam moves each weight by about lr per step
        raw = self.flow_head.bias + FLOW_HEAD_SCALE * F.linear(hidden, self.flow_head.weight)
        raw = raw.reshape(len(hidden), self.flow_length, 2 * d + 1)
        return mean, logvar, PlanarFlowParameters(w=raw[..., :d], u=raw[..., d:2 * d], b=raw[..., 2 * d])

    def flow(self, z0: Tensor, parameters: PlanarFlowParameters) -> tuple[Tensor, Tensor]:
        r"""The K planar steps (F1) applied to base samples ``z0`` ``[..., B, d]``: returns :math:`z_K`
        ``[..., B, d]`` and :math:`\sum_k \log|1 + \hat u_k^\top\psi_k(z_{k-1})|` ``[..., B]``."""
        w, b = parameters.w, parameters.b
        # (F4) for the K steps at once: they do not depend on z
        u_hat, one_plus_w_u_hat = planar_u_hat(w, parameters.u), _one_plus_w_u_hat(w, parameters.u)
        z = z0
        log_det = z0.new_zeros(z0.shape[:-1])
        for k in range(w.shape[1]):
            z, step_log_det = _planar_step(z, w[:, k], u_hat[:, k], b[:, k], one_plus_w_u_hat[:, k])
            log_det = log_det + step_log_det
        return z, log_det

    def _posterior(self, x: Tensor, n_samples: int | None) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        mean, logvar, parameters = self.encode_posterior(x)
        mean, logvar = _at_least_fp32(mean), _at_least_fp32(logvar)
        parameters = PlanarFlowParameters(*(_at_least_fp32(p) for p in parameters))
        z0 = self.reparameterize(mean, logvar, n_samples=n_samples)
        z, log_det = self.flow(z0, parameters)
        # (F2) log q_K(z_K | x) = log N(z_0; mu, sigma^2) - sum_k log|1 + u_hat_k^T psi_k(z_{k-1})|
        return mean, logvar, z, log_normal_pdf(z0, mean, logvar) - log_det

    def sample_posterior(self, x: Tensor, n_samples: int | None = None) -> tuple[Tensor, Tensor]:
        r"""Reparameterised samples :math:`z_K \sim q_K(z\mid x)` and :math:`\log q_K(z_K\mid x)` (F2) in nats.

        ``x`` ``[B, D]``; returns ``[B, d]`` and ``[B]``, or ``[S, B, d]`` and ``[S, B]`` with ``n_samples=S``. The
        base noise comes from :meth:`reparameterize` (the global RNG), as in the plain VAE."""
        _, _, z, log_q = self._posterior(x, n_samples)
        return z, log_q

    def forward(self, x: Tensor, n_samples: int | None = None) -> PlanarVAEOutput:  # type: ignore[override]
        mean, logvar, z, log_q = self._posterior(x, n_samples)
        return PlanarVAEOutput(mean=mean, logvar=logvar, z=z, log_q=log_q, decoded=self.decode(z))
