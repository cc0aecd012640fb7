"""How close a training step comes to the machine: FLOPs per step, achieved GFLOP/s, and the fraction of the peak
of the step's own matrix products and convolutions, per model, in fp32 and under bfloat16 autocast.

    .venv/bin/python benchmarks/train_step_flops.py                           # every model, 2 threads, CPU
    .venv/bin/python benchmarks/train_step_flops.py --models vae_pset,made --precisions fp32
    .venv/bin/python benchmarks/train_step_flops.py --device cuda --steps 30     # on a GPU

For each model and precision, one training step (forward, loss, backward, fused Adam; the trainer's own
optimizer and autocast context) is

1. **counted**: ``torch.utils.flop_counter.FlopCounterMode`` adds the FLOPs of every matrix product and
   convolution of the forward and backward passes (2 per multiply-add; element-wise work and Adam are not
   counted, they are the overhead this benchmark exposes);
2. **recorded**: a ``TorchDispatchMode`` notes every matrix-product and convolution call of the step (the
   ``aten`` operator, the shapes, strides and dtypes of its tensors, its other arguments);
3. **timed**: the median of ``--steps`` steps after warm-up, the variants of a model interleaved over
   ``--rounds`` rounds;
4. **bounded**: each recorded call is replayed alone on fresh tensors of the same shapes, strides and dtypes,
   repeated until it is timed to a few percent, and the fastest median is kept. The sum over the step's calls
   is what the step would cost if it did nothing but its matrix products and convolutions, each at the speed
   this machine reaches for that very shape and precision: the step's **limit**.

Printed per row: ms per step, GFLOP per step, achieved GFLOP/s (FLOPs / step time), the limit's GFLOP/s
(FLOPs / summed replay time), **fraction of the limit** (replay time / step time), and for reference the
GFLOP/s of one large square matrix product (``--peak-size``) at the same precision. ``--compile`` adds a
variant per precision whose forward pass and loss run under ``torch.compile`` (inductor; the backward pass is
compiled with it), with the seconds of its first two steps, which include the compilation.
"""

from __future__ import annotations

import argparse
import json
import logging
import statistics
import sys
import time
import warnings
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_map
from torch.utils.flop_counter import FlopCounterMode

sys.path.insert(0, str(Path(__file__).resolve().parent))

from arguments import numbers  # noqa: E402
from train_step_speed import MODELS as SPEED_MODELS  # noqa: E402

from dgmlab.models import VAE, count_parameters  # noqa: E402
from dgmlab.objectives import exact_nll, negative_elbo  # noqa: E402
from dgmlab.train import TrainSettings, make_optimizer, resolve_device, training_precision  # noqa: E402

# name -> (constructor, input shape of one example, batch size, loss): the problem set's VAE as a new user trains
# it (784-512-32, Bernoulli decoder, batch 128), then the models of train_step_speed.py (its "vae" is the wide one)
MODELS: dict[str, tuple[Callable[[], nn.Module], tuple[int, ...], int, str]] = {
    "vae_pset": (lambda: VAE(784, [512, 64], likelihood="bernoulli", activation="relu"), (784,), 128, "elbo"),
    **{("vae_1024" if name == "vae" else name): (build, (1, 28, 28) if image else (784,), batch, loss)
       for name, (build, image, batch, loss) in SPEED_MODELS.items()},
}

aten = torch.ops.aten
HEAVY = {aten.mm.default, aten.addmm.default, aten.bmm.default, aten.baddbmm.default, aten.convolution.default,
         aten.convolution_backward.default}


def _describe(t: Any) -> Any:
    return ("tensor", tuple(t.shape), tuple(t.stride()), t.dtype, t.device) if isinstance(t, torch.Tensor) else t


class RecordHeavyCalls(TorchDispatchMode):
    """Notes every matrix-product and convolution call: (operator, argument description)."""

    def __init__(self) -> None:
        super().__init__()
        self.calls: list[tuple[Any, Any, Any]] = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func in HEAVY:
            self.calls.append((func, tree_map(_describe, args), tree_map(_describe, kwargs)))
        return func(*args, **kwargs)


