"""Quantizers (dgmlab.models.quantizers): nearest codes against brute force, the straight-through gradient, the
losses and the EMA updates against hand computations, dead-code restarts, code statistics, bit-exact resume from a
state dict, FSQ's and LFQ's grids and indices, LFQ's entropy against the softmax over all codes, and the error
messages of every entry point."""

from __future__ import annotations

import copy
import itertools
import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from dgmlab.errors import ModelConfigError
from dgmlab.models.quantizers import (
    QUANTIZERS,
    FiniteScalarQuantizer,
    LookupFreeQuantizer,
    Quantizer,
    QuantizerOutput,
    VectorQuantizer,
    build_quantizer,
    codebook_perplexity,
    codebook_usage,
    lfq_entropy_terms,
    nearest_code,
)

pytestmark = pytest.mark.usefixtures("single_thread")

F64 = torch.float64


def rows_of(z_e):
    """``[B, d, *S]`` as ``[B prod(S), d]``, in the order of ``indices.reshape(-1)``."""
    return z_e.movedim(1, -1).reshape(-1, z_e.shape[1])


def vq_with_codebook(codebook, **options):
    """A float64 VectorQuantizer whose codebook (and EMA sum) is ``codebook``."""
    quantizer = VectorQuantizer(codebook.shape[0], codebook.shape[1], **options).double()
    with torch.no_grad():
        quantizer.codebook.copy_(codebook)
        if quantizer.ema:
            quantizer.ema_sum.copy_(codebook)
    return quantizer


# ----------------------------------------------------------------------------------------------------------
# Vector quantization: assignment, straight-through, losses
# ----------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("seed, K, d", [(0, 16, 3), (1, 64, 8), (2, 5, 1)])
def test_the_nearest_code_is_the_brute_force_argmin(seed, K, d):
    g = torch.Generator().manual_seed(seed)
    codebook = torch.randn(K, d, generator=g, dtype=F64)
    z_e = torch.randn(4, d, 6, 5, generator=g, dtype=F64)
    out = vq_with_codebook(codebook)(z_e)
    expected = torch.cdist(rows_of(z_e), codebook).argmin(1).reshape(4, 6, 5)
    assert out.indices.dtype == torch.long
    assert torch.equal(out.indices, expected)


def test_ties_go_to_the_lowest_index():
    # codes 1 and 3 coincide; (0, 0) is at distance 1 from codes 1-4, (0.5, 0.5) at 0.5 from codes 1-3
    codebook = torch.tensor([[3.0, 3.0], [1.0, 0.0], [0.0, 1.0], [1.0, 0.0], [-1.0, 0.0]], dtype=F64)
    z = torch.tensor([[1.0, 0.0], [0.0, 0.0], [0.5, 0.5], [-1.0, 0.0], [0.0, 1.0], [-0.0, -0.0]], dtype=F64)
    assert nearest_code(z, codebook).tolist() == [1, 1, 1, 4, 2, 1]
    assert vq_with_codebook(codebook)(z).indices.tolist() == [1, 1, 1, 4, 2, 1]


def test_the_assignment_ignores_bfloat16_autocast():
    g = torch.Generator().manual_seed(3)
    codebook = torch.randn(64, 8, generator=g)
    z_e = torch.randn(8, 8, 4, 4, generator=g)
    quantizer = vq_with_codebook(codebook).float()
    exact = quantizer(z_e).indices
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert torch.equal(quantizer(z_e).indices, exact)


@pytest.mark.parametrize("ema", [False, True])
def test_the_gradient_is_straight_through_and_the_value_is_the_code(ema):
    torch.manual_seed(0)
    quantizer = VectorQuantizer(8, 3, ema=ema).double()
    codebook = quantizer.codebook.detach().clone()
    z_e = torch.randn(2, 3, 4, 4, dtype=F64, requires_grad=True)
    out = quantizer(z_e)  # training mode: the EMA update comes after the assignment
    assert torch.equal(out.z_q, codebook[out.indices].movedim(-1, 1))
    w = torch.randn_like(z_e)
    grads = torch.autograd.grad((w * out.z_q).sum(), [z_e, *quantizer.parameters()], allow_unused=True)
    assert torch.equal(grads[0], w)
    assert all(grad is None for grad in grads[1:])  # the decoder's gradient never reaches the codebook


