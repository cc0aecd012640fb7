r"""Quantizers for discrete latent variables (VQ-VAE and image tokenizers), behind one interface: vector
quantization with a learned or an exponential-moving-average codebook, finite scalar quantization (FSQ) and
lookup-free quantization (LFQ).

References: A. van den Oord, O. Vinyals, K. Kavukcuoglu, *Neural Discrete Representation Learning*, NeurIPS 2017
(the VQ-VAE; its appendix describes the EMA codebook); A. Razavi, A. van den Oord, O. Vinyals, *Generating Diverse
High-Fidelity Images with VQ-VAE-2*, NeurIPS 2019; F. Mentzer, D. Minnen, E. Agustsson, M. Tschannen, *Finite
Scalar Quantization: VQ-VAE Made Simple*, ICLR 2024 (arXiv:2309.15505); L. Yu et al., *Language Model Beats
Diffusion: Tokenizer is Key to Visual Generation*, ICLR 2024 (MAGVIT-v2, arXiv:2310.05737).

The interface
-------------
An encoder maps an image to :math:`z_e \in \mathbb R^{B\times d\times H\times W}`, one vector of :math:`d`
channels per position (any number of spatial axes works, none included: ``[B, d]`` or ``[B, d, T]``). A quantizer
replaces every vector by one of :math:`K` codes (``codebook_size``; ``code_dim`` is :math:`d`) and its
``forward(z_e)`` returns a :class:`QuantizerOutput`:

* ``z_q`` (the shape of ``z_e``): the code vectors :math:`q`, with the straight-through gradient (below);
* ``indices`` ``[B, H, W]`` (long): the code :math:`k \in \{0, \dots, K-1\}` of every position;
* ``losses``: named scalar terms that the training objective adds (each class lists its keys); ``loss`` is their
  sum;
* ``perplexity`` and ``usage``: statistics of this batch's codes (:func:`codebook_perplexity`,
  :func:`codebook_usage`).

``embed(indices)`` maps a grid of codes ``[B, H, W]`` back to ``[B, d, H, W]``, to decode the samples of a prior
over codes (:class:`~dgmlab.models.pixelcnn.CategoricalPixelCNN`). :data:`QUANTIZERS` names the quantizers for
configs and :func:`build_quantizer` builds one by name.

Straight-through gradient
-------------------------
Quantization is piecewise constant, so its gradient is zero almost everywhere. The straight-through estimator
(van den Oord et al. 2017, section 3.2) copies the decoder's gradient to the encoder unchanged:

.. math:: z_q = z_e + \operatorname{sg}[q - z_e], \qquad z_q = q \text{ in the forward pass},\qquad
          \frac{\partial z_q}{\partial z_e} = I,

where :math:`\operatorname{sg}` (stop-gradient, ``detach``) is the identity forwards and has zero gradient. It is
computed as :math:`\operatorname{sg}[q] + (z_e - \operatorname{sg}[z_e])` (:func:`straight_through`), equal in exact
arithmetic; in floating point :math:`z_e - z_e = 0` exactly, so the forward value is *exactly* :math:`q` and the
gradient exactly the identity. FSQ applies it to the rounding only, after a differentiable bound.

Loss convention
---------------
The project's rule (every term per example, summed over the latent dimensions; the trainer averages over the
batch) applied to scalars: **every loss term is summed over the positions and channels of one example, then
averaged over the batch**. For the squared distances of VQ,

.. math:: \lVert \operatorname{sg}[z_e] - e \rVert^2 := \frac1B \sum_{b=1}^{B}\sum_{h,w}\sum_{c=1}^{d}
          \big(\operatorname{sg}[z_{e}]_{bchw} - e_{k(b,h,w),\,c}\big)^2,

the paper's :math:`\lVert\cdot\rVert_2^2` of the whole latent map :math:`z_e(x)`: added to the batch mean of a
per-example reconstruction NLL (nats, summed over pixels) it gives the paper's objective. The other common
convention, the *mean* over all :math:`B\,d\,H\,W` elements (``F.mse_loss``), is these values divided by
:math:`d\,H\,W`: the same ratio :math:`\beta` between the VQ terms, but a weight relative to the reconstruction
term smaller by :math:`d\,H\,W`. With ``[B, d]`` inputs (one position) the terms are the mean over vectors of the
squared norm per vector. LFQ's entropy term is an expectation over positions in
the paper; it is summed over the positions of an example here too (the paper's value times :math:`HW`).

Code statistics
---------------
With :math:`n_k` the number of the batch's :math:`N = BHW` positions assigned to code :math:`k` and
:math:`p_k = n_k / N`,

.. math:: \mathrm{perplexity} = \exp\Big(-\sum_k p_k \log p_k\Big) \in [1, \min(K, N)], \qquad
          \mathrm{usage} = \frac{\#\{k : n_k > 0\}}{K},

so a uniform assignment over all :math:`K` codes gives perplexity :math:`K`, a collapse onto one code gives 1.

Vector quantization (van den Oord et al. 2017)
----------------------------------------------
A codebook :math:`e \in \mathbb R^{K\times d}`; every vector goes to its nearest code,

.. math:: k(i) = \arg\min_k \lVert z_{e,i} - e_k \rVert^2 = \arg\min_k \big(\lVert z_{e,i}\rVert^2
          - 2 z_{e,i}^\top e_k + \lVert e_k\rVert^2\big), \qquad q_i = e_{k(i)},

(one matrix product for all pairs; ties go to the lowest index). The codebook receives no gradient through the
straight-through path, so two terms are added (paper, eq. 3):

.. math:: \mathcal L_{\mathrm{codebook}} = \lVert \operatorname{sg}[z_e] - e \rVert^2, \qquad
          \mathcal L_{\mathrm{commitment}} = \beta\,\lVert z_e - \operatorname{sg}[e] \rVert^2 ,

the first moves the codes towards the encoder outputs assigned to them (its gradient reaches the codebook only),
the second keeps the encoder close to its codes (its gradient reaches :math:`z_e` only); :math:`\beta = 0.25`.

**EMA codebook** (``ema=True``; the paper's appendix, Razavi et al. 2019). The codebook is a buffer, updated in
training mode (never in evaluation mode) by exponential moving averages of the count :math:`n_k` and the sum of
the vectors assigned to each code, with decay :math:`\gamma`:

.. math:: N_k \leftarrow \gamma N_k + (1-\gamma)\, n_k, \qquad
          m_k \leftarrow \gamma m_k + (1-\gamma) \sum_{i:\,k(i)=k} z_{e,i}, \qquad
          e_k = \frac{m_k}{\tilde N_k}, \quad
          \tilde N_k = \frac{N_k + \epsilon}{\sum_j N_j + K\epsilon}\sum_j N_j ,

an online k-means step (the Laplace smoothing :math:`\tilde N_k` keeps a code with :math:`N_k \to 0` finite; the
stored :math:`N_k` is the unsmoothed average). There is then no codebook loss, only the
commitment term. The buffers start at :math:`N_k = 1`, :math:`m_k = e_k`, so that :math:`e_k = m_k / N_k` holds
from the first step and a code that is never chosen keeps its vector (both decay by :math:`\gamma`) up to the
smoothing. The ``z_q`` of a training step holds the codes the assignment was made with, before that step's update.

**Dead-code restarts** (``restart_after = T``). A buffer counts, per code, the consecutive training steps in which
it was chosen by no position; a code unused for :math:`T` steps is re-initialised to an encoder vector of the
current batch (the vectors chosen uniformly, without replacement when the batch has enough), and in EMA mode its
statistics to :math:`N_k = 1`, :math:`m_k = e_k`. The choice uses NumPy's generator seeded with the pair
``(restart_seed, step)``, so it is deterministic, independent of torch's global RNG, and a resumed run repeats it
exactly (the step counter is in the state dict). (A ``torch.Generator`` keeps only 32 bits of its seed, too few to
hold both.) The optimizer's moments (Adam) of a restarted row
of a learned codebook are left as they are.

**Many processes** (:mod:`dgmlab.distributed`). In a process group the code counts :math:`n_k` and sums are
added over the ranks before the EMA step, and the restart vectors are rank 0's, broadcast: every rank keeps
the same codebook, moved by the statistics of the global batch.

All state (the codebook, :math:`N`, :math:`m`, the counters) is in ``state_dict()``: a quantizer loaded from it
continues bit for bit on the CPU. (On a GPU ``index_add_`` sums in a nondeterministic order unless
``torch.use_deterministic_algorithms(True)``. Under data parallelism the EMA statistics are those of one
process's batch: no all-reduce is done here.) The codebook starts uniform in :math:`[-1/K, 1/K]` (the common
choice), drawn from torch's global RNG.

Finite scalar quantization (Mentzer et al. 2023)
------------------------------------------------
No codebook: each of the :math:`d` channels is bounded and rounded to one of :math:`L_c` values (``levels``), so
the implicit codebook is the grid of :math:`K = \prod_c L_c` points. The encoder's output must have
:math:`d = ` ``len(levels)`` channels (the paper's optional projections to and from :math:`d` belong to the encoder
and decoder). Per channel, with :math:`\varepsilon = 10^{-3}`,

.. math:: h = \frac{(L-1)(1+\varepsilon)}{2},\quad o = \tfrac12[L \text{ even}],\quad
          s = \operatorname{artanh}(o/h), \qquad f(z) = h\tanh(z + s) - o,

.. math:: \hat z = \operatorname{round}(f(z)) \in \{-\lfloor L/2\rfloor, \dots, L - 1 - \lfloor L/2\rfloor\},
          \qquad q = \hat z / \lfloor L/2 \rfloor \in [-1, 1],

with the straight-through gradient on the rounding only: :math:`\partial q/\partial z = f'(z)/\lfloor L/2\rfloor`.
For odd :math:`L` the values are symmetric about 0; for even :math:`L` the offset :math:`o` and shift :math:`s`
give :math:`L` values with :math:`f(0) = 0` (e.g. :math:`L = 4`: :math:`\{-2, -1, 0, 1\}/2`). The paper's listing
uses :math:`(1-\varepsilon)` and :math:`\tan` where this uses :math:`(1+\varepsilon)` and
:math:`\operatorname{artanh}`: :math:`\operatorname{artanh}` makes :math:`f(0) = 0` exactly, and
:math:`(1+\varepsilon)` keeps :math:`o/h < 1` for :math:`L = 2`. The rounded value is clamped to its range, which
changes nothing unless :math:`L \gtrsim 1000` (where :math:`h\varepsilon` exceeds 1/2). The index is the
mixed-radix number of the digits :math:`\hat z_c + \lfloor L_c/2\rfloor`, the first channel least significant:

.. math:: k = \sum_{c=1}^{d} \big(\hat z_c + \lfloor L_c/2\rfloor\big) \prod_{c' < c} L_{c'} .

There are no losses. The paper recommends ``[8, 6, 5]`` for :math:`K \approx 2^8`, ``[8, 5, 5, 5]`` for
:math:`2^{10}`, ``[7, 5, 5, 5, 5]`` for :math:`2^{12}`, ``[8, 8, 8, 6, 5]`` for :math:`2^{14}` and
``[8, 8, 8, 5, 5, 5]`` for :math:`2^{16}`.

Lookup-free quantization (Yu et al. 2024, MAGVIT-v2)
----------------------------------------------------
The codebook is :math:`\{-1, 1\}^d`, :math:`K = 2^d`, and the nearest code is the sign of every channel:

.. math:: q_c = \operatorname{sign}(z_c) \quad (\operatorname{sign}(0) = +1), \qquad
          k = \sum_{c=1}^{d} [q_c > 0]\, 2^{c-1} .

An entropy penalty spreads the codes over the codebook: with the soft assignment
:math:`p(c \mid z) \propto \exp(-\lVert z - c\rVert^2/\tau)` over all codes,

.. math:: \mathcal L_{\mathrm{entropy}} = \lambda\,\big(\mathbb E_z[H(p(\cdot\mid z))] -
          H(\mathbb E_z[p(\cdot\mid z)])\big),

low when every position is confident (first term) and the batch uses many codes (second term); it lies in
:math:`[-\log K, \log K]` per position. Since :math:`\lVert c\rVert^2 = d` for every code,
:math:`-\lVert z - c\rVert^2/\tau = 2z^\top c/\tau + \mathrm{const}`, so :math:`p` factorises over the bits with
:math:`p(c_i = +1\mid z) = \sigma(4 z_i/\tau)` (:math:`\tau = 1`: :math:`\sigma(2\cdot 2z)`) and the first term is
a sum of binary entropies. The second is computed exactly over all :math:`K` codes (``codebook_entropy="exact"``;
memory :math:`N K`, so at most :math:`d = 16`) or replaced by the sum of the per-bit entropies of
:math:`\mathbb E_z[\sigma(4z_i/\tau)]` (``"per_bit"``, memory :math:`N d`): an upper bound (entropy is
subadditive) that is also maximal for correlated bits, e.g. codes :math:`(-1,-1)` and :math:`(1,1)` only.
A commitment term :math:`\mu\,\lVert z - \operatorname{sg}[q]\rVert^2` (loss convention above) is added
when its weight :math:`\mu` is positive. Both are computed in training and evaluation mode; LFQ has no state.
"""

