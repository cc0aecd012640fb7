r"""Autoregressive models of binary vectors: FVSBN, Bengio and Bengio (1999), NADE and MADE.

Every model here is an exact, normalised density over :math:`x \in \{0, 1\}^D`, computed with the chain rule.

The chain rule and Bernoulli conditionals
-----------------------------------------
For any joint distribution and any ordering :math:`\pi` of the variables (:math:`\pi(k)` is the variable
generated :math:`k`-th; the attribute ``order`` holds it, 0-based),

.. math:: p(x) = \prod_{k=1}^{D} p\big(x_{\pi(k)} \mid x_{\pi(1)}, \dots, x_{\pi(k-1)}\big),
    \qquad \log p(x) = \sum_{i=1}^{D} \log p(x_i \mid x_{<i}),

where :math:`x_{<i}` are the variables generated before :math:`x_i` (those :math:`x_j` with
:math:`\pi^{-1}(j) < \pi^{-1}(i)`). No approximation is made: each conditional of binary :math:`x_i` is a
Bernoulli distribution with probability :math:`\hat x_i = \sigma(\ell_i)` of a logit :math:`\ell_i(x_{<i})`,

.. math:: \log p(x_i \mid x_{<i}) = x_i \log \sigma(\ell_i) + (1 - x_i) \log \sigma(-\ell_i),

(using :math:`1 - \sigma(\ell) = \sigma(-\ell)`), so :math:`-\log p(x)` is the summed per-pixel binary
cross-entropy between :math:`x` and :math:`\hat x`, the loss of problem set 2. The sum over all
:math:`2^D` configurations is 1 **because** :math:`\ell_i` depends on :math:`x_{<i}` only: summing out the
last variable first, :math:`\sum_{x_{\pi(D)}} p(x_{\pi(D)} \mid \cdot) = 1`, and so on backwards. A model
is therefore correct exactly when its Jacobian :math:`\partial \ell_i / \partial x_j` vanishes whenever
:math:`j` does not come before :math:`i` (strictly triangular in the model's order); the tests check that
with autograd.

``forward(x)`` returns all :math:`D` logits :math:`\ell` in one pass, position :math:`i` of the output
belonging to variable :math:`i` (whatever the order); ``log_prob(x)`` returns :math:`\log p(x)` in nats,
``[B]``; ``sample(n)`` draws the variables one at a time in the model's order, :math:`D` sequential steps.

FVSBN (logistic autoregression)
-------------------------------
The fully visible sigmoid belief network (Neal 1992; Frey's logistic autoregressive classifier, "LARC"):
one logistic regression per conditional,

.. math:: \ell_i = b_i + \sum_{j < i} W_{ij} x_j, \qquad \ell = b + (W \odot M)\, x,
    \qquad M_{ij} = \mathbb 1[j < i],

with a strictly lower-triangular mask :math:`M`: :math:`D(D-1)/2 + D` effective parameters, only
first-order (additive) effects of the past.

Bengio and Bengio (1999)
------------------------
"Modeling High-Dimensional Discrete Data with Multi-Layer Neural Networks" (NIPS 1999) computes every
conditional with one network: a group of :math:`H` tanh hidden units per position :math:`j` that sees only
:math:`x_{<j}`, and an output for position :math:`i` that reads the hidden groups :math:`j \le i`, as in the
paper (its output group :math:`i` is connected to hidden groups :math:`1, \dots, i`):

.. math:: h_{j} = \tanh\Big(c_{j} + \sum_{k < j} v_{j, k}\, x_k\Big) \in \mathbb R^{H}, \qquad
    \ell_i = b_i + \sum_{j \le i} w_{i, j}^\top h_{j}.

Each :math:`h_j` with :math:`j \le i` depends on :math:`x_{<j} \subseteq x_{<i}`, so :math:`\ell_i` depends on
:math:`x_{<i}` only. Position 0 is the edge case: its hidden group sees no input, so :math:`h_0 = \tanh(c_0)` is
a learned constant and :math:`p(x_0)` is unconditional (a bias, not a layer with zero inputs, which is
where a loop-over-positions sketch crashes). Implemented with two masked dense matrices
:math:`v \in \mathbb R^{DH \times D}`, :math:`w \in \mathbb R^{D \times DH}`: :math:`O(D^2 H)` parameters (the
dense storage holds twice the effective number). The paper's optional direct input-to-output connections
(which would add the FVSBN term) and its pruning are not included.

NADE (Larochelle and Murray, 2011)
----------------------------------
NADE ties the hidden layers of all conditionals: with :math:`W \in \mathbb R^{H \times D}`,
:math:`c \in \mathbb R^{H}`, :math:`V \in \mathbb R^{D \times H}`, :math:`b \in \mathbb R^{D}`,

.. math:: h_i = \sigma\big(c + W_{:, <i}\, x_{<i}\big), \qquad p(x_i = 1 \mid x_{<i}) = \sigma(b_i + V_{i} \cdot h_i).

The pre-activations share their prefix sums, :math:`a_1 = c` and :math:`a_{i+1} = a_i + W_{:, i}\, x_i`,
so all :math:`D` hidden vectors cost :math:`O(DH)` instead of :math:`O(D^2 H)`. ``forward`` computes the
recurrence for all :math:`i` at once as an exclusive cumulative sum along the variables, with gradients derived
by hand as suffix sums (:class:`NADELogits`), and ``sample`` runs it one step at a time.

MADE (Germain, Gregor, Murray and Larochelle, 2015)
---------------------------------------------------
A multilayer perceptron :math:`x \to h^1 \to \dots \to h^L \to \ell` (ReLU hidden layers) whose weight
matrices are multiplied elementwise by binary masks. Every unit gets a *degree*: input :math:`d` has
:math:`m^0(d) = \pi^{-1}(d) + 1 \in \{1, \dots, D\}` (its 1-based position in the ordering), hidden unit
:math:`k` of layer :math:`l` has :math:`m^l(k)` drawn uniformly from the integers in
:math:`[\min_{k'} m^{l-1}(k'), D - 1]`, and

.. math:: M^{W^l}_{k', k} = \mathbb 1\big[m^l(k') \ge m^{l-1}(k)\big], \qquad
    M^{V}_{d, k} = \mathbb 1\big[m^0(d) > m^L(k)\big].

By induction a hidden unit of degree :math:`m` depends only on the inputs of degree :math:`\le m`, and output
:math:`d` only on hidden units of degree :math:`< m^0(d)`, so only on the variables before :math:`d`; the
**strict** inequality of the output mask makes the Jacobian strictly triangular. (With :math:`D = 1` the
interval is empty; the hidden units then get degree 0, see no input, and the one output is a learned
constant.)

*Direct connections* (``direct=True``, an option of the paper, section 3.4 of Germain et al.): a masked
linear map from the inputs straight to the logits is added,

.. math:: \ell = (V \odot M^V)\, h^L + c + (A \odot M^A)\, x, \qquad
    M^A_{d, d'} = \mathbb 1\big[m^0(d) > m^0(d')\big],

an FVSBN term in the model's ordering (:math:`A` starts at zero, so training starts from the plain MADE).
It keeps the Jacobian strictly triangular (same strict inequality as :math:`M^V`) and costs :math:`D^2`
parameters. On MNIST it is the difference between a MADE that spends its hidden units on the
near-linear pixel-to-neighbour correlations and one that can leave them to :math:`A` (the ablation in
``docs/notes/lecture3-autoregressive.md`` measures the difference).
``activation`` is ``"relu"`` (the paper's) or ``"gelu"``.

*Connectivity-agnostic training and ensembles.* ``num_masks = K > 1`` holds :math:`K` mask sets (with
``order="random"`` each also draws its own ordering :math:`\pi_k`; with ``order="natural"`` only the hidden
connectivity varies). In training mode, every ``forward`` / ``log_prob`` call without ``mask_index`` uses
the next mask in turn (0, 1, ..., K-1, 0, ...), as the paper resamples a mask per minibatch; the counter is
a buffer, so it is checkpointed and a resumed run continues the cycle. In evaluation mode the :math:`K`
models form an equally weighted **mixture**:

.. math:: p(x) = \frac1K \sum_{k=1}^{K} p_k(x), \qquad
    \log p(x) = \operatorname{logsumexp}_k \log p_k(x) - \log K,

a normalised distribution, :math:`\ge \frac1K\sum_k \log p_k(x)` by Jensen's inequality (so the average
single-mask NLL used in training is an upper bound on the mixture's). Averaging the **logits** (or the
per-pixel probabilities) of the masks is *not* a valid ensemble: for different orderings the averaged
conditionals do not come from any one chain-rule factorisation, so they need not sum to one over the
:math:`2^D` configurations, and the "NLL" they give is not a likelihood: it can even fall below the
entropy of the data (a worked example is in ``docs/notes/lecture3-autoregressive.md``).

Sampling cost and reuse
-----------------------
Scoring takes one parallel pass; sampling needs :math:`D` sequential steps. A naive sampler recomputes the
full forward pass at each step (``incremental=False``): :math:`D` passes. The architectures allow reuse
(``incremental=True``, the default): FVSBN updates the logits :math:`\ell \mathrel{+}= W_{:, d}\, x_d`
(:math:`O(D)` per step); NADE updates :math:`a \mathrel{+}= W_{:, d}\, x_d` (:math:`O(H)` per step, then one
:math:`O(H)` output); Bengio and Bengio's network computes hidden group :math:`i` once, when
:math:`x_{<i}` is known. MADE goes further than updating the first layer's pre-activation incrementally: a
hidden unit of degree :math:`m` depends only on the first :math:`m` variables of the ordering, so its value is
final after step :math:`m`; the sampler computes every hidden unit exactly once, at the step equal to its
degree (for the first layer this is the same :math:`O(H)`-per-step cost as the update
:math:`a \mathrel{+}= W^1_{:, d}\, x_d`), and of the output layer only the unit of the variable being drawn.
One sample then costs about one forward pass instead of :math:`D`. Both samplers draw the same uniform
noise in the same order (one :math:`u_{\cdot, k}` per step :math:`k`, :math:`x_{\pi(k)} = \mathbb 1[u < \hat x]`),
so for one generator they return identical samples. Sampling runs under ``torch.no_grad`` in evaluation
mode and restores the previous mode afterwards (problem set 2's sampler forgot ``model.eval()``).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from dgmlab import checks
from dgmlab.densities import bernoulli_log_likelihood
from dgmlab.errors import CapabilityError, ModelConfigError
from dgmlab.models.masked import MASKED_ACTIVATIONS, autoregressive_masks, hidden_degrees, masked_forward
from dgmlab.models.protocols import reject_context
from dgmlab.utils import check_int, check_widths, device_of, eval_mode

MADE_ORDERS: tuple[str, ...] = ("natural", "random")
MADE_ACTIVATIONS: dict[str, Callable[[Tensor], Tensor]] = MASKED_ACTIVATIONS
MAX_ENUMERABLE_DIM = 24


def all_binary_configurations(num_inputs: int) -> Tensor:
    """Every :math:`x \\in \\{0, 1\\}^D` as a float tensor ``[2^D, D]``, in binary counting order.

    Row :math:`r` is the binary expansion of :math:`r` with variable 0 as the most significant bit, so the
    first row is all zeros and the last all ones. Summing ``exp(model.log_prob(...))`` over it checks that
    a model is normalised. ``num_inputs`` must be in ``1..24`` (``2^24`` rows is already 1.6 GB).
    """
    if not isinstance(num_inputs, int) or isinstance(num_inputs, bool) or not 1 <= num_inputs <= MAX_ENUMERABLE_DIM:
        raise ValueError(f"all_binary_configurations: num_inputs must be an integer in 1..{MAX_ENUMERABLE_DIM} "
                         f"(there are 2^D configurations), got {num_inputs!r}")
    index = torch.arange(2**num_inputs)
    bits = torch.arange(num_inputs - 1, -1, -1)
    return ((index[:, None] >> bits[None, :]) & 1).float()


def _check_positive_int(value: object, name: str, model: str) -> int:
    return check_int(value, name, minimum=1, owner=model, error=ModelConfigError)

def _check_flag(value: object, model: str) -> bool:
    if not isinstance(value, bool):
        raise ModelConfigError(f"{model}: init_output_bias must be true or false, got {value!r}")
    return value


def _uniform_by_fan_in(mask: Tensor, generator: torch.Generator | None = None) -> Tensor:
    """Weights ``U(-1/sqrt(fan_in), 1/sqrt(fan_in))`` with each row's fan-in counted through ``mask``."""
    fan_in = mask.sum(dim=1, keepdim=True).clamp(min=1).float()
    return (2 * torch.rand(mask.shape, generator=generator) - 1) / fan_in.sqrt()


