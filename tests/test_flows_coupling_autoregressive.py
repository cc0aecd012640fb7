"""Properties of the coupling layers, permutations and affine autoregressive flows beyond the shared transform
test (tests/test_flows.py): the autoregressive structure by autograd, identity at initialisation, context
handling, and the error messages of bad arguments."""

from __future__ import annotations

import pytest
import torch

from dgmlab.errors import CapabilityError, ModelConfigError
from dgmlab.models.autoregressive import MADE
from dgmlab.models.flows import (
    AdditiveCoupling,
    AffineCoupling,
    Compose,
    Flow,
    InverseAutoregressiveFlow,
    MaskedAutoregressiveFlow,
    Permutation,
    RandomPermutation,
    Reverse,
    StandardNormal,
)
from dgmlab.models.flows.coupling import coupling_mask
from dgmlab.models.masked import MaskedMLP


def _jacobian(function, v: torch.Tensor) -> torch.Tensor:
    return torch.autograd.functional.jacobian(lambda row: function(row.unsqueeze(0))[0].reshape(-1), v)


@pytest.mark.parametrize("cls", [MaskedAutoregressiveFlow, InverseAutoregressiveFlow])
def test_the_jacobian_is_lower_triangular_in_the_ordering(cls):
    torch.manual_seed(0)
    flow = cls(5, [16, 16], identity_init=False).double()
    x = torch.randn(5, dtype=torch.float64)
    # forward (one pass for MAF, D passes for IAF) and inverse: du/dx and dx/du are lower triangular
    for function in (lambda v: flow(v)[0], lambda v: flow.inverse(v)[0]):
        jacobian = _jacobian(function, x)
        assert torch.count_nonzero(jacobian.triu(1)) == 0
        assert torch.all(jacobian.diagonal() != 0)
        assert torch.count_nonzero(jacobian.tril(-1)) > 0  # the map is not merely elementwise
    # MAF: the diagonal of du/dx is exp(-alpha_i(x_<i))
    if cls is MaskedAutoregressiveFlow:
        _, alpha = flow.shift_and_log_scale(x.unsqueeze(0))
        torch.testing.assert_close(_jacobian(lambda v: flow(v)[0], x).diagonal(), torch.exp(-alpha[0]))


def test_the_masked_network_outputs_depend_only_on_earlier_inputs():
    torch.manual_seed(0)
    net = MaskedMLP(4, [7, 5], outputs_per_input=3, identity_init=False).double()
    jacobian = _jacobian(net, torch.randn(4, dtype=torch.float64)).reshape(3, 4, 4)
    for p in range(3):
        # d out[p, i] / d v_j = 0 unless j < i (strictly lower triangular)
        assert torch.count_nonzero(jacobian[p].triu()) == 0
        assert torch.count_nonzero(jacobian[p].tril(-1)) > 0


def test_made_and_maf_share_one_masked_network():
    # MADE's first mask set is the masked MLP with one output per input and MADE's random degree rule
    made = MADE(6, [9, 7], num_masks=2, order="natural", seed=3)
    net = MaskedMLP(6, [9, 7], outputs_per_input=1, rule="random", seed=3)
    for ours, theirs in zip(net.masks(), made.masks(0), strict=True):
        assert torch.equal(ours, theirs)
    net.load_state_dict({**net.state_dict(), **{k: v for k, v in made.state_dict().items() if k.startswith("layers")}})
    x = torch.bernoulli(torch.full((5, 6), 0.5))
    torch.testing.assert_close(net(x)[:, 0], made(x, mask_index=0))
    # and MAF/IAF run that same class with two outputs (shift, log-scale) per input
    assert type(MaskedAutoregressiveFlow(6, [9]).net) is MaskedMLP
    assert type(InverseAutoregressiveFlow(6, [9]).net) is MaskedMLP


def test_the_masked_network_rejects_an_order_that_is_not_a_permutation():
    with pytest.raises(ModelConfigError, match="permutation of 0..3"):
        MaskedMLP(4, [8], order=[0, 1, 1, 3])


def test_a_one_dimensional_maf_is_an_elementwise_affine_map():
    torch.manual_seed(0)
    flow = MaskedAutoregressiveFlow(1, [4], identity_init=False).double()
    x = torch.randn(3, 1, dtype=torch.float64)
    u, logdet = flow(x)
    back, _ = flow.inverse(u)
    torch.testing.assert_close(back, x)
    torch.testing.assert_close(_jacobian(lambda v: flow(v)[0], x[0]).log().reshape(()), logdet[0])


