"""Tests of dgmlab.models.pixelcnn.CategoricalPixelCNN, the autoregressive prior over grids of discrete codes:
exact normalisation by enumerating every grid (before and after training, and failing for a leaky mask),
causality by gradients and by perturbing codes, log_prob against a log-softmax reference, sampling (seeded,
in range, the model's own frequencies, a peaked trained model), completion, parameter counts by hand, the
nll objective and the trainer, and every error message. Tiny float64 models, CPU only, one thread."""

from __future__ import annotations

import itertools
import math

import pytest
import torch
from torch import nn

from dgmlab.errors import CapabilityError, ModelConfigError
from dgmlab.models.pixelcnn import CategoricalPixelCNN

pytestmark = pytest.mark.usefixtures("single_thread")

GATED = [True, False]


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def tiny_model(num_codes: int, gated: bool, num_classes: int = 0, seed: int = 0, image_size=(2, 2),
               **kwargs) -> CategoricalPixelCNN:
    """A small float64 model with perturbed weights (logits far from uniform, non-zero class biases V), in
    evaluation mode."""
    torch.manual_seed(seed)
    options = dict(channels=4, num_layers=2, kernel_size=3, hidden_kernel=3, embedding_dim=3)
    options.update(kwargs)
    model = CategoricalPixelCNN(num_codes, image_size, gated=gated, num_classes=num_classes, **options).double()
    with torch.no_grad():
        for parameter in model.parameters():
            parameter.add_(torch.randn(parameter.shape, dtype=parameter.dtype))
    return model.eval()


def all_grids(num_codes: int, height: int, width: int) -> torch.Tensor:
    """Every grid of ``num_codes`` values, ``[K^(HW), H, W]``, in lexicographic order of the raster scan."""
    grids = torch.tensor(list(itertools.product(range(num_codes), repeat=height * width)), dtype=torch.long)
    return grids.reshape(-1, height, width)


def random_codes(num_codes: int, shape, seed: int) -> torch.Tensor:
    return torch.randint(num_codes, shape, generator=torch.Generator().manual_seed(seed))


def total_probability(model: CategoricalPixelCNN, height: int, width: int, context=None) -> tuple[float, torch.Tensor]:
    grids = all_grids(model.num_codes, height, width)
    labels = None if context is None else torch.full((len(grids),), context)
    with torch.no_grad():
        log_p = model.log_prob(grids, context=labels)
    return torch.logsumexp(log_p, 0).exp().item(), log_p


def train(model: CategoricalPixelCNN, codes: torch.Tensor, steps: int, lr: float = 0.05, context=None) -> list[float]:
    """Adam on the mean NLL in training mode; the losses before each step."""
    optimizer = torch.optim.Adam(model.parameters(), lr=lr)
    model.train()
    losses = []
    for _ in range(steps):
        loss = -model.log_prob(codes, context=context).mean()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    model.eval()
    return losses


# ----------------------------------------------------------------------------------------------------------
# Exact normalisation: sum over every grid of p(z) = 1
# ----------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("gated", GATED)
@pytest.mark.parametrize("num_codes, height, width", [(3, 2, 2), (4, 1, 3), (2, 2, 3)])
@pytest.mark.parametrize("num_classes", [0, 2])
def test_exact_normalisation_over_every_grid(gated, num_codes, height, width, num_classes):
    model = tiny_model(num_codes, gated, num_classes, image_size=(height, width))
    total, log_p = total_probability(model, height, width, context=1 if num_classes else None)
    assert log_p.shape == (num_codes ** (height * width),) and torch.all(log_p <= 0)
    assert total == pytest.approx(1.0, abs=1e-5)
    assert log_p.std() > 0.5  # far from uniform: the sum is not 1 by symmetry


@pytest.mark.parametrize("gated", GATED)
def test_normalisation_holds_after_training(gated):
    """Not only at initialisation: after Adam steps on random 2x2 grids (K = 3) the sum is still 1."""
    model = tiny_model(3, gated)
    before = [p.detach().clone() for p in model.parameters()]
    losses = train(model, random_codes(3, (16, 2, 2), seed=1), steps=20)
    assert losses[-1] < losses[0] - 0.5  # it trained
    assert max(float((p.detach() - b).abs().max()) for p, b in zip(model.parameters(), before, strict=True)) > 0.1
    total, _ = total_probability(model, 2, 2)
    assert total == pytest.approx(1.0, abs=1e-5)


