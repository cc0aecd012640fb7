"""Spectrally normalised layers for invertible residual networks (dgmlab.models.flows.lipschitz): the power
iteration against exact singular values (torch.linalg and the dense convolution operator), the rescaled
weight's norm, gradients by finite differences, the buffers' state, measured Lipschitz constants of the
built branches against their bound, LipSwish's derivative, and the error messages."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file
from torch import nn
from torch.func import functional_call

from dgmlab.errors import ModelConfigError
from dgmlab.models.flows.lipschitz import (
    LipschitzNet,
    LipSwish,
    SpectralConv2d,
    SpectralLinear,
    conv_operator_matrix,
    lipschitz_cnn,
    lipschitz_mlp,
)

COEFFICIENT = 0.97


def gaussian(*shape: int, seed: int = 0) -> torch.Tensor:
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


def linear_with(weight: torch.Tensor, coefficient: float = COEFFICIENT) -> SpectralLinear:
    """A float64 SpectralLinear holding ``weight``, its u, v re-drawn at random (not aligned with ``weight``)."""
    layer = SpectralLinear(weight.shape[1], weight.shape[0], coefficient=coefficient).double()
    with torch.no_grad():
        layer.weight.copy_(weight)
        layer.u.copy_(F.normalize(gaussian(weight.shape[0], seed=101), dim=0))
        layer.v.copy_(F.normalize(gaussian(weight.shape[1], seed=102), dim=0))
    return layer


def conv_with(weight: torch.Tensor, size: int, coefficient: float = COEFFICIENT) -> SpectralConv2d:
    """A float64 SpectralConv2d on ``size x size`` images holding ``weight``, its u, v re-drawn at random."""
    out_channels, in_channels, k, _ = weight.shape
    layer = SpectralConv2d(in_channels, out_channels, k, (size, size), coefficient=coefficient).double()
    with torch.no_grad():
        layer.weight.copy_(weight)
        layer.u.copy_(F.normalize(gaussian(out_channels * size * size, seed=103), dim=0).reshape(layer.u.shape))
        layer.v.copy_(F.normalize(gaussian(in_channels * size * size, seed=104), dim=0).reshape(layer.v.shape))
    return layer


def operator_norm(layer: SpectralConv2d, weight: torch.Tensor | None = None) -> torch.Tensor:
    weight = layer.weight.detach() if weight is None else weight
    return torch.linalg.matrix_norm(conv_operator_matrix(weight, layer.input_size, layer.padding), ord=2)


# ---- the power iteration against exact values ----

@pytest.mark.parametrize("shape", [(5, 3), (3, 7), (10, 10), (16, 4)])
def test_linear_estimate_converges_to_the_largest_singular_value(shape):
    layer = linear_with(gaussian(*shape))
    layer.power_iterate(200)
    exact = torch.linalg.matrix_norm(layer.weight.detach(), ord=2)
    torch.testing.assert_close(layer.spectral_norm_estimate(), exact, rtol=1e-4, atol=0)
    # sigma > c here, so the rescaled weight has norm c exactly (up to the estimate's error)
    assert exact > 2 * COEFFICIENT
    rescaled = torch.linalg.matrix_norm(layer.normalized_weight().detach(), ord=2)
    assert COEFFICIENT * (1 - 1e-4) <= rescaled <= COEFFICIENT * (1 + 1e-4)


def test_linear_weight_below_the_coefficient_is_left_unchanged():
    layer = linear_with(0.01 * gaussian(6, 4))
    layer.power_iterate(200)
    assert torch.linalg.matrix_norm(layer.weight.detach(), ord=2) < COEFFICIENT
    assert torch.equal(layer.normalized_weight().detach(), layer.weight.detach())


def test_conv_operator_matrix_computes_the_convolution():
    weight = gaussian(3, 2, 3, 3)
    x = gaussian(4, 2, 5, 6, seed=1)
    matrix = conv_operator_matrix(weight, (5, 6), padding=1)
    assert matrix.shape == (3 * 5 * 6, 2 * 5 * 6)
    torch.testing.assert_close((x.reshape(4, -1) @ matrix.T).reshape(4, 3, 5, 6), F.conv2d(x, weight, padding=1))


@pytest.mark.parametrize("size", [5, 6])
def test_conv_estimate_converges_to_the_operator_norm(size):
    layer = conv_with(gaussian(3, 2, 3, 3), size)
    layer.power_iterate(1000)
    exact = operator_norm(layer)
    torch.testing.assert_close(layer.spectral_norm_estimate(), exact, rtol=1e-4, atol=0)
    rescaled = operator_norm(layer, layer.normalized_weight().detach())
    assert COEFFICIENT * (1 - 1e-4) <= rescaled <= COEFFICIENT * (1 + 1e-4)


def test_reshaped_kernel_norm_is_not_the_operator_norm():
    """torch.nn.utils.spectral_norm's number (the kernel as a c_out x c_in k^2 matrix) differs from the
    convolution operator's norm for a 3x3 kernel; for a 1x1 kernel (operator = kernel (x) identity) they agree."""
    kernel = gaussian(3, 2, 3, 3)
    operator = torch.linalg.matrix_norm(conv_operator_matrix(kernel, (5, 5), padding=1), ord=2)
    reshaped = torch.linalg.matrix_norm(kernel.reshape(3, -1), ord=2)
    assert not torch.isclose(operator, reshaped, rtol=1e-3)
    pointwise = gaussian(3, 2, 1, 1)
    operator = torch.linalg.matrix_norm(conv_operator_matrix(pointwise, (5, 5), padding=0), ord=2)
    torch.testing.assert_close(operator, torch.linalg.matrix_norm(pointwise.reshape(3, 2), ord=2))