@pytest.mark.parametrize(("cls", "shape", "mask"), [
    (AdditiveCoupling, (6,), "half"), (AffineCoupling, (6,), "alternating"),
    (AdditiveCoupling, (2, 4, 4), "channel"), (AffineCoupling, (2, 4, 4), "checkerboard"),
    (AffineCoupling, (3, 4, 4), "channel"),
])
def test_a_coupling_starts_as_the_identity(cls, shape, mask):
    coupling = cls(shape, mask)
    x = torch.randn(4, *shape)
    y, logdet = coupling(x)
    torch.testing.assert_close(y, x, rtol=0, atol=0)
    torch.testing.assert_close(logdet, torch.zeros(4), rtol=0, atol=0)


@pytest.mark.parametrize("cls", [MaskedAutoregressiveFlow, InverseAutoregressiveFlow])
def test_an_autoregressive_flow_starts_as_the_identity(cls):
    x = torch.randn(4, 5)
    for y, logdet in (cls(5, [8])(x), cls(5, [8]).inverse(x)):
        torch.testing.assert_close(y, x, rtol=0, atol=0)
        torch.testing.assert_close(logdet, torch.zeros(4), rtol=0, atol=0)


def test_a_coupling_leaves_the_masked_part_unchanged():
    torch.manual_seed(0)
    for mask, invert in (("checkerboard", False), ("checkerboard", True), ("channel", False)):
        coupling = AffineCoupling((2, 4, 4), mask, hidden=8, invert_mask=invert, identity_init=False)
        x = torch.randn(3, 2, 4, 4)
        y, _ = coupling(x)
        b = coupling_mask((2, 4, 4), mask, invert).bool()
        torch.testing.assert_close(y[:, b], x[:, b], rtol=0, atol=0)
        assert not torch.allclose(y[:, ~b], x[:, ~b])


@pytest.mark.parametrize(("shape", "mask", "invert", "reads", "writes"), [
    ((3, 4, 4), "channel", False, 2, 1), ((3, 4, 4), "channel", True, 1, 2),
    ((5,), "half", False, 3, 2), ((5,), "alternating", True, 2, 3),
    ((3, 4, 4), "checkerboard", False, 3, 3),
])
def test_a_split_mask_conditioner_reads_x_a_and_writes_x_b_only(shape, mask, invert, reads, writes):
    # channel and vector masks: the net's input is x_A's channels (features), its output s and t for x_B's;
    # the checkerboard keeps every channel in and out
    coupling = AffineCoupling(shape, mask, hidden=8, invert_mask=invert, identity_init=False).double()
    first, last = coupling.net.layers[0], coupling.net.layers[-1]
    sizes = (first.in_channels, last.out_channels) if len(shape) == 3 else (first.in_features, last.out_features)
    assert sizes == (reads, 2 * writes)
    # y_B depends on x_A only through the net: changing x_B moves y_B element by element, never y_A
    x = torch.randn(2, *shape, dtype=torch.float64)
    b = coupling_mask(shape, mask, invert).bool()
    moved = x.clone()
    moved[:, ~b] += 1.0
    y, _ = coupling(x)
    y_moved, _ = coupling(moved)
    torch.testing.assert_close(y_moved[:, b], y[:, b], rtol=0, atol=0)
    _, s, t = coupling._scale_and_shift(x, None)
    _, s_moved, t_moved = coupling._scale_and_shift(moved, None)
    torch.testing.assert_close((s_moved, t_moved), (s, t), rtol=0, atol=0)


def test_masks_follow_their_patterns():
    assert coupling_mask((5,), "half").tolist() == [1, 1, 1, 0, 0]
    assert coupling_mask((5,), "alternating", invert_mask=True).tolist() == [0, 1, 0, 1, 0]
    assert coupling_mask((1, 2, 2), "checkerboard")[0].tolist() == [[1, 0], [0, 1]]
    assert coupling_mask((3, 1, 1), "channel")[:, 0, 0].tolist() == [1, 1, 0]


def test_reverse_twice_is_the_identity_and_permutations_invert():
    x = torch.randn(3, 4, 2, 2)
    reverse = Reverse(4)
    once, logdet = reverse(x)
    torch.testing.assert_close(once, x.flip(1), rtol=0, atol=0)
    torch.testing.assert_close(reverse(once)[0], x, rtol=0, atol=0)
    assert torch.equal(logdet, torch.zeros(3))
    shuffle = RandomPermutation(6, seed=3)
    v = torch.randn(2, 6)
    assert torch.equal(shuffle.inverse(shuffle(v)[0])[0], v)
    assert torch.equal(RandomPermutation(6, seed=3).permutation, shuffle.permutation)


