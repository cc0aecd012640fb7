"""Glow, RealNVP, the i-ResNet and the Residual Flow on dequantized 8-bit MNIST: test bits/dim on the 10,000 test
images after a time budget.

    .venv/bin/python benchmarks/flow_mnist_bpd.py                         # Glow, 30 min on the CPU (the target)
    .venv/bin/python benchmarks/flow_mnist_bpd.py --device cuda --precision bf16 --minutes 10 --batch-size 256 \\
        --hidden 256 --steps 16 --lr 2e-3 --out runs/bench_glow_gpu      # the GPU target (<= 1.05), one command
    .venv/bin/python benchmarks/flow_mnist_bpd.py --ablation --minutes 4  # Glow's ablation at one budget each
    .venv/bin/python benchmarks/flow_mnist_bpd.py --minutes 0.1 --train-limit 512 --eval-limit 256 \\
        --levels 2 --steps 2 --hidden 16 --out /tmp/glow_smoke            # a smoke run (seconds)
    .venv/bin/python benchmarks/flow_mnist_bpd.py --family iresnet --blocks 4 --hidden 32 --lr 1e-3 \
        --out runs/bench_iresnet                                          # the i-ResNet, 30 min on the CPU
    .venv/bin/python benchmarks/flow_mnist_bpd.py --family residual_flow --blocks 4 --hidden 32 --lr 1e-3 \
        --out runs/bench_residual_flow                                    # the Residual Flow, 30 min on the CPU
    .venv/bin/python benchmarks/flow_mnist_bpd.py --family residual_flow --device cuda --minutes 10 \
        --blocks 16 --hidden 128 --batch-size 256 --lr 1e-3 --out runs/bench_residual_flow_gpu  # on a GPU

The i-ResNet and the Residual Flow (--family) estimate their log-determinants (a truncated power series, biased;
Russian roulette, unbiased; see dgmlab.models.flows.residual); their test bits/dim are that estimate, which
result.json names ("log_prob_estimator"); benchmarks/residual_exact_bpd.py RUN compares it with the exact
log-determinant on a few test images.

Protocol: training images are dequantized afresh at every batch, y = (b + u)/256 with u ~ U[0, 1)^D; the test
images once, with a fixed seed. The test NLL is the 8-bit bound -log p(y) + D log 256 (uniform dequantization)
in nats, with every term reported (the base log-density, the logit pre-processing's log-determinant, the
multi-scale flow's log-determinant, D log 256), and bits/dim = that / (D ln 2). Published: Glow 1.05,
RealNVP 1.06 bits/dim on MNIST (long GPU training).

Writes into --out: the run (config, metrics, checkpoint), result.json, samples at temperatures 0, 0.5, 0.7
and 1 (samples_temperature.png), and an interpolation between two test digits in z (interpolation.png).
With --ablation: one run per (permutation, coupling) of Glow's ablation (reverse / shuffle / 1x1 convolution
x additive / affine), each with the same budget, and ablation.md / ablation.json with the test bits/dim.
"""

from __future__ import annotations

import argparse
import json
import math
import time
from pathlib import Path
from typing import Any

import torch

from dgmlab import plots
from dgmlab.data import TensorBatches, mnist_tensors
from dgmlab.errors import DgmlabError
from dgmlab.evaluate import flow_nll_accounting, interpolate_in_base, temperature_samples
from dgmlab.models import build_model, count_parameters
from dgmlab.models.flows import Glow
from dgmlab.objectives import exact_nll
from dgmlab.train import TrainSettings, fit, resolve_device, steps_in_budget

PUBLISHED = {"glow": 1.05, "realnvp": 1.06, "iresnet": 1.06, "residual_flow": 0.97}
FAMILIES = ("glow", "iresnet", "residual_flow")
TEMPERATURES = (0.0, 0.5, 0.7, 1.0)
ABLATION = [(permutation, coupling) for coupling in ("additive", "affine")
            for permutation in ("reverse", "shuffle", "conv1x1")]


def objective(model: Glow, batch: tuple[torch.Tensor, ...]) -> Any:
    # -log P(b) <= -log p(y) + D log 256
    return exact_nll(model, batch[0], levels=256)


