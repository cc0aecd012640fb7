r"""Many processes with ``torch.distributed``: the process group, data shards and the reductions of the trainer.

``torchrun --nproc-per-node N -m dgmlab train --config made`` starts N processes ("ranks") that train one model
together; ``torchrun --nnodes M --node-rank i --rdzv-endpoint HOST:PORT ...`` spreads them over machines.
Each process reads its place from the environment torchrun sets (``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``,
``MASTER_ADDR``, ``MASTER_PORT``); :func:`session` joins the group (NCCL between GPUs, gloo on CPUs) and
leaves it at the end. Outside torchrun nothing here does anything: one process is a group of one.

**Data parallelism with the numbers of one process.** A run's ``batch_size`` is the *global* batch
:math:`B`: every rank draws the same epoch permutation and the same per-epoch randomness (dynamic
binarization, dequantization noise) from ``(seed, epoch)``, as one process would, and keeps its own
contiguous slice of each global batch (:class:`ShardedBatches`; sizes differ by at most one example, so
:math:`B` need not divide by :math:`N`). The shards of an epoch are the epoch. Rank :math:`r` holds
examples :math:`S_r` of global batch :math:`S` and backpropagates

.. math::

    \ell_r = \frac{N}{|S|} \sum_{i \in S_r} \ell_i,
    \qquad
    \frac1N \sum_{r=1}^N \nabla\ell_r = \frac{1}{|S|}\sum_{i\in S}\nabla\ell_i,

and DistributedDataParallel's all-reduce averages the gradients over the ranks, so every rank applies the
gradient of the global batch mean, the one a single process computes for batch :math:`S`. The parameters,
the optimizer's moments and the parameter average therefore stay equal on all ranks. Logged terms are
summed over ranks with their example counts (:func:`all_reduce_sums`), which gives the true means over all
examples. Test evaluation hands whole batches to the ranks in turn (batch :math:`j` to rank :math:`j \bmod
N`), each under a generator seeded by ``(seed, j)``, so a stochastic test term (a sampled ELBO, the
importance-weighted bound) is the same number on any number of processes.
"""

from __future__ import annotations

import contextlib
import datetime
import os
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.distributed as dist

from dgmlab.errors import TrainingError

__all__ = ["DEFAULT_TIMEOUT_SECONDS", "DistributedError", "Group", "ShardedBatches", "all_reduce_sum_",
           "all_reduce_sums", "barrier", "broadcast_", "collective_device", "current", "derived_seed",
           "environment_world_size", "is_distributed", "peer_failure", "session", "shard_bounds"]

DEFAULT_TIMEOUT_SECONDS = 600.0  # a collective that waits longer than this for another rank fails


class DistributedError(TrainingError):
    """Another process of a distributed run stopped or stopped answering."""