@pytest.mark.parametrize("kind", ["linear", "conv"])
def test_one_iteration_per_step_never_overestimates_and_rises_toward_the_truth(kind):
    if kind == "linear":
        layer = linear_with(gaussian(10, 10))
        exact = torch.linalg.matrix_norm(layer.weight.detach(), ord=2)
        x = gaussian(2, 10, seed=2)
    else:
        layer = conv_with(gaussian(3, 2, 3, 3), 5)
        exact = operator_norm(layer)
        x = gaussian(2, 2, 5, 5, seed=2)
    layer.train()
    estimates = [layer.spectral_norm_estimate()]
    with torch.no_grad():
        for _ in range(400):
            layer(x)
            estimates.append(layer.spectral_norm_estimate())
    estimates = torch.stack(estimates)
    # u^T W v <= |W v| <= sigma_max for unit u, v
    assert torch.all(estimates <= exact + 1e-9)
    # after the first update sigma_hat = |W v_k|, non-decreasing in k
    assert torch.all(estimates[2:] >= estimates[1:-1] - 1e-12)
    assert estimates[1] < exact * (1 - 1e-3)
    torch.testing.assert_close(estimates[-1], exact, rtol=1e-4, atol=0)


# ---- gradients ----

def test_linear_gradient_through_sigma_matches_finite_differences():
    layer = linear_with(3 * gaussian(3, 4)).eval()
    layer.power_iterate(5)  # u, v close to, not at, the singular vectors: sigma_hat's own gradient matters
    assert layer.spectral_norm_estimate() > COEFFICIENT
    x = gaussian(5, 4, seed=3)
    weight = layer.weight.detach().clone().requires_grad_(True)
    assert torch.autograd.gradcheck(lambda w: functional_call(layer, {"weight": w}, (x,)), (weight,))


