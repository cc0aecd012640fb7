"""The deep image prior (dgmlab.models.deep_image_prior.SkipNet, dgmlab.restoration.deep_image_prior): the
network's shapes, range, size rule and parameter count against its definition; short seeded fits on a crop of
a photograph; what is recorded, and the error messages."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from dgmlab.data.images import photograph
from dgmlab.errors import ModelConfigError
from dgmlab.models import SkipNet, count_parameters
from dgmlab.restoration import DeepImagePriorResult, add_noise, deep_image_prior, psnr

TINY = dict(channels=[8, 8], skip_channels=2)  # two levels: inputs of 8, 12, 16, ... pixels


@pytest.fixture(autouse=True)
def one_thread():
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


@pytest.fixture(scope="module")
def crop():
    """A 32x32 crop of the training photograph 'astronaut' and the same crop plus noise of 25 grey levels."""
    clean = photograph("astronaut")[192:224, 128:160].clone()
    return clean, add_noise(clean, 25 / 255, seed=0)


@pytest.mark.parametrize(("size", "config"), [
    ((8, 8), TINY),
    ((12, 20), TINY),
    ((16, 16), dict(channels=[4, 6, 8], skip_channels=[0, 2, 3], up_channels=[5, 6, 7], out_channels=3)),
    ((24, 32), dict(channels=[4, 4, 4], skip_channels=0, kernel_size=5)),
])
def test_skipnet_maps_a_code_to_images_of_its_size_in_the_unit_interval(size, config):
    torch.manual_seed(0)
    net = SkipNet(3, **config)
    z = torch.randn(2, 3, *size)
    x = net(z)
    assert x.shape == (2, config.get("out_channels", 1), *size)
    assert (x > 0).all() and (x < 1).all()


def test_skipnet_size_rule_names_the_sizes_that_work():
    net = SkipNet(3, channels=[4, 4, 4])  # 3 levels: multiples of 8, at least 16
    with pytest.raises(ValueError, match=r"a 20x16 input does not fit 3 levels: .* multiples of 2\*\*3 = 8 and at "
                                         r"least 16 \(16, 24, 32, \.\.\.\); crop it to 16x16 or use fewer levels"):
        net(torch.zeros(1, 3, 20, 16))
    with pytest.raises(ValueError, match="a 8x8 input does not fit 3 levels: .*; use fewer levels or a larger image"):
        net(torch.zeros(1, 3, 8, 8))  # a multiple, but too small
    with pytest.raises(ValueError, match=r"a 32x32 input .* at least 40 \(40, 48, 56, \.\.\.\)"):
        SkipNet(3, channels=[4, 4, 4], kernel_size=9)(torch.zeros(1, 3, 32, 32))  # 4x4 maps, padded by 4
    with pytest.raises(ValueError, match=r"the code must be \[N, 3, H, W\], got \[1, 2, 16, 16\]"):
        net(torch.zeros(1, 2, 16, 16))


@pytest.mark.parametrize(("kwargs", "message"), [
    (dict(in_channels=0), "in_channels must be a positive integer"),
    (dict(in_channels=3, channels=[]), "channels must be a non-empty list of positive integer widths"),
    (dict(in_channels=3, channels=[4, 4], up_channels=[4]), "up_channels has 1 widths but channels has 2 levels"),
    (dict(in_channels=3, channels=[4, 4], skip_channels=[1]), "skip_channels must be a number >= 0"),
    (dict(in_channels=3, channels=[4, 4], skip_channels=-1), "skip_channels must be a number >= 0"),
    (dict(in_channels=3, kernel_size=4), "kernel_size must be odd"),
    (dict(in_channels=3, negative_slope=1.5), r"negative_slope must be a number in \[0, 1\)"),
])
def test_skipnet_rejects_bad_arguments_with_a_clear_message(kwargs, message):
    with pytest.raises(ModelConfigError, match=message):
        SkipNet(**kwargs)


def test_skipnet_has_the_parameters_of_its_definition():
    # conv k x k from a to b: (a k^2 + 1) b; BatchNorm of c: 2 c. Levels d = (4, 6), up u = (5, 7), skips s = (2, 3)
    def conv(a, b, k):
        return (a * k * k + 1) * b

    c, d, u, s = 3, (4, 6), (5, 7), (2, 3)
    down = sum(conv(a, b, 3) + 2 * b + conv(b, b, 3) + 2 * b for a, b in ((c, d[0]), (d[0], d[1])))
    skip = sum(conv(a, b, 1) + 2 * b for a, b in ((c, s[0]), (d[0], s[1])))
    deeper = (u[1], d[1])  # level 0 reads the up path of level 1, the deepest level its own down path
    up = sum(2 * (s[i] + deeper[i]) + conv(s[i] + deeper[i], u[i], 3) + 2 * u[i] + conv(u[i], u[i], 1) + 2 * u[i]
             for i in range(2))
    head = conv(u[0], 1, 1)
    net = SkipNet(c, channels=list(d), up_channels=list(u), skip_channels=list(s))
    assert count_parameters(net) == down + skip + up + head


def test_gradients_reach_every_parameter():
    torch.manual_seed(0)
    net = SkipNet(3, channels=[4, 6, 8], skip_channels=[1, 2, 3])
    ((net(torch.rand(1, 3, 16, 16)) - 0.5) ** 2).mean().backward()
    for name, parameter in net.named_parameters():
        assert parameter.grad is not None and parameter.grad.abs().sum() > 0, name


def test_skipnet_pads_by_reflection():
    # a code that is constant along the columns gives an output constant along them (zero padding would not)
    torch.manual_seed(0)
    net = SkipNet(2, **TINY)
    z = torch.rand(1, 2, 16, 1).expand(1, 2, 16, 16).contiguous()
    x = net(z)[0, 0]
    torch.testing.assert_close(x, x[:, :1].expand(16, 16))


def small_net(seed=0, channels=(8, 16), skip_channels=4, in_channels=8):
    torch.manual_seed(seed)
    return SkipNet(in_channels, 1, list(channels), skip_channels)


def test_fitting_a_noisy_crop_lowers_the_loss_denoises_and_records_every_few_steps(crop):
    clean, noisy = crop
    first = []

    def keep_first(iteration, output, average):
        if iteration == 1:
            first.append(float(((output - noisy) ** 2).mean()))

    result = deep_image_prior(noisy, iterations=120, record_every=50, input_channels=8, clean=clean, lr=0.02,
                              average=0.9, net=small_net(channels=(16, 16)), callback=keep_first)
    assert isinstance(result, DeepImagePriorResult)
    assert result.iterations == [50, 100, 120]  # every 50 steps and the last
    assert len(result.loss) == len(result.psnr) == len(result.psnr_average) == 3
    # the untrained output is far from the crop (~0.05); 120 steps take the loss most of the way to the noise's
    # variance (25/255)^2 ~ 0.0096, and the average is a better image than the noisy input
    assert result.loss[-1] < first[0] / 4 and result.loss[-1] > 0.5 * (25 / 255) ** 2
    assert result.psnr_average[-1] > psnr(noisy, clean) + 2.0
    assert result.image.shape == (32, 32) and result.image.dtype == noisy.dtype
    assert 0 <= float(result.image.min()) and float(result.image.max()) <= 1
    assert psnr(result.image, clean) == pytest.approx(result.psnr_average[-1], abs=1e-4)
    assert result.seconds > 0


def test_the_same_seed_gives_the_same_result_and_another_seed_another(crop):
    _, noisy = crop
    runs = [deep_image_prior(noisy, iterations=8, record_every=4, input_channels=8, net=small_net(seed), seed=seed)
            for seed in (0, 0, 1)]
    assert torch.equal(runs[0].image, runs[1].image) and runs[0].loss == runs[1].loss
    assert not torch.allclose(runs[0].image, runs[2].image)
    # without a net, the seed also fixes the initial weights of the paper's network (checked at 64x64)
    image = torch.nn.functional.interpolate(noisy[None, None], size=(64, 64))[0, 0]
    default = [deep_image_prior(image, iterations=1, seed=seed).image for seed in (3, 3, 4)]
    assert torch.equal(default[0], default[1]) and not torch.allclose(default[0], default[2])


def test_the_code_is_perturbed_only_when_asked(crop):
    _, noisy = crop
    codes = []

    class Recording(nn.Module):
        def __init__(self):
            super().__init__()
            self.net = small_net()

        def forward(self, z):
            codes.append(z.clone())
            return self.net(z)

    deep_image_prior(noisy, iterations=2, input_channels=8, net=Recording(), input_noise_std=0)
    deep_image_prior(noisy, iterations=2, input_channels=8, net=Recording(), input_noise_std=1 / 30)
    fixed, perturbed = codes[:2], codes[2:]
    assert torch.equal(fixed[0], fixed[1])
    assert fixed[0].shape == (1, 8, 32, 32) and 0 <= float(fixed[0].min()) and float(fixed[0].max()) < 0.1
    # z + sigma_p eps: the difference between two steps has standard deviation sqrt(2) / 30
    difference = perturbed[1] - perturbed[0]
    assert float(difference.std()) == pytest.approx(2**0.5 / 30, rel=0.05)
    assert torch.allclose(perturbed[0], fixed[0], atol=0.2)  # the same z underneath


def test_without_a_clean_image_no_psnr_is_recorded(crop):
    _, noisy = crop
    result = deep_image_prior(noisy, iterations=4, record_every=2, input_channels=8, net=small_net())
    assert result.iterations == [2, 4] and len(result.loss) == 2
    assert result.psnr == [] and result.psnr_average == []


def test_the_recorded_psnr_is_the_psnr_of_that_steps_output_and_of_the_running_average(crop):
    clean, noisy = crop
    seen = {}

    def keep(iteration, output, average):
        seen[iteration] = (output.clone(), average.clone())

    gamma = 0.9
    result = deep_image_prior(noisy, iterations=6, record_every=3, input_channels=8, clean=clean, net=small_net(),
                              average=gamma, callback=keep)
    assert sorted(seen) == list(range(1, 7)) and result.iterations == [3, 6]
    for index, iteration in enumerate(result.iterations):
        output, average = seen[iteration]
        assert result.psnr[index] == psnr(output, clean)
        assert result.psnr_average[index] == psnr(average, clean)
    # the running average, from its own definition: x_bar_1 = x_1, x_bar_t = gamma x_bar_{t-1} + (1 - gamma) x_t
    expected = seen[1][0]
    for iteration in range(2, 7):
        expected = gamma * expected + (1 - gamma) * seen[iteration][0]
    torch.testing.assert_close(seen[6][1], expected)
    torch.testing.assert_close(result.image, expected.double())


@pytest.mark.parametrize(("call", "message"), [
    (lambda y: deep_image_prior(y[None]), r"the noisy image must be a float tensor of grey levels \[H, W\], got "
                                          r"\[1, 32, 32\]"),
    (lambda y: deep_image_prior((y * 255).long()), "must be a float tensor"),
    (lambda y: deep_image_prior(y, iterations=0), "iterations must be a positive integer"),
    (lambda y: deep_image_prior(y, record_every=0), "record_every must be a positive integer"),
    (lambda y: deep_image_prior(y, clean=y[:16]), r"the clean image \[16, 32\] must have the noisy image's shape"),
    (lambda y: deep_image_prior(y, lr=0), "lr must be a finite number > 0"),
    (lambda y: deep_image_prior(y, input_noise_std=-1), "input_noise_std must be a finite number >= 0"),
    (lambda y: deep_image_prior(y, average=1.0), r"average must be the weight of the running average in \[0, 1\)"),
    (lambda y: deep_image_prior(y[:30, :30]),
     r"deep_image_prior: SkipNet: a 30x30 input does not fit 5 levels: .* multiples of 2\*\*5 = 32 and at least 64"),
    (lambda y: deep_image_prior(y, input_channels=4, net=small_net()),
     r"the net maps 8 code channels to 1 images, but the code has input_channels = 4"),
    (lambda y: deep_image_prior(y, input_channels=8, net=nn.Conv2d(8, 2, 1)),
     r"the net's output is \[1, 2, 32, 32\], it must be the image's \[1, 1, 32, 32\]"),
])
def test_deep_image_prior_rejects_bad_inputs_with_a_clear_message(crop, call, message):
    with pytest.raises(ValueError, match=message):
        call(crop[1])