class AutoregressiveBinaryModel(nn.Module):
    """Shared surface of the models in this module: input checks, ``log_prob`` and the samplers.

    Subclasses define ``forward(x) -> logits [B, D]`` and ``_sample_incremental(u) -> [n, D]``, where
    ``u [n, D]`` holds the uniform noise of step ``k`` in column ``k``.
    """

    num_inputs: int

    # -- inputs ---------------------------------------------------------------------------------------------
    def _as_rows(self, x: Tensor) -> Tensor:
        """``[B, D]``, ``[B, H, W]`` or ``[B, 1, H, W]`` -> ``[B, D]`` in the parameters' dtype; checks ``D``."""
        if not isinstance(x, Tensor):
            raise TypeError(f"{type(self).__name__}: expected a tensor, got {type(x).__name__}")
        if x.dim() < 2:
            raise ValueError(f"{type(self).__name__}: expected a batch [B, {self.num_inputs}] (or [B, 1, H, W]), "
                             f"got shape {tuple(x.shape)}")
        rows = x.reshape(x.shape[0], -1)
        if rows.shape[1] != self.num_inputs:
            raise ValueError(f"{type(self).__name__}: expected {self.num_inputs} variables per example, got "
                             f"{rows.shape[1]} (input shape {tuple(x.shape)})")
        return rows.to(self._dtype())

    def _as_binary_rows(self, x: Tensor) -> Tensor:
        """As ``_as_rows``, and also checks that every value is 0 or 1 (one elementwise pass; deferred inside
        :func:`dgmlab.checks.deferred`)."""
        rows = self._as_rows(x)
        checks.require(((rows == 0) | (rows == 1)).all(), lambda: (
            f"{type(self).__name__}: log_prob is a density over binary vectors, so every value must be 0 or 1; "
            f"binarize grey levels first (e.g. torch.bernoulli(x))"))
        return rows

    def _dtype(self) -> torch.dtype:
        return next(self.parameters()).dtype

    def _device(self) -> torch.device:
        return device_of(self)

    # -- density --------------------------------------------------------------------------------------------
    def log_prob(self, x: Tensor, *, context: None = None) -> Tensor:
        """:math:`\\log p(x) = \\sum_i [x_i \\log\\sigma(\\ell_i) + (1 - x_i)\\log\\sigma(-\\ell_i)]` in nats.

        ``x``: binary ``[B, D]`` (or ``[B, 1, H, W]``); returns ``[B]``. Raises ``ValueError`` for a wrong
        number of variables or values other than 0 and 1.
        """
        return self.log_prob_per_dimension(x, context=context).sum(-1)

    def log_prob_per_dimension(self, x: Tensor, *, context: None = None) -> Tensor:
        """The chain rule's terms :math:`\\log p(x_i\\mid x_{<i})` ``[B, D]`` in nats; they sum to ``log_prob``."""
        reject_context(self, context)
        rows = self._as_binary_rows(x)
        # x_i log sigma(l_i) + (1 - x_i) log sigma(-l_i), per variable
        return -F.binary_cross_entropy_with_logits(self.forward(rows), rows, reduction="none")

    @torch.no_grad()
    def initialize_from_data(self, examples: Tensor) -> None:
        """Built with ``init_output_bias=True``: :meth:`set_output_bias` to the mean of the training ``examples``
        (grey levels for dynamically binarized data: the mean of their binarizations). Else nothing."""
        if getattr(self, "init_output_bias", False):
            self.set_output_bias(examples.reshape(len(examples), -1).mean(0))

    @torch.no_grad()
    def set_output_bias(self, data_mean: Tensor, eps: float = 1e-3) -> None:
        """Set every output bias to :math:`\\operatorname{logit}(\\bar x_i)`, the logit of the data's mean.

        ``data_mean`` ``[D]`` (or any shape with ``D`` values) in [0, 1], clamped to ``[eps, 1 - eps]``. With the
        rest of the logit near zero at initialisation, training starts near the independent-pixel model instead
        of :math:`p = 1/2` everywhere (about 543 nats on MNIST), as the VAE benchmark does for its decoder.
        """
        mean = torch.as_tensor(data_mean).reshape(-1)
        if mean.numel() != self.num_inputs:
            raise ValueError(f"{type(self).__name__}.set_output_bias: expected {self.num_inputs} means (one per "
                             f"variable), got {mean.numel()}")
        bias = self._output_bias()
        bias.copy_(torch.logit(mean.clamp(eps, 1 - eps)).to(bias))

    def _output_bias(self) -> Tensor:
        raise NotImplementedError

    # -- sampling -------------------------------------------------------------------------------------------
    def _noise(self, n: int, generator: torch.Generator | None) -> Tensor:
        check_int(n, "n", minimum=1, owner=f"{type(self).__name__}.sample")
        return torch.rand(n, self.num_inputs, generator=generator, device=self._device(), dtype=self._dtype())

    @torch.no_grad()
    def sample(self, n: int, *, generator: torch.Generator | None = None, context: None = None,
               incremental: bool = True) -> Tensor:
        """``n`` samples ``[n, D]`` (float, 0 or 1), drawn variable by variable in the model's order.

        Step :math:`k` sets :math:`x_{\\pi(k)} = \\mathbb 1[u_k < \\sigma(\\ell_{\\pi(k)})]` with
        :math:`u \\sim U(0, 1)^{n \\times D}` drawn up front, so ``incremental=True`` (reuse partial results,
        see the module docstring) and ``incremental=False`` (one full ``forward`` per step) give identical
        samples for the same ``generator``. Runs in evaluation mode and restores the previous mode.
        """
        reject_context(self, context)
        u = self._noise(n, generator)
        with eval_mode(self):
            return self._sample_incremental(u) if incremental else self._sample_naive(u, self, self.order)

    @staticmethod
    def _sample_naive(u: Tensor, logits_of: Callable[[Tensor], Tensor], order: Tensor) -> Tensor:
        """Reference sampler: one full pass ``logits_of(x)`` (through ``__call__``, so hooks run) per step."""
        x = torch.zeros_like(u)
        for step, variable in enumerate(order.tolist()):
            logit = logits_of(x)[:, variable]
            x[:, variable] = (u[:, step] < torch.sigmoid(logit)).to(x.dtype)
        return x

    def _sample_incremental(self, u: Tensor) -> Tensor:
        raise NotImplementedError


