r"""Gaussian mixtures with full covariances, fitted by expectation-maximisation (EM), and k-means.

The model (Zoran & Weiss 2011 use it as a prior on 8x8 image patches, K = 200):

.. math:: p_\theta(x) = \sum_{k=1}^K \pi_k\,\mathcal N(x \mid \mu_k, \Sigma_k),\qquad
          \theta = \{\pi_k, \mu_k, \Sigma_k\}.

**EM as coordinate ascent on the ELBO.** For any distribution :math:`q(k)` over the component of each point,

.. math:: \log p_\theta(x) = \underbrace{\sum_k q(k)\,[\log \pi_k\mathcal N(x\mid\mu_k,\Sigma_k) - \log q(k)]}_
          {\mathrm{ELBO}(q, \theta)} + \mathrm{KL}\big(q \,\|\, p_\theta(k \mid x)\big).

The E-step maximises the ELBO over :math:`q` by setting it to the posterior (the *responsibilities*)
:math:`r_{nk} = \pi_k\mathcal N(x_n\mid\mu_k,\Sigma_k) / \sum_j \pi_j\mathcal N(x_n\mid\mu_j,\Sigma_j)`, so the KL
is zero and the ELBO equals the log-likelihood; the M-step maximises it over :math:`\theta` in closed form,

.. math:: N_k = \sum_n r_{nk},\quad \pi_k = N_k / N,\quad \mu_k = \tfrac{1}{N_k}\sum_n r_{nk}x_n,\quad
          \Sigma_k = \tfrac{1}{N_k}\sum_n r_{nk}(x_n-\mu_k)(x_n-\mu_k)^\top + \epsilon I,

so the log-likelihood never decreases (exactly so for :math:`\epsilon = 0`; the ridge :math:`\epsilon`, called
``reg_covar`` as in scikit-learn, keeps a component that collapses onto a few points invertible).

**k-means** is the limit :math:`\Sigma_k = \sigma^2 I`, :math:`\pi_k = 1/K`, :math:`\sigma \to 0`: the
responsibilities become the one-hot nearest-centre assignment and the mean update becomes Lloyd's centroid.

**Computation.** EM makes one pass over the data per iteration, in chunks of rows, never holding the
:math:`N\times K` responsibilities. Both steps are linear in a Gaussian's sufficient statistics
:math:`\phi(x) = ((x_ix_j)_{i\le j}, x, 1)`: the E-step's :math:`\log\pi_k\mathcal N(x\mid\mu_k,\Sigma_k)` is
:math:`W_k^\top\phi(x)` and the M-step needs only :math:`\sum_n r_{nk}\phi(x_n)`, so each is one matrix product
per chunk (the upper triangle halves the work of full outer products). The data are shifted by their mean
first, so the second moments do not cancel. :meth:`GaussianMixture.log_prob` evaluates the same densities in
the Cholesky form :math:`\lVert(x - \mu_k)U_k\rVert^2` (:math:`\Sigma_k^{-1} = U_kU_k^\top`), which loses
nothing to cancellation; the tests check that the two agree.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from dgmlab.models.protocols import reject_context
from dgmlab.utils import check_int

__all__ = ["AdaptHistory", "EMHistory", "GaussianMixture", "KMeansResult", "adapt_to_noisy", "em_fit", "em_step",
           "kmeans", "kmeans_plus_plus", "load_mixture", "mixture_from_assignments", "mixture_from_seeds",
           "most_likely_component", "save_mixture", "wiener_gains"]

LOG_2PI = math.log(2 * math.pi)


def _check_data(x: Any, dim: int | None, owner: str) -> Tensor:
    if not isinstance(x, Tensor) or x.dim() != 2 or not x.is_floating_point():
        shape = list(x.shape) if isinstance(x, Tensor) else type(x).__name__
        raise ValueError(f"{owner}: x must be a float tensor of points [N, D], got {shape}")
    if dim is not None and x.shape[1] != dim:
        raise ValueError(f"{owner}: x has {x.shape[1]} values per point but the mixture is over {dim}")
    if not torch.isfinite(x).all():
        raise ValueError(f"{owner}: x holds NaN or infinite values")
    return x


class GaussianMixture(nn.Module):
    r""":math:`p(x) = \sum_k \pi_k \mathcal N(x\mid\mu_k,\Sigma_k)` over :math:`\mathbb R^D`, a density model.

    Parameters are buffers (EM fits them, not gradients): ``weights`` :math:`\pi` ``[K]``, ``means`` ``[K, D]``,
    ``covariances`` ``[K, D, D]`` and the derived ``precision_cholesky`` :math:`U_k = L_k^{-\top}` with
    :math:`\Sigma_k = L_kL_k^\top`. A new mixture has equal weights, zero means and identity covariances; set
    them with :meth:`set_parameters`, :func:`mixture_from_assignments` or :func:`em_fit`.
    """

    def __init__(self, num_components: int, dim: int, *, reg_covar: float = 1e-6, dtype: torch.dtype = torch.float64):
        super().__init__()
        self.num_components = check_int(num_components, "num_components", minimum=1, owner="GaussianMixture")
        self.dim = check_int(dim, "dim", minimum=1, owner="GaussianMixture")
        if not (isinstance(reg_covar, (int, float)) and reg_covar >= 0):
            raise ValueError(f"GaussianMixture: reg_covar must be a number >= 0, got {reg_covar!r}")
        self.reg_covar = float(reg_covar)
        eye = torch.eye(dim, dtype=dtype).expand(num_components, dim, dim).clone()
        self.register_buffer("weights", torch.full((num_components,), 1 / num_components, dtype=dtype))
        self.register_buffer("means", torch.zeros(num_components, dim, dtype=dtype))
        self.register_buffer("covariances", eye)
        self.register_buffer("precision_cholesky", eye.clone())

    def set_parameters(self, weights: Tensor, means: Tensor, covariances: Tensor) -> GaussianMixture:
        """Set :math:`\\pi, \\mu, \\Sigma` (weights renormalised to sum to 1); a covariance that is not positive
        definite is a ValueError naming its component."""
        K, D = self.num_components, self.dim
        if weights.shape != (K,) or means.shape != (K, D) or covariances.shape != (K, D, D):
            raise ValueError(f"GaussianMixture.set_parameters: expected weights [{K}], means [{K}, {D}] and "
                             f"covariances [{K}, {D}, {D}], got {list(weights.shape)}, {list(means.shape)} and "
                             f"{list(covariances.shape)}")
        dtype = self.means.dtype
        covariances = covariances.to(dtype)
        cholesky, info = torch.linalg.cholesky_ex(covariances)
        if bool((info > 0).any()):
            bad = int(torch.nonzero(info)[0])
            raise ValueError(f"GaussianMixture: the covariance of component {bad} is not positive definite; raise "
                             f"reg_covar (now {self.reg_covar:g}) or give that component more points")
        eye = torch.eye(D, dtype=dtype).expand(K, D, D)
        # U_k = L_k^{-T}: then Sigma_k^{-1} = U_k U_k^T and (x - mu_k) U_k is the whitened residual
        precision_cholesky = torch.linalg.solve_triangular(cholesky, eye, upper=False).transpose(-1, -2)
        weights = weights.to(dtype)
        self.weights.copy_(weights / weights.sum())
        self.means.copy_(means.to(dtype))
        self.covariances.copy_(covariances)
        self.precision_cholesky.copy_(precision_cholesky)
        return self

    def log_joint(self, x: Tensor) -> Tensor:
        r""":math:`\log \pi_k + \log\mathcal N(x_n\mid\mu_k,\Sigma_k)` for every point and component, ``[N, K]``."""
        return _log_joint(x.to(self.means.dtype), self.weights, self.means, self.precision_cholesky)

    def log_prob(self, x: Tensor, *, context: Any = None) -> Tensor:
        r""":math:`\log p(x_n) = \operatorname{logsumexp}_k [\log\pi_k + \log\mathcal N(x_n\mid\mu_k,\Sigma_k)]`,
        ``[N]`` in nats."""
        reject_context(self, context)
        x = _check_data(x, self.dim, "GaussianMixture.log_prob")
        return torch.cat([self.log_joint(chunk).logsumexp(-1) for chunk in x.split(4096)])

    def responsibilities(self, x: Tensor) -> Tensor:
        r"""The posterior :math:`r_{nk} = p(k \mid x_n)`, ``[N, K]`` (the E-step's :math:`q`)."""
        x = _check_data(x, self.dim, "GaussianMixture.responsibilities")
        return self.log_joint(x).softmax(-1)

    def elbo(self, x: Tensor, q: Tensor) -> Tensor:
        r""":math:`\sum_k q_{nk}[\log\pi_k\mathcal N(x_n\mid\mu_k,\Sigma_k) - \log q_{nk}]` per point, ``[N]``: equal
        to ``log_prob`` when ``q`` is :meth:`responsibilities`, below it by :math:`\mathrm{KL}(q\,\|\,p(k\mid x))`
        otherwise (``q`` ``[N, K]``, rows summing to 1; :math:`0 \log 0 = 0`)."""
        x = _check_data(x, self.dim, "GaussianMixture.elbo")
        q = q.to(self.means.dtype)
        entropy_terms = torch.where(q > 0, q * torch.log(q.clamp_min(1e-300)), torch.zeros_like(q))
        return (q * self.log_joint(x)).sum(-1) - entropy_terms.sum(-1)

    @torch.no_grad()
    def sample(self, n: int, *, generator: torch.Generator | None = None, context: Any = None) -> Tensor:
        r"""``n`` draws ``[n, D]``: :math:`k \sim \pi`, then :math:`x = \mu_k + L_k\varepsilon`,
        :math:`\varepsilon\sim\mathcal N(0, I)`."""
        reject_context(self, context)
        check_int(n, "n", minimum=1, owner="GaussianMixture.sample")
        device = self.means.device
        k = torch.multinomial(self.weights, n, replacement=True, generator=generator)
        eps = torch.randn(n, self.dim, generator=generator, dtype=self.means.dtype, device=device)
        cholesky = torch.linalg.cholesky(self.covariances)
        return self.means[k] + (cholesky[k] @ eps.unsqueeze(-1)).squeeze(-1)

    def extra_repr(self) -> str:
        return f"num_components={self.num_components}, dim={self.dim}, reg_covar={self.reg_covar:g}"


MIXTURE_TENSORS = ("weights", "means", "covariances")


def save_mixture(mixture: GaussianMixture, path: str | Path, *, metadata: dict[str, str] | None = None) -> Path:
    """Write ``mixture``'s weights, means and covariances to the safetensors file ``path``, atomically (a crash
    leaves any earlier file intact); ``metadata`` (strings) is stored in the file's header with ``reg_covar``."""
    from safetensors.torch import save

    from dgmlab.checkpoint import atomic_write_bytes

    header = {"reg_covar": repr(mixture.reg_covar), **(metadata or {})}
    tensors = {name: getattr(mixture, name).detach().cpu().contiguous() for name in MIXTURE_TENSORS}
    path = Path(path)
    atomic_write_bytes(path, save(tensors, metadata=header))
    return path


def load_mixture(path: str | Path) -> GaussianMixture:
    """The mixture that :func:`save_mixture` wrote to ``path`` (float64). A missing or foreign file is one
    ValueError that says what is wrong."""
    from safetensors import SafetensorError, safe_open

    path = Path(path)
    if not path.is_file():
        raise ValueError(f"load_mixture: {path} does not exist; fit a mixture first (benchmarks/patch_prior_gmm.py "
                         f"writes gmm_K<k>.safetensors)")
    try:
        with safe_open(path, framework="pt") as file:
            missing = [name for name in MIXTURE_TENSORS if name not in file.keys()]
            if missing:
                raise ValueError(f"load_mixture: {path} holds {sorted(file.keys())}, not a mixture's "
                                 f"{list(MIXTURE_TENSORS)}")
            tensors = {name: file.get_tensor(name) for name in MIXTURE_TENSORS}
            header = file.metadata() or {}
    except SafetensorError as error:
        raise ValueError(f"load_mixture: {path} is not a readable safetensors file ({error})") from None
    means = tensors["means"]
    if means.dim() != 2:
        raise ValueError(f"load_mixture: {path}: means must be [K, D], got {list(means.shape)}")
    reg_covar = float(header.get("reg_covar", 1e-6))
    mixture = GaussianMixture(means.shape[0], means.shape[1], reg_covar=reg_covar)
    return mixture.set_parameters(tensors["weights"], means, tensors["covariances"])


def _whitening(means: Tensor, precision_cholesky: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """``[U_1 ... U_K]`` as ``[D, K D]``, the offsets ``mu_k U_k`` as ``[K D]`` and ``log det U_k`` ``[K]``."""
    K, D = means.shape
    stacked = precision_cholesky.permute(1, 0, 2).reshape(D, K * D)
    offsets = torch.einsum("kd,kde->ke", means, precision_cholesky).reshape(K * D)
    log_det = torch.diagonal(precision_cholesky, dim1=-2, dim2=-1).log().sum(-1)
    return stacked, offsets, log_det


def _log_joint(x: Tensor, weights: Tensor, means: Tensor, precision_cholesky: Tensor,
               whitening: tuple[Tensor, Tensor, Tensor] | None = None) -> Tensor:
    K, D = means.shape
    stacked, offsets, log_det = whitening or _whitening(means, precision_cholesky)
    # ||(x - mu_k) U_k||^2 for all k at once: one [N, D] x [D, K D] product
    residual = (x @ stacked).sub_(offsets)
    mahalanobis = residual.square_().view(len(x), K, D).sum(-1)
    # log pi_k - D/2 log 2 pi + log det U_k - 1/2 ||(x - mu_k) U_k||^2
    return torch.log(weights) - 0.5 * D * LOG_2PI + log_det - 0.5 * mahalanobis


@dataclass
class EMHistory:
    """What :func:`em_fit` did: ``log_likelihood[i]`` is the mean log-likelihood per point (nats) under the
    parameters *before* M-step ``i + 1`` (so ``log_likelihood[0]`` is the start's, as scikit-learn's
    ``lower_bound_``), ``final_log_likelihood`` the one after the last M-step."""

    log_likelihood: list[float] = field(default_factory=list)
    final_log_likelihood: float = float("nan")
    iterations: int = 0
    converged: bool = False
    seconds: float = 0.0


def _features(x: Tensor, out: Tensor | None = None) -> Tensor:
    r"""``[x_i x_j for i <= j, x_1 .. x_D, 1]`` of every row, ``[N, D(D+1)/2 + D + 1]``: the sufficient statistics
    of a Gaussian, in which both the log-density and the M-step's moments are linear."""
    n, D = x.shape
    T = D * (D + 1) // 2
    features = torch.empty(n, T + D + 1, dtype=x.dtype, device=x.device) if out is None else out[:n]
    start = 0
    for i in range(D):  # the upper triangle row by row, in torch.triu_indices order
        torch.mul(x[:, i:i + 1], x[:, i:], out=features[:, start:start + D - i])
        start += D - i
    features[:, T:T + D] = x
    features[:, -1] = 1
    return features


def _feature_weights(weights: Tensor, means: Tensor, precision_cholesky: Tensor) -> Tensor:
    r"""``W`` ``[K, D(D+1)/2 + D + 1]`` with ``W @ features(x) = log pi_k + log N(x | mu_k, Sigma_k)``: expanding
    :math:`-\tfrac12(x-\mu)^\top P(x-\mu)` with :math:`P = U U^\top` gives :math:`-\tfrac12 P_{ii}` on
    :math:`x_i^2`, :math:`-P_{ij}` on :math:`x_ix_j` (i < j), :math:`P\mu` on :math:`x` and
    :math:`-\tfrac12\mu^\top P\mu + \log\pi + \log\det U - \tfrac D2\log 2\pi` on the constant."""
    K, D = means.shape
    rows, cols = torch.triu_indices(D, D, device=means.device)
    precision = precision_cholesky @ precision_cholesky.transpose(-1, -2)
    quadratic = precision[:, rows, cols] * torch.where(rows == cols, -0.5, -1.0).to(precision)
    linear = torch.einsum("kij,kj->ki", precision, means)
    log_det = torch.diagonal(precision_cholesky, dim1=-2, dim2=-1).log().sum(-1)
    constant = -0.5 * (linear * means).sum(-1) + torch.log(weights) + log_det - 0.5 * D * LOG_2PI
    return torch.cat([quadratic, linear, constant[:, None]], dim=1)


@torch.no_grad()
def em_step(mixture: GaussianMixture, x: Tensor, chunk_size: int = 2048, compute_dtype: torch.dtype | None = None,
            shift: Tensor | None = None) -> float:
    r"""One E-step and one M-step of ``mixture`` on ``x`` ``[N, D]`` in one pass over the data, in chunks of
    ``chunk_size`` rows. Returns the mean log-likelihood per point under the parameters before the step.

    Both steps are one matrix product each with the Gaussian's sufficient statistics :math:`\phi(x)` (the upper
    triangle of :math:`xx^\top`, :math:`x`, 1): the E-step's :math:`\log\pi_k\mathcal N(x\mid k) = \phi(x)^\top
    W_k` and the M-step's :math:`\sum_n r_{nk}\phi(x_n) = (N_k\,\mathrm E[xx^\top], N_k\mu_k, N_k)`.
    ``compute_dtype`` (default: the mixture's, float64) is the dtype of those products; the statistics are
    summed over chunks in the mixture's dtype. float32 is faster and fits data whose components are
    not far from the data's mean compared with their spread (mean-removed image patches); the second moments
    lose digits otherwise. ``shift``: the point the statistics are taken about (default: the mean of ``x``, which
    :func:`em_fit` computes once for all its steps)."""
    counts, new_means, covariances, log_likelihood = _weighted_moments(mixture, x, chunk_size, compute_dtype, shift)
    # Sigma_k = E_r[(x - mu_k)(x - mu_k)^T] + eps I
    covariances.diagonal(dim1=-2, dim2=-1).add_(mixture.reg_covar)
    mixture.set_parameters(counts / len(x), new_means, covariances)
    return log_likelihood


def _weighted_moments(mixture: GaussianMixture, x: Tensor, chunk_size: int, compute_dtype: torch.dtype | None,
                      shift: Tensor | None) -> tuple[Tensor, Tensor, Tensor, float]:
    """One pass of the E-step over ``x``: per component the responsibility mass :math:`N_k`, the weighted mean
    and the weighted covariance of the points, and the mean log-likelihood per point, as :func:`em_step` uses
    them."""
    K, D = mixture.num_components, mixture.dim
    dtype, device = mixture.means.dtype, mixture.means.device
    compute_dtype = compute_dtype or dtype
    T = D * (D + 1) // 2
    shift = (x.mean(0, dtype=dtype) if shift is None else shift).to(device=device, dtype=dtype)
    # statistics of x - shift: the second moments stay small, the covariances are unchanged
    # [K, T + D + 1]: component k's row gives log pi_k N(x | k) from phi(x)
    weights = _feature_weights(mixture.weights, mixture.means - shift, mixture.precision_cholesky).to(compute_dtype)
    statistics = torch.zeros(K, T + D + 1, dtype=dtype, device=device)
    buffer = torch.empty(min(chunk_size, len(x)), T + D + 1, dtype=compute_dtype, device=device)
    total = 0.0
    for chunk in x.split(chunk_size):
        features = _features((chunk.to(device=device, dtype=dtype) - shift).to(compute_dtype), buffer)
        # E-step, components along rows (the faster product layout here): log r_kn = log pi_k N(x_n | k) - log p(x_n)
        log_joint = weights @ features.T
        log_px = log_joint.logsumexp(0, keepdim=True)
        total += float(log_px.sum(dtype=torch.float64))
        r = log_joint.sub_(log_px).exp_()
        # M-step statistics: sum_n r_kn phi(x_n) = (sum r x x^T on the upper triangle, sum r x, N_k)
        statistics += (r @ features).to(dtype)
    rows, cols = torch.triu_indices(D, D, device=device)
    # N_k + 10 eps as scikit-learn, so an empty component divides by a tiny number, not by zero
    counts = statistics[:, -1] + 10 * torch.finfo(dtype).eps
    means = statistics[:, T:T + D] / counts[:, None]
    second = statistics[:, :T] / counts[:, None]
    moments = torch.zeros(K, D, D, dtype=dtype, device=device)
    moments[:, rows, cols] = second
    moments[:, cols, rows] = second
    covariances = moments - means[:, :, None] * means[:, None, :]
    return counts, means + shift, covariances, total / len(x)


@dataclass
class AdaptHistory:
    r"""What :func:`adapt_to_noisy` did: ``log_likelihood[i]`` is the mean log-likelihood per *noisy* point,
    :math:`\log\sum_k\pi_k\mathcal N(y_n\mid\mu_k,\Sigma_k + sI)`, under the parameters before iteration
    ``i + 1``; ``final_log_likelihood`` the one after the last."""

    log_likelihood: list[float] = field(default_factory=list)
    final_log_likelihood: float = float("nan")
    seconds: float = 0.0


def _with_noise(mixture: GaussianMixture, noise_variance: float) -> GaussianMixture:
    # the mixture of the observations y = x + n: Sigma_k + s I
    noisy = GaussianMixture(mixture.num_components, mixture.dim, reg_covar=0.0, dtype=mixture.means.dtype)
    covariances = mixture.covariances.clone()
    covariances.diagonal(dim1=-2, dim2=-1).add_(noise_variance)
    return noisy.to(mixture.means.device).set_parameters(mixture.weights, mixture.means, covariances)


def wiener_gains(mixture: GaussianMixture, noise_variance: float) -> Tensor:
    r""":math:`W_k = \Sigma_k(\Sigma_k + sI)^{-1}` for every component, ``[K, D, D]``: the gain of the Wiener
    filter :math:`\mu_k + W_k(y - \mu_k)`, the mean of a clean point given its observation :math:`y` with added
    noise of variance :math:`s` under component :math:`k` (EPLL's z-step, the E-step of :func:`adapt_to_noisy`)."""
    sigma = mixture.covariances
    eye = torch.eye(mixture.dim, dtype=sigma.dtype, device=sigma.device)
    # (Sigma_k + s I)^{-1} Sigma_k is W_k^T: both factors are symmetric
    return torch.linalg.solve(sigma + noise_variance * eye, sigma).transpose(-1, -2)


@torch.no_grad()
def adapt_to_noisy(prior: GaussianMixture, y: Tensor, noise_variance: float, *, relevance: float = 1.0,
                   iterations: int = 10, chunk_size: int = 2048,
                   compute_dtype: torch.dtype | None = None) -> tuple[GaussianMixture, AdaptHistory]:
    r"""Adapt ``prior`` (a mixture over clean points :math:`x`) to noisy observations ``y`` ``[N, D]``,
    :math:`y_n = x_n + \epsilon_n`, :math:`\epsilon_n \sim \mathcal N(0, sI)` with :math:`s` = ``noise_variance``:
    EM for the clean mixture with :math:`x_n` and its component as the latent variables, and the prior's
    parameters as a conjugate prior of strength ``relevance`` (MAP adaptation, Reynolds, Quatieri & Dunn 2000).
    Returns the adapted mixture (``prior`` is left as it is) and the noisy log-likelihood per iteration.

    **E-step.** Under component :math:`k`, :math:`y_n \sim \mathcal N(\mu_k, C_k)` with :math:`C_k = \Sigma_k + sI`,
    so :math:`r_{nk} \propto \pi_k\mathcal N(y_n \mid \mu_k, C_k)`, and the clean point's posterior is Gaussian with
    mean :math:`\mu_k + W_k(y_n - \mu_k)`, :math:`W_k = \Sigma_kC_k^{-1}`, and covariance
    :math:`V_k = \Sigma_k - W_k\Sigma_k`.

    **M-step.** With :math:`N_k = \sum_n r_{nk}`, :math:`\bar y_k` and :math:`Q_k` the responsibility-weighted mean
    and covariance of the :math:`y_n`, the expected clean moments are
    :math:`\bar x_k = \mu_k + W_k(\bar y_k - \mu_k)` and :math:`S_k = W_kQ_kW_k^\top + V_k`, and with
    :math:`\alpha_k = N_k / (N_k + \rho)` (:math:`\rho` = ``relevance``; :math:`\pi^0, \mu^0, \Sigma^0` the prior's)

    .. math:: \pi_k \propto \alpha_k N_k / N + (1 - \alpha_k)\pi^0_k,\qquad
              \mu_k = \alpha_k\bar x_k + (1 - \alpha_k)\mu^0_k,

    .. math:: \Sigma_k = \alpha_kS_k + (1 - \alpha_k)\Sigma^0_k
              + \alpha_k(1 - \alpha_k)(\bar x_k - \mu^0_k)(\bar x_k - \mu^0_k)^\top + \epsilon I.

    A component that explains few observations (:math:`N_k \ll \rho`) keeps the prior's parameters; one that
    explains many moves to what the data say. With :math:`\rho = 0` this is EM on the noisy data, whose
    log-likelihood :math:`\sum_n\log\sum_k\pi_k\mathcal N(y_n\mid\mu_k, C_k)` never decreases; with also
    :math:`s = 0` it is :func:`em_step`. The E-step's pass is :func:`em_step`'s (``chunk_size``,
    ``compute_dtype`` as there); :math:`\epsilon` is the prior's ``reg_covar``."""
    owner = "adapt_to_noisy"
    y = _check_data(y, prior.dim, owner)
    check_int(iterations, "iterations", minimum=1, owner=owner)
    check_int(chunk_size, "chunk_size", minimum=1, owner=owner)
    if not (isinstance(noise_variance, (int, float)) and math.isfinite(noise_variance) and noise_variance >= 0):
        raise ValueError(f"{owner}: noise_variance must be a number >= 0, got {noise_variance!r}")
    if not (isinstance(relevance, (int, float)) and math.isfinite(relevance) and relevance >= 0):
        raise ValueError(f"{owner}: relevance must be a number >= 0, got {relevance!r}")
    started = time.perf_counter()
    dtype = prior.means.dtype
    weights0, means0, covariances0 = prior.weights, prior.means, prior.covariances
    adapted = GaussianMixture(prior.num_components, prior.dim, reg_covar=prior.reg_covar, dtype=dtype)
    adapted = adapted.to(prior.means.device).set_parameters(weights0, means0, covariances0)
    shift = y.mean(0, dtype=dtype)
    history = AdaptHistory()
    for _ in range(iterations):
        noisy = _with_noise(adapted, noise_variance)
        counts, y_means, y_covariances, log_likelihood = _weighted_moments(noisy, y, chunk_size, compute_dtype, shift)
        history.log_likelihood.append(log_likelihood)
        sigma, mu = adapted.covariances, adapted.means
        gain = wiener_gains(adapted, noise_variance)
        x_means = mu + torch.einsum("kde,ke->kd", gain, y_means - mu)
        x_covariances = gain @ y_covariances @ gain.transpose(-1, -2) + sigma - gain @ sigma
        alpha = counts / (counts + relevance)
        a = alpha[:, None, None]
        offset = x_means - means0
        covariances = (a * x_covariances + (1 - a) * covariances0
                       + a * (1 - a) * offset[:, :, None] * offset[:, None, :])
        covariances = 0.5 * (covariances + covariances.transpose(-1, -2))
        covariances.diagonal(dim1=-2, dim2=-1).add_(prior.reg_covar)
        weights = alpha * counts / len(y) + (1 - alpha) * weights0
        adapted.set_parameters(weights, alpha[:, None] * x_means + (1 - alpha[:, None]) * means0, covariances)
    history.final_log_likelihood = float(_with_noise(adapted, noise_variance).log_prob(y).mean())
    history.seconds = time.perf_counter() - started
    return adapted, history


@torch.no_grad()
def em_fit(mixture: GaussianMixture, x: Tensor, max_iter: int = 100, tol: float = 1e-3, chunk_size: int = 2048,
           compute_dtype: torch.dtype | None = None, callback: Any = None) -> EMHistory:
    """EM on ``x`` ``[N, D]`` from ``mixture``'s current parameters, until the mean log-likelihood per point
    changes by less than ``tol`` between iterations (scikit-learn's rule) or after ``max_iter`` iterations
    (``tol=0`` runs all of them). ``compute_dtype`` as in :func:`em_step`; ``callback(iteration, mixture,
    log_likelihood)`` is called after each iteration."""
    owner = "em_fit"
    x = _check_data(x, mixture.dim, owner)
    check_int(max_iter, "max_iter", minimum=1, owner=owner)
    check_int(chunk_size, "chunk_size", minimum=1, owner=owner)
    if not (isinstance(tol, (int, float)) and tol >= 0):
        raise ValueError(f"{owner}: tol must be a number >= 0, got {tol!r}")
    history = EMHistory()
    started = time.perf_counter()
    shift = x.mean(0, dtype=mixture.means.dtype)
    for iteration in range(1, max_iter + 1):
        history.log_likelihood.append(em_step(mixture, x, chunk_size, compute_dtype, shift))
        history.iterations = iteration
        if callback is not None:
            callback(iteration, mixture, history.log_likelihood[-1])
        if iteration > 1 and abs(history.log_likelihood[-1] - history.log_likelihood[-2]) < tol:
            history.converged = True
            break
    history.final_log_likelihood = float(mixture.log_prob(x).mean())
    history.seconds = time.perf_counter() - started
    return history


@torch.no_grad()
def most_likely_component(mixture: GaussianMixture, x: Tensor, *, added_variance: float = 0.0,
                          compute_dtype: torch.dtype | None = None, chunk_size: int = 4096) -> Tensor:
    r""":math:`\arg\max_k \pi_k\,\mathcal N(x_n \mid \mu_k, \Sigma_k + s I)` for every row of ``x``, ``[N]``:
    the component that best explains a point observed with added Gaussian noise of variance
    :math:`s` = ``added_variance`` (0: the point itself), as EPLL's patch step picks it.

    One product with the sufficient statistics per chunk, as :func:`em_step`; ``compute_dtype=torch.float32``
    is faster and changes the choice only where two components explain a point almost equally."""
    x = _check_data(x, mixture.dim, "most_likely_component")
    if not (isinstance(added_variance, (int, float)) and added_variance >= 0):
        raise ValueError(f"most_likely_component: added_variance must be a number >= 0, got {added_variance!r}")
    dtype = mixture.means.dtype
    compute_dtype = compute_dtype or dtype
    if added_variance > 0:
        mixture = _with_noise(mixture, added_variance)
    shift = x.mean(0, dtype=dtype)
    weights = _feature_weights(mixture.weights, mixture.means - shift, mixture.precision_cholesky).to(compute_dtype)
    buffer = torch.empty(min(chunk_size, len(x)), weights.shape[1], dtype=compute_dtype, device=x.device)
    return torch.cat([(weights @ _features((chunk.to(dtype) - shift).to(compute_dtype), buffer).T).argmax(0)
                      for chunk in x.split(chunk_size)])


def _squared_distances(x: Tensor, centres: Tensor) -> Tensor:
    # ||x||^2 - 2 x.c + ||c||^2, clamped at 0 against rounding
    return (x.square().sum(-1, keepdim=True) - 2 * x @ centres.T + centres.square().sum(-1)).clamp_min_(0)


@torch.no_grad()
def kmeans_plus_plus(x: Tensor, num_centres: int, *, generator: torch.Generator | None = None) -> Tensor:
    """Arthur & Vassilvitskii's seeding: the first centre uniformly, each next one with probability
    proportional to the squared distance to the nearest centre so far. Returns the row indices ``[K]``."""
    x = _check_data(x, None, "kmeans_plus_plus")
    check_int(num_centres, "num_centres", minimum=1, owner="kmeans_plus_plus")
    if num_centres > len(x):
        raise ValueError(f"kmeans_plus_plus: {num_centres} centres need at least as many points, got {len(x)}")
    first = int(torch.randint(len(x), (1,), generator=generator))
    chosen = [first]
    nearest = _squared_distances(x, x[first:first + 1]).squeeze(1)
    for _ in range(1, num_centres):
        total = nearest.sum()
        if total <= 0:  # fewer distinct points than centres: take any point not chosen yet
            free = torch.ones(len(x), dtype=torch.bool)
            free[chosen] = False
            index = int(torch.nonzero(free)[0])
        else:
            index = int(torch.multinomial(nearest / total, 1, generator=generator))
        chosen.append(index)
        nearest = torch.minimum(nearest, _squared_distances(x, x[index:index + 1]).squeeze(1))
    return torch.tensor(chosen)


@dataclass
class KMeansResult:
    """``centres`` ``[K, D]``, ``labels`` ``[N]`` (nearest centre of each point), ``inertia`` the sum of squared
    distances to the nearest centre after each Lloyd iteration (never increasing)."""

    centres: Tensor
    labels: Tensor
    inertia: list[float]


@torch.no_grad()
def kmeans(x: Tensor, num_centres: int, max_iter: int = 100, *, generator: torch.Generator | None = None,
           centres: Tensor | None = None) -> KMeansResult:
    r"""Lloyd's algorithm from k-means++ seeds (or ``centres``): assign each point to its nearest centre, move
    each centre to the mean of its points, until no assignment changes. An empty cluster's centre moves to the
    point farthest from its own centre, as scikit-learn does."""
    x = _check_data(x, None, "kmeans")
    check_int(max_iter, "max_iter", minimum=1, owner="kmeans")
    if centres is None:
        centres = x[kmeans_plus_plus(x, num_centres, generator=generator)].clone()
    labels = torch.full((len(x),), -1, dtype=torch.long)
    inertia = []
    for _ in range(max_iter):
        distances = _squared_distances(x, centres)
        nearest, new_labels = distances.min(-1)
        inertia.append(float(nearest.sum()))
        if torch.equal(new_labels, labels):
            break
        labels = new_labels
        counts = torch.bincount(labels, minlength=len(centres)).to(x.dtype)
        sums = torch.zeros_like(centres).index_add_(0, labels, x)
        centres = torch.where(counts[:, None] > 0, sums / counts.clamp_min(1)[:, None], centres)
        for empty in torch.nonzero(counts == 0).flatten().tolist():
            farthest = int(nearest.argmax())
            centres[empty] = x[farthest]
            nearest[farthest] = 0
    return KMeansResult(centres, labels, inertia)


def mixture_from_assignments(x: Tensor, labels: Tensor, num_components: int, *, reg_covar: float = 1e-6,
                             dtype: torch.dtype = torch.float64) -> GaussianMixture:
    """The mixture that one M-step makes from hard assignments ``labels`` ``[N]``: each component's weight,
    mean and covariance (plus ``reg_covar`` I) from its own points. The usual start of EM, with the labels of
    :func:`kmeans` or of the nearest :func:`kmeans_plus_plus` seed."""
    x = _check_data(x, None, "mixture_from_assignments").to(dtype)
    check_int(num_components, "num_components", minimum=1, owner="mixture_from_assignments")
    if labels.shape != (len(x),) or labels.min() < 0 or labels.max() >= num_components:
        raise ValueError(f"mixture_from_assignments: labels must be [N] = [{len(x)}] integers in "
                         f"[0, {num_components}), got shape {list(labels.shape)}")
    mixture = GaussianMixture(num_components, x.shape[1], reg_covar=reg_covar, dtype=dtype)
    r = torch.nn.functional.one_hot(labels, num_components).to(dtype)
    counts = r.sum(0) + 10 * torch.finfo(dtype).eps
    means = r.T @ x / counts[:, None]
    covariances = torch.zeros(num_components, x.shape[1], x.shape[1], dtype=dtype)
    for k in range(num_components):
        centred = x[labels == k] - means[k]
        covariances[k] = centred.T @ centred / counts[k]
    covariances.diagonal(dim1=-2, dim2=-1).add_(reg_covar)
    return mixture.set_parameters(counts / len(x), means, covariances)


def mixture_from_seeds(x: Tensor, num_components: int, *, generator: torch.Generator | None = None,
                       reg_covar: float = 1e-6, dtype: torch.dtype = torch.float64,
                       chunk_size: int = 8192) -> GaussianMixture:
    """The usual start of EM: :func:`kmeans_plus_plus` seeds, every point assigned to its nearest seed, then
    :func:`mixture_from_assignments` (one M-step from those labels)."""
    x = _check_data(x, None, "mixture_from_seeds")
    seeds = x[kmeans_plus_plus(x, num_components, generator=generator)]
    labels = torch.cat([torch.cdist(chunk, seeds).argmin(1) for chunk in x.split(chunk_size)])
    return mixture_from_assignments(x, labels, num_components, reg_covar=reg_covar, dtype=dtype)
