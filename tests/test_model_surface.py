"""One model surface: every family declares its capabilities through dgmlab.models.protocols, conditioning is
the keyword ``context=`` everywhere, the run layer dispatches on capabilities only, and a model defined here,
unknown to the library, trains, evaluates, samples and gets its figures through the command line."""

from __future__ import annotations

import atexit
import inspect
import io
import json
import re
import shutil
import tempfile
import tokenize
from pathlib import Path

import pytest
import torch
from torch import nn

from dgmlab.cli import main
from dgmlab.errors import CapabilityError, ModelConfigError
from dgmlab.models import MODELS, build_model, register_model
from dgmlab.models.protocols import (
    Autoencoder,
    Completer,
    ConditionalModel,
    DataInitialized,
    DensityModel,
    EstimatedDensity,
    ImageModel,
    LatentVariableModel,
    PerDimensionDensity,
    Sampler,
    context_classes,
    decode_representation,
    reject_context,
    representation,
)


def _tiny_vqvae_run() -> str:
    """A first-stage run (config.json and checkpoint) of a tiny VQ-VAE, for the second stage to build on."""
    from dgmlab.checkpoint import save_checkpoint
    from dgmlab.models.vqvae import VQVAE

    folder = Path(tempfile.mkdtemp(prefix="dgmlab_vqvae_run_"))
    atexit.register(shutil.rmtree, folder, True)
    table = {"quantizer": "fsq", "levels": [3, 2], "hidden": 4, "residual_blocks": 0, "image_size": 8}
    (folder / "config.json").write_text(json.dumps({"model": {"name": "vqvae", **table}}))
    torch.manual_seed(0)
    save_checkpoint(folder / "checkpoint", VQVAE(**table), None, epoch=1, step=0)
    return str(folder)


SMALL = {
    "ae": dict(input_dim=12, hidden_dims=[8, 2]),
    "vae": dict(input_dim=12, hidden_dims=[8, 4], likelihood="bernoulli"),
    "vae_planar": dict(input_dim=12, hidden_dims=[8, 4], flow_length=2),
    "point_vae": dict(hidden_dims=[8, 4]),
    "fvsbn": dict(num_inputs=12),
    "bengio": dict(num_inputs=12, hidden_per_position=2),
    "nade": dict(num_inputs=12, hidden=5),
    "made": dict(num_inputs=12, hidden_dims=[16]),
    "pixelcnn": dict(channels=4, num_layers=2, image_size=4),
    "gated_pixelcnn": dict(channels=4, num_layers=2, image_size=4),
    "glow": dict(image_shape=[1, 4, 4], levels=1, steps=1, hidden=4),
    "iresnet": dict(features=3, blocks=1, hidden=4, layers=2),
    "residual_flow": dict(image_shape=[1, 4, 4], levels=1, blocks=1, hidden=4),
    "realnvp_vectors": dict(features=3, steps=2, hidden=4),
    "vqvae": dict(quantizer="fsq", levels=[3, 2], hidden=4, residual_blocks=0, image_size=8),
    "vqvae_prior": dict(vqvae_run=_tiny_vqvae_run(), channels=4, num_layers=1),
}
EXPECTED = {  # what each family can do, and nothing more
    "ae": {Autoencoder},
    "vae": {LatentVariableModel, Sampler, DataInitialized},
    "vae_planar": {LatentVariableModel, Sampler, DataInitialized},  # and FlowPosterior: tests/test_vae_planar.py
    "point_vae": {LatentVariableModel, Sampler, DataInitialized},
    "fvsbn": {DensityModel, PerDimensionDensity, Sampler, DataInitialized},
    "bengio": {DensityModel, PerDimensionDensity, Sampler, DataInitialized},
    "nade": {DensityModel, PerDimensionDensity, Sampler, DataInitialized},
    "made": {DensityModel, PerDimensionDensity, Sampler, DataInitialized},
    "pixelcnn": {DensityModel, PerDimensionDensity, Sampler, ConditionalModel, ImageModel, Completer},
    "gated_pixelcnn": {DensityModel, PerDimensionDensity, Sampler, ConditionalModel, ImageModel, Completer},
    "glow": {DensityModel, Sampler, ImageModel, DataInitialized},
    # log_prob is an estimate of the log-determinant, the exact value on request
    "iresnet": {DensityModel, EstimatedDensity, Sampler, DataInitialized},  # on vectors here: not an ImageModel
    "residual_flow": {DensityModel, EstimatedDensity, Sampler, ImageModel, DataInitialized},
    "realnvp_vectors": {DensityModel, Sampler, DataInitialized},
    "vqvae": {Autoencoder, ImageModel},  # samples need its second stage
    "vqvae_prior": {DensityModel, Sampler, ImageModel},  # log_prob is a bound: the ELBO of a point-mass posterior
}
PROTOCOLS = (Autoencoder, Completer, ConditionalModel, DataInitialized, DensityModel, EstimatedDensity, ImageModel,
             LatentVariableModel, PerDimensionDensity, Sampler)