from __future__ import annotations

import inspect
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import partial
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from dgmlab import distributed
from dgmlab.errors import ModelConfigError
from dgmlab.utils import check_int, check_positive_number, is_int

__all__ = ["QUANTIZERS", "FiniteScalarQuantizer", "LookupFreeQuantizer", "Quantizer", "QuantizerOutput",
           "VectorQuantizer", "build_quantizer", "codebook_perplexity", "codebook_usage", "lfq_entropy_terms",
           "nearest_code", "straight_through"]

MAX_EXACT_ENTROPY_BITS = 16  # LFQ's exact codebook entropy holds an [N, 2^d] matrix
MAX_INDEX_BITS = 62  # indices are int64


@dataclass
class QuantizerOutput:
    """What a quantizer returns for a batch ``z_e`` ``[B, d, *S]`` (module docstring).

    ``z_q`` ``[B, d, *S]``: the code vectors, straight-through; ``indices`` ``[B, *S]`` long; ``losses``: named
    scalar terms (per example summed over positions and channels, batch mean); ``perplexity`` and ``usage``: 0-d
    tensors of this batch's code statistics (no gradient)."""

    z_q: Tensor
    indices: Tensor
    losses: dict[str, Tensor]
    perplexity: Tensor
    usage: Tensor

    @property
    def loss(self) -> Tensor:
        """The sum of ``losses``, the quantizer's part of the objective (a zero for FSQ)."""
        total = self.z_q.new_zeros((), dtype=torch.promote_types(self.z_q.dtype, torch.float32))
        for value in self.losses.values():
            total = total + value
        return total


