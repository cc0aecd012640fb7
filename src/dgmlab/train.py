"""The one training loop of dgmlab.

``fit(model, objective, train_batches, ...)`` runs Adam over epochs (or up to a number of steps), shows a
tqdm bar with the **true running mean** of every named loss term (each per-example value weighted once,
so a short last batch counts for what it holds), evaluates on the test batches after each epoch, and, when
given a run directory, writes

* ``config.json``: what the caller passes as ``config`` (everything needed to rerun), at the start,
* ``metrics.jsonl``: one JSON line per epoch with every term on train and test, their units, the
  learning rate, the step and the seconds spent, appended at the end of each epoch,
* ``checkpoint/state.safetensors``: weights, optimizer, epoch, step and RNG state (see
  :mod:`dgmlab.checkpoint`), written atomically after every ``checkpoint_every``-th epoch and the last
  one, and, with ``TrainSettings.checkpoint_every_minutes = m`` (``[train] checkpoint_every_minutes`` in a
  config), also inside an epoch, after the first step that ends ``m`` minutes or more after the last
  checkpoint.

A run directory is never lost by accident (:mod:`dgmlab.rundir`): ``fit`` holds an operating-system lock
on ``RUN_DIR/.lock`` (``fcntl.flock``) from start to end, so a second process on the same folder fails at
once with :class:`~dgmlab.errors.RunLockedError` (the lock goes when the process does, even when it is
killed; without ``fcntl``, on Windows, there is no lock). A new run into a folder that already holds one
(``config.json``, ``metrics.jsonl`` or a checkpoint) raises :class:`~dgmlab.errors.RunExistsError`, unless
``overwrite=True`` replaces it: its config, metrics, checkpoint, ``eval.json`` and figures are removed,
nothing else.

``fit(..., resume=True)`` continues such a run from its last checkpoint. With a seed, on the CPU, training
2 epochs equals training 1 epoch, resuming, and training 1 more, parameter for parameter: the data order
and any per-epoch randomness (dynamic binarisation) derive from ``(seed, epoch)``, the global RNG state is
restored from the checkpoint, and evaluation runs under a forked RNG so it never perturbs training.
A checkpoint written inside epoch ``e`` holds, besides the state above (the step, the parameter average,
the RNG state at that step), ``partial_epoch`` in its metadata: ``e``, the batches done, the epoch's
running sums and example count, its seconds so far and the terms' units. Resuming from it continues inside
epoch ``e``: the data of epoch ``e`` is drawn again and its first batches are passed over unused (which
advances a per-epoch transform such as dynamic binarisation past them), so the run goes on exactly as if
it had never stopped: the same parameters, bit for bit on the CPU, and the same ``metrics.jsonl`` records
but for ``seconds``. This needs batches whose order derives from the epoch
(:class:`dgmlab.data.TensorBatches`); a ``DataLoader`` that shuffles with the global RNG resumes with other
batches. A ``time_limit`` budget counts the time of this process, as after any resume.

With ``TrainSettings.ema_decay = beta``, the trainer also keeps an exponential moving average of the
parameters (Polyak averaging), updated after every optimizer step t as

    theta_bar <- beta_t * theta_bar + (1 - beta_t) * theta,    beta_t = min(beta, (1 + t) / (10 + t)),

(the ramp lets early averages forget the random initialisation). Test evaluation, the checkpoint's
``model.*`` weights and the model handed back at the end use theta_bar; the optimizer's own theta is kept
in the checkpoint for resuming.

With ``TrainSettings.precision = "bf16"``, every training step runs the objective (the model's forward pass
and the loss) under ``torch.autocast`` with bfloat16: matrix products and convolutions take bfloat16 inputs
and accumulate in fp32, while the weights, their gradients, Adam's moments and the parameter average stay in
fp32 ("mixed precision"; bfloat16 keeps fp32's exponent range, so no loss scaling is needed). Losses such as
``binary_cross_entropy_with_logits`` run in fp32 under autocast, and the objectives cast network outputs to
fp32 before any sum, so the logged terms keep fp32 resolution. Evaluation (test terms after every epoch,
:func:`evaluate`) always runs in fp32: reported likelihoods are exact, not bfloat16 approximations. It pays
on hardware with native bfloat16 arithmetic (CPUs with AVX-512 BF16, recent GPUs;
``benchmarks/train_step_speed.py`` measures a step of each model in both precisions); on CPUs without it
bfloat16 is emulated and slower than fp32.

Two stabilisers for models whose gradients spike (flows on images: a rare batch can give a gradient 5-20
times the typical norm): ``TrainSettings.grad_clip_norm = c`` rescales the gradient of every step to
``g * min(1, c / |g|_2)`` before the optimizer sees it, and ``warmup_steps = T`` ramps the learning rate
linearly, ``eta_t = eta * lr_decay^(epoch - 1) * (t + 1) / T`` for the first ``T`` steps (Glow's warm-up),
then hands it back to the per-epoch decay.

**Data on the GPU.** A :class:`~dgmlab.data.TensorBatches` in CPU memory (all of MNIST is 188 MB as
fp32) is copied to a CUDA device once, at the start of the run, when it takes at most a quarter of the
device's free memory (:func:`resident`): no copy from the host per step, and the batches are gathered on
the device. Its per-epoch randomness (dynamic binarisation) is then drawn there, from the same
``(seed, epoch)`` seeds.

**Compiled steps.** With ``TrainSettings.compile = True`` (``compile = true`` in ``[train]``, ``dgmlab
train --compile``) each training step's forward pass and loss run through :class:`CompiledStep`: under
``torch.compile`` (inductor), one static graph per batch shape, with PyTorch's own random draws, so a
compiled run differs from an eager one only by the rounding of fused kernels and resumes exactly as an
eager one does; evaluation stays eager. Where inductor cannot compile (no C++ compiler on the CPU, a
compiler error), it warns and trains eagerly. One process only: under ``torchrun`` it is refused.

**Many processes.** Under ``torchrun`` (:mod:`dgmlab.distributed`), ``fit`` trains in the process group it
finds: the model is wrapped in ``DistributedDataParallel`` (no per-step buffer broadcast), each rank takes
its contiguous slice of every global batch of ``train_batches`` and backpropagates
``(N / |S|) * sum of its per-example losses``, so the averaged gradient is the global batch mean's; the
objective's own randomness comes from a stream per ``(seed, step, rank)``. The epoch's terms, test
evaluation (whole batches shared out by index) and the mid-epoch checkpoint's running sums are added over
the ranks; rank 0 alone locks the run folder, writes and prints; every rank reads the checkpoint on resume,
so a run continues on any number of processes. The ranks stop together (a time budget is decided on all of
them), and a collective that fails because another rank died or hung raises
:class:`~dgmlab.distributed.DistributedError` with the way to resume.

A loss term that becomes NaN or infinite stops the run with :class:`~dgmlab.errors.NonFiniteLossError`,
naming the term, the epoch and the step; the last checkpoint is left as it was.

**Reads from the device.** A step's values that the host needs (each term's batch sum for the running means,
whether a term is finite, the models' input checks such as "every value is 0 or 1") are read from the device
together, in one transfer: after every step on the CPU, where a read waits for nothing (so a non-finite loss
never reaches a gradient), and after every ``SYNC_EVERY`` (32) steps on an accelerator, whose queue of
kernels each read would otherwise empty. The models' checks are deferred there through
:func:`dgmlab.checks.deferred`. A bad step is then found up to 31 steps late but reported at its own step,
and the values are read again before every checkpoint, so none holds a model that a bad step has reached.
The numbers are the same on either schedule.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import shutil
import statistics
import time
import warnings
from collections.abc import Iterable, Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn
from tqdm import tqdm

from dgmlab import checks, distributed
from dgmlab.checkpoint import STATE_FILE, atomic_write_text, load_checkpoint, save_checkpoint
from dgmlab.data.loaders import TensorBatches
from dgmlab.errors import NonFiniteLossError, RunExistsError, RunLockedError, TrainingError
from dgmlab.objectives import LossTerms, Objective
from dgmlab.rundir import PARTIAL_EPOCH, lock_run, refuse_existing_run, remove_leftovers, remove_run
from dgmlab.utils import device_of, eval_mode

DEVICES = ("auto", "cpu", "cuda", "mps")
PRECISIONS = ("fp32", "bf16")


@dataclass
class TrainSettings:
    """Optimisation settings. ``epochs`` passes over the data, optionally cut at ``max_steps`` updates."""

    epochs: int = 10
    lr: float = 1e-3
    weight_decay: float = 0.0
    lr_decay: float = 1.0  # multiplies the learning rate after every epoch (1.0: constant)
    max_steps: int | None = None
    time_limit: float | None = None  # seconds of training; no epoch starts that would end past it (a budget)
    seed: int = 0
    device: str = "auto"
    progress: bool = True
    checkpoint_every: int = 1  # epochs between checkpoints (the last epoch is always saved)
    checkpoint_every_minutes: float | None = None  # also checkpoint inside an epoch this often (module docstring)
    ema_decay: float | None = None  # keep an exponential moving average of the weights with this decay
    precision: str = "fp32"  # "bf16": training steps under bfloat16 autocast (module docstring); evaluation in fp32
    grad_clip_norm: float | None = None  # rescale the gradient to at most this L2 norm before each step (None: off)
    warmup_steps: int = 0  # the learning rate ramps up linearly over the first this many steps (0: off)
    compile: bool = False  # each training step's forward pass and loss under torch.compile (module docstring)

    def validate(self) -> None:
        """Raise ``ValueError`` with a clear message for settings that cannot work."""
        if not isinstance(self.epochs, int) or self.epochs < 1:
            raise ValueError(f"epochs must be a positive integer, got {self.epochs!r}")
        if not (isinstance(self.lr, (int, float)) and self.lr > 0 and math.isfinite(self.lr)):
            raise ValueError(f"lr (learning rate) must be a positive number, got {self.lr!r}")
        if not self.weight_decay >= 0:
            raise ValueError(f"weight_decay must be >= 0, got {self.weight_decay!r}")
        if not 0 < self.lr_decay <= 1:
            raise ValueError(f"lr_decay must be in (0, 1], got {self.lr_decay!r}")
        if self.max_steps is not None and self.max_steps < 1:
            raise ValueError(f"max_steps must be a positive integer or None, got {self.max_steps!r}")
        if self.device not in DEVICES and not str(self.device).startswith("cuda:"):
            raise ValueError(f"device must be one of {', '.join(DEVICES)} (or cuda:N), got {self.device!r}")
        if self.time_limit is not None and not self.time_limit > 0:
            raise ValueError(f"time_limit must be a positive number of seconds or None, got {self.time_limit!r}")
        if self.checkpoint_every < 1:
            raise ValueError(f"checkpoint_every must be >= 1, got {self.checkpoint_every!r}")
        minutes = self.checkpoint_every_minutes
        if minutes is not None and not (isinstance(minutes, (int, float)) and not isinstance(minutes, bool)
                                        and 0 < minutes < math.inf):
            raise ValueError(f"checkpoint_every_minutes must be a positive number of minutes (e.g. 10) or None "
                             f"for checkpoints at epoch ends only, got {minutes!r}")
        if self.ema_decay is not None and not 0 < self.ema_decay < 1:
            raise ValueError(f"ema_decay must be in (0, 1) (e.g. 0.999) or None for no averaging, "
                             f"got {self.ema_decay!r}")
        clip = self.grad_clip_norm
        if clip is not None and not (isinstance(clip, (int, float)) and not isinstance(clip, bool)
                                     and 0 < clip < math.inf):
            raise ValueError(f"grad_clip_norm must be a positive number (e.g. 100) or None for no clipping, "
                             f"got {clip!r}")
        if not isinstance(self.warmup_steps, int) or isinstance(self.warmup_steps, bool) or self.warmup_steps < 0:
            raise ValueError(f"warmup_steps must be an integer >= 0 (0: no warm-up), got {self.warmup_steps!r}")
        if not isinstance(self.compile, bool):
            raise ValueError(f"compile must be true or false, got {self.compile!r}")
        if self.precision not in PRECISIONS:
            raise ValueError(f"precision must be one of {', '.join(PRECISIONS)} (bf16: mixed precision for the "
                             f"training steps), got {self.precision!r}")


@dataclass
class History:
    """Per-epoch records, as written to ``metrics.jsonl``."""

    records: list[dict[str, Any]] = field(default_factory=list)

    def last(self, split: str = "train", term: str = "loss") -> float:
        """The last epoch's mean of ``term`` on ``split``."""
        return float(self.records[-1][split][term])