RUN_LAYER = Path(__file__).resolve().parents[1] / "src" / "dgmlab" / "experiments" / "runs.py"


def test_every_family_of_dgmlab_is_covered_here():
    built_in = {name for name, constructor in MODELS.items() if constructor.__module__.startswith("dgmlab.")}
    assert set(SMALL) == built_in == set(EXPECTED)  # a user's registered models (the docs register one) aside


@pytest.mark.parametrize("name", sorted(SMALL))
def test_each_family_declares_exactly_its_capabilities(name):
    model = build_model(name, **SMALL[name])
    assert {p for p in PROTOCOLS if isinstance(model, p)} == EXPECTED[name]


@pytest.mark.parametrize("name", sorted(SMALL))
def test_context_and_generator_are_keyword_only_everywhere(name):
    model = build_model(name, **SMALL[name])
    for method in ("log_prob", "log_prob_per_dimension", "sample", "complete"):
        if not hasattr(model, method):
            continue
        parameters = inspect.signature(getattr(model, method)).parameters
        for keyword in ("context", "generator"):
            if method.startswith("log_prob") and keyword == "generator":
                continue
            assert keyword in parameters, f"{name}.{method} lacks {keyword}="
            assert parameters[keyword].kind is inspect.Parameter.KEYWORD_ONLY, f"{name}.{method}: {keyword}"


@pytest.mark.parametrize("name", sorted(n for n in SMALL if DensityModel in EXPECTED[n]))
def test_unconditional_density_models_refuse_a_context(name):
    model = build_model(name, **SMALL[name]).eval()
    x = model.sample(3, generator=torch.Generator().manual_seed(0))
    with pytest.raises(CapabilityError, match="unconditional"):
        model.log_prob(x, context=torch.zeros(3, dtype=torch.long))
    with pytest.raises(CapabilityError, match="unconditional"):
        model.sample(3, context=1)
    assert context_classes(model) == 0


@pytest.mark.parametrize("name", sorted(n for n in SMALL if PerDimensionDensity in EXPECTED[n]))
def test_per_dimension_terms_sum_to_log_prob(name):
    model = build_model(name, **SMALL[name]).double().eval()
    x = model.sample(5, generator=torch.Generator().manual_seed(1))
    terms = model.log_prob_per_dimension(x)
    assert terms.shape == x.shape
    torch.testing.assert_close(terms.sum(dim=tuple(range(1, x.dim()))), model.log_prob(x))
    assert bool((terms <= 0).all())  # each term is a log-probability of a binary value


def test_a_mixture_of_masks_has_no_per_dimension_terms():
    made = build_model("made", num_inputs=6, hidden_dims=[12], num_masks=3, order="random").eval()
    with pytest.raises(CapabilityError, match="mixture over 3 masks"):
        made.log_prob_per_dimension(torch.zeros(2, 6))
    assert made.log_prob_per_dimension(torch.zeros(2, 6), mask_index=1).shape == (2, 6)


def test_conditional_models_take_labels_as_context():
    model = build_model("pixelcnn", channels=4, num_layers=2, image_size=4, num_classes=3).eval()
    with torch.no_grad():  # the class biases start at zero: make the classes differ
        for parameter in model.parameters():
            parameter.normal_(0.0, 0.3, generator=torch.Generator().manual_seed(parameter.numel()))
    assert context_classes(model) == 3
    x = model.sample(3, generator=torch.Generator().manual_seed(0), context=torch.tensor([0, 1, 2]))
    by_class = torch.stack([model.log_prob(x, context=k) for k in range(3)])
    assert by_class.shape == (3, 3) and not torch.allclose(by_class[0], by_class[1])


def test_representation_is_the_point_code():
    ae, vae = build_model("ae", **SMALL["ae"]), build_model("vae", **SMALL["vae"])
    x = torch.rand(4, 12)
    torch.testing.assert_close(representation(ae, x), ae.encode(x))
    torch.testing.assert_close(representation(vae, x), vae.encode(x)[0])
    mean = vae.encode(x)[0]
    torch.testing.assert_close(decode_representation(vae, mean), torch.sigmoid(vae.decode(mean)))
    with pytest.raises(CapabilityError, match="no encoder"):
        representation(build_model("fvsbn", num_inputs=12), x)
    with pytest.raises(CapabilityError, match="takes no context"):
        reject_context(ae, torch.zeros(1))


def test_data_initialisation_is_opt_in():
    data = (torch.rand(50, 12) < torch.linspace(0.1, 0.9, 12)).float()
    default = build_model("made", num_inputs=12, hidden_dims=[16])
    bias_before = default.layers[-1].bias.clone()
    default.initialize_from_data(data)
    assert torch.equal(default.layers[-1].bias, bias_before)
    started = build_model("made", num_inputs=12, hidden_dims=[16], init_output_bias=True)
    started.initialize_from_data(data)
    torch.testing.assert_close(torch.sigmoid(started.layers[-1].bias), data.mean(0).clamp(1e-3, 1 - 1e-3))


