r"""Objectives: the ELBO, the problem set's MSE + KL, exact NLL and the importance-weighted bound, built
from the log-densities and KL terms of :mod:`dgmlab.densities` (re-exported here).

Every function here returns **per-example values in nats**: summed over data dimensions and latent
dimensions, never averaged over them. The trainer averages over the batch. Signs follow the names:
``kl >= 0``, ``elbo <= log p(x)``, and a ``*_nll`` is a negative log-likelihood.

The latent-variable model
--------------------------
A VAE models :math:`p_\theta(x, z) = p_\theta(x \mid z)\, p(z)` with :math:`p(z) = \mathcal N(0, I)` and
approximates the posterior by :math:`q_\phi(z \mid x) = \mathcal N(\mu_\phi(x), \operatorname{diag}
\sigma^2_\phi(x))`. For any :math:`q`, Jensen's inequality gives the evidence lower bound

.. math::

    \log p_\theta(x) = \log \mathbb E_{q}\Big[\frac{p_\theta(x, z)}{q_\phi(z\mid x)}\Big]
    \ \ge\ \mathbb E_{q}\big[\log p_\theta(x \mid z)\big] - D_{KL}\big(q_\phi(z\mid x)\,\|\,p(z)\big)
    = \mathcal L_{\mathrm{ELBO}}(x).

The gap is :math:`D_{KL}(q_\phi(z\mid x)\,\|\,p_\theta(z\mid x)) \ge 0`.

The KL term has two estimators, which the problem set compares:

* Monte Carlo (SGVB, Kingma & Welling's estimator A):
  :math:`\widehat{D}_{KL} = \log q_\phi(z\mid x) - \log p(z)` with :math:`z \sim q_\phi(z\mid x)`;
  unbiased, with variance falling like :math:`1/n` in the number of samples :math:`n`.
* Analytic (estimator B), for two Gaussians:
  :math:`D_{KL} = \tfrac12 \sum_j \big(\mu_j^2 + \sigma_j^2 - 1 - \log \sigma_j^2\big)`.

Averaging :math:`k` importance weights :math:`w_i = p_\theta(x, z_i) / q_\phi(z_i\mid x)` inside the
logarithm gives the tighter importance-weighted bound of Burda et al. (2015),

.. math::

    \mathcal L_k(x) = \mathbb E\Big[\log \frac1k \sum_{i=1}^k w_i\Big],\qquad
    \mathcal L_{\mathrm{ELBO}} = \mathcal L_1 \le \mathcal L_k \le \mathcal L_{k+1} \le \log p_\theta(x),

and :math:`-\mathcal L_{5000}` is the usual estimate of the negative log-likelihood on MNIST.

The problem set's own objective
-------------------------------
The problem set minimises :math:`\mathrm{MSE}(\hat x, x) + c\,D_{KL}`, where the MSE is averaged over the
:math:`D` pixels. A Gaussian decoder :math:`p(x\mid z) = \mathcal N(\hat x, \sigma^2 I)` has
:math:`-\log p(x \mid z) = \frac{1}{2\sigma^2}\lVert x-\hat x\rVert^2 + \frac D2 \log 2\pi\sigma^2`, so
:math:`\frac{2\sigma^2}{D}\,(-\mathrm{ELBO}) = \mathrm{MSE} + \frac{2\sigma^2}{D} D_{KL} + \text{const}`:
the problem set's loss is the negative ELBO of a Gaussian decoder with fixed variance
:math:`\sigma^2 = cD/2`, rescaled by :math:`2\sigma^2/D`. For MNIST (:math:`D = 784`) and
:math:`c = 10^{-4}` that is :math:`\sigma^2 \approx 0.039`. :func:`pset_mse_kl` keeps that objective under
its own name; :func:`negative_elbo` is the proper per-example bound in nats.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Literal

import torch
from torch import Tensor

# the log-densities and KL terms live in dgmlab.densities (models use them too); re-exported here
from dgmlab.densities import (  # noqa: F401
    LOG_2PI,
    bernoulli_log_likelihood,
    gaussian_log_likelihood,
    kl_analytic,
    kl_monte_carlo,
    log_mean_exp,
    log_normal_pdf,
    log_standard_normal,
)
from dgmlab.errors import CapabilityError
from dgmlab.models.protocols import DensityModel, FlowPosterior, LatentVariableModel

KLEstimator = Literal["analytic", "monte_carlo"]
KL_ESTIMATORS: tuple[str, ...] = ("analytic", "monte_carlo")


# ----------------------------------------------------------------------------------------------------------
# Objectives on models
# ----------------------------------------------------------------------------------------------------------
@dataclass
class LossTerms:
    """Per-example loss terms of one batch.

    ``loss`` (shape ``[B]``) is what the trainer minimises after averaging over the batch. ``terms`` holds
    every named quantity to log (each ``[B]``), and ``units`` says what each is measured in.
    """

    loss: Tensor
    terms: dict[str, Tensor] = field(default_factory=dict)
    units: dict[str, str] = field(default_factory=dict)


Objective = Callable[[torch.nn.Module, tuple[Tensor, ...]], LossTerms]


def _full(t: Tensor) -> Tensor:
    """A network output in at least fp32 (float64 stays float64). Under bfloat16 autocast
    (``TrainSettings.precision = "bf16"``) linear layers return bfloat16, and the sums below would keep only
    its 8 significant bits (a spacing of 0.5 nats near 90)."""
    return t.float() if t.dtype in (torch.bfloat16, torch.float16) else t


def _all_full(outputs: tuple[Tensor, ...]) -> tuple[Tensor, ...]:
    return tuple(_full(t) for t in outputs)


def _kl_term(estimator: str, z: Tensor, mean: Tensor, logvar: Tensor) -> Tensor:
    if estimator == "analytic":
        return kl_analytic(mean, logvar)
    if estimator == "monte_carlo":
        kl = kl_monte_carlo(z, mean, logvar)
        return kl.mean(dim=0) if z.dim() == mean.dim() + 1 else kl
    raise ValueError(f"unknown KL estimator {estimator!r}; choose one of {', '.join(KL_ESTIMATORS)}")


def _has_flow_posterior(model: object) -> bool:
    """Whether ``q(z | x)`` is a flow of at least one step on the Gaussian of ``encode(x)``
    (:class:`~dgmlab.models.protocols.FlowPosterior` with ``flow_length > 0``); a flow of length 0 is the plain
    Gaussian posterior and takes the plain path, analytic KL included."""
    return isinstance(model, FlowPosterior) and model.flow_length > 0


def negative_elbo(model: LatentVariableModel, x: Tensor, kl: str | None = None, n_samples: int = 1) -> LossTerms:
    r"""Per-example negative ELBO in nats, with its reconstruction and KL terms.

    .. math::
        -\mathcal L_{\mathrm{ELBO}}(x)
        = \underbrace{-\frac1S\sum_{s=1}^S \log p_\theta(x\mid z_s)}_{\texttt{recon\_nll}}
        + \underbrace{D_{KL}(q_\phi(z\mid x)\,\|\,p(z))}_{\texttt{kl}},\qquad z_s = \mu + \sigma\odot\epsilon_s

    The KL is analytic or the Monte-Carlo average over the same ``S`` samples (``kl="monte_carlo"``); the default
    ``kl=None`` is the analytic KL where one exists.
    Note that the log-likelihoods are averaged over samples, not the decoded images.
    Shapes: ``x`` is ``[B, D]``; every returned term is ``[B]``.

    A model with a flow posterior (:class:`~dgmlab.models.protocols.FlowPosterior`, ``flow_length`` :math:`K > 0`)
    draws :math:`z_s \sim q_K(z\mid x)` with :math:`\log q_K(z_s\mid x)` from ``sample_posterior``, and its KL term
    is the Monte-Carlo :math:`\frac1S\sum_s \log q_K(z_s\mid x) - \log p(z_s)` over the same samples: there is no
    closed form, so ``kl=None`` means Monte Carlo for it and an explicit ``kl="analytic"`` is a
    :class:`~dgmlab.errors.CapabilityError`. With ``K = 0`` the plain path runs, bit for bit.
    """
    if _has_flow_posterior(model):
        return _negative_elbo_flow(model, x, kl, n_samples)
    kl = "analytic" if kl is None else kl
    mean, logvar = _all_full(model.encode(x))
    z = model.reparameterize(mean, logvar, n_samples=n_samples)  # [S, B, d]
    # -1/S sum_s log p(x | z_s)
    recon_nll = -model.log_likelihood(x, _full(model.decode(z))).mean(dim=0)
    kl_term = _kl_term(kl, z, mean, logvar)
    loss = recon_nll + kl_term
    return LossTerms(
        loss=loss,
        terms={"neg_elbo": loss, "recon_nll": recon_nll, "kl": kl_term},
        units={"loss": "nats", "neg_elbo": "nats", "recon_nll": "nats", "kl": "nats"},
    )


def _negative_elbo_flow(model: FlowPosterior, x: Tensor, kl: str | None, n_samples: int) -> LossTerms:
    """:func:`negative_elbo` of a flow posterior: both terms are Monte-Carlo averages over ``q_K``'s samples."""
    if kl == "analytic":
        raise CapabilityError(f"negative_elbo: the posterior of {type(model).__name__} is a flow of "
                              f"{model.flow_length} steps, whose KL to the prior has no closed form; use "
                              f"kl=\"monte_carlo\" (objective.kl = \"monte_carlo\" in a config)")
    if kl not in (None, "monte_carlo"):
        raise ValueError(f"unknown KL estimator {kl!r}; choose one of {', '.join(KL_ESTIMATORS)}")
    z, log_q = _all_full(model.sample_posterior(x, n_samples=n_samples))  # [S, B, d], [S, B]
    # -1/S sum_s log p(x | z_s)
    recon_nll = -model.log_likelihood(x, _full(model.decode(z))).mean(dim=0)
    # 1/S sum_s log q_K(z_s | x) - log p(z_s)
    kl_term = (log_q - log_standard_normal(z)).mean(dim=0)
    loss = recon_nll + kl_term
    return LossTerms(
        loss=loss,
        terms={"neg_elbo": loss, "recon_nll": recon_nll, "kl": kl_term},
        units={"loss": "nats", "neg_elbo": "nats", "recon_nll": "nats", "kl": "nats"},
    )