class FVSBN(AutoregressiveBinaryModel):
    """Fully visible sigmoid belief net: :math:`\\ell = b + (W \\odot M) x`, :math:`M` strictly lower triangular.

    ``FVSBN(D)``: parameters ``weight [D, D]`` (only the ``D(D-1)/2`` entries below the diagonal are used)
    and ``bias [D]``; natural order. ``FVSBN(784)`` stores 615,440 parameters, 307,720 of them effective.
    """

    def __init__(self, num_inputs: int, init_output_bias: bool = False) -> None:
        super().__init__()
        self.num_inputs = _check_positive_int(num_inputs, "num_inputs (the number of binary variables D)", "FVSBN")
        self.init_output_bias = _check_flag(init_output_bias, "FVSBN")
        self.register_buffer("order", torch.arange(num_inputs))
        # M_ij = 1[j < i]
        self.register_buffer("mask", torch.ones(num_inputs, num_inputs).tril(-1).bool())
        self.weight = nn.Parameter(_uniform_by_fan_in(self.mask) * self.mask)
        self.bias = nn.Parameter(torch.zeros(num_inputs))

    def forward(self, x: Tensor) -> Tensor:
        """Logits :math:`\\ell_i = b_i + \\sum_{j<i} W_{ij} x_j`: ``[B, D] -> [B, D]``."""
        x = self._as_rows(x)
        return F.linear(x, self.weight * self.mask, self.bias)

    def _output_bias(self) -> Tensor:
        return self.bias

    def _sample_incremental(self, u: Tensor) -> Tensor:
        weight = self.weight * self.mask
        x = torch.zeros_like(u)
        logits = self.bias.expand_as(u).clone()
        for i in range(self.num_inputs):
            x[:, i] = (u[:, i] < torch.sigmoid(logits[:, i])).to(x.dtype)
            # l += W[:, i] x_i: O(D) per step
            logits += x[:, i, None] * weight[:, i]
        return x