def resolve_device(name: str = "auto") -> torch.device:
    """``auto`` picks CUDA, then Apple MPS, then the CPU; any other name is taken as given."""
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise TrainingError(f"device {name!r} was asked for but CUDA is not available; use --device cpu")
    if name == "mps" and not (getattr(torch.backends, "mps", None) and torch.backends.mps.is_available()):
        raise TrainingError("device 'mps' was asked for but Apple MPS is not available; use --device cpu")
    return torch.device(name)


def training_precision(precision: str, device: torch.device) -> contextlib.AbstractContextManager[Any]:
    """The context a training step runs in: ``torch.autocast(device, bfloat16)`` for ``"bf16"``, nothing for
    ``"fp32"``. Raises :class:`TrainingError` where bfloat16 autocast is not available. Build it once and
    enter it for every step (``with context: ...``); it can be entered again after it exits."""
    if precision not in PRECISIONS:
        raise TrainingError(f"precision must be one of {', '.join(PRECISIONS)}, got {precision!r}")
    if precision == "fp32":
        return contextlib.nullcontext()
    if device.type not in ("cpu", "cuda"):
        raise TrainingError(f"bf16 training runs on the CPU or CUDA, not on {device.type!r}; use precision "
                            f"'fp32' there")
    if device.type == "cuda" and not torch.cuda.is_bf16_supported():
        raise TrainingError(f"this GPU ({torch.cuda.get_device_name(device)}) has no bfloat16 support; use "
                            f"precision 'fp32'")
    return torch.autocast(device.type, dtype=torch.bfloat16)