def pset_mse_kl(model: LatentVariableModel, x: Tensor, coeff: float = 1e-4, kl: str = "analytic") -> LossTerms:
    r"""The problem set's objective, per example: pixel-averaged MSE plus ``coeff`` times the KL.

    .. math:: \ell(x) = \frac1D\sum_{d=1}^D (\hat x_d - x_d)^2 + c\, D_{KL}(q_\phi(z\mid x)\,\|\,p(z))

    with one reparameterised sample :math:`z` and :math:`\hat x` the decoder mean. Its batch mean equals
    the problem set's ``MSELoss()(x_hat, x) + c * KL.mean()``. Up to the factor :math:`2\sigma^2/D` and a
    constant it is the negative ELBO of a Gaussian decoder with **fixed variance** :math:`\sigma^2 = cD/2`
    (0.039 for MNIST with :math:`c = 10^{-4}`; see the module docstring). It is not in nats: compare its
    values only between runs with the same ``D`` and ``c``.
    """
    if coeff < 0:
        raise ValueError(f"coeff must be >= 0, got {coeff}")
    if _has_flow_posterior(model):
        raise CapabilityError(f"pset_mse_kl takes the Gaussian KL of encode(x), but the posterior of "
                              f"{type(model).__name__} is a flow; train it on negative_elbo (objective elbo)")
    mean, logvar = _all_full(model.encode(x))
    z = model.reparameterize(mean, logvar)
    x_hat = _full(model.decode_mean(z))
    # (1/D) sum_d (x_hat_d - x_d)^2
    mse = ((x_hat - x) ** 2).mean(dim=-1)
    kl_term = _kl_term(kl, z, mean, logvar)
    loss = mse + coeff * kl_term
    return LossTerms(
        loss=loss,
        terms={"mse": mse, "kl": kl_term},
        units={"loss": f"MSE + {coeff:g}*KL (problem-set units)", "mse": "squared error per dimension",
               "kl": "nats"},
    )


