"""Codebook usage against vocabulary size: VQ, VQ with an EMA codebook, and finite scalar quantization.

    .venv/bin/python benchmarks/vq_codebook_usage.py                 # K = 64, 256, 1024, 4096, 2 epochs each
    .venv/bin/python benchmarks/vq_codebook_usage.py --quantizers vq_ema --restart-after 100 \
        --also benchmarks/results/vq_codebook_usage_cpu_2026-12-02.json   # EMA VQ with dead-code restarts
    .venv/bin/python benchmarks/vq_codebook_usage.py --smoke         # the script end to end in seconds

Every run is the bundled ``vqvae`` config (dgmlab.models.vqvae: a 7x7 grid of codes for each dynamically
binarized MNIST digit, Bernoulli decoder) with the same encoder and decoder, ``--hidden`` channels, trained for
``--epochs`` with Adam at ``--lr`` from the same seed; only the quantizer and K change:

* ``vq``: a learned codebook of K vectors of ``--code-dim``, codebook and commitment losses (beta = 0.25);
* ``vq_ema``: the same with the codebook moved by exponential moving averages (decay 0.99), no dead-code restarts
  (``--restart-after N`` adds them to both VQ variants);
* ``fsq``: finite scalar quantization with Mentzer et al.'s (2023, Table 1) levels for each K: [8, 8] (64),
  [8, 6, 5] (240), [8, 5, 5, 5] (1000), [7, 5, 5, 5, 5] (4375); no codebook, no auxiliary loss;
* ``lfq`` (with ``--quantizers lfq``): lookup-free quantization, d = log2 K signs, with its entropy and
  commitment terms at their defaults.

Measured on all 10,000 test digits: the fraction of the K codes that any of their 490,000 positions uses, the
perplexity exp H(p) of that code histogram, and the reconstruction -log p(x | z_q) in nats per image. Writes
``result.json`` and ``codebook_usage.png`` (dgmlab.plots.codebook_usage_against_size) into ``--out``. The
readings' claim to check: VQ's usage collapses as K grows, FSQ's does not.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from pathlib import Path

import torch
from arguments import numbers

from dgmlab import plots
from dgmlab.config import apply_overrides, build_settings, load_bundled_config
from dgmlab.experiments.runs import prepare
from dgmlab.train import fit
from dgmlab.utils import eval_mode

FSQ_LEVELS = {64: [8, 8], 256: [8, 6, 5], 1024: [8, 5, 5, 5], 4096: [7, 5, 5, 5, 5]}
SMOKE = {"sizes": [64, 256], "quantizers": ["vq", "fsq"], "epochs": 1, "train_limit": 512, "test_limit": 256,
         "hidden": 8}


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quantizers", type=numbers(str), default=["vq", "vq_ema", "fsq"])
    parser.add_argument("--sizes", type=numbers(int), default=[64, 256, 1024, 4096],
                        help="vocabulary sizes K (fsq: the levels of FSQ_LEVELS)")
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--hidden", type=int, default=32)
    parser.add_argument("--code-dim", type=int, default=16, help="d of the VQ codebooks")
    parser.add_argument("--restart-after", type=int, default=None, help="VQ dead-code restarts after N unused steps")
    parser.add_argument("--also", type=Path, default=None,
                        help="the result.json of an earlier run, whose rows are drawn in the same figure")
    parser.add_argument("--train-limit", type=int, default=None, help="training digits (default all 60,000)")
    parser.add_argument("--test-limit", type=int, default=None, help="test digits (default all 10,000)")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=Path("runs/vq_codebook_usage"))
    parser.add_argument("--smoke", action="store_true", help="tiny settings to check the script")
    return parser


def _model_table(quantizer: str, size: int, args: argparse.Namespace) -> dict:
    table = {"name": "vqvae", "quantizer": quantizer, "hidden": args.hidden, "residual_blocks": 2}
    if quantizer == "fsq":
        if size not in FSQ_LEVELS:
            raise SystemExit(f"no FSQ levels for K = {size}; choose K among {', '.join(map(str, FSQ_LEVELS))}")
        table["levels"] = FSQ_LEVELS[size]
    elif quantizer == "lfq":
        bits = size.bit_length() - 1
        if size != 2**bits:
            raise SystemExit(f"lfq has K = 2**d codes; K = {size} is not a power of two")
        table["code_dim"] = bits
    else:
        table.update(num_codes=size, code_dim=args.code_dim)
        if args.restart_after is not None:
            table["quantizer_options"] = {"restart_after": args.restart_after}
    return table


@torch.no_grad()
def _test_codes(model, data) -> tuple[torch.Tensor, float]:
    """The code histogram of the test digits and their mean reconstruction in nats."""
    counts = torch.zeros(model.num_codes, dtype=torch.float64)
    total, count = 0.0, 0
    with eval_mode(model):
        for start in range(0, len(data.test_x), 500):
            x = data.test_x[start:start + 500]
            indices = model.codes(x)
            counts += torch.bincount(indices.flatten(), minlength=model.num_codes).double()
            total += float(-model.log_likelihood(x, model.decode_codes(indices)).sum())
            count += len(x)
    return counts, total / count


def main() -> None:
    args = _parser().parse_args()
    if args.smoke:
        for key, value in SMOKE.items():
            setattr(args, key, value)
    unknown = sorted(set(args.quantizers) - {"vq", "vq_ema", "fsq", "lfq"})
    if unknown:
        raise SystemExit(f"unknown quantizers {unknown}; choose from vq, vq_ema, fsq, lfq")
    torch.set_num_threads(args.threads)
    args.out.mkdir(parents=True, exist_ok=True)
    rows = []
    for quantizer in args.quantizers:
        for size in args.sizes:
            config = load_bundled_config("vqvae")
            config["model"] = _model_table(quantizer, size, args)
            overrides = [f"train.epochs={args.epochs}", f"train.lr={args.lr}", f"train.seed={args.seed}",
                         "train.progress=false", "data.test=true"]
            if args.train_limit:
                overrides.append(f"data.limit={args.train_limit}")
            if args.test_limit:
                overrides.append(f"data.test_limit={args.test_limit}")
            config = apply_overrides(config, overrides)
            model, objective, data = prepare(config)
            settings = build_settings(config)
            started = time.perf_counter()
            history = fit(model, objective, data.train, None, settings)
            seconds = time.perf_counter() - started
            counts, reconstruction = _test_codes(model, data)
            p = counts / counts.sum()
            entropy = float(-(p[p > 0] * p[p > 0].log()).sum())
            label = quantizer if args.restart_after is None or quantizer not in ("vq", "vq_ema") else \
                f"{quantizer}, restarts after {args.restart_after}"
            row = {"quantizer": label, "K": model.num_codes, "requested_K": size,
                   "levels": config["model"].get("levels"), "usage": round(float((counts > 0).double().mean()), 4),
                   "codes_used": int((counts > 0).sum()), "perplexity": round(math.exp(entropy), 2),
                   "reconstruction": round(reconstruction, 3),
                   "train_reconstruction_last_epoch": round(history.last("train", "reconstruction"), 3),
                   "train_batch_usage_last_epoch": round(history.last("train", "usage"), 4),
                   "seconds": round(seconds, 1)}
            rows.append(row)
            print(json.dumps(row), flush=True)
    result = {"benchmark": "vq_codebook_usage", "epochs": args.epochs, "lr": args.lr, "hidden": args.hidden,
              "code_dim": args.code_dim, "restart_after": args.restart_after, "train_limit": args.train_limit,
              "test_limit": args.test_limit, "threads": args.threads, "seed": args.seed, "rows": rows,
              "command": " ".join(sys.argv)}
    (args.out / "result.json").write_text(json.dumps(result, indent=2) + "\n")
    drawn = rows if args.also is None else json.loads(args.also.read_text())["rows"] + rows
    figure = plots.codebook_usage_against_size(
        drawn, title=f"Codebook usage on the MNIST test set after {args.epochs} epochs (7x7 codes per digit)")
    plots.save_figure(figure, args.out / "codebook_usage.png")
    print("quantizer     K   usage  perplexity  reconstruction (nats)")
    for row in rows:
        print(f"{row['quantizer']:>9s} {row['K']:5d}  {row['usage']:6.3f}  {row['perplexity']:10.1f}  "
              f"{row['reconstruction']:8.2f}")
    print(f"wrote {args.out / 'result.json'} and codebook_usage.png")


if __name__ == "__main__":
    main()