def test_conv_gradient_through_sigma_matches_finite_differences():
    layer = conv_with(3 * gaussian(2, 1, 3, 3), 4).eval()
    layer.power_iterate(5)
    assert layer.spectral_norm_estimate() > COEFFICIENT
    x = gaussian(2, 1, 4, 4, seed=3)
    weight = layer.weight.detach().clone().requires_grad_(True)
    assert torch.autograd.gradcheck(lambda w: functional_call(layer, {"weight": w}, (x,)), (weight,))


# ---- state ----

@pytest.mark.parametrize("kind", ["linear", "conv"])
def test_eval_keeps_u_and_v_and_training_updates_them(kind):
    torch.manual_seed(0)
    layer = SpectralLinear(4, 6) if kind == "linear" else SpectralConv2d(2, 3, 3, (5, 5))
    x = torch.randn(2, 4) if kind == "linear" else torch.randn(2, 2, 5, 5)
    u, v = layer.u.clone(), layer.v.clone()
    layer.eval()
    layer(x)
    assert torch.equal(layer.u, u) and torch.equal(layer.v, v)
    layer.train()
    layer(x)
    assert not torch.equal(layer.u, u) and not torch.equal(layer.v, v)


@pytest.mark.parametrize("kind", ["linear", "conv"])
def test_state_dict_round_trip_through_safetensors_resumes_exactly(kind, tmp_path):
    def build(seed: int):
        torch.manual_seed(seed)
        return SpectralLinear(4, 6) if kind == "linear" else SpectralConv2d(2, 3, 3, (5, 5))

    layer = build(0)
    x = torch.randn(3, 4) if kind == "linear" else torch.randn(3, 2, 5, 5)
    layer(x)
    assert {"u", "v"} <= set(layer.state_dict())
    save_file(layer.state_dict(), tmp_path / "layer.safetensors")
    loaded = build(1)
    assert not torch.equal(loaded.u, layer.u)
    loaded.load_state_dict(load_file(tmp_path / "layer.safetensors"))
    for mode in (False, True):  # eval, then a training step that updates u, v the same way
        layer.train(mode)
        loaded.train(mode)
        assert torch.equal(loaded(x), layer(x))
        assert torch.equal(loaded.u, layer.u) and torch.equal(loaded.v, layer.v)


def test_double_converts_the_buffers():
    net = lipschitz_cnn(2, 4, (6, 6)).double()
    assert all(buffer.dtype == torch.float64 for buffer in net.buffers())
    assert net(torch.randn(1, 2, 6, 6, dtype=torch.float64)).dtype == torch.float64


# ---- the built branches: structure and measured Lipschitz constants ----

def test_builders_lay_out_the_layers():
    mlp = lipschitz_mlp(3, 16, layers=4, coefficient=0.9)
    assert isinstance(mlp, LipschitzNet) and mlp.coefficient == 0.9
    spectral = [layer for layer in mlp if isinstance(layer, SpectralLinear)]
    assert [(layer.in_features, layer.out_features) for layer in spectral] == [(3, 16), (16, 16), (16, 16), (16, 3)]
    assert len(mlp) == 7 and isinstance(mlp[1], LipSwish)
    assert mlp.lipschitz_bound() == pytest.approx(0.9 ** 4)
    cnn = lipschitz_cnn(2, 4, (6, 6), activation="elu")
    assert [type(layer).__name__ for layer in cnn] == ["ELU", "SpectralConv2d"] * 3
    assert [(layer.in_channels, layer.out_channels, layer.kernel_size) for layer in cnn[1::2]] == \
        [(2, 4, 3), (4, 4, 1), (4, 2, 3)]
    assert cnn.lipschitz_bound() == pytest.approx(COEFFICIENT ** 3)
    assert cnn(torch.randn(5, 2, 6, 6)).shape == (5, 2, 6, 6)


