"""Checkpoints in safetensors, written atomically.

A run's ``checkpoint/state.safetensors`` holds, in one file so that its parts can never disagree:

* ``model.<name>``: the model's state dict (weights and buffers),
* ``optimizer.<param index>.<key>``: the optimizer's per-parameter state tensors (Adam's moments),
* ``rng.torch`` (and ``rng.cuda.<i>`` on CUDA): the random-number-generator state,
* ``raw.<name>``, only for runs that average their weights (``TrainSettings.ema_decay``): the optimizer's
  own parameters, while ``model.<name>`` holds the averaged ones, the weights to evaluate and sample from;


and, in the file's string metadata, ``epoch`` (the last finished epoch), ``step``, the optimizer's
``param_groups`` and non-tensor state as JSON, ``extra`` (JSON; the trainer's ``partial_epoch`` for a
checkpoint written inside an epoch, see :mod:`dgmlab.train`), and the format version. Nothing is pickled.
The file is written to a temporary file in the same folder, flushed to disk and renamed over the old one
(``os.replace`` is atomic on POSIX and Windows), so a crash at any moment leaves the previous checkpoint
intact.
"""

from __future__ import annotations

import json
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load, save_file
from torch import nn

from dgmlab.errors import CheckpointError
from dgmlab.utils import device_of

FORMAT = "dgmlab-checkpoint-1"
STATE_FILE = "state.safetensors"


