r"""Point-cloud VAEs of problem set 1, part 4: a VAE on single 3-D points of a torus.

Each data point is a position :math:`p = (x, y, z)`. The encoder sees a positional encoding of it, the
decoder returns a 3-D point, and training compares that point with the raw :math:`p` (the problem set's
MSE + c KL, :func:`dgmlab.objectives.pset_mse_kl`, or the negative ELBO of a Gaussian decoder).

Positional encoding
-------------------
With :math:`L` frequencies :math:`\omega_k = 2^k` (:math:`k = 0, \dots, L-1`, times :math:`\pi` when
``scale_pi``), every coordinate :math:`p_c` becomes :math:`2L` features,

.. math::
    \gamma(p) = \big[\sin\omega_0 p_x, \cos\omega_0 p_x, \dots, \sin\omega_{L-1} p_x, \cos\omega_{L-1} p_x,
    \ \text{the same for } p_y,\ \text{the same for } p_z\big] \in \mathbb R^{6L},

ordered by coordinate, then frequency, then (sin, cos): 60 features for the problem set's :math:`L = 10`.
At :math:`p = 0` it alternates 0, 1. ``include_input`` puts :math:`(x, y, z)` in front (:math:`6L + 3`).
Without the :math:`\pi` the highest band (:math:`\omega = 512` on coordinates of size 1.5) is close to
noise for the encoder; it still trains. The problem set's encoding has no :math:`\pi`, so
``scale_pi=False`` is the default, for a faithful reproduction.

Decoders
--------
The decoder MLP (mirror of the encoder, from the latent :math:`z \in \mathbb R^d`) ends in raw outputs
:math:`o`, turned into a point by one of three heads:

* ``"cartesian"``: :math:`\hat p = o \in \mathbb R^3`.
* ``"polar"`` (the reference solution's ``PolarVAE``): :math:`o = (\rho, \theta, \varphi)` read as
  spherical coordinates,

  .. math:: \hat p = (\rho\sin\theta\cos\varphi,\ \rho\sin\theta\sin\varphi,\ \rho\cos\theta),

  unconstrained (:math:`\rho` may be negative, angles unbounded), so the map is onto :math:`\mathbb R^3`.
  A sphere's coordinates are an ad-hoc bias for a torus (bug 12).
* ``"torus"`` (ours): :math:`o = (a_1, a_2, b_1, b_2)` gives two unit vectors
  :math:`(\cos u, \sin u) = a / \lVert a\rVert` and :math:`(\cos v, \sin v) = b / \lVert b\rVert`
  (no angle is ever wrapped at :math:`2\pi`), and the point comes from the torus formula

  .. math::
      \hat p = \big((R + r\cos v)\cos u,\ (R + r\cos v)\sin u,\ r\sin v\big).

  With given radii every decoded point lies on that torus, exactly up to rounding. Learned radii are a
  *ring* torus by construction,

  .. math:: R = e^{s\alpha},\qquad r = R\,\operatorname{sigmoid}(s\beta)\quad(0 < r < R),

  with parameters :math:`\alpha, \beta` and the ``radius_rate`` :math:`s`. Two reasons, for the
  problem-set settings (1,000 Adam steps at lr :math:`10^{-3}`):

  - Adam moves :math:`\alpha` by about the learning rate per step, so :math:`\log R` moves by about
    :math:`s` times it. While the angles are still wrong the MSE prefers a thinner tube, so :math:`r` first
    shrinks and must then climb back: with :math:`s = 1` it cannot get back to 0.5 within 1,000 steps;
    :math:`s = 10` (the default) lets the radii follow the angles; much larger rates make steps unstable.
  - Without :math:`r < R` the radii can fall into a sphere-like spindle torus (:math:`R` near 0,
    :math:`r` near 1: the v-angle then plays a sphere's polar angle), a local optimum reachable from
    :math:`(R, r) = (0.7, 0.3)`; the constraint excludes it (``tests/test_point_vae.py`` and
    ``tests/test_torus_experiment.py`` check the learned radii).

  Either way :math:`\sqrt{x^2 + y^2} = R + r\cos v \ge R - r`: any latent path, e.g. a linear
  interpolation, decodes to a path on the surface that goes round the ring and never through the hole.

``PointVAE([32, 20, 10, 6], decoder="polar")`` is the reference solution's model: encoder
60 -> 32 -> 20 -> 10 -> 6 (mean and log-variance of a 3-D latent), decoder 3 -> 10 -> 20 -> 32 -> 3, 3,919
parameters. The torus head has one more output (3,952 parameters, plus 2 if the radii are learned).

Likelihood: a Gaussian :math:`p(p\mid z) = \mathcal N(\hat p, \sigma^2 I_3)` with fixed
:math:`\sigma^2` (default :math:`1.5\times10^{-4} = cD/2` for the problem set's :math:`c = 10^{-4}`,
:math:`D = 3`), so :func:`~dgmlab.objectives.negative_elbo` and ``pset_mse_kl`` agree up to scale.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from dgmlab.errors import ModelConfigError
from dgmlab.models.autoencoders import VAE, _activation, mlp
from dgmlab.utils import check_positive_number, is_int

POINT_DECODERS: tuple[str, ...] = ("cartesian", "polar", "torus")
HEAD_OUTPUTS: dict[str, int] = {"cartesian": 3, "polar": 3, "torus": 4}
DEFAULT_TORUS_RADII = (0.7, 0.3)  # initial (R, r) of a torus head when none are given (not the data's 1, 0.5)
DEFAULT_RADIUS_RATE = 10.0  # s in R = exp(s alpha), r = R sigmoid(s beta) (see the module docstring)

__all__ = [
    "POINT_DECODERS",
    "PointVAE",
    "PositionalEncoding3D",
    "spherical_to_cartesian",
    "torus_from_angle_vectors",
]


class PositionalEncoding3D(nn.Module):
    r"""Sinusoidal encoding :math:`\gamma(p)` of 3-D points (see the module docstring).

    ``PositionalEncoding3D(10)`` maps ``[..., 3] -> [..., 60]``: for each coordinate, for each frequency
    :math:`2^k` (:math:`\pi 2^k` with ``scale_pi``), ``sin`` then ``cos``. ``include_input=True`` prepends
    the raw ``(x, y, z)``, giving ``6 L + 3`` features. ``num_frequencies=0`` is allowed only with
    ``include_input`` (the identity).
    """

    def __init__(self, num_frequencies: int = 10, include_input: bool = False,
                 scale_pi: bool = False) -> None:
        super().__init__()
        if not is_int(num_frequencies) or num_frequencies < 0:
            raise ModelConfigError(f"PositionalEncoding3D: num_frequencies must be an integer >= 0, "
                                   f"got {num_frequencies!r}")
        if num_frequencies == 0 and not include_input:
            raise ModelConfigError("PositionalEncoding3D: num_frequencies=0 gives no features unless "
                                   "include_input=True")
        if num_frequencies > 30:
            raise ModelConfigError(f"PositionalEncoding3D: num_frequencies={num_frequencies} gives "
                                   f"frequencies up to 2^{num_frequencies - 1}, beyond float precision; "
                                   f"use at most 30")
        self.num_frequencies = num_frequencies
        self.include_input, self.scale_pi = bool(include_input), bool(scale_pi)
        scale = math.pi if scale_pi else 1.0
        # omega_k = 2^k (times pi), k = 0 .. L-1; a non-persistent buffer: moves with .to(), not saved
        self.register_buffer("frequencies", scale * 2.0 ** torch.arange(num_frequencies, dtype=torch.float32),
                             persistent=False)
        self.out_features = 6 * num_frequencies + (3 if include_input else 0)

    def forward(self, points: Tensor) -> Tensor:
        """``[..., 3] -> [..., out_features]``."""
        if points.shape[-1] != 3:
            raise ValueError(f"PositionalEncoding3D: points must have shape [..., 3], "
                             f"got {tuple(points.shape)}")
        # omega_k p_c: [..., 3, L]
        angles = points[..., :, None] * self.frequencies.to(points.dtype)
        # [sin, cos] innermost, then frequency, then coordinate: [..., 3, L, 2] -> [..., 6L]
        features = torch.stack([angles.sin(), angles.cos()], dim=-1).flatten(-3)
        return torch.cat([points, features], dim=-1) if self.include_input else features

    def extra_repr(self) -> str:
        return (f"num_frequencies={self.num_frequencies}, include_input={self.include_input}, "
                f"scale_pi={self.scale_pi}, out_features={self.out_features}")


def spherical_to_cartesian(raw: Tensor) -> Tensor:
    r"""Spherical :math:`(\rho, \theta, \varphi)` to Cartesian :math:`(\rho\sin\theta\cos\varphi,
    \rho\sin\theta\sin\varphi, \rho\cos\theta)`: ``[..., 3] -> [..., 3]``. No range limits."""
    rho, theta, phi = raw.unbind(-1)
    sin_theta = theta.sin()
    return torch.stack([rho * sin_theta * phi.cos(), rho * sin_theta * phi.sin(), rho * theta.cos()], dim=-1)


def torus_from_angle_vectors(raw: Tensor, R: Tensor | float, r: Tensor | float, eps: float = 1e-8) -> Tensor:
    r"""Torus point from two unnormalised 2-D angle vectors: ``[..., 4] -> [..., 3]``.

    :math:`(\cos u, \sin u) = a/\lVert a\rVert`, :math:`(\cos v, \sin v) = b/\lVert b\rVert` with
    :math:`a = (o_1, o_2)`, :math:`b = (o_3, o_4)` (``eps`` guards a zero vector), then
    :math:`((R + r\cos v)\cos u, (R + r\cos v)\sin u, r\sin v)`.
    """
    cos_sin_u = F.normalize(raw[..., 0:2], dim=-1, eps=eps)
    cos_sin_v = F.normalize(raw[..., 2:4], dim=-1, eps=eps)
    # R + r cos v: the distance to the z-axis
    ring = R + r * cos_sin_v[..., 0]
    return torch.stack([ring * cos_sin_u[..., 0], ring * cos_sin_u[..., 1], r * cos_sin_v[..., 1]], dim=-1)


class PointVAE(VAE):
    r"""VAE on 3-D points: positional encoding into the encoder, a 3-D point out of the decoder.

    Args:
        hidden_dims: encoder widths; the last holds mean and log-variance (so it is even, twice the latent
            dimension). The decoder mirrors the encoder from the latent. Problem set: ``[32, 20, 10, 6]``.
        decoder: ``"cartesian"``, ``"polar"`` (spherical outputs) or ``"torus"`` (two angles through the
            torus formula); see the module docstring for the equations.
        num_frequencies, include_input, scale_pi: the :class:`PositionalEncoding3D` options.
        R, r: radii of the torus head (``decoder="torus"`` only): the fixed radii, or the initial values
            when learned. Default (0.7, 0.3). Need ``R > r > 0``.
        learn_radii: learn the radii as :math:`R = e^{s\alpha}`, :math:`r = R\,\operatorname{sigmoid}(s\beta)`
            (default ``True`` for the torus head).
        radius_rate: :math:`s`, the speed of the learned radii relative to the
            other weights under Adam (default 10; learned radii only).
        decoder_variance: :math:`\sigma^2` of the Gaussian likelihood (default
            :math:`cD/2 = 1.5\times10^{-4}`).
        activation: hidden activation (``relu`` as in the problem set).
        input_dim: dimension of the data, which must be 3 (taken from the data by the config loader).

    The surface is the VAE's: ``encode(x [B, 3]) -> (mean, logvar)`` (encoding applied inside),
    ``reparameterize``, ``decode(z) -> [..., 3]`` (= ``decode_mean``), ``log_likelihood``, ``sample(n)``.
    """

    def __init__(
        self,
        hidden_dims: Sequence[int] = (32, 20, 10, 6),
        decoder: str = "cartesian",
        num_frequencies: int = 10,
        include_input: bool = False,
        scale_pi: bool = False,
        R: float | None = None,
        r: float | None = None,
        learn_radii: bool | None = None,
        radius_rate: float | None = None,
        decoder_variance: float = 1.5e-4,
        activation: str = "relu",
        input_dim: int = 3,
    ) -> None:
        if input_dim != 3:
            raise ModelConfigError(f"PointVAE encodes 3-D points (x, y, z), but the data have "
                                   f"input_dim={input_dim!r}; train it on a point cloud "
                                   f"([data] name = \"torus\")")
        if decoder not in POINT_DECODERS:
            raise ModelConfigError(f"PointVAE: unknown decoder {decoder!r}; "
                                   f"choose one of {', '.join(POINT_DECODERS)}")
        if decoder != "torus" and (R is not None or r is not None or learn_radii is not None
                                   or radius_rate is not None):
            raise ModelConfigError(f"PointVAE: R, r, learn_radii and radius_rate belong to the torus "
                                   f"decoder; the {decoder!r} decoder has no radii (use decoder=\"torus\" "
                                   f"or drop them)")
        encoding = PositionalEncoding3D(num_frequencies, include_input=include_input, scale_pi=scale_pi)
        super().__init__(encoding.out_features, hidden_dims, likelihood="gaussian",
                         decoder_variance=decoder_variance, activation=activation, output_activation="none")
        self.encoding = encoding
        self.input_dim, self.decoder_kind = 3, decoder
        # decoder: d -> hidden_dims[-2] -> ... -> hidden_dims[0] -> raw head outputs
        self.decoder = mlp([self.latent_dim, *reversed(self.hidden_dims[:-1]), HEAD_OUTPUTS[decoder]],
                           _activation(activation, "PointVAE"))
        self.learn_radii = False
        if decoder == "torus":
            major = DEFAULT_TORUS_RADII[0] if R is None else R
            minor = DEFAULT_TORUS_RADII[1] if r is None else r
            for name, value in (("R", major), ("r", minor)):
                if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
                    raise ModelConfigError(f"PointVAE: {name} must be a finite number, got {value!r}")
            if not major > minor > 0:
                raise ModelConfigError(f"PointVAE: the torus decoder needs R > r > 0 (a ring torus), "
                                       f"got R={major!r}, r={minor!r}")
            self.learn_radii = True if learn_radii is None else bool(learn_radii)
            if radius_rate is not None and not self.learn_radii:
                raise ModelConfigError("PointVAE: radius_rate applies to learned radii; drop it or set "
                                       "learn_radii=True")
            rate = DEFAULT_RADIUS_RATE if radius_rate is None else radius_rate
            self.radius_rate = check_positive_number(rate, "radius_rate", owner="PointVAE", error=ModelConfigError)
            if self.learn_radii:
                # R = exp(s alpha), r = R sigmoid(s beta): a ring torus whatever the optimiser does
                logit_ratio = math.log(minor / (major - minor))  # sigmoid^{-1}(r / R)
                self.major_radius_alpha = nn.Parameter(torch.tensor(math.log(major) / self.radius_rate))
                self.minor_radius_beta = nn.Parameter(torch.tensor(logit_ratio / self.radius_rate))
            else:
                self.register_buffer("major_radius", torch.tensor(float(major)))
                self.register_buffer("minor_radius", torch.tensor(float(minor)))

    # -- radii ------------------------------------------------------------------------------------------
    def radii(self) -> tuple[Tensor, Tensor]:
        """The torus head's ``(R, r)`` as 0-d tensors (learned or fixed); an error for other decoders."""
        if self.decoder_kind != "torus":
            raise AttributeError(f"the {self.decoder_kind!r} decoder has no radii")
        if self.learn_radii:
            # R = exp(s alpha), r = R sigmoid(s beta)
            major = (self.radius_rate * self.major_radius_alpha).exp()
            return major, major * torch.sigmoid(self.radius_rate * self.minor_radius_beta)
        return self.major_radius, self.minor_radius

    # -- the model's surface ----------------------------------------------------------------------------
    def encode(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """Posterior ``(mean, logvar)``, each ``[B, d]``, of points ``x`` ``[B, 3]`` (gamma applied first)."""
        if x.shape[-1] != 3:
            raise ValueError(f"PointVAE.encode: points must have shape [B, 3], got {tuple(x.shape)}")
        mean, logvar = self.encoder(self.encoding(x)).chunk(2, dim=-1)
        return mean, logvar

    def decode_raw(self, z: Tensor) -> Tensor:
        """The decoder MLP's raw outputs before the head: ``[..., d] -> [..., 3 or 4]``."""
        return self.decoder(z)

    def decode(self, z: Tensor) -> Tensor:
        """Decoded points :math:`\\hat p`: ``[..., d] -> [..., 3]`` through the decoder's head."""
        raw = self.decoder(z)
        if self.decoder_kind == "polar":
            return spherical_to_cartesian(raw)
        if self.decoder_kind == "torus":
            R, r = self.radii()
            return torus_from_angle_vectors(raw, R, r)
        return raw

    def decode_mean(self, z: Tensor) -> Tensor:
        """The decoded point (the Gaussian decoder's mean): the same as :meth:`decode`."""
        return self.decode(z)

    @torch.no_grad()
    def set_output_bias(self, data_mean: Tensor, eps: float = 1e-3) -> None:
        """Not available: the decoder ends in a head (polar, torus), so there is no output bias to set."""
        raise ModelConfigError("PointVAE decodes through a head (cartesian, polar or torus); it has no output bias "
                               "to start at the data mean: drop init_output_bias")

    def extra_repr(self) -> str:
        return f"decoder={self.decoder_kind!r}, latent_dim={self.latent_dim}, learn_radii={self.learn_radii}"
