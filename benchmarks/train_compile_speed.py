"""The trainer's training step, eager against compiled (``TrainSettings(compile=True)``), side by side.

    .venv/bin/python benchmarks/train_compile_speed.py                       # every model, 1 thread and 2
    .venv/bin/python benchmarks/train_compile_speed.py --models vae_analytic --threads 1 --steps 5 --rounds 1
    .venv/bin/python benchmarks/train_compile_speed.py --out benchmarks/results/train_compile_speed_cpu_DATE.json

Each step is what :func:`dgmlab.train.fit` runs: the objective's forward pass (eager, or through the trainer's
own :class:`dgmlab.train.CompiledStep`: inductor, one static graph, PyTorch's random draws), the backward
pass and the trainer's Adam (:func:`dgmlab.train.make_optimizer`). Both variants of a model start from the
same weights and train on the same fixed batch. The compiled variant's first call (tracing and compiling
the forward and backward graphs, into an empty inductor cache unless ``--warm-cache``) is timed on its own as
``first_call_seconds`` (within one run, a model measured again at another thread count reuses the graph it
compiled for the first); then ``--rounds`` rounds of ``--steps`` steps alternate between the variants,
and the median milliseconds per step of each is reported with the ratio eager / compiled (above 1: the
compiled step is faster) and the number of steps after which the compilation has paid for itself.

Models: the problem set 1 networks at its batch size 256 (``ae``: the autoencoder [128, 32, 16, 2] on MSE;
``vae_analytic``: the VAE [128, 64, 8], MSE + 1e-4 KL), the 784-512-32 Bernoulli VAE at batch 128
(``vae_pset``, the one beside pythae), MADE 784-1024-1024 at 256 and the VAE 784-1024-1024-200 at 256.
"""

from __future__ import annotations

import argparse
import logging
import math
import os
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from arguments import numbers, write_rows

from dgmlab.models import AE, MADE, VAE
from dgmlab.objectives import exact_nll, negative_elbo, pset_mse_kl, reconstruction_mse
from dgmlab.train import CompiledStep, TrainSettings, _ObjectiveStep, make_optimizer

# name: (build, batch, binary data, objective)
MODELS: dict[str, tuple[Callable[[], torch.nn.Module], int, bool, Callable[..., Any]]] = {
    "ae": (lambda: AE(784, [128, 32, 16, 2]), 256, False, lambda m, b: reconstruction_mse(m, b[0])),
    "vae_analytic": (lambda: VAE(784, [128, 64, 8], likelihood="gaussian", decoder_variance=0.0392), 256, False,
                     lambda m, b: pset_mse_kl(m, b[0], coeff=1e-4, kl="analytic")),
    "vae_pset": (lambda: VAE(784, [512, 64], likelihood="bernoulli", activation="relu"), 128, False,
                 lambda m, b: negative_elbo(m, b[0], kl="analytic")),
    "made": (lambda: MADE(784, [1024, 1024], seed=0), 256, True, lambda m, b: exact_nll(m, b[0])),
    "vae_wide": (lambda: VAE(784, [1024, 1024, 200], likelihood="bernoulli"), 256, True,
                 lambda m, b: negative_elbo(m, b[0], kl="analytic")),
}


class Variant:
    """One model's training step, eager or compiled."""

    def __init__(self, name: str, compiled: bool, device: torch.device, width: int = 784) -> None:
        build, batch, binary, objective = MODELS[name]
        torch.manual_seed(0)
        self.model = build().to(device)
        self.optimizer = make_optimizer(self.model, TrainSettings(lr=1e-4), device)
        g = torch.Generator().manual_seed(1)
        x = torch.rand(batch, width, generator=g)
        self.batch = ((torch.bernoulli(x, generator=g) if binary else x).to(device),)
        step = _ObjectiveStep(self.model, objective)
        self.step = CompiledStep(step, device) if compiled else step

    def __call__(self) -> None:
        loss = self.step(*self.batch).loss.mean()
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        self.optimizer.step()