class Quantizer(nn.Module):
    """The interface of every quantizer: ``codebook_size`` (:math:`K`), ``code_dim`` (:math:`d`),
    ``forward(z_e) -> QuantizerOutput`` and ``embed(indices) -> z_q``."""

    codebook_size: int
    code_dim: int

    def forward(self, z_e: Tensor) -> QuantizerOutput:  # pragma: no cover - every subclass defines it
        raise NotImplementedError

    def embed(self, indices: Tensor) -> Tensor:  # pragma: no cover - every subclass defines it
        """The code vectors ``[B, d, *S]`` of ``indices`` ``[B, *S]``."""
        raise NotImplementedError

    def _output(self, z_q: Tensor, indices: Tensor, losses: dict[str, Tensor]) -> QuantizerOutput:
        counts = _code_counts(indices)
        return QuantizerOutput(z_q=z_q, indices=indices, losses=losses, perplexity=_perplexity(counts),
                               usage=_usage(counts, self.codebook_size))


# ----------------------------------------------------------------------------------------------------------
# Shared helpers
# ----------------------------------------------------------------------------------------------------------
def straight_through(z: Tensor, q: Tensor) -> Tensor:
    r""":math:`z + \operatorname{sg}[q - z]`, computed as :math:`\operatorname{sg}[q] + (z - \operatorname{sg}[z])`:
    exactly ``q`` in the forward pass, gradient exactly the identity to ``z`` (none to ``q``)."""
    return q.detach() + (z - z.detach())


