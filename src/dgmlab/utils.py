"""Small helpers that every layer uses, each written once: the device of a module, evaluation mode for a
block, integer validation, and a pool of forked worker processes with an in-process fallback."""

from __future__ import annotations

import contextlib
import math
import multiprocessing
import os
import warnings
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ProcessPoolExecutor, as_completed
from concurrent.futures.process import BrokenProcessPool
from typing import Any, TypeVar

import numpy as np
import torch
from torch import nn

T = TypeVar("T")


def device_of(module: nn.Module) -> torch.device:
    """The device of ``module``'s first parameter (or buffer); the CPU for a module that holds neither."""
    for tensor in module.parameters():
        return tensor.device
    for tensor in module.buffers():
        return tensor.device
    return torch.device("cpu")


@contextlib.contextmanager
def cpu_threads(count: int, device: torch.device | None = None) -> Iterator[None]:
    """Limit torch's intra-op CPU threads to ``count`` inside the block (only when ``device`` is the CPU or
    ``None``); the previous number is restored. Small tensors gain nothing from a second thread, and two threads
    waiting on each other on a busy machine can be many times slower than one."""
    if device is not None and device.type != "cpu":
        yield
        return
    previous = torch.get_num_threads()
    torch.set_num_threads(count)
    try:
        yield
    finally:
        torch.set_num_threads(previous)


@contextlib.contextmanager
def eval_mode(module: nn.Module) -> Iterator[nn.Module]:
    """Run a block with every submodule of ``module`` in evaluation mode, then give each its own mode back.

    ``with eval_mode(model): ...`` (restoring per submodule, not just ``model.train(was_training)``, keeps a
    submodule that its owner froze in evaluation mode frozen)."""
    modes = {sub: sub.training for sub in module.modules()}
    module.eval()
    try:
        yield module
    finally:
        for sub, training in modes.items():
            sub.training = training


def is_int(value: object) -> bool:
    """True for Python and NumPy integers, False for ``bool`` (``True`` is not a count)."""
    return isinstance(value, (int, np.integer)) and not isinstance(value, bool)


def check_int(value: object, name: str, *, minimum: int | None = None, owner: str = "",
              error: type[Exception] = ValueError, hint: str = "") -> int:
    """``value`` as an ``int`` if it is an integer ``>= minimum``; else ``error`` with a message that names
    ``owner`` (a class or function), the argument ``name``, what it must be, and what it got."""
    if not is_int(value) or (minimum is not None and value < minimum):  # type: ignore[operator]
        if minimum == 1:
            must = "a positive integer"
        elif minimum is not None:
            must = f"an integer >= {minimum}"
        else:
            must = "an integer"
        prefix = f"{owner}: " if owner else ""
        suffix = f" ({hint})" if hint else ""
        raise error(f"{prefix}{name} must be {must}{suffix}, got {value!r}")
    return int(value)  # type: ignore[arg-type]


def check_positive_number(value: object, name: str, *, owner: str = "", error: type[Exception] = ValueError,
                          hint: str = "") -> float:
    """``value`` as a ``float`` if it is a finite number ``> 0`` (not a ``bool``); else ``error`` naming ``owner``,
    the argument ``name``, the ``hint`` (what the number means) and what it got."""
    if isinstance(value, bool) or not isinstance(value, (int, float, np.integer, np.floating)) \
            or not (0 < value < math.inf):
        prefix = f"{owner}: " if owner else ""
        suffix = f" ({hint})" if hint else ""
        raise error(f"{prefix}{name} must be a positive number{suffix}, got {value!r}")
    return float(value)


def check_widths(values: object, name: str = "hidden_dims", *, owner: str = "", error: type[Exception] = ValueError,
                 example: str = "[128, 32]") -> list[int]:
    """A non-empty list (or tuple) of positive integers, such as the layer widths of an MLP, as ``list[int]``;
    else ``error`` naming ``owner``, ``name``, an ``example`` and what it got."""
    widths = list(values) if isinstance(values, Sequence) and not isinstance(values, str) else None
    if not widths or not all(is_int(width) and width >= 1 for width in widths):
        prefix = f"{owner}: " if owner else ""
        raise error(f"{prefix}{name} must be a non-empty list of positive integer widths, e.g. {example}; got "
                    f"{values!r}")
    return [int(width) for width in widths]


def can_fork() -> bool:
    """Whether worker processes can be started by ``fork`` here (Linux: yes; macOS and Windows: no)."""
    return "fork" in multiprocessing.get_all_start_methods()


def default_workers(on_cpu: bool, jobs: int = 2) -> int:
    """Two worker processes for CPU work on a machine with two or more cores where ``fork`` exists and there
    are at least two jobs; else 0 (run in this process)."""
    return 2 if on_cpu and can_fork() and (os.cpu_count() or 1) >= 2 and jobs >= 2 else 0


def run_in_processes(function: Callable[..., T], jobs: Sequence[tuple[Any, ...]], workers: int,
                     on_result: Callable[[int, T], None] | None = None,
                     initializer: Callable[..., None] | None = None, initargs: tuple[Any, ...] = (),
                     what: str = "dgmlab") -> list[T]:
    """``[function(*job) for job in jobs]``, computed in ``workers`` forked processes when ``workers > 1``
    and ``fork`` exists, else here, in order. ``on_result(index, result)`` is called as each one finishes.

    Fork re-imports nothing, so this also works from scripts without a ``__main__`` guard. If the pool breaks
    (a worker killed), a warning names ``what`` and the jobs that did not finish run here."""
    results: dict[int, T] = {}
    if workers > 1 and can_fork() and len(jobs) > 1:
        try:
            context = multiprocessing.get_context("fork")
            with ProcessPoolExecutor(max_workers=min(workers, len(jobs)), mp_context=context,
                                     initializer=initializer, initargs=initargs) as pool:
                futures = {pool.submit(function, *job): index for index, job in enumerate(jobs)}
                for future in as_completed(futures):
                    index = futures[future]
                    results[index] = future.result()
                    if on_result is not None:
                        on_result(index, results[index])
        except BrokenProcessPool as error:
            warnings.warn(f"{what}: a worker process died ({error}); running the rest in this process",
                          RuntimeWarning, stacklevel=2)
    for index, job in enumerate(jobs):
        if index not in results:
            results[index] = function(*job)
            if on_result is not None:
                on_result(index, results[index])
    return [results[index] for index in range(len(jobs))]


__all__ = ["can_fork", "check_int", "check_positive_number", "check_widths", "cpu_threads", "default_workers",
           "device_of", "eval_mode", "is_int", "run_in_processes"]
