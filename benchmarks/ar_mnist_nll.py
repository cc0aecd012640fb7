"""Exact likelihoods of the autoregressive models on binarized MNIST, beside the published numbers.

    .venv/bin/python benchmarks/ar_mnist_nll.py                          # fvsbn, bengio, nade, made on the CPU
    .venv/bin/python benchmarks/ar_mnist_nll.py --models made --minutes 30   # the MADE target run
    .venv/bin/python benchmarks/ar_mnist_nll.py --models pixelcnn --device cuda --minutes 60   # on a GPU
    .venv/bin/python benchmarks/ar_mnist_nll.py --models pixelcnn --device cuda --precision bf16 \
        --minutes 9 --sampling 0          # the PixelCNN target on a lent GPU with 15 minutes of device time
    .venv/bin/python benchmarks/ar_mnist_nll.py --models made --minutes 0.5 --eval-limit 500  # a smoke run
    .venv/bin/python benchmarks/ar_mnist_nll.py --models made --minutes 8 --no-made-direct \
        --made-activation relu --no-bias-init                 # ablation: the paper's plain MADE

Protocol (as benchmarks/vae_mnist_nll.py): training images are re-binarized at every epoch (a fresh Bernoulli
draw of the grey levels, "dynamic" binarization); the 10,000 test images are binarized once with a fixed seed;
the test NLL is the exact ``-log p(x)`` in nats per image, averaged over the test set (autoregressive models
need no bound). Each model trains for a time budget (``--minutes``, per model): the number of epochs is
measured on this machine from a short probe, the learning rate decays exponentially from ``lr`` to
``lr / 20`` over those epochs, and the evaluated weights are an exponential moving average (decay 0.999).
The vector models (FVSBN, Bengio, NADE, MADE) start with their output biases at the logit of the training
images' mean grey level (``set_output_bias``). MADE is 784-1024-1024-784 with GELU units and the paper's
direct input-to-output connections (``direct=True``), one mask, natural (raster) order. NADE (H = 500) trains
with batches of 64 at lr 3e-3: its step costs the same per example at any batch size (memory-bound), so
smaller batches buy more updates in the budget (training NLL after 2 epochs: 110.6 nats at batch 256 and
lr 2e-3, 94.9 at batch 64 and 3e-3).

Published numbers (``Spec.published`` below, each with its source) use the fixed Larochelle-Murray
binarization ("static"), so they are comparable only roughly; re-implementations with dynamic binarization
usually land about a nat lower. Targets (``TARGETS``): MADE <= 88 nats within 30 minutes on 2 CPU cores;
PixelCNN <= 82 nats where a GPU is available.

``--precision bf16`` runs the training steps under bfloat16 autocast (``TrainSettings.precision``); the test
NLL is computed in fp32 either way.

It also measures sampling speed (images per second) with reuse of computation across steps (MADE: every
hidden unit computed once, at the step of its degree; PixelCNN: a per-layer row cache) against one full
forward pass per pixel.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import time
from collections.abc import Callable
from pathlib import Path

import torch
from torch import nn

from dgmlab import plots
from dgmlab.data import TensorBatches, mnist_tensors
from dgmlab.models import FVSBN, MADE, NADE, BengioNet, GatedPixelCNN, PixelCNN, count_parameters
from dgmlab.objectives import exact_nll
from dgmlab.train import PRECISIONS, TrainSettings, epochs_in_budget, evaluate, fit, resolve_device
from dgmlab.utils import device_of


@dataclasses.dataclass
class Spec:
    build: Callable[[argparse.Namespace], nn.Module]  # the model, from the command line's options
    image: bool  # [N, 1, 28, 28] inputs (convolutions) rather than [N, 784]
    lr: float
    batch_size: int
    published: str


SPECS: dict[str, Spec] = {
    "fvsbn": Spec(lambda a: FVSBN(784), False, 1e-2, 256, "96.58 dynamic (pytorch-generative, 50 epochs)"),
    "bengio": Spec(lambda a: BengioNet(784, 1), False, 3e-3, 256, "no MNIST number published"),
    "nade": Spec(lambda a: NADE(784, 500), False, 3e-3, 64, "88.86 static; 85.65 dynamic (pytorch-generative)"),
    "made": Spec(lambda a: MADE(784, [int(h) for h in a.made_hidden.split(",")], direct=a.made_direct,
                                    activation=a.made_activation), False, 2e-3, 256,
                 "88.04 static (1 layer, 32 masks); 84.87 dynamic (1x8000, pytorch-generative)"),
    "pixelcnn": Spec(lambda a: PixelCNN(), True, 2e-3, 128, "81.30 static (van den Oord et al. 2016a)"),
    "gated_pixelcnn": Spec(lambda a: GatedPixelCNN(channels=128, num_layers=10), True, 2e-3, 128,
                           "no MNIST number (pytorch-generative: 81.50, dynamic)"),
}
TARGETS = {"made": 88.0, "pixelcnn": 82.0}


def sampling_speed(model: nn.Module, name: str, device: torch.device, n: int) -> dict[str, float]:
    """Images per second with reuse across steps and with one full forward pass per step (same samples)."""
    model.eval()
    fast_flag = "fast" if name.endswith("pixelcnn") else "incremental"
    rates = {}
    samples = {}
    for reuse in (True, False):
        generator = torch.Generator(device=device).manual_seed(0)
        if device.type == "cuda":
            torch.cuda.synchronize()
        started = time.perf_counter()
        samples[reuse] = model.sample(n, generator=generator, **{fast_flag: reuse})
        if device.type == "cuda":
            torch.cuda.synchronize()
        rates["with_reuse" if reuse else "full_pass_per_step"] = n / (time.perf_counter() - started)
    assert torch.equal(samples[True], samples[False]), "the two samplers must give identical samples"
    rates["gain"] = rates["with_reuse"] / rates["full_pass_per_step"]
    return rates


def save_samples_figure(model: nn.Module, name: str, test_nll: float, n: int, path: Path) -> None:
    """``n`` samples of the trained (averaged) weights in a grid titled with the test NLL."""
    generator = torch.Generator(device=device_of(model)).manual_seed(0)
    images = model.sample(n, generator=generator).reshape(n, 28, 28).cpu()
    figure = plots.image_grid(images, nrow=int(math.sqrt(n)) or 1,
                              title=f"{name}: {n} samples (test NLL {test_nll:.2f} nats)")
    figure.savefig(path, dpi=120)


def run(name: str, args: argparse.Namespace, device: torch.device) -> dict[str, object]:
    spec = SPECS[name]
    spec = dataclasses.replace(spec, lr=args.lr or spec.lr, batch_size=args.batch_size or spec.batch_size)
    x_train, _, transform = mnist_tensors("train", view="dynamic", flatten=not spec.image, seed=args.seed,
                                          limit=args.train_limit or None)
    x_test, _, _ = mnist_tensors("test", view="static", flatten=not spec.image, seed=123)
    if args.eval_limit:
        x_test = x_test[: args.eval_limit]
    torch.manual_seed(args.seed)
    model = spec.build(args)
    if hasattr(model, "set_output_bias") and not args.no_bias_init:  # the vector models: independent pixels
        model.set_output_bias(x_train.reshape(len(x_train), -1).mean(0))
    model = model.to(device)
    if args.sampling_only:  # speed does not depend on the weights: an untrained model, no data needed
        rates = sampling_speed(model, name, device, args.sampling or 16)
        result = {"model": name, "parameters": count_parameters(model), "device": str(device),
                  "threads": torch.get_num_threads(), "sampling_images": args.sampling or 16,
                  "sampling_images_per_second": {k: round(v, 2) for k, v in rates.items()}}
        (args.out / name).mkdir(parents=True, exist_ok=True)
        (args.out / name / "sampling.json").write_text(json.dumps(result, indent=2) + "\n")
        return result
    train = TensorBatches(x_train.to(device), batch_size=spec.batch_size, seed=args.seed, transform=transform)
    objective = lambda m, b: exact_nll(m, b[0])  # noqa: E731
    epochs = args.epochs or epochs_in_budget(model, objective, train, args.minutes * 60, probe_steps=20,
                                             precision=args.precision)
    lr_decay = (1 / 20) ** (1 / max(epochs - 1, 1))
    print(f"{name}: {count_parameters(model):,} parameters, {epochs} epoch(s) in {args.minutes:g} min, "
          f"lr {spec.lr:g} -> {spec.lr / 20:g}, {args.precision} training steps", flush=True)
    settings = TrainSettings(epochs=epochs, lr=spec.lr, lr_decay=lr_decay, seed=args.seed, device=str(device),
                             time_limit=args.minutes * 60, progress=False, ema_decay=0.999, precision=args.precision)
    run_dir = args.out / name
    started = time.perf_counter()
    history = fit(model, objective, train, settings=settings, run_dir=run_dir, overwrite=args.overwrite,
                  config={"benchmark": "ar_mnist_nll", "model": name, **{k: str(v) for k, v in vars(args).items()}})
    train_minutes = (time.perf_counter() - started) / 60
    test = TensorBatches(x_test.to(device), batch_size=500 if not spec.image else 100, shuffle=False)
    test_nll = evaluate(model, lambda m, b: exact_nll(m, b[0]), test, device)["nll"]
    result: dict[str, object] = {
        "model": name, "parameters": count_parameters(model), "epochs": len(history.records),
        "batch_size": spec.batch_size, "lr": spec.lr, "precision": args.precision,
        "train_minutes": round(train_minutes, 2), "device": str(device), "threads": torch.get_num_threads(),
        "train_nll_last_epoch_nats": round(history.last("train", "nll"), 3),
        "test_nll_nats": round(test_nll, 3), "test_images": len(x_test), "published": spec.published,
    }
    if name in TARGETS:
        result["target_nats"] = TARGETS[name]
    if args.figure_samples:
        save_samples_figure(model, name, test_nll, args.figure_samples, run_dir / "samples.png")
    if args.sampling and name in ("made", "pixelcnn", "gated_pixelcnn", "nade"):
        result["sampling_images_per_second"] = {k: round(v, 2) for k, v in
                                                 sampling_speed(model, name, device, args.sampling).items()}
    (run_dir / "result.json").write_text(json.dumps(result, indent=2) + "\n")
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default="fvsbn,bengio,nade,made",
                        help=f"comma-separated subset of {', '.join(SPECS)}")
    parser.add_argument("--minutes", type=float, default=0.0,
                        help="training budget per model (default: 3 fvsbn, 5 bengio, 20 nade, 30 made, 60 pixelcnn)")
    parser.add_argument("--epochs", type=int, default=0, help="fixed number of epochs (0: from the budget)")
    parser.add_argument("--eval-limit", type=int, default=0, help="evaluate on the first N test images (0: all)")
    parser.add_argument("--train-limit", type=int, default=0, help="train on the first N images (0: all; smoke runs)")
    parser.add_argument("--sampling", type=int, default=16, help="images for the sampling-speed check (0: skip)")
    parser.add_argument("--figure-samples", type=int, default=64,
                        help="samples drawn after training for <out>/<model>/samples.png (0: no figure)")
    parser.add_argument("--sampling-only", action="store_true",
                        help="only measure sampling speed (untrained weights; --sampling images)")
    parser.add_argument("--lr", type=float, default=0.0, help="initial learning rate (0: the model's default)")
    parser.add_argument("--batch-size", type=int, default=0, help="batch size (0: the model's default: 256 "
                        "for FVSBN, Bengio and MADE, 64 for NADE, 128 for the PixelCNNs; a GPU may want more)")
    parser.add_argument("--made-hidden", default="1024,1024", help="MADE hidden widths (ablations)")
    parser.add_argument("--made-activation", default="gelu", choices=["relu", "gelu"], help="MADE units (ablations)")
    parser.add_argument("--made-direct", default=True, action=argparse.BooleanOptionalAction,
                        help="MADE direct input-to-output connections (ablations: --no-made-direct)")
    parser.add_argument("--no-bias-init", action="store_true",
                        help="leave the output biases at zero instead of the logit of the data mean (ablations)")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--precision", default="fp32", choices=PRECISIONS,
                        help="training steps in fp32 or under bfloat16 autocast (the test NLL is always computed "
                             "in fp32); bf16 makes a PixelCNN step about 3x faster on a CPU with AVX-512 BF16")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=0)
    parser.add_argument("--out", type=Path, default=Path("runs/bench_ar_nll"))
    parser.add_argument("--overwrite", action="store_true", help="replace the runs that --out holds already")
    args = parser.parse_args()
    names = [n.strip() for n in args.models.split(",") if n.strip()]
    unknown = sorted(set(names) - set(SPECS))
    if unknown:
        parser.error(f"unknown model(s) {', '.join(unknown)}; choose from {', '.join(SPECS)}")
    if args.threads:
        torch.set_num_threads(args.threads)
    device = resolve_device(args.device)
    default_minutes = {"fvsbn": 3, "bengio": 5, "nade": 20, "made": 30, "pixelcnn": 60, "gated_pixelcnn": 60}
    rows = []
    for name in names:
        budget = argparse.Namespace(**{**vars(args), "minutes": args.minutes or default_minutes[name]})
        rows.append(run(name, budget, device))
    if args.sampling_only:
        for row in rows:
            rate = row["sampling_images_per_second"]
            print(f"{row['model']}: sampling {row['sampling_images']} images on {row['device']} "
                  f"({row['threads']} threads): {rate['with_reuse']} images/s with reuse, "
                  f"{rate['full_pass_per_step']} with a full pass per step ({rate['gain']:.1f}x)")
        return
    print(f"\n{'model':15s} {'params':>10s} {'prec':>5s} {'epochs':>6s} {'minutes':>8s} {'train NLL':>10s} "
          f"{'test NLL':>9s}  published (nats)")
    for row in rows:
        print(f"{row['model']:15s} {row['parameters']:>10,} {row['precision']:>5s} {row['epochs']:>6} "
              f"{row['train_minutes']:>8} "
              f"{row['train_nll_last_epoch_nats']:>10} {row['test_nll_nats']:>9}  {row['published']}")
    for row in rows:
        if "target_nats" in row:
            met = row["test_nll_nats"] <= row["target_nats"]
            print(f"{row['model']}: test NLL {row['test_nll_nats']} nats vs target <= {row['target_nats']} "
                  f"({'met' if met else 'NOT met'}) in {row['train_minutes']} min on {row['device']}")
        if "sampling_images_per_second" in row:
            rate = row["sampling_images_per_second"]
            print(f"{row['model']}: sampling {rate['with_reuse']} images/s with reuse, "
                  f"{rate['full_pass_per_step']} with a full pass per step ({rate['gain']:.1f}x)")
    print(f"(device {device}, {torch.get_num_threads()} threads; test images {rows[0]['test_images']}; "
          f"published numbers use static binarization; mean bits/dim = nats / (784 ln 2), "
          f"e.g. 88 nats = {88 / (784 * math.log(2)):.3f})")


if __name__ == "__main__":
    main()