def test_the_losses_equal_their_formulas_and_reach_only_their_targets():
    B, d, H, W, K, beta = 2, 3, 3, 2, 6, 0.3
    g = torch.Generator().manual_seed(4)
    codebook = torch.randn(K, d, generator=g, dtype=F64)
    quantizer = vq_with_codebook(codebook, beta=beta)
    z_e = torch.randn(B, d, H, W, generator=g, dtype=F64, requires_grad=True)
    out = quantizer(z_e)
    squared = 0.0
    for b, h, w in itertools.product(range(B), range(H), range(W)):
        code = codebook[out.indices[b, h, w]]
        squared += float(((z_e[b, :, h, w].detach() - code) ** 2).sum())
    assert set(out.losses) == {"codebook", "commitment"}
    # per example summed over positions and channels, averaged over the batch
    assert out.losses["codebook"].item() == pytest.approx(squared / B, rel=1e-12)
    assert out.losses["commitment"].item() == pytest.approx(beta * squared / B, rel=1e-12)
    assert out.loss.item() == pytest.approx((1 + beta) * squared / B, rel=1e-12)

    grad_z, grad_e = torch.autograd.grad(out.losses["codebook"], [z_e, quantizer.codebook], allow_unused=True,
                                         retain_graph=True)
    assert grad_z is None
    expected_e = torch.zeros_like(codebook)
    for row, k in zip(rows_of(z_e).detach(), out.indices.reshape(-1), strict=True):
        expected_e[k] -= 2 * (row - codebook[k]) / B
    torch.testing.assert_close(grad_e, expected_e, rtol=1e-12, atol=1e-12)

    grad_z, grad_e = torch.autograd.grad(out.losses["commitment"], [z_e, quantizer.codebook], allow_unused=True)
    assert grad_e is None
    torch.testing.assert_close(grad_z, 2 * beta * (z_e - out.z_q).detach() / B, rtol=1e-12, atol=1e-12)


def test_two_dimensional_and_sequence_inputs():
    torch.manual_seed(0)
    quantizer = VectorQuantizer(8, 4).double()
    flat = torch.randn(10, 4, dtype=F64)
    out = quantizer(flat)
    assert out.z_q.shape == (10, 4) and out.indices.shape == (10,)
    # one position per example: the mean over vectors of the squared norm
    expected = ((flat - quantizer.codebook[out.indices]) ** 2).sum(1).mean()
    assert out.losses["codebook"].item() == pytest.approx(expected.item(), rel=1e-12)
    sequence = torch.randn(3, 4, 7, dtype=F64)
    out = quantizer(sequence)
    assert out.z_q.shape == (3, 4, 7) and out.indices.shape == (3, 7)
    assert torch.equal(out.z_q, quantizer.embed(out.indices))


# ----------------------------------------------------------------------------------------------------------
# The EMA codebook and dead-code restarts
# ----------------------------------------------------------------------------------------------------------
def test_the_ema_update_follows_its_formula_for_two_steps():
    K, d, gamma, eps = 5, 2, 0.9, 1e-3
    g = torch.Generator().manual_seed(5)
    codebook = torch.randn(K, d, generator=g, dtype=F64)
    quantizer = vq_with_codebook(codebook, ema=True, decay=gamma, epsilon=eps)
    N, m, e = torch.ones(K, dtype=F64), codebook.clone(), codebook.clone()
    for step in range(2):
        z_e = torch.randn(3, d, 2, 2, generator=g, dtype=F64)
        out = quantizer(z_e)
        rows = rows_of(z_e)
        k = torch.cdist(rows, e).argmin(1)
        assert torch.equal(out.indices.reshape(-1), k)
        assert torch.equal(out.z_q, e[out.indices].movedim(-1, 1))  # the codes before this step's update
        n, sums = torch.zeros(K, dtype=F64), torch.zeros(K, d, dtype=F64)
        for row, code in zip(rows, k.tolist(), strict=True):
            n[code] += 1
            sums[code] += row
        N = gamma * N + (1 - gamma) * n
        m = gamma * m + (1 - gamma) * sums
        smoothed = (N + eps) / (N.sum() + K * eps) * N.sum()
        e = m / smoothed[:, None]
        torch.testing.assert_close(quantizer.ema_count, N, rtol=1e-14, atol=0)
        torch.testing.assert_close(quantizer.ema_sum, m, rtol=1e-14, atol=1e-15)
        torch.testing.assert_close(quantizer.codebook, e, rtol=1e-13, atol=1e-15)
        assert int(quantizer.steps) == step + 1
        assert set(out.losses) == {"commitment"}