class BengioNet(AutoregressiveBinaryModel):
    """The neural autoregressive network of Bengio and Bengio (1999), for binary variables.

    ``BengioNet(D, hidden_per_position=H)``: hidden group :math:`j` (``H`` tanh units) sees :math:`x_{<j}`;
    output :math:`i` reads hidden groups :math:`j \\le i` (the paper's connectivity). Parameters
    ``v [D*H, D]``, ``c [D*H]`` (input to hidden), ``w [D, D*H]``, ``b [D]`` (hidden to output), stored dense
    and masked: ``2 D^2 H + D H + D`` stored, about half of the weights effective. Natural order.
    """

    def __init__(self, num_inputs: int, hidden_per_position: int, init_output_bias: bool = False) -> None:
        super().__init__()
        self.init_output_bias = _check_flag(init_output_bias, "BengioNet")
        self.num_inputs = _check_positive_int(num_inputs, "num_inputs (the number of binary variables D)",
                                              "BengioNet")
        self.hidden_per_position = _check_positive_int(hidden_per_position, "hidden_per_position", "BengioNet")
        positions = torch.arange(num_inputs)
        group = positions.repeat_interleave(hidden_per_position)  # position j of each hidden unit, [D*H]
        self.register_buffer("order", positions.clone())
        # hidden group j sees x_k for k < j
        self.register_buffer("mask_in", positions[None, :] < group[:, None])
        # output i reads hidden groups j <= i
        self.register_buffer("mask_out", group[None, :] <= positions[:, None])
        self.v = nn.Parameter(_uniform_by_fan_in(self.mask_in) * self.mask_in)
        self.c = nn.Parameter(torch.zeros(num_inputs * hidden_per_position))
        self.w = nn.Parameter(_uniform_by_fan_in(self.mask_out) * self.mask_out)
        self.b = nn.Parameter(torch.zeros(num_inputs))

    def hidden(self, x: Tensor) -> Tensor:
        """All hidden groups :math:`h_j = \\tanh(c_j + v_{j,<j} x_{<j})`: ``[B, D] -> [B, D*H]`` (group-major)."""
        return torch.tanh(F.linear(self._as_rows(x), self.v * self.mask_in, self.c))

    def forward(self, x: Tensor) -> Tensor:
        """Logits :math:`\\ell_i = b_i + \\sum_{j \\le i} w_{i,j}^\\top h_j`: ``[B, D] -> [B, D]``."""
        return F.linear(self.hidden(x), self.w * self.mask_out, self.b)

    def _output_bias(self) -> Tensor:
        return self.b

    def _sample_incremental(self, u: Tensor) -> Tensor:
        v, w = self.v * self.mask_in, self.w * self.mask_out
        size = self.hidden_per_position
        x = torch.zeros_like(u)
        h = torch.zeros(u.shape[0], self.num_inputs * size, dtype=u.dtype, device=u.device)
        for i in range(self.num_inputs):
            group = slice(i * size, (i + 1) * size)
            # h_i is final once x_<i is known: compute it once, O(D H)
            h[:, group] = torch.tanh(F.linear(x, v[group], self.c[group]))
            # only output i: O(D H)
            logit = h @ w[i] + self.b[i]
            x[:, i] = (u[:, i] < torch.sigmoid(logit)).to(x.dtype)
        return x


