"""Denoising the test photographs: EPLL with the Gaussian-mixture patch prior against the denoisers people use.

    .venv/bin/python benchmarks/denoise_epll.py --prior bundled          # sigma 15, 25, 50
    .venv/bin/python benchmarks/denoise_epll.py --smoke          # the script end to end in seconds

Every method sees the same noisy images: each test photograph (dgmlab.data.images, grey levels in [0, 1]; a
centre crop of ``--crop`` pixels, 0 for the whole image) plus Gaussian noise of ``sigma / 255`` from a fixed
seed, not clipped. The methods and where they come from:

* EPLL (Zoran & Weiss 2011): dgmlab.restoration.epll with the prior in ``--prior`` (fitted by
  benchmarks/patch_prior_gmm.py on the training photographs, or ``bundled``; without ``--prior`` a mixture of
  ``--components`` is fitted here first) and the paper's schedule, lambda = 64 / sigma^2,
  beta = (1, 4, 8, 16, 32, 64) / sigma^2, or ``--betas`` (multiples of 1 / sigma^2);
* EPLL with an image-adapted prior (``epll_adapted``, dgmlab.restoration.adapted_epll): the same prior first
  re-estimated from the noisy image's own patches by EM with the noise modelled (``--adapt-iterations``
  iterations, relevance ``--adapt-relevance`` towards the prior), then EPLL with the same schedule, and again
  with the prior adapted to that restoration's patches (error variance ``--adapt-second-pass`` x sigma^2; 0: one
  pass);
* Gaussian filtering (scipy.ndimage.gaussian_filter) and Wiener filtering (scipy.signal.wiener);
* total variation (skimage.restoration.denoise_tv_chambolle), wavelet shrinkage (denoise_wavelet, BayesShrink,
  the noise level given), non-local means (denoise_nl_means, the noise level given);
* BM3D (the bm3d package, the noise level given).

The classical methods have one free parameter each (the filter width, the window, the TV weight, the
wavelet, NLM's h); it is chosen per sigma by the best PSNR on a crop of one *training* photograph
(``--tune-on``), never on the test images. EPLL's and BM3D's settings are their authors' defaults. Reported:
the PSNR (dB) of each method on each test image and their mean, and seconds per image, as ``result.json``
and a table; with sigma = 25 among the sigmas, ``denoised_sigma25.png`` shows the first image clean, noisy and
restored by each method at that noise.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from pathlib import Path

import numpy as np
import torch
from arguments import numbers
from restoration_setup import load_prior

from dgmlab import plots
from dgmlab.data.images import TEST_PHOTOGRAPHS, TRAIN_PHOTOGRAPHS, centre_crop, photograph
from dgmlab.denoising import classical_denoisers
from dgmlab.restoration import PAPER_BETAS, adapted_epll, add_noise, epll, psnr

SMOKE = {"sigmas": [25], "crop": 48, "images": ["camera"], "components": 4, "train_patches": 4000,
         "tune_crop": 48, "methods": ["epll", "epll_adapted", "gaussian", "tv"]}
METHODS = ["epll", "epll_adapted", "gaussian", "wiener", "tv", "wavelet", "nl_means", "bm3d"]


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sigmas", type=numbers(float), default=[15.0, 25.0, 50.0],
                        help="noise standard deviations on the 0..255 scale")
    parser.add_argument("--images", type=numbers(str), default=list(TEST_PHOTOGRAPHS))
    parser.add_argument("--crop", type=int, default=256, help="centre crop side of each test image (0: whole)")
    parser.add_argument("--methods", type=numbers(str), default=METHODS)
    parser.add_argument("--prior", type=Path, default=None,
                        help="a mixture saved by benchmarks/patch_prior_gmm.py, or bundled (dgmlab.priors)")
    parser.add_argument("--betas", type=numbers(float), default=list(PAPER_BETAS),
                        help="EPLL's schedule as multiples of 1/sigma^2 (default the paper's 1,4,8,16,32,64)")
    parser.add_argument("--adapt-relevance", type=float, default=1.0,
                        help="epll_adapted: the relevance factor rho pulling each component towards the prior")
    parser.add_argument("--adapt-iterations", type=int, default=10, help="epll_adapted: EM iterations on the image")
    parser.add_argument("--adapt-second-pass", type=float, default=0.2,
                        help="epll_adapted: the first restoration's error variance as a fraction of sigma^2 for the "
                             "second pass (0: one pass)")
    parser.add_argument("--components", type=int, default=200, help="K of the mixture fitted without --prior")
    parser.add_argument("--train-patches", type=int, default=100_000)
    parser.add_argument("--tune-on", default="astronaut", help="training photograph the baselines are tuned on")
    parser.add_argument("--tune-crop", type=int, default=128)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=Path("runs/denoise_epll"))
    parser.add_argument("--smoke", action="store_true", help="tiny settings to check the script")
    return parser


def tune(function, grid, noisy: np.ndarray, clean: torch.Tensor) -> tuple[float, float]:
    scores = [(psnr(torch.from_numpy(np.clip(function(noisy, w), 0, 1)), clean), w) for w in grid]
    return max(scores)[1], max(scores)[0]


def main() -> None:
    args = _parser().parse_args()
    if args.smoke:
        for key, value in SMOKE.items():
            setattr(args, key, value)
    unknown = sorted(set(args.methods) - set(METHODS))
    if unknown:
        raise SystemExit(f"unknown methods {unknown}; choose from {', '.join(METHODS)}")
    torch.set_num_threads(args.threads)
    args.out.mkdir(parents=True, exist_ok=True)
    wants_prior = {"epll", "epll_adapted"} & set(args.methods)
    prior, prior_source = load_prior(args) if wants_prior else (None, None)
    tune_clean = centre_crop(photograph(args.tune_on), args.tune_crop)
    rows, tuned, shown = [], {}, {}
    for sigma_255 in args.sigmas:
        sigma = sigma_255 / 255
        betas = [b / sigma**2 for b in args.betas]  # EPLL's schedule at this noise, for both EPLL methods
        classical = {name: spec for name, spec in classical_denoisers(sigma).items() if name in args.methods}
        tune_noisy = add_noise(tune_clean, sigma, seed=args.seed + 1).numpy()
        key = f"{sigma_255:g}"
        tuned[key] = {name: tune(f, grid, tune_noisy, tune_clean)[0] for name, (f, grid) in classical.items()}
        for name in args.images:
            clean = centre_crop(photograph(name), args.crop)
            noisy = add_noise(clean, sigma, seed=args.seed)
            row = {"image": name, "sigma": sigma_255, "shape": list(clean.shape),
                   "noisy_psnr_db": round(psnr(noisy, clean), 3)}
            outputs = {}
            for method in args.methods:
                started = time.perf_counter()
                if method == "epll":
                    restored = epll(noisy, prior, sigma, betas=betas).image
                elif method == "epll_adapted":
                    restored = adapted_epll(noisy, prior, sigma, relevance=args.adapt_relevance,
                                            iterations=args.adapt_iterations,
                                            second_pass=args.adapt_second_pass or None,
                                            betas=betas).image
                elif method == "bm3d":
                    import bm3d

                    restored = torch.from_numpy(np.clip(bm3d.bm3d(noisy.numpy(), sigma), 0, 1))
                else:
                    function, _ = classical[method]
                    restored = torch.from_numpy(np.clip(function(noisy.numpy(), tuned[key][method]), 0, 1))
                row[f"{method}_seconds"] = round(time.perf_counter() - started, 2)
                row[f"{method}_psnr_db"] = round(psnr(restored, clean), 3)
                outputs[method] = restored
            rows.append(row)
            print(json.dumps(row), flush=True)
            if sigma_255 == 25 and name == args.images[0]:
                shown = {"clean": clean, "noisy": noisy.clamp(0, 1), **outputs}
    means = {f"{sigma:g}": {method: round(float(np.mean([r[f"{method}_psnr_db"] for r in rows if r["sigma"] == sigma])),
                                          3) for method in args.methods} for sigma in args.sigmas}
    result = {"benchmark": "denoise_epll", "images": args.images, "crop": args.crop,
              "train_photographs": list(TRAIN_PHOTOGRAPHS), "prior": prior_source,
              "epll_betas_times_sigma2": args.betas,
              "adapted": {"relevance": args.adapt_relevance, "iterations": args.adapt_iterations,
                          "second_pass": args.adapt_second_pass or None},
              "tuned_on": f"{args.tune_on}, centre crop {args.tune_crop}", "tuned_parameters": tuned,
              "mean_psnr_db": means, "rows": rows, "threads": args.threads, "command": " ".join(sys.argv)}
    (args.out / "result.json").write_text(json.dumps(result, indent=2) + "\n")
    print("sigma  " + "  ".join(f"{m:>9s}" for m in args.methods) + "   (mean PSNR, dB)")
    for sigma, values in means.items():
        print(f"{sigma:>5s}  " + "  ".join(f"{values[m]:9.2f}" for m in args.methods))
    if shown:
        names = list(shown)
        labels = [n if n in ("clean", "noisy") else f"{n} {psnr(shown[n], shown['clean']):.2f} dB" for n in names]
        columns = math.ceil(math.sqrt(len(names)))
        rows_text = [", ".join(labels[i:i + columns]) for i in range(0, len(labels), columns)]
        figure = plots.image_grid(torch.stack([shown[n].float() for n in names]), nrow=columns,
                                  title=f"{args.images[0]}, sigma = 25, row by row:\n" + "\n".join(rows_text))
        plots.save_figure(figure, args.out / "denoised_sigma25.png")
    print(f"wrote {args.out / 'result.json'}")


if __name__ == "__main__":
    main()
