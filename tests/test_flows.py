"""Every registered flow transform, in one parametrised test: the log-determinant against the autograd
Jacobian, inverse after forward is the identity, and the inverse's log-determinant is minus the forward's.
A transform joins by registering an example (dgmlab.models.flows.register_transform_example)."""

from __future__ import annotations

import pytest
import torch

import dgmlab.models.flows  # noqa: F401  (importing the package registers every transform's example)
from dgmlab.models.flows import TRANSFORM_EXAMPLES, Compose, Flow, Inverse, StandardNormal
from dgmlab.models.protocols import DataInitialized, DensityModel

NAMES = sorted(TRANSFORM_EXAMPLES)


def example_inputs(name: str, n: int, dtype: torch.dtype, seed: int = 0) -> torch.Tensor:
    example = TRANSFORM_EXAMPLES[name]
    generator = torch.Generator().manual_seed(seed)
    if example.sample_input is not None:
        return example.sample_input(n, generator).to(dtype)
    return torch.randn(n, *example.shape, generator=generator, dtype=dtype)


def built(name: str, dtype: torch.dtype = torch.float64):
    torch.manual_seed(0)
    transform = TRANSFORM_EXAMPLES[name].build().to(dtype)
    if isinstance(transform, DataInitialized):  # e.g. ActNorm: initialise on a batch first, as training does
        transform.initialize_from_data(example_inputs(name, 64, dtype, seed=1))
    return transform


def test_the_core_transforms_are_registered():
    assert len(NAMES) >= 1


@pytest.mark.parametrize("name", NAMES)
def test_log_determinant_equals_the_autograd_jacobian(name):
    transform = built(name)
    x = example_inputs(name, 3, torch.float64)
    _, logdet = transform(x)
    assert logdet.shape == (3,) and logdet.dtype == torch.float64
    for i in range(len(x)):
        def single(v, i=i):
            return transform(v.unsqueeze(0))[0][0].reshape(-1)

        jacobian = torch.autograd.functional.jacobian(single, x[i]).reshape(x[i].numel(), x[i].numel())
        torch.testing.assert_close(logdet[i], torch.linalg.slogdet(jacobian).logabsdet, rtol=1e-9, atol=1e-9)


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize(("dtype", "tolerance"), [(torch.float64, 1e-10), (torch.float32, 1e-5)])
def test_inverse_after_forward_is_the_identity(name, dtype, tolerance):
    transform = built(name, dtype)
    x = example_inputs(name, 5, dtype)
    with torch.no_grad():
        y, logdet = transform(x)
        back, logdet_inverse = transform.inverse(y)
    assert back.shape == x.shape and y.shape[0] == x.shape[0]
    torch.testing.assert_close(back, x, rtol=0, atol=tolerance * max(1.0, float(x.abs().max())))
    scale = max(1.0, float(logdet.abs().max()))  # log-determinants sum many terms: compare relative to their size
    torch.testing.assert_close(logdet_inverse, -logdet, rtol=0, atol=100 * tolerance * scale)


def test_compose_adds_log_determinants_and_inverse_swaps_directions():
    if len(NAMES) < 2:
        pytest.skip("needs two registered transforms of one shape")
    by_shape: dict = {}
    for name in NAMES:
        by_shape.setdefault(TRANSFORM_EXAMPLES[name].shape, []).append(name)
    names = max(by_shape.values(), key=len)[:2]
    if len(names) < 2:
        pytest.skip("no two transforms share a shape")
    first, second = built(names[0]), built(names[1])
    x = example_inputs(names[0], 4, torch.float64)
    composed = Compose(first, second)
    y, logdet = composed(x)
    middle, a = first(x)
    expected, b = second(middle)
    torch.testing.assert_close(y, expected)
    torch.testing.assert_close(logdet, a + b)
    swapped = Inverse(composed)
    torch.testing.assert_close(swapped.inverse(x)[0], y)


def test_flow_is_a_density_model_and_samples_by_inverting_base_samples():
    name = NAMES[0]
    transform, shape = built(name), TRANSFORM_EXAMPLES[name].shape
    flow = Flow(StandardNormal(shape), transform).double()
    assert isinstance(flow, DensityModel)
    samples = flow.sample(6, generator=torch.Generator().manual_seed(3))
    z = StandardNormal(shape).double().sample(6, generator=torch.Generator().manual_seed(3))
    torch.testing.assert_close(samples, transform.inverse(z)[0])
    x, log_p = flow.sample_and_log_prob(6, generator=torch.Generator().manual_seed(4))
    torch.testing.assert_close(log_p, flow.log_prob(x), rtol=1e-9, atol=1e-9)


def test_flow_initialisation_reaches_every_actnorm_in_order():
    from dgmlab.models.flows import ActNorm, InvertibleConv1x1

    torch.manual_seed(0)
    first, second = ActNorm(3), ActNorm(3)
    conv = InvertibleConv1x1(3)
    with torch.no_grad():
        conv.weight.mul_(3.0)  # no longer a rotation: the second ActNorm must correct the scale
    flow = Flow(StandardNormal((3, 4, 4)), Compose(first, conv, second))
    x = 5.0 + 2.0 * torch.randn(200, 3, 4, 4, generator=torch.Generator().manual_seed(1))
    flow.initialize_from_data(x)
    assert isinstance(flow, DataInitialized)
    after_first, _ = first(x[:512])
    torch.testing.assert_close(after_first.mean(dim=(0, 2, 3)), torch.zeros(3), atol=1e-4, rtol=0)
    out, _ = second(conv(after_first)[0])
    torch.testing.assert_close(out.mean(dim=(0, 2, 3)), torch.zeros(3), atol=1e-4, rtol=0)
    torch.testing.assert_close(out.std(dim=(0, 2, 3), unbiased=False), torch.ones(3), atol=1e-3, rtol=0)
