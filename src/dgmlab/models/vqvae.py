r"""VQ-VAE (van den Oord, Vinyals & Kavukcuoglu 2017): an autoencoder whose latent is a grid of discrete codes.

An encoder maps an image :math:`x` to a grid of vectors :math:`z_e(x) \in \mathbb R^{d\times h\times w}`; a
quantizer (:mod:`dgmlab.models.quantizers`: VQ's nearest code of a codebook, with or without EMA updates, FSQ or
LFQ) replaces each by a code :math:`z_q = e_{k}`, :math:`k = \arg\min_j \lVert z_e - e_j\rVert`, passing the
gradient straight through; a decoder maps :math:`z_q` back to the logits :math:`\eta` of a Bernoulli likelihood
:math:`p(x\mid z_q) = \prod_i \operatorname{sigmoid}(\eta_i)^{x_i}(1 - \operatorname{sigmoid}(\eta_i))^{1-x_i}`.
The training objective (``[objective] name = "vqvae"``, :func:`dgmlab.objectives.vqvae_loss`) is, per image,

.. math:: L = -\log p(x\mid z_q(x)) + \lVert\operatorname{sg}[z_e(x)] - e\rVert^2
          + \beta\,\lVert z_e(x) - \operatorname{sg}[e]\rVert^2,

the reconstruction in nats, the codebook term (absent with an EMA codebook, FSQ or LFQ) and the commitment term
(:math:`\beta = 0.25`). The posterior is deterministic, :math:`q(z\mid x) = \delta_{z_q(x)}`, so with a prior
:math:`p(z)` over code grids (a :class:`~dgmlab.models.pixelcnn.CategoricalPixelCNN`) the ELBO is
:math:`\log p(x) \ge \log p(x\mid z_q(x)) + \log p(z_q(x))` (the KL of a point mass to :math:`p` is
:math:`-\log p(z_q)`): the bound the paper reports.

On MNIST (:math:`28\times28`) the encoder halves the size twice (:math:`7\times7` codes): two strided
:math:`4\times4` convolutions, residual blocks (ReLU, :math:`3\times3`, ReLU, :math:`1\times1`), and a
:math:`1\times1` convolution to :math:`d` channels; the decoder mirrors it with transposed convolutions.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, NamedTuple

import torch
from torch import Tensor, nn

from dgmlab.densities import bernoulli_log_likelihood
from dgmlab.errors import ModelConfigError
from dgmlab.models.quantizers import QUANTIZERS, Quantizer, QuantizerOutput, build_quantizer
from dgmlab.utils import check_int

__all__ = ["VQVAE", "VQVAEOutput", "VQVAEPrior"]


class VQVAEOutput(NamedTuple):
    """One forward pass: the decoder's ``logits`` ``[B, 1, H, W]`` and the quantizer's output (``z_q``,
    ``indices`` ``[B, h, w]``, ``losses``, ``perplexity``, ``usage``)."""

    logits: Tensor
    quantized: QuantizerOutput


class _Residual(nn.Module):
    def __init__(self, channels: int, hidden: int) -> None:
        super().__init__()
        self.block = nn.Sequential(nn.ReLU(), nn.Conv2d(channels, hidden, 3, padding=1), nn.ReLU(),
                                   nn.Conv2d(hidden, channels, 1))

    def forward(self, x: Tensor) -> Tensor:
        return x + self.block(x)


class VQVAE(nn.Module):
    r"""VQ-VAE for binary images (see the module's equations).

    ``quantizer``: a name of :data:`~dgmlab.models.quantizers.QUANTIZERS` (``"vq"``, ``"vq_ema"``, ``"fsq"``,
    ``"lfq"``). ``num_codes`` :math:`K` and ``code_dim`` :math:`d` for VQ (default 512 and 16); for FSQ ``levels``
    (then :math:`d` = ``len(levels)`` and :math:`K = \prod_i L_i`); for LFQ ``code_dim`` (default 10;
    :math:`K = 2^d`).
    ``quantizer_options``: further keywords of the quantizer (``beta``, ``decay``, ``restart_after``,
    ``entropy_weight``...). ``hidden``: the convolutions' channels; ``residual_blocks`` per side;
    ``image_size``: the images' side (a multiple of 4).

    ``encode(x)`` is the point code, the quantized grid flattened ``[B, d h w]``, and ``decode(code)`` its
    reconstruction :math:`\operatorname{sigmoid}(\eta)` ``[B, 1, H, W]`` (the
    :class:`~dgmlab.models.protocols.Autoencoder` surface, so runs draw reconstructions and the codes);
    ``codes(x)`` the code indices ``[B, h, w]`` and ``decode_codes(indices)`` their logits."""

    def __init__(self, quantizer: str = "vq", num_codes: int | None = None, code_dim: int | None = None, *,
                 levels: list[int] | None = None, quantizer_options: Mapping[str, Any] | None = None,
                 hidden: int = 64, residual_blocks: int = 2, image_size: int = 28) -> None:
        super().__init__()
        owner = "VQVAE"
        if quantizer not in QUANTIZERS:
            raise ModelConfigError(f"{owner}: unknown quantizer {quantizer!r}; choose one of {', '.join(QUANTIZERS)}")
        hidden = check_int(hidden, "hidden", minimum=1, owner=owner, error=ModelConfigError)
        residual_blocks = check_int(residual_blocks, "residual_blocks", minimum=0, owner=owner,
                                    error=ModelConfigError)
        image_size = check_int(image_size, "image_size", minimum=4, owner=owner, error=ModelConfigError)
        if image_size % 4:
            raise ModelConfigError(f"{owner}: image_size must be a multiple of 4 (the encoder halves it twice), "
                                   f"got {image_size}")
        options = dict(quantizer_options or {})
        if quantizer == "fsq":
            if levels is None:
                raise ModelConfigError(f"{owner}: the fsq quantizer needs levels, e.g. levels = [8, 5, 5, 5] "
                                       f"(K = 1000 codes of d = 4 channels)")
            self.quantizer: Quantizer = build_quantizer("fsq", levels=list(levels), **options)
            for name, value in (("num_codes", num_codes), ("code_dim", code_dim)):
                expected = self.quantizer.codebook_size if name == "num_codes" else self.quantizer.code_dim
                if value is not None and value != expected:
                    raise ModelConfigError(f"{owner}: with fsq, {name} follows from levels {list(levels)} "
                                           f"({expected}); drop {name} or make it {expected}")
        else:
            if levels is not None:
                raise ModelConfigError(f"{owner}: levels belong to the fsq quantizer; drop them for {quantizer!r}")
            if code_dim is None:
                code_dim = 10 if quantizer == "lfq" else 16
            if quantizer == "lfq":
                if num_codes is not None and num_codes != 2**code_dim:
                    raise ModelConfigError(f"{owner}: lfq has K = 2**code_dim = {2**code_dim} codes; drop "
                                           f"num_codes or make it {2**code_dim}")
                self.quantizer = build_quantizer("lfq", code_dim=code_dim, **options)
            else:
                num_codes = 512 if num_codes is None else num_codes
                self.quantizer = build_quantizer(quantizer, num_codes=num_codes, code_dim=code_dim, **options)
        self.quantizer_name = quantizer
        self.num_codes = self.quantizer.codebook_size
        self.latent_channels = self.quantizer.code_dim
        d = self.latent_channels
        self.image_shape = (1, image_size, image_size)
        self.grid_shape = (image_size // 4, image_size // 4)
        self.code_dim = d * self.grid_shape[0] * self.grid_shape[1]  # the flattened point code of encode()
        self.encoder = nn.Sequential(
            nn.Conv2d(1, hidden, 4, stride=2, padding=1), nn.ReLU(),
            nn.Conv2d(hidden, hidden, 4, stride=2, padding=1),
            *[_Residual(hidden, hidden // 2 or 1) for _ in range(residual_blocks)], nn.ReLU(),
            nn.Conv2d(hidden, d, 1))
        self.decoder = nn.Sequential(
            nn.Conv2d(d, hidden, 3, padding=1),
            *[_Residual(hidden, hidden // 2 or 1) for _ in range(residual_blocks)], nn.ReLU(),
            nn.ConvTranspose2d(hidden, hidden, 4, stride=2, padding=1), nn.ReLU(),
            nn.ConvTranspose2d(hidden, 1, 4, stride=2, padding=1))

    def _check_images(self, x: Tensor) -> Tensor:
        if not isinstance(x, Tensor) or x.dim() != 4 or tuple(x.shape[1:]) != self.image_shape:
            shape = list(x.shape) if isinstance(x, Tensor) else type(x).__name__
            raise ValueError(f"VQVAE: expected images [B, {', '.join(map(str, self.image_shape))}], got {shape}; "
                             f"train it on data with shape = \"image\"")
        return x

    def encode_grid(self, x: Tensor) -> Tensor:
        """The encoder's output :math:`z_e(x)` ``[B, d, h, w]`` before quantization."""
        return self.encoder(self._check_images(x))

    def forward(self, x: Tensor) -> VQVAEOutput:
        quantized = self.quantizer(self.encode_grid(x))
        return VQVAEOutput(logits=self.decoder(quantized.z_q), quantized=quantized)

    def log_likelihood(self, x: Tensor, logits: Tensor) -> Tensor:
        r""":math:`\log p(x\mid z_q)` ``[B]`` in nats, the Bernoulli log-likelihood summed over pixels."""
        return bernoulli_log_likelihood(x.flatten(1), logits.flatten(1))

    def codes(self, x: Tensor) -> Tensor:
        """The code indices of ``x``, ``[B, h, w]`` long (quantized in evaluation behaviour: no codebook update)."""
        was_training = self.quantizer.training
        self.quantizer.eval()
        try:
            return self.quantizer(self.encode_grid(x)).indices
        finally:
            self.quantizer.train(was_training)

    def decode_codes(self, indices: Tensor) -> Tensor:
        """The decoder's logits ``[B, 1, H, W]`` of a grid of code indices ``[B, h, w]``."""
        return self.decoder(self.quantizer.embed(indices))

    def encode(self, x: Tensor) -> Tensor:
        """The point code: the quantized grid :math:`z_q(x)`, flattened ``[B, d h w]``."""
        return self.quantizer.embed(self.codes(x)).flatten(1)

    def decode(self, code: Tensor) -> Tensor:
        r"""The reconstruction :math:`\operatorname{sigmoid}(\eta)` ``[B, 1, H, W]`` of a flattened code grid."""
        grid = code.reshape(len(code), self.latent_channels, *self.grid_shape)
        return torch.sigmoid(self.decoder(grid))


class VQVAEPrior(nn.Module):
    r"""VQ-VAE's second stage: an autoregressive prior :math:`p_\psi(z)` over the code grids of a trained VQ-VAE,
    a :class:`~dgmlab.models.pixelcnn.CategoricalPixelCNN`, with the VQ-VAE frozen.

    ``vqvae_run``: the run directory of a trained :class:`VQVAE` (``dgmlab train --config vqvae``); its
    ``config.json`` builds the VQ-VAE and its checkpoint gives the weights (this model's own checkpoint holds
    them too). The other arguments are the prior's (``channels``, ``num_layers``, ``kernel_size``,
    ``embedding_dim``, ``gated``). The VQ-VAE stays in evaluation mode and is never trained: its codebook does not
    move.

    ``log_prob(x)`` is the bound :math:`\log p(x) \ge \log p(x\mid z_q(x)) + \log p_\psi(z_q(x))` in nats (a
    deterministic posterior: the KL to the prior is :math:`-\log p_\psi(z_q)`), not an exact likelihood;
    ``sample(n)`` draws code grids from the prior and returns the decoder's means
    :math:`\operatorname{sigmoid}(\eta)` ``[n, 1, H, W]``."""

    def __init__(self, vqvae_run: str, *, channels: int = 64, num_layers: int = 6, kernel_size: int = 5,
                 embedding_dim: int = 32, gated: bool = True) -> None:
        super().__init__()
        from dgmlab.models.pixelcnn import CategoricalPixelCNN

        self.vqvae_run = str(vqvae_run)
        self.vqvae = _load_vqvae(self.vqvae_run)
        self.vqvae.requires_grad_(False)
        self.vqvae.eval()
        self.prior = CategoricalPixelCNN(self.vqvae.num_codes, self.vqvae.grid_shape, channels=channels,
                                         num_layers=num_layers, kernel_size=kernel_size,
                                         embedding_dim=embedding_dim, gated=gated)
        self.image_shape = self.vqvae.image_shape

    def train(self, mode: bool = True) -> VQVAEPrior:
        super().train(mode)
        self.vqvae.eval()  # frozen: no EMA updates, no restarts
        return self

    def bound_terms(self, x: Tensor) -> tuple[Tensor, Tensor]:
        r"""(:math:`\log p(x\mid z_q(x))`, :math:`\log p_\psi(z_q(x))`), each ``[B]`` in nats."""
        with torch.no_grad():
            indices = self.vqvae.codes(x)
            logits = self.vqvae.decode_codes(indices)
            reconstruction = self.vqvae.log_likelihood(x, logits.float())
        return reconstruction, self.prior.log_prob(indices)

    def log_prob(self, x: Tensor, *, context: Any = None) -> Tensor:
        """The ELBO of ``x`` ``[B, 1, H, W]`` (see the class docstring), ``[B]`` in nats."""
        from dgmlab.models.protocols import reject_context

        reject_context(self, context)
        reconstruction, prior = self.bound_terms(x)
        return reconstruction + prior

    @torch.no_grad()
    def sample(self, n: int, *, generator: torch.Generator | None = None, context: Any = None) -> Tensor:
        """``n`` images: code grids drawn from the prior, decoded to their means ``[n, 1, H, W]``."""
        from dgmlab.models.protocols import reject_context

        reject_context(self, context)
        indices = self.prior.sample(n, generator=generator)
        return torch.sigmoid(self.vqvae.decode_codes(indices))


def _load_vqvae(run: str) -> VQVAE:
    from pathlib import Path

    from dgmlab.checkpoint import load_weights
    from dgmlab.config import load_config

    directory = Path(run)
    if not (directory / "config.json").is_file():
        raise ModelConfigError(f"VQVAEPrior: vqvae_run = {run!r} is not a run directory (no config.json); train the "
                               f"VQ-VAE first (dgmlab train --config vqvae --out {run})")
    table = dict(load_config(directory / "config.json").get("model", {}))
    if table.pop("name", None) != "vqvae":
        raise ModelConfigError(f"VQVAEPrior: the run {run!r} holds no VQ-VAE ([model] name is not \"vqvae\")")
    model = VQVAE(**table)
    load_weights(directory / "checkpoint", model)
    return model
