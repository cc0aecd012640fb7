"""Tests of dgmlab.data.views: uniform dequantization of 8-bit images, alone, per epoch and as an MNIST view."""

from __future__ import annotations

import pytest
import torch

import dgmlab.data.mnist as mnist
from dgmlab.data import MnistDataset, TensorBatches, load_mnist, mnist_tensors, uniform_dequantize, views


def all_levels(repeats: int = 40) -> torch.Tensor:
    """Every byte 0..255, ``repeats`` times: ``uint8 [repeats, 256]``."""
    return torch.arange(256, dtype=torch.uint8).repeat(repeats, 1)


def seeded(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def test_values_lie_in_their_cells_and_floor_recovers_the_bytes():
    x = all_levels()
    y = uniform_dequantize(x, seeded(0))
    assert y.dtype == torch.float32 and y.shape == x.shape
    assert float(y.min()) >= 0.0 and float(y.max()) < 1.0
    # floor(256 y) = x exactly, for every level
    assert torch.equal(torch.floor(256 * y).to(torch.uint8), x)


def test_noise_is_uniform_with_mean_one_half():
    images = torch.randint(0, 256, (64, 784), generator=seeded(1), dtype=torch.uint8)
    noise = 256 * uniform_dequantize(images, seeded(2)) - images.float()  # u = 256 y - x
    # per example: the mean of 784 U[0, 1) draws, standard error sqrt(1/12 / 784) = 0.0103
    assert torch.all((noise.mean(dim=1) - 0.5).abs() < 0.05)
    # uniform: a quarter of the draws below 1/4, and a variance of 1/12
    assert float((noise < 0.25).float().mean()) == pytest.approx(0.25, abs=0.01)
    assert float(noise.var()) == pytest.approx(1 / 12, abs=0.003)


def test_rounding_up_to_the_next_level_is_prevented(monkeypatch):
    # the largest float32 below 1: 255 + u rounds to 256 in float32, which would give y = 1
    largest_u = torch.nextafter(torch.tensor(1.0), torch.tensor(0.0)).item()
    monkeypatch.setattr(views.torch, "rand", lambda shape, **kwargs: torch.full(shape, largest_u))
    y = uniform_dequantize(torch.tensor([0, 1, 128, 255], dtype=torch.uint8), seeded(0))
    assert float(y.max()) < 1.0
    assert torch.floor(256 * y).tolist() == [0, 1, 128, 255]


def test_same_generator_same_output_and_no_global_rng():
    x = all_levels(4)
    state = torch.get_rng_state()
    first = uniform_dequantize(x, seeded(7))
    assert torch.equal(first, uniform_dequantize(x, seeded(7)))
    assert not torch.equal(first, uniform_dequantize(x, seeded(8)))
    generator = seeded(7)
    uniform_dequantize(x, generator)
    assert not torch.equal(first, uniform_dequantize(x, generator))  # the generator moves on
    assert torch.equal(torch.get_rng_state(), state)
    # integer levels of another dtype give the same values as the bytes
    assert torch.equal(first, uniform_dequantize(x.to(torch.int64), seeded(7)))


def test_bad_inputs():
    with pytest.raises(TypeError, match=r"got dtype torch.float32: pass the bytes"):
        uniform_dequantize(torch.rand(3, 4), seeded(0))
    with pytest.raises(TypeError, match="8-bit"):
        uniform_dequantize(torch.ones(3, dtype=torch.bool), seeded(0))
    with pytest.raises(ValueError, match=r"integer levels in 0..255 .* got values in \[0, 256\]"):
        uniform_dequantize(torch.tensor([0, 256]), seeded(0))
    with pytest.raises(ValueError, match=r"got values in \[-1, 3\]"):
        uniform_dequantize(torch.tensor([-1, 3], dtype=torch.int16), seeded(0))
    with pytest.raises(TypeError, match="got list"):
        uniform_dequantize([0, 1, 2], seeded(0))
    with pytest.raises(TypeError, match="needs a torch.Generator"):
        uniform_dequantize(all_levels(1), 0)


def test_dequantization_per_epoch():
    images = torch.randint(0, 256, (100, 784), generator=seeded(0), dtype=torch.uint8)
    loader = TensorBatches(images, batch_size=32, shuffle=False, seed=3, transform=uniform_dequantize)
    epoch0 = torch.cat([batch[0] for batch in loader])
    epoch1 = torch.cat([batch[0] for batch in loader])
    loader.set_epoch(0)
    epoch0_again = torch.cat([batch[0] for batch in loader])
    assert not torch.equal(epoch0, epoch1) and torch.equal(epoch0, epoch0_again)
    for epoch in (epoch0, epoch1):
        assert torch.equal(torch.floor(256 * epoch).to(torch.uint8), images)


def test_mnist_dequantized_view():
    images = load_mnist("train")[0][:50].reshape(50, 784)
    x, labels, transform = mnist_tensors("train", "dequantized", limit=50)
    assert transform is uniform_dequantize and torch.equal(x, images) and labels.shape == (50,)
    test_images = load_mnist("test")[0][:30].reshape(30, 1, 28, 28)
    test_x, _, test_transform = mnist_tensors("test", "dequantized", flatten=False, seed=4, limit=30)
    # the test split: one fixed draw for the seed, no transform
    assert test_transform is None and test_x.dtype == torch.float32 and test_x.shape == (30, 1, 28, 28)
    assert torch.equal(torch.floor(256 * test_x).to(torch.uint8), test_images)
    assert torch.equal(test_x, mnist_tensors("test", "dequantized", flatten=False, seed=4, limit=30)[0])
    assert not torch.equal(test_x, mnist_tensors("test", "dequantized", flatten=False, seed=5, limit=30)[0])
    assert len(MnistDataset("test", view="dequantized", limit=5)) == 5
    with pytest.raises(ValueError, match="'dequantized' view of the test split only"):
        MnistDataset("train", view="dequantized", limit=5)


def test_views_keep_their_old_homes():
    for name in ("to_grey", "binarize_static", "binarize_threshold", "dynamic_binarize", "uniform_dequantize"):
        assert getattr(mnist, name) is getattr(views, name)
    from dgmlab.errors import DgmlabDataError, MnistNotFoundError

    assert mnist.DgmlabDataError is DgmlabDataError and mnist.MnistNotFoundError is MnistNotFoundError
    assert issubclass(MnistNotFoundError, RuntimeError)
