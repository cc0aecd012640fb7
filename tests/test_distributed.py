"""Training and evaluation on many processes (dgmlab.distributed): real processes, the gloo backend, loopback.

Two ranks with per-rank batch B/2 must give the parameters and metrics of one process with batch B (float64,
1e-10); a rank that dies or hangs must end the other with a clear error and leave the last checkpoint intact;
a run must resume on another number of processes; evaluation on two ranks must equal evaluation on one.
The multi-process tests start ``tests/distributed_worker.py`` under torchrun or by hand, one thread each.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from dgmlab import distributed
from dgmlab.data import TensorBatches
from dgmlab.data.views import dynamic_binarize
from dgmlab.errors import TrainingError
from dgmlab.experiments.runs import evaluate_run
from dgmlab.models import VAE
from dgmlab.objectives import negative_elbo
from dgmlab.train import evaluate

ROOT = Path(__file__).resolve().parents[1]
WORKER = ROOT / "tests" / "distributed_worker.py"
PYTHON = sys.executable


def _env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR",
                                                            "MASTER_PORT", "LOCAL_WORLD_SIZE")}
    env.update({"OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1", **extra})
    return env


def _torchrun(args: list[str], nproc: int = 2, timeout: float = 180) -> subprocess.CompletedProcess[str]:
    command = [PYTHON, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={nproc}", *args]
    done = subprocess.run(command, env=_env(), capture_output=True, text=True, timeout=timeout, cwd=ROOT)
    assert done.returncode == 0, done.stderr[-3000:]
    return done


def _worker(out: Path, *args: str, nproc: int = 1) -> None:
    if nproc == 1:
        done = subprocess.run([PYTHON, str(WORKER), "--out", str(out), *args], env=_env(), capture_output=True,
                              text=True, timeout=180)
        assert done.returncode == 0, done.stderr[-3000:]
    else:
        _torchrun([str(WORKER), "--out", str(out), *args], nproc=nproc)


def _weights(path: Path) -> dict[str, torch.Tensor]:
    return {k: v for k, v in load_file(str(path)).items() if v.is_floating_point()}


def _max_difference(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> float:
    assert a.keys() == b.keys()
    return max(float((a[k] - b[k]).abs().max()) for k in a)


def _metrics(run: Path) -> list[dict]:
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]


def _assert_same_metrics(a: list[dict], b: list[dict], tolerance: float = 1e-10) -> None:
    assert [r["epoch"] for r in a] == [r["epoch"] for r in b]
    for ra, rb in zip(a, b, strict=True):
        assert ra["step"] == rb["step"]
        for split in ("train", "test"):
            assert ra[split].keys() == rb[split].keys()
            for term in ra[split]:
                assert ra[split][term] == pytest.approx(rb[split][term], rel=tolerance, abs=tolerance), (split, term)


@pytest.fixture(scope="module")
def one_process(tmp_path_factory) -> Path:
    """The reference: one process, global batch 31, 2 epochs."""
    out = tmp_path_factory.mktemp("one")
    _worker(out, "--epochs", "2")
    return out


# ------------------------------------------------------------------ in one process
def test_shards_partition_every_batch():
    for count in range(0, 12):
        for world in range(1, 5):
            bounds = [distributed.shard_bounds(count, r, world) for r in range(world)]
            assert bounds[0][0] == 0 and bounds[-1][1] == count
            assert all(a[1] == b[0] for a, b in zip(bounds, bounds[1:], strict=False))
            sizes = [end - start for start, end in bounds]
            assert max(sizes) - min(sizes) <= 1


def test_sharded_batches_are_the_global_batches_with_their_randomness():
    grey = torch.rand(23, 5, generator=torch.Generator().manual_seed(0))
    batches = TensorBatches(grey, torch.arange(23), batch_size=7, seed=4, transform=dynamic_binarize)
    batches.set_epoch(3)
    whole = list(batches)
    parts = []
    for rank in range(3):
        sharded = distributed.ShardedBatches(batches, distributed.Group(rank, 3))
        sharded.set_epoch(3)
        parts.append(list(sharded))
    assert len(sharded) == len(whole) == 4
    for j, global_batch in enumerate(whole):
        assert {size for part in parts for _, size in [part[j]]} == {len(global_batch[0])}
        for position in (0, 1):  # the binarized images and the labels
            joined = torch.cat([part[j][0][position] for part in parts])
            assert torch.equal(joined, global_batch[position])


def test_one_process_is_a_group_of_one():
    group = distributed.current()
    assert (group.rank, group.world_size, group.is_main, group.distributed) == (0, 1, True, False)
    t = torch.arange(3.0)
    assert torch.equal(distributed.all_reduce_sum_(t.clone()), t) and torch.equal(distributed.broadcast_(t.clone()), t)
    assert distributed.all_reduce_sums({"a": 1.5}, 4, 2.0) == ({"a": 1.5}, 4, [2.0])
    with distributed.session() as inside:
        assert inside == group


def test_session_outside_torchrun_says_how_to_start(monkeypatch):
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.delenv("MASTER_ADDR", raising=False)
    monkeypatch.setenv("RANK", "0")
    with pytest.raises(TrainingError, match="torchrun --nproc-per-node 2"):
        with distributed.session("cpu"):
            pass
    monkeypatch.setenv("MASTER_ADDR", "127.0.0.1")
    monkeypatch.setenv("MASTER_PORT", "29500")
    monkeypatch.setenv("DGMLAB_DIST_TIMEOUT", "soon")
    with pytest.raises(TrainingError, match="DGMLAB_DIST_TIMEOUT='soon' must be a positive number"):
        with distributed.session("cpu"):
            pass
    monkeypatch.delenv("DGMLAB_DIST_TIMEOUT")
    if not torch.cuda.is_available():
        with pytest.raises(TrainingError, match="device cuda was asked for, but CUDA is not available"):
            with distributed.session("cuda"):
                pass
    monkeypatch.setenv("WORLD_SIZE", "two")
    with pytest.raises(TrainingError, match="WORLD_SIZE='two' must be an integer"):
        with distributed.session("cpu"):
            pass


def test_only_rank_0_probes_the_run_lock_before_training(monkeypatch, tmp_path):
    """Under torchrun rank 0 may already hold the run's lock (or be probing it) when another rank makes its
    early checks: those ranks must not probe the lock, or they fail with 'in use by another process'."""
    from dgmlab.errors import RunExistsError, RunLockedError
    from dgmlab.experiments import runs
    from dgmlab.rundir import lock_run

    run = tmp_path / "run"
    with lock_run(run):  # held here, as rank 0 holds it once training starts
        monkeypatch.setattr(runs.distributed, "current", lambda: distributed.Group(rank=1, world_size=2))
        runs._check_early(run, overwrite=False, new=True)
        runs._check_early(run, overwrite=False, new=False)
        monkeypatch.setattr(runs.distributed, "current", lambda: distributed.Group())
        with pytest.raises(RunLockedError, match="in use by another process"):
            runs._check_early(run, overwrite=False, new=True)
    (run / "config.json").write_text("{}")
    (run / "metrics.jsonl").write_text("")
    monkeypatch.setattr(runs.distributed, "current", lambda: distributed.Group(rank=1, world_size=2))
    with pytest.raises(RunExistsError):  # every rank still gives the verdict on an existing run
        runs._check_early(run, overwrite=False, new=True)


def test_cli_refuses_commands_that_do_not_run_on_many_processes(monkeypatch, capsys):
    from dgmlab.cli import main

    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("RANK", "1")
    assert main(["configs"]) == 2
    assert "only train and eval run on many processes; run dgmlab configs without torchrun" in capsys.readouterr().err


def test_evaluation_draws_per_batch_so_it_can_be_shared_out():
    """A stochastic test term (one-sample ELBO) is a function of (seed, batch index): evaluating batches
    one at a time with the same per-batch seeds gives the same number as evaluating them all."""
    torch.manual_seed(0)
    model = VAE(6, [8, 4])
    x = torch.bernoulli(torch.full((40, 6), 0.4, dtype=torch.float32), generator=torch.Generator().manual_seed(1))
    batches = TensorBatches(x, batch_size=9, shuffle=False)

    def objective(m, b):
        return negative_elbo(m, b[0])

    whole = evaluate(model, objective, batches, seed=7)
    assert evaluate(model, objective, batches, seed=7) == whole
    assert evaluate(model, objective, batches, seed=8) != whole
    totals = 0.0
    for j, (batch,) in enumerate(batches):
        torch.manual_seed(distributed.derived_seed(7, j))
        with torch.no_grad():
            model.eval()
            totals += float(negative_elbo(model, batch).loss.double().sum())
    assert whole["loss"] == pytest.approx(totals / 40, rel=1e-12)


# ------------------------------------------------------------------ real processes
@pytest.mark.slow
def test_two_ranks_with_half_batches_equal_one_process(one_process, tmp_path):
    _worker(tmp_path, "--epochs", "2", nproc=2)
    rank0, rank1 = _weights(tmp_path / "rank0.safetensors"), _weights(tmp_path / "rank1.safetensors")
    # the parameter average handed back (EMA) is the same on both ranks, and equal to one process's
    assert _max_difference(rank0, rank1) == 0.0
    assert _max_difference(rank0, _weights(one_process / "rank0.safetensors")) < 1e-10
    _assert_same_metrics(_metrics(tmp_path / "run"), _metrics(one_process / "run"))
    # the checkpoint (written by rank 0 alone) holds the same weights
    assert _max_difference(_weights(tmp_path / "run" / "checkpoint" / "state.safetensors"),
                           _weights(one_process / "run" / "checkpoint" / "state.safetensors")) < 1e-10


@pytest.mark.slow
def test_a_one_process_run_resumed_on_two_ranks(one_process, tmp_path):
    _worker(tmp_path, "--epochs", "1")
    _worker(tmp_path, "--epochs", "2", "--resume", nproc=2)
    reference = _weights(one_process / "rank0.safetensors")
    assert _max_difference(_weights(tmp_path / "rank0.safetensors"), reference) < 1e-10
    _assert_same_metrics(_metrics(tmp_path / "run"), _metrics(one_process / "run"))


@pytest.mark.slow
def test_a_vqvae_codebook_stays_the_same_on_every_rank(tmp_path):
    """The EMA codebook moves by code statistics added over the ranks, and the dead-code restarts (after every
    unused step here) are rank 0's, broadcast: both ranks end with the same codebook, counts and sums."""
    _worker(tmp_path, "--model", "vqvae", "--epochs", "2", "--batch-size", "16", nproc=2)
    rank0 = load_file(str(tmp_path / "rank0.safetensors"))
    rank1 = load_file(str(tmp_path / "rank1.safetensors"))
    assert rank0.keys() == rank1.keys() and any("ema_sum" in k for k in rank0)
    for name in rank0:
        assert torch.equal(rank0[name], rank1[name]), name
    steps = next(v for k, v in rank0.items() if k.endswith("quantizer.steps"))
    assert int(steps) == 2 * 13  # 203 examples in global batches of 16


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _start_by_hand(out: Path, *args: str, timeout: str = "60") -> list[subprocess.Popen[str]]:
    port = str(_free_port())
    return [subprocess.Popen([PYTHON, str(WORKER), "--out", str(out), *args], stderr=subprocess.PIPE, text=True,
                             env=_env(RANK=str(r), WORLD_SIZE="2", LOCAL_RANK=str(r), MASTER_ADDR="127.0.0.1",
                                      MASTER_PORT=port, DGMLAB_DIST_TIMEOUT=timeout))
            for r in range(2)]


