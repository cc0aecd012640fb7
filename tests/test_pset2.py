"""dgmlab.experiments.pset2: problem set 2's configurations, training, evaluations and the MAP illustration.

Training runs use tiny networks (8 channels, 3 layers) on a few hundred MNIST images, so every check here is
about correctness (true means in nats, evaluation mode, binary samples, kept rows), not about quality.
"""

from __future__ import annotations

import json
import math

import pytest
import torch
import torch.nn.functional as F

from dgmlab.config import ConfigError
from dgmlab.experiments.pset2 import (
    PIXELS,
    QUICK_LIMIT,
    QUICK_MODEL,
    QUICK_TEST_LIMIT,
    REFERENCE,
    bce_to_nats,
    comparison_lines,
    complete_images,
    fit_independent_bernoulli_map,
    gaussian_prior_variance,
    independent_bernoulli_nll,
    l2_penalty,
    mean_pixel_nll,
    nats_to_bce,
    nll_summary,
    pset2_config,
    samples_per_class,
    summed_bce,
    teacher_forced_reconstruction,
    train_pixelcnn,
)
from dgmlab.models import PixelCNN
from dgmlab.train import History

TINY = ["model.channels=8", "model.num_layers=3"]


def _binary_images(count: int, seed: int = 0, size: int = 28) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    return (torch.rand(count, 1, size, size, generator=generator) < 0.3).float()


def _tiny_model(num_classes: int = 0, seed: int = 0) -> PixelCNN:
    torch.manual_seed(seed)
    model = PixelCNN(channels=8, num_layers=3, num_classes=num_classes)
    # running statistics unlike any batch's, so evaluation mode and training mode give different logits
    with torch.no_grad():
        for norm in model.norms:
            norm.running_mean.uniform_(-0.5, 0.5)
            norm.running_var.uniform_(0.5, 2.0)
    return model


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    """Two epochs of a tiny PixelCNN on 512 images; 300 test images, so the test batches are 250 + 50."""
    out = tmp_path_factory.mktemp("pset2") / "pixelcnn"
    run = train_pixelcnn("pixelcnn.toml", out, limit=512, test_limit=300, device="cpu", progress=False,
                         overrides=[*TINY, "train.epochs=2"])
    return run, out


@pytest.fixture(scope="module")
def tiny_conditional_run():
    return train_pixelcnn("pixelcnn_conditional.toml", None, limit=256, test_limit=300, device="cpu",
                          progress=False, overrides=[*TINY, "train.epochs=1"])


# ----------------------------------------------------------------------------------------------------------
# Reference numbers and configurations
# ----------------------------------------------------------------------------------------------------------
def test_reference_numbers_are_per_pixel_bce_times_784():
    assert PIXELS == 784
    assert REFERENCE["pixelcnn"]["nats"] == 52.8 and REFERENCE["pixelcnn"]["bce_per_pixel"] == 0.0673
    assert REFERENCE["pixelcnn_conditional"]["nats"] == 48.8
    assert REFERENCE["pixelcnn_conditional"]["bce_per_pixel"] == 0.0623
    assert (REFERENCE["pixelcnn"]["epochs"], REFERENCE["pixelcnn_conditional"]["epochs"]) == (80, 100)
    assert bce_to_nats(0.0673) == pytest.approx(52.7632)
    assert nats_to_bce(bce_to_nats(0.0623)) == pytest.approx(0.0623)
    assert bce_to_nats(0.5, pixels=4) == 2.0


def test_config_keeps_the_problem_sets_settings_and_scales_epochs():
    full = pset2_config("pixelcnn.toml", device="cpu", seed=3, progress=False)
    assert full["model"] == {"name": "pixelcnn", "channels": 128, "num_layers": 10}
    assert full["data"]["view"] == "threshold" and full["data"]["batch_size"] == 128
    assert full["train"]["epochs"] == 80 and full["train"]["lr"] == 4e-3
    assert full["train"]["seed"] == 3 and full["train"]["device"] == "cpu" and full["train"]["progress"] is False
    assert "limit" not in full["data"] and "test_limit" not in full["data"]
    conditional = pset2_config("pixelcnn_conditional.toml", epochs_scale=0.5, limit=2000)
    assert conditional["train"]["epochs"] == 50 and conditional["train"]["lr"] == 2e-3
    assert conditional["model"]["num_classes"] == 10 and conditional["data"]["labels"] is True
    assert conditional["data"]["limit"] == 2000
    assert pset2_config("pixelcnn.toml", epochs_scale=1e-6)["train"]["epochs"] == 1


