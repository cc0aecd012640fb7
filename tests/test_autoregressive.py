"""Autoregressive models: the causal property by autograd, exact normalisation, the MADE mixture, samplers,
error messages and a small golden training run. Every model is tiny (D <= 12) so the file runs in seconds."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file

from dgmlab.models.autoencoders import ModelConfigError
from dgmlab.models.autoregressive import FVSBN, MADE, NADE, BengioNet, all_binary_configurations

# name -> factory; seeded so every test sees the same weights
MODELS = {
    "fvsbn": lambda d: FVSBN(d),
    "bengio": lambda d: BengioNet(d, hidden_per_position=3),
    "nade": lambda d: NADE(d, hidden=16),
    "made": lambda d: MADE(d, [32]),
    "made_3_layers_random_order": lambda d: MADE(d, [32, 32, 32], order="random", seed=1),
    "made_4_masks_random_orders": lambda d: MADE(d, [40, 40], num_masks=4, order="random", seed=2),
    "made_3_masks_natural_order": lambda d: MADE(d, [40], num_masks=3, order="natural", seed=3),
    "made_direct_gelu_2_masks": lambda d: _random_direct(
        MADE(d, [32, 32], num_masks=2, order="random", seed=4, direct=True, activation="gelu")),
}


def _random_direct(model):
    """The direct weights start at zero; give them values so that the tests see the direct path."""
    with torch.no_grad():
        model.direct.normal_(0, 0.5)
    return model


def build(name: str, d: int, seed: int = 0):
    torch.manual_seed(seed)
    model = MODELS[name](d)
    model.eval()
    return model


def sharpen(model, factor: float = 3.0):
    """Scale every parameter so that the random model's probabilities are far from uniform."""
    with torch.no_grad():
        for parameter in model.parameters():
            parameter.mul_(factor)
    return model


def variants(model):
    """(logits function, order) for every connectivity variant of the model."""
    if isinstance(model, MADE):
        return [((lambda x, k=k: model(x, mask_index=k)), model.orders[k]) for k in range(model.num_masks)]
    return [(model, model.order)]


def positions(order: torch.Tensor) -> torch.Tensor:
    """position[d] = step at which variable d is generated."""
    inverse = torch.empty_like(order)
    inverse[order] = torch.arange(len(order))
    return inverse


# -- the autoregressive property ----------------------------------------------------------------------------
@pytest.mark.parametrize("name", list(MODELS))
def test_jacobian_is_strictly_triangular_in_the_models_order(name):
    d = 10 if "made" not in name else 12
    model = build(name, d)
    x = torch.bernoulli(torch.full((d,), 0.5), generator=torch.Generator().manual_seed(0))
    for logits_of, order in variants(model):
        jacobian = torch.autograd.functional.jacobian(lambda v, f=logits_of: f(v[None])[0], x)  # [i, j]
        position = positions(order)
        allowed = position[None, :] < position[:, None]  # j generated before i
        assert torch.all(jacobian[~allowed] == 0), "a logit depends on its own variable or a later one"
        nonzero = jacobian[allowed] != 0
        # not trivially zero: most allowed dependencies are present, and the last variable sees the past
        assert nonzero.float().mean() > 0.5
        assert (jacobian[order[-1]] != 0).any()
        if not isinstance(model, MADE) or model.direct is not None:  # dense: every earlier variable matters
            assert nonzero.all()


def test_made_masks_follow_the_paper_rule():
    model = MADE(7, [16, 16], num_masks=2, order="random", seed=5)
    for k in range(2):
        input_degrees = positions(model.orders[k]) + 1
        previous = input_degrees
        for l, degrees in enumerate(model.hidden_degrees(k)):
            assert degrees.min() >= previous.min() and degrees.max() <= 6
            torch.testing.assert_close(model.masks(k)[l], degrees[:, None] >= previous[None, :])
            previous = degrees
        torch.testing.assert_close(model.masks(k)[-1], input_degrees[:, None] > previous[None, :])
    assert not torch.equal(model.orders[0], model.orders[1])


# -- exact normalisation ----------------------------------------------------------------------------------
@pytest.mark.parametrize("name", list(MODELS))
def test_probabilities_of_all_configurations_sum_to_one(name):
    model = build(name, 10)
    with torch.no_grad():
        total = model.log_prob(all_binary_configurations(10)).double().exp().sum().item()
    assert total == pytest.approx(1.0, abs=1e-5)


@pytest.mark.parametrize("name", list(MODELS))
def test_one_variable_and_position_zero_work(name):
    model = build(name, 1)
    both = all_binary_configurations(1)
    assert model(both).shape == (2, 1)
    assert model.log_prob(both).exp().sum().item() == pytest.approx(1.0, abs=1e-6)
    assert model.sample(5).shape == (5, 1)


