"""Tests of dgmlab.models.pixelcnn: masks, the autoregressive property by gradients, the blind spot, exact
normalisation, problem set 2's BCE identity, parameter counts, sampling (fast = naive, eval mode), errors,
and a small seeded training run. Tiny models on tiny images, CPU only."""

from __future__ import annotations

import itertools
import math

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st

from dgmlab.models.autoencoders import ModelConfigError
from dgmlab.models.pixelcnn import GatedPixelCNN, MaskedConv2d, PixelCNN, receptive_field

MODELS = [PixelCNN, GatedPixelCNN]


def count_parameters(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def tiny_model(cls, num_classes: int = 0, seed: int = 0, image_size: int = 6, **kwargs) -> torch.nn.Module:
    """A small float64 model with perturbed weights (so logits are far from 0 and vary), non-zero class
    biases V and, for the PixelCNN, non-trivial BatchNorm running statistics; in evaluation mode."""
    torch.manual_seed(seed)
    options = dict(channels=6, num_layers=3, kernel_size=3, hidden_kernel=3, image_size=image_size)
    options.update(kwargs)
    model = cls(num_classes=num_classes, **options).double()
    with torch.no_grad():
        for parameter in model.parameters():
            parameter.add_(0.3 * torch.randn(parameter.shape, dtype=parameter.dtype))  # layout-independent draw
        if cls is PixelCNN:  # running statistics from a few training-mode passes
            for _ in range(3):
                x = torch.bernoulli(torch.full((8, 1, image_size, image_size), 0.4, dtype=torch.float64))
                model(x, context=torch.arange(8) % num_classes if num_classes else None)
    return model.eval()


def labels_for(model, batch: int) -> torch.Tensor | None:
    return torch.arange(batch) % model.num_classes if model.num_classes else None


# ----------------------------------------------------------------------------------------------------------
# MaskedConv2d
# ----------------------------------------------------------------------------------------------------------
def test_masked_conv_masks_for_type_a_and_b():
    expected_a = torch.tensor(
        [[1, 1, 1, 1, 1], [1, 1, 1, 1, 1], [1, 1, 0, 0, 0], [0, 0, 0, 0, 0], [0, 0, 0, 0, 0]], dtype=torch.float32
    )
    expected_b = expected_a.clone()
    expected_b[2, 2] = 1
    assert torch.equal(MaskedConv2d(1, 2, 5, "A").mask[0, 0], expected_a)
    assert torch.equal(MaskedConv2d(2, 2, 5, "B").mask[0, 0], expected_b)
    conv = MaskedConv2d(3, 4, 5, "B")
    assert conv.padding == (2, 2) and conv.stride == (1, 1)
    assert "mask_type='B'" in repr(conv)


def test_masked_conv_uses_only_unmasked_weights_and_last_row_matches():
    torch.manual_seed(0)
    conv = MaskedConv2d(2, 3, 5, "A")
    x = torch.randn(2, 2, 6, 7)
    before = conv(x)
    with torch.no_grad():
        conv.weight.add_((1 - conv.mask) * 100.0)  # change only the masked weights
    torch.testing.assert_close(conv(x), before)
    reference = F.conv2d(x, conv.weight * conv.mask, conv.bias, padding=2)
    torch.testing.assert_close(before, reference)
    for row in range(6):  # forward_last_row: the current row and the two above it, zeros above the image
        top = row - 2
        rows = F.pad(x[:, :, max(top, 0) : row + 1], (0, 0, max(-top, 0), 0))
        torch.testing.assert_close(conv.forward_last_row(rows), before[:, :, row : row + 1])


# ----------------------------------------------------------------------------------------------------------
# The autoregressive property, by gradients
# ----------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("cls", MODELS)
@pytest.mark.parametrize("num_classes", [0, 3])
def test_autoregressive_property_by_jacobian(cls, num_classes):
    """d logit_p / d x_q = 0 for every q at or after p in raster order, with the model's own weights (and not
    zero everywhere: most earlier pixels are seen; which ones exactly is test_*_blind_spot's job, because a
    ReLU that is off for these inputs can hide a dependency)."""
    height, width = 6, 7
    model = tiny_model(cls, num_classes, image_size=height, channels=4, kernel_size=5)
    y = labels_for(model, 1)
    jacobian = torch.zeros(height * width, height * width, dtype=torch.float64)
    for seed in range(3):  # several random inputs, so that no ReLU that happens to be off hides a dependency
        x = torch.rand(1, 1, height, width, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
        jacobian += torch.autograd.functional.jacobian(lambda x: model(x, context=y).flatten(), x).reshape(
            height * width, height * width
        ).abs()
    upper = torch.triu(torch.ones_like(jacobian, dtype=torch.bool))  # q >= p
    assert torch.all(jacobian[upper] == 0)
    assert (jacobian[~upper] > 0).double().mean() > 0.5


@pytest.mark.parametrize("cls", MODELS)
@pytest.mark.parametrize("num_classes", [0, 2])
def test_receptive_field_never_includes_the_pixel_or_later_ones(cls, num_classes):
    height, width = 5, 6
    model = tiny_model(cls, num_classes, image_size=height, channels=3, num_layers=4)
    for row, column in itertools.product(range(height), range(width)):
        field = receptive_field(model, (row, column), (height, width), context=1 if num_classes else None)
        assert field.dtype == torch.bool and field.shape == (height, width)
        later = torch.arange(height * width).reshape(height, width) >= row * width + column
        assert not field[later].any(), (row, column)
        if (row, column) != (0, 0):
            assert field.any()


def test_training_mode_batchnorm_leaks_future_pixels():
    """Why sampling and exact likelihoods need eval mode: batch statistics mix every pixel into every logit."""
    model = tiny_model(PixelCNN, image_size=5)
    x = torch.rand(2, 1, 5, 5, dtype=torch.float64, requires_grad=True)
    model.train()
    (gradient,) = torch.autograd.grad(model(x)[0, 0, 0, 0], x)
    assert gradient[0, 0, 2, 2] != 0 and gradient[1].abs().sum() > 0  # a later pixel, another image
    model.eval()
    (gradient,) = torch.autograd.grad(model(x)[0, 0, 0, 0], x)
    assert torch.all(gradient == 0)  # pixel (0, 0) depends on nothing


# ----------------------------------------------------------------------------------------------------------
# The blind spot
# ----------------------------------------------------------------------------------------------------------
def pixelcnn_field_by_paths(kernel_size, hidden_kernel, num_layers, position, shape) -> torch.Tensor:
    """Reference: input pixels joined to ``position`` by a path of unmasked kernel taps, layer by layer."""

    def offsets(kernel, mask_type):
        half = kernel // 2
        taps = [(a, b) for a in range(-half, 1) for b in range(-half, half + 1)]
        return [(a, b) for a, b in taps if a < 0 or b < 0 or (mask_type == "B" and b == 0)]

    def inside(r, s):
        return 0 <= r < shape[0] and 0 <= s < shape[1]

    layers = [offsets(kernel_size, "A")] + [offsets(hidden_kernel, "B")] * (num_layers - 1)
    reached = {tuple(position)}
    for layer in reversed(layers):  # from the output back to the input
        reached = {(r + a, s + b) for r, s in reached for a, b in layer if inside(r + a, s + b)}
    field = torch.zeros(shape, dtype=torch.bool)
    for r, s in reached:
        field[r, s] = True
    return field


def gated_field_by_formula(kernel_size, hidden_kernel, num_layers, position, shape) -> torch.Tensor:
    """Reference from the module docstring: the link of layer l reads rows up to 1 + c1 + c(l - 1) above and
    columns -(c1 + c(l-1)) - c(L - l) .. c1 + c(l - 1); the current row is read c1 + c(L - 1) to the left."""
    first, half, (row, column) = kernel_size // 2, hidden_kernel // 2, position
    field = torch.zeros(shape, dtype=torch.bool)
    for layer in range(1, num_layers + 1):
        vertical = first + half * (layer - 1)
        left = vertical + half * (num_layers - layer)
        for up in range(1, 1 + vertical + 1):
            if row - up >= 0:
                field[row - up, max(column - left, 0) : column + vertical + 1] = True
    field[row, max(column - first - half * (num_layers - 1), 0) : column] = True
    return field


def test_pixelcnn_blind_spot_matches_path_count():
    shape, position = (7, 7), (4, 3)
    model = PixelCNN(channels=3, num_layers=4, kernel_size=3, hidden_kernel=3, image_size=7)
    field = receptive_field(model, position)
    assert torch.equal(field, pixelcnn_field_by_paths(3, 3, 4, position, shape))
    # reach: 1 + 3 = 4 rows up and 4 columns right, yet the row just above is read only 1 column to the right
    assert model.receptive_field_reach == 4
    assert field[3, 4] and not field[3, 5] and not field[3, 6]  # (3, 5), (3, 6) precede (4, 3): the blind spot
    assert not field[2, 6] and field[2, 5]


def test_problem_set_pixelcnn_blind_spot_at_full_size():
    """The problem set's geometry (7x7 type A, nine 3x3 type B): reach 12 rows; the row just above is read only
    3 columns to the right, columns +4..+12 are missed."""
    model = PixelCNN(channels=2, image_size=28)
    assert model.receptive_field_reach == 12
    row, column = 20, 10
    field = receptive_field(model, (row, column))
    assert torch.equal(field, pixelcnn_field_by_paths(7, 3, 10, (row, column), (28, 28)))
    assert field[row - 1, column + 3] and not field[row - 1, column + 4 : column + 13].any()
    assert field[row - 12, column] and not field[: row - 12].any()


def test_gated_pixelcnn_has_no_blind_spot():
    shape = (7, 7)
    model = GatedPixelCNN(channels=3, num_layers=4, kernel_size=3, hidden_kernel=3, image_size=7)
    assert model.receptive_field_reach == 5
    position = (4, 3)  # within reach of every earlier pixel
    field = receptive_field(model, position)
    preceding = torch.arange(49).reshape(shape) < position[0] * 7 + position[1]
    assert torch.equal(field, preceding)
    assert torch.equal(field, gated_field_by_formula(3, 3, 4, position, shape))
    # the plain PixelCNN of the same depth misses some of them
    assert not torch.equal(receptive_field(PixelCNN(3, 4, 3, 3, image_size=7), position), preceding)
    # beyond the reach: row 6 reads rows 1..5 only, and the formula holds exactly
    field = receptive_field(model, (6, 6))
    assert torch.equal(field, gated_field_by_formula(3, 3, 4, (6, 6), shape))
    assert not field[0].any() and field[1, 2:].all() and not field[1, :2].any()


@settings(max_examples=12, deadline=None)
@given(
    first_half=st.integers(1, 3),
    hidden_half=st.integers(0, 2),
    num_layers=st.integers(1, 4),
    row=st.integers(0, 7),
    column=st.integers(0, 7),
)
def test_receptive_fields_match_the_references_over_geometries(first_half, hidden_half, num_layers, row, column):
    """Both models, any kernel sizes and depth: the gradient map equals the path count (PixelCNN) or the
    rectangle formula (gated); to the upper right the PixelCNN sees b <= c1 + c min(d - 1, L - 1) columns."""
    kernel_size, hidden_kernel, shape = 2 * first_half + 1, 2 * hidden_half + 1, (8, 8)
    options = dict(channels=1, num_layers=num_layers, kernel_size=kernel_size, hidden_kernel=hidden_kernel)
    plain = receptive_field(PixelCNN(**options, image_size=8), (row, column))
    assert torch.equal(plain, pixelcnn_field_by_paths(kernel_size, hidden_kernel, num_layers, (row, column), shape))
    gated = receptive_field(GatedPixelCNN(**options, image_size=8), (row, column))
    assert torch.equal(gated, gated_field_by_formula(kernel_size, hidden_kernel, num_layers, (row, column), shape))
    reach = first_half + hidden_half * (num_layers - 1)
    if first_half >= hidden_half:
        for up in range(1, min(reach, row) + 1):
            for right in range(1, shape[1] - column):
                assert bool(plain[row - up, column + right]) == (
                    right <= first_half + hidden_half * min(up - 1, num_layers - 1)
                ), (up, right)


def test_gated_default_geometry():
    model = GatedPixelCNN(channels=2, image_size=28)
    assert model.receptive_field_reach == 11
    field = receptive_field(model, (20, 10))
    assert torch.equal(field, gated_field_by_formula(7, 3, 8, (20, 10), (28, 28)))
    assert field[19, 10:21].all()  # the row above, 10 columns to the right: no blind spot


# ----------------------------------------------------------------------------------------------------------
# Exact likelihood
# ----------------------------------------------------------------------------------------------------------
def all_binary_images(height: int, width: int) -> torch.Tensor:
    codes = torch.arange(2 ** (height * width))
    bits = (codes[:, None] >> torch.arange(height * width)) & 1
    return bits.to(torch.float64).reshape(-1, 1, height, width)


@pytest.mark.parametrize("cls", MODELS)
@pytest.mark.parametrize("num_classes", [0, 3])
def test_exact_normalisation_over_all_4x4_images(cls, num_classes):
    model = tiny_model(cls, num_classes, image_size=4, channels=4)
    images = all_binary_images(4, 4)  # 65,536
    y = torch.full((images.shape[0],), 2) if num_classes else None
    with torch.no_grad():
        log_p = model.log_prob(images, context=y)
    assert log_p.shape == (65536,) and torch.all(log_p <= 0)
    assert torch.logsumexp(log_p, 0).exp().item() == pytest.approx(1.0, abs=1e-4)
    assert log_p.std() > 0.5  # a far from uniform model: the check is not trivially met


def test_normalisation_fails_when_the_first_layer_sees_its_own_pixel():
    """The check above can fail: a type-B first layer (the model peeks at x_i) is not normalised."""
    model = tiny_model(PixelCNN, image_size=4, channels=4)
    model.convs[0].mask[0, 0, 1, 1] = 1.0
    with torch.no_grad():
        total = model.log_prob(all_binary_images(4, 4)).exp().sum().item()
    assert abs(total - 1.0) > 1e-3  # ten times the tolerance above


@pytest.mark.parametrize("cls", MODELS)
def test_log_prob_is_minus_problem_set_bce(cls):
    """Problem set 2, problem 1: -log p(x) = sum over pixels of F.binary_cross_entropy(sigmoid(logits), x)."""
    model = tiny_model(cls, image_size=5).float()
    x = torch.bernoulli(torch.full((4, 1, 5, 5), 0.3))
    with torch.no_grad():
        logits = model(x)
        bce = F.binary_cross_entropy(torch.sigmoid(logits), x, reduction="none").sum(dim=(1, 2, 3))
        log_p = model.log_prob(x)
        per_pixel = model.log_prob_per_pixel(x)
    assert logits.shape == (4, 1, 5, 5) and log_p.shape == (4,) and per_pixel.shape == (4, 5, 5)
    torch.testing.assert_close(-log_p, bce, rtol=1e-5, atol=1e-4)
    torch.testing.assert_close(per_pixel.sum(dim=(1, 2)), log_p)


def test_default_parameter_counts():
    assert count_parameters(PixelCNN()) == 1_337_345  # problem set 2: "about 1.337M"
    assert count_parameters(PixelCNN(num_classes=10)) == 1_337_345 + 10 * 128 * 10
    assert count_parameters(GatedPixelCNN()) == 634_369
    assert count_parameters(GatedPixelCNN(num_classes=10)) == 634_369 + 8 * 2 * 128 * 10
    model = PixelCNN()
    unmasked = sum(int((conv.weight * conv.mask).ne(0).sum()) + conv.bias.numel() for conv in model.convs)
    unmasked += sum(p.numel() for p in model.norms.parameters()) + count_parameters(model.head)
    assert unmasked == 744_321  # as documented: the rest are masked to zero


def test_class_biases_start_at_zero():
    """V = 0 at initialisation: the conditional model starts as the unconditional one (same seed)."""
    torch.manual_seed(0)
    conditional = PixelCNN(4, 2, 3, 3, num_classes=3, image_size=5).eval()
    torch.manual_seed(0)
    plain = PixelCNN(4, 2, 3, 3, image_size=5).eval()
    x = torch.bernoulli(torch.full((3, 1, 5, 5), 0.5))
    torch.testing.assert_close(conditional(x, context=torch.tensor([0, 1, 2])), plain(x))


# ----------------------------------------------------------------------------------------------------------
# Sampling
# ----------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("cls", MODELS)
@pytest.mark.parametrize("num_classes", [0, 3])
def test_fast_and_naive_sampling_give_identical_samples(cls, num_classes):
    model = tiny_model(cls, num_classes, image_size=5, num_layers=3, kernel_size=5)
    y = labels_for(model, 6)
    for seed in range(2):
        fast = model.sample(6, context=y, generator=torch.Generator().manual_seed(seed), image_size=(5, 7))
        naive = model.sample(6, context=y, generator=torch.Generator().manual_seed(seed), image_size=(5, 7), fast=False)
        assert fast.shape == (6, 1, 5, 7)
        assert torch.equal(fast, naive)
        assert set(fast.unique().tolist()) <= {0.0, 1.0}
        assert 0 < fast.mean() < 1


@pytest.mark.parametrize("cls", MODELS)
def test_samples_follow_the_model_distribution(cls):
    """Empirical frequencies of 2x3 samples (fast sampler) match exp(log_prob) of all 64 images."""
    model = tiny_model(cls, image_size=2, num_layers=2)
    images = all_binary_images(2, 3)
    with torch.no_grad():
        probabilities = model.log_prob(images).exp()
    samples = model.sample(20000, generator=torch.Generator().manual_seed(0), image_size=(2, 3))
    codes = (samples.reshape(-1, 6).long() << torch.arange(6)).sum(dim=1)
    frequencies = torch.bincount(codes, minlength=64).double() / 20000
    assert 0.5 * (frequencies - probabilities).abs().sum() < 0.03  # total variation


@pytest.mark.parametrize("cls", MODELS)
def test_sample_runs_in_eval_mode_and_restores_modes(cls):
    model = tiny_model(cls, image_size=4).train()
    model.head.eval()  # a mixed state is restored module by module
    before = {module: module.training for module in model.modules()}
    seen = []
    handles = [m.register_forward_pre_hook(lambda m, _: seen.append(m.training)) for m in model.modules()]
    for fast in (True, False):
        model.sample(2, generator=torch.Generator().manual_seed(0), fast=fast)
    for handle in handles:
        handle.remove()
    assert seen and not any(seen)
    assert {module: module.training for module in model.modules()} == before
    assert model.training and not model.head.training


@pytest.mark.parametrize("cls", MODELS)
def test_complete_keeps_known_rows(cls):
    model = tiny_model(cls, num_classes=2, image_size=6)
    x = torch.bernoulli(torch.full((3, 1, 6, 6), 0.5, dtype=torch.float64))
    y = torch.tensor([0, 1, 1])
    completed = model.complete(x, 3, context=y, generator=torch.Generator().manual_seed(1))
    naive = model.complete(x, 3, context=y, generator=torch.Generator().manual_seed(1), fast=False)
    assert completed.shape == x.shape and torch.equal(completed, naive)
    assert torch.equal(completed[:, :, :3], x[:, :, :3])
    assert set(completed.unique().tolist()) <= {0.0, 1.0}
    assert not torch.equal(completed, x)  # 54 sampled pixels (the chance that all match is negligible)
    assert torch.equal(model.complete(x, 6, context=y), x)
    # complete(x, 0) is a fresh draw: the same as sample() with the same generator
    start = model.complete(x, 0, context=y, generator=torch.Generator().manual_seed(2))
    assert torch.equal(start, model.sample(3, context=y, generator=torch.Generator().manual_seed(2), image_size=6))


# ----------------------------------------------------------------------------------------------------------
# Errors
# ----------------------------------------------------------------------------------------------------------
def test_constructor_errors():
    with pytest.raises(ModelConfigError, match="odd integer"):
        MaskedConv2d(1, 4, 4, "A")
    with pytest.raises(ModelConfigError, match="mask_type must be 'A'"):
        MaskedConv2d(1, 4, 3, "C")
    with pytest.raises(ModelConfigError, match="1x1 kernel of type A"):
        MaskedConv2d(1, 4, 1, "A")
    with pytest.raises(ModelConfigError, match="out_channels must be a positive integer"):
        MaskedConv2d(1, 0, 3)
    for cls in MODELS:
        with pytest.raises(ModelConfigError, match=rf"{cls.__name__}: channels must be a positive integer"):
            cls(channels=0)
        with pytest.raises(ModelConfigError, match="kernel_size .* odd integer >= 3"):
            cls(kernel_size=6)
        with pytest.raises(ModelConfigError, match="hidden_kernel must be an odd"):
            cls(hidden_kernel=2)
        with pytest.raises(ModelConfigError, match="num_layers must be a positive integer"):
            cls(num_layers=0)
        with pytest.raises(ModelConfigError, match="num_classes"):
            cls(num_classes=-1)
        with pytest.raises(ModelConfigError, match="image_size"):
            cls(image_size=True)


@pytest.mark.parametrize("cls", MODELS)
def test_input_errors(cls):
    conditional = cls(channels=2, num_layers=2, kernel_size=3, num_classes=3, image_size=4)
    plain = cls(channels=2, num_layers=2, kernel_size=3, image_size=4)
    x = torch.zeros(2, 1, 4, 4)
    with pytest.raises(ValueError, match=r"class-conditional \(num_classes=3\): pass labels as context="):
        conditional.log_prob(x)
    with pytest.raises(ValueError, match=r"labels must lie in 0..2 .* got values in 0..3"):
        conditional(x, context=torch.tensor([0, 3]))
    with pytest.raises(ValueError, match=r"context must have shape \[2\]"):
        conditional(x, context=torch.tensor([0, 1, 2]))
    with pytest.raises(ValueError, match="integer tensor"):
        conditional(x, context=torch.tensor([0.0, 1.0]))
    with pytest.raises(ValueError, match="unconditional"):
        plain(x, context=torch.tensor([0, 1]))
    with pytest.raises(ValueError, match=r"\[B, 1, H, W\].*x.view\(-1, 1, 28, 28\)"):
        plain.log_prob(torch.zeros(2, 16))
    with pytest.raises(ValueError, match=r"\[B, 1, H, W\]"):
        plain(torch.zeros(2, 3, 4, 4))
    with pytest.raises(ValueError, match="floating-point"):
        plain(torch.zeros(2, 1, 4, 4, dtype=torch.uint8))
    with pytest.raises(ValueError, match=r"values in \[0, 1\]"):
        plain.log_prob(torch.full((1, 1, 4, 4), 255.0))
    with pytest.raises(ValueError, match="n must be a positive integer"):
        plain.sample(0)
    with pytest.raises(ValueError, match="image_size must be"):
        plain.sample(1, image_size=(4, 0))
    with pytest.raises(ValueError, match="class-conditional"):
        conditional.sample(2)
    with pytest.raises(ValueError, match=r"known_rows must be an integer in 0..4"):
        plain.complete(x, 5)
    with pytest.raises(ValueError, match=r"position must be \(row, column\) inside the 4x4 image"):
        receptive_field(plain, (4, 0))


# ----------------------------------------------------------------------------------------------------------
# A small golden training run
# ----------------------------------------------------------------------------------------------------------
def two_prototypes() -> torch.Tensor:
    cross = torch.zeros(6, 6)
    cross[:, 2] = 1
    cross[2, :] = 1
    square = torch.zeros(6, 6)
    square[1:5, 1] = square[1:5, 4] = square[1, 1:5] = square[4, 1:5] = 1
    return torch.stack([cross, square])[:, None]


@pytest.mark.parametrize("num_classes, threshold", [(0, 1.2), (2, 0.5)])
def test_golden_training_run_on_two_prototypes(num_classes, threshold):
    """Two 6x6 images, equally likely: the best unconditional NLL is log 2 = 0.69 nats per image, and 0 given
    the label. From about 25 nats, 150 Adam steps (seeded) reach below the stated thresholds (eval mode)."""
    torch.manual_seed(0)
    data, labels = two_prototypes().repeat(2, 1, 1, 1), torch.tensor([0, 1, 0, 1])
    model = PixelCNN(channels=8, num_layers=4, kernel_size=3, hidden_kernel=3, num_classes=num_classes, image_size=6)
    y = labels if num_classes else None
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)
    with torch.no_grad():
        start = -model.eval().log_prob(data, context=y).mean().item()
    model.train()
    for _ in range(150):
        loss = -model.log_prob(data, context=y).mean()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    with torch.no_grad():
        nll = -model.eval().log_prob(data, context=y).mean().item()
    assert start > 20 and nll < threshold, (start, nll)
    if num_classes == 0:
        assert nll > math.log(2) - 0.05  # cannot beat the entropy of the data


# ----------------------------------------------------------------------------------------------------------
# Channels-last storage (speed) changes nothing computed
# ----------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("cls", MODELS)
def test_channels_last_weights_give_the_same_logits_and_resume_bit_exactly(cls, tmp_path):
    from dgmlab.data import TensorBatches
    from dgmlab.objectives import exact_nll
    from dgmlab.train import TrainSettings, fit

    model = tiny_model(cls, image_size=6)
    weights = [p for p in model.parameters() if p.dim() == 4]
    assert weights and all(p.is_contiguous(memory_format=torch.channels_last) and not p.is_contiguous()
                           for p in weights if p.shape[1] > 1 and p.shape[2] * p.shape[3] > 1)
    contiguous = tiny_model(cls, image_size=6).to(memory_format=torch.contiguous_format)
    x = torch.bernoulli(torch.full((5, 1, 6, 6), 0.5, dtype=torch.float64))
    torch.testing.assert_close(model(x), contiguous(x), rtol=1e-12, atol=1e-12)

    # 2 epochs == 1 epoch, resume from the (contiguous) checkpoint, 1 more: Adam's state keeps working
    def run(epochs, directory, resume=False):
        torch.manual_seed(0)
        net = cls(channels=4, num_layers=2, kernel_size=3, hidden_kernel=3, image_size=6)
        data = TensorBatches(torch.bernoulli(torch.full((24, 1, 6, 6), 0.3)), batch_size=8, seed=1)
        fit(net, lambda m, b: exact_nll(m, b[0]), data,
            settings=TrainSettings(epochs=epochs, lr=1e-2, seed=2, progress=False), run_dir=directory, resume=resume)
        return net

    straight = run(2, tmp_path / "a")
    run(1, tmp_path / "b")
    resumed = run(2, tmp_path / "b", resume=True)
    for (name, a), (_, b) in zip(straight.state_dict().items(), resumed.state_dict().items(), strict=True):
        assert torch.equal(a, b), name
