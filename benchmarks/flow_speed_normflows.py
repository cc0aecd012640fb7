"""dgmlab's Glow beside normflows' Glow, the same architecture, in one process: seconds per training step, and
test bits/dim on dequantized 8-bit MNIST after the same minutes of training each.

    .venv/bin/pip install -c constraints.txt -e '.[bench]'          # normflows (the optional `bench` extra)
    .venv/bin/python benchmarks/flow_speed_normflows.py              # the recorded setting
    .venv/bin/python benchmarks/flow_speed_normflows.py --minutes 0.1 --timing-steps 3 --rounds 1 \\
        --steps 1 --hidden 8 --train-limit 256 --eval-limit 128        # a smoke run (seconds)
    .venv/bin/python benchmarks/flow_speed_normflows.py --device cuda --precision bf16 --channels-last

Both models: the logit pre-processing y -> logit(0.05 + 0.9 y), then ``levels`` levels of squeeze and ``steps``
steps of Glow (ActNorm, LU-parameterised 1x1 convolution, affine coupling over the channels with a
3x3 -> 1x1 -> 3x3 convolutional network of ``hidden`` channels, zero-initialised last layer), a split after
every level but the last. The factored-out halves: dgmlab's learned prior N(mu(h), sigma(h)) conditioned on the
kept half (Glow's); normflows' ``GlowBase`` (a learned mean and scale per channel), as its Glow example builds
it. Each library's own coupling scale (dgmlab: exp(2 tanh(h/2)); normflows: Glow's sigmoid).

Fair timing on a noisy, shared machine: the two models alternate in rounds of ``--timing-steps`` steps on the
same batches, and the median step time of each is reported with their ratio. The quality comparison also
alternates: chunks of steps go to each model in turn until each has spent ``--minutes`` of its own step time,
on the same sequence of batches; then both are evaluated on the same dequantized test images.
Optional for dgmlab only: ``--precision bf16`` (bfloat16 autocast of the steps; log-determinants and the base
log-density stay fp32) and ``--channels-last`` (NHWC weights and inputs).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import statistics
import time
from pathlib import Path
from typing import Any

import torch
from torch import nn

from dgmlab.data import TensorBatches, mnist_tensors
from dgmlab.models import count_parameters
from dgmlab.models.flows import Glow
from dgmlab.train import resolve_device, training_precision

D = 784


def normflows_glow(levels: int, steps: int, hidden: int) -> nn.Module:
    """The same Glow in normflows (its Glow example, unconditional, on [1, 28, 28] with a logit transform)."""
    try:
        import normflows as nf
    except ImportError:
        raise SystemExit("normflows is not installed: pip install -c constraints.txt -e '.[bench]'") from None
    q0, merges, flows = [], [], []
    for i in range(levels):
        # level i = 0 is the deepest (normflows lists the levels from the base towards the data)
        channels = 2 ** (levels + 1 - i)
        flows.append([nf.flows.GlowBlock(channels, hidden, split_mode="channel", scale=True) for _ in range(steps)]
                     + [nf.flows.Squeeze()])
        if i > 0:
            merges.append(nf.flows.Merge())
            latent_shape = (2 ** (levels - i), 28 // 2 ** (levels - i), 28 // 2 ** (levels - i))
        else:
            latent_shape = (2 ** (levels + 1), 28 // 2 ** levels, 28 // 2 ** levels)
        q0.append(nf.distributions.GlowBase(latent_shape))
    return nf.MultiscaleFlow(q0, flows, merges, transform=nf.transforms.Logit(alpha=0.05), class_cond=False)


def nll_nats(model: nn.Module, y: torch.Tensor, ours: bool) -> torch.Tensor:
    """-log p(y) per image, nats (density on [0, 1)^D; add D log 256 for the 8-bit bound)."""
    return -(model.log_prob(y) if ours else model.log_prob(y, None))


class Trainee:
    """One model with its optimizer, its step time and its step count."""

    def __init__(self, name: str, model: nn.Module, ours: bool, lr: float, precision: str, channels_last: bool,
                 device: torch.device) -> None:
        self.name, self.model, self.ours = name, model.to(device), ours
        self.channels_last = channels_last and ours
        if self.channels_last:
            self.model = self.model.to(memory_format=torch.channels_last)
        self.precision = precision if ours else "fp32"
        self.device = device
        self.optimizer = torch.optim.Adam(self.model.parameters(), lr=lr)
        self.seconds, self.steps, self.times = 0.0, 0, []

    def step(self, y: torch.Tensor) -> float:
        if self.channels_last:
            y = y.contiguous(memory_format=torch.channels_last)
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
        started = time.perf_counter()
        autocast = training_precision(self.precision, self.device) if self.ours else contextlib.nullcontext()
        with autocast:
            loss = nll_nats(self.model, y, self.ours).float().mean()
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        self.optimizer.step()
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
        elapsed = time.perf_counter() - started
        self.times.append(elapsed)
        self.seconds += elapsed
        self.steps += 1
        return float(loss.detach())

    @torch.no_grad()
    def test_bits_per_dim(self, x_test: torch.Tensor, batch: int = 500) -> float:
        self.model.eval()
        total = 0.0
        for start in range(0, len(x_test), batch):
            total += float(nll_nats(self.model, x_test[start:start + batch].to(self.device), self.ours).double().sum())
        self.model.train()
        # bits/dim of the 8-bit images: (-log p(y) + D log 256) / (D ln 2)
        return (total / len(x_test) + D * math.log(256)) / (D * math.log(2))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--levels", type=int, default=2)
    parser.add_argument("--steps", type=int, default=8)
    parser.add_argument("--hidden", type=int, default=96)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--timing-steps", type=int, default=10, help="steps per model per timing round")
    parser.add_argument("--rounds", type=int, default=4, help="timing rounds (the models alternate)")
    parser.add_argument("--minutes", type=float, default=5.0, help="training time of each model (own step time)")
    parser.add_argument("--chunk", type=int, default=20, help="steps per turn while training side by side")
    parser.add_argument("--precision", default="fp32", choices=("fp32", "bf16"), help="dgmlab's steps only")
    parser.add_argument("--channels-last", action="store_true", help="dgmlab's model and inputs in NHWC")
    parser.add_argument("--train-limit", type=int, default=0)
    parser.add_argument("--eval-limit", type=int, default=0, help="test images to evaluate (0: all 10,000)")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--threads", type=int, default=0)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=None, help="write the result JSON here")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    device = resolve_device(args.device)
    x_train, _, dequantize = mnist_tensors("train", view="dequantized", flatten=False, limit=args.train_limit or None)
    x_test, _, _ = mnist_tensors("test", view="dequantized", flatten=False, seed=123, limit=args.eval_limit or None)
    batches = TensorBatches(x_train.to(device), batch_size=args.batch_size, seed=args.seed, transform=dequantize)

    torch.manual_seed(args.seed)
    ours_model = Glow(image_shape=[1, 28, 28], levels=args.levels, steps=args.steps, hidden=args.hidden)
    ours_model.initialize_from_data(x_train[:512])
    torch.manual_seed(args.seed)
    theirs_model = normflows_glow(args.levels, args.steps, args.hidden)
    first = dequantize(x_train[:512], torch.Generator().manual_seed(args.seed)).to(device)
    with torch.no_grad():  # normflows' ActNorm initialises itself on its first batch
        theirs_model.log_prob(first, None)
    trainees = [Trainee("dgmlab", ours_model, True, args.lr, args.precision, args.channels_last, device),
                Trainee("normflows", theirs_model, False, args.lr, "fp32", False, device)]

    def stream() -> Any:
        while True:
            yield from batches

    # 1. the step time, alternating rounds on the same batches
    timing = {t.name: [] for t in trainees}
    source = stream()
    for _ in range(args.rounds):
        round_batches = [next(source)[0] for _ in range(args.timing_steps)]
        for trainee in trainees:
            for y in round_batches:
                trainee.step(y)
            timing[trainee.name] += trainee.times[-args.timing_steps:]
    medians = {name: statistics.median(times[1:] if len(times) > 1 else times) for name, times in timing.items()}
    print(f"seconds per step (median of {args.rounds} x {args.timing_steps}, batch {args.batch_size}): "
          + ", ".join(f"{n} {s:.4f}" for n, s in medians.items())
          + f"; normflows / dgmlab = {medians['normflows'] / medians['dgmlab']:.2f}", flush=True)

    # 2. the same minutes of training each, alternating chunks on the same batches
    for trainee in trainees:
        trainee.seconds, trainee.steps = 0.0, 0
    budget = args.minutes * 60
    while any(t.seconds < budget for t in trainees):
        chunk = [next(source)[0] for _ in range(args.chunk)]
        for trainee in trainees:
            for y in chunk:
                if trainee.seconds >= budget:
                    break
                trainee.step(y)
    result: dict[str, Any] = {
        "setting": f"Glow {args.levels} levels x {args.steps} steps, {args.hidden} hidden channels, batch "
                   f"{args.batch_size}, Adam {args.lr:g}, dequantized 8-bit MNIST, {device}, "
                   f"{torch.get_num_threads()} threads, dgmlab precision {args.precision}"
                   f"{', channels-last' if args.channels_last else ''}",
        "seconds_per_step": {n: round(s, 4) for n, s in medians.items()},
        "speedup_dgmlab_over_normflows": round(medians["normflows"] / medians["dgmlab"], 3),
        "train_minutes_each": args.minutes,
    }
    for trainee in trainees:
        result[trainee.name] = {"parameters": count_parameters(trainee.model), "train_steps": trainee.steps,
                                "train_seconds": round(trainee.seconds, 1),
                                "test_bits_per_dim": round(trainee.test_bits_per_dim(x_test), 4)}
    result["test_images"] = len(x_test)
    text = json.dumps(result, indent=2)
    print(text)
    if args.out is not None:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(text + "\n")


if __name__ == "__main__":
    main()