def reconstruction_mse(model: torch.nn.Module, x: Tensor) -> LossTerms:
    r"""The autoencoder objective, per example: :math:`\frac1D\sum_d (\hat x_d - x_d)^2`, with
    :math:`\hat x = \mathrm{dec}(\mathrm{enc}(x))`. Its batch mean equals ``MSELoss()`` of the problem set."""
    x_hat = _full(model(x).reconstruction)
    mse = ((x_hat - x) ** 2).mean(dim=-1)
    return LossTerms(loss=mse, terms={"mse": mse}, units={"loss": "squared error per dimension",
                                                            "mse": "squared error per dimension"})


def exact_nll(model: DensityModel, x: Tensor, *, context: Any = None, levels: int = 0) -> LossTerms:
    r"""The negative log-likelihood of a density model with an exact likelihood, per example, in nats.

    For an autoregressive model, :math:`-\log p_\theta(x) = -\sum_{i=1}^{D} \log p_\theta(x_i \mid x_{<i})`,
    which for binary data is the summed binary cross-entropy of the model's conditionals (problem set 2,
    problem 1). ``context`` (e.g. class labels ``[B]``) is passed on to a conditional model:
    :math:`-\log p_\theta(x \mid y)`. Also logs ``bits_per_dim`` = nll / (D ln 2).

    ``levels = L > 0`` for a continuous density of dequantized data :math:`y = (b + u)/L\in[0, 1)^D` of
    discrete levels :math:`b`: then :math:`-\log P(b) \le -\log p(y) + D\log L` (uniform dequantization),
    and that bound is the ``nll`` reported, in nats of the discrete data (``L = 256`` for 8-bit images)."""
    log_prob = _full(model.log_prob(x, context=context))
    dims = x[0].numel()
    # -log P(b) <= -log p((b + u) / L) + D log L
    nll = -log_prob + (dims * math.log(levels) if levels else 0.0)
    nats = f"nats (bound for {levels}-level data, uniform dequantization)" if levels else "nats"
    return LossTerms(loss=nll, terms={"nll": nll, "bits_per_dim": nll / (dims * math.log(2.0))},
                     units={"loss": nats, "nll": nats, "bits_per_dim": "bits per dimension"})


