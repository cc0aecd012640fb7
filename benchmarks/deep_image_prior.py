"""Denoising the test photographs with the deep image prior (Ulyanov, Vedaldi & Lempitsky 2018), PSNR by iteration.

    .venv/bin/python benchmarks/deep_image_prior.py                      # 128x128 crops on the CPU, 2 threads
    .venv/bin/python benchmarks/deep_image_prior.py --prior bundled      # and EPLL
    .venv/bin/python benchmarks/deep_image_prior.py --device cuda --crop 0 --iterations 3000   # whole images, GPU
    .venv/bin/python benchmarks/deep_image_prior.py --smoke              # the script end to end in seconds

The noisy images are those of benchmarks/denoise_epll.py: a centre crop of ``--crop`` pixels of each test
photograph (dgmlab.data.images, grey levels in [0, 1]; 0 for the whole image), its sides then rounded down to
a multiple of 2**levels of the network, plus Gaussian noise of ``sigma / 255`` from a fixed seed, not clipped.

The deep image prior (dgmlab.restoration.deep_image_prior) fits a randomly initialised
dgmlab.models.SkipNet (``--channels`` per level, ``--skip-channels`` on every skip, ``--input-channels`` in the
code) to each noisy image by Adam (``--lr``), perturbing the code by ``--input-noise-std`` every step and
averaging the outputs with weight ``--average``, as in the paper's denoising experiments; the widths are
smaller than the paper's 128 at every level, so that the default run fits a two-core CPU. The method has one
free parameter, the number of iterations (early stopping). It is chosen on a crop of a *training* photograph
(``--tune-on``, noise from the seed + 1, as denoise_epll tunes its baselines): the iteration at which the
averaged output's PSNR is highest there. Reported for each test image: the PSNR (dB) of the averaged output at
that iteration; the oracle peak, the best PSNR over all iterations, which is chosen with the clean test image
and so is an upper bound rather than a result; the PSNR after the last iteration; and the seconds. With
``--prior`` (a mixture from benchmarks/patch_prior_gmm.py) EPLL denoises the same noisy crops beside it.

Written to ``--out``: ``result.json`` (the rows, the PSNR curves, the settings, the threads, the command),
``psnr_vs_iterations.png`` (PSNR against iterations for every image, the tuned iteration, EPLL's PSNR) and
``denoised.png`` (clean, noisy and restored crops of the first test image).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch
from arguments import numbers
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from restoration_setup import load_prior

from dgmlab import plots
from dgmlab.data.images import TEST_PHOTOGRAPHS, centre_crop, photograph
from dgmlab.models import SkipNet, count_parameters
from dgmlab.restoration import DeepImagePriorResult, add_noise, deep_image_prior, epll, psnr
from dgmlab.train import resolve_device

# a two-level net on 32x32 crops, a faster step and a shorter average, so that a few seconds still denoise
SMOKE = {"crop": 32, "images": ["camera"], "iterations": 150, "record_every": 10, "channels": [16, 16],
         "input_channels": 8, "lr": 0.02, "average": 0.9}
ORACLE_NOTE = ("oracle_peak: the best PSNR of the averaged output over all recorded iterations, picked with the "
               "clean test image: an upper bound on what early stopping can reach, not a result")


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sigma", type=float, default=25.0, help="noise standard deviation on the 0..255 scale")
    parser.add_argument("--images", type=numbers(str), default=list(TEST_PHOTOGRAPHS))
    parser.add_argument("--crop", type=int, default=128, help="centre crop side of each image (0: whole)")
    parser.add_argument("--tune-on", default="astronaut", help="training photograph the iterations are tuned on")
    parser.add_argument("--tune-crop", type=int, default=None, help="its centre crop (default: --crop)")
    parser.add_argument("--iterations", type=int, default=2000, help="Adam steps per image")
    parser.add_argument("--record-every", type=int, default=25, help="iterations between PSNR measurements")
    parser.add_argument("--channels", type=numbers(int), default=[8, 16, 32, 64, 128],
                        help="SkipNet widths, one per level (the paper: 128,128,128,128,128)")
    parser.add_argument("--skip-channels", type=int, default=4)
    parser.add_argument("--input-channels", type=int, default=32)
    parser.add_argument("--lr", type=float, default=0.01)
    parser.add_argument("--input-noise-std", type=float, default=1 / 30)
    parser.add_argument("--average", type=float, default=0.99)
    parser.add_argument("--prior", type=Path, default=None,
                        help="a mixture saved by benchmarks/patch_prior_gmm.py, or bundled (dgmlab.priors), to "
                             "run EPLL beside")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=Path("runs/deep_image_prior"))
    parser.add_argument("--smoke", action="store_true", help="tiny settings to check the script")
    return parser


def fit(args: argparse.Namespace, noisy: torch.Tensor, clean: torch.Tensor, device: torch.device,
        keep_at: int | None = None) -> tuple[DeepImagePriorResult, torch.Tensor | None]:
    """The deep image prior on one noisy image from the seeded network; with ``keep_at`` also the averaged
    output after that many iterations."""
    torch.manual_seed(args.seed)
    net = SkipNet(args.input_channels, 1, args.channels, args.skip_channels)
    kept = {}

    def keep(iteration: int, output: torch.Tensor, average: torch.Tensor) -> None:
        if iteration == keep_at:
            kept["image"] = average.clamp(0, 1).to("cpu", clean.dtype)

    result = deep_image_prior(noisy, iterations=args.iterations, lr=args.lr, input_channels=args.input_channels,
                              input_noise_std=args.input_noise_std, average=args.average, clean=clean,
                              record_every=args.record_every, seed=args.seed, device=device, net=net,
                              callback=keep if keep_at is not None else None)
    return result, kept.get("image")


def curve(result: DeepImagePriorResult) -> dict[str, list[float]]:
    return {"iterations": result.iterations, "psnr_db": [round(value, 3) for value in result.psnr],
            "psnr_average_db": [round(value, 3) for value in result.psnr_average],
            "loss_mse": [round(value, 6) for value in result.loss]}


def psnr_figure(curves: dict[str, dict[str, list[float]]], tuned_on: str, tuned_iteration: int,
                epll_psnr: dict[str, float], noisy_psnr: float, title: str) -> Figure:
    """PSNR (dB) against iterations: the averaged output thick, the raw output thin, one colour per image; the
    tuned iteration as a vertical line, EPLL's PSNR as dashed horizontal lines, the noisy inputs' mean PSNR as a
    dotted one (the axis starts just below it: the first steps, far below, are cut off)."""
    figure = Figure(figsize=(8.0, 5.0), layout="constrained")
    FigureCanvasAgg(figure)
    ax = figure.add_subplot()
    # matplotlib's colour cycle, the test images first and the tuning image last
    order = [*[name for name in curves if name != tuned_on], tuned_on]
    colours = {name: f"C{index % 10}" for index, name in enumerate(order)}
    for name, values in curves.items():
        colour, tuning = colours[name], name == tuned_on
        label = f"{name} (training image: tunes the iterations)" if tuning else name
        ax.plot(values["iterations"], values["psnr_average_db"], color=colour, linewidth=2.2,
                linestyle=":" if tuning else "-", label=f"{label}, averaged output")
        ax.plot(values["iterations"], values["psnr_db"], color=colour, linewidth=0.8, alpha=0.5,
                linestyle=":" if tuning else "-")
        if name in epll_psnr:
            ax.axhline(epll_psnr[name], color=colour, linestyle="--", linewidth=1.0)
    ax.axvline(tuned_iteration, color="black", linewidth=1.0,
               label=f"tuned on {tuned_on}: {tuned_iteration} iterations")
    ax.axhline(noisy_psnr, color="grey", linestyle=":", linewidth=1.0, label=f"noisy input: {noisy_psnr:.2f} dB")
    ax.set_ylim(bottom=noisy_psnr - 1.0)
    if epll_psnr:
        ax.plot([], [], color="grey", linestyle="--", linewidth=1.0, label="EPLL (dashed, same colour)")
    ax.plot([], [], color="grey", linewidth=0.8, alpha=0.5, label="raw output (thin)")
    ax.set_xlabel("Adam iterations")
    ax.set_ylabel("PSNR against the clean image (dB)")
    ax.set_title(title, fontsize=9)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="lower right")
    return figure


def main() -> None:
    args = _parser().parse_args()
    if args.smoke:
        for key, value in SMOKE.items():
            setattr(args, key, value)
    torch.set_num_threads(args.threads)
    device = resolve_device(args.device)
    args.out.mkdir(parents=True, exist_ok=True)
    sigma = args.sigma / 255
    multiple = 2 ** len(args.channels)
    tune_crop = args.crop if args.tune_crop is None else args.tune_crop
    prior, prior_source = load_prior(args) if args.prior is not None else (None, None)

    # the number of iterations, from a training photograph: the best PSNR of the averaged output there
    tune_clean = centre_crop(photograph(args.tune_on), tune_crop, multiple=multiple)
    tune_noisy = add_noise(tune_clean, sigma, seed=args.seed + 1)
    tuning, _ = fit(args, tune_noisy, tune_clean, device)
    best = max(range(len(tuning.iterations)), key=tuning.psnr_average.__getitem__)
    tuned_iteration = tuning.iterations[best]
    print(f"tuned on {args.tune_on} {list(tune_clean.shape)}: best averaged PSNR {tuning.psnr_average[best]:.2f} dB "
          f"after {tuned_iteration} of {args.iterations} iterations ({tuning.seconds:.1f} s)", flush=True)
    curves = {args.tune_on: curve(tuning)}

    rows, epll_psnr, shown = [], {}, {}
    for name in args.images:
        clean = centre_crop(photograph(name), args.crop, multiple=multiple)
        noisy = add_noise(clean, sigma, seed=args.seed)
        result, restored = fit(args, noisy, clean, device, keep_at=tuned_iteration)
        at = result.iterations.index(tuned_iteration)
        peak = max(range(len(result.iterations)), key=result.psnr_average.__getitem__)
        row = {"image": name, "shape": list(clean.shape), "noisy_psnr_db": round(psnr(noisy, clean), 3),
               "psnr_db": round(result.psnr_average[at], 3), "psnr_raw_output_db": round(result.psnr[at], 3),
               "oracle_peak_psnr_db": round(result.psnr_average[peak], 3),
               "oracle_peak_iteration": result.iterations[peak], "oracle_peak_raw_output_psnr_db": round(
                   max(result.psnr), 3), "final_psnr_db": round(result.psnr_average[-1], 3),
               "seconds": round(result.seconds, 2),
               "seconds_per_iteration": round(result.seconds / args.iterations, 4)}
        curves[name] = curve(result)
        # each panel with the PSNR of its title (the noisy image's before it is clipped for display)
        panels = {"clean": (clean, None), "noisy": (noisy.clamp(0, 1), row["noisy_psnr_db"]),
                  f"DIP ({tuned_iteration} it.)": (restored, row["psnr_db"])}
        if prior is not None:
            started = time.perf_counter()
            denoised = epll(noisy, prior, sigma).image
            row["epll_seconds"] = round(time.perf_counter() - started, 2)
            row["epll_psnr_db"] = epll_psnr[name] = round(psnr(denoised, clean), 3)
            panels["EPLL"] = (denoised, row["epll_psnr_db"])
        rows.append(row)
        print(json.dumps(row), flush=True)
        if not shown:
            shown = panels

    means = {key: round(sum(row[key] for row in rows) / len(rows), 3)
             for key in ("noisy_psnr_db", "psnr_db", "oracle_peak_psnr_db", "final_psnr_db", "epll_psnr_db")
             if all(key in row for row in rows)}
    settings = {key: getattr(args, key) for key in ("sigma", "crop", "iterations", "record_every", "channels",
                                                     "skip_channels", "input_channels", "lr", "input_noise_std",
                                                     "average", "seed")}
    result = {"benchmark": "deep_image_prior", "images": args.images,
              "noise": f"Gaussian, sigma {args.sigma:g}/255, seed {args.seed} (tuning image: seed {args.seed + 1}), "
                       f"not clipped",
              "tuned_on": f"{args.tune_on}, centre crop {tune_crop}, shape {list(tune_clean.shape)}",
              "tuned_iterations": tuned_iteration, "tuning_psnr_db": round(tuning.psnr_average[best], 3),
              "reported": "psnr_db: the averaged output's PSNR after the tuned iterations", "oracle": ORACLE_NOTE,
              "mean_psnr_db": means, "rows": rows, "curves": curves, "settings": settings,
              "network": f"SkipNet({args.input_channels}, 1, {args.channels}, skip_channels={args.skip_channels})",
              "parameters": count_parameters(SkipNet(args.input_channels, 1, args.channels, args.skip_channels)),
              "prior": prior_source, "device": str(device),
              "threads": args.threads, "tuning_seconds": round(tuning.seconds, 2),
              "total_seconds": round(tuning.seconds + sum(row["seconds"] for row in rows), 2),
              "command": " ".join(sys.argv)}
    (args.out / "result.json").write_text(json.dumps(result, indent=2) + "\n")

    summary = ", ".join(f"{row['image']} {row['psnr_db']:.2f}" for row in rows)
    oracle = ", ".join(f"{row['image']} {row['oracle_peak_psnr_db']:.2f}" for row in rows)
    crops = f"{args.crop}x{args.crop} crops" if args.crop > 0 else "whole images"
    title = (f"Deep image prior, sigma = {args.sigma:g}, {crops}: PSNR (dB) after the "
             f"{tuned_iteration} iterations tuned on {args.tune_on}: {summary}\noracle peak (uses the clean image): "
             f"{oracle}" + ("; EPLL: " + ", ".join(f"{n} {p:.2f}" for n, p in epll_psnr.items()) if epll_psnr else ""))
    plots.save_figure(psnr_figure(curves, args.tune_on, tuned_iteration, epll_psnr, means["noisy_psnr_db"], title),
                      args.out / "psnr_vs_iterations.png")
    labels = [name if value is None else f"{name} {value:.2f} dB" for name, (_, value) in shown.items()]
    plots.save_figure(plots.image_grid(torch.stack([image.float() for image, _ in shown.values()]), nrow=len(shown),
                                       title=f"{args.images[0]}, sigma = {args.sigma:g}: " + " | ".join(labels)),
                      args.out / "denoised.png")
    print(f"mean PSNR (dB) over {', '.join(args.images)}: " + ", ".join(f"{k} {v:.2f}" for k, v in means.items()))
    print(f"{result['total_seconds']:.1f} s in all; wrote {args.out / 'result.json'}")


if __name__ == "__main__":
    main()