def train_and_evaluate(args: argparse.Namespace, permutation: str, coupling: str, out: Path,
                       x_train: torch.Tensor, x_test: torch.Tensor, transform: Any,
                       figures: bool = True) -> dict[str, Any]:
    """One Glow variant: train for the budget, then the test accounting (and the figures)."""
    device = resolve_device(args.device)
    torch.manual_seed(args.seed)
    if args.family == "glow":
        model = Glow(image_shape=[1, 28, 28], levels=args.levels, steps=args.steps, hidden=args.hidden,
                     permutation=permutation, coupling=coupling, lu=True).to(device)
        described = f"Glow(levels={args.levels}, steps={args.steps}, hidden={args.hidden}, {permutation}, {coupling})"
    else:
        options = {"image_shape": [1, 28, 28], "levels": args.levels, "blocks": args.blocks, "hidden": args.hidden}
        if args.coefficient:
            options["coefficient"] = args.coefficient
        if args.terms:
            options["terms"] = args.terms
        model = build_model(args.family, **options).to(device)
        described = (f"{type(model).__name__}(levels={args.levels}, blocks={args.blocks}, hidden={args.hidden}, "
                     f"c={model.residual_blocks()[0].g.coefficient:g}, {model.log_prob_estimator()})")
    model.initialize_from_data(x_train[:512].to(device))
    train = TensorBatches(x_train.to(device), batch_size=args.batch_size, seed=args.seed, transform=transform)
    if args.epochs:
        epochs, max_steps = args.epochs, None
    else:
        # the steps the budget allows (an epoch is minutes long here): the last epoch ends at max_steps, part-way
        max_steps = steps_in_budget(model, objective, train, args.minutes * 60, probe_steps=20,
                                    precision=args.precision)
        epochs = math.ceil(max_steps / len(train))
    # the learning rate decays exponentially from --lr to --lr-final over the planned epochs
    lr_decay = (args.lr_final / args.lr) ** (1 / max(epochs - 1, 1))
    settings = TrainSettings(epochs=epochs, lr=args.lr, lr_decay=lr_decay, seed=args.seed, device=str(device),
                             max_steps=max_steps, time_limit=args.minutes * 60 if not args.epochs else None,
                             progress=False,
                             ema_decay=args.ema_decay or None, precision=args.precision,
                             warmup_steps=args.warmup_steps, grad_clip_norm=args.grad_clip or None)
    planned = f"{epochs} epochs" if max_steps is None else f"{max_steps} steps ({epochs} epochs, the last cut short)"
    budget = "--epochs, no time limit" if args.epochs else f"budget {args.minutes} min"
    print(f"[{described}] {count_parameters(model):,} parameters, {planned} planned ({budget}), "
          f"lr {args.lr:g} -> {args.lr_final:g}", flush=True)
    started = time.perf_counter()
    history = fit(model, objective, train, settings=settings, run_dir=out, overwrite=args.overwrite,
                  config={"benchmark": "flow_mnist_bpd", **{k: str(v) if isinstance(v, Path) else v
                                                             for k, v in vars(args).items()},
                          "permutation": permutation, "coupling": coupling})
    train_minutes = (time.perf_counter() - started) / 60
    started = time.perf_counter()
    accounting = flow_nll_accounting(model, x_test.to(device), levels=256, batch_size=500)
    result = {
        "model": described,
        "parameters": count_parameters(model), "epochs": len(history.records),
        "train_steps": history.records[-1]["step"], "batch_size": args.batch_size,
        "train_minutes": round(train_minutes, 2), "device": str(device), "threads": torch.get_num_threads(),
        "precision": args.precision,
        "train_bits_per_dim_last_epoch": round(history.last("train", "bits_per_dim"), 4),
        "test_bits_per_dim": round(accounting["bits_per_dim"], 4), "test_images": accounting["examples"],
        "test_accounting_nats": {"base_log_prob": round(accounting["base_log_prob"], 2),
                                 **{k: round(v, 2) for k, v in accounting["logdet"].items()},
                                 "D_log_256": round(accounting["dequantization_nats"], 2),
                                 "nll": round(accounting["nll_nats"], 2)},
        "eval_minutes": round((time.perf_counter() - started) / 60, 2),
    }
    if args.family != "glow":
        result["log_prob_estimator"] = model.log_prob_estimator()
    if figures:
        samples = temperature_samples(model, TEMPERATURES, n=10, seed=args.seed).cpu()
        fig = plots.image_grid(samples.reshape(-1, 28, 28), nrow=10,
                               title=f"Samples at T = {', '.join(map(str, TEMPERATURES))} (rows), same noise; "
                                     f"test {result['test_bits_per_dim']:.3f} bits/dim")
        plots.save_figure(fig, out / "samples_temperature.png")
        path = interpolate_in_base(model, x_test[0], x_test[1], steps=10).cpu()
        plots.save_figure(plots.interpolation(path.reshape(-1, 28, 28),
                                              title="Interpolation in z between two test digits"),
                          out / "interpolation.png")
    (out / "result.json").write_text(json.dumps(result, indent=2) + "\n")
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--family", default="glow", choices=FAMILIES,
                        help="glow (and RealNVP through --permutation), iresnet or residual_flow")
    parser.add_argument("--levels", type=int, default=2)
    parser.add_argument("--blocks", type=int, default=4, help="residual blocks per level (iresnet, residual_flow)")
    parser.add_argument("--coefficient", type=float, default=0.0,
                        help="the spectral-norm coefficient c (0: the family's default; iresnet, residual_flow)")
    parser.add_argument("--terms", type=int, default=0,
                        help="the log-determinant's series terms (0: the family's default; iresnet, residual_flow)")
    parser.add_argument("--steps", type=int, default=8, help="steps of flow per level")
    parser.add_argument("--hidden", type=int, default=96, help="hidden channels of the coupling networks")
    parser.add_argument("--permutation", default="conv1x1", choices=("conv1x1", "shuffle", "reverse"))
    parser.add_argument("--coupling", default="affine", choices=("affine", "additive"))
    parser.add_argument("--minutes", type=float, default=30.0, help="training budget per run")
    parser.add_argument("--epochs", type=int, default=0, help="train exactly this many epochs (0: the budget)")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--lr", type=float, default=2e-3)
    parser.add_argument("--lr-final", type=float, default=2e-4)
    parser.add_argument("--warmup-steps", type=int, default=100, help="linear learning-rate warm-up (0: off)")
    parser.add_argument("--grad-clip", type=float, default=1000.0,
                        help="clip the gradient's L2 norm (per-image NLL gradients are ~1e4; 0: off)")
    parser.add_argument("--ema-decay", type=float, default=0.999,
                        help="evaluate an EMA of the weights (0: off; turn it off for runs of a few hundred steps, "
                             "whose average still holds the early weights)")
    parser.add_argument("--precision", default="fp32", choices=("fp32", "bf16"))
    parser.add_argument("--train-limit", type=int, default=0, help="train on the first N images (0: all 60,000)")
    parser.add_argument("--eval-limit", type=int, default=0, help="evaluate on the first N test images (0: all)")
    parser.add_argument("--ablation", action="store_true",
                        help="train every (permutation, coupling) of Glow's ablation with the same budget")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: leave as is)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=Path("runs/bench_glow"))
    parser.add_argument("--overwrite", action="store_true", help="replace the runs that --out holds already")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    x_train, _, transform = mnist_tensors("train", view="dequantized", flatten=False,
                                          limit=args.train_limit or None)
    x_test, _, _ = mnist_tensors("test", view="dequantized", flatten=False, seed=123, limit=args.eval_limit or None)
    if args.ablation and args.family != "glow":
        parser.error("--ablation is Glow's (permutations x couplings); drop --family")
    if not args.ablation:
        result = train_and_evaluate(args, args.permutation, args.coupling, args.out, x_train, x_test, transform)
        name = args.family if args.family != "glow" else "realnvp" if args.permutation != "conv1x1" else "glow"
        result["published_bits_per_dim"] = PUBLISHED[name]
        (args.out / "result.json").write_text(json.dumps(result, indent=2) + "\n")
        width = max(map(len, result))
        for key, value in result.items():
            print(f"{key:<{width}}  {value}")
        return
    rows = []
    for permutation, coupling in ABLATION:
        result = train_and_evaluate(args, permutation, coupling, args.out / f"{permutation}_{coupling}",
                                    x_train, x_test, transform, figures=False)
        rows.append({"permutation": permutation, "coupling": coupling, **result})
        print(f"  -> test {result['test_bits_per_dim']:.4f} bits/dim after {result['epochs']} epochs", flush=True)
    table = ["| permutation | coupling | epochs | test bits/dim |", "|---|---|---|---|"]
    table += [f"| {r['permutation']} | {r['coupling']} | {r['epochs']} | {r['test_bits_per_dim']:.4f} |" for r in rows]
    budget = (f"{args.epochs} epoch(s) over {len(x_train):,} training images each" if args.epochs
              else f"{args.minutes} min of training each")
    header = (f"Glow ablation on dequantized 8-bit MNIST, {args.levels} levels x {args.steps} steps, {args.hidden} "
              f"hidden channels, batch {args.batch_size}, {budget} on {resolve_device(args.device)} "
              f"({torch.get_num_threads()} threads), EMA {args.ema_decay or 'off'}, test bits/dim on "
              f"{len(x_test):,} images")
    (args.out / "ablation.md").write_text(header + "\n\n" + "\n".join(table) + "\n")
    (args.out / "ablation.json").write_text(json.dumps({"setting": header, "rows": rows}, indent=2) + "\n")
    print(header)
    print("\n".join(table))
    assert all(math.isfinite(r["test_bits_per_dim"]) for r in rows)


if __name__ == "__main__":
    try:
        main()
    except DgmlabError as error:  # an existing run in --out, a bad option: one line, not a traceback
        raise SystemExit(f"flow_mnist_bpd: {error}") from None
