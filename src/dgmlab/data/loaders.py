r"""Batch iteration over tensors that are already in memory.

:class:`TensorBatches` replaces ``DataLoader(TensorDataset(...))`` for data that fit in memory (all of
MNIST does: 60,000 x 784 float32 is 188 MB). An epoch is one random permutation and a slice per batch,
so there is no per-example Python work, no collation and no worker process.

Randomness is private and reproducible. Epoch ``e`` of a loader with seed ``s`` uses two
``torch.Generator`` streams seeded from ``numpy.random.SeedSequence([s, e, stream])``:
``stream = 0`` draws the permutation and ``stream = 1`` is passed to the ``transform`` (e.g. dynamic
binarization). The same (seed, epoch) gives the same batches; the global torch and numpy RNGs are never
used.

Any iterable of tuples of tensors also works where dgmlab expects batches, in particular a
``torch.utils.data.DataLoader`` over a user's own ``Dataset`` whose items are tuples (``(x, label)``); it
is slower per example, and its shuffling follows torch's global RNG unless given a generator.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator

import numpy as np
import torch

from dgmlab.utils import is_int

__all__ = ["TensorBatches"]

Transform = Callable[[torch.Tensor, torch.Generator], torch.Tensor]

PERMUTATION_STREAM = 0
TRANSFORM_STREAM = 1


def _derived_seed(seed: int, epoch: int, stream: int) -> int:
    """A 63-bit seed for (seed, epoch, stream), well mixed so nearby seeds give unrelated streams."""
    entropy = [seed % 2**64, epoch, stream]
    return int(np.random.SeedSequence(entropy).generate_state(1, dtype=np.uint64)[0] >> np.uint64(1))


class TensorBatches:
    """Mini-batches of in-memory tensors, shuffled by a private generator.

    Iterating yields one epoch of tuples ``(t1[idx], t2[idx], ...)`` (always a tuple, even for one
    tensor). With ``shuffle`` the indices are a permutation drawn from the (seed, epoch) stream; without it
    they are consecutive slices (which are views of the stored tensors: do not modify them in place).
    Each example appears exactly once per epoch, except the ``num_examples % batch_size`` examples of an
    incomplete last batch when ``drop_last`` is true.

    Epoch counter: ``iter(loader)`` uses the current epoch and then advances the counter by one, so
    plain ``for batch in loader`` loops see epochs 0, 1, 2, ... in turn. ``set_epoch(e)`` sets the
    epoch that the next iteration uses (e.g. a trainer calls it before each epoch, so that a resumed run
    draws the same batches as an uninterrupted one).

    Args:
        *tensors: one or more tensors with the same first dimension (the examples).
        batch_size: examples per batch, at least 1.
        shuffle: draw a fresh permutation each epoch (else keep the stored order).
        drop_last: drop the last batch if it has fewer than ``batch_size`` examples.
        seed: the loader's seed (any integer).
        transform: ``transform(first_tensor_batch, generator) -> tensor``, applied to the first tensor of
            every batch with a generator from the (seed, epoch) transform stream, on the data's device;
            e.g. :func:`dgmlab.data.views.dynamic_binarize`.
    """

    def __init__(
        self,
        *tensors: torch.Tensor,
        batch_size: int,
        shuffle: bool = True,
        drop_last: bool = False,
        seed: int = 0,
        transform: Transform | None = None,
    ) -> None:
        if not tensors:
            raise ValueError("TensorBatches needs at least one tensor")
        for position, tensor in enumerate(tensors):
            if not isinstance(tensor, torch.Tensor):
                raise TypeError(f"TensorBatches: argument {position} is a {type(tensor).__name__}, not a tensor")
            if tensor.dim() == 0:
                raise ValueError(
                    f"TensorBatches: tensor {position} is a scalar; its first dimension must index examples"
                )
        lengths = [tensor.shape[0] for tensor in tensors]
        if len(set(lengths)) != 1:
            raise ValueError(f"TensorBatches: all tensors must have the same first dimension, got lengths {lengths}")
        devices = {tensor.device for tensor in tensors}
        if len(devices) != 1:
            raise ValueError(f"TensorBatches: all tensors must be on one device, got {sorted(map(str, devices))}")
        if not is_int(batch_size) or batch_size < 1:
            raise ValueError(f"TensorBatches: batch_size must be an integer >= 1, got {batch_size!r}")
        if not is_int(seed):
            raise ValueError(f"TensorBatches: seed must be an integer, got {seed!r}")
        if transform is not None and not callable(transform):
            raise ValueError(f"TensorBatches: transform must be callable or None, got {transform!r}")
        self.tensors: tuple[torch.Tensor, ...] = tuple(tensors)
        self._batch_size = int(batch_size)
        self.shuffle = bool(shuffle)
        self.drop_last = bool(drop_last)
        self.seed = int(seed)
        self.transform = transform
        self._epoch = 0

    # ------------------------------------------------------------------ properties
    @property
    def batch_size(self) -> int:
        """Examples per (full) batch."""
        return self._batch_size

    @property
    def num_examples(self) -> int:
        """Examples stored (each epoch visits all of them, less a dropped last batch)."""
        return self.tensors[0].shape[0]

    @property
    def epoch(self) -> int:
        """The epoch that the next iteration will use."""
        return self._epoch

    @property
    def device(self) -> torch.device:
        """The device of the stored tensors."""
        return self.tensors[0].device

    def __len__(self) -> int:
        """Batches per epoch: ``floor(n / b)`` with ``drop_last``, else ``ceil(n / b)``."""
        if self.drop_last:
            return self.num_examples // self._batch_size
        return math.ceil(self.num_examples / self._batch_size)

    def __repr__(self) -> str:
        shapes = ", ".join(str(tuple(tensor.shape)) for tensor in self.tensors)
        return (
            f"TensorBatches({shapes}, batch_size={self._batch_size}, shuffle={self.shuffle}, "
            f"drop_last={self.drop_last}, seed={self.seed}, epoch={self._epoch}, device={self.device})"
        )

    # ------------------------------------------------------------------ epochs
    def set_epoch(self, epoch: int) -> None:
        """Make the next iteration use ``epoch`` (a non-negative integer); later ones count up from it."""
        if not is_int(epoch) or epoch < 0:
            raise ValueError(f"TensorBatches.set_epoch: epoch must be an integer >= 0, got {epoch!r}")
        self._epoch = int(epoch)

    def generator(self, epoch: int, stream: int, device: torch.device | str = "cpu") -> torch.Generator:
        """The private generator of ``(seed, epoch, stream)`` (0: permutation, 1: transform)."""
        return torch.Generator(device=device).manual_seed(_derived_seed(self.seed, epoch, stream))

    def permutation(self, epoch: int) -> torch.Tensor:
        """The order of examples in ``epoch``: ``int64 [n]``, on CPU (identity when not shuffling)."""
        if not self.shuffle:
            return torch.arange(self.num_examples)
        return torch.randperm(self.num_examples, generator=self.generator(epoch, PERMUTATION_STREAM))

    def __iter__(self) -> Iterator[tuple[torch.Tensor, ...]]:
        epoch = self._epoch
        self._epoch += 1
        return self._batches(epoch)

    def _batches(self, epoch: int) -> Iterator[tuple[torch.Tensor, ...]]:
        count = self.num_examples
        stop = count - count % self._batch_size if self.drop_last else count
        order = self.permutation(epoch).to(self.device) if self.shuffle else None
        transform_generator = (
            self.generator(epoch, TRANSFORM_STREAM, self.device) if self.transform is not None else None
        )
        for start in range(0, stop, self._batch_size):
            end = min(start + self._batch_size, stop)
            if order is None:
                batch = tuple(tensor[start:end] for tensor in self.tensors)
            else:
                index = order[start:end]
                batch = tuple(tensor.index_select(0, index) for tensor in self.tensors)
            if self.transform is not None:
                batch = (self.transform(batch[0], transform_generator), *batch[1:])
            yield batch

    # ------------------------------------------------------------------ devices
    def to(self, device: torch.device | str) -> TensorBatches:
        """A copy whose tensors live on ``device`` (same settings and current epoch)."""
        moved = TensorBatches(
            *(tensor.to(device) for tensor in self.tensors),
            batch_size=self._batch_size,
            shuffle=self.shuffle,
            drop_last=self.drop_last,
            seed=self.seed,
            transform=self.transform,
        )
        moved._epoch = self._epoch
        return moved