def _nade_hidden_into(buffer: Tensor, x: Tensor, W: Tensor, c: Tensor) -> Tensor:  # noqa: N803
    """``buffer [D, n, H] <- h_i = sigma(c + sum_{j<i} W[:, j] x_j)`` for ``x [n, D]``, in place; returns it."""
    torch.mul(x.T[:, :, None], W.T[:, None, :], out=buffer)  # W[:, j] x_j, position-major
    buffer.cumsum_(dim=0)  # inclusive prefix sums over positions
    buffer.addcmul_(x.T[:, :, None], W.T[:, None, :], value=-1.0)  # exclusive: drop position i's own term
    return buffer.add_(c).sigmoid_()


class NADELogits(torch.autograd.Function):
    r"""NADE's logits and their gradients in :math:`O(BDH)` time and :math:`O(nDH)` memory for chunks of ``n``.

    Forward (Larochelle and Murray 2011, eq. 2-3), with :math:`a_i = c + \sum_{j<i} W_{:,j} x_j`:

    .. math:: h_i = \sigma(a_i), \qquad \ell_i = b_i + V_i \cdot h_i .

    Backward, for :math:`g_i = \partial L / \partial \ell_i` (the paper's Algorithm 1, all positions at once):

    .. math::
        \frac{\partial L}{\partial V_i} = \sum_b g_{bi}\, h_{bi}, \qquad
        \frac{\partial L}{\partial b_i} = \sum_b g_{bi}, \qquad
        \delta_{bi} = \frac{\partial L}{\partial a_{bi}} = g_{bi}\, V_i \odot h_{bi} \odot (1 - h_{bi}),

    .. math::
        \frac{\partial L}{\partial c} = \sum_{b,i} \delta_{bi}, \qquad
        \frac{\partial L}{\partial W_{:,j}} = \sum_b x_{bj} \sum_{i>j} \delta_{bi}, \qquad
        \frac{\partial L}{\partial x_{bj}} = W_{:,j} \cdot \sum_{i>j} \delta_{bi},

    because :math:`x_j` reaches :math:`a_i` for every later :math:`i`: the suffix sums
    :math:`\sum_{i>j}\delta_{bi} = \sum_i \delta_{bi} - \sum_{i\le j}\delta_{bi}` come from one cumulative
    sum, as the prefix sums of the forward pass do.

    Why not leave it to autograd (``NADE.logits_by_autograd``): every intermediate there is a new ``[B, D, H]``
    tensor, 400 MB at ``B = 256, D = 784, H = 500``, and on a CPU the time goes to allocating and streaming them.
    Here the batch is cut into chunks of ``chunk_size`` examples, each chunk's hidden units live in one
    position-major ``[D, n, H]`` buffer updated in place (so the per-position products are plain batched
    matrix-vector products), nothing of size ``D H`` per example is kept for backward, and backward recomputes
    :math:`h` chunk by chunk: the same :math:`O(BDH)` arithmetic, with :math:`O(nDH)` working memory
    (:math:`n` = ``chunk_size``) instead of several :math:`O(BDH)` tensors.
    """

    chunk_size = 32

    @staticmethod
    def forward(ctx, x: Tensor, W: Tensor, c: Tensor, V: Tensor, b: Tensor) -> Tensor:  # noqa: N803
        """Logits ``[B, D]`` of ``x [B, D]``; saves only the inputs (backward recomputes the hidden units)."""
        (batch, _), k = x.shape, NADELogits.chunk_size
        logits = torch.empty_like(x)
        buffer = x.new_empty(x.shape[1], min(k, batch), W.shape[0])
        for start in range(0, batch, k):
            chunk = x[start:start + k]
            h = _nade_hidden_into(buffer[:, : len(chunk)], chunk, W, c)
            # l_i = V_i . h_i for every position i at once: [D, n, H] @ [D, H, 1]
            logits[start:start + len(chunk)] = torch.bmm(h, V[:, :, None]).squeeze(-1).T
        ctx.save_for_backward(x, W, c, V)
        return logits + b

    @staticmethod
    def backward(ctx, g: Tensor) -> tuple[Tensor | None, ...]:  # type: ignore[override]
        """Gradients with respect to ``x, W, c, V, b`` from ``g = dL/dlogits``, by the equations above."""
        x, W, c, V = ctx.saved_tensors  # noqa: N806
        need_x, need_W, need_c, need_V, need_b = ctx.needs_input_grad  # noqa: N806
        (batch, _), k = x.shape, NADELogits.chunk_size
        grad_WT, grad_V, grad_c = torch.zeros_like(W.T), torch.zeros_like(V), torch.zeros_like(c)  # noqa: N806
        grad_x = torch.empty_like(x) if need_x else None
        buffer = x.new_empty(x.shape[1], min(k, batch), W.shape[0])
        for start in range(0, batch, k):
            chunk, g_chunk = x[start:start + k], g[start:start + k]
            h = _nade_hidden_into(buffer[:, : len(chunk)], chunk, W, c)  # recomputed
            grad_V += torch.bmm(g_chunk.T[:, None, :], h).squeeze(1)  # sum_b g_bi h_bi
            # delta = g V h (1 - h), in place
            delta = h.addcmul_(h, h, value=-1.0).mul_(g_chunk.T[:, :, None]).mul_(V[:, None, :])
            grad_c += delta.sum(dim=(0, 1))
            prefix = delta.cumsum_(dim=0)  # P_j = sum_{i<=j} delta_i; suffix S_j = total - P_j
            total = prefix[-1].clone()  # [n, H]
            # sum_b x_bj S_bj = x^T total - sum_b x_bj P_bj
            grad_WT += chunk.T @ total - torch.bmm(chunk.T[:, None, :], prefix).squeeze(1)
            if grad_x is not None:
                # W[:, j] . S_bj = total_b . W[:, j] - P_bj . W[:, j]
                grad_x[start:start + len(chunk)] = total @ W - torch.bmm(prefix, W.T[:, :, None]).squeeze(-1).T
        return (grad_x, grad_WT.T if need_W else None, grad_c if need_c else None, grad_V if need_V else None,
                g.sum(0) if need_b else None)