def test_the_ema_codebook_does_not_move_in_eval_mode_and_has_no_gradient():
    torch.manual_seed(0)
    quantizer = VectorQuantizer(6, 3, ema=True).double()
    assert list(quantizer.parameters()) == []
    assert not quantizer.codebook.requires_grad
    quantizer.eval()
    before = copy.deepcopy(quantizer.state_dict())
    z_e = torch.randn(4, 3, 3, 3, dtype=F64, requires_grad=True)
    out = quantizer(z_e)
    out.loss.backward()
    assert quantizer.codebook.grad is None
    assert z_e.grad is not None
    for key, value in quantizer.state_dict().items():
        assert torch.equal(value, before[key]), key


@pytest.mark.parametrize("ema", [False, True])
def test_a_dead_code_is_restarted_to_an_encoder_vector_of_the_batch(ema):
    codebook = torch.tensor([[0.0, 0.0], [1.0, 0.0], [0.0, 1.0], [100.0, 100.0]], dtype=F64)
    quantizer = vq_with_codebook(codebook, ema=ema, restart_after=3, restart_seed=7)
    g = torch.Generator().manual_seed(6)
    batches = [torch.rand(4, 2, 3, 3, generator=g, dtype=F64) for _ in range(3)]  # code 3 is never nearest
    for step in range(2):
        quantizer(batches[step])
        # an EMA code that nobody chooses stays where it is up to the Laplace smoothing
        torch.testing.assert_close(quantizer.codebook[3], codebook[3], rtol=1e-5 if ema else 0, atol=0)
        assert int(quantizer.steps_unused[3]) == step + 1
    quantizer.eval()
    quantizer(batches[2])  # evaluation mode counts nothing
    assert int(quantizer.steps_unused[3]) == 2
    quantizer.train()
    z_e = batches[2].clone().requires_grad_(True)
    out = quantizer(z_e)
    out.loss.backward()  # the restart in place does not break the backward pass
    restarted = quantizer.codebook[3].detach()
    assert (rows_of(batches[2]) == restarted).all(1).any(), restarted
    assert int(quantizer.steps_unused[3]) == 0
    if ema:
        assert torch.equal(quantizer.ema_sum[3], restarted) and float(quantizer.ema_count[3]) == 1.0
    else:
        assert torch.equal(quantizer.codebook[:3].detach(), codebook[:3])  # live codes stay where they are

    def replay(seed):
        twin = vq_with_codebook(codebook, ema=ema, restart_after=3, restart_seed=seed)
        for batch in batches:
            twin(batch)
        return twin.codebook[3].detach()

    assert torch.equal(replay(7), restarted)  # deterministic given the seed
    assert not torch.equal(replay(8), restarted)


def test_several_dead_codes_get_different_vectors():
    codebook = torch.tensor([[0.5, 0.5], [50.0, 0.0], [0.0, 50.0], [-50.0, 0.0]], dtype=F64)
    quantizer = vq_with_codebook(codebook, restart_after=1)
    z_e = torch.rand(2, 2, 2, 2, generator=torch.Generator().manual_seed(0), dtype=F64)
    quantizer(z_e)
    restarted = quantizer.codebook[1:].detach()
    assert len({tuple(row.tolist()) for row in restarted}) == 3
    assert all((rows_of(z_e) == row).all(1).any() for row in restarted)


