"""The autoregressive-likelihood benchmark runs end to end with tiny settings and writes its result files.

The benchmark's numbers come from long runs (see the README); this only guards the script against rot."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_ar_benchmark_smoke_run_writes_a_result_per_model(tmp_path):
    command = [sys.executable, str(ROOT / "benchmarks" / "ar_mnist_nll.py"), "--models", "fvsbn,made",
               "--epochs", "1", "--train-limit", "512", "--eval-limit", "100", "--sampling", "2",
               "--made-hidden", "32,32", "--threads", "1", "--device", "cpu", "--precision", "bf16",
               "--out", str(tmp_path)]
    done = subprocess.run(command, capture_output=True, text=True, timeout=300, cwd=ROOT)
    assert done.returncode == 0, done.stderr[-2000:]
    for name in ("fvsbn", "made"):
        result = json.loads((tmp_path / name / "result.json").read_text())
        assert result["epochs"] == 1 and result["test_images"] == 100 and result["precision"] == "bf16"
        # exact NLL in nats: below coin flips (543.4) after one short epoch from the data-mean start
        assert 0 < result["test_nll_nats"] < 784 * math.log(2)
        assert (tmp_path / name / "samples.png").read_bytes()[:4] == b"\x89PNG"
    made = json.loads((tmp_path / "made" / "result.json").read_text())
    # Sampling with reuse vs one full pass per step. The benchmark itself asserts that both give identical
    # samples (a wrong cache fails the run above). Here: the reported numbers are the ones it measured and
    # printed, and reuse is really faster. With these settings it measures 20-40x (2 images, D = 784 steps
    # of a 32-32 MADE with a 784 x 784 direct matrix); 2x leaves room for a noisy, shared CPU, while a
    # sampler that recomputed the full pass at every step would score about 1x.
    rate = made["sampling_images_per_second"]
    assert rate["with_reuse"] > 0 and rate["full_pass_per_step"] > 0
    assert rate["gain"] == pytest.approx(rate["with_reuse"] / rate["full_pass_per_step"], rel=0.03)  # rounding
    assert (f"made: sampling {rate['with_reuse']} images/s with reuse, {rate['full_pass_per_step']} with a full "
            f"pass per step ({rate['gain']:.1f}x)") in done.stdout
    assert rate["gain"] >= 2.0
    assert made["parameters"] == 784 * 32 + 32 + 32 * 32 + 32 + 32 * 784 + 784 + 784 * 784  # direct: D^2
    assert "made: test NLL" in done.stdout and "target <= 88.0" in done.stdout


@pytest.mark.slow
def test_planar_vae_benchmark_smoke_run_writes_its_table_result_and_figure(tmp_path):
    command = [sys.executable, str(ROOT / "benchmarks" / "vae_planar_nll.py"), "--smoke", "--flows", "0,2",
               "--threads", "1", "--device", "cpu", "--out", str(tmp_path)]
    done = subprocess.run(command, capture_output=True, text=True, timeout=300, cwd=ROOT)
    assert done.returncode == 0, done.stderr[-2000:]
    result = json.loads((tmp_path / "result.json").read_text())
    assert [row["K"] for row in result["rows"]] == [0, 2]
    for row in result["rows"]:
        assert row["epochs"] == 1 and row["test_images"] == 500 and row["eval_images"] == 200
        # nats per image, below coin flips (543.4) after one short epoch from the data-mean start
        assert 0 < row["test_nll_L10_nats"] < row["subset_neg_elbo_nats"] + 1.0 < 784 * math.log(2)
    # the flow head adds K (2d + 1) outputs on the last hidden layer (1024 wide, d = 32)
    assert result["rows"][1]["parameters"] - result["rows"][0]["parameters"] == (1024 + 1) * 2 * 65
    assert result["paper_table2_nats"]["80"] == 85.1
    assert "-L_10 (200)" in done.stdout and "<= 89.9" in done.stdout
    assert (tmp_path / "bound_vs_flow_length.png").read_bytes()[:4] == b"\x89PNG"


@pytest.mark.slow
def test_planar_vae_benchmark_plans_the_budget_once_trains_rows_apart_and_reports_them_together(tmp_path):
    script = [sys.executable, str(ROOT / "benchmarks" / "vae_planar_nll.py")]
    tiny = ["--minutes", "0.01", "--train-limit", "512", "--test-limit", "100", "--eval-k", "4", "--eval-limit", "50",
            "--hidden", "32", "32", "--latent", "4", "--threads", "1", "--device", "cpu", "--out", str(tmp_path)]

    def run(*extra):
        return subprocess.run([*script, *extra, *tiny], capture_output=True, text=True, timeout=300, cwd=ROOT)

    assert run("--plan", "--flows", "0,2").returncode == 0
    plan = json.loads((tmp_path / "plan.json").read_text())
    assert set(plan["epochs"]) == {"0", "2"} and min(plan["epochs"].values()) >= 1 and plan["threads"] == 1
    again = run("--plan", "--flows", "0,2")  # a plan is not replaced without --overwrite
    assert again.returncode != 0 and "--overwrite" in again.stderr and "Traceback" not in again.stderr
    early = run("--report", "--flows", "0,2")
    assert early.returncode != 0 and "no row for K = 0, 2" in early.stderr and "Traceback" not in early.stderr
    for k in (0, 2):
        done = run("--flows", str(k))
        assert done.returncode == 0, done.stderr[-2000:]
        assert f"training {plan['epochs'][str(k)]} epochs (from plan.json, no time limit)" in done.stdout
    other_budget = subprocess.run([*script, "--flows", "2", *tiny, "--minutes", "1"], capture_output=True, text=True,
                                  timeout=300, cwd=ROOT)
    assert other_budget.returncode != 0 and "plans 0.01 min" in other_budget.stderr
    reported = run("--report", "--flows", "0,2")
    assert reported.returncode == 0, reported.stderr[-2000:]
    result = json.loads((tmp_path / "result.json").read_text())
    rows = {row["K"]: row for row in result["rows"]}
    assert all(rows[k]["epochs"] == plan["epochs"][str(k)] and rows[k]["budget_from_plan"] for k in (0, 2))
    # the paired difference is the mean of the per-image differences that the two runs stored
    per_image = {k: json.loads((tmp_path / f"K{k}" / "test_nll_L4.json").read_text()) for k in (0, 2)}
    assert len(per_image[0]) == 50
    assert math.fsum(per_image[0]) / 50 == pytest.approx(rows[0]["test_nll_L4_nats"], abs=2e-3)
    mean_difference = math.fsum(b - a for a, b in zip(per_image[0], per_image[2], strict=True)) / 50
    assert result["paired_L4_differences"]["K2-K0"]["mean_nats"] == pytest.approx(mean_difference, abs=2e-3)
    assert "paired -L_4 difference K2-K0" in reported.stdout
    assert result["budget_plan"]["epochs"] == plan["epochs"]


@pytest.mark.slow
def test_glow_benchmark_smoke_run_reports_the_full_accounting_and_figures(tmp_path):
    command = [sys.executable, str(ROOT / "benchmarks" / "flow_mnist_bpd.py"), "--minutes", "0.05",
               "--train-limit", "256", "--eval-limit", "64", "--levels", "2", "--steps", "1", "--hidden", "8",
               "--threads", "1", "--device", "cpu", "--out", str(tmp_path)]
    done = subprocess.run(command, capture_output=True, text=True, timeout=300, cwd=ROOT)
    assert done.returncode == 0, done.stderr[-2000:]
    result = json.loads((tmp_path / "result.json").read_text())
    assert result["test_images"] == 64 and result["published_bits_per_dim"] == 1.05
    terms = result["test_accounting_nats"]
    assert terms["D_log_256"] == pytest.approx(784 * math.log(256), abs=0.01)
    # nll = -(base + logit log-det + flow log-det) + D log 256, and bits/dim = nll / (D ln 2)
    total = -(terms["base_log_prob"] + terms["0:Logit"] + terms["1:MultiScale"]) + terms["D_log_256"]
    assert terms["nll"] == pytest.approx(total, abs=0.05)
    assert result["test_bits_per_dim"] == pytest.approx(terms["nll"] / (784 * math.log(2)), abs=1e-3)
    assert 0 < result["test_bits_per_dim"] < 9  # 8 bits/dim of noise plus at most a little
    for name in ("samples_temperature.png", "interpolation.png"):
        assert (tmp_path / name).read_bytes()[:4] == b"\x89PNG"


@pytest.mark.slow
def test_the_residual_flow_mnist_benchmark_names_its_estimator_and_adds_up(tmp_path):
    command = [sys.executable, str(ROOT / "benchmarks" / "flow_mnist_bpd.py"), "--family", "residual_flow",
               "--minutes", "0.03", "--train-limit", "256", "--eval-limit", "32", "--blocks", "1", "--hidden", "8",
               "--threads", "1", "--device", "cpu", "--out", str(tmp_path)]
    done = subprocess.run(command, capture_output=True, text=True, timeout=300, cwd=ROOT)
    assert done.returncode == 0, done.stderr[-2000:]
    result = json.loads((tmp_path / "result.json").read_text())
    assert result["published_bits_per_dim"] == 0.97 and "Russian roulette" in result["log_prob_estimator"]
    terms = result["test_accounting_nats"]
    blocks = [value for key, value in terms.items() if key.endswith(":ResidualBlock")]
    assert len(blocks) == 2  # one block per level, each with its own (estimated) log-determinant
    total = -sum(value for key, value in terms.items() if key not in ("D_log_256", "nll")) + terms["D_log_256"]
    assert terms["nll"] == pytest.approx(total, abs=0.1)
    assert 0 < result["test_bits_per_dim"] < 9


@pytest.mark.slow
def test_normflows_side_by_side_smoke_run_times_and_evaluates_both(tmp_path):
    pytest.importorskip("normflows")
    out = tmp_path / "speed.json"
    command = [sys.executable, str(ROOT / "benchmarks" / "flow_speed_normflows.py"), "--minutes", "0.02",
               "--timing-steps", "2", "--rounds", "1", "--steps", "1", "--hidden", "8", "--train-limit", "256",
               "--eval-limit", "64", "--threads", "1", "--device", "cpu", "--out", str(out)]
    done = subprocess.run(command, capture_output=True, text=True, timeout=300, cwd=ROOT)
    assert done.returncode == 0, done.stderr[-2000:]
    result = json.loads(out.read_text())
    steps = result["seconds_per_step"]
    assert result["speedup_dgmlab_over_normflows"] == pytest.approx(steps["normflows"] / steps["dgmlab"], rel=0.01)
    for name in ("dgmlab", "normflows"):
        assert result[name]["train_steps"] >= 1 and result[name]["train_seconds"] >= 0.02 * 60 * 0.9
        assert 0 < result[name]["test_bits_per_dim"] < 9


@pytest.mark.slow
def test_pythae_side_by_side_smoke_run_times_both_trainers_on_the_same_vae_in_the_same_units(tmp_path):
    pytest.importorskip("pythae")
    out = tmp_path / "vae_pythae.json"
    command = [sys.executable, str(ROOT / "benchmarks" / "peers" / "vae_pythae.py"), "--epochs", "1", "--rounds", "1",
               "--limit", "512", "--threads", "1", "--out", str(out)]
    done = subprocess.run(command, capture_output=True, text=True, timeout=300, cwd=ROOT)
    assert done.returncode == 0, done.stderr[-2000:]
    result = json.loads(out.read_text())
    assert result["examples"] == 512 and result["threads"] == 1 and result["pythae_version"] == "0.1.2"
    # pythae's loss and dgmlab's negative ELBO on the same weights, batch and draw: the same nats per example
    check = result["loss_units_check"]
    assert check["abs_difference"] < 0.01 and check["pythae_loss"] > 500
    medians = {}
    for name in ("dgmlab", "pythae"):
        row = result[name]
        assert row["parameters"] == 853_840  # 784-512-(32 + 32) encoder, 32-512-784 decoder
        (run,) = row["runs"]
        assert len(run["seconds_per_epoch"]) == 1 and run["call_seconds"] >= run["seconds_per_epoch"][0] > 0
        medians[name] = row["median_seconds_per_epoch"]
        assert row["examples_per_second"] == pytest.approx(512 / medians[name], rel=0.01)
        # nats per example summed over the 784 pixels: one epoch (4 steps) from PyTorch's initialisation ends
        # below 784 ln 2 = 543.4 (a decoder that predicts 0.5 everywhere); a per-pixel mean would be below 1
        assert 300 < row["final_train_loss_nats"] < 784 * math.log(2)
    assert abs(result["dgmlab"]["final_train_loss_nats"] - result["pythae"]["final_train_loss_nats"]) < 25
    assert result["speedup_dgmlab_over_pythae"] == pytest.approx(medians["pythae"] / medians["dgmlab"], rel=0.02)
    assert "pythae / dgmlab seconds per epoch" in done.stdout and "torch " in done.stdout


@pytest.mark.slow
def test_gmm_em_benchmark_smoke_run_matches_scikit_learn_and_writes_its_result(tmp_path):
    pytest.importorskip("sklearn")
    out = tmp_path / "gmm.json"
    command = [sys.executable, str(ROOT / "benchmarks" / "gmm_em_speed.py"), "--smoke", "--threads", "1",
               "--out", str(out)]
    done = subprocess.run(command, capture_output=True, text=True, timeout=300, cwd=ROOT)
    assert done.returncode == 0, done.stderr[-2000:]
    result = json.loads(out.read_text())
    assert set(result["seconds_per_iteration"]) == {"sklearn", "dgmlab_float64", "dgmlab_float32"}
    # the same start and the same iterations: float64 lands where scikit-learn does, float32 close to it
    assert abs(result["log_likelihood_difference_from_sklearn"]["dgmlab_float64"]) < 1e-6
    assert abs(result["log_likelihood_difference_from_sklearn"]["dgmlab_float32"]) < 0.05
    assert result["mean_log_likelihood_nats"]["sklearn"] > 0  # a density on [0, 1] grey levels, above 1 per patch
    assert "x scikit-learn's speed" in done.stdout


@pytest.mark.slow
def test_patch_prior_benchmark_smoke_run_writes_its_table_mixtures_and_figures(tmp_path):
    from safetensors.torch import load_file

    command = [sys.executable, str(ROOT / "benchmarks" / "patch_prior_gmm.py"), "--smoke", "--threads", "1",
               "--out", str(tmp_path)]
    done = subprocess.run(command, capture_output=True, text=True, timeout=300, cwd=ROOT)
    assert done.returncode == 0, done.stderr[-2000:]
    rows = {row["K"]: row for row in json.loads((tmp_path / "result.json").read_text())["rows"]}
    assert set(rows) == {1, 4}
    assert rows[1]["iterations"] <= 2  # one Gaussian: EM's first step is the maximum-likelihood fit
    # more components fit the training patches better, from the same seeds
    assert rows[4]["train_log_likelihood_nats"] > rows[1]["train_log_likelihood_nats"]
    saved = load_file(tmp_path / "gmm_K4.safetensors")
    assert saved["covariances"].shape == (4, 64, 64) and float(saved["weights"].sum()) == pytest.approx(1.0)
    for figure in ("log_likelihood_against_K.png", "eigenvectors_K4.png", "power_spectra.png"):
        assert (tmp_path / figure).read_bytes()[:4] == b"\x89PNG"


@pytest.mark.slow
def test_denoising_benchmark_smoke_run_tunes_baselines_on_training_images_and_reports_psnr(tmp_path):
    pytest.importorskip("skimage")
    command = [sys.executable, str(ROOT / "benchmarks" / "denoise_epll.py"), "--smoke", "--threads", "1",
               "--out", str(tmp_path)]
    done = subprocess.run(command, capture_output=True, text=True, timeout=300, cwd=ROOT)
    assert done.returncode == 0, done.stderr[-2000:]
    result = json.loads((tmp_path / "result.json").read_text())
    (row,) = result["rows"]
    assert row["image"] == "camera" and row["sigma"] == 25 and row["shape"] == [48, 48]
    # every method beats the noisy input; the baselines' parameters come from a training photograph
    for method in ("epll", "gaussian", "tv"):
        assert row[f"{method}_psnr_db"] > row["noisy_psnr_db"] + 3.0
    assert result["tuned_on"].startswith("astronaut") and set(result["tuned_parameters"]["25"]) == {"gaussian", "tv"}
    assert (tmp_path / "denoised_sigma25.png").read_bytes()[:4] == b"\x89PNG"
    unknown = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "denoise_epll.py"), "--methods", "epll,magic"],
                             capture_output=True, text=True, timeout=300, cwd=ROOT)
    assert unknown.returncode != 0 and "unknown methods ['magic']" in unknown.stderr


@pytest.mark.slow
def test_inpainting_benchmark_smoke_run_reports_psnr_on_the_missing_pixels(tmp_path):
    pytest.importorskip("skimage")
    command = [sys.executable, str(ROOT / "benchmarks" / "inpaint_epll.py"), "--smoke", "--threads", "1",
               "--out", str(tmp_path)]
    done = subprocess.run(command, capture_output=True, text=True, timeout=300, cwd=ROOT)
    assert done.returncode == 0, done.stderr[-2000:]
    result = json.loads((tmp_path / "result.json").read_text())
    (row,) = result["rows"]
    assert row["image"] == "camera" and row["missing"] == 0.5 and row["shape"] == [40, 40]
    assert 0.4 < row["missing_pixels"] / 1600 < 0.6
    # both fill the holes far better than a black image would (PSNR of zeros on the missing pixels ~ 6-10 dB)
    for method in ("biharmonic", "epll"):
        assert row[f"{method}_missing_psnr_db"] > 25.0
        assert row[f"{method}_psnr_db"] > row[f"{method}_missing_psnr_db"]  # observed pixels are exact or close
    assert result["schedule"]["start"] == "biharmonic" and result["schedule"]["rounds"] == 3
    assert (tmp_path / "inpainted.png").read_bytes()[:4] == b"\x89PNG"
    bad = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "inpaint_epll.py"), "--missing", "1.5"],
                         capture_output=True, text=True, timeout=300, cwd=ROOT)
    assert bad.returncode != 0 and "strictly between 0 and 1" in bad.stderr


@pytest.mark.slow
def test_deep_image_prior_benchmark_smoke_run_tunes_iterations_on_a_training_image_and_reports_psnr(tmp_path):
    pytest.importorskip("skimage")
    import torch
    from safetensors.torch import save_file

    # a two-component patch prior on mean-removed 8x8 patches, for the EPLL side-by-side
    covariances = torch.stack([0.01 * torch.eye(64), 0.001 * torch.eye(64)]).double()
    prior = tmp_path / "prior.safetensors"
    save_file({"weights": torch.tensor([0.5, 0.5]).double(), "means": torch.zeros(2, 64).double(),
               "covariances": covariances}, prior)
    command = [sys.executable, str(ROOT / "benchmarks" / "deep_image_prior.py"), "--smoke", "--threads", "1",
               "--prior", str(prior), "--out", str(tmp_path)]
    done = subprocess.run(command, capture_output=True, text=True, timeout=300, cwd=ROOT)
    assert done.returncode == 0, done.stderr[-2000:]
    result = json.loads((tmp_path / "result.json").read_text())
    (row,) = result["rows"]
    assert row["image"] == "camera" and row["shape"] == [32, 32]
    assert row["noisy_psnr_db"] == pytest.approx(20.2, abs=0.2)  # sigma 25 on the 0..255 scale
    # the iterations come from the training photograph; the oracle peak is the best of the same curve
    assert result["tuned_on"].startswith("astronaut") and result["settings"]["iterations"] == 150
    curve = result["curves"]["camera"]
    assert curve["iterations"] == list(range(10, 151, 10)) and set(result["curves"]) == {"astronaut", "camera"}
    tuned = result["tuned_iterations"]
    assert tuned in curve["iterations"]
    assert row["psnr_db"] == curve["psnr_average_db"][curve["iterations"].index(tuned)]
    assert row["oracle_peak_psnr_db"] == max(curve["psnr_average_db"]) >= row["psnr_db"]
    assert row["final_psnr_db"] == curve["psnr_average_db"][-1]
    assert result["tuning_psnr_db"] == max(result["curves"]["astronaut"]["psnr_average_db"])
    # a few seconds of fitting already denoise; EPLL ran on the same noisy crop
    assert row["psnr_db"] > row["noisy_psnr_db"] + 1.0 and row["seconds"] > 0
    assert row["epll_psnr_db"] > row["noisy_psnr_db"] and result["threads"] == 1
    assert "oracle" in result["oracle"] and "upper bound" in result["oracle"]
    for name in ("psnr_vs_iterations.png", "denoised.png"):
        assert (tmp_path / name).read_bytes()[:4] == b"\x89PNG"


@pytest.mark.slow
def test_codebook_usage_benchmark_smoke_run_measures_every_quantizer_and_size(tmp_path):
    command = [sys.executable, str(ROOT / "benchmarks" / "vq_codebook_usage.py"), "--smoke", "--threads", "1",
               "--out", str(tmp_path)]
    done = subprocess.run(command, capture_output=True, text=True, timeout=300, cwd=ROOT)
    assert done.returncode == 0, done.stderr[-2000:]
    rows = json.loads((tmp_path / "result.json").read_text())["rows"]
    assert [(row["quantizer"], row["K"]) for row in rows] == [("vq", 64), ("vq", 256), ("fsq", 64), ("fsq", 240)]
    for row in rows:
        assert row["usage"] == pytest.approx(row["codes_used"] / row["K"], abs=1e-4)
        assert 1 <= row["perplexity"] <= row["codes_used"] + 1e-6  # exp H is at most the number of codes used
        assert 0 < row["reconstruction"] < 784 * math.log(2) * 1.5
    assert (tmp_path / "codebook_usage.png").read_bytes()[:4] == b"\x89PNG"


def test_train_step_flops_counts_the_vae_step_exactly_and_bounds_it_by_its_own_products(tmp_path):
    """The problem set's VAE (784-512-32, batch 128): the FLOPs of a training step are the matrix products'
    multiply-adds times 2: every layer forward, every weight gradient, and every input gradient but the data's."""
    out = tmp_path / "flops.json"
    command = [sys.executable, str(ROOT / "benchmarks" / "train_step_flops.py"), "--models", "vae_pset",
               "--precisions", "fp32", "--steps", "2", "--rounds", "1", "--peak-size", "256", "--threads", "1",
               "--out", str(out)]
    done = subprocess.run(command, capture_output=True, text=True, timeout=300, cwd=ROOT)
    assert done.returncode == 0, done.stderr[-2000:]
    (row,) = json.loads(out.read_text())["rows"]
    layers = [(784, 512), (512, 64), (32, 512), (512, 784)]  # encoder to mean and log-variance; decoder
    macs = sum(a * b for a, b in layers)
    expected = 2 * 128 * (macs + macs + (macs - 784 * 512))  # forward, weight gradients, input gradients
    assert row["gflop_per_step"] == pytest.approx(expected / 1e9, abs=1e-4)
    assert row["heavy_calls_per_step"] == 4 + 4 + 3 and row["compiled"] is False
    assert 0 < row["fraction_of_limit"] < 1.5 and row["limit_gflops"] > row["achieved_gflops"] * 0.6
    assert row["achieved_gflops"] == pytest.approx(expected / 1e9 / (row["ms_per_step"] / 1e3), rel=0.01)