def _wait_for_epochs(run: Path, epochs: int, processes: list[subprocess.Popen[str]], limit: float = 120) -> None:
    started = time.monotonic()
    metrics = run / "metrics.jsonl"
    while not (metrics.exists() and len(metrics.read_text().splitlines()) >= epochs):
        assert all(p.poll() is None for p in processes), processes[0].stderr.read()
        assert time.monotonic() - started < limit, "the workers did not reach the epoch in time"
        time.sleep(0.05)


def _signal_rank_one(processes: list[subprocess.Popen[str]], run: Path, sig: int,
                     pause: float = 0.0) -> tuple[int, float, str]:
    """Once epoch 1 is written (and ``pause`` seconds more), send ``sig`` to rank 1; return rank 0's exit status,
    the seconds it took to end after the signal, and its standard error. Both processes are gone afterwards."""
    try:
        _wait_for_epochs(run, 1, processes)
        time.sleep(pause)
        processes[1].send_signal(sig)
        sent = time.monotonic()
        returncode = processes[0].wait(timeout=60)
        return returncode, time.monotonic() - sent, processes[0].stderr.read()
    finally:
        for p in processes:
            p.kill()
            p.wait()


@pytest.mark.slow
def test_a_killed_rank_ends_the_other_and_the_run_resumes_on_one_process(one_process, tmp_path):
    """Rank 1 is killed inside epoch 2 of a run that checkpoints after every step: rank 0 stops within seconds
    with one clear line, the checkpoint it left (inside the epoch) is whole, and one process resumes from it
    to the parameters and metrics of the uninterrupted run."""
    processes = _start_by_hand(tmp_path, "--epochs", "2", "--step-delay", "0.05", "--checkpoint-every-step")
    returncode, waited, stderr = _signal_rank_one(processes, tmp_path / "run", signal.SIGKILL, pause=0.12)
    assert returncode == 2 and waited < 30
    # during a step as a rule; on a loaded machine the kill can land in a collective between two steps
    assert "rank 0 of 2: another process of this run stopped or stopped answering during " in stderr, stderr
    assert "the run's last checkpoint is intact" in stderr and "Traceback" not in stderr
    _worker(tmp_path, "--epochs", "2", "--resume", "--checkpoint-every-step")
    reference = _weights(one_process / "rank0.safetensors")
    assert _max_difference(_weights(tmp_path / "rank0.safetensors"), reference) < 1e-10
    _assert_same_metrics(_metrics(tmp_path / "run"), _metrics(one_process / "run"))


