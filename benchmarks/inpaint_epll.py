"""Inpainting the test photographs: EPLL with the Gaussian-mixture patch prior against biharmonic inpainting.

    .venv/bin/python benchmarks/inpaint_epll.py --prior bundled   # 50 % and 80 % missing
    .venv/bin/python benchmarks/inpaint_epll.py --smoke          # the script end to end in seconds

Every method sees the same damaged images: a centre crop of ``--crop`` pixels of each test photograph
(dgmlab.data.images, grey levels in [0, 1]) with a fraction ``--missing`` of its pixels removed at random (a fixed
seed per fraction, the same mask for every method), no noise on the rest. The methods:

* biharmonic inpainting (skimage.restoration.inpaint_biharmonic), the classical baseline: the missing pixels
  solve the biharmonic equation with the observed ones as boundary values;
* EPLL (Zoran & Weiss 2011; dgmlab.restoration.epll with ``mask``) with the prior in ``--prior`` (fitted by
  benchmarks/patch_prior_gmm.py on the training photographs), started from the biharmonic result. Without noise
  the paper's denoising schedule sigma^-2 (1, ..., 64) begins too close to the data to move the missing pixels,
  so the patch noise is annealed instead (dgmlab.restoration.annealed_betas): ``--rounds`` values of sigma from
  ``--first-sigma`` to ``--last-sigma`` grey levels (on the 0..255 scale), with lambda = 64 / (0.5 / 255)^2 on the
  observed pixels.

Reported: the PSNR (dB) over the whole image, and over the missing pixels only, of each method on each image and
their mean per fraction, and seconds per image, as ``result.json`` and a table; ``inpainted.png`` shows the first
image at the largest fraction.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch
from arguments import numbers
from restoration_setup import load_prior

from dgmlab import plots
from dgmlab.data.images import TEST_PHOTOGRAPHS, TRAIN_PHOTOGRAPHS, centre_crop, photograph
from dgmlab.restoration import annealed_betas, epll, psnr

SMOKE = {"missing": [0.5], "crop": 40, "images": ["camera"], "components": 4, "train_patches": 4000, "rounds": 3}
METHODS = ["biharmonic", "epll"]
OBSERVATION_SIGMA = 0.5  # grey levels: the weight lambda = p^2 / sigma^2 that holds the observed pixels


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--missing", type=numbers(float), default=[0.5, 0.8], help="fractions of pixels removed")
    parser.add_argument("--images", type=numbers(str), default=list(TEST_PHOTOGRAPHS))
    parser.add_argument("--crop", type=int, default=256, help="centre crop side of each test image (0: whole)")
    parser.add_argument("--prior", type=Path, default=None,
                        help="a mixture saved by benchmarks/patch_prior_gmm.py, or bundled (dgmlab.priors)")
    parser.add_argument("--components", type=int, default=200, help="K of the mixture fitted without --prior")
    parser.add_argument("--train-patches", type=int, default=100_000)
    parser.add_argument("--first-sigma", type=float, default=15.0, help="first patch noise (0..255 scale)")
    parser.add_argument("--last-sigma", type=float, default=1.0, help="last patch noise (0..255 scale)")
    parser.add_argument("--rounds", type=int, default=8, help="half-quadratic splitting rounds")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=Path("runs/inpaint_epll"))
    parser.add_argument("--smoke", action="store_true", help="tiny settings to check the script")
    return parser


def main() -> None:
    args = _parser().parse_args()
    if args.smoke:
        for key, value in SMOKE.items():
            setattr(args, key, value)
    if not all(0 < fraction < 1 for fraction in args.missing):
        raise SystemExit(f"--missing takes fractions strictly between 0 and 1, got {args.missing}")
    from skimage.restoration import inpaint_biharmonic

    torch.set_num_threads(args.threads)
    args.out.mkdir(parents=True, exist_ok=True)
    prior, prior_source = load_prior(args)
    betas = annealed_betas(args.first_sigma / 255, args.last_sigma / 255, args.rounds)
    rows, shown = [], {}
    for index, fraction in enumerate(args.missing):
        for name in args.images:
            clean = centre_crop(photograph(name), args.crop)
            generator = torch.Generator().manual_seed(args.seed + index)
            mask = (torch.rand(clean.shape, generator=generator, dtype=clean.dtype) >= fraction).to(clean.dtype)
            damaged = clean * mask
            missing = mask == 0
            row = {"image": name, "missing": fraction, "shape": list(clean.shape),
                   "missing_pixels": int(missing.sum())}
            started = time.perf_counter()
            biharmonic = torch.from_numpy(np.clip(inpaint_biharmonic(damaged.numpy(), missing.numpy()), 0, 1))
            row["biharmonic_seconds"] = round(time.perf_counter() - started, 2)
            started = time.perf_counter()
            restored = epll(damaged, prior, OBSERVATION_SIGMA / 255, mask=mask, betas=betas, initial=biharmonic).image
            row["epll_seconds"] = round(time.perf_counter() - started + row["biharmonic_seconds"], 2)
            for method, image in (("biharmonic", biharmonic), ("epll", restored)):
                row[f"{method}_psnr_db"] = round(psnr(image, clean), 3)
                row[f"{method}_missing_psnr_db"] = round(psnr(image[missing], clean[missing]), 3)
            rows.append(row)
            print(json.dumps(row), flush=True)
            if fraction == max(args.missing) and name == args.images[0]:
                shown = {"clean": clean, "damaged": damaged, "biharmonic": biharmonic, "epll": restored}
    means = {f"{fraction:g}": {method: round(float(np.mean([r[f"{method}_psnr_db"] for r in rows
                                                             if r["missing"] == fraction])), 3)
                               for method in METHODS} for fraction in args.missing}
    result = {"benchmark": "inpaint_epll", "images": args.images, "crop": args.crop,
              "train_photographs": list(TRAIN_PHOTOGRAPHS), "prior": prior_source,
              "schedule": {"first_sigma": args.first_sigma, "last_sigma": args.last_sigma, "rounds": args.rounds,
                           "observation_sigma": OBSERVATION_SIGMA, "start": "biharmonic"},
              "mean_psnr_db": means, "rows": rows, "threads": args.threads, "command": " ".join(sys.argv)}
    (args.out / "result.json").write_text(json.dumps(result, indent=2) + "\n")
    print("missing  " + "  ".join(f"{m:>10s}" for m in METHODS) + "   (mean PSNR, dB)")
    for fraction, values in means.items():
        print(f"{fraction:>7s}  " + "  ".join(f"{values[m]:10.2f}" for m in METHODS))
    if shown:
        labels = [f"{n} {psnr(shown[n], shown['clean']):.2f} dB" if n in METHODS else n for n in shown]
        figure = plots.image_grid(torch.stack([image.float() for image in shown.values()]), nrow=len(shown),
                                  title=f"{args.images[0]}, {max(args.missing):.0%} of the pixels missing: "
                                        + ", ".join(labels))
        plots.save_figure(figure, args.out / "inpainted.png")
    print(f"wrote {args.out / 'result.json'}")


if __name__ == "__main__":
    main()
