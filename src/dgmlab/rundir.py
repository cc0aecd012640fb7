"""Run directories: what a run holds, the rule that keeps it from being lost, and the lock that keeps it to
one process.

A run directory (``dgmlab train --out DIR``) holds ``config.json``, ``metrics.jsonl``,
``checkpoint/state.safetensors``, its figures (``*.png``) and, once evaluated, ``eval.json``. Two rules keep
a run from being lost:

* **No silent replacement.** Training a new run into a folder that already holds one (a ``config.json``, a
  ``metrics.jsonl`` or a checkpoint) is refused with :class:`~dgmlab.errors.RunExistsError`: continue it
  (``--resume``, ``fit(..., resume=True)``), replace it on purpose (``--overwrite``,
  ``fit(..., overwrite=True)``), or choose another folder. Replacing removes exactly the run's own files
  (:func:`remove_run`: ``config.json``, ``metrics.jsonl``, ``eval.json``, the checkpoint, the ``*.png``
  figures, and temporary files an interrupted write left); anything else in the folder stays.
* **One process at a time.** Training holds an exclusive operating-system lock (``fcntl.flock``) on the
  folder's :data:`LOCK_FILE` for its whole duration (:func:`lock_run`); a second process that wants the
  folder gets :class:`~dgmlab.errors.RunLockedError` at once, naming the holder's process id. The operating
  system releases the lock when the holder exits, however it ends (a crash, ``SIGKILL``), so a lock file
  left behind never blocks a later run; the file itself is kept (removing it could let two processes lock
  two different files of the same name). Where ``fcntl`` does not exist (Windows), no lock is taken and two
  processes on one folder are not detected; the no-replacement rule still holds.
"""

from __future__ import annotations

import contextlib
import os
import warnings
from collections.abc import Iterator, Sequence
from pathlib import Path

from dgmlab.checkpoint import STATE_FILE, read_state
from dgmlab.errors import CheckpointError, RunExistsError, RunLockedError

try:  # POSIX only
    import fcntl
except ImportError:  # pragma: no cover - Windows
    fcntl = None  # type: ignore[assignment]

LOCK_FILE = ".lock"
CHECKPOINT_DIR = "checkpoint"
RUN_FILES = ("config.json", "metrics.jsonl", "eval.json")  # besides the checkpoint and the *.png figures
PARTIAL_EPOCH = "partial_epoch"  # the key of a mid-epoch checkpoint's position in its ``extra`` metadata


def holds_run(run_dir: str | os.PathLike[str]) -> bool:
    """Whether ``run_dir`` holds a run: a ``config.json``, a ``metrics.jsonl`` or a checkpoint."""
    run_dir = Path(run_dir)
    return any((run_dir / name).is_file() for name in ("config.json", "metrics.jsonl")) or (
        run_dir / CHECKPOINT_DIR / STATE_FILE).is_file()


def describe_run(run_dir: str | os.PathLike[str]) -> str | None:
    """A few words on the run in ``run_dir`` (``"2 epochs"``, ``"1 epoch and 40 batches of epoch 2"``,
    ``"4 batches of epoch 1"``, ``"no finished epoch"``), or ``None`` if it holds none."""
    run_dir = Path(run_dir)
    if not holds_run(run_dir):
        return None
    metrics = run_dir / "metrics.jsonl"
    epochs = sum(1 for line in metrics.read_text(errors="replace").splitlines() if line.strip()) \
        if metrics.is_file() else 0
    partial = None
    with contextlib.suppress(CheckpointError, ValueError, KeyError):
        state = read_state(run_dir / CHECKPOINT_DIR)
        epochs = max(epochs, state.epoch)
        partial = state.extra.get(PARTIAL_EPOCH)
    finished = f"{epochs} epoch{'' if epochs == 1 else 's'}" if epochs else ""
    if partial:
        inside = f"{partial['batches']} batches of epoch {partial['epoch']}"
        return f"{finished} and {inside}" if finished else inside
    return finished or "no finished epoch"


def refuse_existing_run(run_dir: str | os.PathLike[str]) -> None:
    """Raise :class:`~dgmlab.errors.RunExistsError` if ``run_dir`` holds a run; the message names ``--resume`` and
    ``--overwrite``."""
    what = describe_run(run_dir)
    if what is not None:
        raise RunExistsError(
            f"{run_dir} already holds a run ({what}); continue it with --resume {run_dir}, replace it with "
            f"--overwrite, or choose another --out (in Python: resume=True, overwrite=True or another run_dir)")