def test_quick_config_is_a_tiny_network_for_one_epoch():
    quick = pset2_config("pixelcnn.toml", quick=True, overrides=["model.channels=4"])
    assert quick["train"]["epochs"] == 1
    assert quick["model"]["num_layers"] == QUICK_MODEL["num_layers"]
    assert quick["model"]["channels"] == 4  # overrides come last
    assert quick["data"]["limit"] == QUICK_LIMIT and quick["data"]["test_limit"] == QUICK_TEST_LIMIT
    assert pset2_config("pixelcnn.toml", quick=True, limit=100, test_limit=50)["data"]["limit"] == 100


def test_config_errors_name_the_argument():
    with pytest.raises(ValueError, match="epochs_scale must be a positive number"):
        pset2_config("pixelcnn.toml", epochs_scale=0)
    with pytest.raises(ValueError, match="limit must be a non-negative integer"):
        pset2_config("pixelcnn.toml", limit=-1)
    with pytest.raises(ConfigError, match="does not exist"):
        pset2_config("no_such_config.toml")
    with pytest.raises(ConfigError, match="objective.name = 'nll'"):
        train_pixelcnn("ae.toml", None, quick=True, device="cpu", progress=False)


# ----------------------------------------------------------------------------------------------------------
# Training
# ----------------------------------------------------------------------------------------------------------
def test_training_records_the_true_mean_test_nll_in_nats(tiny_run):
    run, out = tiny_run
    assert not run.model.training
    last = run.history.records[-1]
    assert last["units"]["nll"] == "nats"
    test_x = run.data.test_x
    assert test_x.shape == (300, 1, 28, 28) and set(test_x.unique().tolist()) == {0.0, 1.0}
    with torch.no_grad():
        true_mean = (-run.model.log_prob(test_x)).mean().item()  # each image once, not a mean of batch means
    assert last["test"]["nll"] == pytest.approx(true_mean, rel=1e-5)
    assert last["test"]["bits_per_dim"] == pytest.approx(true_mean / (784 * math.log(2)), rel=1e-5)
    assert run.data.train.num_examples == 512 and run.seconds > 0
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [record["epoch"] for record in records] == [1, 2]
    assert json.loads((out / "config.json").read_text())["model"]["channels"] == 8


def test_training_lowers_the_nll(tiny_run):
    first, last = tiny_run[0].history.records
    assert last["train"]["nll"] < first["train"]["nll"] < 784 * math.log(2) + 50
    assert last["test"]["nll"] < first["test"]["nll"]


def test_conditional_training_uses_the_labels(tiny_conditional_run):
    run = tiny_conditional_run
    assert run.model.num_classes == 10 and run.data.test_labels is not None
    with torch.no_grad():
        true_mean = (-run.model.log_prob(run.data.test_x, context=run.data.test_labels)).mean().item()
    assert run.history.records[-1]["test"]["nll"] == pytest.approx(true_mean, rel=1e-5)


def test_nll_summary_and_comparison_lines(tiny_run):
    history = tiny_run[0].history
    summary = nll_summary(history)
    last = history.records[-1]
    assert summary["train_nats"] == last["train"]["nll"]
    assert summary["test_bce_per_pixel"] == pytest.approx(last["test"]["nll"] / 784)
    assert summary["test_bits_per_dim"] == pytest.approx(last["test"]["bits_per_dim"])
    assert nll_summary(history.records) == summary
    lines = comparison_lines("pixelcnn", history, examples=512)
    assert "| reference 52.8 nats = 0.0673 per pixel (after 80 epochs, GPU)" in lines[0]
    assert lines[1].startswith(f"test NLL {summary['test_nats']:.2f} nats per image")
    assert "shortened run, 2 epoch(s) on 512 images" in lines[2]
    assert "48.8 nats = 0.0623" in comparison_lines("pixelcnn_conditional", history)[0]


def test_nll_summary_errors():
    with pytest.raises(ValueError, match="history is empty"):
        nll_summary(History())
    with pytest.raises(ValueError, match="no 'nll' term"):
        nll_summary([{"epoch": 1, "train": {"loss": 0.1}}])
    with pytest.raises(ValueError, match="unknown experiment"):
        comparison_lines("vae", [{"epoch": 1, "train": {"nll": 1.0}}])