def test_all_binary_configurations():
    every = all_binary_configurations(3)
    assert every.shape == (8, 3) and every.dtype == torch.float32
    assert torch.equal(every[5], torch.tensor([1.0, 0.0, 1.0]))
    assert len(torch.unique(all_binary_configurations(10), dim=0)) == 1024
    with pytest.raises(ValueError, match="integer in 1..24"):
        all_binary_configurations(0)


# -- log_prob: the identities ---------------------------------------------------------------------------
@pytest.mark.parametrize("name", ["fvsbn", "bengio", "nade", "made", "made_3_layers_random_order"])
def test_negative_log_prob_is_the_summed_binary_cross_entropy_of_problem_set_2(name):
    model = build(name, 10)
    x = torch.bernoulli(torch.full((6, 10), 0.4), generator=torch.Generator().manual_seed(1))
    logits = model(x)
    bce = F.binary_cross_entropy(torch.sigmoid(logits), x, reduction="none").sum(-1)
    torch.testing.assert_close(-model.log_prob(x), bce, rtol=1e-5, atol=1e-5)


def test_images_are_flattened():
    model = build("nade", 16)
    images = torch.bernoulli(torch.full((3, 1, 4, 4), 0.5))
    torch.testing.assert_close(model.log_prob(images), model.log_prob(images.reshape(3, 16)))
    torch.testing.assert_close(model(images[:, 0]), model(images.reshape(3, 16)))


def test_made_mixture_is_logsumexp_of_masks_not_averaged_logits():
    model = sharpen(build("made_4_masks_random_orders", 8))
    every = all_binary_configurations(8)
    per_mask = torch.stack([model.log_prob(every, mask_index=k) for k in range(4)])
    mixture = model.log_prob(every)
    torch.testing.assert_close(mixture, torch.logsumexp(per_mask, 0) - math.log(4))
    torch.testing.assert_close(model.log_prob_per_mask(every), per_mask)
    # the invalid ensemble: average the logits, then score them as if they were one model
    averaged_logits = torch.stack([model(every, mask_index=k) for k in range(4)]).mean(0)
    averaged = -F.binary_cross_entropy_with_logits(averaged_logits, every, reduction="none").sum(-1)
    assert (mixture - averaged).abs().max() > 1e-2
    assert averaged.exp().sum().item() != pytest.approx(1.0, abs=1e-3)  # not even normalised
    assert mixture.exp().sum().item() == pytest.approx(1.0, abs=1e-5)


def test_made_cycles_masks_in_training_and_not_in_evaluation():
    model = build("made_3_masks_natural_order", 6)
    x = torch.bernoulli(torch.full((4, 6), 0.5), generator=torch.Generator().manual_seed(0))
    expected = [model(x, mask_index=k) for k in range(3)]
    model.train()
    for call in range(5):
        torch.testing.assert_close(model(x), expected[call % 3])
    assert int(model.current_mask) == 5 % 3 and "current_mask" in model.state_dict()
    torch.testing.assert_close(model.log_prob(x), model.log_prob(x, mask_index=2))  # training: one mask
    model.eval()
    before = int(model.current_mask)
    model(x)
    model.log_prob(x)
    assert int(model.current_mask) == before


def test_made_masks_are_deterministic_buffers_saved_with_the_state_dict(tmp_path):
    model = MADE(8, [16, 16], num_masks=3, order="random", seed=7)
    state = model.state_dict()
    assert {"orders", "mask_0", "mask_1", "mask_2", "degrees_1", "degrees_2"} <= set(state)
    torch.manual_seed(123)  # the masks come from `seed`, not from the global generator
    again = MADE(8, [16, 16], num_masks=3, order="random", seed=7)
    assert all(torch.equal(state[key], again.state_dict()[key]) for key in ("orders", "mask_0", "mask_2"))
    other = MADE(8, [16, 16], num_masks=3, order="random", seed=8)
    assert not torch.equal(state["mask_0"], other.state_dict()["mask_0"])
    save_file(state, str(tmp_path / "made.safetensors"))
    other.load_state_dict(load_file(str(tmp_path / "made.safetensors")))
    every = all_binary_configurations(8)
    model.eval()
    other.eval()
    torch.testing.assert_close(other.log_prob(every), model.log_prob(every))


# -- sampling ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("name", list(MODELS))
def test_incremental_and_naive_samplers_give_identical_samples(name):
    model = build(name, 12)
    fast = model.sample(64, generator=torch.Generator().manual_seed(3))
    slow = model.sample(64, generator=torch.Generator().manual_seed(3), incremental=False)
    assert torch.equal(fast, slow)
    assert fast.shape == (64, 12) and set(fast.unique().tolist()) <= {0.0, 1.0}
    assert not fast.requires_grad
    assert torch.equal(fast, model.sample(64, generator=torch.Generator().manual_seed(3)))  # reproducible


