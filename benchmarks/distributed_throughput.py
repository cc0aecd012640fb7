"""Training throughput on 1 and 2 processes (torch.distributed, one thread each) and the scaling efficiency.

    .venv/bin/python benchmarks/distributed_throughput.py                        # MADE and the PixelCNN, CPU
    .venv/bin/python benchmarks/distributed_throughput.py --models made --steps 40
    .venv/bin/python benchmarks/distributed_throughput.py --device cuda --processes 1,2,4,8 --steps 50  # GPUs

For each model and each number of processes N, this script starts ``torchrun --standalone --nproc-per-node N``
on itself (``--worker``), which trains the model with :func:`dgmlab.train.fit` (DistributedDataParallel, each
rank on its slice of every global batch, gloo on the CPU, NCCL on GPUs) for ``--warmup`` untimed steps and then
``--steps`` timed ones, on random binary images, at the same **global** batch for every N (strong scaling: the
run that gives the numbers of one process). Throughput is examples per second of the timed steps on rank 0;
the scaling efficiency is throughput(N) / (N x throughput(1)). On the CPU it also times one process with N
threads, the other way to use the same cores (``--no-same-cores`` leaves it out). The variants are interleaved
over ``--rounds`` rounds and the median is reported. On the CPU each process has one thread
(``OMP_NUM_THREADS=1``), so N = 2 fills a 2-core machine: run it alone, a second job halves the numbers.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

from arguments import numbers  # noqa: E402

# name -> (constructor arguments, image input, global batch)
MODELS = {
    "made": ("MADE", {"num_inputs": 784, "hidden_dims": [1024, 1024], "direct": True, "activation": "gelu"}, False,
             256),
    "pixelcnn": ("PixelCNN", {"channels": 64, "num_layers": 6}, True, 32),
}


def worker(args: argparse.Namespace) -> None:
    from dgmlab import distributed, models
    from dgmlab.data import TensorBatches
    from dgmlab.objectives import exact_nll
    from dgmlab.train import TrainSettings, fit

    with distributed.session(args.device) as group:
        torch.set_num_threads(args.threads)
        class_name, kwargs, image, batch = MODELS[args.model]
        torch.manual_seed(0)
        shape = (1, 28, 28) if image else (784,)
        steps = args.warmup + args.steps
        x = torch.bernoulli(torch.full((batch * steps, *shape), 0.13), generator=torch.Generator().manual_seed(1))
        model = getattr(models, class_name)(**kwargs)

        def objective(m, b):
            return exact_nll(m, b[0])

        settings = TrainSettings(epochs=1, lr=1e-4, device=args.device, progress=False, precision=args.precision)
        # untimed warm-up steps, then the timed run, both through the trainer
        fit(model, objective, TensorBatches(x[:batch * args.warmup], batch_size=batch), settings=settings)
        distributed.barrier()
        if args.device == "cuda":
            torch.cuda.synchronize()
        started = time.perf_counter()
        fit(model, objective, TensorBatches(x[batch * args.warmup:], batch_size=batch), settings=settings)
        if args.device == "cuda":
            torch.cuda.synchronize()
        seconds = time.perf_counter() - started
        if group.is_main:
            Path(args.result).write_text(json.dumps({
                "model": args.model, "processes": group.world_size, "global_batch": batch,
                "per_rank_batch": batch // group.world_size, "steps_timed": args.steps, "seconds": round(seconds, 4),
                "examples_per_second": round(batch * args.steps / seconds, 2)}))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", type=numbers(str), default=list(MODELS))
    parser.add_argument("--processes", type=numbers(int), default=[1, 2])
    parser.add_argument("--steps", type=int, default=20, help="timed steps per run")
    parser.add_argument("--rounds", type=int, default=3, help="rounds over the variants, interleaved; medians")
    parser.add_argument("--warmup", type=int, default=3, help="untimed steps first")
    parser.add_argument("--threads", type=int, default=1, help="threads per process")
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    parser.add_argument("--precision", default="fp32", choices=["fp32", "bf16"])
    parser.add_argument("--same-cores", action=argparse.BooleanOptionalAction, default=True,
                        help="also time one process with N times the threads (CPU; the same cores, no messages)")
    parser.add_argument("--out", type=Path, default=None, help="write the rows as JSON here")
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--model", help=argparse.SUPPRESS)
    parser.add_argument("--result", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        worker(args)
        return
    unknown = sorted(set(args.models) - set(MODELS))
    if unknown:
        parser.error(f"unknown model(s) {', '.join(unknown)}; choose from {', '.join(MODELS)}")
    rows = []
    result = Path(os.environ.get("TMPDIR", "/tmp")) / f"dgmlab_distributed_throughput_{os.getpid()}.json"
    def measure(name: str, n: int, threads: int) -> dict:
        command = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={n}",
                   __file__, "--worker", "--model", name, "--result", str(result), "--steps", str(args.steps),
                   "--warmup", str(args.warmup), "--threads", str(threads), "--device", args.device,
                   "--precision", args.precision]
        env = {**os.environ, "OMP_NUM_THREADS": str(threads)}
        done = subprocess.run(command, env=env, capture_output=True, text=True)
        if done.returncode != 0:
            sys.exit(f"{name} on {n} processes failed:\n{done.stderr[-3000:]}")
        return {**json.loads(result.read_text()), "threads_per_process": threads}

    same_cores = args.same_cores and args.device == "cpu"
    for name in args.models:
        # (processes, threads per process) of every variant, interleaved over the rounds so that a slow patch of
        # a shared machine hits all of them; the median of the rounds is reported
        variants = [(n, args.threads) for n in args.processes]
        variants += [(1, n * args.threads) for n in args.processes if n > 1 and same_cores]
        runs: dict[tuple[int, int], list[dict]] = {v: [] for v in variants}
        for _ in range(args.rounds):
            for n, threads in variants:
                runs[(n, threads)].append(measure(name, n, threads))
        median = {v: statistics.median(r["examples_per_second"] for r in runs[v]) for v in variants}
        single = median.get((1, args.threads))
        for n in args.processes:
            row = {**runs[(n, args.threads)][0], "rounds": args.rounds,
                   "examples_per_second": round(median[(n, args.threads)], 2),
                   "examples_per_second_each_round": [r["examples_per_second"] for r in runs[(n, args.threads)]]}
            row.pop("seconds")
            row["scaling_efficiency"] = round(row["examples_per_second"] / (n * single), 3) if single else None
            line = (f"{name:9s} {n} process(es) x {args.threads} thread(s): {row['examples_per_second']:9.1f} "
                    f"examples/s (global batch {row['global_batch']}), efficiency {row['scaling_efficiency']}")
            if n > 1 and same_cores:
                # the alternative on the same cores: one process with n times the threads
                alone = median[(1, n * args.threads)]
                row["one_process_same_cores_examples_per_second"] = round(alone, 2)
                row["speedup_vs_one_process_same_cores"] = round(row["examples_per_second"] / alone, 3)
                line += (f"; 1 process x {n * args.threads} threads: {alone:.1f} examples/s "
                         f"(ratio {row['speedup_vs_one_process_same_cores']})")
            rows.append(row)
            print(line, flush=True)
    result.unlink(missing_ok=True)
    report = {"device": args.device, "threads_per_process": args.threads, "precision": args.precision,
              "torch": torch.__version__, "rows": rows}
    if args.out is not None:
        args.out.write_text(json.dumps(report, indent=2) + "\n")
        print(f"written to {args.out}")


if __name__ == "__main__":
    main()