@pytest.mark.parametrize("gated", GATED)
def test_normalisation_check_fails_when_the_first_layer_sees_its_own_code(gated):
    """The check above can fail: let the first layer read the centre code (type B instead of type A)."""
    model = tiny_model(3, gated)
    first = model.layers[0]
    with torch.no_grad():
        if gated:  # horizontal kernel over columns s-c..s (centre included) instead of s-c..s-1
            first.horizontal = nn.Conv2d(model.embedding_dim, 2 * model.channels, (1, first.half + 1)).double()
            first.horizontal.weight.normal_()
        else:
            first.mask[..., first.kernel_size[0] // 2, first.kernel_size[1] // 2] = 1.0
    total, _ = total_probability(model, 2, 2)
    assert abs(total - 1.0) > 1e-2


# ----------------------------------------------------------------------------------------------------------
# Causality
# ----------------------------------------------------------------------------------------------------------
def dependency_map(model: CategoricalPixelCNN, codes: torch.Tensor, context=None) -> torch.Tensor:
    """``[HW, HW]``: |d logits at output position p / d embedding at input position q|, summed over the
    logits (randomly weighted), the embedding channels and the grids in ``codes``."""
    _, height, width = codes.shape
    embedded = model.embedding(codes).detach().requires_grad_(True)
    handle = model.embedding.register_forward_hook(lambda module, inputs, output: embedded)
    try:
        logits = model(codes, context=context)
    finally:
        handle.remove()
    weights = torch.randn(logits.shape[:2], generator=torch.Generator().manual_seed(0), dtype=logits.dtype)
    rows = []
    for r, s in itertools.product(range(height), range(width)):
        (gradient,) = torch.autograd.grad((logits[:, :, r, s] * weights).sum(), embedded, retain_graph=True)
        rows.append(gradient.abs().sum(dim=(0, 3)).flatten())
    return torch.stack(rows)


@pytest.mark.parametrize("gated", GATED)
@pytest.mark.parametrize("num_classes", [0, 3])
def test_logits_depend_only_on_earlier_codes_by_gradients(gated, num_classes):
    height, width = 4, 5
    model = tiny_model(6, gated, num_classes, image_size=(height, width), num_layers=3)
    codes = random_codes(6, (3, height, width), seed=2)
    labels = torch.tensor([0, 1, 2]) if num_classes else None
    dependency = dependency_map(model, codes, context=labels)
    later = torch.triu(torch.ones_like(dependency, dtype=torch.bool))  # q >= p, the centre included
    assert torch.all(dependency[later] == 0)
    assert (dependency[~later] > 0).double().mean() > 0.5  # most earlier codes are read


@pytest.mark.parametrize("gated", GATED)
def test_logits_ignore_later_codes_and_read_the_neighbours_by_perturbation(gated):
    """Changing the codes at and after position i leaves the logits at i unchanged (the embedding lookup
    included); changing the left neighbour or the code above changes them."""
    num_codes, height, width = 5, 3, 4
    model = tiny_model(num_codes, gated, image_size=(height, width), num_layers=3)
    codes = random_codes(num_codes, (2, height, width), seed=3)
    with torch.no_grad():
        logits = model(codes)
        for index in range(height * width):
            r, s = divmod(index, width)
            changed = codes.flatten(1).clone()
            changed[:, index:] = random_codes(num_codes, changed[:, index:].shape, seed=index)
            changed[:, index] = (codes.flatten(1)[:, index] + 1) % num_codes  # the centre always differs
            changed_logits = model(changed.reshape(codes.shape))
            torch.testing.assert_close(changed_logits[:, :, r, s], logits[:, :, r, s], rtol=0, atol=1e-12)
            for before in ([(r, s - 1)] if s > 0 else []) + ([(r - 1, s)] if r > 0 else []):
                earlier = codes.clone()
                earlier[:, before[0], before[1]] = (codes[:, before[0], before[1]] + 1) % num_codes
                difference = (model(earlier)[:, :, r, s] - logits[:, :, r, s]).abs().max()
                assert difference > 1e-6, ((r, s), before)


def test_default_gated_model_reads_every_earlier_code_of_a_7x7_grid():
    """Defaults: reach 8 rows, 7 columns either side, no blind spot: logits at i depend on exactly z_<i.
    The masked-convolution variant of the same depth has the blind spot (upper right)."""
    torch.manual_seed(0)
    model = CategoricalPixelCNN(16).double().eval()
    assert model.image_size == (7, 7) and model.receptive_field_reach == 8
    codes = random_codes(16, (2, 7, 7), seed=4)
    dependency = dependency_map(model, codes)
    assert torch.equal(dependency > 0, torch.tril(torch.ones(49, 49, dtype=torch.bool), diagonal=-1))
    plain = CategoricalPixelCNN(16, gated=False).double().eval()
    assert plain.receptive_field_reach == 7
    dependency = dependency_map(plain, codes).reshape(7, 7, 7, 7)
    assert torch.all(dependency.reshape(49, 49).triu() == 0)
    # from (6, 3): the row above is read 2 columns to the right (c1 = 2), not 3
    assert dependency[6, 3, 5, 5] > 0 and dependency[6, 3, 5, 6] == 0


# ----------------------------------------------------------------------------------------------------------
# log_prob
# ----------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("gated", GATED)
def test_log_prob_is_the_log_softmax_at_the_observed_codes(gated):
    model = tiny_model(7, gated, num_classes=2, image_size=(3, 4))
    codes = random_codes(7, (5, 3, 4), seed=5)
    labels = torch.tensor([0, 1, 1, 0, 1])
    with torch.no_grad():
        logits = model(codes, context=labels)
        per_position = model.log_prob_per_dimension(codes, context=labels)
        log_p = model.log_prob(codes, context=labels)
        as_int32 = model.log_prob(codes.to(torch.int32), context=labels)
    assert logits.shape == (5, 7, 3, 4) and per_position.shape == (5, 3, 4) and log_p.shape == (5,)
    # reference: log softmax over K, read at z_i
    reference = torch.log_softmax(logits, dim=1).gather(1, codes[:, None])[:, 0]
    torch.testing.assert_close(per_position, reference, rtol=0, atol=1e-12)
    torch.testing.assert_close(per_position.sum(dim=(1, 2)), log_p)
    torch.testing.assert_close(as_int32, log_p)
    assert model(codes, context=labels.flip(0)).sub(logits).abs().max() > 1e-3  # the labels matter


def test_class_biases_start_at_zero():
    """V = 0 at initialisation: the conditional model starts as the unconditional one (same seed)."""
    codes = random_codes(5, (3, 3, 3), seed=6)
    for gated in GATED:
        torch.manual_seed(0)
        conditional = CategoricalPixelCNN(5, 3, channels=4, num_layers=2, gated=gated, num_classes=3)
        torch.manual_seed(0)
        plain = CategoricalPixelCNN(5, 3, channels=4, num_layers=2, gated=gated)
        torch.testing.assert_close(conditional(codes, context=torch.tensor([0, 1, 2])), plain(codes))


def test_the_nll_objective_and_the_trainer_take_code_grids(tmp_path):
    """``[objective] name = "nll"`` calls exact_nll: -log_prob in nats and bits per code; fit() trains on a
    TensorBatches of LongTensor grids."""
    from dgmlab.data import TensorBatches
    from dgmlab.objectives import exact_nll
    from dgmlab.train import TrainSettings, fit

    model = tiny_model(4, True, image_size=(2, 3))
    codes = random_codes(4, (6, 2, 3), seed=7)
    terms = exact_nll(model, codes)
    with torch.no_grad():
        torch.testing.assert_close(terms.loss.detach(), -model.log_prob(codes))
        torch.testing.assert_close(terms.terms["bits_per_dim"].detach(), terms.loss.detach() / (6 * math.log(2)))
    torch.manual_seed(0)
    net = CategoricalPixelCNN(4, (2, 3), channels=4, num_layers=2, embedding_dim=3)
    data = TensorBatches(random_codes(4, (24, 2, 3), seed=8), batch_size=8, seed=1)
    history = fit(net, lambda m, b: exact_nll(m, b[0]), data,
                  settings=TrainSettings(epochs=2, lr=1e-2, seed=2, progress=False), run_dir=tmp_path / "run")
    assert history.last() < 6 * math.log(4) + 0.5  # about the uniform model's 8.3 nats, on random grids


# ----------------------------------------------------------------------------------------------------------
# Sampling and completion
# ----------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("gated", GATED)
def test_sampling_is_reproducible_and_in_range(gated):
    model = tiny_model(4096, gated, num_classes=3, image_size=(7, 7))  # a large codebook on a VQ-VAE grid
    labels = torch.tensor([0, 1, 2, 0])
    first = model.sample(4, generator=torch.Generator().manual_seed(0), context=labels)
    again = model.sample(4, generator=torch.Generator().manual_seed(0), context=labels)
    other = model.sample(4, generator=torch.Generator().manual_seed(1), context=labels)
    assert first.shape == (4, 7, 7) and first.dtype == torch.long
    assert torch.equal(first, again) and not torch.equal(first, other)
    assert int(first.min()) >= 0 and int(first.max()) < 4096
    assert len(first.unique()) > 20  # not stuck on a few codes
    assert model.sample(2, context=1, image_size=(2, 5)).shape == (2, 2, 5)


@pytest.mark.parametrize("gated", GATED)
@pytest.mark.parametrize("num_codes, height, width", [(3, 1, 2), (2, 2, 2)])
def test_sample_frequencies_match_exp_log_prob(gated, num_codes, height, width):
    """Every grid's empirical frequency in 20,000 samples lies within 4 standard errors of exp(log_prob)."""
    model = tiny_model(num_codes, gated, image_size=(height, width))
    grids = all_grids(num_codes, height, width)
    with torch.no_grad():
        probabilities = model.log_prob(grids).exp()
    n = 20000
    samples = model.sample(n, generator=torch.Generator().manual_seed(0))
    index = (samples.flatten(1) * num_codes ** torch.arange(height * width - 1, -1, -1)).sum(dim=1)
    frequencies = torch.bincount(index, minlength=len(grids)).double() / n
    standard_errors = (probabilities * (1 - probabilities) / n).sqrt()
    assert torch.all((frequencies - probabilities).abs() <= 4 * standard_errors + 1e-4), (frequencies, probabilities)
    assert probabilities.max() > 2 * probabilities.min()  # not the uniform distribution


@pytest.mark.parametrize("gated", GATED)
def test_a_model_trained_on_one_grid_samples_it(gated):
    """Data all equal to one 3x3 grid of K = 8 codes: the NLL falls from about 9 log 8 = 18.7 nats to below
    0.5, and the samples reproduce the grid."""
    torch.manual_seed(0)
    target = random_codes(8, (3, 3), seed=9)
    model = CategoricalPixelCNN(8, 3, channels=8, num_layers=2, kernel_size=3, embedding_dim=4, gated=gated)
    losses = train(model, target.expand(8, 3, 3), steps=60)
    assert losses[0] > 10 and losses[-1] < 0.5, (losses[0], losses[-1])
    samples = model.sample(50, generator=torch.Generator().manual_seed(0))
    assert (samples == target).all(dim=(1, 2)).double().mean() > 0.8


@pytest.mark.parametrize("gated", GATED)
def test_complete_keeps_known_rows(gated):
    model = tiny_model(6, gated, num_classes=2, image_size=(4, 3))
    codes = random_codes(6, (3, 4, 3), seed=10)
    labels = torch.tensor([0, 1, 1])
    completed = model.complete(codes, 2, context=labels, generator=torch.Generator().manual_seed(1))
    assert completed.shape == codes.shape and completed.dtype == torch.long
    assert torch.equal(completed[:, :2], codes[:, :2]) and not torch.equal(completed, codes)
    assert torch.equal(model.complete(codes, 4, context=labels), codes)
    start = model.complete(codes, 0, context=labels, generator=torch.Generator().manual_seed(2))
    assert torch.equal(start, model.sample(3, context=labels, generator=torch.Generator().manual_seed(2)))


def test_sample_runs_in_eval_mode_and_restores_modes():
    model = tiny_model(3, True).train()
    model.head.eval()  # a mixed state is restored module by module
    before = {module: module.training for module in model.modules()}
    seen = []
    handle = model.head.register_forward_pre_hook(lambda module, _: seen.append(module.training))
    model.sample(2, generator=torch.Generator().manual_seed(0))
    handle.remove()
    assert seen and not any(seen)
    assert {module: module.training for module in model.modules()} == before


# ----------------------------------------------------------------------------------------------------------
# Parameter counts
# ----------------------------------------------------------------------------------------------------------
def test_parameter_counts_by_hand():
    K, d, C, classes = 3, 2, 4, 2  # codes, embedding, channels, labels; two layers, 3x3 kernels (c = 1)
    embedding = K * d
    head = (C * C + C) + (C * K + K)  # 1x1 conv C -> C, 1x1 conv C -> K
    # gated layer: vertical (c+1) x k conv to 2C, horizontal 1 x c (first) or 1 x (c+1), link 2C -> 2C, out C -> C
    first = (2 * C * d * 2 * 3 + 2 * C) + (2 * C * d * 1 + 2 * C) + (2 * C * 2 * C + 2 * C) + (C * C + C)
    second = (2 * C * C * 2 * 3 + 2 * C) + (2 * C * C * 2 + 2 * C) + (2 * C * 2 * C + 2 * C) + (C * C + C)
    gated = embedding + first + second + head
    assert gated == 625
    options = dict(channels=C, num_layers=2, kernel_size=3, hidden_kernel=3, embedding_dim=d)
    assert count_parameters(CategoricalPixelCNN(K, 2, **options)) == gated
    conditional = CategoricalPixelCNN(K, 2, **options, num_classes=classes)
    assert count_parameters(conditional) == gated + 2 * 2 * (2 * C) * classes  # V^v, V^h [2C, classes] per layer
    # masked convolutions: d -> C 3x3, C -> C 3x3 (masked weights counted), V [C, classes] per layer
    plain = embedding + (C * d * 9 + C) + (C * C * 9 + C) + head
    assert count_parameters(CategoricalPixelCNN(K, 2, **options, gated=False)) == plain == 265
    conditional = CategoricalPixelCNN(K, 2, **options, gated=False, num_classes=classes)
    assert count_parameters(conditional) == plain + 2 * C * classes
    # the documented default
    assert count_parameters(CategoricalPixelCNN(512)) == 576_704
    assert count_parameters(CategoricalPixelCNN(512, num_classes=10)) == 576_704 + 6 * 2 * 128 * 10


# ----------------------------------------------------------------------------------------------------------
# Errors
# ----------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("options, message", [
    (dict(num_codes=1), r"num_codes \(the codebook size K.*\) must be an integer >= 2, got 1"),
    (dict(num_codes=True), r"num_codes .* got True"),
    (dict(num_codes=8, channels=0), "channels must be a positive integer"),
    (dict(num_codes=8, num_layers=0), "num_layers must be a positive integer"),
    (dict(num_codes=8, embedding_dim=0), "embedding_dim must be a positive integer"),
    (dict(num_codes=8, kernel_size=4), r"kernel_size \(first, type-A layer\) must be an odd integer >= 3"),
    (dict(num_codes=8, kernel_size=1), r"kernel_size \(first, type-A layer\) must be an odd integer >= 3"),
    (dict(num_codes=8, hidden_kernel=2), "hidden_kernel must be an odd integer"),
    (dict(num_codes=8, num_classes=-1), "num_classes"),
    (dict(num_codes=8, gated="yes"), "gated must be True"),
    (dict(num_codes=8, image_size=(7, 0)), r"image_size must be a positive integer or a pair \(H, W\)"),
])
def test_constructor_errors(options, message):
    with pytest.raises(ModelConfigError, match=rf"^CategoricalPixelCNN: {message}"):
        CategoricalPixelCNN(**options)