@pytest.mark.slow
def test_a_hung_rank_ends_the_other_after_the_timeout(tmp_path):
    processes = _start_by_hand(tmp_path, "--epochs", "50", "--step-delay", "0.02", timeout="3")
    returncode, waited, stderr = _signal_rank_one(processes, tmp_path / "run", signal.SIGSTOP)
    assert returncode == 2 and waited < 20, stderr
    assert "another process of this run stopped or stopped answering" in stderr and "Timed out" in stderr


MNIST_VAE = """
name = "tiny_vae"
[model]
name = "vae"
hidden_dims = [32, 4]
likelihood = "bernoulli"
[data]
name = "mnist"
view = "dynamic"
batch_size = 64
limit = 320
test_limit = 250
[objective]
name = "elbo"
[train]
epochs = 1
lr = 1e-3
"""


@pytest.mark.slow
def test_cli_train_and_eval_under_torchrun(tmp_path):
    """``torchrun -m dgmlab train`` writes one run (rank 0 alone reports), and ``dgmlab eval`` on two ranks,
    with the importance-weighted bound, gives the numbers of one process."""
    config = tmp_path / "tiny_vae.toml"
    config.write_text(MNIST_VAE)
    run = tmp_path / "run"
    done = _torchrun(["-m", "dgmlab", "train", "--config", str(config), "--out", str(run), "--no-progress",
                      "--device", "cpu"])
    assert done.stdout.count("run written to") == 1
    records = _metrics(run)
    assert len(records) == 1 and records[0]["step"] == 5  # 320 examples in global batches of 64
    assert 200 < records[0]["train"]["loss"] < 600
    two = _torchrun(["-m", "dgmlab", "eval", str(run), "--iw-samples", "40", "--device", "cpu"])
    from_two = json.loads(two.stdout)
    assert json.loads((run / "eval.json").read_text()) == from_two  # written once, by rank 0
    from_one = evaluate_run(run, iw_samples=40, device="cpu")  # this process: a group of one
    assert from_two.keys() == from_one.keys()
    for key in ("test_neg_elbo_nats", "test_nll_iw40_nats"):
        assert from_two[key] == pytest.approx(from_one[key], rel=1e-9)
    for term, value in from_one["test"].items():
        assert from_two["test"][term] == pytest.approx(value, rel=1e-9)