@dataclass(frozen=True)
class Group:
    """Where this process stands: ``rank`` of ``world_size`` (0 of 1 outside torchrun)."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def is_main(self) -> bool:
        """Rank 0: the process that writes metrics, checkpoints and figures."""
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1

    def label(self) -> str:
        return f"rank {self.rank} of {self.world_size}"


def _environment_int(name: str, default: int) -> int:
    text = os.environ.get(name)
    if text is None or text == "":
        return default
    try:
        return int(text)
    except ValueError:
        raise TrainingError(f"the environment variable {name}={text!r} must be an integer (torchrun sets it)") from None


def environment_world_size() -> int:
    """``WORLD_SIZE`` as torchrun sets it (1 when absent)."""
    return _environment_int("WORLD_SIZE", 1)


def is_distributed() -> bool:
    """True inside a process group of two or more processes."""
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def current() -> Group:
    """The group this process belongs to (rank 0 of 1 when no process group is initialised)."""
    if not is_distributed():
        return Group()
    return Group(dist.get_rank(), dist.get_world_size(), _environment_int("LOCAL_RANK", 0))


def _timeout_seconds() -> float:
    text = os.environ.get("DGMLAB_DIST_TIMEOUT")
    if text is None:
        return DEFAULT_TIMEOUT_SECONDS
    try:
        value = float(text)
    except ValueError:
        value = -1.0
    if not value > 0:
        raise TrainingError(f"DGMLAB_DIST_TIMEOUT={text!r} must be a positive number of seconds")
    return value


_PEER_FAILED = False  # set once a collective of the current group has failed on a dead or hung peer


@contextlib.contextmanager
def session(device: str = "auto") -> Iterator[Group]:
    """Join the process group that torchrun described in the environment, and leave it at the end.

    With ``WORLD_SIZE`` 1 or unset this yields rank 0 of 1 and does nothing. Otherwise the backend is NCCL
    when ``device`` is ``"cuda"`` (or ``"auto"`` on a machine with CUDA), each process on GPU ``LOCAL_RANK``,
    and gloo on the CPU. A collective waits at most ``DGMLAB_DIST_TIMEOUT`` seconds
    (:data:`DEFAULT_TIMEOUT_SECONDS` by default) for the other ranks."""
    world = environment_world_size()
    if world <= 1 or is_distributed():
        yield current()
        return
    if not dist.is_available():
        raise TrainingError("this PyTorch build has no torch.distributed; run on one process")
    for name in ("RANK", "MASTER_ADDR", "MASTER_PORT"):
        if name not in os.environ:
            raise TrainingError(f"WORLD_SIZE={world} but {name} is not set: start the processes with torchrun "
                                f"(torchrun --nproc-per-node {world} -m dgmlab ...)")
    local_rank = _environment_int("LOCAL_RANK", 0)
    use_cuda = device == "cuda" or (device == "auto" and torch.cuda.is_available())
    if use_cuda:
        if not torch.cuda.is_available():
            raise TrainingError("device cuda was asked for, but CUDA is not available in this process")
        if local_rank >= torch.cuda.device_count():
            raise TrainingError(f"LOCAL_RANK {local_rank} but this machine has {torch.cuda.device_count()} GPUs; "
                                f"start at most that many processes per node")
        torch.cuda.set_device(local_rank)
    backend = "nccl" if use_cuda else "gloo"
    timeout = datetime.timedelta(seconds=_timeout_seconds())
    try:
        dist.init_process_group(backend=backend, timeout=timeout)
    except (dist.DistError, RuntimeError, ValueError) as error:
        raise DistributedError(f"could not join the process group ({backend}, {world} processes at "
                               f"{os.environ['MASTER_ADDR']}:{os.environ['MASTER_PORT']}): "
                               f"{str(error).strip().splitlines()[0] if str(error).strip() else error!r}") from error
    global _PEER_FAILED
    _PEER_FAILED = False  # a new group: no collective of it has failed yet
    try:
        yield current()
    except BaseException:
        # a peer may be dead or hung: no barrier, the group goes as it is
        with contextlib.suppress(Exception):
            dist.destroy_process_group()
        raise
    # every rank has finished its collectives before any tears the group down: a rank that leaves first would
    # close its connections under a peer's last messages (not after a peer failure, caught inside the block)
    if not _PEER_FAILED:
        with contextlib.suppress(Exception):
            dist.barrier()
    with contextlib.suppress(Exception):
        dist.destroy_process_group()



def peer_failure(error: BaseException, where: str) -> DistributedError:
    """The one-line error of a collective that failed because another rank died or hung."""
    global _PEER_FAILED
    _PEER_FAILED = True
    group = current()
    first = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
    return DistributedError(f"{group.label()}: another process of this run stopped or stopped answering during "
                            f"{where} ({first}); the run's last checkpoint is intact: resume it with "
                            f"dgmlab train --resume RUN_DIR, on any number of processes")


def derived_seed(*entropy: int) -> int:
    """A 63-bit seed mixed from the integers ``entropy`` (so nearby inputs give unrelated streams)."""
    words = [int(e) % 2**64 for e in entropy]
    return int(np.random.SeedSequence(words).generate_state(1, dtype=np.uint64)[0] >> np.uint64(1))


def shard_bounds(count: int, rank: int, world_size: int) -> tuple[int, int]:
    """``[start, end)`` of rank ``rank``'s contiguous share of ``count`` items: the first ``count % world_size``
    ranks hold one more than the others."""
    base, extra = divmod(count, world_size)
    start = rank * base + min(rank, extra)
    return start, start + base + (1 if rank < extra else 0)


def _slice(batch: Any, start: int, end: int) -> tuple[Any, ...]:
    if isinstance(batch, torch.Tensor):
        batch = (batch,)
    return tuple(t[start:end] if isinstance(t, torch.Tensor) else t for t in batch)


class ShardedBatches:
    """This rank's slices of the global batches of ``batches``: iterating yields ``(local_batch, global_size)``.

    ``batches`` must yield the same global batches on every rank (a :class:`dgmlab.data.TensorBatches`
    does: its order and transforms derive from ``(seed, epoch)``); ``set_epoch`` and ``len`` pass through."""

    def __init__(self, batches: Any, group: Group) -> None:
        self.batches = batches
        self.group = group

    def set_epoch(self, epoch: int) -> None:
        setter = getattr(self.batches, "set_epoch", None)
        if callable(setter):
            setter(epoch)

    def __len__(self) -> int:
        return len(self.batches)

    def __iter__(self) -> Iterator[tuple[tuple[Any, ...], int]]:
        for batch in self.batches:
            first = batch if isinstance(batch, torch.Tensor) else batch[0]
            size = int(first.shape[0])
            start, end = shard_bounds(size, self.group.rank, self.group.world_size)
            yield _slice(batch, start, end), size


def all_reduce_sum_(tensor: torch.Tensor) -> torch.Tensor:
    """Sum ``tensor`` over all ranks in place (nothing on one process); returns it."""
    if is_distributed():
        dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
    return tensor


def broadcast_(tensor: torch.Tensor, src: int = 0) -> torch.Tensor:
    """Overwrite ``tensor`` on every rank with rank ``src``'s (nothing on one process); returns it."""
    if is_distributed():
        dist.broadcast(tensor, src=src)
    return tensor


def barrier() -> None:
    """Wait for every rank (nothing on one process)."""
    if is_distributed():
        dist.barrier()


def collective_device() -> torch.device:
    """Where small tensors for a collective must live: the current GPU under NCCL, else the CPU."""
    if is_distributed() and dist.get_backend() == "nccl":
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


def all_reduce_sums(sums: Mapping[str, float], count: int, *extra: float,
                    ) -> tuple[dict[str, float], int, list[float]]:
    """Sums of named float64 totals, an example count and ``extra`` numbers over all ranks, in one all-reduce.

    Every rank must pass the same names in the same order. On one process the inputs come back unchanged."""
    names = list(sums)
    if not is_distributed():
        return dict(sums), int(count), [float(e) for e in extra]
    values = torch.tensor([*(float(sums[n]) for n in names), float(count), *map(float, extra)],
                          dtype=torch.float64, device=collective_device())
    dist.all_reduce(values, op=dist.ReduceOp.SUM)
    out = values.cpu().tolist()
    return dict(zip(names, out[:len(names)], strict=True)), int(round(out[len(names)])), out[len(names) + 1:]
