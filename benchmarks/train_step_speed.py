"""Seconds per training step (forward, backward, fused Adam) in fp32 and under bfloat16 autocast.

    .venv/bin/python benchmarks/train_step_speed.py                      # every model, 2 threads, CPU
    .venv/bin/python benchmarks/train_step_speed.py --models pixelcnn --steps 9
    .venv/bin/python benchmarks/train_step_speed.py --device cuda --steps 30   # on a GPU

What ``TrainSettings(precision="bf16")`` (``dgmlab train --precision bf16``) buys per model: one batch of
random binary images, the model's exact NLL as the loss, ``--steps`` timed steps after 2 warm-up steps, per
variant, the variants interleaved over ``--rounds`` rounds so that a slow patch of a shared machine hits all of
them; the median step is reported. For the PixelCNNs a third variant stores the weights and inputs in the
contiguous (NCHW) layout instead of channels-last, which is what the models use since 2026-11-28 (see
``dgmlab.models.pixelcnn._channels_last``). Speed depends on the CPU: with AVX-512 BF16 or AMX, bfloat16
matrix products run natively; without, they are emulated and slower than fp32.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from collections.abc import Callable
from pathlib import Path

import torch
from torch import nn

import dgmlab.models.pixelcnn as pixelcnn_module
from dgmlab.models import MADE, NADE, VAE, GatedPixelCNN, PixelCNN, count_parameters
from dgmlab.objectives import exact_nll, negative_elbo
from dgmlab.train import TrainSettings, make_optimizer, resolve_device, training_precision

# name -> (constructor, image input, batch size, loss)
MODELS: dict[str, tuple[Callable[[], nn.Module], bool, int, str]] = {
    "pixelcnn": (lambda: PixelCNN(), True, 128, "nll"),
    "gated_pixelcnn": (lambda: GatedPixelCNN(channels=128, num_layers=10), True, 128, "nll"),
    "made": (lambda: MADE(784, [1024, 1024], direct=True, activation="gelu"), False, 256, "nll"),
    "nade": (lambda: NADE(784, 500), False, 64, "nll"),
    "vae": (lambda: VAE(784, [1024, 1024, 200], likelihood="bernoulli"), False, 256, "elbo"),
}


def _layout(contiguous: bool) -> None:
    """Switch the PixelCNNs' input layout (the weights are switched per model)."""
    pixelcnn_module._channels_last = (lambda x: x) if contiguous else (  # type: ignore[assignment]
        lambda x: x.contiguous(memory_format=torch.channels_last))


def time_steps(name: str, precision: str, contiguous: bool, steps: int, device: torch.device) -> list[float]:
    build, image, batch, loss = MODELS[name]
    torch.manual_seed(0)
    model = build().to(device)
    if contiguous:
        model.to(memory_format=torch.contiguous_format)
    _layout(contiguous)
    shape = (batch, 1, 28, 28) if image else (batch, 784)
    x = torch.bernoulli(torch.full(shape, 0.13, device=device))
    optimizer = make_optimizer(model, TrainSettings(lr=1e-4), device)
    step_precision = training_precision(precision, device)

    def step() -> None:
        with step_precision:
            out = exact_nll(model, x) if loss == "nll" else negative_elbo(model, x)
        optimizer.zero_grad(set_to_none=True)
        out.loss.mean().backward()
        optimizer.step()

    times = []
    for index in range(steps + 2):
        if device.type == "cuda":
            torch.cuda.synchronize()
        started = time.perf_counter()
        step()
        if device.type == "cuda":
            torch.cuda.synchronize()
        if index >= 2:
            times.append(time.perf_counter() - started)
    _layout(False)
    return times


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default=",".join(MODELS), help=f"comma-separated subset of {', '.join(MODELS)}")
    parser.add_argument("--steps", type=int, default=3, help="timed steps per variant and round")
    parser.add_argument("--rounds", type=int, default=3, help="rounds over the variants (interleaved)")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--out", type=Path, default=None, help="write the table as JSON here")
    args = parser.parse_args()
    names = [n.strip() for n in args.models.split(",") if n.strip()]
    unknown = sorted(set(names) - set(MODELS))
    if unknown:
        parser.error(f"unknown model(s) {', '.join(unknown)}; choose from {', '.join(MODELS)}")
    torch.set_num_threads(args.threads)
    device = resolve_device(args.device)
    rows = []
    for name in names:
        variants = [("fp32", False), ("bf16", False)]
        if MODELS[name][1]:
            variants.insert(0, ("fp32", True))
        times: dict[tuple[str, bool], list[float]] = {v: [] for v in variants}
        for _ in range(args.rounds):
            for precision, contiguous in variants:
                times[(precision, contiguous)] += time_steps(name, precision, contiguous, args.steps, device)
        base = statistics.median(times[variants[0]])
        parameters = count_parameters(MODELS[name][0]())
        for (precision, contiguous), values in times.items():
            median = statistics.median(values)
            rows.append({"model": name, "parameters": parameters,
                         "batch_size": MODELS[name][2], "precision": precision,
                         "layout": "contiguous" if contiguous else ("channels_last" if MODELS[name][1] else "-"),
                         "median_seconds_per_step": round(median, 4), "steps_timed": len(values),
                         "speedup_vs_first": round(base / median, 2)})
            row = rows[-1]
            print(f"{name:15s} {row['parameters']:>10,} batch {row['batch_size']:>3} {precision:>4s} "
                  f"{row['layout']:>13s}: {median:.3f} s/step (median of {len(values)}), "
                  f"{row['speedup_vs_first']:.2f}x", flush=True)
    print(f"(device {device}, {torch.get_num_threads()} threads, torch {torch.__version__}, CPU capability "
          f"{torch.backends.cpu.get_cpu_capability()})")
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps({"device": str(device), "threads": torch.get_num_threads(),
                                        "torch": torch.__version__, "rows": rows}, indent=2) + "\n")


if __name__ == "__main__":
    main()