@torch.no_grad()
def importance_weighted_bound(
    model: LatentVariableModel, x: Tensor, num_samples: int = 5000, chunk_size: int = 500
) -> Tensor:
    r"""The importance-weighted bound :math:`\mathcal L_k(x)` in nats, per example (Burda et al., 2015).

    .. math::
        \mathcal L_k(x) = \log \frac1k \sum_{i=1}^{k} \exp\big(\log p_\theta(x\mid z_i) + \log p(z_i)
        - \log q_\phi(z_i\mid x)\big), \qquad z_i \sim q_\phi(z\mid x)

    The ``k = num_samples`` log-weights are computed ``chunk_size`` at a time and combined with a running
    ``logsumexp``, so memory is ``O(chunk_size * B * D)`` whatever ``k`` is. ``-L_k`` is the NLL estimate;
    it decreases towards :math:`-\log p(x)` as ``k`` grows. Shapes: ``x`` ``[B, D]`` -> ``[B]``.

    For a flow posterior (:class:`~dgmlab.models.protocols.FlowPosterior` with ``flow_length > 0``) the
    :math:`z_i` and :math:`\log q_K(z_i\mid x)` come from ``sample_posterior``.
    """
    if num_samples < 1 or chunk_size < 1:
        raise ValueError(f"num_samples and chunk_size must be >= 1, got {num_samples} and {chunk_size}")
    if _has_flow_posterior(model):
        return _importance_weighted_bound_flow(model, x, num_samples, chunk_size)
    mean, logvar = model.encode(x)
    running = torch.full(mean.shape[:-1], -math.inf, dtype=mean.dtype, device=mean.device)
    remaining = num_samples
    while remaining > 0:
        s = min(chunk_size, remaining)
        z = model.reparameterize(mean, logvar, n_samples=s)  # [s, B, d]
        # log w = log p(x|z) + log p(z) - log q(z|x)
        log_w = model.log_likelihood(x, model.decode(z)) + log_standard_normal(z) - log_normal_pdf(z, mean, logvar)
        running = torch.logaddexp(running, torch.logsumexp(log_w, dim=0))
        remaining -= s
    # log (1/k) sum_i w_i
    return running - math.log(num_samples)


