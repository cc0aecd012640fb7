"""The trainer's compiled steps (``TrainSettings(compile=True)``): exact resume, the same training as the eager
step up to rounding, and a clear fallback where torch.compile cannot run."""

from __future__ import annotations

import warnings

import pytest
import torch
from torch._dynamo.utils import counters

import dgmlab.train as train_module
from dgmlab.data import TensorBatches
from dgmlab.models import VAE
from dgmlab.objectives import negative_elbo
from dgmlab.train import CompiledStep, TrainingError, TrainSettings, compiler_missing, fit

NO_COMPILER = compiler_missing(torch.device("cpu"))


def elbo(model, batch):
    return negative_elbo(model, batch[0], kl="analytic")


def data():
    g = torch.Generator().manual_seed(0)
    x = torch.bernoulli(torch.full((96, 12), 0.3), generator=g)
    return TensorBatches(x, batch_size=32, seed=0), TensorBatches(x[:32], batch_size=32, shuffle=False)


def settings(**kwargs):
    return TrainSettings(progress=False, seed=5, **kwargs)


def train(tmp_path, folder, epochs, compile_=True, resume=False, model=None):
    train_batches, test_batches = data()
    if model is None:
        torch.manual_seed(0)
        model = VAE(12, [16, 6], likelihood="bernoulli")
    history = fit(model, elbo, train_batches, test_batches, settings(epochs=epochs, compile=compile_),
                  run_dir=tmp_path / folder, resume=resume)
    return model, history


@pytest.mark.skipif(NO_COMPILER is not None, reason=f"torch.compile cannot run here: {NO_COMPILER}")
def test_a_compiled_run_compiles_resumes_exactly_and_trains_as_the_eager_one(tmp_path):
    counters.clear()
    with warnings.catch_warnings():
        warnings.simplefilter("error", RuntimeWarning)  # no fallback to the eager step
        whole_model, whole = train(tmp_path, "whole", 2)
        assert counters["stats"]["unique_graphs"] >= 1  # the step was compiled
        first_model, _ = train(tmp_path, "halves", 1)
        resumed_model, resumed = train(tmp_path, "halves", 2, resume=True, model=first_model)
    for a, b in zip(whole_model.state_dict().values(), resumed_model.state_dict().values(), strict=True):
        assert torch.equal(a, b)  # bit for bit, as an eager run resumes
    assert [r["train"] for r in whole.records] == [r["train"] for r in resumed.records]
    eager_model, eager = train(tmp_path, "eager", 2, compile_=False)
    # the same random draws, kernels that round differently: the same training up to rounding
    for a, b in zip(whole_model.state_dict().values(), eager_model.state_dict().values(), strict=True):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5)
    assert whole.last("train", "loss") == pytest.approx(eager.last("train", "loss"), rel=1e-5)
    assert whole.records[-1]["test"] == pytest.approx(eager.records[-1]["test"], rel=1e-5)  # evaluation: eager


def test_without_a_cpp_compiler_the_run_warns_and_trains_eagerly(tmp_path, monkeypatch):
    monkeypatch.setattr(train_module.shutil, "which", lambda name: None)
    monkeypatch.delenv("CXX", raising=False)
    with pytest.warns(RuntimeWarning, match="without torch.compile: no C\\+\\+ compiler was found"):
        fallback_model, _ = train(tmp_path, "fallback", 1)
    eager_model, _ = train(tmp_path, "eager", 1, compile_=False)
    for a, b in zip(fallback_model.state_dict().values(), eager_model.state_dict().values(), strict=True):
        assert torch.equal(a, b)


def test_a_step_that_fails_to_compile_runs_again_eagerly_from_the_same_random_state():
    from torch._inductor.exc import InductorError

    def step(x):
        return x + torch.randn(3)

    compiled = CompiledStep(step, torch.device("cpu"))

    def failing(x):
        torch.randn(7)  # a partial run that drew random numbers before the compiler failed
        raise InductorError(RuntimeError("C++ compile error\nlong log"), "step")

    compiled.compiled = failing
    torch.manual_seed(1)
    with pytest.warns(RuntimeWarning, match="could not compile the step"):
        got = compiled(torch.zeros(3))
    torch.manual_seed(1)
    assert torch.equal(got, step(torch.zeros(3)))  # the draws of an eager step, not shifted by the failed one
    assert compiled.compiled is None and "could not compile" in compiled.reason
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        compiled(torch.zeros(3))  # eager from then on, warned once


def test_compile_must_be_a_boolean_and_trains_one_process(monkeypatch):
    with pytest.raises(ValueError, match="compile must be true or false"):
        TrainSettings(compile="yes").validate()

    class TwoRanks:
        distributed = True

    monkeypatch.setattr(train_module.distributed, "current", lambda: TwoRanks())
    train_batches, _ = data()
    with pytest.raises(TrainingError, match="on many processes .*without it"):
        fit(VAE(12, [16, 6]), elbo, train_batches, settings=settings(epochs=1, compile=True))
