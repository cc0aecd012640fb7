"""Larger batches at an equal time budget: the test loss a bundled config reaches in the same minutes with its
batch size multiplied by 1, 2, 4...

    .venv/bin/python benchmarks/batch_size_equal_time.py                              # the recorded setting
    .venv/bin/python benchmarks/batch_size_equal_time.py --configs made --factors 1,2 --minutes 0.05 \\
        --limit 2000 --test-limit 500                                                 # a smoke run
    .venv/bin/python benchmarks/batch_size_equal_time.py --out benchmarks/results/batch_size_equal_time_cpu_DATE.json

For each config and factor k: the config's batch size times k and its learning rate times sqrt(k) (the
square-root rule that keeps the gradient noise per unit of data; ``--lr-scaling none`` keeps the rate), all
else as bundled (the learning rate's per-epoch decay included). Each run trains with
:func:`dgmlab.train.fit` for ``--minutes`` of wall-clock time (the run ends at the first step after it;
``Deadline``), and the trained model is evaluated once, on the whole test split, with the config's
objective (exact NLL in nats for the autoregressive models, the negative ELBO for the VAEs). The question
it answers: would a larger default batch reach a loss no worse in the same time?
"""

from __future__ import annotations

import argparse
import math
import time
from pathlib import Path
from typing import Any

import torch
from arguments import numbers, write_rows

from dgmlab.config import apply_overrides, build_settings, load_bundled_config
from dgmlab.experiments.runs import prepare
from dgmlab.train import evaluate, fit, steps_in_budget


class Deadline:
    """The training batches of one run, which end the run at the first step after ``seconds`` of training: the
    step that starts past the deadline sets ``settings.max_steps`` to itself, and :func:`dgmlab.train.fit`
    stops after it. Each run of a comparison so gets the same wall-clock time, whatever the machine's noise
    does to its speed (a plan made from probe steps alone can be off by a quarter on a shared machine)."""

    def __init__(self, batches: Any, settings: Any, seconds: float) -> None:
        self.batches, self.settings, self.seconds = batches, settings, seconds
        self.started: float | None = None
        self.steps = 0

    def __len__(self) -> int:
        return len(self.batches)

    def set_epoch(self, epoch: int) -> None:
        self.batches.set_epoch(epoch)

    def __iter__(self) -> Any:
        if self.started is None:
            self.started = time.perf_counter()
        for batch in self.batches:
            if time.perf_counter() - self.started >= self.seconds:
                self.settings.max_steps = self.steps + 1
            self.steps += 1
            yield batch


def run(name: str, factor: int, minutes: float, lr_scaling: str, limit: int | None,
        test_limit: int | None) -> dict[str, Any]:
    base = load_bundled_config(name)
    batch = int(base["data"]["batch_size"]) * factor
    lr = float(base["train"]["lr"]) * (math.sqrt(factor) if lr_scaling == "sqrt" else 1.0)
    overrides = [f"data.batch_size={batch}", f"train.lr={lr!r}", "train.progress=false", 'train.device="cpu"']
    if limit is not None:
        overrides.append(f"data.limit={limit}")
    if test_limit is not None:
        overrides.append(f"data.test_limit={test_limit}")
    config = apply_overrides(base, overrides)
    model, objective, data = prepare(config)
    # enough epochs for twice the steps the probe expects; the deadline ends the run
    planned = steps_in_budget(model, objective, data.train, 60.0 * minutes, margin=1.0)
    settings = build_settings(config)
    settings.epochs = max(1, math.ceil(2 * planned / len(data.train)))
    batches = Deadline(data.train, settings, 60.0 * minutes)
    started = time.perf_counter()
    history = fit(model, objective, batches, None, settings)
    seconds = time.perf_counter() - started
    test = evaluate(model, objective, data.test, seed=settings.seed)
    return {"config": name, "factor": factor, "batch_size": batch, "lr": lr,
            "steps": history.records[-1]["step"], "planned_steps": planned,
            "examples_seen": history.records[-1]["step"] * batch, "train_seconds": round(seconds, 1),
            "epochs": round(history.records[-1]["step"] / len(data.train), 2),
            "test_loss": round(test["loss"], 4), "loss_units": history.records[-1]["units"].get("loss", ""),
            "last_epoch_train_loss": round(history.records[-1]["train"]["loss"], 4)}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--configs", type=numbers(str), default=["vae_bernoulli", "made"],
                        help="comma-separated bundled configs")
    parser.add_argument("--factors", type=numbers(int), default=[1, 2, 4],
                        help="comma-separated batch-size multipliers")
    parser.add_argument("--minutes", type=float, default=1.5, help="training time of every run")
    parser.add_argument("--lr-scaling", choices=("sqrt", "none"), default="sqrt")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--limit", type=int, default=None, help="first N training examples (smoke runs)")
    parser.add_argument("--test-limit", type=int, default=None, help="first N test examples (smoke runs)")
    parser.add_argument("--out", type=Path, default=None, help="write the rows as JSON here")
    args = parser.parse_args(argv)
    factors = args.factors
    if not factors or any(f < 1 for f in factors) or not args.minutes > 0 or args.threads < 1:
        parser.error("--factors must be positive integers, --minutes and --threads positive")
    torch.set_num_threads(args.threads)
    rows = []
    for name in args.configs:
        for factor in factors:
            row = run(name, factor, args.minutes, args.lr_scaling, args.limit, args.test_limit)
            rows.append(row)
            print(f"{name:>14} batch {row['batch_size']:5d} lr {row['lr']:.2e}: {row['steps']:6d} steps "
                  f"({row['epochs']:.2f} epochs) in {row['train_seconds']:.0f} s, test loss {row['test_loss']:.3f}",
                  flush=True)
    if args.out is not None:
        write_rows(args.out, f"{args.minutes} min per run, lr scaling {args.lr_scaling}, {args.threads} threads, "
                             f"cpu", rows)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
