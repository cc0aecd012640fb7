r"""Affine autoregressive flows: the masked autoregressive flow (MAF) and the inverse autoregressive flow (IAF).

References: G. Papamakarios, T. Pavlakou, I. Murray, *Masked Autoregressive Flow for Density Estimation*,
NeurIPS 2017; D. P. Kingma, T. Salimans, R. Jozefowicz, X. Chen, I. Sutskever, M. Welling, *Improved
Variational Inference with Inverse Autoregressive Flow*, NeurIPS 2016; M. Germain, K. Gregor, I. Murray,
H. Larochelle, *MADE: Masked Autoencoder for Distribution Estimation*, ICML 2015.

The masked network
------------------
The shift :math:`\mu_i` and log-scale :math:`\alpha_i` of variable :math:`i` come from MADE's masked MLP
with :math:`P = 2` outputs per input, :class:`~dgmlab.models.masked.MaskedMLP` (the network, degrees and
masks that :class:`~dgmlab.models.autoregressive.MADE` runs with one output per input): output
:math:`(p, i)` depends on :math:`v_j` only for :math:`j < i`. The hidden degrees cycle through
:math:`1..D-1` (``rule="cyclic"``; MADE draws them at random, ``rule="random"``), which uses every degree
once a layer has :math:`D - 1` units; with :math:`D = 1` the one output is a learned constant.

MAF (data to noise in one pass)
-------------------------------
With :math:`P = 2` outputs, a shift :math:`\mu_i` and a log-scale :math:`\alpha_i` of :math:`x_{<i}`
(Papamakarios et al., eqs. 2-4, written in the data-to-noise direction):

.. math:: u_i = (x_i - \mu_i(x_{<i}))\, \exp(-\alpha_i(x_{<i})), \qquad
    \log\Big|\det\frac{\partial u}{\partial x}\Big| = -\sum_i \alpha_i(x_{<i}),

one network pass (``forward``), because the Jacobian is lower triangular with diagonal
:math:`e^{-\alpha_i}`. The generating direction :math:`x_i = u_i \exp(\alpha_i) + \mu_i` needs
:math:`x_{<i}` first: ``inverse`` runs :math:`D` sequential passes, pass :math:`k` fixing :math:`x_k`.

IAF (noise to data in one pass)
-------------------------------
IAF conditions on the *noise* instead (Kingma et al. 2016, eq. 10, with :math:`\sigma = e^{\alpha}`):

.. math:: x_i = u_i \exp(\alpha_i(u_{<i})) + \mu_i(u_{<i}), \qquad
    \log\Big|\det\frac{\partial x}{\partial u}\Big| = \sum_i \alpha_i(u_{<i}).

In dgmlab's data-to-base convention (``forward``: data to noise, ``inverse``: noise to data) the IAF's
**inverse** is the single pass above (sampling and its log-density are cheap, as variational posteriors need)
and its **forward** :math:`u_i = (x_i - \mu_i(u_{<i}))\exp(-\alpha_i(u_{<i}))` is sequential, :math:`D`
passes (scoring given data is expensive). Up to the parametrisation of :math:`\mu, \alpha`, an IAF is
``Inverse`` of a MAF. The paper's gated update :math:`x = \sigma \odot u + (1 - \sigma) \odot m`,
:math:`\sigma = \operatorname{sigmoid}(s)` is a case of this affine map (:math:`\mu = (1-\sigma) m`).

Stability and initialisation
----------------------------
The raw log-scale output :math:`h` is bounded, :math:`\alpha = \beta\tanh(h/\beta)` (``scale_bound``
:math:`\beta`, default 2), so :math:`e^{\pm\alpha} \in [e^{-\beta}, e^{\beta}]` and the :math:`D`-step inverse
cannot blow up. With ``identity_init=True`` (the default) the output layer starts at zero, so
:math:`\mu = \alpha = 0` and the flow starts as the identity; the shared tests build their examples with
``identity_init=False`` so that the Jacobian check sees a non-trivial map.

These flows are unconditional: a ``context`` raises :class:`~dgmlab.errors.CapabilityError`. Stacked
layers should alternate the ordering, e.g. with :class:`~dgmlab.models.flows.coupling.Reverse` in between.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor

from dgmlab.errors import ModelConfigError
from dgmlab.models.flows.base import Transform, register_transform_example
from dgmlab.models.masked import MaskedMLP
from dgmlab.models.protocols import reject_context
from dgmlab.utils import check_positive_number

__all__ = ["InverseAutoregressiveFlow", "MaskedAutoregressiveFlow"]


class _AffineAutoregressive(Transform):
    """Shared part of MAF and IAF: the network and :math:`(\\mu, \\alpha)` of an input ``[B, D]``."""

    def __init__(self, dim: int, hidden_dims: Sequence[int], *, scale_bound: float = 2.0,
                 identity_init: bool = True) -> None:
        super().__init__()
        owner = type(self).__name__
        scale_bound = check_positive_number(scale_bound, "scale_bound", owner=owner, error=ModelConfigError,
                                            hint="|alpha| < scale_bound")
        self.net = MaskedMLP(dim, hidden_dims, outputs_per_input=2, rule="cyclic", identity_init=identity_init)
        self.dim, self.hidden_dims, self.scale_bound = self.net.dim, self.net.hidden_dims, float(scale_bound)

    def _check_input(self, v: Any, name: str) -> Tensor:
        if not isinstance(v, Tensor) or v.dim() != 2 or v.shape[1] != self.dim:
            got = list(v.shape) if isinstance(v, Tensor) else type(v).__name__
            raise ValueError(f"{type(self).__name__}: {name} must have shape [B, {self.dim}], got {got}")
        return v

    def shift_and_log_scale(self, v: Tensor) -> tuple[Tensor, Tensor]:
        """:math:`\\mu_i(v_{<i})` and :math:`\\alpha_i(v_{<i}) = \\beta\\tanh(h_i/\\beta)`, ``[B, D]`` each."""
        out = self.net(v)
        # alpha = beta tanh(h / beta), bounded log-scale
        return out[:, 0], self.scale_bound * torch.tanh(out[:, 1] / self.scale_bound)

    def _normalize_one_pass(self, x: Tensor) -> tuple[Tensor, Tensor]:
        mu, alpha = self.shift_and_log_scale(x)
        # u_i = (x_i - mu_i(x_<i)) exp(-alpha_i(x_<i)), log|det du/dx| = -sum_i alpha_i
        return (x - mu) * torch.exp(-alpha), -alpha.sum(dim=1)

    def _generate_sequential(self, u: Tensor) -> tuple[Tensor, Tensor]:
        x = torch.zeros_like(u)
        alpha = torch.zeros_like(u)
        for _ in range(self.dim):
            mu, alpha = self.shift_and_log_scale(x)
            # pass k: x_i = u_i exp(alpha_i(x_<i)) + mu_i(x_<i) is exact for i <= k
            x = u * torch.exp(alpha) + mu
        # log|det dx/du| = sum_i alpha_i(x_<i)
        return x, alpha.sum(dim=1)

    def _generate_one_pass(self, u: Tensor) -> tuple[Tensor, Tensor]:
        mu, alpha = self.shift_and_log_scale(u)
        # x_i = u_i exp(alpha_i(u_<i)) + mu_i(u_<i), log|det dx/du| = sum_i alpha_i
        return u * torch.exp(alpha) + mu, alpha.sum(dim=1)

    def _normalize_sequential(self, x: Tensor) -> tuple[Tensor, Tensor]:
        u = torch.zeros_like(x)
        alpha = torch.zeros_like(x)
        for _ in range(self.dim):
            mu, alpha = self.shift_and_log_scale(u)
            # pass k: u_i = (x_i - mu_i(u_<i)) exp(-alpha_i(u_<i)) is exact for i <= k
            u = (x - mu) * torch.exp(-alpha)
        # log|det du/dx| = -sum_i alpha_i(u_<i)
        return u, -alpha.sum(dim=1)


class MaskedAutoregressiveFlow(_AffineAutoregressive):
    """MAF (Papamakarios et al. 2017): ``forward`` (data to noise) in one pass, ``inverse`` in :math:`D` passes.

    ``MaskedAutoregressiveFlow(dim, hidden_dims, *, scale_bound=2.0, identity_init=True)`` on ``[B, dim]``;
    :math:`u_i = (x_i - \\mu_i(x_{<i}))e^{-\\alpha_i(x_{<i})}`, :math:`\\log|\\det| = -\\sum_i\\alpha_i`.
    """

    def forward(self, x: Tensor, *, context: Any = None) -> tuple[Tensor, Tensor]:
        reject_context(self, context)
        return self._normalize_one_pass(self._check_input(x, "x"))

    def inverse(self, y: Tensor, *, context: Any = None) -> tuple[Tensor, Tensor]:
        reject_context(self, context)
        return self._generate_sequential(self._check_input(y, "y"))


class InverseAutoregressiveFlow(_AffineAutoregressive):
    """IAF (Kingma et al. 2016): ``inverse`` (noise to data) in one pass, ``forward`` in :math:`D` passes.

    ``InverseAutoregressiveFlow(dim, hidden_dims, *, scale_bound=2.0, identity_init=True)`` on ``[B, dim]``;
    :math:`x_i = u_i e^{\\alpha_i(u_{<i})} + \\mu_i(u_{<i})`, :math:`\\log|\\det \\partial x/\\partial u| =
    \\sum_i\\alpha_i`.
    """

    def forward(self, x: Tensor, *, context: Any = None) -> tuple[Tensor, Tensor]:
        reject_context(self, context)
        return self._normalize_sequential(self._check_input(x, "x"))

    def inverse(self, y: Tensor, *, context: Any = None) -> tuple[Tensor, Tensor]:
        reject_context(self, context)
        return self._generate_one_pass(self._check_input(y, "y"))


# -- examples for the shared transform tests (random output layers, so the Jacobian check is non-trivial) ---
register_transform_example("maf", lambda: MaskedAutoregressiveFlow(5, [16, 16], identity_init=False).double(), (5,))
register_transform_example("iaf", lambda: InverseAutoregressiveFlow(5, [16, 16], identity_init=False).double(), (5,))
