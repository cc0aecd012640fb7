r"""Planar and radial flows (Rezende and Mohamed 2015, "Variational Inference with Normalizing Flows",
section 4.1 and appendix A).

Both are defined by the paper in the *generating* direction: :math:`f` maps a base sample :math:`z` to
:math:`f(z)` and its log-determinant is cheap. Here ``forward`` is the paper's :math:`f` (with its
log-determinant) and ``inverse`` is :math:`f^{-1}`, found by a scalar solve. A :class:`~dgmlab.models.flows.Flow`
maps data to the base in ``forward``, so a flow that fits a target density by reverse KL (samples and
their log-density, ``Flow.sample_and_log_prob``) uses ``Inverse(Compose(Planar(d), ...))``: sampling then runs
the paper's cheap direction, and only ``log_prob`` of given points pays for the solves.

Planar flow
-----------
With :math:`w, u\in\mathbb R^d`, :math:`b\in\mathbb R` and :math:`h = \tanh`,

.. math:: f(z) = z + \hat u\, h(w^\top z + b), \qquad \psi(z) = h'(w^\top z + b)\, w, \qquad
          \log\Big|\det\frac{\partial f}{\partial z}\Big| = \log\big|1 + \hat u^\top\psi(z)\big|. \qquad\text{(P1-P3)}

:math:`f` is invertible when :math:`w^\top\hat u \ge -1` (appendix A); the raw :math:`u` is mapped to

.. math:: \hat u = u + \big(m(w^\top u) - w^\top u\big)\frac{w}{\lVert w\rVert^2}, \qquad
          m(a) = -1 + \log(1 + e^{a}), \qquad\text{(P4, P5)}

so that :math:`w^\top\hat u = m(w^\top u) > -1` for every :math:`u`.

*Inverse.* Write :math:`a = w^\top z`. Taking :math:`w^\top` of (P1) gives the scalar equation

.. math:: w^\top y = a + (w^\top\hat u)\, h(a + b), \qquad\text{(P6)}

whose right side is strictly increasing in :math:`a` (its derivative :math:`1 + (w^\top\hat u)h'(a+b)` is
positive because :math:`0 < h' \le 1`), and whose root lies in
:math:`[w^\top y - |w^\top\hat u|,\ w^\top y + |w^\top\hat u|]` because :math:`|h| \le 1`. It is solved by
Newton's method safeguarded by bisection on that bracket, in float64, for the whole batch at once; then

.. math:: z = y - \hat u\, h(a + b). \qquad\text{(P7)}

Radial flow
-----------
With a centre :math:`z_0\in\mathbb R^d`, :math:`\alpha > 0` and :math:`\beta\ge-\alpha`,

.. math:: f(z) = z + \beta h(\alpha, r)(z - z_0), \qquad r = \lVert z - z_0\rVert, \qquad
          h(\alpha, r) = \frac{1}{\alpha + r}, \qquad\text{(R1, R2)}

.. math:: \log\Big|\det\frac{\partial f}{\partial z}\Big|
          = (d - 1)\log(1 + \beta h) + \log\big(1 + \beta h + \beta h'(\alpha, r)\, r\big),
          \qquad h'(\alpha, r) = -\frac{1}{(\alpha + r)^2}. \qquad\text{(R3)}

The constraints are kept by :math:`\alpha = \log(1 + e^{\tilde\alpha})` and
:math:`\beta = -\alpha + \log(1 + e^{\tilde\beta})` with unconstrained :math:`\tilde\alpha, \tilde\beta`
(``alpha_raw``, ``beta_raw``).                                                              (R4, R5)

*Inverse.* :math:`f` scales :math:`z - z_0` by a positive factor, so :math:`y - z_0` has the direction of
:math:`z - z_0` and the radius :math:`r_y = \lVert y - z_0\rVert = r\,(1 + \beta/(\alpha + r))`, i.e.

.. math:: r^2 + (\alpha + \beta - r_y)\, r - \alpha r_y = 0, \qquad\text{(R6)}

a quadratic with one root :math:`r \ge 0` (the product of its roots is :math:`-\alpha r_y \le 0`), taken in
the cancellation-free form; then

.. math:: z - z_0 = \frac{y - z_0}{1 + \beta h(\alpha, r)}. \qquad\text{(R7)}

For both flows the inverse's log-determinant is minus (P3) or (R3) at the recovered point.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from dgmlab.errors import ModelConfigError
from dgmlab.models.flows.base import Transform, register_transform_example
from dgmlab.utils import check_int

__all__ = ["Planar", "Radial"]

_MAX_SOLVER_STEPS = 200


def _check_vectors(values: Tensor, dim: int, owner: str) -> None:
    if values.dim() != 2 or values.shape[1] != dim:
        raise ValueError(f"{owner}: inputs must have shape [B, {dim}], got {list(values.shape)}")


def _solve_planar_component(target: Tensor, c: Tensor, b: Tensor) -> Tensor:
    r"""The root :math:`a` of (P6), :math:`a + c\tanh(a + b) = ` ``target`` for ``c > -1``, elementwise over
    ``target`` ``[B]``: Newton's method safeguarded by bisection on the bracket ``target -+ |c|``, in float64
    (no gradient; see :meth:`Planar.inverse`)."""
    dtype = torch.float32 if target.device.type == "mps" else torch.float64
    target, c, b = target.to(dtype), c.to(dtype), b.to(dtype)
    tolerance = 4 * torch.finfo(dtype).eps
    # the root of (P6) lies in [w^T y - |w^T u_hat|, w^T y + |w^T u_hat|] because |h| <= 1
    low, high = target - c.abs(), target + c.abs()
    a = target - c * torch.tanh(target + b)
    for _ in range(_MAX_SOLVER_STEPS):
        h = torch.tanh(a + b)
        # residual of (P6) and its derivative 1 + c h'(a + b) > 0
        residual = a + c * h - target
        slope = 1 + c * (1 - h * h)
        low = torch.where(residual < 0, a, low)
        high = torch.where(residual > 0, a, high)
        newton = a - residual / slope
        step = torch.where((newton > low) & (newton < high), newton, 0.5 * (low + high))
        done = bool(((step - a).abs() <= tolerance * (1 + a.abs())).all())
        a = step
        if done:
            break
    return a


class Planar(Transform):
    r"""The planar flow (P1--P7) on vectors ``[B, dim]``: ``forward`` is the paper's
    :math:`f(z) = z + \hat u\tanh(w^\top z + b)` with its log-determinant, ``inverse`` solves (P6) for
    :math:`w^\top z`. Any raw ``u`` is allowed: :meth:`u_hat` enforces :math:`w^\top\hat u > -1`. Use it through
    :class:`~dgmlab.models.flows.Inverse` for reverse-KL fitting (module docstring). Parameters start at small
    random values (``w``, ``u`` uniform in :math:`\pm 1/\sqrt d`, ``b = 0``)."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.dim = check_int(dim, "dim", minimum=1, owner="Planar", error=ModelConfigError)
        bound = self.dim**-0.5
        self.w = nn.Parameter(torch.empty(self.dim).uniform_(-bound, bound))
        self.u = nn.Parameter(torch.empty(self.dim).uniform_(-bound, bound))
        self.b = nn.Parameter(torch.zeros(()))

    def _softplus_w_u(self) -> Tensor:
        r""":math:`\operatorname{softplus}(w^\top u) = 1 + w^\top\hat u` (P5), computed without the cancellation
        of :math:`1 + (-1 + \operatorname{softplus})`, which rounds to 0 in float32 once :math:`w^\top u < -17`."""
        return F.softplus(self.w @ self.u)

    def _one_plus_c_slope(self, h: Tensor) -> Tensor:
        r""":math:`1 + (w^\top\hat u)\,h'(\cdot) = h^2 + (1 - h^2)\operatorname{softplus}(w^\top u) > 0`, with
        :math:`h' = 1 - h^2`: the determinant (P3) and the slope of (P6), stable in float32."""
        return h * h + (1 - h * h) * self._softplus_w_u()

    def u_hat(self) -> Tensor:
        r""":math:`\hat u` ``[dim]`` of (P4, P5), with :math:`w^\top\hat u = m(w^\top u) > -1`."""
        w_u = self.w @ self.u
        # (P5) m(w^T u) = -1 + softplus(w^T u)
        m = -1 + F.softplus(w_u)
        # (P4) u_hat = u + (m(w^T u) - w^T u) w / |w|^2
        return self.u + (m - w_u) * self.w / (self.w @ self.w).clamp_min(torch.finfo(self.w.dtype).tiny)

    def forward(self, z: Tensor, *, context: Any = None) -> tuple[Tensor, Tensor]:
        _check_vectors(z, self.dim, "Planar")
        u_hat = self.u_hat()
        h = torch.tanh(z @ self.w + self.b)
        # (P1) f(z) = z + u_hat h(w^T z + b)
        y = z + h.unsqueeze(1) * u_hat
        # (P2, P3) log|1 + u_hat^T psi(z)| with psi = h'(w^T z + b) w, h' = 1 - tanh^2; positive as w^T u_hat > -1
        logdet = torch.log(self._one_plus_c_slope(h))
        return y, logdet

    def inverse(self, y: Tensor, *, context: Any = None) -> tuple[Tensor, Tensor]:
        _check_vectors(y, self.dim, "Planar")
        u_hat = self.u_hat()
        w_y = y @ self.w
        c = self.w @ u_hat
        with torch.no_grad():
            # (P6) w^T y = a + (w^T u_hat) h(a + b), solved for a = w^T z
            a = _solve_planar_component(w_y, c, self.b).to(y.dtype)
        # one Newton step of (P6) whose value is exactly zero: gradients follow the implicit function theorem
        h = torch.tanh(a + self.b)
        newton_step = -(a + c * h - w_y) / self._one_plus_c_slope(h)
        a = a + (newton_step - newton_step.detach())
        h = torch.tanh(a + self.b)
        # (P7) z = y - u_hat h(a + b)
        z = y - h.unsqueeze(1) * u_hat
        # minus (P3) at the recovered z, where w^T z = a
        logdet = -torch.log(self._one_plus_c_slope(h))
        return z, logdet


