"""The dgmlab command line: help, a tiny end-to-end train/eval/sample/resume, and every user error."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from dgmlab.cli import build_parser, main
from dgmlab.config import ConfigError, apply_overrides, build_objective, build_settings, load_config
from dgmlab.errors import ModelConfigError

TINY = """
name = "tiny"
[model]
name = "vae"
hidden_dims = [32, 4]
likelihood = "bernoulli"
[data]
name = "mnist"
view = "dynamic"
batch_size = 100
limit = 600
test_limit = 200
[objective]
name = "elbo"
kl = "analytic"
[train]
epochs = 2
lr = 1e-3
progress = false
"""


@pytest.fixture
def tiny_config(tmp_path: Path) -> Path:
    path = tmp_path / "tiny.toml"
    path.write_text(TINY)
    return path


def run_main(args, capsys):
    code = main([str(a) for a in args])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def test_help_lists_every_subcommand():
    # every command with a handler has a parser (dgmlab potentials once had a handler and no parser)
    from dgmlab.cli import COMMANDS

    text = build_parser().format_help()
    assert {"train", "eval", "sample", "pset1", "potentials", "residual-estimators", "toy2d"} <= set(COMMANDS)
    for command in COMMANDS:
        assert command in text
        sub = subprocess.run([sys.executable, "-m", "dgmlab.cli", command, "--help"], capture_output=True, text=True,
                             check=True)
        assert "usage: dgmlab " + command in sub.stdout


def test_potentials_arguments_reach_run_potentials(tmp_path, monkeypatch, capsys):
    import dgmlab.experiments.potentials as potentials

    calls = []
    monkeypatch.setattr(potentials, "run_potentials", lambda out, **kwargs: calls.append((out, kwargs)) or out)
    assert main(["potentials", "--quick", "--out", str(tmp_path / "p"), "--seed", "3", "--workers", "0",
                 "--overwrite", "--no-progress"]) == 0
    assert calls == [(tmp_path / "p", {"quick": True, "config": "planar_potentials", "seed": 3, "overwrite": True,
                                       "progress": False, "workers": 0})]
    assert f"results written to {tmp_path / 'p'}" in capsys.readouterr().out


def test_residual_estimators_arguments_reach_their_run(tmp_path, monkeypatch, capsys):
    import dgmlab.experiments.residual_estimators as residual

    calls = []
    monkeypatch.setattr(residual, "run_residual_estimators", lambda out, **kwargs: calls.append((out, kwargs)) or out)
    assert main(["residual-estimators", "--quick", "--out", str(tmp_path / "r"), "--seed", "5", "--overwrite"]) == 0
    assert calls == [(tmp_path / "r", {"quick": True, "seed": 5, "overwrite": True})]
    assert main(["residual-estimators"]) == 0
    assert calls[-1] == (Path("runs/residual_estimators"), {"quick": False, "seed": 0, "overwrite": False})
    assert f"results written to {tmp_path / 'r'}" in capsys.readouterr().out


def test_toy2d_arguments_reach_run_toy2d(tmp_path, monkeypatch, capsys):
    import dgmlab.experiments.toy2d as toy2d

    calls = []
    monkeypatch.setattr(toy2d, "run_toy2d", lambda out, **kwargs: calls.append((out, kwargs)) or out)
    assert main(["toy2d", "--quick", "--out", str(tmp_path / "t"), "--seed", "2", "--workers", "0",
                 "--overwrite"]) == 0
    assert calls == [(tmp_path / "t", {"quick": True, "seed": 2, "overwrite": True, "workers": 0})]
    assert f"results written to {tmp_path / 't'}" in capsys.readouterr().out


def test_exact_logdet_of_a_model_without_an_estimate_is_one_clear_line(tiny_config, tmp_path, capsys):
    run = tmp_path / "run"
    assert run_main(["train", "--config", tiny_config, "--out", run, "--epochs", "1", "--no-progress"], capsys)[0] == 0
    code, _, err = run_main(["eval", run, "--exact-logdet"], capsys)
    assert code == 2
    assert "has no estimate to replace: drop --exact-logdet" in err and len(err.strip().splitlines()) == 1
    with pytest.raises(SystemExit):
        main(["eval", str(run), "--exact-logdet", "--no-exact-logdet"])
    assert "not allowed with argument" in capsys.readouterr().err


def test_train_eval_sample_and_resume(tiny_config, tmp_path, capsys):
    run = tmp_path / "run"
    code, out, err = run_main(["train", "--config", tiny_config, "--out", run, "--epochs", "1"], capsys)
    assert code == 0, err
    assert (run / "checkpoint" / "state.safetensors").exists()
    for figure in ("loss_curves.png", "reconstructions.png", "latent_manifold.png", "samples.png"):
        assert (run / figure).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n", figure
    assert json.loads((run / "config.json").read_text())["train"]["epochs"] == 1

    code, out, err = run_main(["train", "--resume", run, "--epochs", "2", "--precision", "bf16"], capsys)
    assert code == 0, err
    epochs = [json.loads(line)["epoch"] for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert epochs == [1, 2]
    assert json.loads((run / "config.json").read_text())["train"]["precision"] == "bf16"  # epoch 2 in bf16

    code, out, err = run_main(["eval", run, "--iw-samples", "20"], capsys)
    assert code == 0, err
    results = json.loads(out)
    assert results["test_nll_iw20_nats"] <= results["test_neg_elbo_nats"] + 1e-6  # -L_20 <= -L_1 (ELBO)
    assert 100 < results["test_nll_iw20_nats"] < 600
    assert (run / "eval.json").exists()

    code, out, err = run_main(["sample", run, "--n", "16", "--out", tmp_path / "s.png"], capsys)
    assert code == 0, err
    assert (tmp_path / "s.png").read_bytes()[:4] == b"\x89PNG"


def test_set_overrides_and_flags_reach_the_config(tiny_config, tmp_path, capsys):
    run = tmp_path / "run"
    code, _, err = run_main(["train", "--config", tiny_config, "--out", run, "--epochs", "1", "--lr", "0.002",
                             "--batch-size", "50", "--seed", "4", "--set", "objective.kl=\"monte_carlo\"",
                             "--precision", "bf16"], capsys)
    assert code == 0, err
    config = json.loads((run / "config.json").read_text())
    assert config["train"]["lr"] == 0.002 and config["train"]["seed"] == 4
    assert config["train"]["precision"] == "bf16"
    assert config["data"]["batch_size"] == 50 and config["objective"]["kl"] == "monte_carlo"


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["train", "--config", "missing.toml"], "config file missing.toml does not exist"),
        (["train", "--config", "{tiny}", "--set", "model.name=\"gan\""], "unknown model 'gan'; choose one of"),
        (["train", "--config", "{tiny}", "--set", "objective.name=\"wgan\""], "choose one of elbo, nll, pset_mse_kl"),
        (["train", "--config", "{tiny}", "--set", "objective.kl=\"exact\""], "analytic, monte_carlo"),
        (["train", "--config", "{tiny}", "--set", "data.name=\"cifar\""], "choose one of mnist, torus"),
        (["train", "--config", "{tiny}", "--set", "data.view=\"colour\""], "grey"),
        (["train", "--config", "{tiny}", "--set", "data.shape=\"square\""], "data.shape must be flat"),
        (["train", "--config", "{tiny}", "--set", "data.labels=1"], "data.labels must be true or false"),
        (["train", "--config", "{tiny}", "--set", "objective.name=\"nll\"", "--set", "objective.conditional=1"],
         "objective.conditional must be true or false"),
        (["train", "--config", "{tiny}", "--set", "train.lr=-1"], "positive"),
        (["train", "--config", "{tiny}", "--set", "train.epochs=0"], "epochs must be a positive integer"),
        (["train", "--config", "{tiny}", "--set", "train.precision=\"fp16\""], "precision must be one of fp32, bf16"),
        (["train", "--config", "{tiny}", "--set", "train.learning_rate=1"], "unknown key(s): learning_rate"),
        (["train", "--config", "{tiny}", "--set", "nonsense"], "table.key=value"),
        (["train", "--config", "{tiny}", "--set", "model.hidden_dims=[32, 3]"], "must be even"),
        (["train", "--resume", "{tmp}/nowhere"], "not a run directory"),
        (["eval", "{tmp}/nowhere"], "not a run directory"),
        (["sample", "{tmp}/nowhere"], "not a run directory"),
    ],
)
def test_user_errors_are_one_clear_line(args, message, tiny_config, tmp_path, capsys):
    args = [a.replace("{tiny}", str(tiny_config)).replace("{tmp}", str(tmp_path)) for a in args]
    code, _, err = run_main(args, capsys)
    assert code == 2
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert message in lines[0]
    assert "Traceback" not in err


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["train", "--config", "x.toml", "--lr", "-0.1"], "must be a positive number"),
        (["train", "--config", "x.toml", "--epochs", "0"], "must be a positive integer"),
        (["train", "--config", "x.toml", "--device", "tpu"], "invalid choice: 'tpu'"),
        (["train"], "one of the arguments --config --resume is required"),
        (["fly"], "invalid choice: 'fly'"),
    ],
)
def test_argument_errors_name_the_valid_values(args, message, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(args)
    assert exit_info.value.code == 2
    assert message in capsys.readouterr().err


def test_a_config_that_is_not_toml(tmp_path, capsys):
    bad = tmp_path / "bad.toml"
    bad.write_text("[model\nname=")
    code, _, err = run_main(["train", "--config", bad], capsys)
    assert code == 2 and "is not valid TOML" in err


def test_corrupt_checkpoint_is_reported(tiny_config, tmp_path, capsys):
    run = tmp_path / "run"
    assert run_main(["train", "--config", tiny_config, "--out", run, "--epochs", "1"], capsys)[0] == 0
    (run / "checkpoint" / "state.safetensors").write_bytes(b"garbage")
    code, _, err = run_main(["eval", run], capsys)
    assert code == 2 and "unreadable" in err


def test_config_helpers(tiny_config):
    config = load_config(tiny_config)
    config = apply_overrides(config, ["train.lr=3e-4", "model.likelihood=gaussian"])
    assert config["train"]["lr"] == 3e-4 and config["model"]["likelihood"] == "gaussian"
    assert build_settings(config).lr == 3e-4
    with pytest.raises(ConfigError, match="table one of model, data, objective, train"):
        apply_overrides(config, ["optimizer.lr=1"])
    objective = build_objective({"objective": {"name": "pset_mse_kl", "coeff": 1e-3}})
    from dgmlab.models import VAE

    out = objective(VAE(784, [8, 4]), (torch.rand(3, 784),))
    assert set(out.terms) == {"mse", "kl"}


def test_shipped_configs_are_valid(tmp_path):
    from dgmlab.config import build_model_from_config, bundled_config_command, bundled_configs, load_bundled_config

    assert len(bundled_configs()) >= 14
    for name in bundled_configs():
        if bundled_config_command(name) is not None:  # an experiment's settings (tests/test_potentials.py)
            continue
        config = load_bundled_config(name)
        build_settings(config)
        build_objective(config)
        input_dim = 3 if config.get("data", {}).get("name") == "torus" else 784
        if "vqvae_run" in config["model"]:  # a second stage: it needs the first stage's run (tests/test_vqvae.py)
            config["model"]["vqvae_run"] = str(tmp_path / "no_run")
            with pytest.raises(ModelConfigError, match="train the VQ-VAE first"):
                build_model_from_config(config, input_dim=input_dim)
            continue
        build_model_from_config(config, input_dim=input_dim)


TINY_MADE = """
name = "tiny_made"
[model]
name = "made"
hidden_dims = [64]
num_masks = 2
order = "random"
[data]
name = "mnist"
view = "dynamic"
batch_size = 100
limit = 300
test_limit = 100
[objective]
name = "nll"
[train]
epochs = 1
lr = 1e-3
progress = false
"""

TINY_CONDITIONAL_PIXELCNN = """
name = "tiny_pixelcnn"
[model]
name = "pixelcnn"
channels = 8
num_layers = 2
num_classes = 10
[data]
name = "mnist"
view = "threshold"
shape = "image"
labels = true
batch_size = 50
limit = 100
test_limit = 50
[objective]
name = "nll"
conditional = true
[train]
epochs = 1
lr = 2e-3
progress = false
"""


def test_density_models_train_evaluate_and_sample(tmp_path, capsys):
    made_config = tmp_path / "made.toml"
    made_config.write_text(TINY_MADE)
    run = tmp_path / "made"
    code, _, err = run_main(["train", "--config", made_config, "--out", run], capsys)
    assert code == 0, err
    for figure in ("loss_curves.png", "samples.png"):
        assert (run / figure).read_bytes()[:4] == b"\x89PNG", figure
    assert not (run / "pixel_nll.png").exists()  # a mixture over 2 orderings has no per-pixel decomposition
    code, out, err = run_main(["eval", run], capsys)
    assert code == 0, err
    nll = json.loads(out)["test"]["nll"]
    assert 100 < nll < 784 * math.log(2) + 1  # better than coin flips after one epoch, in nats
    code, _, err = run_main(["sample", run, "--n", "4", "--class", "3"], capsys)
    assert code == 2 and "is not class-conditional; drop --class" in err

    pixel_config = tmp_path / "pixelcnn.toml"
    pixel_config.write_text(TINY_CONDITIONAL_PIXELCNN)
    run = tmp_path / "pixelcnn"
    code, _, err = run_main(["train", "--config", pixel_config, "--out", run], capsys)
    assert code == 0, err
    assert (run / "completions.png").read_bytes()[:4] == b"\x89PNG"
    code, out, err = run_main(["sample", run, "--n", "4", "--class", "7", "--out", tmp_path / "sevens.png"], capsys)
    assert code == 0, err
    assert (tmp_path / "sevens.png").read_bytes()[:4] == b"\x89PNG"
    code, _, err = run_main(["sample", run, "--n", "4", "--class", "12"], capsys)
    assert code == 2 and "--class must be in 0..9" in err


def test_conditional_objective_without_labels_is_a_clear_error(tmp_path, capsys):
    config = tmp_path / "pixelcnn.toml"
    config.write_text(TINY_CONDITIONAL_PIXELCNN.replace("labels = true", "labels = false"))
    code, _, err = run_main(["train", "--config", config, "--out", tmp_path / "run"], capsys)
    assert code == 2
    assert "needs the labels in the batches: set data.labels = true" in err


def test_init_output_bias_key_starts_the_model_at_the_data_mean(tmp_path, capsys):
    from dgmlab.experiments.runs import prepare

    config = load_config_text(tmp_path, TINY_MADE.replace('order = "random"', 'direct = true\ninit_output_bias = true'))
    model, _, data = prepare(config)
    examples = data.train.tensors[0]
    mean = examples.reshape(len(examples), -1).mean(0)
    assert torch.allclose(torch.sigmoid(model.layers[-1].bias), mean.clamp(1e-3, 1 - 1e-3), atol=1e-5)
    untouched, _, _ = prepare(load_config_text(tmp_path, TINY_MADE))
    assert torch.count_nonzero(torch.sigmoid(untouched.layers[-1].bias) - mean) > 700  # default init differs
    # a model without an output bias to set: one clear error, before any training
    code, _, err = run_main(["train", "--config", "torus_polar", "--out", tmp_path / "torus",
                             "--set", "model.init_output_bias=true"], capsys)
    assert code == 2
    assert "model 'point_vae' has no option init_output_bias; its options are: hidden_dims, decoder" in err
    assert not (tmp_path / "torus").exists()


def load_config_text(tmp_path: Path, text: str) -> dict:
    path = tmp_path / "config.toml"
    path.write_text(text)
    return load_config(path)


def test_cli_choices_match_the_trainer():
    # the CLI keeps its own copies so that --help needs no torch import; they must not drift
    from dgmlab.cli import DEVICE_CHOICES, PRECISION_CHOICES
    from dgmlab.train import DEVICES, PRECISIONS

    assert PRECISION_CHOICES == PRECISIONS and DEVICE_CHOICES == DEVICES


def test_output_piped_into_a_reader_that_stops_early_is_no_error(tmp_path):
    # the reader end is closed before the program (still importing) prints: its first write meets EPIPE
    process = subprocess.Popen([sys.executable, "-m", "dgmlab.cli", "configs"], cwd=tmp_path,
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    process.stdout.close()
    stderr = process.stderr.read().decode()
    assert process.wait(timeout=120) == 0, stderr
    assert "Traceback" not in stderr and "Broken pipe" not in stderr, stderr


def test_compile_flag_reaches_the_config_and_resume_and_warns_where_it_cannot_compile(tiny_config, tmp_path,
                                                                                      capsys, monkeypatch):
    import dgmlab.train

    monkeypatch.setattr(dgmlab.train.shutil, "which", lambda name: None)  # no C++ compiler: the eager fallback
    monkeypatch.delenv("CXX", raising=False)
    run = tmp_path / "run"
    with pytest.warns(RuntimeWarning, match="without torch.compile: no C\\+\\+ compiler"):
        code, _, err = run_main(["train", "--config", tiny_config, "--out", run, "--epochs", "1", "--compile"],
                                capsys)
    assert code == 0, err
    assert json.loads((run / "config.json").read_text())["train"]["compile"] is True
    code, _, err = run_main(["train", "--resume", run, "--epochs", "2"], capsys)  # the run's own setting
    assert code == 0, err
    assert json.loads((run / "config.json").read_text())["train"]["compile"] is True