def make_optimizer(model: nn.Module, settings: TrainSettings, device: torch.device) -> torch.optim.Adam:
    """Adam with the settings' learning rate and weight decay; the fused kernel (one pass over all
    parameters) on the CPU and CUDA, where PyTorch has it."""
    fused = device.type in ("cpu", "cuda")
    return torch.optim.Adam(model.parameters(), lr=settings.lr, weight_decay=settings.weight_decay, fused=fused)


class ParameterAverage:
    """Exponential moving average of a model's parameters (see the module docstring for the update)."""

    def __init__(self, model: nn.Module, decay: float) -> None:
        self.decay = decay
        self.parameters = dict(model.named_parameters())
        self.averaged = {name: p.detach().clone() for name, p in self.parameters.items()}

    @torch.no_grad()
    def update(self, step: int) -> None:
        """theta_bar <- theta_bar + (1 - beta_t) (theta - theta_bar), after optimizer step ``step`` (from 1)."""
        weight = 1.0 - min(self.decay, (1.0 + step) / (10.0 + step))
        # one call over all tensors (a fused kernel on CUDA) rather than one Python call per tensor
        torch._foreach_lerp_([self.averaged[name] for name in self.parameters],
                             [p.detach() for p in self.parameters.values()], weight)

    def load(self, averaged: Mapping[str, Tensor]) -> None:
        for name, value in averaged.items():
            self.averaged[name].copy_(value)

    @torch.no_grad()
    def swap(self) -> None:
        """Exchange the model's parameters and the averaged ones (twice restores both)."""
        for name, p in self.parameters.items():
            held = p.detach().clone()
            p.copy_(self.averaged[name])
            self.averaged[name].copy_(held)


# A TensorBatches in CPU memory moves to a CUDA device for the whole run when it takes at most this fraction of
# the device's free memory: one transfer instead of one per batch, and the batches are gathered there.
RESIDENT_FRACTION = 0.25


def _free_bytes(device: torch.device) -> int | None:
    """Free memory of ``device`` in bytes, where PyTorch can tell (CUDA); ``None`` elsewhere."""
    if device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(device)
        return int(free)
    return None


def resident(batches: Any, device: torch.device) -> Any:
    """``batches`` as the run on ``device`` iterates them: a :class:`~dgmlab.data.TensorBatches` in CPU memory
    is copied to the device once (:meth:`~dgmlab.data.TensorBatches.to`) when the device reports its free
    memory and the data takes at most ``RESIDENT_FRACTION`` of it; anything else is returned as it is. The
    copy gathers its batches and draws its per-epoch randomness (dynamic binarisation) on the device, in the
    same order of examples."""
    if device.type == "cpu" or not isinstance(batches, TensorBatches) or batches.device.type != "cpu":
        return batches
    free = _free_bytes(device)
    size = sum(t.numel() * t.element_size() for t in batches.tensors)
    if free is None or size > RESIDENT_FRACTION * free:
        return batches
    return batches.to(device)


