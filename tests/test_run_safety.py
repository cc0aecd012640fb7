"""No run is ever lost: existing runs are refused unless overwritten, a run folder belongs to one process at a
time (a real operating-system lock, tested across real processes), and a checkpoint written inside an epoch
resumes bit for bit, also after the training process is killed with SIGKILL."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

import dgmlab.checkpoint
import dgmlab.errors
import dgmlab.train
from dgmlab.checkpoint import read_state
from dgmlab.cli import main
from dgmlab.data import TensorBatches, dynamic_binarize
from dgmlab.errors import RunExistsError, RunLockedError
from dgmlab.models import VAE
from dgmlab.objectives import negative_elbo
from dgmlab.rundir import LOCK_FILE, PARTIAL_EPOCH, describe_run
from dgmlab.train import TrainingError, TrainSettings, fit

HERE = Path(__file__).resolve().parent
BATCHES_PER_EPOCH = 8  # 60 examples in batches of 8: seven full ones and a short last one of 4


def make_data() -> tuple[TensorBatches, TensorBatches]:
    """Grey levels in [0, 1], dynamically binarised per batch from the (seed, epoch) transform stream."""
    grey = torch.rand(60, 12, generator=torch.Generator().manual_seed(7))
    return (TensorBatches(grey, batch_size=8, seed=3, transform=dynamic_binarize),
            TensorBatches(grey[:20], batch_size=20, shuffle=False, transform=dynamic_binarize))


def make_model(seed: int = 0) -> VAE:
    torch.manual_seed(seed)
    return VAE(12, [16, 6], likelihood="bernoulli")


def elbo(model, batch):
    # the reparameterised sample and the Monte-Carlo KL draw from the global RNG at every step
    return negative_elbo(model, batch[0], kl="monte_carlo")


def settings(**changes) -> TrainSettings:
    values = {"epochs": 3, "lr": 1e-2, "seed": 3, "ema_decay": 0.9, "lr_decay": 0.9, "progress": False, **changes}
    return TrainSettings(**values)


TINY = """
name = "tiny"
[model]
name = "vae"
hidden_dims = [8, 4]
likelihood = "bernoulli"
[data]
name = "mnist"
view = "dynamic"
batch_size = 100
limit = 200
test_limit = 100
[objective]
name = "elbo"
kl = "analytic"
[train]
epochs = 1
progress = false
"""

EVERY_BATCH = 1e-9  # minutes: a mid-epoch checkpoint after every step


def slow(objective, seconds: float, started: Path | None = None):
    """``objective`` that sleeps ``seconds`` before every training step (and touches ``started`` first)."""
    def slowed(model, batch):
        if torch.is_grad_enabled():
            if started is not None and not started.exists():
                started.write_text("training\n")
            time.sleep(seconds)
        return objective(model, batch)
    return slowed


def child(argv: list[str]) -> None:
    """What the real training processes run: ``train RUN_DIR SLEEP [MARKER]`` (many epochs, slowly, with a
    checkpoint after every step) or ``resume RUN_DIR``."""
    torch.set_num_threads(1)
    mode, run_dir = argv[0], Path(argv[1])
    train, test = make_data()
    if mode == "train":
        marker = Path(argv[3]) if len(argv) > 3 else None
        epochs = int(os.environ.get("DGMLAB_TEST_EPOCHS", "3"))
        fit(make_model(), slow(elbo, float(argv[2]), marker), train, test,
            settings(epochs=epochs, checkpoint_every_minutes=EVERY_BATCH), run_dir=run_dir)
    else:
        fit(make_model(seed=5), elbo, train, test, settings(checkpoint_every_minutes=EVERY_BATCH), run_dir=run_dir,
            resume=True)


SCRIPT = f"import sys; sys.path.insert(0, {str(HERE)!r}); import test_run_safety; test_run_safety.child(sys.argv[1:])"


def start_child(*args: object, epochs: int = 3) -> subprocess.Popen:
    environment = {**os.environ, "DGMLAB_TEST_EPOCHS": str(epochs)}
    return subprocess.Popen([sys.executable, "-c", SCRIPT, *map(str, args)], env=environment,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def wait_for(condition, process: subprocess.Popen, timeout: float = 120.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if process.poll() is not None:
            raise AssertionError(f"the child process ended early:\n{process.communicate()[1]}")
        if time.monotonic() > deadline:
            process.kill()
            raise AssertionError("timed out waiting for the child process")
        time.sleep(0.01)


def kill(process: subprocess.Popen) -> None:
    os.kill(process.pid, signal.SIGKILL)
    process.wait(timeout=30)
    assert process.returncode == -signal.SIGKILL


def records(run_dir: Path) -> list[dict]:
    lines = (run_dir / "metrics.jsonl").read_text().splitlines()
    return [{k: v for k, v in json.loads(line).items() if k != "seconds"} for line in lines]


def assert_same_parameters(a: torch.nn.Module, b: torch.nn.Module) -> None:
    for (name, x), y in zip(a.state_dict().items(), b.state_dict().values(), strict=True):
        assert torch.equal(x, y), name


# ------------------------------------------------------------------------------------------ errors and rules
def test_the_error_classes_are_the_shared_ones():
    assert dgmlab.train.TrainingError is dgmlab.errors.TrainingError
    assert dgmlab.train.NonFiniteLossError is dgmlab.errors.NonFiniteLossError
    assert dgmlab.checkpoint.CheckpointError is dgmlab.errors.CheckpointError
    assert issubclass(RunExistsError, TrainingError) and issubclass(RunLockedError, TrainingError)


def test_a_folder_that_holds_a_run_is_refused_and_left_as_it_was(tmp_path):
    train, test = make_data()
    fit(make_model(), elbo, train, test, settings(epochs=2), run_dir=tmp_path)
    files = [tmp_path / "config.json", tmp_path / "metrics.jsonl", tmp_path / "checkpoint" / "state.safetensors"]
    before = [path.read_bytes() if path.exists() else None for path in files]
    with pytest.raises(RunExistsError) as error:
        fit(make_model(), elbo, train, test, settings(epochs=1), run_dir=tmp_path)
    message = str(error.value)
    assert f"{tmp_path} already holds a run (2 epochs)" in message
    assert f"--resume {tmp_path}" in message and "--overwrite" in message and "\n" not in message
    assert [path.read_bytes() if path.exists() else None for path in files] == before
    with pytest.raises(TrainingError, match="pass one"):
        fit(make_model(), elbo, train, test, settings(epochs=1), run_dir=tmp_path, resume=True, overwrite=True)


def test_overwrite_removes_the_run_and_nothing_else(tmp_path):
    train, test = make_data()
    fit(make_model(seed=1), elbo, train, test, settings(epochs=2), run_dir=tmp_path / "run",
        config={"name": "old"})
    run = tmp_path / "run"
    (run / "eval.json").write_text("{}")
    (run / "samples.png").write_bytes(b"\x89PNG")
    (run / "notes.txt").write_text("mine")
    (run / "checkpoint" / "mine.txt").write_text("mine too")
    fresh = make_model()
    fit(fresh, elbo, train, test, settings(epochs=1), run_dir=tmp_path / "fresh")
    replaced = make_model()
    fit(replaced, elbo, train, test, settings(epochs=1), run_dir=run, overwrite=True)
    assert_same_parameters(replaced, fresh)
    assert records(run) == records(tmp_path / "fresh")  # the old run's two epochs are gone
    assert not (run / "config.json").exists() and not (run / "eval.json").exists()
    assert not (run / "samples.png").exists()
    assert (run / "notes.txt").read_text() == "mine" and (run / "checkpoint" / "mine.txt").exists()


@pytest.mark.slow
def test_cli_refuses_an_existing_run_and_overwrites_on_request(tmp_path, capsys, monkeypatch):
    config = tmp_path / "tiny.toml"
    config.write_text(TINY)
    monkeypatch.chdir(tmp_path)  # the default --out is runs/<config name>, relative to here
    assert main(["train", "--config", str(config)]) == 0
    assert main(["train", "--config", str(config)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1
    assert err[0] == (f"dgmlab train: error: {Path('runs') / 'tiny'} already holds a run (1 epoch); continue it with "
                      f"--resume runs/tiny, replace it with --overwrite, or choose another --out (in Python: "
                      f"resume=True, overwrite=True or another run_dir)")
    assert main(["train", "--config", str(config), "--overwrite"]) == 0
    assert main(["train", "--resume", "runs/tiny", "--overwrite"]) == 2
    assert "give one of them" in capsys.readouterr().err


# ------------------------------------------------------------------------------------------ one process at a time
def test_resuming_removes_what_a_crashed_write_left_and_nothing_else(tmp_path):
    train, test = make_data()
    fit(make_model(), elbo, train, test, settings(epochs=1), run_dir=tmp_path)
    half_written = [tmp_path / "checkpoint" / ".state.safetensors.abc123.tmp", tmp_path / ".metrics.jsonl.x1.tmp"]
    for path in half_written:
        path.write_bytes(b"a write killed half-way")
    (tmp_path / "checkpoint" / "mine.tmp").write_text("not a leftover of dgmlab's")
    fit(make_model(), elbo, train, test, settings(epochs=2), run_dir=tmp_path, resume=True)
    assert not any(path.exists() for path in half_written)
    assert (tmp_path / "checkpoint" / "mine.tmp").exists() and len(records(tmp_path)) == 2


@pytest.mark.slow
def test_a_second_process_is_refused_while_the_first_trains(tmp_path, single_thread):
    run, marker = tmp_path / "run", tmp_path / "started"
    first = start_child("train", run, 0.05, marker, epochs=1000)
    try:
        wait_for(marker.exists, first)
        # a second process through the API: this one
        started = time.monotonic()
        train, test = make_data()
        with pytest.raises(RunLockedError, match=rf"is in use by another process \(pid {first.pid}\)"):
            fit(make_model(), elbo, train, test, settings(epochs=1), run_dir=run, overwrite=True)
        assert time.monotonic() - started < 2
        # ... and through the command line: one line, exit status 2, before any data is loaded
        config = tmp_path / "tiny.toml"
        config.write_text(TINY)
        second = subprocess.run([sys.executable, "-m", "dgmlab.cli", "train", "--config", str(config), "--out",
                                 str(run), "--overwrite"], capture_output=True, text=True, timeout=120)
        assert second.returncode == 2, second.stderr
        assert second.stderr.strip() == (f"dgmlab train: error: {run} is in use by another process (pid "
                                         f"{first.pid}); wait for it to finish, or train into another --out")
        assert first.poll() is None  # the first one trains on, untouched
    finally:
        kill(first)
    # the operating system released the lock of the killed process: the folder can be used again
    train, test = make_data()
    fit(make_model(), elbo, train, test, settings(epochs=1), run_dir=run, overwrite=True)
    assert (run / LOCK_FILE).exists()


# ------------------------------------------------------------------------------------------ mid-epoch resume
class Crash(Exception):
    pass


def crash_at(objective, phase: str, call: int):
    """``objective`` that raises :class:`Crash` at its ``call``-th call in ``phase`` ("train" or "eval")."""
    calls = {"train": 0, "eval": 0}

    def crashing(model, batch):
        which = "train" if torch.is_grad_enabled() else "eval"
        calls[which] += 1
        if which == phase and calls[which] == call:
            raise Crash
        return objective(model, batch)
    return crashing


@pytest.mark.parametrize(("phase", "call", "epoch", "batches"), [
    ("train", 3, 1, 2),  # inside the first epoch
    ("train", 13, 2, 4),  # inside the second
    ("eval", 2, 2, BATCHES_PER_EPOCH),  # evaluating after the second: every batch done, the epoch not written
])
def test_a_mid_epoch_checkpoint_resumes_bit_for_bit(tmp_path, phase, call, epoch, batches):
    train, test = make_data()
    reference = make_model()
    fit(reference, elbo, train, test, settings(), run_dir=tmp_path / "reference")  # no mid-epoch checkpoints

    run = tmp_path / "run"
    with pytest.raises(Crash):
        fit(make_model(), crash_at(elbo, phase, call), train, test, settings(checkpoint_every_minutes=EVERY_BATCH),
            run_dir=run)
    state = read_state(run / "checkpoint")
    assert state.epoch == epoch - 1
    assert state.extra[PARTIAL_EPOCH]["epoch"] == epoch and state.extra[PARTIAL_EPOCH]["batches"] == batches
    assert describe_run(run) == ("" if epoch == 1 else "1 epoch and ") + f"{batches} batches of epoch {epoch}"

    resumed = make_model(seed=5)  # the checkpoint, not the initialisation, decides
    fit(resumed, elbo, train, test, settings(checkpoint_every_minutes=EVERY_BATCH), run_dir=run, resume=True)
    assert_same_parameters(resumed, reference)
    assert records(run) == records(tmp_path / "reference")
    assert read_state(run / "checkpoint").extra == {}  # the last checkpoint is the end of the run


@pytest.mark.slow
def test_a_killed_training_process_resumes_bit_for_bit(tmp_path, single_thread):
    run = tmp_path / "run"
    first = start_child("train", run, 0.05)

    def inside_the_second_epoch() -> bool:
        try:
            partial = read_state(run / "checkpoint").extra.get(PARTIAL_EPOCH)
        except dgmlab.errors.CheckpointError:
            return False
        return partial is not None and partial["epoch"] == 2 and 1 <= partial["batches"] <= 5

    try:
        wait_for(inside_the_second_epoch, first)
    finally:
        kill(first)
    assert PARTIAL_EPOCH in read_state(run / "checkpoint").extra  # killed inside the epoch

    second = start_child("resume", run)
    train, test = make_data()
    fit(make_model(), elbo, train, test, settings(), run_dir=tmp_path / "reference")  # meanwhile, uninterrupted
    _, err = second.communicate(timeout=120)
    assert second.returncode == 0, err
    resumed = load_file(str(run / "checkpoint" / "state.safetensors"))
    reference = load_file(str(tmp_path / "reference" / "checkpoint" / "state.safetensors"))
    assert resumed.keys() == reference.keys()
    for name, tensor in reference.items():  # weights, averaged weights, Adam's moments, the RNG state
        assert torch.equal(resumed[name], tensor), name
    assert records(run) == records(tmp_path / "reference")


# ------------------------------------------------------------------------------------------ dgmlab pset1
def test_pset1_refuses_a_folder_with_a_pset1_run_and_overwrite_removes_only_it(tmp_path, capsys):
    from dgmlab.experiments.pset1 import _replace_or_refuse, run_pset1

    train, test = make_data()
    fit(make_model(), elbo, train, test, settings(epochs=1), run_dir=tmp_path / "torus" / "polar_seed0")
    with pytest.raises(RunExistsError, match=r"already holds a pset1 run \(torus/polar_seed0\); replace it with "
                                             r"--overwrite"):
        run_pset1(tmp_path, quick=True, device="cpu", progress=False)
    (tmp_path / "report.html").write_text("<html></html>")
    (tmp_path / "ae").mkdir()
    (tmp_path / "ae" / "config.json").write_text("{}")
    (tmp_path / "notes.txt").write_text("mine")
    assert main(["pset1", "--quick", "--out", str(tmp_path), "--device", "cpu", "--no-progress"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [f"dgmlab pset1: error: {tmp_path} already holds a pset1 run (report.html, ae, torus/polar_seed0); "
                   f"replace it with --overwrite (overwrite=True), or choose another --out"]
    _replace_or_refuse(tmp_path, overwrite=True)  # what run_pset1(..., overwrite=True) does first
    assert not (tmp_path / "report.html").exists() and describe_run(tmp_path / "ae") is None
    assert describe_run(tmp_path / "torus" / "polar_seed0") is None
    assert (tmp_path / "notes.txt").read_text() == "mine"
    _replace_or_refuse(tmp_path, overwrite=False)  # nothing left to refuse
