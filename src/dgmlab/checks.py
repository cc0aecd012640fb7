"""Value checks on tensors that need not stop the device at every call.

A check such as "every pixel is 0 or 1" reduces a tensor to one boolean; reading that boolean on the host
(``if ok: ...``) waits until the device has computed it. On the CPU that costs nothing: there is no queue to
wait for. On a GPU it empties the queue of kernels at every call, and a training step of a small model that
does it a few times spends more time waiting than computing. :func:`require` is such a check written once
for both cases:

* outside :func:`deferred` (the default, and what a user calling ``log_prob`` gets), it reads the boolean at
  once and raises at once;
* inside :func:`deferred`, it only records the boolean (still on the device) with the function that words the
  error, and :func:`flush` reads every recorded boolean in **one** transfer and raises the first failed check's
  error. The trainer (:func:`dgmlab.train.fit`) defers the checks of its training steps on accelerators and
  flushes them with its other per-step values (the loss terms), every few steps and before any checkpoint is
  written, so a bad batch still ends the run with the model's own error message and the last checkpoint intact.

The describing function runs only when its check failed, so a message may quote values (``x.min()``) that
the passing case never computes.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from contextvars import ContextVar

import torch
from torch import Tensor

# the checks recorded inside deferred(); None outside it
_PENDING: ContextVar[list[tuple[Tensor, Callable[[], str], type[Exception]]] | None] = ContextVar(
    "dgmlab_deferred_checks", default=None)


def require(ok: Tensor | bool, describe: Callable[[], str], error: type[Exception] = ValueError) -> None:
    """Raise ``error(describe())`` unless ``ok`` (a boolean, or a one-element boolean tensor) is true; inside
    :func:`deferred`, a tensor ``ok`` is recorded and judged at the next :func:`flush` instead."""
    pending = _PENDING.get()
    if pending is not None and isinstance(ok, Tensor):
        pending.append((ok.detach().reshape(()), describe, error))
        return
    if not bool(ok):
        raise error(describe())


def is_deferring() -> bool:
    """Whether checks are being recorded (inside :func:`deferred`)."""
    return _PENDING.get() is not None


def pending_count() -> int:
    """How many recorded checks wait for the next :func:`flush` (0 outside :func:`deferred`)."""
    pending = _PENDING.get()
    return 0 if pending is None else len(pending)


def flush() -> None:
    """Judge every check recorded since the last flush, with one read from the device; raise the first failed
    one's error (in the order they were recorded). Does nothing outside :func:`deferred`."""
    pending = _PENDING.get()
    if not pending:
        return
    checks = list(pending)
    pending.clear()
    results = torch.stack([ok.to(torch.bool) for ok, _, _ in checks]).cpu().tolist()
    for passed, (_, describe, error) in zip(results, checks, strict=True):
        if not passed:
            raise error(describe())


@contextlib.contextmanager
def deferred() -> Iterator[None]:
    """Record :func:`require` checks instead of judging them one by one; they are judged at every
    :func:`flush` and when the block ends normally (a block left by an exception drops them)."""
    token = _PENDING.set([])
    try:
        yield
        flush()
    finally:
        _PENDING.reset(token)


__all__ = ["deferred", "flush", "is_deferring", "pending_count", "require"]