def _to_device(batch: Any, device: torch.device) -> tuple[Tensor, ...]:
    if isinstance(batch, Tensor):
        batch = (batch,)
    return tuple(t.to(device, non_blocking=True) if isinstance(t, Tensor) else t for t in batch)


class RunningMeans:
    """Example-weighted running means of per-example terms: the true mean over everything seen so far.

    :meth:`update` takes each term's batch sum in float64 without reading it from the device: the sums of a
    step wait there as one small tensor, and :meth:`flush` (which every read of :attr:`sums` or
    :meth:`means` calls) brings all waiting steps to the host in one transfer and adds them in order. So the
    caller decides how often the device is waited for, and the numbers are the same whatever it decides.
    """

    def __init__(self) -> None:
        self._sums: dict[str, float] = {}
        self.count = 0
        self._waiting: list[tuple[int | None, tuple[str, ...], Tensor]] = []

    @property
    def sums(self) -> dict[str, float]:
        """Each term's sum over every example seen so far (flushes first)."""
        self.flush()
        return self._sums

    @sums.setter
    def sums(self, value: Mapping[str, float]) -> None:
        self._waiting.clear()
        self._sums = dict(value)

    def update(self, terms: Mapping[str, Tensor], step: int | None = None) -> None:
        """Add one batch of per-example ``terms`` (all of one length), sent by training step ``step``."""
        if not terms:
            return
        values = [v.detach() for v in terms.values()]
        # each term's sum, then whether it holds a NaN (a sum of +inf and -inf is NaN too: the flag tells apart)
        row = torch.stack([v.double().sum() for v in values] + [v.isnan().any().double() for v in values])
        self._waiting.append((step, tuple(terms), row))
        self.count += values[0].numel()

    def flush(self) -> tuple[int | None, str, str] | None:
        """Add the waiting batch sums to :attr:`sums`; return ``(step, term, "NaN" or "infinite")`` for the
        first batch whose term was not finite for some example, or ``None`` when all were finite."""
        if not self._waiting:
            return None
        waiting, self._waiting = self._waiting, []
        flat = torch.cat([row for _, _, row in waiting]).cpu().tolist()
        first_bad, start = None, 0
        for step, names, _ in waiting:
            n = len(names)
            for i, name in enumerate(names):
                value = flat[start + i]
                self._sums[name] = self._sums.get(name, 0.0) + value
                if first_bad is None and not math.isfinite(value):
                    first_bad = (step, name, "NaN" if flat[start + n + i] else "infinite")
            start += 2 * n
        return first_bad

    def means(self) -> dict[str, float]:
        sums = self.sums
        return {name: total / max(self.count, 1) for name, total in sums.items()}


def _named_terms(out: LossTerms) -> dict[str, Tensor]:
    return {"loss": out.loss, **{k: v for k, v in out.terms.items() if k != "loss"}}


# Training steps between reads of the step's values on the host (loss terms, deferred input checks): every
# step on the CPU, where a read waits for nothing; every SYNC_EVERY steps on an accelerator, whose queue of
# kernels a read would empty at every step.
SYNC_EVERY = 32


def _sync_interval(device: torch.device) -> int:
    return 1 if device.type == "cpu" else SYNC_EVERY


def _settle(means: RunningMeans, epoch: int, run_dir: Path | None) -> None:
    """Judge what the steps since the last call left on the device: the models' deferred input checks
    (:mod:`dgmlab.checks`), then the loss terms, which must be finite."""
    checks.flush()
    bad = means.flush()
    if bad is None:
        return
    step, name, kind = bad
    where = (f"; the last good checkpoint in {run_dir / 'checkpoint'} is intact" if run_dir and
             (run_dir / "checkpoint" / STATE_FILE).exists() else "")
    raise NonFiniteLossError(
        f"loss term '{name}' became {kind} at step {step} (epoch {epoch}){where}. "
        f"Lower the learning rate or check the data for invalid values.")


def evaluate(model: nn.Module, objective: Objective, batches: Iterable[Any], device: torch.device | None = None,
             seed: int = 0) -> dict[str, float]:
    """Mean of every term of ``objective`` over ``batches``, in evaluation mode, without gradients.

    Batch ``j`` runs under a forked RNG seeded from ``(seed, j)``, so the numbers are reproducible, the
    caller's random stream is untouched, and in a process group the batches can be shared out: rank ``r`` of
    ``N`` evaluates batches ``j = r, r + N, ...`` and the sums are added over the ranks, which gives the
    number one process gives (:mod:`dgmlab.distributed`).
    """
    device = device or device_of(model)
    group = distributed.current()
    length = _length(batches)
    if group.distributed:
        if length is None:
            raise TrainingError("evaluation on many processes needs batches with a length (a TensorBatches or "
                                "a DataLoader)")
        if length == 0:
            raise TrainingError("the evaluation data yielded no batches")
    means = RunningMeans()
    devices = [device.index or 0] if device.type == "cuda" else []
    with eval_mode(model), torch.no_grad(), torch.random.fork_rng(devices=devices):
        for j, batch in enumerate(batches):
            if j % group.world_size != group.rank:
                continue
            torch.manual_seed(distributed.derived_seed(seed, j))
            means.update(_named_terms(objective(model, _to_device(batch, device))))
        checks.flush()
    if group.distributed:
        try:
            if length < group.world_size:  # ranks beyond the last batch learn the terms' names from rank 0
                names = [list(means.sums)]
                distributed.dist.broadcast_object_list(names, src=0)
                means.sums = {name: means.sums.get(name, 0.0) for name in names[0]}
            means.sums, means.count, _ = distributed.all_reduce_sums(means.sums, means.count)
        except (distributed.dist.DistError, RuntimeError) as error:
            raise distributed.peer_failure(error, "evaluation") from error
    return means.means()