class NADE(AutoregressiveBinaryModel):
    """Neural autoregressive distribution estimator (Larochelle and Murray, 2011), natural order.

    ``NADE(D, hidden=H)``: ``W [H, D]``, ``c [H]``, ``V [D, H]``, ``b [D]``, so ``2 D H + D + H``
    parameters (``NADE(784, 500)``: 785,284). :math:`h_i = \\sigma(c + W_{:,<i} x_{<i})`,
    :math:`p(x_i = 1\\mid x_{<i}) = \\sigma(b_i + V_i \\cdot h_i)`.
    """

    def __init__(self, num_inputs: int, hidden: int, init_output_bias: bool = False) -> None:
        super().__init__()
        self.init_output_bias = _check_flag(init_output_bias, "NADE")
        self.num_inputs = _check_positive_int(num_inputs, "num_inputs (the number of binary variables D)", "NADE")
        self.hidden = _check_positive_int(hidden, "hidden (the number of hidden units H)", "NADE")
        self.register_buffer("order", torch.arange(num_inputs))
        self.W = nn.Parameter((2 * torch.rand(hidden, num_inputs) - 1) / math.sqrt(num_inputs))
        self.c = nn.Parameter(torch.zeros(hidden))
        self.V = nn.Parameter((2 * torch.rand(num_inputs, hidden) - 1) / math.sqrt(hidden))
        self.b = nn.Parameter(torch.zeros(num_inputs))

    def pre_activations(self, x: Tensor) -> Tensor:
        """:math:`a_i = c + \\sum_{j<i} W_{:,j} x_j` for every ``i``: ``[B, D] -> [B, D, H]``, in ``O(B D H)``."""
        x = self._as_rows(x)
        # W[:, j] x_j for every j: [B, D, H]
        contributions = x[:, :, None] * self.W.T[None, :, :]
        # exclusive prefix sum: a_0 = c, a_{i+1} = a_i + W[:, i] x_i
        prefix = torch.cumsum(contributions, dim=1)
        return self.c + F.pad(prefix[:, :-1], (0, 0, 1, 0))

    def forward(self, x: Tensor) -> Tensor:
        """Logits :math:`\\ell_i = b_i + V_i \\cdot \\sigma(a_i)`: ``[B, D] -> [B, D]``.

        Computed by :class:`NADELogits` (chunked, in-place buffers, gradients derived by hand);
        :meth:`logits_by_autograd` is the same function left to autograd, the tests' reference.
        """
        return NADELogits.apply(self._as_rows(x), self.W, self.c, self.V, self.b)

    def logits_by_autograd(self, x: Tensor) -> Tensor:
        """The logits of ``forward`` written plainly, differentiated by autograd (several ``[B, D, H]`` tensors)."""
        h = torch.sigmoid(self.pre_activations(x))
        return self.b + (h * self.V).sum(dim=-1)

    def _output_bias(self) -> Tensor:
        return self.b

    def _sample_incremental(self, u: Tensor) -> Tensor:
        x = torch.zeros_like(u)
        a = self.c.expand(u.shape[0], self.hidden).clone()
        for i in range(self.num_inputs):
            logit = torch.sigmoid(a) @ self.V[i] + self.b[i]
            x[:, i] = (u[:, i] < torch.sigmoid(logit)).to(x.dtype)
            # a_{i+1} = a_i + W[:, i] x_i: O(H) per step
            a += x[:, i, None] * self.W[:, i]
        return x