def test_input_errors():
    plain = CategoricalPixelCNN(8, 4, channels=2, num_layers=2, embedding_dim=2)
    conditional = CategoricalPixelCNN(8, 4, channels=2, num_layers=2, embedding_dim=2, num_classes=3)
    codes = random_codes(8, (2, 4, 4), seed=11)
    with pytest.raises(ValueError, match=r"integer tensor of code indices \(torch.long\), got torch.float32; .*"
                                         r"codes.long\(\)"):
        plain.log_prob(codes.float())
    with pytest.raises(ValueError, match="got torch.bool"):
        plain(codes > 3)
    with pytest.raises(ValueError, match=r"shape \[B, H, W\], got \[2, 1, 4, 4\]; use codes.squeeze\(1\)"):
        plain.log_prob(codes[:, None])
    with pytest.raises(ValueError, match=r"shape \[B, H, W\], got \[2, 16\].*codes.view\(-1, H, W\)"):
        plain.log_prob_per_dimension(codes.flatten(1))
    with pytest.raises(ValueError, match=r"codes must lie in 0..7 \(num_codes=8\), got values in 0..8"):
        plain.log_prob(codes.clamp(max=6) + (codes == 7) * 2)
    with pytest.raises(ValueError, match=r"got values in -1..7"):
        plain(codes - (codes == 0).long())
    with pytest.raises(ValueError, match="must be a tensor of code indices"):
        plain.log_prob([[0, 1], [2, 3]])
    with pytest.raises(CapabilityError, match=r"unconditional \(num_classes=0\)"):
        plain.log_prob(codes, context=torch.tensor([0, 1]))
    with pytest.raises(CapabilityError, match=r"class-conditional \(num_classes=3\): pass labels as context="):
        conditional.log_prob(codes)
    with pytest.raises(ValueError, match=r"labels must lie in 0..2"):
        conditional.log_prob(codes, context=torch.tensor([0, 3]))
    with pytest.raises(CapabilityError, match="class-conditional"):
        conditional.sample(2)
    with pytest.raises(ValueError, match="n must be a positive integer"):
        plain.sample(0)
    with pytest.raises(ValueError, match="image_size must be"):
        plain.sample(1, image_size=(4, 0))
    with pytest.raises(ValueError, match=r"known_rows must be an integer in 0..4 \(the grid height\)"):
        plain.complete(codes, 5)
    with pytest.raises(ValueError, match="codes must lie in"):
        plain.complete(codes + 8, 1)