@pytest.mark.parametrize("name", list(MODELS))
@pytest.mark.parametrize("incremental", [True, False])
def test_sampling_runs_in_evaluation_mode_and_restores_the_mode(name, incremental):
    model = build(name, 5)
    modes, seen_by_forward = [], []
    original_train = model.train

    def recording_train(mode=True):
        modes.append(mode)
        return original_train(mode)

    model.train = recording_train
    model.register_forward_pre_hook(lambda module, args: seen_by_forward.append(module.training))
    model.train()
    modes.clear()
    masks_before = getattr(model, "current_mask", torch.tensor(0)).clone()
    model.sample(4, incremental=incremental)
    assert modes[:1] == [False] and model.training  # switched to evaluation mode, then given its mode back
    assert not any(seen_by_forward)  # every forward pass during sampling saw eval mode
    if not incremental:
        assert seen_by_forward  # the naive sampler does call forward
    assert torch.equal(getattr(model, "current_mask", torch.tensor(0)), masks_before)  # no mask cycling
    model.eval()
    model.sample(4, incremental=incremental)
    assert not model.training


@pytest.mark.parametrize("name", ["fvsbn", "bengio", "nade", "made_3_layers_random_order",
                                  "made_4_masks_random_orders"])
def test_sample_frequencies_match_the_model_probabilities(name):
    model = build(name, 3, seed=4)
    sharpen(model)  # so that the 8 probabilities differ
    n = 20_000
    samples = model.sample(n, generator=torch.Generator().manual_seed(0))
    index = (samples * torch.tensor([4.0, 2.0, 1.0])).sum(1).long()  # the row of all_binary_configurations(3)
    frequencies = torch.bincount(index, minlength=8).double() / n
    with torch.no_grad():
        p = model.log_prob(all_binary_configurations(3)).exp().double()
    standard_error = (p * (1 - p) / n).sqrt()
    assert torch.all((frequencies - p).abs() < 5 * standard_error + 1e-3), (frequencies, p)


# -- bad input --------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("factory", "message"),
    [
        (lambda: FVSBN(0), "num_inputs"),
        (lambda: FVSBN(2.5), "num_inputs"),
        (lambda: BengioNet(0, 4), "num_inputs"),
        (lambda: BengioNet(5, 0), "hidden_per_position"),
        (lambda: NADE(0, 4), "num_inputs"),
        (lambda: NADE(5, -1), "hidden"),
        (lambda: MADE(0, [8]), "num_inputs"),
        (lambda: MADE(5, []), "hidden_dims"),
        (lambda: MADE(5, [8, 0]), "hidden_dims"),
        (lambda: MADE(5, 8), "hidden_dims"),
        (lambda: MADE(5, [8], num_masks=0), "num_masks"),
        (lambda: MADE(5, [8], order="reversed"), "unknown order 'reversed'"),
        (lambda: MADE(5, [8], seed=1.5), "seed"),
        (lambda: MADE(5, [8], direct="yes"), "direct must be true or false"),
        (lambda: MADE(5, [8], activation="tanh"), "unknown activation 'tanh'; choose one of relu, gelu"),
    ],
)
def test_bad_constructor_arguments_say_what_is_wrong(factory, message):
    with pytest.raises(ModelConfigError, match=message):
        factory()


@pytest.mark.parametrize("name", ["fvsbn", "bengio", "nade", "made", "made_4_masks_random_orders"])
def test_bad_inputs_to_log_prob_and_sample(name):
    model = build(name, 6)
    with pytest.raises(ValueError, match="expected 6 variables per example, got 7"):
        model.log_prob(torch.zeros(2, 7))
    with pytest.raises(ValueError, match="must be 0 or 1"):
        model.log_prob(torch.full((2, 6), 0.5))
    with pytest.raises(ValueError, match="expected a batch"):
        model.log_prob(torch.zeros(6))
    with pytest.raises(ValueError, match="n must be a positive integer"):
        model.sample(0)


def test_bad_mask_index():
    model = build("made_3_masks_natural_order", 4)
    with pytest.raises(ValueError, match="mask_index must be an integer in 0..2"):
        model.log_prob(torch.zeros(1, 4), mask_index=3)
    with pytest.raises(ValueError, match="mask_index"):
        model.sample(2, mask_index=-1)