def _scramble_and_warm(net: LipschitzNet, x: torch.Tensor) -> None:
    """Replace the weights by large Gaussian ones (norms far above c, singular vectors unlike the old ones),
    then 300 training-mode forwards, so the test depends on the normalisation and on the iteration."""
    generator = torch.Generator().manual_seed(7)
    with torch.no_grad():
        for layer in net:
            if isinstance(layer, (SpectralLinear, SpectralConv2d)):
                layer.weight.copy_(torch.randn(layer.weight.shape, generator=generator, dtype=torch.float64))
        net.train()
        for _ in range(300):
            net(x)
    net.eval()


def _measured_lipschitz(net: nn.Module, inputs: torch.Tensor) -> tuple[float, float]:
    """The largest |g(x) - g(y)| / |x - y| over random pairs and nearby pairs, and the largest Jacobian spectral
    norm at a few points."""
    generator = torch.Generator().manual_seed(8)
    n = inputs.shape[0]
    others = torch.randn(inputs.shape, generator=generator, dtype=torch.float64)
    nearby = inputs + 1e-4 * torch.randn(inputs.shape, generator=generator, dtype=torch.float64)
    ratios = []
    with torch.no_grad():
        g_x = net(inputs).reshape(n, -1)
        for y in (others, nearby):
            ratios.append((g_x - net(y).reshape(n, -1)).norm(dim=1) / (inputs - y).reshape(n, -1).norm(dim=1))
    jacobian_norms = []
    for point in inputs[:8]:
        jacobian = torch.autograd.functional.jacobian(lambda z: net(z.unsqueeze(0)).squeeze(0), point)
        jacobian_norms.append(torch.linalg.matrix_norm(jacobian.reshape(point.numel(), point.numel()), ord=2))
    return torch.cat(ratios).max().item(), torch.stack(jacobian_norms).max().item()



@pytest.mark.parametrize("activation", ["lipswish", "elu", "relu", "tanh"])
def test_mlp_lipschitz_constant_is_within_its_bound(activation):
    torch.manual_seed(0)
    net = lipschitz_mlp(3, 16, layers=3, activation=activation).double()
    _scramble_and_warm(net, gaussian(32, 3, seed=4))
    bound = net.lipschitz_bound()
    # what the bound rests on: each layer's exact norm is c, up to the iteration's error from below
    for layer in net.spectral_layers():
        exact = torch.linalg.matrix_norm(layer.normalized_weight().detach(), ord=2)
        assert COEFFICIENT * (1 - 1e-3) <= exact <= COEFFICIENT * (1 + 1e-3)
    pairs, jacobian = _measured_lipschitz(net, gaussian(2000, 3, seed=5))
    assert pairs <= bound * (1 + 1e-3) and jacobian <= bound * (1 + 1e-3)
    # the measurement can fail: with the rescaling switched off, the same network exceeds the bound
    for layer in net.spectral_layers():
        layer.coefficient = 1e6
    pairs, jacobian = _measured_lipschitz(net, gaussian(2000, 3, seed=5))
    assert pairs > bound and jacobian > bound


def test_cnn_lipschitz_constant_is_within_its_bound():
    torch.manual_seed(0)
    net = lipschitz_cnn(2, 4, (6, 6)).double()
    _scramble_and_warm(net, gaussian(8, 2, 6, 6, seed=4))
    bound = net.lipschitz_bound()
    for layer in net.spectral_layers():
        exact = operator_norm(layer, layer.normalized_weight().detach())
        assert COEFFICIENT * (1 - 1e-3) <= exact <= COEFFICIENT * (1 + 1e-3)
    pairs, jacobian = _measured_lipschitz(net, gaussian(2000, 2, 6, 6, seed=5))
    assert pairs <= bound * (1 + 1e-3) and jacobian <= bound * (1 + 1e-3)
    for layer in net.spectral_layers():
        layer.coefficient = 1e6
    pairs, jacobian = _measured_lipschitz(net, gaussian(2000, 2, 6, 6, seed=5))
    assert pairs > bound and jacobian > bound


# ---- LipSwish ----