def test_train_only_history_has_no_test_line():
    lines = comparison_lines("pixelcnn", [{"epoch": e, "train": {"nll": 52.0}} for e in range(1, 81)], 60000)
    assert lines == [lines[0]] and "train NLL 52.00 nats per image = BCE 0.0663 per pixel" in lines[0]


# ----------------------------------------------------------------------------------------------------------
# Problem 1 and the evaluations
# ----------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("num_classes", [0, 10])
def test_summed_bce_is_the_nll(num_classes):
    model = _tiny_model(num_classes).eval()
    x = _binary_images(6)
    y = torch.arange(6) if num_classes else None
    bce = summed_bce(model, x, y)
    with torch.no_grad():
        nll = -(model.log_prob(x) if y is None else model.log_prob(x, context=y))
        probabilities = torch.sigmoid(model(x, context=y))
    assert bce.shape == (6,)
    torch.testing.assert_close(bce, nll, rtol=1e-5, atol=1e-3)
    # the problem set's printed loss: BCE averaged over pixels and the batch = mean NLL / 784
    assert F.binary_cross_entropy(probabilities, x).item() * 784 == pytest.approx(nll.mean().item(), rel=1e-5)
    with pytest.raises(ValueError, match=r"binary images \[B, 1, H, W\]"):
        summed_bce(model, x.reshape(6, -1))


@pytest.mark.parametrize("num_classes", [0, 10])
def test_teacher_forced_reconstruction_samples_eval_mode_probabilities(num_classes):
    model = _tiny_model(num_classes).train()
    x = _binary_images(8, seed=1)
    y = torch.arange(8) if num_classes else None
    recon = teacher_forced_reconstruction(model, x, y, generator=torch.Generator().manual_seed(5))
    assert model.training and all(module.training for module in model.modules())  # modes restored
    assert recon.shape == x.shape and set(recon.unique().tolist()) <= {0.0, 1.0}
    noise = torch.rand(x.shape, generator=torch.Generator().manual_seed(5))
    with torch.no_grad():
        eval_probabilities = torch.sigmoid(model.eval()(x, context=y))
        train_probabilities = torch.sigmoid(model.train()(x, context=y))
    torch.testing.assert_close(recon, (noise < eval_probabilities).float())
    assert not torch.equal(recon, (noise < train_probabilities).float())  # training mode would differ


