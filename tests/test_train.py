"""The trainer: true means, run directory, atomic checkpoints, bit-exact resume, non-finite losses."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file

import dgmlab.checkpoint as checkpoint_module
from dgmlab.checkpoint import CheckpointError, load_checkpoint, save_checkpoint
from dgmlab.data import TensorBatches
from dgmlab.models import VAE
from dgmlab.objectives import LossTerms, negative_elbo
from dgmlab.train import NonFiniteLossError, RunningMeans, TrainingError, TrainSettings, fit, resolve_device


def elbo(model, batch):
    return negative_elbo(model, batch[0], kl="monte_carlo")


def make_data(n=100, d=12, seed=0):
    # binary data from two prototypes: a VAE can learn it, so its loss must fall
    g = torch.Generator().manual_seed(seed)
    prototypes = torch.tensor([[0.9] * (d // 2) + [0.1] * (d - d // 2), [0.1] * (d // 2) + [0.9] * (d - d // 2)])
    x = torch.bernoulli(prototypes[torch.randint(0, 2, (n,), generator=g)], generator=g)
    return TensorBatches(x, batch_size=32, seed=seed), TensorBatches(x[:40], batch_size=40, shuffle=False)


def make_model(seed=0):
    torch.manual_seed(seed)
    return VAE(12, [16, 6], likelihood="bernoulli")


def quiet(**kwargs):
    return TrainSettings(progress=False, **kwargs)


def test_running_means_weight_every_example_once():
    means = RunningMeans()
    means.update({"loss": torch.tensor([1.0, 1.0, 1.0])})
    means.update({"loss": torch.tensor([4.0])})  # a short last batch
    assert means.means()["loss"] == pytest.approx(7 / 4)  # not the mean of batch means (2.5)


def test_epoch_mean_is_the_true_mean_over_the_data():
    # a model-free objective: the per-example "loss" is the example itself, so the epoch mean is known
    weight = torch.nn.Parameter(torch.zeros(()))
    model = torch.nn.Module()
    model.w = weight
    values = torch.arange(10.0)

    def objective(m, batch):
        return LossTerms(loss=batch[0] + 0 * m.w, terms={"value": batch[0]})

    history = fit(model, objective, TensorBatches(values, batch_size=4), settings=quiet(epochs=1))
    assert history.last("train", "value") == pytest.approx(values.mean().item())


def test_run_directory_contents(tmp_path):
    train, test = make_data()
    fit(make_model(), elbo, train, test, quiet(epochs=2, lr=1e-2), run_dir=tmp_path,
        config={"model": {"name": "vae"}})
    records = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in records] == [1, 2]
    assert set(records[0]["train"]) == {"loss", "neg_elbo", "recon_nll", "kl"}
    assert set(records[0]["test"]) == set(records[0]["train"])
    assert records[0]["units"]["kl"] == "nats" and records[1]["step"] == 8
    config = json.loads((tmp_path / "config.json").read_text())
    assert config["model"] == {"name": "vae"} and config["train"]["epochs"] == 2
    assert (tmp_path / "config.json").stat().st_mode & 0o777 == 0o644  # readable by others, as a plain file
    tensors = load_file(str(tmp_path / "checkpoint" / "state.safetensors"))
    assert any(k.startswith("model.") for k in tensors) and any(k.startswith("optimizer.") for k in tensors)
    assert "rng.torch" in tensors
    assert not list((tmp_path / "checkpoint").glob("*.tmp"))


def test_training_reduces_the_loss():
    train, test = make_data(n=256)
    history = fit(make_model(), elbo, train, test, quiet(epochs=15, lr=1e-2))
    first, last = history.records[0]["train"]["loss"], history.records[-1]["train"]["loss"]
    assert last < first - 1.0


def test_resume_is_bit_exact(tmp_path):
    # 2 epochs in one go == 1 epoch, resume, 1 more epoch: parameter for parameter
    train, test = make_data()
    straight = make_model()
    fit(straight, elbo, train, test, quiet(epochs=2, lr=1e-2, seed=3), run_dir=tmp_path / "a")

    train, test = make_data()
    fit(make_model(), elbo, train, test, quiet(epochs=1, lr=1e-2, seed=3), run_dir=tmp_path / "b")
    torch.manual_seed(12345)  # whatever happens in between must not matter
    resumed = make_model(seed=99)
    train, test = make_data()
    history = fit(resumed, elbo, train, test, quiet(epochs=2, lr=1e-2, seed=3), run_dir=tmp_path / "b",
                  resume=True)
    for (name, a), (_, b) in zip(straight.state_dict().items(), resumed.state_dict().items(), strict=True):
        assert torch.equal(a, b), name
    assert [r["epoch"] for r in history.records] == [1, 2]
    lines = (tmp_path / "b" / "metrics.jsonl").read_text().splitlines()
    assert lines == (tmp_path / "a" / "metrics.jsonl").read_text().splitlines() or \
        [json.loads(x)["train"] for x in lines] == \
        [json.loads(x)["train"] for x in (tmp_path / "a" / "metrics.jsonl").read_text().splitlines()]


def test_weight_average_follows_its_update_rule(tmp_path):
    # the trainer's average must equal theta_bar_t = theta_bar_{t-1} + (1 - beta_t)(theta_t - theta_bar_{t-1}),
    # beta_t = min(beta, (1 + t) / (10 + t)), computed here from the raw weights after each of 4 steps
    beta, steps = 0.6, 4
    raw = []
    for t in range(1, steps + 1):
        train, _ = make_data()
        model = make_model()
        fit(model, elbo, train, settings=quiet(epochs=1, lr=1e-2, seed=3, max_steps=t))
        raw.append({k: v.detach().clone() for k, v in model.named_parameters()})
    expected = {k: v.detach().clone() for k, v in make_model().named_parameters()}
    for t, theta in enumerate(raw, start=1):
        weight = 1 - min(beta, (1 + t) / (10 + t))
        expected = {k: expected[k] + weight * (theta[k] - expected[k]) for k in expected}

    train, test = make_data()
    averaged = make_model()
    fit(averaged, elbo, train, test, quiet(epochs=1, lr=1e-2, seed=3, max_steps=steps, ema_decay=beta),
        run_dir=tmp_path)
    for name, value in averaged.named_parameters():  # fit hands back the averaged weights
        torch.testing.assert_close(value.detach(), expected[name], rtol=1e-6, atol=1e-7)
        assert not torch.allclose(value, raw[-1][name]), name
    stored = load_file(tmp_path / "checkpoint" / "state.safetensors")
    for name in expected:  # the checkpoint: averaged weights to evaluate, raw weights to resume
        torch.testing.assert_close(stored[f"model.{name}"], expected[name], rtol=1e-6, atol=1e-7)
        assert torch.equal(stored[f"raw.{name}"], raw[-1][name])


def test_resume_with_a_weight_average_is_bit_exact(tmp_path):
    settings = dict(lr=1e-2, seed=3, ema_decay=0.9)
    train, test = make_data()
    straight = make_model()
    fit(straight, elbo, train, test, quiet(epochs=2, **settings), run_dir=tmp_path / "a")
    train, test = make_data()
    fit(make_model(), elbo, train, test, quiet(epochs=1, **settings), run_dir=tmp_path / "b")
    resumed = make_model(seed=99)
    train, test = make_data()
    fit(resumed, elbo, train, test, quiet(epochs=2, **settings), run_dir=tmp_path / "b", resume=True)
    for (name, a), (_, b) in zip(straight.state_dict().items(), resumed.state_dict().items(), strict=True):
        assert torch.equal(a, b), name
    a = load_file(tmp_path / "a" / "checkpoint" / "state.safetensors")
    b = load_file(tmp_path / "b" / "checkpoint" / "state.safetensors")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a if k.startswith(("model.", "raw.")))


def test_time_limit_is_a_budget_no_epoch_ends_past_it(monkeypatch):
    # a fake clock: every epoch takes exactly 10 s, so the budget of 25 s fits two epochs (20 s), not three
    import dgmlab.train as train_module

    clock = iter(range(0, 10_000, 10))  # two readings per epoch
    monkeypatch.setattr(train_module.time, "perf_counter", lambda: float(next(clock)))
    train, _ = make_data()
    history = fit(make_model(), elbo, train, settings=quiet(epochs=10, time_limit=25))
    assert [r["seconds"] for r in history.records] == [10.0, 10.0]  # a third would end at 30 s
    # with max_steps ending the third epoch after 1 of its 4 batches, it would end at 22.5 s: it runs
    clock = iter(range(0, 10_000, 10))
    history = fit(make_model(), elbo, train, settings=quiet(epochs=10, time_limit=25, max_steps=9))
    assert [r["step"] for r in history.records] == [4, 8, 9]


def test_resume_of_a_finished_run_trains_nothing(tmp_path):
    train, test = make_data()
    fit(make_model(), elbo, train, test, quiet(epochs=1), run_dir=tmp_path)
    model = make_model(seed=5)
    fit(model, elbo, train, test, quiet(epochs=1), run_dir=tmp_path, resume=True)
    reference = make_model()
    load_checkpoint(tmp_path / "checkpoint", reference)
    assert all(torch.equal(a, b) for a, b in zip(model.state_dict().values(), reference.state_dict().values(),
                                                   strict=True))


def test_crash_while_saving_leaves_the_last_checkpoint_intact(tmp_path, monkeypatch):
    model = make_model()
    optimizer = torch.optim.Adam(model.parameters())
    save_checkpoint(tmp_path, model, optimizer, epoch=1, step=10)
    before = (tmp_path / "state.safetensors").read_bytes()

    def crash(tensors, filename, metadata=None):
        with open(filename, "wb") as handle:
            handle.write(b"half a file")
        raise OSError("disk full")

    monkeypatch.setattr(checkpoint_module, "save_file", crash)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(1.0)
    with pytest.raises(OSError, match="disk full"):
        save_checkpoint(tmp_path, model, optimizer, epoch=2, step=20)
    assert (tmp_path / "state.safetensors").read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["state.safetensors"]
    assert load_checkpoint(tmp_path, make_model()).epoch == 1


def test_corrupt_or_missing_checkpoint_is_a_clear_error(tmp_path):
    with pytest.raises(CheckpointError, match="no checkpoint"):
        load_checkpoint(tmp_path, make_model())
    (tmp_path / "state.safetensors").write_bytes(b"\x00" * 20)
    with pytest.raises(CheckpointError, match="unreadable"):
        load_checkpoint(tmp_path, make_model())


def test_checkpoint_of_another_architecture_is_a_clear_error(tmp_path):
    save_checkpoint(tmp_path, make_model(), None, epoch=1, step=1)
    with pytest.raises(CheckpointError, match="does not fit this model"):
        load_checkpoint(tmp_path, VAE(12, [8, 4]))


def test_non_finite_loss_names_the_term_and_step_and_keeps_the_checkpoint(tmp_path):
    train, test = make_data()
    model = make_model()
    fit(model, elbo, train, test, quiet(epochs=1), run_dir=tmp_path)
    before = (tmp_path / "checkpoint" / "state.safetensors").read_bytes()
    calls = {"n": 0}

    def exploding(m, batch):
        calls["n"] += 1
        out = elbo(m, batch)
        if calls["n"] == 3:
            out.terms["kl"] = out.terms["kl"] * float("inf")
        return out

    with pytest.raises(NonFiniteLossError, match=r"'kl' became infinite at step 7 \(epoch 2\).*intact"):
        fit(model, exploding, train, test, quiet(epochs=2), run_dir=tmp_path, resume=True)
    assert (tmp_path / "checkpoint" / "state.safetensors").read_bytes() == before


def test_nan_in_the_loss_is_reported_as_nan():
    def nan_objective(m, batch):
        loss = batch[0].sum(-1) * float("nan") + 0 * sum(p.sum() for p in m.parameters())
        return LossTerms(loss=loss)

    train, _ = make_data()
    with pytest.raises(NonFiniteLossError, match="'loss' became NaN at step 1"):
        fit(make_model(), nan_objective, train, settings=quiet(epochs=1))


@pytest.mark.parametrize(
    ("settings", "message"),
    [
        (dict(epochs=0), "epochs must be a positive integer"),
        (dict(lr=-1e-3), "lr .*positive"),
        (dict(weight_decay=-1.0), "weight_decay"),
        (dict(lr_decay=1.5), "lr_decay"),
        (dict(device="tpu"), "auto, cpu, cuda, mps"),
        (dict(ema_decay=1.0), "ema_decay must be in \\(0, 1\\)"),
        (dict(precision="fp16"), "precision must be one of fp32, bf16"),
        (dict(grad_clip_norm=0.0), "grad_clip_norm must be a positive number"),
        (dict(warmup_steps=-5), "warmup_steps must be an integer >= 0"),
    ],
)
def test_bad_settings(settings, message):
    train, _ = make_data()
    with pytest.raises(ValueError, match=message):
        fit(make_model(), elbo, train, settings=quiet(**settings))


def test_resume_without_run_dir_and_empty_data():
    train, _ = make_data()
    with pytest.raises(TrainingError, match="run directory"):
        fit(make_model(), elbo, train, settings=quiet(epochs=1), resume=True)
    with pytest.raises(TrainingError, match="no batches"):
        fit(make_model(), elbo, [], settings=quiet(epochs=1))


def test_a_plain_dataloader_works():
    x = torch.rand(50, 12)
    loader = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(x), batch_size=16, shuffle=True)
    history = fit(make_model(), elbo, loader, settings=quiet(epochs=1))
    assert history.records[0]["step"] == 4


def test_device_resolution():
    assert resolve_device("cpu").type == "cpu"
    assert resolve_device("auto").type in {"cpu", "cuda", "mps"}
    if not torch.cuda.is_available():
        with pytest.raises(TrainingError, match="CUDA is not available"):
            resolve_device("cuda")


def test_epochs_in_budget_scales_with_the_budget_and_leaves_the_run_alone(monkeypatch):
    # a fake clock read before and after every probe step, 1 s apart: an epoch of 4 batches takes 4 s, and a
    # 100 s budget with the 0.92 margin fits int(92 / 4) = 23 epochs
    import dgmlab.train as train_module

    train, _ = make_data()  # 100 examples in batches of 32: 4 batches
    model = make_model()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    rng = torch.get_rng_state()
    clock = iter(range(0, 10_000))
    monkeypatch.setattr(train_module.time, "perf_counter", lambda: float(next(clock)))
    assert train_module.epochs_in_budget(model, elbo, train, seconds=100, probe_steps=30) == 23
    assert train_module.epochs_in_budget(model, elbo, train, seconds=1) == 1  # at least one epoch
    # in steps, the same probe: int(92 / 1) = 92 steps of 1 s (23 epochs of 4), and at least one step
    assert train_module.steps_in_budget(model, elbo, train, seconds=100, probe_steps=30) == 92
    assert train_module.steps_in_budget(model, elbo, train, seconds=10, margin=0.5) == 5
    assert train_module.steps_in_budget(model, elbo, train, seconds=0.1) == 1
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())  # probed on a copy
    assert torch.equal(torch.get_rng_state(), rng)


# ----------------------------------------------------------------------------------------------------------
# Mixed precision (TrainSettings.precision = "bf16")
# ----------------------------------------------------------------------------------------------------------
def test_bf16_is_refused_where_it_cannot_run():
    from dgmlab.train import training_precision

    with pytest.raises(TrainingError, match="bf16 training runs on the CPU or CUDA, not on 'mps'"):
        training_precision("bf16", torch.device("mps"))
    with pytest.raises(TrainingError, match="precision must be one of"):
        training_precision("half", torch.device("cpu"))


def test_a_bf16_step_computes_nearly_the_fp32_gradient_and_logs_fp32_terms():
    # one batch of a PixelCNN: the loss under bfloat16 autocast is within 1% of the fp32 loss, comes out in
    # fp32 (the logged terms keep fp32 resolution), and its gradient points the same way (cosine > 0.99)
    from dgmlab.models import PixelCNN
    from dgmlab.objectives import exact_nll
    from dgmlab.train import training_precision

    torch.manual_seed(0)
    model = PixelCNN(channels=16, num_layers=4)
    x = torch.bernoulli(torch.full((16, 1, 28, 28), 0.2))
    gradients, losses = {}, {}
    for precision in ("fp32", "bf16"):
        model.zero_grad()
        with training_precision(precision, torch.device("cpu")):
            out = exact_nll(model, x)
        assert out.loss.dtype == torch.float32 and out.terms["bits_per_dim"].dtype == torch.float32
        out.loss.mean().backward()
        losses[precision] = float(out.loss.mean().detach())
        gradients[precision] = torch.cat([p.grad.flatten() for p in model.parameters()])
    assert losses["bf16"] == pytest.approx(losses["fp32"], rel=0.01)
    assert losses["bf16"] != losses["fp32"]  # bfloat16 really ran
    assert torch.nn.functional.cosine_similarity(gradients["bf16"], gradients["fp32"], dim=0) > 0.99


def test_objectives_return_fp32_terms_from_a_bf16_network():
    from dgmlab.models import AE
    from dgmlab.objectives import pset_mse_kl, reconstruction_mse

    x = torch.rand(8, 12)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        terms = {
            "elbo": negative_elbo(make_model(), x).terms,
            "pset": pset_mse_kl(make_model(), x).terms,
            "ae": reconstruction_mse(AE(12, [8, 2]), x).terms,
        }
    for name, values in terms.items():
        for term, value in values.items():
            assert value.dtype == torch.float32, (name, term, value.dtype)


def test_bf16_training_learns_and_evaluates_in_fp32(tmp_path):
    # the weights, Adam's state and the evaluation stay fp32; the test terms are exactly what evaluate()
    # gives in fp32 for the final (averaged) weights; the loss falls as in fp32 training
    from dgmlab.train import evaluate

    histories = {}
    for precision in ("fp32", "bf16"):
        train, test = make_data()
        model = make_model()
        histories[precision] = fit(model, elbo, train, test, quiet(epochs=15, lr=1e-2, precision=precision,
                                                                ema_decay=0.9), run_dir=tmp_path / precision)
        assert all(p.dtype == torch.float32 for p in model.parameters())
    first, last = (histories["bf16"].records[i]["train"]["loss"] for i in (0, -1))
    assert last < first - 1.0
    assert histories["bf16"].last("test") == pytest.approx(histories["fp32"].last("test"), rel=0.05)
    train, test = make_data()
    assert evaluate(model, elbo, test, seed=0)["loss"] == pytest.approx(histories["bf16"].last("test"), rel=1e-6)
    state = load_file(tmp_path / "bf16" / "checkpoint" / "state.safetensors")
    assert all(t.dtype in (torch.float32, torch.int64, torch.uint8) for t in state.values())


def test_epochs_in_budget_ignores_slow_first_steps(monkeypatch):
    # a cold process: the first 5 timed steps take 10 s, the other 25 take 1 s; the median step (1 s) is what
    # the run will see, so 23 epochs are planned (the mean, 2.5 s, would plan 9)
    import dgmlab.train as train_module

    train, _ = make_data()
    durations = iter([1.0] * train_module.WARM_UP_STEPS + [10.0] * 5 + [1.0] * 25)  # warm-up, then 30 timed steps
    now = [0.0]
    reads = iter(range(10_000))

    def clock():
        import sys

        # only the probe's own reads count (torch may read the clock too); every second one ends a step
        if sys._getframe(1).f_code.co_name == "seconds_per_step" and next(reads) % 2:
            now[0] += next(durations)
        return now[0]

    monkeypatch.setattr(train_module.time, "perf_counter", clock)
    assert train_module.epochs_in_budget(make_model(), elbo, train, seconds=100, probe_steps=30) == 23


def test_every_training_step_runs_in_bf16_and_every_evaluation_in_fp32():
    # the autocast context is built once per run and entered for each step: it must hold for all of them
    seen = []

    def recording_elbo(model, batch):
        seen.append((model.training, torch.is_autocast_enabled("cpu")))
        return elbo(model, batch)

    train, test = make_data()  # 4 training batches, 1 test batch per epoch
    fit(make_model(), recording_elbo, train, test, quiet(epochs=3, precision="bf16"))
    assert [autocast for training, autocast in seen if training] == [True] * 12
    assert [autocast for training, autocast in seen if not training] == [False] * 3


class _Linear(torch.nn.Module):
    """loss = scale * sum(w * x) per example: the gradient of the batch mean is scale * mean(x), known exactly."""

    def __init__(self, d: int) -> None:
        super().__init__()
        self.w = torch.nn.Parameter(torch.zeros(d))

    def forward(self, x):
        return x @ self.w


def _scaled_loss(scale):
    def objective(model, batch):
        loss = scale * model(batch[0])
        return LossTerms(loss=loss, terms={"loss": loss}, units={"loss": "nats"})
    return objective


def _optimizer_after(tmp_path, settings, scale=1000.0):
    x = torch.ones(8, 3)
    model = _Linear(3)
    fit(model, _scaled_loss(scale), TensorBatches(x, batch_size=8, shuffle=False), settings=settings, run_dir=tmp_path)
    optimizer = torch.optim.Adam(_Linear(3).parameters())
    load_checkpoint(tmp_path / "checkpoint", _Linear(3), optimizer)
    return optimizer


def test_gradient_clipping_rescales_the_gradient_adam_sees(tmp_path):
    # one step: Adam's first moment is (1 - beta1) g, with g the clipped gradient
    optimizer = _optimizer_after(tmp_path / "clipped", quiet(epochs=1, grad_clip_norm=0.5))
    g = 1000.0 * torch.ones(3)  # |g| = 1732
    expected = 0.1 * g * (0.5 / g.norm())
    torch.testing.assert_close(optimizer.state[optimizer.param_groups[0]["params"][0]]["exp_avg"], expected)
    optimizer = _optimizer_after(tmp_path / "plain", quiet(epochs=1))
    torch.testing.assert_close(optimizer.state[optimizer.param_groups[0]["params"][0]]["exp_avg"], 0.1 * g)


def test_warmup_ramps_the_learning_rate_linearly_then_hands_it_back(tmp_path):
    # one batch per epoch, so step t is epoch t; the lr of the step just taken is saved with the optimizer
    for steps, expected in ((3, 1e-2 * 3 / 10), (10, 1e-2 * 10 / 10), (12, 1e-2 * 0.5 ** 11)):
        settings = quiet(epochs=steps, lr=1e-2, warmup_steps=10, lr_decay=0.5 if steps == 12 else 1.0)
        optimizer = _optimizer_after(tmp_path / str(steps), settings, scale=1.0)
        lr = optimizer.param_groups[0]["lr"] / (0.5 if steps == 12 else 1.0)  # the decay after the last epoch
        assert lr == pytest.approx(expected, rel=1e-12)


def test_data_moves_to_an_accelerator_once_when_it_fits_in_a_quarter_of_its_free_memory(monkeypatch):
    import dgmlab.train as train_module

    x = torch.zeros(100, 12)  # 4,800 bytes
    batches = TensorBatches(x, torch.arange(100), batch_size=32, seed=4)
    batches.set_epoch(3)
    meta = torch.device("meta")  # stands for a GPU: a device that is not the CPU
    monkeypatch.setattr(train_module, "_free_bytes", lambda device: 4 * (4_800 + 800))
    moved = train_module.resident(batches, meta)
    assert moved is not batches and moved.device.type == "meta" and batches.device.type == "cpu"
    assert (moved.batch_size, moved.seed, moved.epoch, len(moved)) == (32, 4, 3, len(batches))
    assert train_module.resident(moved, meta) is moved  # already there
    monkeypatch.setattr(train_module, "_free_bytes", lambda device: 4 * (4_800 + 800) - 1)
    assert train_module.resident(batches, meta) is batches  # more than a quarter of the free memory
    monkeypatch.setattr(train_module, "_free_bytes", lambda device: None)
    assert train_module.resident(batches, meta) is batches  # free memory unknown
    assert train_module.resident(batches, torch.device("cpu")) is batches
    loader = torch.utils.data.DataLoader(x, batch_size=8)
    assert train_module.resident(loader, meta) is loader  # only TensorBatches are moved
    assert train_module.resident(None, meta) is None