class Radial(Transform):
    r"""The radial flow (R1--R7) on vectors ``[B, dim]``: ``forward`` is the paper's
    :math:`f(z) = z + \beta(z - z_0)/(\alpha + r)` with its log-determinant, ``inverse`` its closed form.
    :math:`\alpha = \operatorname{softplus}(\tilde\alpha) > 0` and
    :math:`\beta = -\alpha + \operatorname{softplus}(\tilde\beta) > -\alpha` for any raw values. Use it through
    :class:`~dgmlab.models.flows.Inverse` for reverse-KL fitting (module docstring). Parameters start at small
    random values (``z0`` uniform in :math:`\pm 1/\sqrt d`, raw ``alpha`` and ``beta`` uniform in
    :math:`\pm 1`)."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.dim = check_int(dim, "dim", minimum=1, owner="Radial", error=ModelConfigError)
        bound = self.dim**-0.5
        self.z0 = nn.Parameter(torch.empty(self.dim).uniform_(-bound, bound))
        self.alpha_raw = nn.Parameter(torch.empty(()).uniform_(-1, 1))
        self.beta_raw = nn.Parameter(torch.empty(()).uniform_(-1, 1))

    def alpha(self) -> Tensor:
        """:math:`\\alpha > 0` (R4)."""
        # (R4) alpha = softplus(alpha_raw)
        return F.softplus(self.alpha_raw)

    def beta(self) -> Tensor:
        """:math:`\\beta > -\\alpha` (R5)."""
        # (R5) beta = -alpha + softplus(beta_raw)
        return -self.alpha() + F.softplus(self.beta_raw)

    def _logdet(self, r: Tensor, alpha: Tensor, beta: Tensor) -> Tensor:
        # (R2) h(alpha, r) = 1 / (alpha + r) and h'(alpha, r) = -1 / (alpha + r)^2
        h = 1 / (alpha + r)
        h_prime = -h * h
        # (R3) (d - 1) log(1 + beta h) + log(1 + beta h + beta h' r)
        return (self.dim - 1) * torch.log1p(beta * h) + torch.log1p(beta * h + beta * h_prime * r)

    def forward(self, z: Tensor, *, context: Any = None) -> tuple[Tensor, Tensor]:
        _check_vectors(z, self.dim, "Radial")
        alpha, beta = self.alpha(), self.beta()
        difference = z - self.z0
        # (R1) r = |z - z0|
        r = torch.linalg.vector_norm(difference, dim=1)
        # (R1, R2) f(z) = z + beta h(alpha, r) (z - z0)
        y = z + (beta / (alpha + r)).unsqueeze(1) * difference
        return y, self._logdet(r, alpha, beta)

    def inverse(self, y: Tensor, *, context: Any = None) -> tuple[Tensor, Tensor]:
        _check_vectors(y, self.dim, "Radial")
        alpha, beta = self.alpha(), self.beta()
        difference = y - self.z0
        r_y = torch.linalg.vector_norm(difference, dim=1)
        # (R6) r^2 + B r - alpha r_y = 0 with B = alpha + beta - r_y; its root r >= 0 without cancellation
        linear = alpha + beta - r_y
        root = torch.sqrt(linear * linear + 4 * alpha * r_y)
        nonnegative = linear >= 0
        r = torch.where(nonnegative, 2 * alpha * r_y / torch.where(nonnegative, linear + root, 1.0),
                        0.5 * (root - linear))
        # (R7) z - z0 = (y - z0) / (1 + beta h(alpha, r))
        z = self.z0 + difference / (1 + beta / (alpha + r)).unsqueeze(1)
        # minus (R3) at the recovered z
        return z, -self._logdet(r, alpha, beta)


def _planar_example(violating: bool) -> Planar:
    generator = torch.Generator().manual_seed(21 if violating else 20)
    transform = Planar(3)
    w = torch.randn(3, generator=generator)
    u = 1.5 * torch.randn(3, generator=generator)
    if violating:
        # raw u with w^T u = -3 < -1: the paper's invertibility condition fails for u, not for u_hat
        u = u - (w @ u + 3) * w / (w @ w)
    with torch.no_grad():
        transform.w.copy_(w)
        transform.u.copy_(u)
        transform.b.copy_(torch.randn((), generator=generator))
    return transform


def _radial_example(contracting: bool) -> Radial:
    generator = torch.Generator().manual_seed(31 if contracting else 30)
    transform = Radial(3)
    with torch.no_grad():
        transform.z0.copy_(0.5 * torch.randn(3, generator=generator))
        transform.alpha_raw.fill_(-0.5)
        # contracting: beta = -alpha + softplus(-3), close to its bound; else beta = -alpha + softplus(2) > 0
        transform.beta_raw.fill_(-3.0 if contracting else 2.0)
    return transform


register_transform_example("planar", lambda: _planar_example(violating=False), (3,))
register_transform_example("planar_raw_u_violating_the_bound", lambda: _planar_example(violating=True), (3,))
register_transform_example("radial", lambda: _radial_example(contracting=False), (3,))
register_transform_example("radial_contracting", lambda: _radial_example(contracting=True), (3,))