def nearest_code(z: Tensor, codebook: Tensor) -> Tensor:
    r"""The nearest code of every row, :math:`\arg\min_k \lVert z_i - e_k\rVert^2` computed as
    :math:`\lVert z_i\rVert^2 - 2z_i^\top e_k + \lVert e_k\rVert^2` (ties to the lowest index), ``[N]`` long.

    ``z`` ``[N, d]``, ``codebook`` ``[K, d]``. No gradient; computed in at least float32 with autocast off (so a
    bfloat16 network does not round the distances), in chunks of rows of at most :math:`2^{24}` distances."""
    dtype = torch.promote_types(torch.promote_types(z.dtype, codebook.dtype), torch.float32)
    with torch.no_grad(), torch.autocast(z.device.type, enabled=False):
        e = codebook.to(dtype)
        e_squared = (e * e).sum(1)
        chunks = []
        for rows in z.to(dtype).split(max(1, 2 ** 24 // e.shape[0])):
            # ||z||^2 - 2 z.e + ||e||^2, one matrix product for every pair
            distances = torch.addmm((rows * rows).sum(1, keepdim=True) + e_squared, rows, e.T, alpha=-2)
            chunks.append(distances.argmin(1))
        return torch.cat(chunks) if chunks else torch.zeros(0, dtype=torch.long, device=z.device)


def codebook_perplexity(indices: Tensor, num_codes: int) -> Tensor:
    r""":math:`\exp(-\sum_k p_k\log p_k)` of the histogram :math:`p` of ``indices`` (any shape, values in
    :math:`[0, K)`), a 0-d float64 tensor in :math:`[1, \min(K, N)]`: :math:`K` for a uniform assignment, 1 for a
    single code."""
    return _perplexity(_code_counts(_check_indices(indices, num_codes, "codebook_perplexity")))


def codebook_usage(indices: Tensor, num_codes: int) -> Tensor:
    """The fraction of the ``num_codes`` codes that ``indices`` (any shape) uses at least once, a 0-d float64
    tensor."""
    counts = _code_counts(_check_indices(indices, num_codes, "codebook_usage"))
    return _usage(counts, num_codes)


def _code_counts(indices: Tensor) -> Tensor:
    """How often each code that occurs in ``indices`` occurs (codes that do not occur are left out, so any
    :math:`K` works, :math:`2^{62}` included)."""
    return torch.unique(indices.detach().reshape(-1), return_counts=True)[1]


def _statistics_dtype(device: torch.device) -> torch.dtype:
    return torch.float32 if device.type == "mps" else torch.float64


def _perplexity(counts: Tensor) -> Tensor:
    p = counts.to(_statistics_dtype(counts.device))
    p = p / p.sum()
    # exp(H(p)), H(p) = -sum_k p_k log p_k over the codes that occur (0 log 0 = 0)
    return torch.exp(-(p * p.log()).sum())


def _usage(counts: Tensor, num_codes: int) -> Tensor:
    return torch.tensor(counts.numel() / num_codes, dtype=_statistics_dtype(counts.device), device=counts.device)


def _flatten(z_e: Any, code_dim: int, owner: str) -> tuple[Tensor, tuple[int, ...]]:
    """``z_e`` ``[B, d, *S]`` as rows ``[B prod(S), d]``, and the shape ``(B, *S)`` of its indices."""
    if not isinstance(z_e, Tensor) or not z_e.is_floating_point() or z_e.dim() < 2 or z_e.shape[1] != code_dim \
            or z_e.shape[0] == 0:
        got = list(z_e.shape) if isinstance(z_e, Tensor) else type(z_e).__name__
        raise ValueError(f"{owner}: z_e must be a non-empty float tensor [B, {code_dim}, H, W] (or [B, {code_dim}]) "
                         f"with the code_dim={code_dim} channels in dimension 1, got {got}")
    return z_e.movedim(1, -1).reshape(-1, code_dim), (z_e.shape[0], *z_e.shape[2:])


def _unflatten(rows: Tensor, index_shape: Sequence[int]) -> Tensor:
    """Rows ``[N, d]`` back to ``[B, d, *S]``."""
    return rows.reshape(*index_shape, rows.shape[-1]).movedim(-1, 1)


def _check_indices(indices: Any, num_codes: int, owner: str) -> Tensor:
    if not isinstance(indices, Tensor) or indices.dtype.is_floating_point or indices.dtype.is_complex \
            or indices.dtype == torch.bool or indices.numel() == 0:
        got = f"{indices.dtype} {list(indices.shape)}" if isinstance(indices, Tensor) else type(indices).__name__
        raise ValueError(f"{owner}: indices must be a non-empty integer tensor of codes in [0, {num_codes}) "
                         f"([B, H, W] for a grid), got {got}")
    low, high = int(indices.min()), int(indices.max())
    if low < 0 or high >= num_codes:
        raise ValueError(f"{owner}: indices must lie in [0, {num_codes}) (the codebook size), got values from "
                         f"{low} to {high}")
    return indices.long()


def _at_least_float32(t: Tensor) -> Tensor:
    """``t`` in float32 if it is a 16-bit float (bfloat16 autocast), else unchanged: the loss sums keep their
    precision."""
    return t.float() if t.dtype in (torch.bfloat16, torch.float16) else t


def _check_number(value: object, name: str, owner: str, hint: str, *, minimum: float = 0.0,
                  below: float = math.inf) -> float:
    """``value`` as a float if it is a number in ``[minimum, below)``, else ModelConfigError."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not (minimum <= value < below):
        interval = f"a number >= {minimum:g}" if below == math.inf else f"a number in [{minimum:g}, {below:g})"
        raise ModelConfigError(f"{owner}: {name} must be {interval} ({hint}), got {value!r}")
    return float(value)


# ----------------------------------------------------------------------------------------------------------
# Vector quantization
# ----------------------------------------------------------------------------------------------------------
class VectorQuantizer(Quantizer):
    r"""VQ-VAE's nearest-code quantizer over a codebook :math:`e \in \mathbb R^{K\times d}` (module docstring).

    ``num_codes`` :math:`K`, ``code_dim`` :math:`d`; ``beta``: the commitment weight :math:`\beta`. ``ema=False``:
    the codebook is a parameter and ``losses`` holds ``codebook`` :math:`\lVert\operatorname{sg}[z_e]-e\rVert^2`
    and ``commitment`` :math:`\beta\lVert z_e - \operatorname{sg}[e]\rVert^2`. ``ema=True``: the codebook is a
    buffer moved by moving averages with ``decay`` :math:`\gamma` (default 0.99) and Laplace smoothing
    ``epsilon`` (default 1e-5), in training mode only, and ``losses`` holds ``commitment`` alone.
    ``restart_after``: re-initialise a code unused for that many consecutive training steps to an encoder vector
    of the batch (``None``: never), chosen with a generator seeded by ``(restart_seed, step)``.

    Buffers: ``steps`` (training steps so far), ``steps_unused`` ``[K]`` (consecutive training steps each code
    went unused), and with ``ema=True`` ``codebook``, ``ema_count`` :math:`N` ``[K]`` and ``ema_sum`` :math:`m`
    ``[K, d]``."""

    def __init__(self, num_codes: int, code_dim: int, *, beta: float = 0.25, ema: bool = False,
                 decay: float | None = None, epsilon: float | None = None, restart_after: int | None = None,
                 restart_seed: int = 0):
        super().__init__()
        owner = "VectorQuantizer"
        self.codebook_size = check_int(num_codes, "num_codes", minimum=1, owner=owner, error=ModelConfigError,
                                       hint="the number of codes K, e.g. 512")
        self.code_dim = check_int(code_dim, "code_dim", minimum=1, owner=owner, error=ModelConfigError,
                                  hint="the channels d of the encoder's output, e.g. 64")
        self.beta = _check_number(beta, "beta", owner, "the commitment weight; the paper uses 0.25")
        if not isinstance(ema, bool):
            raise ModelConfigError(f"{owner}: ema must be true or false (an EMA codebook instead of a learned one), "
                                   f"got {ema!r}")
        self.ema = ema
        if not ema and (decay is not None or epsilon is not None):
            raise ModelConfigError(f"{owner}: decay and epsilon belong to the EMA codebook; set ema=True or drop them")
        self.decay = _check_number(0.99 if decay is None else decay, "decay", owner,
                                   "the EMA decay gamma of the codebook statistics, e.g. 0.99", below=1.0)
        self.epsilon = check_positive_number(1e-5 if epsilon is None else epsilon, "epsilon", owner=owner,
                                             error=ModelConfigError, hint="the Laplace smoothing of the EMA counts, "
                                             "e.g. 1e-5")
        if restart_after is not None:
            restart_after = check_int(restart_after, "restart_after", minimum=1, owner=owner, error=ModelConfigError,
                                      hint="training steps a code may go unused before it is restarted, or None "
                                      "for no restarts")
        self.restart_after = restart_after
        self.restart_seed = check_int(restart_seed, "restart_seed", minimum=0, owner=owner, error=ModelConfigError,
                                      hint="the seed of the dead-code restarts")
        K, d = self.codebook_size, self.code_dim
        # e_k ~ uniform(-1/K, 1/K)
        initial = torch.empty(K, d).uniform_(-1 / K, 1 / K)
        if ema:
            self.register_buffer("codebook", initial)
            self.register_buffer("ema_count", torch.ones(K))  # N_k = 1, m_k = e_k: e_k = m_k / N_k from the start
            self.register_buffer("ema_sum", initial.clone())
        else:
            self.codebook = nn.Parameter(initial)
        self.register_buffer("steps", torch.zeros((), dtype=torch.long))
        self.register_buffer("steps_unused", torch.zeros(K, dtype=torch.long))

    def forward(self, z_e: Tensor) -> QuantizerOutput:
        """Quantize ``z_e`` ``[B, d, *S]`` to its nearest codes; in training mode, then count the codes, move
        the EMA codebook and restart dead codes (class docstring)."""
        rows, index_shape = _flatten(z_e, self.code_dim, "VectorQuantizer")
        indices = nearest_code(rows, self.codebook)
        # q = e_{k(i)}; the gradient of the codebook loss reaches the codebook through this lookup
        q = _unflatten(self.codebook[indices], index_shape)
        batch = z_e.shape[0]
        z_full, q_full = _at_least_float32(z_e), _at_least_float32(q)
        losses = {}
        if not self.ema:
            # ||sg[z_e] - e||^2, per example summed over positions and channels, batch mean
            losses["codebook"] = (z_full.detach() - q_full).pow(2).sum() / batch
        # beta ||z_e - sg[e]||^2
        losses["commitment"] = self.beta * (z_full - q_full.detach()).pow(2).sum() / batch
        z_q = straight_through(z_e, q.to(torch.promote_types(z_e.dtype, q.dtype)))
        if self.training:
            self._training_step(rows.detach(), indices)
        return self._output(z_q, indices.reshape(index_shape), losses)

    @torch.no_grad()
    def _training_step(self, rows: Tensor, indices: Tensor) -> None:
        K = self.codebook_size
        # in a process group the statistics are those of the global batch, so every rank moves the same way
        counts = distributed.all_reduce_sum_(torch.bincount(indices, minlength=K))
        if self.ema:
            gamma = self.decay
            sums = distributed.all_reduce_sum_(
                torch.zeros_like(self.ema_sum).index_add_(0, indices, rows.to(self.ema_sum.dtype)))
            # N_k <- gamma N_k + (1 - gamma) n_k
            self.ema_count.mul_(gamma).add_(counts.to(self.ema_count.dtype), alpha=1 - gamma)
            # m_k <- gamma m_k + (1 - gamma) sum_{i: k(i) = k} z_e,i
            self.ema_sum.mul_(gamma).add_(sums, alpha=1 - gamma)
            total = self.ema_count.sum()
            # Laplace smoothing: N~_k = (N_k + eps) / (sum_j N_j + K eps) * sum_j N_j
            smoothed = (self.ema_count + self.epsilon) / (total + K * self.epsilon) * total
            # e_k = m_k / N~_k
            self.codebook.copy_(self.ema_sum / smoothed.unsqueeze(1))
        self.steps_unused.add_(1).masked_fill_(counts > 0, 0)
        self.steps.add_(1)
        if self.restart_after is not None:
            self._restart_dead_codes(rows)

    def _restart_dead_codes(self, rows: Tensor) -> None:
        dead = torch.nonzero(self.steps_unused >= self.restart_after).squeeze(1)
        if dead.numel() == 0:
            return
        generator = np.random.default_rng([self.restart_seed, int(self.steps)])
        n = rows.shape[0]
        choice = generator.choice(n, size=dead.numel(), replace=n < dead.numel())
        vectors = rows[torch.from_numpy(choice).to(rows.device)].to(self.codebook.dtype)
        vectors = distributed.broadcast_(vectors.contiguous(), 0)  # rank 0's picks on every rank
        self.codebook[dead] = vectors
        if self.ema:
            self.ema_sum[dead] = vectors
            self.ema_count[dead] = 1.0
        self.steps_unused[dead] = 0

    def embed(self, indices: Tensor) -> Tensor:
        """The codes :math:`e_k` of ``indices`` ``[B, *S]`` as ``[B, d, *S]``."""
        indices = _check_indices(indices, self.codebook_size, "VectorQuantizer.embed")
        return _unflatten(self.codebook[indices.reshape(-1)], indices.shape)

    def extra_repr(self) -> str:
        ema = f", ema=True, decay={self.decay:g}, epsilon={self.epsilon:g}" if self.ema else ""
        restarts = f", restart_after={self.restart_after}" if self.restart_after is not None else ""
        return f"num_codes={self.codebook_size}, code_dim={self.code_dim}, beta={self.beta:g}{ema}{restarts}"


# ----------------------------------------------------------------------------------------------------------
# Finite scalar quantization
# ----------------------------------------------------------------------------------------------------------
class FiniteScalarQuantizer(Quantizer):
    r"""FSQ: every channel bounded by :math:`f(z) = h\tanh(z + s) - o` and rounded to one of ``levels[c]`` values
    in :math:`[-1, 1]` (module docstring); :math:`K = \prod_c L_c`, :math:`d = ` ``len(levels)``, no losses and no
    state. ``eps`` is the paper's :math:`\varepsilon = 10^{-3}`."""

    def __init__(self, levels: Sequence[int] = (8, 5, 5, 5), *, eps: float = 1e-3):
        super().__init__()
        owner = "FiniteScalarQuantizer"
        values = list(levels) if isinstance(levels, Sequence) and not isinstance(levels, str) else None
        if not values or not all(is_int(level) and level >= 2 for level in values):
            raise ModelConfigError(f"{owner}: levels must be a non-empty list of integers >= 2, the number of values "
                                   f"of each channel, e.g. [8, 5, 5, 5] for K = 1000 codes; got {levels!r}")
        self.levels = [int(level) for level in values]
        self.codebook_size = math.prod(self.levels)
        if self.codebook_size >= 2 ** MAX_INDEX_BITS:
            raise ModelConfigError(f"{owner}: levels {self.levels} give {self.codebook_size} codes, more than int64 "
                                   f"indices hold; use fewer or smaller levels")
        self.code_dim = len(self.levels)
        self.eps = _check_number(eps, "eps", owner, "widens the bound so that even levels keep an offset below 1; "
                                 "the paper uses 1e-3", minimum=1e-12, below=0.5)
        levels_tensor = torch.tensor(self.levels, dtype=torch.long)
        # the place values prod_{c' < c} L_c' of the mixed-radix index
        basis = torch.cumprod(torch.tensor([1, *self.levels[:-1]], dtype=torch.long), 0)
        self.register_buffer("_levels", levels_tensor, persistent=False)
        self.register_buffer("_basis", basis, persistent=False)

    def bound(self, z: Tensor) -> Tensor:
        r""":math:`f(z) = h\tanh(z + s) - o` per channel, for ``z`` ``[..., d]`` (channels last), in
        :math:`(-\lfloor L/2\rfloor - \tfrac12, L - 1 - \lfloor L/2\rfloor + \tfrac12)`."""
        levels = self._levels.to(z.dtype)
        # h = (L - 1)(1 + eps)/2, o = 1/2 for even L, s = artanh(o / h)
        half_l = (levels - 1) * (1 + self.eps) / 2
        offset = (self._levels % 2 == 0).to(z.dtype) / 2
        shift = torch.atanh(offset / half_l)
        return torch.tanh(z + shift) * half_l - offset

    def forward(self, z_e: Tensor) -> QuantizerOutput:
        """Bound, round (straight-through) and rescale every channel of ``z_e`` ``[B, len(levels), *S]``."""
        rows, index_shape = _flatten(z_e, self.code_dim, "FiniteScalarQuantizer")
        bounded = self.bound(_at_least_float32(rows))
        half_width = self._levels // 2
        # round(f(z)), clamped to {-floor(L/2), ..., L - 1 - floor(L/2)}
        rounded = torch.round(bounded).clamp(min=-half_width.to(bounded.dtype),
                                             max=(self._levels - 1 - half_width).to(bounded.dtype))
        # k = sum_c (z^_c + floor(L_c/2)) prod_{c' < c} L_c'
        indices = ((rounded.long() + half_width) * self._basis).sum(-1)
        # q = z^ / floor(L/2), straight-through on the rounding
        q = straight_through(bounded, rounded) / half_width.to(bounded.dtype)
        return self._output(_unflatten(q, index_shape), indices.reshape(index_shape), {})

    def embed(self, indices: Tensor) -> Tensor:
        """The grid points ``[B, d, *S]`` (values ``(digit - floor(L/2)) / floor(L/2)``) of ``indices``
        ``[B, *S]``, float32."""
        indices = _check_indices(indices, self.codebook_size, "FiniteScalarQuantizer.embed")
        digits = (indices.reshape(-1, 1) // self._basis) % self._levels
        half_width = self._levels // 2
        return _unflatten((digits - half_width).float() / half_width.float(), indices.shape)

    def codes_to_indices(self, z_q: Tensor) -> Tensor:
        """The index ``[B, *S]`` of grid points ``z_q`` ``[B, d, *S]`` (the inverse of :meth:`embed`; values off
        the grid go to the nearest grid value per channel)."""
        rows, index_shape = _flatten(z_q, self.code_dim, "FiniteScalarQuantizer.codes_to_indices")
        half_width = self._levels // 2
        digits = torch.round(rows * half_width.to(rows.dtype)).long() + half_width
        digits = torch.minimum(digits.clamp_min(0), self._levels - 1)
        return (digits * self._basis).sum(-1).reshape(index_shape)

    def extra_repr(self) -> str:
        return f"levels={self.levels}, codebook_size={self.codebook_size}"


# ----------------------------------------------------------------------------------------------------------
# Lookup-free quantization
# ----------------------------------------------------------------------------------------------------------
CODEBOOK_ENTROPIES = ("exact", "per_bit")


def lfq_entropy_terms(z_e: Tensor, *, temperature: float = 1.0,
                      codebook_entropy: str = "exact") -> tuple[Tensor, Tensor]:
    r"""LFQ's two entropies, per position in nats: :math:`\mathbb E_z[H(p(\cdot\mid z))]` and
    :math:`H(\mathbb E_z[p(\cdot\mid z)])`, with :math:`p(c\mid z)\propto\exp(-\lVert z-c\rVert^2/\tau)` over
    :math:`c\in\{-1,1\}^d`, i.e. :math:`p(c_i=+1\mid z) = \sigma(4z_i/\tau)` (module docstring); the expectation
    is over the :math:`N = B\prod S` positions of ``z_e`` ``[B, d, *S]``. ``codebook_entropy="per_bit"`` gives
    :math:`\sum_i H(\mathbb E_z[\sigma(4 z_i/\tau)])` for the second, an upper bound of the exact value."""
    if codebook_entropy not in CODEBOOK_ENTROPIES:
        raise ValueError(f"lfq_entropy_terms: unknown codebook_entropy {codebook_entropy!r}; choose one of "
                         f"{', '.join(CODEBOOK_ENTROPIES)}")
    if not isinstance(z_e, Tensor) or z_e.dim() < 2:
        raise ValueError("lfq_entropy_terms: z_e must be a float tensor [B, d, H, W] (or [B, d])")
    temperature = check_positive_number(temperature, "temperature", owner="lfq_entropy_terms",
                                        hint="tau of the soft assignments sigma(4 z / tau)")
    rows, _ = _flatten(z_e, z_e.shape[1], "lfq_entropy_terms")
    # the logit of p(c_i = +1 | z) = sigma(4 z_i / tau)
    a = 4 * _at_least_float32(rows) / temperature
    p_plus, p_minus = torch.sigmoid(a), torch.sigmoid(-a)
    # H_b(sigma(a)) = sigma(a) softplus(-a) + sigma(-a) softplus(a), summed over the bits
    per_sample = (p_plus * F.softplus(-a) + p_minus * F.softplus(a)).sum(-1).mean()
    if codebook_entropy == "per_bit":
        mean_plus = p_plus.mean(0)
        codebook = _entropy(torch.stack([mean_plus, 1 - mean_plus], -1)).sum()
        return per_sample, codebook
    d = rows.shape[1]
    if d > MAX_EXACT_ENTROPY_BITS:
        raise ValueError(f"lfq_entropy_terms: the exact codebook entropy over 2^{d} codes needs an [N, 2^{d}] "
                         f"matrix; use codebook_entropy='per_bit' for d > {MAX_EXACT_ENTROPY_BITS}")
    bits = _code_bits(torch.arange(2 ** d, device=rows.device), d).to(a.dtype)  # [K, d] in {0, 1}
    log_plus, log_minus = F.logsigmoid(a), F.logsigmoid(-a)
    # log p(c_k | z) = sum_i [c_ki > 0] log sigma(a_i) + [c_ki < 0] log sigma(-a_i), [N, K]
    log_p = log_minus.sum(-1, keepdim=True) + (log_plus - log_minus) @ bits.T
    return per_sample, _entropy(log_p.exp().mean(0))


def _entropy(p: Tensor) -> Tensor:
    """:math:`-\\sum p\\log p` over the last axis (:math:`0\\log 0 = 0`, with a finite gradient there)."""
    return -(p * p.clamp_min(torch.finfo(p.dtype).tiny).log()).sum(-1)


def _code_bits(indices: Tensor, d: int) -> Tensor:
    """The bits :math:`[k_i > 0]` of ``indices`` ``[...]`` as ``[..., d]`` long, the least significant first."""
    return (indices.unsqueeze(-1) >> torch.arange(d, device=indices.device)) & 1


class LookupFreeQuantizer(Quantizer):
    r"""LFQ: :math:`q = \operatorname{sign}(z) \in \{-1, 1\}^d` (:math:`\operatorname{sign}(0) = +1`),
    :math:`K = 2^d`, straight-through (module docstring).

    ``losses``: ``entropy`` :math:`\lambda\,(\mathbb E[H(p(\cdot\mid z))] - H(\mathbb E[p(\cdot\mid z)]))` summed
    over the positions of an example (``entropy_weight`` :math:`\lambda`, default 0.1; ``temperature``
    :math:`\tau`; ``codebook_entropy``: ``"exact"`` or ``"per_bit"``, see :func:`lfq_entropy_terms`) and
    ``commitment`` :math:`\mu\lVert z_e - \operatorname{sg}[q]\rVert^2` (``commitment_weight`` :math:`\mu`,
    default 0.25); a term whose weight is 0 is left out. ``code_dim`` is at most 62 (int64 indices)."""

    def __init__(self, code_dim: int, *, entropy_weight: float = 0.1, commitment_weight: float = 0.25,
                 temperature: float = 1.0, codebook_entropy: str = "exact"):
        super().__init__()
        owner = "LookupFreeQuantizer"
        self.code_dim = check_int(code_dim, "code_dim", minimum=1, owner=owner, error=ModelConfigError,
                                  hint=f"the channels d of the encoder's output, K = 2^d codes; at most "
                                  f"{MAX_INDEX_BITS}")
        if self.code_dim > MAX_INDEX_BITS:
            raise ModelConfigError(f"{owner}: code_dim={code_dim} gives 2^{code_dim} codes, more than int64 indices "
                                   f"hold; use at most {MAX_INDEX_BITS} channels")
        self.codebook_size = 2 ** self.code_dim
        self.entropy_weight = _check_number(entropy_weight, "entropy_weight", owner,
                                            "the weight of the entropy penalty; MAGVIT-v2 uses 0.1, 0 turns it off")
        self.commitment_weight = _check_number(commitment_weight, "commitment_weight", owner,
                                               "the weight of the commitment term, e.g. 0.25; 0 turns it off")
        self.temperature = check_positive_number(temperature, "temperature", owner=owner, error=ModelConfigError,
                                                 hint="tau of the soft assignments sigma(4 z / tau), e.g. 1")
        if codebook_entropy not in CODEBOOK_ENTROPIES:
            raise ModelConfigError(f"{owner}: codebook_entropy must be one of {', '.join(CODEBOOK_ENTROPIES)}, got "
                                   f"{codebook_entropy!r}")
        if codebook_entropy == "exact" and self.entropy_weight > 0 and self.code_dim > MAX_EXACT_ENTROPY_BITS:
            raise ModelConfigError(f"{owner}: the exact codebook entropy over 2^{code_dim} codes needs an "
                                   f"[N, 2^{code_dim}] matrix; use codebook_entropy='per_bit' for code_dim > "
                                   f"{MAX_EXACT_ENTROPY_BITS}")
        self.codebook_entropy = codebook_entropy
        self.register_buffer("_bit_values", 2 ** torch.arange(self.code_dim, dtype=torch.long), persistent=False)

    def forward(self, z_e: Tensor) -> QuantizerOutput:
        """The signs of ``z_e`` ``[B, d, *S]``, their indices, and the entropy and commitment terms."""
        rows, index_shape = _flatten(z_e, self.code_dim, "LookupFreeQuantizer")
        z = _at_least_float32(rows)
        positive = z >= 0
        # q = sign(z), sign(0) = +1
        q = torch.where(positive, 1.0, -1.0).to(z.dtype)
        # k = sum_i [q_i > 0] 2^i
        indices = (positive.long() * self._bit_values).sum(-1)
        batch = z_e.shape[0]
        losses = {}
        if self.entropy_weight > 0:
            per_sample, codebook = lfq_entropy_terms(z_e, temperature=self.temperature,
                                                     codebook_entropy=self.codebook_entropy)
            # lambda (E[H(p(.|z))] - H(E[p(.|z)])), summed over an example's positions
            losses["entropy"] = self.entropy_weight * (rows.shape[0] / batch) * (per_sample - codebook)
        if self.commitment_weight > 0:
            # mu ||z_e - sg[q]||^2, per example summed over positions and channels, batch mean
            losses["commitment"] = self.commitment_weight * (z - q).pow(2).sum() / batch
        return self._output(_unflatten(straight_through(rows, q), index_shape), indices.reshape(index_shape), losses)

    def embed(self, indices: Tensor) -> Tensor:
        """The codes :math:`2[k_i > 0] - 1` ``[B, d, *S]`` of ``indices`` ``[B, *S]``, float32."""
        indices = _check_indices(indices, self.codebook_size, "LookupFreeQuantizer.embed")
        bits = _code_bits(indices.reshape(-1), self.code_dim)
        return _unflatten(2 * bits.float() - 1, indices.shape)

    def extra_repr(self) -> str:
        return (f"code_dim={self.code_dim}, entropy_weight={self.entropy_weight:g}, "
                f"commitment_weight={self.commitment_weight:g}, temperature={self.temperature:g}, "
                f"codebook_entropy={self.codebook_entropy!r}")


# ----------------------------------------------------------------------------------------------------------
# Names for configs
# ----------------------------------------------------------------------------------------------------------
#: The quantizers by name, for configs: ``build_quantizer(name, **options)`` builds one.
QUANTIZERS: dict[str, Callable[..., Quantizer]] = {
    "vq": VectorQuantizer,  # learned codebook: losses codebook + commitment
    "vq_ema": partial(VectorQuantizer, ema=True),  # EMA codebook: loss commitment
    "fsq": FiniteScalarQuantizer,  # no losses
    "lfq": LookupFreeQuantizer,  # losses entropy + commitment
}


def build_quantizer(name: str, **kwargs: Any) -> Quantizer:
    """Build a quantizer of :data:`QUANTIZERS` by name: ``build_quantizer("vq_ema", num_codes=512, code_dim=64)``.
    An unknown name or option is a ModelConfigError that lists the choices."""
    if name not in QUANTIZERS:
        raise ModelConfigError(f"unknown quantizer {name!r}; choose one of {', '.join(QUANTIZERS)}")
    constructor = QUANTIZERS[name]
    fixed = set(constructor.keywords) if isinstance(constructor, partial) else set()
    parameters = inspect.signature(constructor).parameters
    options = [key for key, p in parameters.items() if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)
               and key not in fixed]
    unknown = sorted(set(kwargs) - set(options))
    if unknown:
        raise ModelConfigError(f"quantizer {name!r} has no option {', '.join(unknown)}; its options are: "
                               f"{', '.join(options)}")
    try:
        return constructor(**kwargs)
    except TypeError as error:  # a missing argument
        raise ModelConfigError(f"quantizer {name!r}: {error}") from None