def test_teacher_forced_reconstruction_follows_the_probabilities():
    model = _tiny_model().eval()
    x = _binary_images(1, seed=2).expand(4000, 1, 28, 28).contiguous()
    recon = teacher_forced_reconstruction(model, x, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        probabilities = torch.sigmoid(model(x[:1]))[0]
    assert (recon.mean(0) - probabilities).abs().max() < 0.04  # 4000 Bernoulli draws: sd <= 0.008
    with pytest.raises(ValueError, match="binary images"):
        teacher_forced_reconstruction(model, x[0])


def test_samples_per_class_are_binary_class_ordered_and_made_in_eval_mode():
    model = _tiny_model(num_classes=10).train()
    images, labels = samples_per_class(model, 2, generator=torch.Generator().manual_seed(3))
    assert model.training
    assert images.shape == (20, 1, 28, 28) and set(images.unique().tolist()) <= {0.0, 1.0}
    assert labels.tolist() == [k for k in range(10) for _ in range(2)]
    reference = model.eval().sample(20, context=labels, generator=torch.Generator().manual_seed(3))
    torch.testing.assert_close(images, reference)
    with pytest.raises(ValueError, match="class-conditional model"):
        samples_per_class(_tiny_model(), 2)
    with pytest.raises(ValueError, match="per_class must be a positive integer"):
        samples_per_class(model, 0)


def test_complete_images_keeps_the_top_rows():
    model = _tiny_model().train()
    x = _binary_images(3, seed=4)
    completed = complete_images(model, x, 14, samples=2, generator=torch.Generator().manual_seed(0))
    assert completed.shape == (2, 3, 1, 28, 28) and model.training
    assert set(completed.unique().tolist()) <= {0.0, 1.0}
    for sample in completed:
        torch.testing.assert_close(sample[:, :, :14], x[:, :, :14])
    assert not torch.equal(completed[0], completed[1])  # two independent completions
    with pytest.raises(ValueError, match="samples must be a positive integer"):
        complete_images(model, x, 14, samples=0)


@pytest.mark.parametrize("num_classes", [0, 10])
def test_mean_pixel_nll_sums_to_the_mean_nll(num_classes):
    model = _tiny_model(num_classes).train()
    x = _binary_images(10, seed=6)
    y = torch.arange(10) if num_classes else None
    heat = mean_pixel_nll(model, x, y, batch_size=3)
    assert heat.shape == (28, 28) and bool((heat >= 0).all()) and model.training
    with torch.no_grad():
        nll = -(model.eval().log_prob(x, context=y))
    assert heat.sum().item() == pytest.approx(nll.mean().item(), rel=1e-5)
    torch.testing.assert_close(heat, mean_pixel_nll(model, x, y, batch_size=250))
    with pytest.raises(ValueError, match="batch_size must be a positive integer"):
        mean_pixel_nll(model, x, y, batch_size=0)


# ----------------------------------------------------------------------------------------------------------
# Problem 4: MAP and the Gaussian prior
# ----------------------------------------------------------------------------------------------------------
def test_l2_penalty_is_a_gaussian_prior_up_to_a_constant():
    weight_decay = 0.3
    variance = gaussian_prior_variance(weight_decay)
    assert variance == pytest.approx(1 / 0.6)
    zero = torch.zeros((), dtype=torch.float64)
    prior = torch.distributions.Normal(zero, zero + math.sqrt(variance))
    generator = torch.Generator().manual_seed(0)
    differences = []
    for scale in (0.1, 1.0, 5.0):
        theta = scale * torch.randn(50, generator=generator, dtype=torch.float64)
        differences.append((l2_penalty(theta, weight_decay) + prior.log_prob(theta).sum()).item())
    constant = -25 * math.log(2 * math.pi * variance)  # -(d / 2) log(2 pi sigma^2), d = 50
    assert differences == pytest.approx([constant] * 3, rel=1e-9)
    for bad in (0, -1.0, True):
        with pytest.raises(ValueError, match="weight_decay"):
            gaussian_prior_variance(bad)
        with pytest.raises(ValueError, match="weight_decay"):
            l2_penalty(theta, bad)


def test_map_logits_make_the_penalised_gradient_vanish_and_shrink():
    x = _binary_images(40, seed=7, size=6)
    x[:, :, 0, 0] = 0.0  # a pixel never on: maximum likelihood gives it probability 0
    logits = {}
    for weight_decay in (1e-3, 0.1, 10.0):
        theta = fit_independent_bernoulli_map(x, weight_decay).requires_grad_(True)
        assert theta.shape == (1, 6, 6) and theta.dtype == torch.float64
        objective = independent_bernoulli_nll(theta, x).sum() + l2_penalty(theta, weight_decay)
        (gradient,) = torch.autograd.grad(objective, theta)
        assert gradient.abs().max() < 1e-8
        logits[weight_decay] = theta.detach()
    assert bool((logits[10.0].abs() < logits[0.1].abs()).all()) and bool((logits[0.1].abs() < logits[1e-3].abs()).all())
    frequency = x.mean(0)
    mask = (frequency > 0) & (frequency < 1)
    torch.testing.assert_close(torch.sigmoid(logits[1e-3])[mask], frequency[mask].double(), atol=2e-3, rtol=0)
    assert math.isfinite(logits[1e-3][0, 0, 0].item()) and logits[1e-3][0, 0, 0] < -5
    with pytest.raises(ValueError, match="weight_decay"):
        fit_independent_bernoulli_map(x, 0.0)
    with pytest.raises(ValueError, match="no images"):
        fit_independent_bernoulli_map(x[:0], 1.0)


def test_independent_bernoulli_nll_matches_torch_distributions():
    x = _binary_images(5, seed=8, size=4)
    logits = torch.randn(1, 4, 4, generator=torch.Generator().manual_seed(1))
    expected = -torch.distributions.Bernoulli(logits=logits.double()).log_prob(x.double()).sum(dim=(1, 2, 3))
    torch.testing.assert_close(independent_bernoulli_nll(logits, x), expected)
    # maximum likelihood on these 5 images: infinite logits where a pixel is always off or on
    x[:, :, 0, 0] = 0.0
    ml = torch.logit(x.mean(0).double())
    assert ml[0, 0, 0] == -math.inf
    assert torch.isfinite(independent_bernoulli_nll(ml, x)).all()  # the training images are never impossible
    other = x[:1].clone()
    other[:, :, 0, 0] = 1.0
    assert independent_bernoulli_nll(ml, other).item() == math.inf  # a new image with that pixel on is
    with pytest.raises(ValueError, match="logits hold 16 pixels but the images 9"):
        independent_bernoulli_nll(logits, x[:, :, :3, :3])