def _importance_weighted_bound_flow(model: FlowPosterior, x: Tensor, num_samples: int, chunk_size: int) -> Tensor:
    """:func:`importance_weighted_bound` with :math:`z_i \\sim q_K(z\\mid x)` from ``sample_posterior``."""
    running: Tensor | None = None
    remaining = num_samples
    while remaining > 0:
        s = min(chunk_size, remaining)
        z, log_q = model.sample_posterior(x, n_samples=s)  # [s, B, d], [s, B]
        # log w = log p(x|z) + log p(z) - log q_K(z|x)
        log_w = model.log_likelihood(x, model.decode(z)) + log_standard_normal(z) - log_q
        chunk = torch.logsumexp(log_w, dim=0)
        running = chunk if running is None else torch.logaddexp(running, chunk)
        remaining -= s
    assert running is not None
    # log (1/k) sum_i w_i
    return running - math.log(num_samples)


def vqvae_loss(model: torch.nn.Module, x: Tensor) -> LossTerms:
    r"""VQ-VAE's objective per image (van den Oord et al. 2017, eq. 3), in nats:
    :math:`-\log p(x\mid z_q(x)) + \lVert\operatorname{sg}[z_e] - e\rVert^2 + \beta\lVert z_e - \operatorname{sg}[e]
    \rVert^2`, the reconstruction plus the quantizer's terms (:attr:`QuantizerOutput.losses
    <dgmlab.models.quantizers.QuantizerOutput>`: ``codebook`` and ``commitment`` for VQ, ``commitment`` alone with
    an EMA codebook, none for FSQ, ``entropy`` and ``commitment`` for LFQ; each summed over the image's code grid
    and averaged over the batch, so every image of a batch carries the batch's value). Also logs the batch's code
    ``perplexity`` :math:`\exp H(\hat p)` of the code histogram :math:`\hat p` and ``usage``, the fraction of the
    :math:`K` codes used at least once in the batch (both depend on the batch size)."""
    out = model(x)
    reconstruction = -model.log_likelihood(x, _full(out.logits))
    batch = reconstruction.shape[0]
    terms: dict[str, Tensor] = {"reconstruction": reconstruction}
    units = {"loss": "nats per image (reconstruction) + quantizer terms", "reconstruction": "nats per image"}
    loss = reconstruction
    for name, value in out.quantized.losses.items():
        value = _full(value).expand(batch)
        terms[name] = value
        units[name] = "squared distance per image" if name in ("codebook", "commitment") else "per image"
        loss = loss + value
    terms["perplexity"] = out.quantized.perplexity.detach().float().expand(batch)
    terms["usage"] = out.quantized.usage.detach().float().expand(batch)
    units["perplexity"] = "codes (exp of the entropy of one batch's code histogram)"
    units["usage"] = "fraction of the codes used in one batch"
    return LossTerms(loss=loss, terms=terms, units=units)


def vqvae_prior_nll(model: torch.nn.Module, x: Tensor) -> LossTerms:
    r"""The second stage of VQ-VAE: the prior's negative log-likelihood of the frozen VQ-VAE's code grids,
    :math:`-\log p_\psi(z_q(x))` (what trains the prior), and the bound it gives,
    :math:`-\log p(x) \le -\log p(x\mid z_q(x)) - \log p_\psi(z_q(x))` (``nll``, an upper bound on the NLL, with
    ``bits_per_dim`` = nll / (D ln 2)), per image in nats; ``reconstruction`` is the frozen first term."""
    reconstruction, prior = model.bound_terms(x)
    prior_nll = -_full(prior)
    nll = -_full(reconstruction) + prior_nll
    dims = x[0].numel()
    return LossTerms(loss=prior_nll,
                     terms={"prior_nll": prior_nll, "reconstruction": -_full(reconstruction), "nll": nll,
                            "bits_per_dim": nll / (dims * math.log(2.0))},
                     units={"loss": "nats per code grid", "prior_nll": "nats per code grid",
                            "reconstruction": "nats per image", "nll": "nats per image (upper bound: the ELBO)",
                            "bits_per_dim": "bits per dimension (upper bound)"})