def _timed(variant: Variant, steps: int, device: torch.device) -> float:
    started = time.perf_counter()
    for _ in range(steps):
        variant()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return (time.perf_counter() - started) / steps


def measure(name: str, steps: int, rounds: int, device: torch.device) -> dict[str, Any]:
    eager, compiled = Variant(name, False, device), Variant(name, True, device)
    started = time.perf_counter()
    compiled()
    first_call = time.perf_counter() - started
    eager()  # the eager variant's own first step (allocation), untimed
    times: dict[str, list[float]] = {"eager": [], "compiled": []}
    for r in range(rounds):
        order = [("eager", eager), ("compiled", compiled)]
        for label, variant in order if r % 2 == 0 else order[::-1]:
            times[label].append(_timed(variant, steps, device))
    eager_s, compiled_s = statistics.median(times["eager"]), statistics.median(times["compiled"])
    saved = eager_s - compiled_s
    return {
        "model": name, "batch": MODELS[name][1],
        "eager_ms_per_step": round(1e3 * eager_s, 3), "compiled_ms_per_step": round(1e3 * compiled_s, 3),
        "speedup_eager_over_compiled": round(eager_s / compiled_s, 3),
        "first_call_seconds": round(first_call, 2),
        "steps_to_repay_compilation": (math.ceil((first_call - compiled_s) / saved) if saved > 0 else None),
        "compiled": compiled.step.compiled is not None if isinstance(compiled.step, CompiledStep) else False,
        "fallback_reason": getattr(compiled.step, "reason", None),
        "eager_ms_all_rounds": [round(1e3 * t, 3) for t in times["eager"]],
        "compiled_ms_all_rounds": [round(1e3 * t, 3) for t in times["compiled"]],
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--models", type=numbers(str), default=list(MODELS),
                        help="comma-separated, from " + ", ".join(MODELS))
    parser.add_argument("--threads", type=numbers(int), default=[1, 2], help="comma-separated thread counts (CPU)")
    parser.add_argument("--steps", type=int, default=30, help="timed steps per variant and round")
    parser.add_argument("--rounds", type=int, default=4, help="rounds, alternating which variant goes first")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--warm-cache", action="store_true",
                        help="keep this machine's inductor cache (a later run compiles from it in seconds); by "
                             "default the first calls compile into an empty cache, as a first run does")
    parser.add_argument("--out", type=Path, default=None, help="write the rows as JSON here")
    args = parser.parse_args(argv)
    if not args.warm_cache:
        os.environ["TORCHINDUCTOR_CACHE_DIR"] = tempfile.mkdtemp(prefix="dgmlab-inductor-")
    models = args.models
    unknown = sorted(set(models) - set(MODELS))
    if unknown:
        parser.error(f"unknown model(s) {', '.join(unknown)}; choose from {', '.join(MODELS)}")
    threads = args.threads
    if any(t < 1 for t in threads) or args.steps < 1 or args.rounds < 1:
        parser.error("--threads, --steps and --rounds must be positive")
    logging.getLogger("torch._dynamo").setLevel(logging.ERROR)
    device = torch.device(args.device)
    rows = []
    for count in threads:
        torch.set_num_threads(count)
        for name in models:
            row = {"threads": count, **measure(name, args.steps, args.rounds, device)}
            rows.append(row)
            print(f"{name:>13} {count} thread(s): eager {row['eager_ms_per_step']:8.2f} ms, compiled "
                  f"{row['compiled_ms_per_step']:8.2f} ms per step: {row['speedup_eager_over_compiled']:.2f}x; "
                  f"first call {row['first_call_seconds']:.1f} s, repaid after "
                  f"{row['steps_to_repay_compilation']} steps", flush=True)
    if args.out is not None:
        write_rows(args.out, f"{args.steps} steps x {args.rounds} rounds, alternating, {args.device}, "
                             f"{'warm' if args.warm_cache else 'empty'} inductor cache", rows)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
