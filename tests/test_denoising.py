"""dgmlab.denoising and ``dgmlab denoise``: image files read and written exactly, every bad file refused with one
clear error, every method restoring a noisy image, the bundled prior being the one of the measured tables, and
no finished result replaced without --overwrite."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import dgmlab.priors as priors
from dgmlab.cli import DENOISE_METHODS, main
from dgmlab.data.images import centre_crop, photograph, photographs, random_patches
from dgmlab.denoising import (
    METHODS,
    TUNED,
    classical_denoisers,
    denoise,
    denoise_file,
    estimate_noise_sigma,
    read_grey_image,
    tuned_parameter,
    write_grey_png,
)
from dgmlab.errors import DgmlabDataError, ImageFileError, RunExistsError
from dgmlab.restoration import adapted_epll, add_noise, epll, psnr

ROOT = Path(__file__).resolve().parents[1]
pytest.importorskip("skimage")


@pytest.fixture(scope="module")
def clean() -> torch.Tensor:
    return centre_crop(photograph("camera"), 48)


@pytest.fixture
def clean_png(tmp_path, clean) -> Path:
    return write_grey_png(clean, tmp_path / "clean.png")


# --- reading and writing ---------------------------------------------------------------------------------------

def test_an_8_bit_png_round_trips_exactly(tmp_path, clean):
    path = write_grey_png(clean, tmp_path / "a.png")
    pixels, bits = read_grey_image(path)
    assert bits == 8 and pixels.dtype == torch.float64 and pixels.shape == clean.shape
    assert torch.equal(pixels, torch.round(clean * 255) / 255)  # camera is 8-bit: exactly the photograph
    assert torch.equal(pixels, clean)


def test_a_16_bit_png_round_trips_and_keeps_its_depth(tmp_path):
    values = torch.linspace(0, 1, 65536, dtype=torch.float64)[torch.randperm(65536)[:40 * 30]].reshape(40, 30)
    path = write_grey_png(values, tmp_path / "deep.png", bit_depth=16)
    with Image.open(path) as image:
        assert image.mode.startswith("I")
    pixels, bits = read_grey_image(path)
    assert bits == 16
    assert (pixels - values).abs().max() < 0.5 / 65535 + 1e-12


def test_grey_images_in_other_modes_read_as_their_grey_levels(tmp_path, clean):
    levels = np.rint(clean.numpy() * 255).astype(np.uint8)
    reference, _ = read_grey_image(write_grey_png(clean, tmp_path / "l.png"))
    rgb = np.repeat(levels[..., None], 3, axis=2)
    Image.fromarray(rgb).save(tmp_path / "rgb.png")
    Image.fromarray(np.dstack([rgb, np.full(levels.shape, 255, np.uint8)])).save(tmp_path / "rgba.png")
    Image.fromarray(levels).convert("P").save(tmp_path / "palette.png")
    Image.fromarray(levels).save(tmp_path / "grey.tif")
    for name in ("rgb.png", "rgba.png", "palette.png", "grey.tif"):
        pixels, bits = read_grey_image(tmp_path / name)
        assert bits == 8 and torch.equal(pixels, reference), name
    Image.fromarray(levels > 128).save(tmp_path / "bilevel.png")
    pixels, _ = read_grey_image(tmp_path / "bilevel.png")
    assert set(pixels.unique().tolist()) == {0.0, 1.0}


@pytest.mark.parametrize("make, message", [
    (lambda p: None, "does not exist"),
    (lambda p: p.mkdir(), "is a folder"),
    (lambda p: p.write_bytes(b""), r"is empty \(0 bytes\)"),
    (lambda p: p.write_text("not an image at all"), "not an image file that Pillow can read"),
    (lambda p: Image.fromarray(np.dstack([np.full((9, 9), v, np.uint8) for v in (10, 20, 30)])).save(p),
     r"is a colour image \(RGB\); denoising takes greyscale images: convert it first.*convert\('L'\)"),
    (lambda p: Image.fromarray(np.dstack([np.full((9, 9), 7, np.uint8)] * 3 + [np.full((9, 9), 100, np.uint8)]))
     .save(p), "has transparent pixels"),
    (lambda p: Image.fromarray(np.ones((9, 9), np.float32)).save(p.with_suffix(".tif")) or
     p.write_bytes(p.with_suffix(".tif").read_bytes()), "floating-point image"),
])
def test_bad_files_are_one_clear_error(tmp_path, make, message):
    path = tmp_path / "input.png"
    make(path)
    with pytest.raises(ImageFileError, match=message):
        read_grey_image(path)


def test_a_truncated_png_is_reported_as_damaged(tmp_path, clean):
    data = write_grey_png(clean, tmp_path / "whole.png").read_bytes()
    (tmp_path / "cut.png").write_bytes(data[: len(data) // 2])
    with pytest.raises(ImageFileError, match="damaged or truncated"):
        read_grey_image(tmp_path / "cut.png")


def test_a_failed_write_leaves_the_earlier_file_intact(tmp_path, clean, monkeypatch):
    path = write_grey_png(clean, tmp_path / "out.png")
    before = path.read_bytes()

    def broken(data_path, data):
        raise OSError("disk full")

    monkeypatch.setattr("dgmlab.checkpoint.atomic_write_bytes", broken)
    with pytest.raises(OSError, match="disk full"):
        write_grey_png(torch.zeros(4, 4), path)
    assert path.read_bytes() == before


# --- the classical denoisers' parameters -----------------------------------------------------------------------

def test_the_tuned_parameters_are_the_benchmarks():
    # the table the CLI uses is the one benchmarks/denoise_epll.py chose on a training photograph
    result = json.loads((ROOT / "benchmarks" / "results" / "denoise_epll_cpu_2026-12-02.json").read_text())
    for method, by_sigma in TUNED.items():
        for sigma, value in by_sigma.items():
            assert result["tuned_parameters"][f"{sigma:g}"][method] == value, (method, sigma)
        assert set(by_sigma.values()) <= set(classical_denoisers(0.1)[method][1])  # on the grid it tunes
    assert set(TUNED) | {"epll", "epll_adapted", "dip", "bm3d"} == set(METHODS) and DENOISE_METHODS == METHODS


def test_the_nearest_tuned_noise_level_on_a_log_scale_is_used():
    assert tuned_parameter("tv", 25) == 0.08
    assert tuned_parameter("tv", 20) == 0.08  # log(25/20) < log(20/15)
    assert tuned_parameter("tv", 17) == 0.04
    assert tuned_parameter("tv", 36) == 0.16  # log(50/36) < log(36/25)
    assert tuned_parameter("tv", 2) == 0.04 and tuned_parameter("tv", 200) == 0.16


def test_the_noise_level_is_estimated_from_the_image():
    clean = centre_crop(photograph("camera"), 128)
    for sigma in (10, 25, 50):
        estimate = estimate_noise_sigma(add_noise(clean, sigma / 255, seed=1))
        assert abs(estimate - sigma) < 0.1 * sigma, (sigma, estimate)


# --- every method restores -------------------------------------------------------------------------------------

@pytest.mark.parametrize("method", [m for m in METHODS if m != "dip"])
def test_every_method_improves_on_the_noisy_image(clean, method):
    if method == "bm3d":
        pytest.importorskip("bm3d")
    noisy = add_noise(clean, 25 / 255, seed=0)
    restored = denoise(noisy, method, 25)
    assert restored.shape == clean.shape and restored.dtype == torch.float64
    assert 0 <= float(restored.min()) and float(restored.max()) <= 1
    assert psnr(restored, clean) > psnr(noisy, clean) + 5  # 20.2 dB noisy; every method gains 6.4 to 12.1 dB here


def test_epll_uses_the_bundled_prior_by_default(clean):
    noisy = add_noise(clean, 25 / 255, seed=0)
    assert torch.equal(denoise(noisy, "epll", 25), epll(noisy, priors.natural_patch_prior(), 25 / 255).image)


def test_adapted_epll_uses_the_bundled_prior_and_beats_plain_epll_on_a_photograph():
    # 96 x 96: 7,921 patches to adapt 200 components to (29.54 against 29.13 dB); on the 48 x 48 crop, 1,681
    # patches, the adaptation overfits and loses 0.38 dB to plain EPLL, as adapted_epll's docstring says
    clean = centre_crop(photograph("camera"), 96)
    noisy = add_noise(clean, 25 / 255, seed=0)
    prior = priors.natural_patch_prior()
    adapted = denoise(noisy, "epll_adapted", 25)
    assert torch.equal(adapted, adapted_epll(noisy, prior, 25 / 255).image)
    assert psnr(adapted, clean) > psnr(epll(noisy, prior, 25 / 255).image, clean) + 0.2


def test_the_deep_image_prior_takes_any_size_and_is_seeded():
    # 40 x 52 is no multiple of 32: mirrored up to 64 x 64 for the network, cropped back
    image = centre_crop(photograph("moon"), 64)[:40, :52]
    noisy = add_noise(image, 25 / 255, seed=0)
    steps = []
    first = denoise(noisy, "dip", 25, iterations=3, seed=5, progress=steps.append)
    again = denoise(noisy, "dip", 25, iterations=3, seed=5)
    other = denoise(noisy, "dip", 25, iterations=3, seed=6)
    assert first.shape == (40, 52) and steps == [1, 2, 3]
    assert torch.equal(first, again) and not torch.equal(first, other)


def test_bad_arguments_to_denoise(clean):
    with pytest.raises(ValueError, match="unknown method 'bm4d'; choose one of epll, epll_adapted, dip, bm3d"):
        denoise(clean, "bm4d", 25)
    with pytest.raises(ValueError, match="sigma must be the noise's standard deviation on the 0..255 scale"):
        denoise(clean, "tv", 0)


# --- the bundled prior -----------------------------------------------------------------------------------------

def test_the_bundled_prior_is_the_measured_one():
    prior = priors.natural_patch_prior()
    assert (prior.num_components, prior.dim) == (200, 64) and prior.means.dtype == torch.float64
    assert math.isclose(float(prior.weights.sum()), 1.0, abs_tol=1e-9)
    # the test patches of benchmarks/patch_prior_gmm.py (seed 0: 300,000 training patches drawn first), scored as
    # in benchmarks/results/patch_prior_gmm_300k_cpu_2026-12-04.json
    generator = torch.Generator().manual_seed(0)
    random_patches(photographs("train"), 300_000, 8, generator=generator)
    test = random_patches(photographs("test"), 20_000, 8, generator=generator)
    result = json.loads((ROOT / "benchmarks" / "results" / "patch_prior_gmm_300k_cpu_2026-12-04.json").read_text())
    (row,) = [row for row in result["rows"] if row["K"] == 200]
    assert abs(float(prior.log_prob(test).mean()) - row["test_log_likelihood_nats"]) < 2e-3


def test_a_damaged_bundled_prior_is_refused(monkeypatch):
    monkeypatch.setattr(priors, "NATURAL_PATCH_PRIOR", (priors.NATURAL_PATCH_PRIOR[0], "0" * 64))
    with pytest.raises(DgmlabDataError, match="the file is damaged; reinstall dgmlab"):
        priors.natural_patch_prior()


# --- denoise_file and the command line -------------------------------------------------------------------------

def test_add_noise_reports_the_psnr_of_the_library_pipeline(tmp_path, clean, clean_png):
    report = denoise_file(clean_png, tmp_path / "out.png", method="epll", sigma_255=25, add_noise=True,
                          noisy_out=tmp_path / "noisy.png", seed=3)
    noisy = add_noise(clean, 25 / 255, seed=3)
    restored = epll(noisy, priors.natural_patch_prior(), 25 / 255).image
    assert report.psnr_db == psnr(restored, clean) and report.psnr_noisy_db == psnr(noisy.clamp(0, 1), clean)
    assert report.psnr_db > report.psnr_noisy_db + 5
    written, _ = read_grey_image(tmp_path / "out.png")
    assert (written - restored).abs().max() <= 0.5 / 255 + 1e-12  # the result, rounded to 8 bits
    noisy_written, _ = read_grey_image(tmp_path / "noisy.png")
    assert (noisy_written - noisy.clamp(0, 1)).abs().max() <= 0.5 / 255 + 1e-12
    assert not report.estimated and "PSNR against the clean image" in report.summary()


def test_a_clean_reference_and_an_estimated_noise_level(tmp_path, clean, clean_png):
    noisy_png = write_grey_png(add_noise(clean, 20 / 255, seed=0), tmp_path / "noisy.png")
    report = denoise_file(noisy_png, tmp_path / "out.png", method="tv", clean=clean_png)
    assert report.estimated and 12 < report.sigma_255 < 28  # a 48 x 48 crop: a rough estimate
    assert "(estimated, 0..255 scale)" in report.summary()
    assert report.psnr_db > report.psnr_noisy_db + 3


def test_a_16_bit_input_gives_a_16_bit_result(tmp_path, clean):
    path = write_grey_png(add_noise(clean, 10 / 255).clamp(0, 1), tmp_path / "deep.png", bit_depth=16)
    report = denoise_file(path, tmp_path / "out.png", method="gaussian", sigma_255=10)
    assert report.bit_depth == 16 and read_grey_image(tmp_path / "out.png")[1] == 16


def test_a_finished_result_is_not_replaced_without_overwrite(tmp_path, clean_png):
    out = tmp_path / "out.png"
    out.write_bytes(b"an earlier result")
    with pytest.raises(RunExistsError, match="exists; choose another --out or pass --overwrite"):
        denoise_file(clean_png, out, method="tv", sigma_255=10)
    assert out.read_bytes() == b"an earlier result"
    denoise_file(clean_png, out, method="tv", sigma_255=10, overwrite=True)
    assert read_grey_image(out)[0].shape == (48, 48)


@pytest.mark.parametrize("kwargs, error, message", [
    ({"out": "result.jpg"}, ImageFileError, r"must be a \.png file"),
    ({"out": "clean.png", "overwrite": True}, ImageFileError, "is an input image; write the result to another file"),
    ({"method": "bm4d"}, ValueError, "unknown method 'bm4d'"),
    ({"add_noise": True, "sigma_255": None}, ValueError, "adding noise needs its level: give --sigma"),
    ({"noisy_out": "n.png"}, ValueError, "--noisy-out writes the image with the noise added: it needs --add-noise"),
    ({"method": "tv", "prior": "p.safetensors"}, ValueError, "--prior is EPLL's patch prior; the tv method takes none"),
    ({"add_noise": True, "clean": "clean.png"}, ValueError, "the image itself is the clean reference"),
    ({"add_noise": True, "noisy_out": "out.png"}, ImageFileError, "--noisy-out and --out are the same file"),
])
def test_bad_combinations_are_refused_before_any_work(tmp_path, clean_png, kwargs, error, message):
    arguments = {"out": "out.png", "method": "tv", "sigma_255": 10.0, **kwargs}
    for key in ("out", "noisy_out", "clean", "prior"):
        if arguments.get(key) is not None:
            arguments[key] = tmp_path / arguments[key]
    with pytest.raises(error, match=message):
        denoise_file(clean_png, **arguments)
    assert not (tmp_path / "out.png").exists()


def test_images_smaller_than_the_method_needs(tmp_path):
    path = write_grey_png(torch.rand(6, 20), tmp_path / "strip.png")
    with pytest.raises(ImageFileError, match="is 6x20 pixels; the epll method needs at least 8x8"):
        denoise_file(path, tmp_path / "out.png", method="epll", sigma_255=10)


def test_the_command_line_denoises_and_reports(tmp_path, clean_png, capsys):
    out = tmp_path / "out.png"
    code = main(["denoise", str(clean_png), "--add-noise", "--sigma", "25", "--method", "nl_means", "--out", str(out)])
    printed = capsys.readouterr().out
    assert code == 0 and out.is_file()
    assert "nl_means at sigma = 25 (given, 0..255 scale) on a 48x48 image" in printed
    assert "PSNR against the clean image: noisy" in printed


@pytest.mark.parametrize("content, message", [
    (b"", "is empty (0 bytes), not an image"),
    (b"GIF89a but not really", "is not an image file that Pillow can read"),
    (None, "is a colour image (RGB)"),
])
def test_the_command_line_refuses_bad_files_on_one_line(tmp_path, capsys, content, message):
    path = tmp_path / "input.png"
    if content is None:
        Image.fromarray(np.dstack([np.full((9, 9), v, np.uint8) for v in (10, 20, 30)])).save(path)
    else:
        path.write_bytes(content)
    assert main(["denoise", str(path), "--out", str(tmp_path / "out.png")]) == 2
    error = capsys.readouterr().err
    assert error.startswith("dgmlab denoise: error: ") and message in error and len(error.strip().splitlines()) == 1
    assert not (tmp_path / "out.png").exists()
