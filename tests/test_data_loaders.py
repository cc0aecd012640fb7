"""TensorBatches: coverage of every example, reproducible private shuffling, transforms, errors."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch.utils.data import DataLoader, TensorDataset

from dgmlab.data import TensorBatches


def indices_of(loader: TensorBatches) -> list[torch.Tensor]:
    """One epoch of batches of a loader over ``arange(n)``, as index tensors."""
    return [batch[0] for batch in loader]


@settings(max_examples=60, deadline=None)
@given(
    n=st.integers(min_value=1, max_value=300),
    batch_size=st.integers(min_value=1, max_value=70),
    drop_last=st.booleans(),
    shuffle=st.booleans(),
    seed=st.integers(min_value=0, max_value=2**40),
)
def test_each_example_exactly_once_per_epoch(n, batch_size, drop_last, shuffle, seed):
    loader = TensorBatches(torch.arange(n), batch_size=batch_size, drop_last=drop_last, shuffle=shuffle, seed=seed)
    for _ in range(2):
        batches = indices_of(loader)
        assert len(batches) == len(loader)
        sizes = [batch.shape[0] for batch in batches]
        assert all(size == batch_size for size in sizes[:-1])
        seen = torch.cat(batches) if batches else torch.empty(0, dtype=torch.int64)
        assert seen.unique().numel() == seen.numel(), "an example appeared twice"
        if drop_last:
            assert seen.numel() == (n // batch_size) * batch_size
            assert all(size == batch_size for size in sizes)
        else:
            assert sorted(seen.tolist()) == list(range(n))
            assert sizes[-1] == n - (len(batches) - 1) * batch_size
        if not shuffle:
            assert seen.tolist() == list(range(seen.numel()))


def test_mnist_sized_epoch():
    loader = TensorBatches(torch.arange(60_000), torch.zeros(60_000, 1), batch_size=256)
    assert len(loader) == 235 and loader.num_examples == 60_000 and loader.batch_size == 256
    batches = list(loader)
    assert len(batches) == 235 and batches[-1][0].shape == (96,) and batches[-1][1].shape == (96, 1)
    assert sorted(torch.cat([b[0] for b in batches]).tolist()) == list(range(60_000))
    dropping = TensorBatches(torch.arange(60_000), batch_size=256, drop_last=True)
    assert len(dropping) == 234 == len(list(dropping))


def test_batches_are_tuples_and_rows_stay_aligned():
    x = torch.arange(50).float().unsqueeze(1).repeat(1, 3)
    labels = torch.arange(50)
    loader = TensorBatches(x, labels, batch_size=8, seed=4)
    for x_batch, label_batch in loader:
        assert torch.equal(x_batch[:, 0].long(), label_batch)
    single = next(iter(TensorBatches(labels, batch_size=8)))
    assert isinstance(single, tuple) and len(single) == 1


def test_permutation_differs_by_epoch_and_repeats_for_same_seed_and_epoch():
    loader = TensorBatches(torch.arange(1000), batch_size=100, seed=7)
    assert loader.epoch == 0
    epoch0 = torch.cat(indices_of(loader))
    assert loader.epoch == 1  # iterating advanced the counter
    epoch1 = torch.cat(indices_of(loader))
    assert not torch.equal(epoch0, epoch1)
    loader.set_epoch(0)
    assert torch.equal(torch.cat(indices_of(loader)), epoch0)
    twin = TensorBatches(torch.arange(1000), batch_size=100, seed=7)
    twin.set_epoch(1)
    assert torch.equal(torch.cat(indices_of(twin)), epoch1)
    other_seed = TensorBatches(torch.arange(1000), batch_size=100, seed=8)
    assert not torch.equal(torch.cat(indices_of(other_seed)), epoch0)
    assert torch.equal(loader.permutation(1), epoch1)


def test_set_epoch_before_each_epoch_equals_plain_iteration():
    plain = TensorBatches(torch.arange(64), batch_size=10, seed=1)
    managed = TensorBatches(torch.arange(64), batch_size=10, seed=1)
    for epoch in range(3):
        managed.set_epoch(epoch)
        assert torch.equal(torch.cat(indices_of(plain)), torch.cat(indices_of(managed)))


def test_global_random_states_are_untouched():
    torch_state = torch.get_rng_state()
    numpy_state = np.random.get_state()
    loader = TensorBatches(
        torch.rand(300, 5, generator=torch.Generator().manual_seed(0)),
        batch_size=32,
        transform=lambda batch, generator: torch.bernoulli(batch, generator=generator),
    )
    for _ in range(2):
        list(loader)
    assert torch.equal(torch.get_rng_state(), torch_state)
    after = np.random.get_state()
    assert np.array_equal(after[1], numpy_state[1]) and after[2:] == numpy_state[2:]


def test_transform_applies_to_first_tensor_with_a_per_epoch_generator():
    generators = []

    def shift(batch, generator):
        generators.append(generator)
        return batch + 1000 + torch.rand(batch.shape, generator=generator)

    labels = torch.arange(20)
    loader = TensorBatches(labels.float(), labels, batch_size=6, shuffle=False, transform=shift, seed=2)
    first = list(loader)
    for x_batch, label_batch in first:
        assert torch.all(x_batch >= label_batch.float() + 1000) and torch.all(x_batch < label_batch + 1001)
    assert len({id(generator) for generator in generators}) == 1  # one generator per epoch
    second = list(loader)
    assert not torch.equal(first[0][0], second[0][0])
    loader.set_epoch(0)
    assert all(torch.equal(a[0], b[0]) for a, b in zip(first, loader, strict=True))


def test_same_multiset_as_a_dataloader_over_tensor_dataset():
    x = torch.randn(203, 4, generator=torch.Generator().manual_seed(5))
    labels = torch.arange(203)
    ours = torch.cat([torch.cat([xb, yb[:, None].float()], 1) for xb, yb in TensorBatches(x, labels, batch_size=32)])
    theirs = torch.cat(
        [
            torch.cat([xb, yb[:, None].float()], 1)
            for xb, yb in DataLoader(
                TensorDataset(x, labels),
                batch_size=32,
                shuffle=True,
                generator=torch.Generator().manual_seed(0),
            )
        ]
    )
    order = ours[:, -1].argsort()
    assert torch.equal(ours[order], theirs[theirs[:, -1].argsort()])
    assert torch.equal(ours[order][:, :4], x)


def test_to_device_copy_keeps_settings_and_epoch():
    loader = TensorBatches(torch.arange(30), batch_size=4, seed=9, drop_last=True)
    list(loader)
    moved = loader.to("cpu")
    assert moved is not loader and moved.epoch == loader.epoch == 1 and len(moved) == len(loader) == 7
    assert moved.device == torch.device("cpu")
    assert all(torch.equal(a[0], b[0]) for a, b in zip(loader, moved, strict=True))
    assert "batch_size=4" in repr(moved)


def test_error_messages():
    with pytest.raises(ValueError, match="at least one tensor"):
        TensorBatches(batch_size=4)
    with pytest.raises(ValueError, match="same first dimension, got lengths \\[3, 4\\]"):
        TensorBatches(torch.zeros(3), torch.zeros(4), batch_size=2)
    for bad in (0, -1, 2.5, True, None):
        with pytest.raises(ValueError, match="batch_size must be an integer >= 1"):
            TensorBatches(torch.zeros(3), batch_size=bad)
    with pytest.raises(TypeError, match="not a tensor"):
        TensorBatches([1, 2, 3], batch_size=2)
    with pytest.raises(ValueError, match="scalar"):
        TensorBatches(torch.tensor(1.0), batch_size=2)
    with pytest.raises(ValueError, match="seed must be an integer"):
        TensorBatches(torch.zeros(3), batch_size=2, seed=1.5)
    with pytest.raises(ValueError, match="transform must be callable"):
        TensorBatches(torch.zeros(3), batch_size=2, transform="bernoulli")
    loader = TensorBatches(torch.zeros(3), batch_size=2)
    with pytest.raises(ValueError, match="epoch must be an integer >= 0"):
        loader.set_epoch(-1)
    with pytest.raises(TypeError):
        TensorBatches(torch.zeros(3), 2)  # batch_size is keyword-only
