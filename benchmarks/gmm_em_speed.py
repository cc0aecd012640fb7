"""EM for a Gaussian mixture on 8x8 image patches: dgmlab against scikit-learn's GaussianMixture, side by side.

    .venv/bin/python benchmarks/gmm_em_speed.py                 # 100,000 patches, K = 200, 10 iterations, 2 threads
    .venv/bin/python benchmarks/gmm_em_speed.py --smoke         # the script end to end in seconds

Both start from the same mixture (k-means++ seeds, each patch assigned to its nearest seed, one M-step) and run
the same number of EM iterations with no stopping rule (``tol = 0``) and the same ridge ``reg_covar`` on the
covariances, on the same mean-removed 8x8 patches of the training photographs (dgmlab.data.images), each with
the same number of threads (torch for dgmlab, the BLAS under numpy for scikit-learn). Reported: seconds per
iteration of each, their ratio, and the final mean log-likelihood per patch of each (nats; the patches are in
grey levels in [0, 1]) with its difference. dgmlab runs twice: its products in float64, as scikit-learn, and in
float32 (``compute_dtype``). The order of the runs alternates between repeats, so a slower phase of a shared
machine does not favour one side.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
import warnings
from pathlib import Path

import torch

from dgmlab.data.images import TRAIN_PHOTOGRAPHS, photographs, random_patches
from dgmlab.models.mixtures import GaussianMixture, em_fit, mixture_from_seeds

SMOKE = {"patches": 2000, "components": 8, "iterations": 2, "repeats": 1}


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--patches", type=int, default=100_000)
    parser.add_argument("--components", type=int, default=200)
    parser.add_argument("--iterations", type=int, default=10)
    parser.add_argument("--repeats", type=int, default=2, help="runs of each side (the best is reported)")
    parser.add_argument("--size", type=int, default=8, help="patch side")
    parser.add_argument("--reg-covar", type=float, default=1e-6)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=None, help="write the result as JSON to this file")
    parser.add_argument("--smoke", action="store_true", help="tiny settings to check the script (" +
                        ", ".join(f"{k}={v}" for k, v in SMOKE.items()) + ")")
    return parser


def run_dgmlab(x, initial, iterations, compute_dtype):
    mixture = GaussianMixture(initial.num_components, initial.dim, reg_covar=initial.reg_covar)
    mixture.load_state_dict(initial.state_dict())
    started = time.perf_counter()
    history = em_fit(mixture, x, max_iter=iterations, tol=0.0, compute_dtype=compute_dtype)
    seconds = time.perf_counter() - started
    # the log-likelihood pass after the last step is part of em_fit's time, as scikit-learn's final E-step
    return seconds, history.final_log_likelihood


def run_sklearn(x, initial, iterations, threads):
    from sklearn.mixture import GaussianMixture as SklearnMixture
    from threadpoolctl import threadpool_limits

    precisions = initial.precision_cholesky @ initial.precision_cholesky.transpose(-1, -2)
    model = SklearnMixture(initial.num_components, covariance_type="full", max_iter=iterations, tol=0.0,
                           reg_covar=initial.reg_covar, weights_init=initial.weights.numpy().copy(),
                           means_init=initial.means.numpy().copy(),
                           precisions_init=(0.5 * (precisions + precisions.transpose(-1, -2))).numpy().copy())
    data = x.numpy()
    with warnings.catch_warnings(), threadpool_limits(threads):
        warnings.simplefilter("ignore")  # "did not converge": tol = 0 runs every iteration on purpose
        started = time.perf_counter()
        model.fit(data)
        seconds = time.perf_counter() - started
        return seconds, float(model.score(data))


def main() -> None:
    args = _parser().parse_args()
    if args.smoke:
        for key, value in SMOKE.items():
            setattr(args, key, value)
    torch.set_num_threads(args.threads)
    generator = torch.Generator().manual_seed(args.seed)
    x = random_patches(photographs("train"), args.patches, args.size, generator=generator)
    initial = mixture_from_seeds(x, args.components, generator=torch.Generator().manual_seed(args.seed),
                                 reg_covar=args.reg_covar)
    times: dict[str, list[float]] = {"dgmlab_float64": [], "dgmlab_float32": [], "sklearn": []}
    scores: dict[str, float] = {}
    for repeat in range(args.repeats):
        order = ["sklearn", "dgmlab_float64", "dgmlab_float32"]
        for name in order if repeat % 2 == 0 else order[::-1]:
            if name == "sklearn":
                seconds, score = run_sklearn(x, initial, args.iterations, args.threads)
            else:
                dtype = torch.float64 if name == "dgmlab_float64" else torch.float32
                seconds, score = run_dgmlab(x, initial, args.iterations, dtype)
            times[name].append(seconds)
            scores[name] = score
            print(f"{name}: {seconds:.2f} s for {args.iterations} iterations, mean log-likelihood {score:.6f} nats "
                  f"per patch", flush=True)
    best = {name: min(values) for name, values in times.items()}
    result = {
        "benchmark": "gmm_em_speed",
        "data": f"{args.patches} mean-removed {args.size}x{args.size} patches of the training photographs "
                f"({', '.join(TRAIN_PHOTOGRAPHS)}), grey levels in [0, 1]",
        "components": args.components, "iterations": args.iterations, "reg_covar": args.reg_covar,
        "threads": args.threads, "repeats": args.repeats,
        "seconds_per_iteration": {name: round(value / args.iterations, 3) for name, value in best.items()},
        "speedup_over_sklearn": {name: round(best["sklearn"] / best[name], 2) for name in best if name != "sklearn"},
        "mean_log_likelihood_nats": {name: round(value, 6) for name, value in scores.items()},
        "log_likelihood_difference_from_sklearn": {name: float(f"{scores[name] - scores['sklearn']:.3g}")
                                                   for name in scores if name != "sklearn"},
        "torch": torch.__version__, "command": " ".join(sys.argv),
    }
    for name, ratio in result["speedup_over_sklearn"].items():
        print(f"{name}: {ratio}x scikit-learn's speed, log-likelihood {scores[name] - scores['sklearn']:+.2e} "
              f"nats per patch from scikit-learn's")
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(result, indent=2) + "\n")
        print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