def test_unconditional_transforms_reject_a_context():
    x = torch.randn(2, 6)
    for transform in (AffineCoupling((6,)), AdditiveCoupling((6,)), MaskedAutoregressiveFlow(6, [8]),
                      InverseAutoregressiveFlow(6, [8])):
        with pytest.raises(CapabilityError, match="unconditional"):
            transform(x, context=torch.zeros(2, dtype=torch.long))
        with pytest.raises(CapabilityError, match="unconditional"):
            transform.inverse(x, context=torch.zeros(2, dtype=torch.long))


@pytest.mark.parametrize("shape", [(6,), (2, 4, 4)])
def test_class_conditional_coupling_uses_the_labels_and_inverts_with_them(shape):
    torch.manual_seed(0)
    coupling = AffineCoupling(shape, num_classes=3, hidden=8, identity_init=False).double()
    x = torch.randn(4, *shape, dtype=torch.float64)
    labels = torch.tensor([0, 1, 2, 1])
    y, logdet = coupling(x, context=labels)
    back, logdet_inverse = coupling.inverse(y, context=labels)
    torch.testing.assert_close(back, x)
    torch.testing.assert_close(logdet_inverse, -logdet)
    assert not torch.allclose(coupling(x, context=2)[0], y)  # one int means that label for every example
    with pytest.raises(CapabilityError, match="conditional: pass context="):
        coupling(x)
    with pytest.raises(ValueError, match=r"labels must lie in 0\.\.2"):
        coupling(x, context=torch.tensor([0, 1, 3, 1]))
    with pytest.raises(ValueError, match="integer class labels of shape"):
        coupling(x, context=torch.zeros(4, 3))


def test_a_context_vector_conditions_a_flow():
    torch.manual_seed(0)
    coupling = AffineCoupling((6,), context_dim=2, hidden=8, identity_init=False).double()
    flow = Flow(StandardNormal((6,)), coupling).double()
    context = torch.randn(5, 2, dtype=torch.float64)
    x = flow.sample(5, context=context, generator=torch.Generator().manual_seed(0))
    assert flow.log_prob(x, context=context).shape == (5,)
    assert not torch.allclose(flow.log_prob(x, context=context), flow.log_prob(x, context=context + 1))
    with pytest.raises(ValueError, match=r"float tensor of shape \[5, 2\]"):
        flow.log_prob(x, context=torch.randn(5, 3, dtype=torch.float64))


def test_bad_arguments_have_clear_messages():
    with pytest.raises(ModelConfigError, match="does not apply to images"):
        AffineCoupling((2, 4, 4), "half")
    with pytest.raises(ModelConfigError, match="does not apply to vectors"):
        AdditiveCoupling((6,), "checkerboard")
    with pytest.raises(ModelConfigError, match="channel mask needs at least two channels"):
        AffineCoupling((1, 4, 4), "channel")
    with pytest.raises(ModelConfigError, match="at least two entries"):
        AffineCoupling((1,))
    with pytest.raises(ModelConfigError, match="not both"):
        AffineCoupling((6,), context_dim=2, num_classes=3)
    with pytest.raises(ModelConfigError, match="scale_bound must be a positive number"):
        AffineCoupling((6,), scale_bound=0)
    with pytest.raises(ModelConfigError, match="hidden_dims must be a non-empty list"):
        MaskedAutoregressiveFlow(5, [])
    with pytest.raises(ModelConfigError, match="dim must be a positive integer"):
        InverseAutoregressiveFlow(0, [8])
    with pytest.raises(ModelConfigError, match="exactly once"):
        Permutation([0, 0, 1])
    with pytest.raises(ValueError, match=r"x must have shape \[B, 6\]"):
        AffineCoupling((6,))(torch.randn(2, 5))
    with pytest.raises(ValueError, match=r"y must have shape \[B, 5\]"):
        MaskedAutoregressiveFlow(5, [8]).inverse(torch.randn(2, 4))


def test_a_conditional_stack_passes_the_context_through_permutations():
    torch.manual_seed(0)
    stack = Compose(AffineCoupling((2, 4, 4), "channel", num_classes=2, hidden=8, identity_init=False), Reverse(2),
                    AdditiveCoupling((2, 4, 4), "channel", num_classes=2, hidden=8, identity_init=False)).double()
    x, labels = torch.randn(3, 2, 4, 4, dtype=torch.float64), torch.tensor([0, 1, 1])
    y, logdet = stack(x, context=labels)
    back, logdet_inverse = stack.inverse(y, context=labels)
    torch.testing.assert_close(back, x)
    torch.testing.assert_close(logdet_inverse, -logdet)