def test_lipswish_is_one_lipschitz_and_the_divisor_is_tight():
    x = torch.linspace(-60.0, 60.0, 240_001, dtype=torch.float64, requires_grad=True)
    maxima = []
    for beta in (0.1, 1.0, 5.0, 50.0):
        activation = LipSwish(beta).double()
        assert activation.beta.item() == pytest.approx(beta, rel=1e-6)  # b stored in float32 at first
        (derivative,) = torch.autograd.grad(activation(x).sum(), x)
        maxima.append(derivative.abs().max().item())
    # sup_t |sigma(t) + t sigma(t)(1 - sigma(t))| / 1.1 ~ 1.0998 / 1.1, the same for every beta
    assert all(0.999 < largest <= 1.0 for largest in maxima)
    assert max(maxima) - min(maxima) < 1e-6


def test_lipswish_beta_is_learned():
    activation = LipSwish(2.0)
    activation(torch.linspace(-3, 3, 11)).sum().backward()
    assert activation.b.grad is not None and activation.b.grad.abs() > 0


# ---- bad inputs ----

@pytest.mark.parametrize("build, message", [
    (lambda: SpectralLinear(3, 2, coefficient=-0.5), r"SpectralLinear: coefficient must be a positive number "
                                                     r"\(.*below 1 for an invertible residual block\), got -0.5"),
    (lambda: SpectralLinear(3, 2, power_iterations=0), "SpectralLinear: power_iterations must be a positive integer"),
    (lambda: SpectralLinear(0, 2), "SpectralLinear: in_features must be a positive integer, got 0"),
    (lambda: SpectralConv2d(2, 3, 4, (5, 5)), "SpectralConv2d: kernel_size must be odd .*got 4"),
    (lambda: SpectralConv2d(2, 3, 3, (5,)), r"SpectralConv2d: input_size must be .*\(H, W\).*got \(5,\)"),
    (lambda: SpectralConv2d(2, 3, 3, 5, coefficient=0), "SpectralConv2d: coefficient must be a positive number"),
    (lambda: lipschitz_mlp(3, 8, activation="gelu"), "lipschitz_mlp: activation must be one of lipswish, elu, "
                                                     "relu, tanh .*got 'gelu'"),
    (lambda: lipschitz_mlp(3, 8, layers=1), "lipschitz_mlp: layers must be an integer >= 2"),
    (lambda: lipschitz_cnn(2, 4, (6, 6), kernel_sizes=(3,)), "lipschitz_cnn: kernel_sizes must list at least two"),
    (lambda: lipschitz_cnn(2, 4, (6, 6), kernel_sizes=(3, 2)), "lipschitz_cnn: kernel_size must be odd"),
    (lambda: lipschitz_cnn(2, 4, (6, 6), activation="swish"), "lipschitz_cnn: activation must be one of"),
    (lambda: LipSwish(beta=0.0), "LipSwish: beta must be a positive number"),
    (lambda: conv_operator_matrix(torch.zeros(3, 3), (5, 5), 1), r"weight must be a kernel .*got \(3, 3\)"),
])
def test_constructor_errors_say_what_is_wrong(build, message):
    with pytest.raises(ModelConfigError, match=message):
        build()


def test_forward_errors_name_the_expected_and_given_shapes():
    with pytest.raises(ValueError, match=r"built for input_size \(5, 5\).*got images of size \(6, 6\)"):
        SpectralConv2d(2, 3, 3, (5, 5))(torch.randn(1, 2, 6, 6))
    with pytest.raises(ValueError, match=r"expects images \[B, 2, H, W\], got shape \(1, 3, 5, 5\)"):
        SpectralConv2d(2, 3, 3, (5, 5))(torch.randn(1, 3, 5, 5))
    with pytest.raises(ValueError, match=r"expects inputs \[\.\.\., 4\], got shape \(2, 5\)"):
        SpectralLinear(4, 3)(torch.randn(2, 5))