def _set_epoch(batches: Any, epoch: int) -> None:
    setter = getattr(batches, "set_epoch", None)
    if callable(setter):
        setter(epoch)


WARM_UP_STEPS = 8  # untimed steps before a budget probe: kernel selection and allocation in a fresh process


def seconds_per_step(model: nn.Module, objective: Objective, train_batches: Any, probe_steps: int = 30,
                     precision: str = "fp32") -> float:
    """The **median** time of ``probe_steps`` Adam steps on ``train_batches`` (after ``WARM_UP_STEPS`` untimed
    ones, with the trainer's optimizer and ``precision``) on a throw-away copy of ``model``, under a forked RNG
    so the run itself is unaffected.

    The median and the warm-up because the first steps of a fresh process are slow (kernel selection,
    allocation) and single steps can be slowed by other work: a mean over the first steps overestimates the
    time per step, so a budget planned from it ends well before its time."""
    import copy

    device = device_of(model)
    probe = copy.deepcopy(model)
    optimizer = make_optimizer(probe, TrainSettings(), device)
    batches = iter(train_batches)

    def synchronize() -> None:
        if device.type == "cuda":
            torch.cuda.synchronize(device)

    step_precision = training_precision(precision, device)
    times = []
    with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
        for _ in range(probe_steps + WARM_UP_STEPS):
            synchronize()
            started = time.perf_counter()
            try:
                batch = next(batches)
            except StopIteration:
                batches = iter(train_batches)
                batch = next(batches)
            with step_precision:
                loss = objective(probe, _to_device(batch, device)).loss.mean()
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            synchronize()
            times.append(time.perf_counter() - started)
    return statistics.median(times[WARM_UP_STEPS:])  # warm-up steps do not count


def epochs_in_budget(model: nn.Module, objective: Objective, train_batches: Any, seconds: float,
                     probe_steps: int = 30, margin: float = 0.92, precision: str = "fp32") -> int:
    """How many whole epochs of ``train_batches`` fit in ``seconds`` on this machine: :func:`seconds_per_step`
    times the batches per epoch, with ``margin`` left for evaluation and bookkeeping. At least 1."""
    per_epoch = seconds_per_step(model, objective, train_batches, probe_steps, precision) * len(train_batches)
    return max(1, int(margin * seconds / per_epoch))


def steps_in_budget(model: nn.Module, objective: Objective, train_batches: Any, seconds: float,
                    probe_steps: int = 30, margin: float = 0.92, precision: str = "fp32") -> int:
    """How many training steps fit in ``seconds``: ``margin * seconds`` over :func:`seconds_per_step`. At least 1.

    For runs of a few long epochs: ``TrainSettings(max_steps=n, epochs=ceil(n / len(train_batches)))`` ends
    inside the last epoch, where :func:`epochs_in_budget` would leave most of an epoch's time unused."""
    return max(1, int(margin * seconds / seconds_per_step(model, objective, train_batches, probe_steps, precision)))


def _read_metrics(path: Path, upto_epoch: int) -> list[dict[str, Any]]:
    if not path.exists():
        return []
    records = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    return [r for r in records if r["epoch"] <= upto_epoch]


def _length(batches: Any) -> int | None:
    try:
        return len(batches)
    except TypeError:
        return None


def fit(
    model: nn.Module,
    objective: Objective,
    train_batches: Iterable[Any],
    test_batches: Iterable[Any] | None = None,
    settings: TrainSettings | None = None,
    run_dir: str | os.PathLike[str] | None = None,
    config: Mapping[str, Any] | None = None,
    resume: bool = False,
    description: str = "train",
    bar_position: int | None = None,
    overwrite: bool = False,
) -> History:
    """Train ``model`` on ``objective`` with Adam; see the module docstring for what is written and when.

    ``objective(model, batch) -> LossTerms`` gets each batch as a tuple of tensors on the device and returns
    per-example terms; the trainer minimises the batch mean of ``LossTerms.loss``. ``train_batches`` is any
    re-iterable of batches (a :class:`dgmlab.data.TensorBatches`, a ``DataLoader``...); if it has
    ``set_epoch``, it is called with the epoch number before each epoch. ``bar_position`` is the progress
    bar's line (for runs in parallel processes). Returns the :class:`History`.

    With ``run_dir``, the folder is locked for the whole call (:class:`~dgmlab.errors.RunLockedError` if
    another process holds it); a new run into a folder that holds one raises
    :class:`~dgmlab.errors.RunExistsError` unless ``overwrite`` replaces it; ``resume`` continues it from its
    checkpoint, inside an epoch if the checkpoint was written there (:mod:`dgmlab.rundir`).

    In a process group of several ranks (``torchrun``), every rank calls ``fit`` with the same arguments and
    the same batches; they train one model together (module docstring, :mod:`dgmlab.distributed`).
    """
    settings = settings or TrainSettings()
    settings.validate()
    device = resolve_device(settings.device)
    step_precision = training_precision(settings.precision, device)  # fails before any work if it cannot run
    run_path = Path(run_dir) if run_dir is not None else None
    if resume and run_path is None:
        raise TrainingError("resume=True needs the run directory to resume from")
    if resume and overwrite:
        raise TrainingError("resume=True continues the run in run_dir and overwrite=True replaces it; pass one")
    if settings.compile and distributed.current().distributed:
        raise TrainingError("compile = true trains one process; on many processes (torchrun) train without it "
                            "(the default)")
    if run_path is None:
        return _train(model, objective, train_batches, test_batches, settings, device, step_precision, None,
                      config, False, description, bar_position)
    group = distributed.current()
    if not group.is_main:
        # rank 0 holds the lock and clears the folder; the others give the same verdict on an existing run,
        # then wait for it
        if not resume and not overwrite:
            refuse_existing_run(run_path)
        _barrier("the start of the run")
        return _train(model, objective, train_batches, test_batches, settings, device, step_precision, run_path,
                      config, resume, description, bar_position)
    with lock_run(run_path):
        if not resume:
            if overwrite:
                remove_run(run_path)
            else:
                refuse_existing_run(run_path)
        remove_leftovers(run_path)  # half-written files of a crashed process (resumed runs)
        _barrier("the start of the run")
        return _train(model, objective, train_batches, test_batches, settings, device, step_precision, run_path,
                      config, resume, description, bar_position)


