"""How far the log-determinant estimator of a trained i-ResNet or Residual Flow is from the exact value on
dequantized 8-bit MNIST: bits/dim of the same test images by the model's own estimator (the mean of several
independent calls) and by the exact log-determinant (the autograd Jacobian, 784 backward passes per block).

    .venv/bin/python benchmarks/flow_mnist_bpd.py --family residual_flow ... --out runs/bench_residual_flow
    .venv/bin/python benchmarks/residual_exact_bpd.py runs/bench_residual_flow --images 32 --calls 20

The test images are the benchmark's: the first ``--images`` of the test split, dequantized once with seed 123.
Both numbers are the 8-bit bound -log p(y) + D log 256 in bits per dimension; their difference is paired image by
image, with its standard error over the calls (the roulette's truncation is shared by a batch) and over the
images (the series' probes are not), so it measures the estimator's bias on this model (the series')
or its noise (the roulette's, which is unbiased: its mean over calls tends to the exact value).
"""

from __future__ import annotations

import argparse
import json
import math
import time
from pathlib import Path

import torch

from dgmlab.checkpoint import load_weights
from dgmlab.data import mnist_tensors
from dgmlab.errors import DgmlabError
from dgmlab.models import build_model
from dgmlab.models.protocols import EstimatedDensity


def bits_per_dim(model: torch.nn.Module, x: torch.Tensor) -> torch.Tensor:
    """Per image: the 8-bit bound -log p(y) + D log 256, in bits per dimension."""
    dims = x[0].numel()
    with torch.no_grad():
        # -log P(b) <= -log p(y) + D log 256
        return (-model.log_prob(x) + dims * math.log(256)) / (dims * math.log(2))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("run", type=Path, help="a run of benchmarks/flow_mnist_bpd.py --family iresnet|residual_flow")
    parser.add_argument("--images", type=int, default=32, help="test images (the exact value: 784 VJPs per block)")
    parser.add_argument("--calls", type=int, default=20, help="independent calls of the estimator, averaged")
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: leave as is)")
    parser.add_argument("--out", type=Path, default=None, help="result JSON (default: RUN/exact_bpd.json)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    try:
        config = json.loads((args.run / "config.json").read_text())
        if config.get("benchmark") != "flow_mnist_bpd" or config.get("family") not in ("iresnet", "residual_flow"):
            raise SystemExit(f"residual_exact_bpd.py: {args.run} is not a run of benchmarks/flow_mnist_bpd.py "
                             f"--family iresnet|residual_flow")
        # the benchmark's model, rebuilt from its arguments, with the trained weights
        options = {"image_shape": [1, 28, 28], "levels": config["levels"], "blocks": config["blocks"],
                   "hidden": config["hidden"]}
        options.update({key: config[key] for key in ("coefficient", "terms") if config.get(key)})
        model = build_model(config["family"], **options)
        load_weights(args.run / "checkpoint", model)
    except (DgmlabError, FileNotFoundError, json.JSONDecodeError) as error:
        raise SystemExit(f"residual_exact_bpd.py: {error}") from None
    model.eval()
    assert isinstance(model, EstimatedDensity)
    x, _, _ = mnist_tensors("test", view="dequantized", flatten=False, seed=123, limit=args.images)
    estimator = model.log_prob_estimator()
    torch.manual_seed(0)
    started = time.perf_counter()
    estimates = torch.stack([bits_per_dim(model, x) for _ in range(args.calls)])  # [calls, images]
    estimate_seconds = time.perf_counter() - started
    settings = model.estimator_settings()
    model.set_estimator("exact")
    started = time.perf_counter()
    exact = bits_per_dim(model, x)
    exact_seconds = time.perf_counter() - started
    model.set_estimator(**settings)
    mean_estimate = estimates.mean(0)
    difference = mean_estimate - exact
    result = {
        "run": str(args.run), "model": config["family"], "estimator": estimator, "images": len(x),
        "calls": args.calls,
        "estimate_bits_per_dim": float(mean_estimate.mean()),
        "exact_bits_per_dim": float(exact.mean()),
        "estimate_minus_exact": float(difference.mean()),
        # the roulette draws one truncation per call for the whole batch: its noise is shared by the images,
        # so the standard error is over calls (of the batch mean); the series' is over images (its probes)
        "estimate_minus_exact_standard_error_over_calls": float(estimates.mean(1).std() / math.sqrt(args.calls)),
        "estimate_minus_exact_standard_error_over_images": float(difference.std() / math.sqrt(len(x))),
        "largest_batch_mean_of_one_call": float(estimates.mean(1).max()),
        "smallest_batch_mean_of_one_call": float(estimates.mean(1).min()),
        "one_call_standard_deviation_per_image": float(estimates.std(0).mean()),
        "seconds_per_estimator_call": estimate_seconds / args.calls, "seconds_exact": exact_seconds,
    }
    for key, value in result.items():
        print(f"{key:40s} {value}")
    out = args.out or args.run / "exact_bpd.json"
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"written to {out}")


if __name__ == "__main__":
    main()