def test_unknown_model_options_name_the_valid_ones():
    with pytest.raises(ModelConfigError, match=r"model 'pixelcnn' has no option init_output_bias; its options are: "
                                               r"channels, num_layers"):
        build_model("pixelcnn", init_output_bias=True)


def test_register_model_errors():
    with pytest.raises(ModelConfigError, match="exists already"):
        register_model("vae", nn.Linear)
    with pytest.raises(ModelConfigError, match="identifier"):
        register_model("my model", nn.Linear)
    with pytest.raises(ModelConfigError, match="callable"):
        register_model("my_model", 3)


def test_the_run_layer_never_asks_for_a_family():
    source = RUN_LAYER.read_text()
    assert not re.search(r"hasattr\(\s*model", source)
    assert not re.search(r"getattr\(\s*model", source)
    names = {token.string for token in tokenize.generate_tokens(io.StringIO(source).readline)
             if token.type == tokenize.NAME}  # the code's names, not the words of its messages
    families = {cls.__name__ for cls in {type(build_model(n, **k)) for n, k in SMALL.items()}}
    assert not names & (families | {"RasterScanModel", "AutoregressiveBinaryModel", "num_masks", "mask_index"})
    assert "** 0.5" not in source and "sqrt" not in source  # no image side guessed from a size
    for match in re.finditer(r"isinstance\(\s*\w+\s*,\s*\(?([\w, ]+)\)?\)", source):
        for name in match.group(1).replace(" ", "").split(","):
            assert name in {p.__name__ for p in PROTOCOLS}, f"runs.py dispatches on {name}"


class IndependentPixels(nn.Module):
    """A toy density model, known only to this test: p(x) = prod_i Bernoulli(x_i; sigmoid(theta_i))."""

    def __init__(self, num_inputs: int) -> None:
        super().__init__()
        self.theta = nn.Parameter(torch.zeros(num_inputs))

    def log_prob_per_dimension(self, x, *, context=None):
        reject_context(self, context)
        return -nn.functional.binary_cross_entropy_with_logits(self.theta.expand_as(x), x, reduction="none")

    def log_prob(self, x, *, context=None):
        return self.log_prob_per_dimension(x, context=context).sum(-1)

    @torch.no_grad()
    def sample(self, n, *, generator=None, context=None):
        reject_context(self, context)
        u = torch.rand(n, self.theta.numel(), generator=generator, device=self.theta.device)
        return (u < torch.sigmoid(self.theta)).float()


TOY = """
name = "toy"
[model]
name = "toy_independent_pixels"
[data]
name = "mnist"
view = "dynamic"
batch_size = 100
limit = 1000
test_limit = 300
[objective]
name = "nll"
[train]
epochs = 3
lr = 0.05
progress = false
"""


@pytest.fixture
def toy_model_registered():
    register_model("toy_independent_pixels", IndependentPixels, input_dim_argument="num_inputs")
    yield
    MODELS.pop("toy_independent_pixels")


def test_a_model_unknown_to_the_library_trains_evaluates_and_samples(toy_model_registered, tmp_path, capsys):
    config = tmp_path / "toy.toml"
    config.write_text(TOY)
    run = tmp_path / "toy"
    assert main(["train", "--config", str(config), "--out", str(run)]) == 0
    assert {"loss_curves.png", "samples.png", "pixel_nll.png"} <= {p.name for p in run.glob("*.png")}
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert records[-1]["test"]["nll"] < records[0]["test"]["nll"] < 543.0  # below log(2) * 784 = 543.4 nats
    spec = json.loads((run / "config.json").read_text())["data_spec"]
    assert spec == {"kind": "images", "example_shape": [784], "image_shape": [1, 28, 28], "view": "dynamic",
                    "num_classes": 0}
    capsys.readouterr()
    assert main(["eval", str(run)]) == 0
    evaluated = json.loads(capsys.readouterr().out)
    assert evaluated["test"]["nll"] == pytest.approx(records[-1]["test"]["nll"], rel=1e-6)
    assert main(["sample", str(run), "--n", "9", "--out", str(tmp_path / "s.png")]) == 0
    assert (tmp_path / "s.png").stat().st_size > 0
    assert main(["eval", str(run), "--iw-samples", "10"]) == 2
    assert "not one (a density model's test nll is exact already)" in capsys.readouterr().err
    assert main(["sample", str(run), "--class", "3"]) == 2
    assert "is not class-conditional" in capsys.readouterr().err


def test_a_run_without_a_data_spec_says_how_to_fix_it(tmp_path, capsys):
    run = tmp_path / "old"
    run.mkdir()
    (run / "config.json").write_text(json.dumps({"model": {"name": "fvsbn"}, "data": {"name": "mnist"}}))
    assert main(["sample", str(run)]) == 2
    assert "has no data_spec table" in capsys.readouterr().err