def _barrier(where: str) -> None:
    try:
        distributed.barrier()
    except (distributed.dist.DistError, RuntimeError) as error:
        raise distributed.peer_failure(error, where) from error


def compiler_missing(device: torch.device) -> str | None:
    """Why ``torch.compile`` (inductor) cannot compile for ``device`` here, or ``None`` when nothing is known
    to be missing: on the CPU inductor writes C++ and needs a C++ compiler."""
    if device.type == "cpu":
        names = [os.environ.get("CXX"), "g++", "c++", "clang++"]
        if not any(name and shutil.which(name) for name in names):
            return ("no C++ compiler was found (g++, c++ or clang++, or $CXX), which torch.compile needs on the "
                    "CPU; install one (e.g. apt install g++)")
    return None


# what torch.compile raises when it cannot compile (a user's own error inside the step surfaces as itself
# when the step then runs eagerly)
_COMPILE_ERRORS: tuple[type[BaseException], ...] = ()


def _compile_errors() -> tuple[type[BaseException], ...]:
    global _COMPILE_ERRORS
    if not _COMPILE_ERRORS:
        from torch._dynamo.exc import TorchDynamoException
        from torch._inductor.exc import InductorError

        _COMPILE_ERRORS = (TorchDynamoException, InductorError)
    return _COMPILE_ERRORS


class CompiledStep:
    """``step(*batch)`` under ``torch.compile`` (inductor), or ``step`` itself, with a warning, where it cannot
    compile: no C++ compiler on the CPU, or a compiler error at a call (that step is run again eagerly from
    the same random state, and so is the rest of the run). ``reason`` says why it runs eagerly (``None``
    while compiled).

    One static graph per batch shape (``dynamic=False``: a short last batch adds one compilation, not symbolic
    shapes), and the random draws inside the step (a VAE's epsilon) are PyTorch's own (inductor's
    ``fallback_random``), so a compiled step draws what the eager one draws and differs from it only by the
    rounding of fused kernels."""

    def __init__(self, step: Any, device: torch.device) -> None:
        self.eager = step
        self.device = device
        self.reason = compiler_missing(device)
        self.compiled = (None if self.reason else
                         torch.compile(step, dynamic=False, options={"fallback_random": True}))
        if self.reason:
            self._warn()

    def _warn(self) -> None:
        warnings.warn(f"training without torch.compile: {self.reason}", RuntimeWarning, stacklevel=3)

    def __call__(self, *batch: Any) -> Any:
        if self.compiled is None:
            return self.eager(*batch)
        cuda = self.device.type == "cuda"
        state = torch.get_rng_state(), (torch.cuda.get_rng_state(self.device) if cuda else None)
        try:
            return self.compiled(*batch)
        except _compile_errors() as error:
            self.compiled = None
            lines = str(error).strip().splitlines() or [type(error).__name__]
            self.reason = f"it could not compile the step ({lines[0][:300]})"
            self._warn()
            torch.set_rng_state(state[0])
            if cuda:
                torch.cuda.set_rng_state(state[1], self.device)
            return self.eager(*batch)


class _ObjectiveStep(nn.Module):
    """``objective(model, batch)`` as a module, so DistributedDataParallel sees the forward pass of every step
    (objectives call ``log_prob``, ``encode``... rather than ``forward``)."""

    def __init__(self, model: nn.Module, objective: Objective) -> None:
        super().__init__()
        self.model = model
        self.objective = objective

    def forward(self, *batch: Tensor) -> LossTerms:
        return self.objective(self.model, batch)


def _train(model: nn.Module, objective: Objective, train_batches: Any, test_batches: Any,
           settings: TrainSettings, device: torch.device, *rest: Any) -> History:
    """:func:`_train_body`, with the models' input checks (:mod:`dgmlab.checks`) deferred to the trainer's
    reads from the device where those are not every step (accelerators)."""
    if _sync_interval(device) == 1:
        return _train_body(model, objective, train_batches, test_batches, settings, device, *rest)
    with checks.deferred():
        return _train_body(model, objective, train_batches, test_batches, settings, device, *rest)


