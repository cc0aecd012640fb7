"""Reads from the device, deferred: dgmlab.checks and the trainer's per-step values.

On an accelerator the trainer reads its steps' loss terms and the models' input checks every SYNC_EVERY steps
instead of at every step. On the CPU it reads every step; these tests force the deferred schedule on the CPU
(``_sync_interval``) and check that it changes no number and still stops a bad run with the right message,
at the right step, with the last checkpoint intact.
"""

from __future__ import annotations

import pytest
import torch

import dgmlab.train as train_module
from dgmlab import checks
from dgmlab.data import TensorBatches
from dgmlab.models import MADE, VAE
from dgmlab.objectives import exact_nll, negative_elbo
from dgmlab.train import NonFiniteLossError, RunningMeans, TrainSettings, fit


def quiet(**kwargs):
    return TrainSettings(progress=False, seed=3, **kwargs)


def elbo(model, batch):
    return negative_elbo(model, batch[0], kl="monte_carlo")


def binary_data(n=100, d=12):
    g = torch.Generator().manual_seed(0)
    x = torch.bernoulli(torch.full((n, d), 0.3), generator=g)
    return TensorBatches(x, batch_size=16, seed=0), TensorBatches(x[:40], batch_size=20, shuffle=False)


def deferred_every(monkeypatch, steps):
    monkeypatch.setattr(train_module, "_sync_interval", lambda device: steps)


def test_a_check_is_judged_at_once_outside_deferred():
    described = []
    checks.require(torch.tensor(True), lambda: described.append(1) or "never")
    assert described == []  # the message is worded only for a failed check
    with pytest.raises(ValueError, match="bad input"):
        checks.require(torch.tensor(False), lambda: "bad input")
    with pytest.raises(TypeError, match="typed"):
        checks.require(False, lambda: "typed", TypeError)
    assert not checks.is_deferring() and checks.pending_count() == 0


def test_deferred_checks_wait_for_the_flush_and_raise_the_first_failure_in_order():
    with checks.deferred():
        checks.require(torch.tensor(True), lambda: "first passes")
        checks.require(torch.tensor(False), lambda: "second fails")
        checks.require(torch.tensor(False), lambda: "third fails too")
        assert checks.pending_count() == 3  # nothing judged yet
        with pytest.raises(ValueError, match="^second fails$"):
            checks.flush()
        assert checks.pending_count() == 0
        checks.require(torch.tensor(True), lambda: "fine")
    with pytest.raises(ValueError, match="at the end"), checks.deferred():  # the block's end flushes
        checks.require(torch.tensor(False), lambda: "at the end")
    with pytest.raises(KeyError), checks.deferred():  # a block left by an error drops what it recorded
        checks.require(torch.tensor(False), lambda: "dropped")
        raise KeyError("first")
    assert not checks.is_deferring()


def test_model_input_checks_are_deferred_inside_and_immediate_outside():
    made = MADE(6, [16], seed=0)
    grey = torch.full((4, 6), 0.5)
    with pytest.raises(ValueError, match="must be 0 or 1"):
        made.log_prob(grey)
    with checks.deferred():
        made.log_prob(grey)  # recorded, not raised
        assert checks.pending_count() == 1
        with pytest.raises(ValueError, match="must be 0 or 1"):
            checks.flush()


def test_running_means_tell_nan_from_infinite_and_add_in_order():
    means = RunningMeans()
    means.update({"loss": torch.tensor([1.0, 2.0]), "kl": torch.tensor([3.0, 4.0])}, step=1)
    means.update({"loss": torch.tensor([5.0]), "kl": torch.tensor([float("inf")])}, step=2)
    means.update({"loss": torch.tensor([float("inf"), -float("inf")]), "kl": torch.tensor([1.0, 1.0])}, step=3)
    assert means.flush() == (2, "kl", "infinite")  # the first bad step, not the later +inf - inf
    assert means.count == 5 and means.sums["loss"] != means.sums["loss"]  # NaN after step 3
    means.update({"loss": torch.tensor([float("nan"), 1.0])}, step=4)
    assert means.flush() == (4, "loss", "NaN")
    means.sums = {"loss": 1.0}  # a restored running sum drops nothing it should not
    assert means.flush() is None and means.means() == {"loss": 1.0 / means.count}


@pytest.mark.parametrize("model_kind", ["vae", "made_ema"])
def test_reading_every_few_steps_changes_no_number(monkeypatch, tmp_path, model_kind):
    train, test = binary_data()

    def run(folder):
        torch.manual_seed(0)
        if model_kind == "vae":
            model, objective, extra = VAE(12, [16, 6], likelihood="bernoulli"), elbo, {}
        else:
            model, objective, extra = MADE(12, [24], seed=0), lambda m, b: exact_nll(m, b[0]), {"ema_decay": 0.9}
        history = fit(model, objective, train, test, quiet(epochs=2, **extra), run_dir=tmp_path / folder)
        return model, history

    every_step_model, every_step = run("every")
    deferred_every(monkeypatch, 4)  # 7 steps per epoch: reads at steps 4, 8, 12 and at each epoch's end
    deferred_model, deferred = run("deferred")
    for a, b in zip(every_step_model.state_dict().values(), deferred_model.state_dict().values(), strict=True):
        assert torch.equal(a, b)
    for a, b in zip(every_step.records, deferred.records, strict=True):
        assert a["train"] == b["train"] and a["test"] == b["test"]


def test_a_deferred_read_reports_the_first_bad_step_and_keeps_the_checkpoint(monkeypatch, tmp_path):
    train, test = binary_data()
    model = VAE(12, [16, 6], likelihood="bernoulli")
    fit(model, elbo, train, test, quiet(epochs=1), run_dir=tmp_path)
    before = (tmp_path / "checkpoint" / "state.safetensors").read_bytes()
    calls = {"n": 0}

    def exploding(m, batch):
        calls["n"] += 1
        out = elbo(m, batch)
        if calls["n"] >= 2:  # step 9 (the second of epoch 2) and every step after it
            out.terms["kl"] = out.terms["kl"].abs() * float("inf")
        return out

    deferred_every(monkeypatch, 4)
    with pytest.raises(NonFiniteLossError, match=r"'kl' became infinite at step 9 \(epoch 2\).*intact"):
        fit(model, exploding, train, test, quiet(epochs=2), run_dir=tmp_path, resume=True)
    assert calls["n"] == 5  # steps 8 to 12: read after step 12, not after the bad step 9
    assert (tmp_path / "checkpoint" / "state.safetensors").read_bytes() == before


def test_a_bad_batch_under_deferred_reads_ends_the_run_with_the_models_own_error(monkeypatch, tmp_path):
    x = torch.bernoulli(torch.full((64, 6), 0.5), generator=torch.Generator().manual_seed(1))
    x[40, 2] = 0.5  # one grey value in the third batch of the unshuffled data
    deferred_every(monkeypatch, 8)
    with pytest.raises(ValueError, match="must be 0 or 1"):
        fit(MADE(6, [16], seed=0), lambda m, b: exact_nll(m, b[0]),
            TensorBatches(x, batch_size=16, shuffle=False), settings=quiet(epochs=1), run_dir=tmp_path)
    assert not (tmp_path / "checkpoint").exists()  # no checkpoint of a model that trained on the bad batch
    assert not checks.is_deferring()