@dataclass
class TrainingState:
    """What a checkpoint restores besides the weights."""

    epoch: int
    step: int
    extra: dict[str, Any]
    averaged: dict[str, torch.Tensor] | None = None  # the averaged parameters, for runs that keep an average


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` through a temporary file (``.<name>.*.tmp`` in the same folder) and an atomic
    rename, so a reader never sees a half-written file; the file gets the usual ``rw-r--r--`` permissions."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.chmod(tmp, 0o644)  # mkstemp creates 0600 files
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def atomic_write_text(path: Path, text: str) -> None:
    """Write ``text`` (UTF-8) to ``path`` atomically."""
    atomic_write_bytes(path, text.encode("utf-8"))


def _optimizer_tensors(optimizer: torch.optim.Optimizer) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    state = optimizer.state_dict()
    tensors: dict[str, torch.Tensor] = {}
    scalars: dict[str, dict[str, Any]] = {}
    for index, per_param in state["state"].items():
        for key, value in per_param.items():
            if isinstance(value, torch.Tensor):
                tensors[f"optimizer.{index}.{key}"] = value.detach().cpu().contiguous()
            else:
                scalars.setdefault(str(index), {})[key] = value
    return tensors, {"param_groups": state["param_groups"], "scalars": scalars}


def save_checkpoint(
    directory: str | os.PathLike[str],
    model: nn.Module,
    optimizer: torch.optim.Optimizer | None,
    epoch: int,
    step: int,
    extra: dict[str, Any] | None = None,
    averaged: dict[str, torch.Tensor] | None = None,
) -> Path:
    """Save model, optimizer, RNG state, ``epoch`` and ``step`` to ``directory/state.safetensors``, atomically.

    With ``averaged`` (parameter name -> averaged value), ``model.<name>`` stores the averaged parameters (what
    :func:`load_weights` gives to evaluation and sampling) and ``raw.<name>`` the model's own, for resuming."""
    directory = Path(directory)
    tensors = {f"model.{k}": v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    for name, value in (averaged or {}).items():
        tensors[f"raw.{name}"] = tensors[f"model.{name}"]
        tensors[f"model.{name}"] = value.detach().cpu().contiguous()
    optimizer_meta: dict[str, Any] = {}
    if optimizer is not None:
        optimizer_tensors, optimizer_meta = _optimizer_tensors(optimizer)
        tensors.update(optimizer_tensors)
    tensors["rng.torch"] = torch.get_rng_state()
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        for i, state in enumerate(torch.cuda.get_rng_state_all()):
            tensors[f"rng.cuda.{i}"] = state
    metadata = {
        "format": FORMAT,
        "epoch": str(epoch),
        "step": str(step),
        "optimizer": json.dumps(optimizer_meta),
        "extra": json.dumps(extra or {}),
    }
    directory.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=directory, prefix=f".{STATE_FILE}.", suffix=".tmp")
    os.close(fd)
    path = directory / STATE_FILE
    try:
        save_file(tensors, tmp, metadata=metadata)
        with open(tmp, "rb+") as handle:
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


MAX_HEADER_BYTES = 100_000_000  # a safetensors header longer than this is a corrupt length field


def _header_metadata(head: bytes, path: Path) -> dict[str, str]:
    """The ``__metadata__`` of a safetensors file from its first bytes (8-byte little-endian header length,
    then the JSON header), checked to be a dgmlab checkpoint."""
    if len(head) < 8:
        raise CheckpointError(f"checkpoint {path} is unreadable (shorter than a header); it may be truncated or "
                              f"corrupt")
    length = int.from_bytes(head[:8], "little")
    if length > MAX_HEADER_BYTES or len(head) < 8 + length:
        raise CheckpointError(f"checkpoint {path} is unreadable (bad header length); it may be truncated or corrupt")
    try:
        metadata = json.loads(head[8:8 + length]).get("__metadata__") or {}
    except (ValueError, AttributeError) as error:
        raise CheckpointError(f"checkpoint {path} is unreadable ({error}); it may be truncated or corrupt") from None
    if metadata.get("format") != FORMAT:
        raise CheckpointError(f"{path} is not a dgmlab checkpoint (format {metadata.get('format')!r})")
    return metadata


def _check_exists(path: Path) -> None:
    if not path.is_file():
        raise CheckpointError(f"no checkpoint at {path}; train first, or pass the run directory of a finished run")


def _metadata(path: Path) -> dict[str, str]:
    """The metadata alone, read through one file handle (so a checkpoint replaced meanwhile is read whole,
    old or new, never a mix of the two)."""
    _check_exists(path)
    try:
        with open(path, "rb") as handle:
            head = handle.read(8)
            head += handle.read(min(int.from_bytes(head[:8], "little"), MAX_HEADER_BYTES)) if len(head) == 8 else b""
    except OSError as error:
        raise CheckpointError(f"checkpoint {path} is unreadable ({error})") from None
    return _header_metadata(head, path)


def _read(path: Path) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """Tensors and metadata from one read of the file: a concurrent atomic replacement (a training process
    writing its next checkpoint) gives the old or the new checkpoint, whole."""
    _check_exists(path)
    try:
        data = path.read_bytes()
    except OSError as error:
        raise CheckpointError(f"checkpoint {path} is unreadable ({error})") from None
    metadata = _header_metadata(data, path)
    try:
        tensors = load(data)
    except (SafetensorError, ValueError, RuntimeError) as error:
        raise CheckpointError(f"checkpoint {path} is unreadable ({error}); it may be truncated or corrupt") from None
    return tensors, metadata


def read_state(directory: str | os.PathLike[str]) -> TrainingState:
    """Epoch, step and ``extra`` of ``directory/state.safetensors`` from its metadata alone (no tensor is
    read; ``averaged`` is ``None``). Raises :class:`CheckpointError` for a missing or unreadable file."""
    metadata = _metadata(Path(directory) / STATE_FILE)
    return TrainingState(epoch=int(metadata["epoch"]), step=int(metadata["step"]),
                         extra=json.loads(metadata.get("extra", "{}")))


def load_weights(directory: str | os.PathLike[str], model: nn.Module, map_location: str | torch.device = "cpu") -> None:
    """Load only the model weights of ``directory/state.safetensors`` into ``model``."""
    path = Path(directory) / STATE_FILE
    tensors, _ = _read(path)
    weights = {k[len("model."):]: v.to(map_location) for k, v in tensors.items() if k.startswith("model.")}
    try:
        model.load_state_dict(weights)
    except RuntimeError as error:
        first = str(error).strip().splitlines()[0]
        raise CheckpointError(f"checkpoint {path} does not fit this model: {first}") from None


def _match_parameter_layouts(optimizer: torch.optim.Optimizer) -> None:
    """Give every per-parameter state tensor (Adam's moments) its parameter's memory layout. Checkpoints hold
    contiguous copies; a channels-last parameter (the PixelCNNs' convolutions) next to a contiguous moment
    would be paired element by element in memory order by the fused and foreach kernels, i.e. wrongly."""
    for group in optimizer.param_groups:
        for parameter in group["params"]:
            for name, value in optimizer.state.get(parameter, {}).items():
                if isinstance(value, torch.Tensor) and value.shape == parameter.shape:
                    optimizer.state[parameter][name] = torch.empty_like(parameter, dtype=value.dtype).copy_(value)


def load_checkpoint(
    directory: str | os.PathLike[str],
    model: nn.Module,
    optimizer: torch.optim.Optimizer | None = None,
    restore_rng: bool = True,
) -> TrainingState:
    """Restore model, optimizer and RNG state from ``directory/state.safetensors``; return epoch and step.

    For a run that averages its weights, the model gets its own (raw) parameters back, to continue training,
    and the averaged ones come back in ``TrainingState.averaged``."""
    path = Path(directory) / STATE_FILE
    tensors, metadata = _read(path)
    device = device_of(model)
    load_weights(directory, model, map_location=device)
    averaged = None
    raw = {k[len("raw."):]: v for k, v in tensors.items() if k.startswith("raw.")}
    if raw:
        averaged = {name: tensors[f"model.{name}"].to(device) for name in raw}
        with torch.no_grad():
            parameters = dict(model.named_parameters())
            for name, value in raw.items():
                parameters[name].copy_(value)
    if optimizer is not None:
        meta = json.loads(metadata.get("optimizer", "{}"))
        state: dict[int, dict[str, Any]] = {}
        for key, value in tensors.items():
            if key.startswith("optimizer."):
                _, index, name = key.split(".", 2)
                state.setdefault(int(index), {})[name] = value
        for index, scalars in meta.get("scalars", {}).items():
            state.setdefault(int(index), {}).update(scalars)
        optimizer.load_state_dict({"state": state, "param_groups": meta["param_groups"]})
        _match_parameter_layouts(optimizer)
    if restore_rng:
        torch.set_rng_state(tensors["rng.torch"])
        cuda_keys = sorted((k for k in tensors if k.startswith("rng.cuda.")), key=lambda k: int(k.rsplit(".", 1)[1]))
        cuda_states = [tensors[k] for k in cuda_keys]
        if cuda_states and torch.cuda.is_available():
            torch.cuda.set_rng_state_all(cuda_states)
    return TrainingState(epoch=int(metadata["epoch"]), step=int(metadata["step"]),
                         extra=json.loads(metadata.get("extra", "{}")), averaged=averaged)