def test_an_ema_codebook_with_restarts_finds_the_centres_of_separated_clusters():
    centres = torch.tensor([[4.0, 4.0], [-4.0, 4.0], [4.0, -4.0], [-4.0, -4.0]])
    g = torch.Generator().manual_seed(0)
    torch.manual_seed(0)
    quantizer = VectorQuantizer(8, 2, ema=True, decay=0.9, restart_after=5)
    for _ in range(150):
        x = centres[torch.randint(4, (256,), generator=g)] + 0.1 * torch.randn(256, 2, generator=g)
        quantizer(x)
    # a code at every cluster (two codes may share a cluster, each at the mean of its half: ~0.08 off the centre)
    nearest = torch.cdist(centres, quantizer.codebook).min(1).values
    assert (nearest < 0.2).all(), nearest
    quantizer.eval()
    x = centres[torch.randint(4, (256,), generator=g)] + 0.1 * torch.randn(256, 2, generator=g)
    out = quantizer(x)
    # beta times the squared noise per vector, d sigma^2 = 0.02, if every point sits at its own centre
    assert out.losses["commitment"].item() < 0.25 * 0.03
    assert 4 - 1e-6 <= out.perplexity.item() <= 8


@pytest.mark.parametrize("ema", [False, True])
def test_a_quantizer_loaded_from_its_state_dict_continues_bit_for_bit(ema):
    torch.manual_seed(0)
    batches = [0.3 * torch.randn(4, 3, 4, 4) for _ in range(6)]  # 64 vectors for 64 codes: some go unused
    options = {"ema": ema, "decay": 0.8 if ema else None, "restart_after": 1}
    original = VectorQuantizer(64, 3, **options)
    for z_e in batches[:3]:
        original(z_e)
    state = copy.deepcopy(original.state_dict())
    expected_keys = {"codebook", "steps", "steps_unused"} | ({"ema_count", "ema_sum"} if ema else set())
    assert set(state) == expected_keys
    torch.manual_seed(123)  # another initial codebook, overwritten by the state
    resumed = VectorQuantizer(64, 3, **options)
    resumed.load_state_dict(state)
    without_restarts = VectorQuantizer(64, 3, **{**options, "restart_after": None})
    without_restarts.load_state_dict(state)
    for z_e in batches[3:]:
        a, b = original(z_e), resumed(z_e)
        without_restarts(z_e)
        assert torch.equal(a.z_q, b.z_q) and torch.equal(a.indices, b.indices)
        assert all(torch.equal(a.losses[key], b.losses[key]) for key in a.losses)
    for key, value in original.state_dict().items():
        assert torch.equal(value, resumed.state_dict()[key]), key
    assert not torch.equal(original.codebook, without_restarts.codebook)  # restarts happened after the resume


# ----------------------------------------------------------------------------------------------------------
# Code statistics
# ----------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("K", [1, 2, 7, 64])
def test_a_uniform_assignment_has_perplexity_K(K):
    indices = torch.arange(K).repeat(3)[torch.randperm(3 * K, generator=torch.Generator().manual_seed(K))]
    assert codebook_perplexity(indices.reshape(3, K), K).item() == pytest.approx(K, rel=1e-12)
    assert codebook_usage(indices, K).item() == 1.0


def test_one_code_has_perplexity_one_and_usage_one_over_K():
    indices = torch.full((4, 5, 5), 3)
    assert codebook_perplexity(indices, 10).item() == 1.0
    assert codebook_usage(indices, 10).item() == pytest.approx(0.1)


def test_the_perplexity_is_the_exponential_of_the_histogram_entropy():
    indices = torch.tensor([0] * 5 + [1] * 3 + [3] * 2)
    entropy = -sum(p * math.log(p) for p in (0.5, 0.3, 0.2))
    assert codebook_perplexity(indices, 4).item() == pytest.approx(math.exp(entropy), rel=1e-12)
    assert codebook_usage(indices, 4).item() == 0.75


# ----------------------------------------------------------------------------------------------------------
# Finite scalar quantization
# ----------------------------------------------------------------------------------------------------------
LEVELS = [[8, 5, 5, 5], [2], [3], [4], [4, 3], [2, 2, 2], [7, 6, 2]]