def check_unlocked(run_dir: str | os.PathLike[str]) -> None:
    """Raise :class:`~dgmlab.errors.RunLockedError` if another process holds the lock of ``run_dir`` now.
    Creates nothing (a quick check before slow preparations; the trainer takes the lock itself)."""
    if (Path(run_dir) / LOCK_FILE).is_file():
        with lock_run(run_dir):
            pass


def check_new_run(run_dir: str | os.PathLike[str], overwrite: bool = False) -> None:
    """Fail early, before any data is loaded, where training a new run into ``run_dir`` would fail: the
    folder is in use (:class:`~dgmlab.errors.RunLockedError`) or, without ``overwrite``, holds a run
    (:class:`~dgmlab.errors.RunExistsError`). Creates nothing; the trainer checks again under the lock."""
    check_unlocked(run_dir)
    if not overwrite:
        refuse_existing_run(run_dir)


def remove_leftovers(run_dir: str | os.PathLike[str]) -> None:
    """Remove the temporary files that writes interrupted by a crash left in ``run_dir`` and its checkpoint
    folder (``.<name>.*.tmp``; the finished files they were to replace are intact). Call it with the run's
    lock held, so that no write in progress is mistaken for a leftover."""
    run_dir = Path(run_dir)
    for name in RUN_FILES:
        for leftover in run_dir.glob(f".{name}.*.tmp"):
            leftover.unlink(missing_ok=True)
    for leftover in (run_dir / CHECKPOINT_DIR).glob(f".{STATE_FILE}.*.tmp"):
        leftover.unlink(missing_ok=True)


def remove_run(run_dir: str | os.PathLike[str]) -> None:
    """Remove the run in ``run_dir``: ``config.json``, ``metrics.jsonl``, ``eval.json``, the checkpoint, the
    ``*.png`` figures and the temporary files of interrupted writes. Nothing else in the folder is touched;
    the folder itself stays."""
    run_dir = Path(run_dir)
    remove_leftovers(run_dir)
    for name in RUN_FILES:
        (run_dir / name).unlink(missing_ok=True)
    for figure in run_dir.glob("*.png"):
        figure.unlink(missing_ok=True)
    checkpoint = run_dir / CHECKPOINT_DIR
    if checkpoint.is_dir():
        (checkpoint / STATE_FILE).unlink(missing_ok=True)
        with contextlib.suppress(OSError):  # only if nothing else is in it
            checkpoint.rmdir()


@contextlib.contextmanager
def lock_run(run_dir: str | os.PathLike[str]) -> Iterator[Path]:
    """Hold the exclusive lock of ``run_dir`` (created if missing) inside the block; raise
    :class:`~dgmlab.errors.RunLockedError` at once if another process holds it. The lock file records the
    holder's process id while it is held. Without ``fcntl`` (Windows) the block runs unlocked."""
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    if fcntl is None:  # pragma: no cover - Windows
        yield run_dir
        return
    path = run_dir / LOCK_FILE
    with open(path, "a+", encoding="utf-8") as handle:  # closing it (however the block ends) releases the lock
        locked = True
        try:
            fcntl.flock(handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            handle.seek(0)
            holder = handle.read().strip() or "unknown"
            raise RunLockedError(
                f"{run_dir} is in use by another process (pid {holder}); wait for it to finish, or train into "
                f"another --out") from None
        except OSError as error:  # a file system without locks: go on unlocked, as where fcntl is missing
            warnings.warn(f"could not lock {path} ({error}); another process could write this run at the same "
                          f"time", RuntimeWarning, stacklevel=3)
            locked = False
        if locked:
            handle.truncate(0)
            handle.write(f"{os.getpid()}\n")
            handle.flush()
        try:
            yield run_dir
        finally:
            if locked:
                with contextlib.suppress(OSError):
                    handle.truncate(0)


def refuse_or_clear_results(out: str | os.PathLike[str], files: Sequence[str], what: str, *, overwrite: bool,
                            clear: bool) -> None:
    """For an experiment command that writes ``files`` into ``out`` (``results.json``, the marker of a finished
    run, first): a RunExistsError naming ``what`` if any of them is there and not ``overwrite``; with ``clear``,
    remove them (results.json first, so that a crash from here on leaves no half run looking finished)."""
    out = Path(out)
    existing = [name for name in files if (out / name).is_file()]
    if existing and not overwrite:
        raise RunExistsError(f"{out} already holds a {what} run ({', '.join(existing)}); replace it with "
                             f"--overwrite (overwrite=True), or choose another --out")
    if clear:
        for name in files:
            (out / name).unlink(missing_ok=True)


__all__ = ["LOCK_FILE", "PARTIAL_EPOCH", "RUN_FILES", "check_new_run", "check_unlocked", "describe_run", "holds_run",
           "lock_run", "refuse_existing_run", "refuse_or_clear_results", "remove_run"]