# -- a small golden training run --------------------------------------------------------------------------
def prototype_data(n: int = 256, d: int = 10, seed: int = 0) -> torch.Tensor:
    """Binary data from two prototypes (as in test_train.py); its distribution has an entropy of 3.94 nats."""
    g = torch.Generator().manual_seed(seed)
    prototypes = torch.tensor([[0.9] * (d // 2) + [0.1] * (d - d // 2), [0.1] * (d // 2) + [0.9] * (d - d // 2)])
    return torch.bernoulli(prototypes[torch.randint(0, 2, (n,), generator=g)], generator=g)


@pytest.mark.parametrize(("name", "target"), [("made", 4.3), ("nade", 4.3), ("made_4_masks_random_orders", 4.3)])
def test_training_drives_the_nll_well_below_its_initial_value(name, target):
    data = prototype_data()
    model = build(name, 10)
    with torch.no_grad():
        initial = -model.log_prob(data).mean().item()
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)
    model.train()
    for _ in range(200):
        optimizer.zero_grad()
        loss = -model.log_prob(data).mean()
        loss.backward()
        optimizer.step()
    model.eval()
    with torch.no_grad():
        final = -model.log_prob(data).mean().item()
    # about 10 log 2 = 6.9 nats at initialisation; the data's entropy is 3.94 nats; seeded runs reach 4.05-4.11
    assert initial > 6.5
    assert final < target, f"NLL {final:.3f} nats (from {initial:.3f})"


# -- MADE's direct connections and the output-bias initialisation -------------------------------------------
def test_made_direct_connections_start_at_zero_and_follow_each_masks_ordering():
    torch.manual_seed(0)
    plain = MADE(9, [24, 24], num_masks=3, order="random", seed=6)
    torch.manual_seed(0)
    direct = MADE(9, [24, 24], num_masks=3, order="random", seed=6, direct=True)
    x = torch.bernoulli(torch.full((5, 9), 0.5), generator=torch.Generator().manual_seed(1))
    # A = 0 at initialisation: the same model as without direct connections, and D^2 more parameters
    assert torch.equal(direct(x, mask_index=1), plain(x, mask_index=1))
    extra = sum(p.numel() for p in direct.parameters()) - sum(p.numel() for p in plain.parameters())
    assert extra == 81
    for k in range(3):
        position = positions(direct.orders[k])
        assert torch.equal(direct.mask_direct[k], position[:, None] > position[None, :])
        assert direct.mask_direct[k].sum() == 9 * 8 // 2  # strictly triangular in the ordering
    # the direct term is exactly (A * M^A) x: remove the hidden path's contribution and compare
    with torch.no_grad():
        direct.direct.normal_()
    expected = plain(x, mask_index=2) + x @ (direct.direct * direct.mask_direct[2]).T
    assert torch.allclose(direct(x, mask_index=2), expected, atol=1e-6)


@pytest.mark.parametrize("name", ["fvsbn", "bengio", "nade", "made", "made_direct_gelu_2_masks"])
def test_init_output_bias_starts_training_at_the_independent_pixel_model(name):
    torch.manual_seed(0)
    model = MODELS[name](8)
    mean = torch.tensor([0.0, 0.1, 0.2, 0.3, 0.5, 0.7, 0.9, 1.0])
    model.set_output_bias(mean)
    bias = model._output_bias()
    assert torch.allclose(torch.sigmoid(bias), mean.clamp(1e-3, 1 - 1e-3), atol=1e-6)
    with pytest.raises(ValueError, match="expected 8 means"):
        model.set_output_bias(torch.full((7,), 0.5))


# -- NADE's hand-derived gradients ----------------------------------------------------------------------------
@pytest.mark.parametrize("chunk_size", [1, 4, 32])
def test_nade_fused_logits_and_gradients_match_autograd(monkeypatch, chunk_size):
    from dgmlab.models.autoregressive import NADELogits

    monkeypatch.setattr(NADELogits, "chunk_size", chunk_size)
    torch.manual_seed(0)
    model = NADE(9, hidden=6).double()
    with torch.no_grad():
        for parameter in model.parameters():
            parameter.normal_()
    # 11 examples: the last chunk is partial for chunk sizes 4 and 32
    x = torch.bernoulli(torch.full((11, 9), 0.5, dtype=torch.float64)).requires_grad_()
    assert torch.autograd.gradcheck(NADELogits.apply, (x, model.W, model.c, model.V, model.b))
    fused, plain = model(x), model.logits_by_autograd(x)
    assert torch.allclose(fused, plain, atol=1e-12)
    g = torch.randn_like(fused)
    inputs = [x, model.W, model.c, model.V, model.b]
    for a, b in zip(torch.autograd.grad(fused, inputs, g), torch.autograd.grad(plain, inputs, g), strict=True):
        assert torch.allclose(a, b, atol=1e-10)