def fsq_preimage(values, levels, eps=1e-3):
    """Inputs ``[N, d]`` that FSQ's bound maps exactly onto the grid points ``values`` (the paper's recipe
    inverted): ``f(z) = h tanh(z + s) - o = t`` for ``t = value * floor(L/2)``."""
    columns = []
    for c, L in enumerate(levels):
        h, o = (L - 1) * (1 + eps) / 2, 0.5 if L % 2 == 0 else 0.0
        target = values[:, c].double() * (L // 2)
        columns.append(torch.atanh((target + o) / h) - math.atanh(o / h))
    return torch.stack(columns, 1)


@pytest.mark.parametrize("levels", LEVELS)
def test_fsq_every_index_round_trips_and_the_grid_is_the_product_of_levels(levels):
    fsq = FiniteScalarQuantizer(levels)
    K = math.prod(levels)
    assert fsq.codebook_size == K and fsq.code_dim == len(levels)
    every = torch.arange(K)
    grid = fsq.embed(every)
    assert grid.shape == (K, len(levels))
    assert torch.equal(fsq.codes_to_indices(grid), every)
    per_channel = [((torch.arange(L) - L // 2).float() / (L // 2)).tolist() for L in levels]  # float32 values
    assert {tuple(row) for row in grid.tolist()} == set(itertools.product(*per_channel))
    out = fsq(fsq_preimage(grid, levels))  # forward lands on the code that embed names
    assert torch.equal(out.indices, every)
    assert torch.equal(out.z_q.float(), grid)  # float64 here; embed gives float32
    assert out.losses == {} and out.loss.item() == 0.0
    assert out.perplexity.item() == pytest.approx(K, rel=1e-12)


def test_fsq_values_of_even_and_odd_levels():
    assert FiniteScalarQuantizer([2]).embed(torch.arange(2)).flatten().tolist() == [-1.0, 0.0]
    assert FiniteScalarQuantizer([4]).embed(torch.arange(4)).flatten().tolist() == [-1.0, -0.5, 0.0, 0.5]
    assert FiniteScalarQuantizer([5]).embed(torch.arange(5)).flatten().tolist() == [-1.0, -0.5, 0.0, 0.5, 1.0]
    # first channel least significant: digits (1, 2) of levels (4, 3) are index 1 + 2 * 4
    assert FiniteScalarQuantizer([4, 3]).embed(torch.tensor([9])).tolist() == [[-0.5, 1.0]]


@pytest.mark.parametrize("levels", LEVELS)
def test_fsq_outputs_lie_on_the_grid_and_reach_every_level(levels):
    fsq = FiniteScalarQuantizer(levels)
    d = len(levels)
    sweep = torch.linspace(-5, 5, 2001)
    out = fsq(sweep[:, None].expand(-1, d).reshape(-1, d, 1, 1).contiguous())
    assert torch.equal(out.z_q, fsq.embed(out.indices))
    for c, L in enumerate(levels):
        steps = out.z_q[:, c] * (L // 2)
        assert torch.equal(steps, steps.round())
        assert set(steps.flatten().tolist()) == {float(j - L // 2) for j in range(L)}
    assert torch.equal(fsq(torch.zeros(1, d)).z_q, torch.zeros(1, d))  # f(0) = 0 for even levels too


@pytest.mark.parametrize("levels", [[8, 5, 5, 5], [2, 3]])
def test_fsq_gradient_is_straight_through_the_rounding(levels):
    fsq = FiniteScalarQuantizer(levels)
    z = torch.randn(3, len(levels), 2, 2, dtype=F64, generator=torch.Generator().manual_seed(0), requires_grad=True)
    out = fsq(z)
    w = torch.randn_like(z)
    (grad,) = torch.autograd.grad((w * out.z_q).sum(), z)
    expected = torch.empty_like(z)
    for c, L in enumerate(levels):
        h, o = (L - 1) * (1 + 1e-3) / 2, 0.5 if L % 2 == 0 else 0.0
        # d/dz [h tanh(z + s) - o] / floor(L/2) = h (1 - tanh^2(z + s)) / floor(L/2)
        expected[:, c] = w[:, c] * h * (1 - torch.tanh(z[:, c].detach() + math.atanh(o / h)) ** 2) / (L // 2)
    torch.testing.assert_close(grad, expected, rtol=1e-12, atol=1e-14)


@settings(max_examples=30, deadline=None)
@given(st.lists(st.integers(2, 9), min_size=1, max_size=4))
def test_fsq_round_trip_for_any_levels(levels):
    fsq = FiniteScalarQuantizer(levels)
    every = torch.arange(math.prod(levels))
    grid = fsq.embed(every)
    assert torch.equal(fsq.codes_to_indices(grid), every)
    assert torch.equal(fsq(fsq_preimage(grid, levels)).indices, every)


# ----------------------------------------------------------------------------------------------------------
# Lookup-free quantization
# ----------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("d", [1, 3, 6])
def test_lfq_codes_are_the_signs_and_every_index_round_trips(d):
    lfq = LookupFreeQuantizer(d)
    K = 2 ** d
    assert lfq.codebook_size == K and lfq.code_dim == d
    codes = lfq.embed(torch.arange(K))
    assert {tuple(row) for row in codes.tolist()} == set(itertools.product([-1.0, 1.0], repeat=d))
    out = lfq(0.3 * codes)
    assert torch.equal(out.indices, torch.arange(K)) and torch.equal(out.z_q, codes)


def test_lfq_index_is_the_binary_number_of_the_positive_bits_and_sign_of_zero_is_plus_one():
    lfq = LookupFreeQuantizer(3)
    assert lfq(torch.tensor([[0.2, -1.0, 3.0]])).indices.tolist() == [1 + 4]
    out = lfq(torch.zeros(1, 3, 2, 2))
    assert (out.indices == 7).all() and (out.z_q == 1).all()


def test_lfq_gradient_is_straight_through():
    lfq = LookupFreeQuantizer(4)
    z = torch.randn(2, 4, 3, 3, dtype=F64, generator=torch.Generator().manual_seed(1), requires_grad=True)
    out = lfq(z)
    assert torch.equal(out.z_q, torch.where(z >= 0, 1.0, -1.0).to(F64))
    w = torch.randn_like(z)
    (grad,) = torch.autograd.grad((w * out.z_q).sum(), z)
    assert torch.equal(grad, w)


def test_lfq_entropies_equal_the_softmax_over_all_codes():
    d, tau = 4, 0.8
    z = 0.7 * torch.randn(3, d, 2, 2, dtype=F64, generator=torch.Generator().manual_seed(2))
    codes = torch.tensor(list(itertools.product([-1.0, 1.0], repeat=d)), dtype=F64)
    p = torch.softmax(-torch.cdist(rows_of(z), codes) ** 2 / tau, dim=1)  # p(c | z) over all 2^d codes
    per_sample = -(p * p.log()).sum(1).mean()
    mean_p = p.mean(0)
    codebook = -(mean_p * mean_p.log()).sum()
    ours = lfq_entropy_terms(z, temperature=tau)
    torch.testing.assert_close(ours[0], per_sample, rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(ours[1], codebook, rtol=1e-10, atol=1e-12)
    per_bit = lfq_entropy_terms(z, temperature=tau, codebook_entropy="per_bit")
    torch.testing.assert_close(per_bit[0], per_sample, rtol=1e-10, atol=1e-12)
    assert per_bit[1] >= codebook - 1e-12  # subadditivity: an upper bound


def test_the_entropy_term_is_lowest_for_confident_balanced_codes():
    d = 3
    codes = LookupFreeQuantizer(d).embed(torch.arange(2 ** d)).double()

    def entropy_term(z):
        per_sample, codebook = lfq_entropy_terms(z)
        return (per_sample - codebook).item()

    balanced = entropy_term(5 * codes.repeat(4, 1))
    collapsed = entropy_term(5 * codes[[2]].repeat(32, 1))
    undecided = entropy_term(torch.zeros(32, d, dtype=F64))
    random = entropy_term(torch.randn(32, d, dtype=F64, generator=torch.Generator().manual_seed(3)))
    assert balanced == pytest.approx(-d * math.log(2), abs=1e-6)  # the minimum, -log K
    assert collapsed == pytest.approx(0.0, abs=1e-6)
    assert undecided == pytest.approx(0.0, abs=1e-12)  # d log 2 - d log 2
    assert balanced < random < d * math.log(2)


def test_the_per_bit_codebook_entropy_is_maximal_for_correlated_bits():
    z = 5 * torch.tensor([[-1.0, -1.0], [1.0, 1.0]], dtype=F64).repeat(8, 1)  # two codes of four
    assert lfq_entropy_terms(z)[1].item() == pytest.approx(math.log(2), abs=1e-6)
    assert lfq_entropy_terms(z, codebook_entropy="per_bit")[1].item() == pytest.approx(2 * math.log(2), abs=1e-6)


def test_lfq_losses_equal_their_formulas():
    B, d, H, W = 2, 3, 4, 2
    z = torch.randn(B, d, H, W, dtype=F64, generator=torch.Generator().manual_seed(4))
    out = LookupFreeQuantizer(d, entropy_weight=0.2, commitment_weight=0.5, temperature=0.5)(z)
    per_sample, codebook = lfq_entropy_terms(z, temperature=0.5)
    assert set(out.losses) == {"entropy", "commitment"}
    # summed over the H W positions of an example
    assert out.losses["entropy"].item() == pytest.approx(0.2 * H * W * (per_sample - codebook).item(), rel=1e-12)
    commitment = sum(float(((z[b, :, h, w] - torch.sign(z[b, :, h, w])) ** 2).sum())
                     for b, h, w in itertools.product(range(B), range(H), range(W)))
    assert out.losses["commitment"].item() == pytest.approx(0.5 * commitment / B, rel=1e-12)
    assert LookupFreeQuantizer(d, entropy_weight=0, commitment_weight=0)(z).losses == {}
    assert set(LookupFreeQuantizer(20, commitment_weight=0, codebook_entropy="per_bit")(
        torch.randn(2, 20)).losses) == {"entropy"}


# ----------------------------------------------------------------------------------------------------------
# Every registered quantizer
# ----------------------------------------------------------------------------------------------------------
OPTIONS = {"vq": {"num_codes": 16, "code_dim": 4}, "vq_ema": {"num_codes": 16, "code_dim": 4},
           "fsq": {"levels": [4, 3, 2, 2]}, "lfq": {"code_dim": 4}}


def test_every_registered_quantizer_is_tested():
    assert set(OPTIONS) == set(QUANTIZERS)
    assert build_quantizer("vq_ema", **OPTIONS["vq_ema"]).ema and not build_quantizer("vq", **OPTIONS["vq"]).ema


@pytest.mark.parametrize("name", sorted(QUANTIZERS))
def test_every_registered_quantizer_keeps_the_interface(name):
    torch.manual_seed(0)
    quantizer = build_quantizer(name, **OPTIONS[name]).eval()
    assert isinstance(quantizer, Quantizer)
    K, d = quantizer.codebook_size, quantizer.code_dim
    assert d == 4
    for shape in [(3, d, 5, 4), (6, d), (2, d, 7)]:
        z_e = (0.1 * torch.randn(shape)).requires_grad_(True)
        out = quantizer(z_e)
        assert isinstance(out, QuantizerOutput)
        assert out.z_q.shape == shape and out.indices.shape == (shape[0], *shape[2:])
        assert out.indices.dtype == torch.long and 0 <= int(out.indices.min()) and int(out.indices.max()) < K
        assert torch.equal(out.z_q, quantizer.embed(out.indices))
        assert out.perplexity.item() == pytest.approx(codebook_perplexity(out.indices, K).item())
        assert out.usage.item() == codebook_usage(out.indices, K).item()
        assert all(value.dim() == 0 and torch.isfinite(value) for value in out.losses.values())
        (out.z_q.sum() + out.loss).backward()
        assert torch.isfinite(z_e.grad).all()


# ----------------------------------------------------------------------------------------------------------
# Errors
# ----------------------------------------------------------------------------------------------------------
BAD_ARGUMENTS = [
    (VectorQuantizer, (0, 4), {}, "num_codes must be a positive integer"),
    (VectorQuantizer, (8, 2.5), {}, "code_dim must be a positive integer"),
    (VectorQuantizer, (8, 4), {"beta": -1}, "beta must be a number >= 0"),
    (VectorQuantizer, (8, 4), {"ema": "yes"}, "ema must be true or false"),
    (VectorQuantizer, (8, 4), {"decay": 0.9}, "decay and epsilon belong to the EMA codebook; set ema=True"),
    (VectorQuantizer, (8, 4), {"ema": True, "decay": 1.0}, r"decay must be a number in \[0, 1\)"),
    (VectorQuantizer, (8, 4), {"ema": True, "epsilon": 0.0}, "epsilon must be a positive number"),
    (VectorQuantizer, (8, 4), {"restart_after": 0}, "restart_after must be a positive integer"),
    (VectorQuantizer, (8, 4), {"restart_seed": -1}, "restart_seed must be an integer >= 0"),
    (FiniteScalarQuantizer, ([8, 1],), {}, r"levels must be a non-empty list of integers >= 2.*\[8, 5, 5, 5\]"),
    (FiniteScalarQuantizer, ([],), {}, "levels must be a non-empty list"),
    (FiniteScalarQuantizer, (8,), {}, "levels must be a non-empty list"),
    (FiniteScalarQuantizer, ([3, 3],), {"eps": 0}, "eps must be a number in"),
    (LookupFreeQuantizer, (0,), {}, "code_dim must be a positive integer"),
    (LookupFreeQuantizer, (63,), {}, "more than int64 indices hold"),
    (LookupFreeQuantizer, (20,), {}, "use codebook_entropy='per_bit'"),
    (LookupFreeQuantizer, (4,), {"temperature": 0}, "temperature must be a positive number"),
    (LookupFreeQuantizer, (4,), {"entropy_weight": -0.1}, "entropy_weight must be a number >= 0"),
    (LookupFreeQuantizer, (4,), {"codebook_entropy": "approx"}, "codebook_entropy must be one of exact, per_bit"),
]


@pytest.mark.parametrize("constructor, args, kwargs, message", BAD_ARGUMENTS)
def test_bad_constructor_arguments_say_how_to_fix_them(constructor, args, kwargs, message):
    with pytest.raises(ModelConfigError, match=message):
        constructor(*args, **kwargs)


def test_bad_inputs_say_what_is_wrong():
    quantizer = VectorQuantizer(8, 4)
    with pytest.raises(ValueError, match=r"z_e must be a non-empty float tensor \[B, 4, H, W\].*got \[2, 3, 5, 5\]"):
        quantizer(torch.randn(2, 3, 5, 5))
    with pytest.raises(ValueError, match="got \\[4\\]"):
        quantizer(torch.randn(4))
    with pytest.raises(ValueError, match=r"indices must lie in \[0, 8\).*from 0 to 8"):
        quantizer.embed(torch.tensor([[0, 8]]))
    with pytest.raises(ValueError, match="indices must be a non-empty integer tensor"):
        FiniteScalarQuantizer([3, 3]).embed(torch.tensor([1.0]))
    with pytest.raises(ValueError, match=r"indices must lie in \[0, 8\)"):
        LookupFreeQuantizer(3).embed(torch.tensor([-1]))
    with pytest.raises(ValueError, match="indices must lie in"):
        codebook_perplexity(torch.tensor([3]), 3)
    with pytest.raises(ValueError, match="unknown codebook_entropy 'nope'"):
        lfq_entropy_terms(torch.randn(2, 3), codebook_entropy="nope")


def test_build_quantizer_names_the_choices():
    with pytest.raises(ModelConfigError, match="unknown quantizer 'vqvae'; choose one of vq, vq_ema, fsq, lfq"):
        build_quantizer("vqvae")
    with pytest.raises(ModelConfigError, match="quantizer 'fsq' has no option code_dim; its options are: levels, eps"):
        build_quantizer("fsq", code_dim=4)
    with pytest.raises(ModelConfigError, match="quantizer 'vq_ema' has no option ema"):
        build_quantizer("vq_ema", num_codes=4, code_dim=2, ema=False)
    with pytest.raises(ModelConfigError, match="quantizer 'vq'.*code_dim"):
        build_quantizer("vq", num_codes=4)