class MADE(AutoregressiveBinaryModel):
    """Masked autoencoder for distribution estimation (Germain et al. 2015), any number of hidden layers.

    ``MADE(D, hidden_dims, num_masks=1, order="natural", seed=0)``: layers ``D -> hidden_dims[0] -> ... ->
    D`` (``nn.Linear`` each, so ``MADE(784, [1024])`` has 1,607,440 parameters, ``MADE(784, [500, 500])``
    1,035,784). The masks are built from ``seed`` alone (a private generator, the global RNG is untouched)
    and stored as buffers ``mask_0 ... mask_L`` ``[K, out, in]`` (bool), with the orderings ``orders [K, D]``
    and hidden degrees ``degrees_1 ... degrees_L`` ``[K, H_l]``, so they are saved with the state dict.
    ``direct=True`` adds the masked input-to-output matrix ``direct`` ``[D, D]`` (+D^2 parameters, mask buffer
    ``mask_direct [K, D, D]``); ``activation`` is ``"relu"`` or ``"gelu"``.

    ``mask_index=None`` means: in training mode, the next mask in turn (the counter ``current_mask``
    advances by one per ``forward``/``log_prob`` call); in evaluation mode, ``log_prob`` and ``sample`` use
    the mixture of all ``K`` masks and ``forward`` the logits of mask ``current_mask`` (a mixture has no single
    set of logits). ``order`` is the ordering of mask ``current_mask``.
    """

    def __init__(self, num_inputs: int, hidden_dims: Sequence[int], num_masks: int = 1, order: str = "natural",
                 seed: int = 0, direct: bool = False, activation: str = "relu",
                 init_output_bias: bool = False) -> None:
        super().__init__()
        self.init_output_bias = _check_flag(init_output_bias, "MADE")
        self.num_inputs = _check_positive_int(num_inputs, "num_inputs (the number of binary variables D)", "MADE")
        dims = check_widths(hidden_dims, owner="MADE", error=ModelConfigError, example="[500, 500]")
        self.num_masks = _check_positive_int(num_masks, "num_masks (the number of connectivity/ordering variants)",
                                             "MADE")
        if order not in MADE_ORDERS:
            raise ModelConfigError(f"MADE: unknown order {order!r}; choose 'natural' (x_1, ..., x_D) or 'random' "
                                   f"(a new random ordering for every mask)")
        if not isinstance(seed, int) or isinstance(seed, bool):
            raise ModelConfigError(f"MADE: seed must be an integer, got {seed!r}")
        if not isinstance(direct, bool):
            raise ModelConfigError(f"MADE: direct must be true or false (add masked input-to-output connections), "
                                   f"got {direct!r}")
        if activation not in MADE_ACTIVATIONS:
            raise ModelConfigError(f"MADE: unknown activation {activation!r}; choose one of "
                                   f"{', '.join(MADE_ACTIVATIONS)}")
        self.hidden_dims, self.order_kind, self.seed = dims, order, seed
        self.activation = activation
        self._act = MADE_ACTIVATIONS[activation]
        widths = [num_inputs, *dims, num_inputs]
        self.layers = nn.ModuleList(
            nn.Linear(fan_in, fan_out) for fan_in, fan_out in zip(widths[:-1], widths[1:], strict=True))
        orders, degrees, masks = self._build_masks(num_inputs, dims, self.num_masks, order, seed)
        self.register_buffer("orders", orders)
        for l, layer_degrees in enumerate(degrees, start=1):
            self.register_buffer(f"degrees_{l}", layer_degrees)
        for l, mask in enumerate(masks):
            self.register_buffer(f"mask_{l}", mask)
        self.register_buffer("current_mask", torch.zeros((), dtype=torch.long))
        # A, the direct input-to-output weights (D^2 parameters), starts at zero: the plain MADE
        self.direct = nn.Parameter(torch.zeros(num_inputs, num_inputs)) if direct else None
        if direct:
            # M^A_{d, d'} = 1[m^0(d) > m^0(d')] for every mask's ordering, [K, D, D]
            positions = torch.argsort(orders, dim=1)
            self.register_buffer("mask_direct", positions[:, :, None] > positions[:, None, :])

    @staticmethod
    def _build_masks(num_inputs: int, hidden_dims: list[int], num_masks: int, order: str,
                     seed: int) -> tuple[Tensor, list[Tensor], list[Tensor]]:
        """Orderings ``[K, D]``, hidden degrees ``[K, H_l]`` per layer and masks ``[K, out, in]`` per layer."""
        generator = torch.Generator().manual_seed(seed)
        orders, degrees, masks = [], [[] for _ in hidden_dims], [[] for _ in range(len(hidden_dims) + 1)]
        for _ in range(num_masks):
            pi = torch.randperm(num_inputs, generator=generator) if order == "random" else torch.arange(num_inputs)
            # m^0(d) = position of d in the ordering, 1..D
            input_degrees = torch.empty(num_inputs, dtype=torch.long)
            input_degrees[pi] = torch.arange(1, num_inputs + 1)
            # m^l(k) ~ U{min m^{l-1}, ..., D-1}; M^{W^l} and M^V as in dgmlab.models.masked
            layer_degrees = hidden_degrees(input_degrees, hidden_dims, rule="random", generator=generator)
            for l, mask in enumerate(autoregressive_masks(input_degrees, layer_degrees)):
                masks[l].append(mask)
            for l, current in enumerate(layer_degrees):
                degrees[l].append(current)
            orders.append(pi)
        return torch.stack(orders), [torch.stack(d) for d in degrees], [torch.stack(m) for m in masks]

    def _output_bias(self) -> Tensor:
        return self.layers[-1].bias

    # -- masks ----------------------------------------------------------------------------------------------
    @property
    def order(self) -> Tensor:
        """Ordering of mask ``current_mask``: ``order[k]`` is the variable generated ``k``-th, ``[D]``."""
        return self.orders[int(self.current_mask)]

    def masks(self, mask_index: int) -> list[Tensor]:
        """The masks of one connectivity variant, ``[out, in]`` per layer (first to output layer)."""
        return [getattr(self, f"mask_{l}")[mask_index] for l in range(len(self.layers))]

    def hidden_degrees(self, mask_index: int) -> list[Tensor]:
        """Degrees :math:`m^l(k)` of the hidden units of one variant, ``[H_l]`` per hidden layer."""
        return [getattr(self, f"degrees_{l}")[mask_index] for l in range(1, len(self.layers))]

    def _check_mask_index(self, mask_index: int) -> int:
        if not isinstance(mask_index, int) or isinstance(mask_index, bool) or not 0 <= mask_index < self.num_masks:
            raise ValueError(f"MADE: mask_index must be an integer in 0..{self.num_masks - 1} or None, "
                             f"got {mask_index!r}")
        return mask_index

    def _next_mask(self) -> int:
        """``current_mask``; in training mode also advance it to the next one (cyclically)."""
        index = int(self.current_mask)
        if self.training and self.num_masks > 1:
            self.current_mask.fill_((index + 1) % self.num_masks)
        return index

    # -- density --------------------------------------------------------------------------------------------
    def forward(self, x: Tensor, *, mask_index: int | None = None) -> Tensor:
        """Logits of one mask: ``[B, D] -> [B, D]``.

        :math:`h^l = \\mathrm{act}((W^l \\odot M^{W^l}) h^{l-1} + b^l)`,
        :math:`\\ell = (V \\odot M^V) h^L + c\\; [+ (A \\odot M^A) x]`.
        ``mask_index=None``: the next mask in training mode (and advance), ``current_mask`` in eval mode.
        """
        x = self._as_rows(x)
        index = self._next_mask() if mask_index is None else self._check_mask_index(mask_index)
        h = masked_forward(x, self.layers, self.masks(index), self._act)
        if self.direct is not None:
            h = h + F.linear(x, self.direct * self.mask_direct[index])
        return h

    def log_prob_per_mask(self, x: Tensor) -> Tensor:
        """:math:`\\log p_k(x)` for every mask ``k``: binary ``[B, D] -> [K, B]`` in nats."""
        rows = self._as_binary_rows(x)
        return torch.stack([bernoulli_log_likelihood(rows, self.forward(rows, mask_index=k))
                            for k in range(self.num_masks)])

    def log_prob(self, x: Tensor, *, context: None = None, mask_index: int | None = None) -> Tensor:
        """:math:`\\log p(x)` in nats, binary ``[B, D] -> [B]``.

        With ``mask_index`` given, that mask's model. With ``mask_index=None``: a single mask has nothing to
        choose; in training mode the next mask in turn (the paper's training objective); in evaluation mode
        the mixture :math:`\\operatorname{logsumexp}_k \\log p_k(x) - \\log K` (never the average of logits,
        which is not a normalised model).
        """
        reject_context(self, context)
        if mask_index is None and self.num_masks > 1 and not self.training:
            return torch.logsumexp(self.log_prob_per_mask(x), dim=0) - math.log(self.num_masks)
        return self.log_prob_per_dimension(x, mask_index=mask_index).sum(-1)

    def log_prob_per_dimension(self, x: Tensor, *, context: None = None, mask_index: int | None = None) -> Tensor:
        """The chain rule's terms :math:`\\log p_k(x_i\\mid x_{\\pi_k(<i)})` ``[B, D]`` of one mask ``k`` (as in
        :meth:`log_prob`); they sum to ``log_prob(x, mask_index=k)``. The mixture over ``K > 1`` masks (evaluation
        mode, ``mask_index=None``) has no such decomposition: :class:`~dgmlab.errors.CapabilityError`."""
        reject_context(self, context)
        if mask_index is None and self.num_masks > 1 and not self.training:
            raise CapabilityError(f"MADE: the mixture over {self.num_masks} masks has no per-variable decomposition "
                                  f"of log p(x); pass mask_index=k for the terms of one mask")
        rows = self._as_binary_rows(x)
        logits = self.forward(rows, mask_index=mask_index)
        return -F.binary_cross_entropy_with_logits(logits, rows, reduction="none")

    # -- sampling -------------------------------------------------------------------------------------------
    @torch.no_grad()
    def sample(self, n: int, *, generator: torch.Generator | None = None, context: None = None,
               incremental: bool = True, mask_index: int | None = None) -> Tensor:
        """``n`` samples ``[n, D]`` (float, 0 or 1), in evaluation mode (the previous mode is restored).

        With ``mask_index=None`` and ``K > 1`` masks, the mixture: each sample first draws its component
        :math:`k \\sim U\\{0..K-1\\}`, then its variables in ordering :math:`\\pi_k`. The components are drawn
        before the uniform noise ``[n, D]``, so ``incremental=True`` (every hidden unit computed once, at the
        step equal to its degree) and ``incremental=False`` (one full ``forward`` per step) give identical
        samples for the same ``generator``.
        """
        reject_context(self, context)
        if mask_index is not None:
            self._check_mask_index(mask_index)
        elif self.num_masks == 1:
            mask_index = 0
        if mask_index is None:
            check_int(n, "n", minimum=1, owner="MADE.sample")
            components = torch.randint(self.num_masks, (n,), generator=generator, device=self._device())
        else:
            components = None
        u = self._noise(n, generator)
        with eval_mode(self):
            if components is None:
                return self._sample_component(u, mask_index, incremental)
            x = torch.zeros_like(u)
            for k in range(self.num_masks):
                rows = (components == k).nonzero().squeeze(1)
                if rows.numel():
                    x[rows] = self._sample_component(u[rows], k, incremental)
            return x

    def _sample_component(self, u: Tensor, mask_index: int, incremental: bool) -> Tensor:
        order = self.orders[mask_index]
        if not incremental:
            return self._sample_naive(u, lambda x: self(x, mask_index=mask_index), order)
        weights = [layer.weight * mask for layer, mask in zip(self.layers, self.masks(mask_index), strict=True)]
        biases = [layer.bias for layer in self.layers]
        direct = None if self.direct is None else self.direct * self.mask_direct[mask_index]
        # units_at[l][m]: the hidden units of layer l with degree m (final once m variables are set)
        units_at = []
        for degrees in self.hidden_degrees(mask_index):
            counts = torch.bincount(degrees, minlength=self.num_inputs).tolist()
            units_at.append(torch.split(torch.argsort(degrees, stable=True), counts))
        x = torch.zeros_like(u)
        hidden = [torch.zeros(u.shape[0], width, dtype=u.dtype, device=u.device) for width in self.hidden_dims]
        for step, variable in enumerate(order.tolist()):
            below = x
            for l, units in enumerate(units_at):
                new = units[step]
                if new.numel():
                    # units of degree `step` see only units (or inputs) of degree <= step: all final now
                    hidden[l][:, new] = self._act(F.linear(below, weights[l][new], biases[l][new]))
                below = hidden[l]
            # only the output unit of the variable drawn at this step
            logit = below @ weights[-1][variable] + biases[-1][variable]
            if direct is not None:
                logit = logit + x @ direct[variable]
            x[:, variable] = (u[:, step] < torch.sigmoid(logit)).to(x.dtype)
        return x


__all__ = ["FVSBN", "MADE", "NADE", "AutoregressiveBinaryModel", "BengioNet", "all_binary_configurations"]
