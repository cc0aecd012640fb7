"""Zoran & Weiss's patch prior: Gaussian mixtures on mean-removed 8x8 patches, test log-likelihood against K.

    .venv/bin/python benchmarks/patch_prior_gmm.py                  # K = 1, 10, 50, 200 on 100,000 patches
    .venv/bin/python benchmarks/patch_prior_gmm.py --source dead_leaves --out runs/patch_prior_leaves
    .venv/bin/python benchmarks/patch_prior_gmm.py --smoke          # the script end to end in seconds

For each K a mixture is fitted by EM (dgmlab.models.mixtures; k-means++ seeds, nearest-seed assignment, one
M-step, then EM until the mean log-likelihood per patch changes by less than ``--tol`` or ``--max-iter``
iterations) to ``--patches`` random patches of the training photographs, and evaluated on ``--test-patches``
random patches of the test photographs, which no mixture has seen (dgmlab.data.images; grey levels in [0, 1]).
K = 1 is one Gaussian (EM converges in one step). The patches have their mean removed, so they lie in a
63-dimensional subspace; the ridge ``--reg-covar`` on every covariance gives the remaining direction a fixed
variance, which adds the same constant to every K's log-likelihood.

With ``--source dead_leaves`` the mixtures learn from ``--leaves-images`` synthetic dead-leaves images
(dgmlab.data.dead_leaves, 256 x 256) instead, and are still tested on the natural test patches (Zoran & Weiss
2012: are they as good a model of natural patches?).

Writes to ``--out``: ``power_spectra.png`` (the training images' and test photographs' spectra with their
fitted slopes), ``result.json`` (the table), ``log_likelihood_against_K.png``, ``eigenvectors_K<k>.png``
for the largest K (the leading eigenvectors of its heaviest components, Zoran & Weiss 2011, Figure 5) and each
mixture as ``gmm_K<k>.safetensors`` (weights, means, covariances).

Zoran & Weiss (2011) train K = 200 on about 2 million patches of the Berkeley training images; those images
are not available offline, so their likelihoods are not comparable with these.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch

from dgmlab import plots
from dgmlab.data.dead_leaves import dead_leaves, power_spectrum
from dgmlab.data.images import TEST_PHOTOGRAPHS, TRAIN_PHOTOGRAPHS, photographs, random_patches
from dgmlab.models.mixtures import em_fit, mixture_from_seeds, save_mixture
from dgmlab.numerics import fit_power_law

SMOKE = {"patches": 3000, "test_patches": 1000, "components": [1, 4], "max_iter": 3}


def _components(text: str) -> list[int]:
    try:
        values = [int(part) for part in text.split(",") if part.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"--components takes numbers separated by commas, got {text!r}") from None
    if not values or min(values) < 1:
        raise argparse.ArgumentTypeError(f"--components needs numbers >= 1, got {text!r}")
    return values


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--components", type=_components, default=[1, 10, 50, 200], help="K values, e.g. 1,10,50,200")
    parser.add_argument("--patches", type=int, default=100_000, help="training patches")
    parser.add_argument("--source", choices=["photographs", "dead_leaves"], default="photographs",
                        help="where the training patches come from")
    parser.add_argument("--leaves-images", type=int, default=8, help="dead-leaves images for --source dead_leaves")
    parser.add_argument("--test-patches", type=int, default=50_000)
    parser.add_argument("--size", type=int, default=8, help="patch side")
    parser.add_argument("--max-iter", type=int, default=100)
    parser.add_argument("--tol", type=float, default=1e-3, help="stop when the mean log-likelihood changes less")
    parser.add_argument("--reg-covar", type=float, default=1e-6)
    parser.add_argument("--float32", action="store_true", help="EM's products in float32 (faster, a little less exact)")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=Path("runs/patch_prior"))
    parser.add_argument("--smoke", action="store_true", help="tiny settings to check the script (" +
                        ", ".join(f"{k}={v}" for k, v in SMOKE.items()) + ")")
    return parser


def main() -> None:
    args = _parser().parse_args()
    if args.smoke:
        for key, value in SMOKE.items():
            setattr(args, key, value)
    torch.set_num_threads(args.threads)
    generator = torch.Generator().manual_seed(args.seed)
    if args.source == "dead_leaves":
        sources = {f"dead leaves {i}": dead_leaves(256, generator=generator) for i in range(args.leaves_images)}
    else:
        sources = photographs("train")
    tests = photographs("test")
    train = random_patches(sources, args.patches, args.size, generator=generator)
    test = random_patches(tests, args.test_patches, args.size, generator=generator)
    args.out.mkdir(parents=True, exist_ok=True)
    spectra = {}
    for label, images in (("training: " + args.source.replace("_", " "), sources), ("test photographs", tests)):
        measured = [power_spectrum(image[:256, :256]) for image in images.values()]
        frequency, power = measured[0][0], np.mean([m[1] for m in measured], axis=0)
        keep = (frequency >= 0.01) & (frequency <= 0.25)
        spectra[label] = (frequency, power, fit_power_law(frequency[keep], power[keep])[0])
    plots.save_figure(plots.power_spectra([(label, *values) for label, values in spectra.items()]),
                      args.out / "power_spectra.png")
    rows, mixtures = [], {}
    for k in args.components:
        started = time.perf_counter()
        mixture = mixture_from_seeds(train, k, generator=torch.Generator().manual_seed(args.seed),
                                     reg_covar=args.reg_covar)
        history = em_fit(mixture, train, max_iter=args.max_iter, tol=args.tol,
                         compute_dtype=torch.float32 if args.float32 else None)
        test_ll = float(mixture.log_prob(test).mean())
        row = {"K": k, "iterations": history.iterations, "converged": history.converged,
               "train_log_likelihood_nats": round(history.final_log_likelihood, 3),
               "test_log_likelihood_nats": round(test_ll, 3),
               "minutes": round((time.perf_counter() - started) / 60, 2)}
        rows.append(row)
        mixtures[k] = mixture
        print(json.dumps(row), flush=True)
        save_mixture(mixture, args.out / f"gmm_K{k}.safetensors",
                     metadata={"patch_size": str(args.size), "remove_mean": "true", "source": args.source})
    result = {
        "benchmark": "patch_prior_gmm",
        "data": f"mean-removed {args.size}x{args.size} patches, grey levels in [0, 1]: {args.patches} from the "
                + (f"training photographs ({', '.join(TRAIN_PHOTOGRAPHS)})" if args.source == "photographs" else
                   f"{args.leaves_images} dead-leaves images (256 x 256)")
                + f", {args.test_patches} from the test photographs ({', '.join(TEST_PHOTOGRAPHS)})",
        "spectrum_slopes": {label: round(values[2], 3) for label, values in spectra.items()},
        "reg_covar": args.reg_covar, "tol": args.tol, "max_iter": args.max_iter, "threads": args.threads,
        "compute_dtype": "float32" if args.float32 else "float64", "rows": rows, "command": " ".join(sys.argv),
    }
    (args.out / "result.json").write_text(json.dumps(result, indent=2) + "\n")
    ks = [row["K"] for row in rows]
    plots.save_figure(plots.patch_log_likelihood_against_components(
        ks, [row["train_log_likelihood_nats"] for row in rows], [row["test_log_likelihood_nats"] for row in rows],
        title=f"Gaussian-mixture prior on {args.size}x{args.size} patches"), args.out / "log_likelihood_against_K.png")
    largest = mixtures[max(ks)]
    plots.save_figure(plots.mixture_eigenvectors(largest.weights, largest.covariances,
                                                 title=f"K = {max(ks)}: leading eigenvectors of the heaviest "
                                                       f"components"), args.out / f"eigenvectors_K{max(ks)}.png")
    print("   K  iterations  train LL  test LL (nats per patch)")
    for row in rows:
        print(f"{row['K']:4d}  {row['iterations']:10d}  {row['train_log_likelihood_nats']:8.2f}  "
              f"{row['test_log_likelihood_nats']:7.2f}")
    print(f"wrote {args.out / 'result.json'} and the figures")


if __name__ == "__main__":
    main()