def _train_body(model: nn.Module, objective: Objective, train_batches: Iterable[Any],
                test_batches: Iterable[Any] | None, settings: TrainSettings, device: torch.device,
                step_precision: contextlib.AbstractContextManager[Any], run_path: Path | None,
                config: Mapping[str, Any] | None, resume: bool, description: str,
                bar_position: int | None) -> History:
    """The body of :func:`fit`, with the run directory (if any) locked and checked."""
    torch.manual_seed(settings.seed)
    ranks = distributed.current()
    main = ranks.is_main
    model.to(device)
    train_batches, test_batches = resident(train_batches, device), resident(test_batches, device)
    sync_every = _sync_interval(device)
    optimizer = make_optimizer(model, settings, device)
    average = ParameterAverage(model, settings.ema_decay) if settings.ema_decay else None

    start_epoch, step = 0, 0
    partial: dict[str, Any] | None = None  # where a mid-epoch checkpoint left its epoch
    history = History()
    if run_path is not None:
        if resume:
            state = load_checkpoint(run_path / "checkpoint", model, optimizer)
            start_epoch, step = state.epoch, state.step
            partial = state.extra.get(PARTIAL_EPOCH)
            if average is not None:
                # a run that did not average yet starts its average from the weights it has now
                average.load(state.averaged or dict(model.named_parameters()))
            history.records = _read_metrics(run_path / "metrics.jsonl", start_epoch)
            _barrier("loading the checkpoint")  # every rank has read the folder before rank 0 writes to it
            if main:
                atomic_write_text(run_path / "metrics.jsonl",
                                  "".join(json.dumps(r) + "\n" for r in history.records))
        if config is not None and main:
            full = {**config, "train": {**dict(config.get("train", {})), **asdict(settings)}}
            atomic_write_text(run_path / "config.json", json.dumps(full, indent=2, sort_keys=True) + "\n")
    if start_epoch >= settings.epochs:
        if average is not None:
            average.swap()
        return history

    model.train()
    step_model: nn.Module | None = None
    # the single-process step under torch.compile, when asked for (evaluation is never compiled)
    compiled = CompiledStep(_ObjectiveStep(model, objective), device) if settings.compile else None
    shards: Iterable[Any] = train_batches
    if ranks.distributed:
        from torch.nn.parallel import DistributedDataParallel

        # the same starting point everywhere (DDP broadcasts rank 0's parameters and buffers), then every rank
        # trains on its slice of each global batch (dgmlab.distributed)
        try:
            # no buffer broadcast per step: dgmlab's buffers are constant (masks, permutations) or change the same
            # way on every rank (a mask counter; the VQ codebook statistics, which are all-reduced)
            step_model = DistributedDataParallel(
                _ObjectiveStep(model, objective), broadcast_buffers=False,
                device_ids=[torch.cuda.current_device()] if device.type == "cuda" else None)
        except (distributed.dist.DistError, RuntimeError) as error:
            raise distributed.peer_failure(error, "the start of the run") from error
        shards = distributed.ShardedBatches(train_batches, ranks)
    training_seconds = 0.0
    minutes = settings.checkpoint_every_minutes
    checkpoint_interval = minutes * 60.0 if minutes is not None and run_path is not None else None
    last_checkpoint = time.monotonic()
    for epoch in range(start_epoch + 1, settings.epochs + 1):
        started = time.perf_counter()
        _set_epoch(train_batches, epoch)
        _set_epoch(objective, epoch)  # an objective with a schedule (e.g. KL warm-up) may follow the epoch
        means = RunningMeans()
        lr = optimizer.param_groups[0]["lr"]
        batches = iter(shards)
        done, earlier_seconds, units = 0, 0.0, {}
        if partial is not None and partial["epoch"] == epoch:
            # continue inside the epoch of a mid-epoch checkpoint: its sums, and its batches replayed unused,
            # which advances the data's per-epoch streams (permutation, binarisation) past them
            done, earlier_seconds, units = int(partial["batches"]), float(partial["seconds"]), partial["units"]
            if main:  # the sums of all ranks so far; they are added over the ranks again at the epoch's end
                means.sums, means.count = {k: float(v) for k, v in partial["sums"].items()}, int(partial["count"])
            else:
                means.sums = {k: 0.0 for k in partial["sums"]}
            for _ in range(done):
                if next(batches, None) is None:
                    raise TrainingError(f"the checkpoint was written after {done} batches of epoch {epoch}, but "
                                        f"the training data now yields fewer; resume with the data the run was "
                                        f"trained on")
        partial = None
        bar = tqdm(batches, total=_length(train_batches), initial=done, leave=False,
                   desc=f"{description} {epoch}/{settings.epochs}", disable=not (settings.progress and main),
                   dynamic_ncols=True, position=bar_position)
        stopped = False
        for item in bar:
            if step_model is None:
                batch = item
                with step_precision:
                    if compiled is None:
                        out = objective(model, _to_device(batch, device))
                    else:
                        out = compiled(*_to_device(batch, device))
            else:
                batch, global_size = item
                # randomness inside the objective (a VAE's epsilon): a stream of its own per (seed, step, rank)
                torch.manual_seed(distributed.derived_seed(settings.seed, step, ranks.rank))
                try:
                    with step_precision:
                        out = step_model(*_to_device(batch, device))
                except (distributed.dist.DistError, RuntimeError) as error:
                    if not _peer_failed(error):
                        raise
                    raise distributed.peer_failure(error, f"step {step + 1}") from error
            terms = _named_terms(out)
            means.update(terms, step + 1)
            if (step + 1) % sync_every == 0:  # every step on the CPU: nothing non-finite reaches the gradient
                _settle(means, epoch, run_path)
                if not bar.disable:
                    bar.set_postfix({k: f"{v:.4g}" for k, v in means.means().items()}, refresh=False)
            optimizer.zero_grad(set_to_none=True)
            if step_model is None:
                out.loss.mean().backward()
            else:
                # l_r = (N / |S|) sum_{i in S_r} l_i; DDP averages over the N ranks: the gradient of the batch mean
                try:
                    (out.loss.sum() * (ranks.world_size / global_size)).backward()
                except (distributed.dist.DistError, RuntimeError) as error:
                    if not _peer_failed(error):
                        raise
                    raise distributed.peer_failure(error, f"step {step + 1}") from error
            if settings.grad_clip_norm is not None:
                # g <- g min(1, c / |g|_2)
                torch.nn.utils.clip_grad_norm_(model.parameters(), settings.grad_clip_norm)
            if step < settings.warmup_steps:
                # eta_t = eta * lr_decay^(epoch - 1) * (t + 1) / T_warmup for the first T_warmup steps
                for group in optimizer.param_groups:
                    group["lr"] = settings.lr * settings.lr_decay ** (epoch - 1) * (step + 1) / settings.warmup_steps
            elif step == settings.warmup_steps and step > 0:
                for group in optimizer.param_groups:
                    group["lr"] = settings.lr * settings.lr_decay ** (epoch - 1)
            optimizer.step()
            step += 1
            done += 1
            if average is not None:
                average.update(step)
            units = getattr(out, "units", {})
            if settings.max_steps is not None and step >= settings.max_steps:
                stopped = True
                break
            if checkpoint_interval is not None and _agreed(time.monotonic() - last_checkpoint >= checkpoint_interval,
                                                           step):
                assert run_path is not None
                _settle(means, epoch, run_path)  # no checkpoint of a model that a bad step has reached
                sums, count = _reduced(means, "a checkpoint")
                position = {"epoch": epoch, "batches": done, "sums": sums, "count": count,
                            "seconds": round(earlier_seconds + time.perf_counter() - started, 3),
                            "units": dict(units)}
                if main:
                    save_checkpoint(run_path / "checkpoint", model, optimizer, epoch=epoch - 1, step=step,
                                    extra={PARTIAL_EPOCH: position},
                                    averaged=average.averaged if average is not None else None)
                last_checkpoint = time.monotonic()
        bar.close()
        _settle(means, epoch, run_path)
        if ranks.distributed:  # the true means over the examples of all ranks
            means.sums, means.count = _reduced(means, f"the end of epoch {epoch}")
        if means.count == 0:
            raise TrainingError("the training data yielded no batches; check the data size, batch_size and "
                                "drop_last")
        for group in optimizer.param_groups:
            group["lr"] = group["lr"] * settings.lr_decay
        record: dict[str, Any] = {"epoch": epoch, "step": step, "lr": lr, "train": means.means()}
        if test_batches is not None:
            _set_epoch(test_batches, 0)
            if average is not None:
                average.swap()  # evaluate the averaged weights
            record["test"] = evaluate(model, objective, test_batches, device, seed=settings.seed)
            if average is not None:
                average.swap()
        record["units"] = dict(units)
        record["seconds"] = round(earlier_seconds + time.perf_counter() - started, 3)
        training_seconds += record["seconds"]
        # a budget: stop when the next epoch, at this epoch's time per step, would end past the limit; an epoch
        # that max_steps cuts short is counted for the steps it will run
        if settings.time_limit is not None and not stopped:
            length = _length(train_batches) or done
            coming = length if settings.max_steps is None else min(length, settings.max_steps - step)
            if training_seconds + record["seconds"] * coming / max(done, 1) > settings.time_limit:
                stopped = True
            stopped = _any_rank(stopped, f"the end of epoch {epoch}")  # the ranks stop together
        history.records.append(record)
        if settings.progress and main:
            shown = ", ".join(f"{k} {v:.4g}" for k, v in record["train"].items())
            test = record.get("test")
            tested = ("; test " + ", ".join(f"{k} {v:.4g}" for k, v in test.items())) if test else ""
            tqdm.write(f"{description} epoch {epoch}/{settings.epochs}: train {shown}{tested} "
                       f"({record['seconds']:.1f} s)")
        if run_path is not None and main:
            with open(run_path / "metrics.jsonl", "a", encoding="utf-8") as handle:
                handle.write(json.dumps(record) + "\n")
            last = epoch == settings.epochs or stopped
            if last or epoch % settings.checkpoint_every == 0:
                save_checkpoint(run_path / "checkpoint", model, optimizer, epoch=epoch, step=step,
                                averaged=average.averaged if average is not None else None)
                last_checkpoint = time.monotonic()
        if stopped:
            break
    if average is not None:
        average.swap()  # hand back the averaged weights
    return history