def _materialise(description: Any) -> Any:
    def make(d: Any) -> Any:
        if isinstance(d, tuple) and len(d) == 5 and d[0] == "tensor":
            _, shape, stride, dtype, device = d
            t = torch.empty_strided(shape, stride, dtype=dtype, device=device)
            return t.normal_() if t.is_floating_point() else t.zero_()
        return d
    return tree_map(make, description, is_leaf=lambda d: isinstance(d, tuple) and len(d) == 5 and d[0] == "tensor")


def _synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_call(func: Any, args: Any, kwargs: Any, device: torch.device, target: float = 0.02) -> float:
    """The median seconds of one call, over 5 batches of repetitions that take about ``target`` s each."""
    a, k = _materialise(args), _materialise(kwargs)
    for _ in range(3):
        func(*a, **k)
    _synchronize(device)
    started = time.perf_counter()
    func(*a, **k)
    _synchronize(device)
    once = max(time.perf_counter() - started, 1e-6)
    repeats = max(1, int(target / once))
    samples = []
    for _ in range(5):
        _synchronize(device)
        started = time.perf_counter()
        for _ in range(repeats):
            func(*a, **k)
        _synchronize(device)
        samples.append((time.perf_counter() - started) / repeats)
    return statistics.median(samples)


def matmul_peak(size: int, dtype: torch.dtype, device: torch.device) -> float:
    """GFLOP/s of one ``size`` x ``size`` matrix product in ``dtype``."""
    a = torch.randn(size, size, device=device).to(dtype)
    b = torch.randn(size, size, device=device).to(dtype)
    seconds = time_call(aten.mm.default, (a, b), {}, device, target=0.2)
    return 2 * size**3 / seconds / 1e9


class Step:
    """One model's training step, with the trainer's optimizer and precision."""

    def __init__(self, name: str, precision: str, device: torch.device, compiled: bool = False) -> None:
        build, shape, batch, loss = MODELS[name]
        torch.manual_seed(0)
        self.model = build().to(device)
        self.parameters = count_parameters(self.model)
        self.batch = batch
        self.x = torch.bernoulli(torch.full((batch, *shape), 0.13, device=device))
        self.optimizer = make_optimizer(self.model, TrainSettings(lr=1e-4), device)
        self.precision = training_precision(precision, device)
        self.loss = loss
        self.compiled = compiled
        # one static graph per model (the models of one run differ in batch size, which would make dynamo
        # retrace with symbolic shapes)
        self.forward = torch.compile(self._forward, dynamic=False) if compiled else self._forward

    def _forward(self, x: torch.Tensor) -> torch.Tensor:
        out = exact_nll(self.model, x) if self.loss == "nll" else negative_elbo(self.model, x)
        return out.loss.mean()

    def backward(self, eager: bool = False) -> None:
        with self.precision:
            loss = (self._forward if eager else self.forward)(self.x)
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()

    def __call__(self) -> None:
        self.backward()
        self.optimizer.step()