def test_train_compile_speed_times_the_trainers_eager_and_compiled_steps(tmp_path):
    import torch

    from dgmlab.train import compiler_missing

    out = tmp_path / "compile.json"
    command = [sys.executable, str(ROOT / "benchmarks" / "train_compile_speed.py"), "--models", "ae",
               "--threads", "1", "--steps", "2", "--rounds", "2", "--out", str(out)]
    done = subprocess.run(command, capture_output=True, text=True, timeout=300, cwd=ROOT)
    assert done.returncode == 0, done.stderr[-2000:]
    (row,) = json.loads(out.read_text())["rows"]
    assert row["model"] == "ae" and row["batch"] == 256 and row["threads"] == 1
    assert row["compiled"] is (compiler_missing(torch.device("cpu")) is None)  # compiled, or said why not
    assert len(row["eager_ms_all_rounds"]) == len(row["compiled_ms_all_rounds"]) == 2
    assert row["speedup_eager_over_compiled"] == pytest.approx(
        row["eager_ms_per_step"] / row["compiled_ms_per_step"], rel=0.01)
    assert row["first_call_seconds"] > row["compiled_ms_per_step"] / 1e3  # the first call compiles
    assert "ae 1 thread(s): eager" in done.stdout


def test_batch_size_benchmark_trains_each_factor_for_the_same_time_and_evaluates_it(tmp_path):
    out = tmp_path / "batch.json"
    command = [sys.executable, str(ROOT / "benchmarks" / "batch_size_equal_time.py"), "--configs", "made",
               "--factors", "1,2", "--minutes", "0.03", "--limit", "1000", "--test-limit", "300", "--threads", "1",
               "--out", str(out)]
    done = subprocess.run(command, capture_output=True, text=True, timeout=300, cwd=ROOT)
    assert done.returncode == 0, done.stderr[-2000:]
    small, large = json.loads(out.read_text())["rows"]
    assert (small["batch_size"], large["batch_size"]) == (256, 512)
    assert large["lr"] == pytest.approx(small["lr"] * math.sqrt(2))  # the square-root rule
    assert small["examples_seen"] == small["steps"] * 256 and small["steps"] >= 1 and large["steps"] >= 1
    for row in (small, large):  # exact NLL in nats of binarized digits: below coin flips after some steps
        assert 0 < row["test_loss"] < 784 * math.log(2) and row["loss_units"] == "nats"