def _peer_failed(error: BaseException) -> bool:
    """Whether an error raised inside a distributed step came from the communication with the other ranks."""
    if isinstance(error, distributed.dist.DistError):
        return True
    text = str(error).lower()
    return any(word in text for word in ("gloo", "nccl", "connection", "timed out", "timeout", "peer", "socket"))


def _reduced(means: RunningMeans, where: str) -> tuple[dict[str, float], int]:
    """The running sums and count added over all ranks (unchanged on one process)."""
    try:
        sums, count, _ = distributed.all_reduce_sums(means.sums, means.count)
    except (distributed.dist.DistError, RuntimeError) as error:
        raise distributed.peer_failure(error, where) from error
    return sums, count


def _any_rank(flag: bool, where: str) -> bool:
    """True on every rank if ``flag`` is true on any."""
    if not distributed.is_distributed():
        return flag
    try:
        _, _, (total,) = distributed.all_reduce_sums({}, 0, float(flag))
    except (distributed.dist.DistError, RuntimeError) as error:
        raise distributed.peer_failure(error, where) from error
    return total > 0


def _agreed(flag: bool, step: int) -> bool:
    """Rank 0's ``flag`` on every rank (one small broadcast per step, only in a process group)."""
    if not distributed.is_distributed():
        return flag
    value = torch.tensor([float(flag)], dtype=torch.float64, device=distributed.collective_device())
    try:
        distributed.broadcast_(value, 0)
    except (distributed.dist.DistError, RuntimeError) as error:
        raise distributed.peer_failure(error, f"step {step}") from error
    return bool(value.item() > 0)


__all__ = ["DEVICES", "PRECISIONS", "History", "NonFiniteLossError", "ParameterAverage", "RunExistsError",
           "RunLockedError", "RunningMeans", "TrainSettings", "TrainingError", "epochs_in_budget", "evaluate",
           "fit", "make_optimizer", "resolve_device", "seconds_per_step", "steps_in_budget", "training_precision"]