def measure(name: str, precisions: list[str], steps: int, rounds: int, device: torch.device,
            peaks: dict[str, float], compile_too: bool = False) -> list[dict[str, Any]]:
    variants = [(p, False) for p in precisions] + ([(p, True) for p in precisions] if compile_too else [])
    built = {v: Step(name, v[0], device, compiled=v[1]) for v in variants}
    times: dict[tuple[str, bool], list[float]] = {v: [] for v in variants}
    compile_seconds = {}
    for variant, step in built.items():
        started = time.perf_counter()
        for _ in range(2):
            step()
        compile_seconds[variant] = time.perf_counter() - started
    for _ in range(rounds):
        for variant, step in built.items():
            for _ in range(steps):
                _synchronize(device)
                started = time.perf_counter()
                step()
                _synchronize(device)
                times[variant].append(time.perf_counter() - started)
    rows = []
    bounds: dict[str, tuple[int, float, int, int]] = {}
    for precision in precisions:
        # the eager step's products and convolutions (a compiled step computes the same ones), each replayed
        # alone in two passes; the faster pass of each call counts
        step = built[(precision, False)]
        with FlopCounterMode(display=False) as counter:
            step.backward(eager=True)
        recorder = RecordHeavyCalls()
        with recorder:
            step.backward(eager=True)
        signatures = Counter((func, repr(args), repr(kwargs)) for func, args, kwargs in recorder.calls)
        examples = {(func, repr(args), repr(kwargs)): (func, args, kwargs) for func, args, kwargs in recorder.calls}
        passes = [{key: time_call(*examples[key], device) for key in signatures} for _ in range(2)]
        limit = sum(count * min(p[key] for p in passes) for key, count in signatures.items())
        bounds[precision] = (counter.get_total_flops(), limit, len(recorder.calls), len(signatures))
    for (precision, compiled), step in built.items():
        flops, limit, calls, distinct = bounds[precision]
        seconds = statistics.median(times[(precision, compiled)])
        achieved = flops / seconds / 1e9
        rows.append({
            "model": name, "parameters": step.parameters, "batch_size": step.batch, "precision": precision,
            "compiled": compiled, "first_two_steps_seconds": round(compile_seconds[(precision, compiled)], 2),
            "ms_per_step": round(seconds * 1e3, 3), "gflop_per_step": round(flops / 1e9, 4),
            "achieved_gflops": round(achieved, 1), "limit_gflops": round(flops / limit / 1e9, 1),
            "fraction_of_limit": round(limit / seconds, 3), "heavy_calls_per_step": calls,
            "distinct_shapes": distinct, "square_matmul_peak_gflops": round(peaks[precision], 1),
            "fraction_of_square_peak": round(achieved / peaks[precision], 3),
            "steps_timed": len(times[(precision, compiled)]),
        })
        row = rows[-1]
        label = precision + ("+compile" if compiled else "")
        print(f"{name:15s} {label:>12s} batch {row['batch_size']:>3}: {row['ms_per_step']:9.2f} ms/step, "
              f"{row['gflop_per_step']:7.3f} GFLOP, {row['achieved_gflops']:6.1f} GFLOP/s achieved, limit "
              f"{row['limit_gflops']:6.1f} GFLOP/s -> {100 * row['fraction_of_limit']:5.1f}% of the limit "
              f"({100 * row['fraction_of_square_peak']:.0f}% of a square product's {row['square_matmul_peak_gflops']})",
              flush=True)
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", type=numbers(str), default=list(MODELS))
    parser.add_argument("--precisions", type=numbers(str), default=["fp32", "bf16"])
    parser.add_argument("--steps", type=int, default=5, help="timed steps per variant and round")
    parser.add_argument("--rounds", type=int, default=3, help="rounds over the precisions (interleaved)")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--peak-size", type=int, default=2048, help="side of the square reference product")
    parser.add_argument("--compile", action="store_true",
                        help="also time each precision with the loss's forward pass under torch.compile (inductor)")
    parser.add_argument("--out", type=Path, default=None, help="write the rows as JSON here")
    args = parser.parse_args()
    unknown = sorted(set(args.models) - set(MODELS))
    if unknown:
        parser.error(f"unknown model(s) {', '.join(unknown)}; choose from {', '.join(MODELS)}")
    bad = sorted(set(args.precisions) - {"fp32", "bf16"})
    if bad:
        parser.error(f"unknown precision(s) {', '.join(bad)}; choose from fp32, bf16")
    torch.set_num_threads(args.threads)
    logging.getLogger("torch._dynamo").setLevel(logging.ERROR)  # graph-break notes of the compiled variant
    warnings.filterwarnings("ignore", module="torch._dynamo")
    device = resolve_device(args.device)
    dtypes = {"fp32": torch.float32, "bf16": torch.bfloat16}
    peaks = {p: matmul_peak(args.peak_size, dtypes[p], device) for p in args.precisions}
    print("square matrix product peak: " + ", ".join(f"{p} {v:.1f} GFLOP/s" for p, v in peaks.items()))
    rows = []
    for name in args.models:
        rows += measure(name, args.precisions, args.steps, args.rounds, device, peaks, args.compile)
    info = {"device": str(device), "threads": torch.get_num_threads(), "torch": torch.__version__,
            "cpu_capability": torch.backends.cpu.get_cpu_capability(), "square_matmul_peak_gflops": peaks,
            "peak_size": args.peak_size, "rows": rows}
    print(f"(device {device}, {info['threads']} threads, torch {torch.__version__}, CPU capability "
          f"{info['cpu_capability']})")
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(info, indent=2) + "\n")


if __name__ == "__main__":
    main()
