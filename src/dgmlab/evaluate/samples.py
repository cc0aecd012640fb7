r"""What a trained model draws: samples class by class from a conditional model, and completions of images
from their first rows, :math:`x_{\ge i}\sim p(\cdot\mid x_{<i})`. Sampling runs in evaluation mode (the
models' ``sample`` and ``complete`` switch to it and back)."""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from dgmlab.evaluate.likelihood import check_images
from dgmlab.models.protocols import Completer, Sampler, context_classes
from dgmlab.utils import check_int, device_of

__all__ = ["complete_images", "samples_per_class"]


@torch.no_grad()
def samples_per_class(model: Sampler, per_class: int, generator: torch.Generator | None = None,
                      **options: Any) -> tuple[Tensor, Tensor]:
    """``per_class`` samples of each class of a class-conditional model, class by class (problem 3(c): 6).

    Returns ``(images, labels)``: ``[K * per_class, ...]`` and ``[K * per_class]`` (``0,..,0, 1,..,1, ...``), so
    ``plots.image_grid(images, nrow=per_class)`` shows one class per row. ``options`` go to ``model.sample``
    (e.g. ``fast=False`` for a PixelCNN)."""
    num_classes = context_classes(model)
    if num_classes == 0:
        raise ValueError("samples_per_class needs a class-conditional model (num_classes > 0); use model.sample(n) "
                         "for an unconditional one")
    check_int(per_class, "per_class", minimum=1, owner="samples_per_class")
    labels = torch.arange(num_classes).repeat_interleave(per_class)
    images = model.sample(len(labels), generator=generator, context=labels, **options)
    return images, labels


@torch.no_grad()
def complete_images(
    model: Completer,
    x: Tensor,
    known_rows: int,
    samples: int = 2,
    context: Tensor | None = None,
    generator: torch.Generator | None = None,
    **options: Any,
) -> Tensor:
    r"""``samples`` completions of each image ``[B, 1, H, W]`` from its first ``known_rows`` rows.

    Returns ``[samples, B, 1, H, W]`` on the model's device, rows ``< known_rows`` equal to ``x``'s; the input of
    :func:`dgmlab.plots.completions`. ``options`` go to ``model.complete`` (e.g. ``fast=False``)."""
    x = check_images(x)
    check_int(samples, "samples", minimum=1, owner="complete_images")
    x = x.to(device_of(model))
    return torch.stack([model.complete(x, known_rows, generator=generator, context=context, **options)
                        for _ in range(samples)])
