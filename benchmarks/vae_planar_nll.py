"""Planar-flow posteriors (Rezende & Mohamed 2015) on dynamically binarized MNIST: test -ELBO and -L_k against K.

    .venv/bin/python benchmarks/vae_planar_nll.py                  # K = 0, 10, 40: 30 min each on 2 CPU cores
    .venv/bin/python benchmarks/vae_planar_nll.py --minutes 1 --eval-k 100 --eval-limit 1000   # a short run
    .venv/bin/python benchmarks/vae_planar_nll.py --smoke          # the script end to end in seconds
    .venv/bin/python benchmarks/vae_planar_nll.py --eval-only --device cuda   # L_5000 of trained runs on a GPU

    # the same budget on a busy machine: plan it on the quiet machine, train the rows side by side, then report
    .venv/bin/python benchmarks/vae_planar_nll.py --plan --threads 2 --out runs/planar
    .venv/bin/python benchmarks/vae_planar_nll.py --flows 40 --threads 1 --eval-limit 2000 --out runs/planar &
    ...                                                                    # one process per K
    .venv/bin/python benchmarks/vae_planar_nll.py --report --eval-limit 2000 --out runs/planar

For each flow length K (``--flows``, default 0, 10, 40) one ``PlanarVAE`` trains for the same CPU budget
(``--minutes``). K = 0 is exactly the VAE of benchmarks/vae_mnist_nll.py (same modules, same initialisation from
the same seed); K > 0 adds the amortised planar flow, a linear head on the encoder's last hidden layer giving the
K(2d + 1) flow parameters of each image (dgmlab.models.flow_vae). Everything else is that benchmark's: a
784-1024-1024-(2 x 32) MLP with GELU, Bernoulli decoder whose output bias starts at the logit of the training
mean, a linear KL warm-up (its ``WarmupELBO``), the learning rate decaying exponentially from 2e-3 to 1e-4 over
the epochs that the budget allows on this machine (``epochs_in_budget``, measured per K: a longer flow costs
more per step), and the evaluated weights an exponential moving average (decay 0.999). The KL term is analytic
for K = 0 and a one-sample Monte-Carlo estimate for K > 0 (no closed form), in training and in the test -ELBO.

Evaluation: the 10,000 test images are binarized once with a fixed seed (as benchmarks/vae_mnist_nll.py); the
test -ELBO is over all of them (``--test-limit`` for fewer), and -L_k (k = ``--eval-k``, 5,000 by default)
over the first ``--eval-limit`` (0: all); where those differ the -ELBO of the L_k images is reported too, so the
two bounds of a row are on the same images. Writes ``result.json`` and ``bound_vs_flow_length.png`` to ``--out``.

A budget is a number of epochs: ``epochs_in_budget`` measures seconds per step on this machine and the run stops at
the time limit too. On a machine that other work shares, both would shrink the budget and make it differ between
rows, so ``--plan`` measures every K once (run it alone, with the threads the budget is meant for) and writes
``plan.json`` to ``--out``; a training run that finds its K in ``plan.json`` trains exactly those epochs with no
time limit, whatever else runs beside it, and each row is also written to ``K<k>/row.json``. ``--report`` then
gathers the rows of ``--flows`` into ``result.json``, the figure and the table.

Reference: Rezende & Mohamed (2015), Table 2, bounds on -ln p(x) in nats on binarized MNIST for a DLGM with a
diagonal Gaussian posterior and with K planar steps (``PAPER_TABLE2``). They are variational bounds (compare them
with the -ELBO column, not with -L_k), from the paper's own architecture and a far longer training; the numbers
are the commonly quoted ones, of which only K = 80 (85.1) was checked against an independent source here.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from pathlib import Path

import torch
from matplotlib.figure import Figure

from dgmlab import plots
from dgmlab.checkpoint import load_weights
from dgmlab.data import TensorBatches, mnist_tensors
from dgmlab.evaluate import importance_weighted_nll_per_example
from dgmlab.models import PlanarVAE, count_parameters
from dgmlab.objectives import negative_elbo
from dgmlab.train import TrainSettings, epochs_in_budget, evaluate, fit, resolve_device

sys.path.insert(0, str(Path(__file__).resolve().parent))
from vae_mnist_nll import WarmupELBO, add_recipe_arguments  # noqa: E402  (the recipe, shared with that benchmark)

# Rezende & Mohamed (2015), Table 2: -ln p(x) <= these (nats), DLGM with a diagonal Gaussian (K = 0) and with K
# planar steps. As commonly quoted; K = 80 (85.1) agrees with an independent secondary source, the rest unverified.
PAPER_TABLE2 = {0: 89.9, 10: 87.5, 20: 86.5, 40: 85.7, 80: 85.1}
SMOKE = {"minutes": 0.05, "epochs": 1, "train_limit": 1024, "test_limit": 500, "eval_k": 10, "eval_limit": 200}


def _flow_lengths(text: str) -> list[int]:
    try:
        values = [int(part) for part in text.split(",") if part.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"--flows takes flow lengths separated by commas, e.g. 0,10,40; got "
                                         f"{text!r}") from None
    if not values or min(values) < 0:
        raise argparse.ArgumentTypeError(f"--flows needs flow lengths >= 0, got {text!r}")
    return values


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--flows", type=_flow_lengths, default=[0, 10, 40], help="flow lengths K, e.g. 0,10,40")
    add_recipe_arguments(parser, budget_help="training time budget per flow length")
    parser.add_argument("--train-limit", type=int, default=0, help="train on the first N images (0: all)")
    parser.add_argument("--test-limit", type=int, default=0, help="test -ELBO on the first N test images (0: all)")
    parser.add_argument("--out", type=Path, default=Path("runs/bench_vae_planar"))
    parser.add_argument("--overwrite", action="store_true", help="replace the runs that --out holds already")
    parser.add_argument("--eval-only", action="store_true",
                        help="evaluate the trained runs in --out (e.g. on a GPU) instead of training")
    parser.add_argument("--plan", action="store_true",
                        help="measure the epochs the budget allows for each K on this machine now, write them to "
                             "--out/plan.json for later training runs, and stop")
    parser.add_argument("--report", action="store_true",
                        help="gather the rows that separate runs wrote to --out/K<k>/row.json into one result")
    parser.add_argument("--smoke", action="store_true",
                        help="tiny settings to check the script (" + ", ".join(f"{k}={v}" for k, v in SMOKE.items())
                             + ")")
    return parser


def build(args: argparse.Namespace, flow_length: int) -> PlanarVAE:
    """The model of one row, initialised from ``--seed`` (encoder and decoder identical for every K)."""
    torch.manual_seed(args.seed)
    return PlanarVAE(784, [*args.hidden, 2 * args.latent], likelihood="bernoulli", activation=args.activation,
                     flow_length=flow_length)


def _batches(args: argparse.Namespace, x_train: torch.Tensor, transform, device: torch.device) -> TensorBatches:
    return TensorBatches(x_train.to(device), batch_size=args.batch_size, seed=args.seed, transform=transform)


def _budget_epochs(args: argparse.Namespace, model: PlanarVAE, train: TensorBatches) -> int:
    return epochs_in_budget(model, lambda m, b: negative_elbo(m, b[0]), train, args.minutes * 60, probe_steps=60)


def plan(args: argparse.Namespace, x_train: torch.Tensor, transform, device: torch.device) -> dict[str, object]:
    """The epochs the budget allows for every K of ``--flows``, measured now on this machine, as ``plan.json``."""
    plan_path = args.out / "plan.json"
    if plan_path.exists() and not args.overwrite:
        raise SystemExit(f"{plan_path} exists already: pass --overwrite to measure the budget again")
    train = _batches(args, x_train, transform, device)
    epochs = {}
    for flow_length in args.flows:
        model = build(args, flow_length)
        model.set_output_bias(x_train.mean(0))
        epochs[str(flow_length)] = _budget_epochs(args, model, train)
        print(f"K = {flow_length}: {epochs[str(flow_length)]} epochs in {args.minutes} min", flush=True)
    result = {"budget_minutes_per_K": args.minutes, "threads": torch.get_num_threads(), "device": str(device),
              "batch_size": args.batch_size, "train_images": len(x_train), "epochs": epochs,
              "planned_at": time.strftime("%Y-%m-%d %H:%M:%S"), "command": " ".join(sys.argv)}
    plan_path.write_text(json.dumps(result, indent=2) + "\n")
    return result


def planned_epochs(args: argparse.Namespace, flow_length: int) -> int | None:
    """The epochs that ``--out/plan.json`` holds for ``flow_length`` (None without a plan or with ``--epochs``)."""
    plan_path = args.out / "plan.json"
    if args.epochs or not plan_path.exists():
        return None
    plan = json.loads(plan_path.read_text())
    if plan["budget_minutes_per_K"] != args.minutes or plan["batch_size"] != args.batch_size:
        raise SystemExit(f"{plan_path} plans {plan['budget_minutes_per_K']} min at batch {plan['batch_size']}, this "
                         f"run asks for {args.minutes} min at batch {args.batch_size}: match them, or plan again "
                         f"with --plan --overwrite")
    return plan["epochs"].get(str(flow_length))


def train_one(args: argparse.Namespace, flow_length: int, x_train: torch.Tensor, transform, device: torch.device,
              run: Path) -> tuple[PlanarVAE, dict[str, object]]:
    """Train the model with ``flow_length`` planar steps for the budget into ``run``; returns it with its facts."""
    model = build(args, flow_length)
    train = _batches(args, x_train, transform, device)
    model.set_output_bias(x_train.mean(0))
    from_plan = planned_epochs(args, flow_length)
    epochs = args.epochs or from_plan or _budget_epochs(args, model, train)
    # lr decays exponentially from --lr to --lr-final over the planned epochs
    lr_decay = (args.lr_final / args.lr) ** (1 / max(epochs - 1, 1))
    source = "from plan.json, no time limit" if from_plan else f"budget {args.minutes} min"
    print(f"K = {flow_length}: training {epochs} epochs ({source})", flush=True)
    # a planned budget is its epochs: other work beside the run slows it down but must not cut it short
    time_limit = None if (args.epochs or from_plan) else args.minutes * 60
    settings = TrainSettings(epochs=epochs, lr=args.lr, lr_decay=lr_decay, seed=args.seed, device=str(device),
                             time_limit=time_limit, progress=False, ema_decay=args.ema_decay or None)
    started = time.perf_counter()
    history = fit(model, WarmupELBO(args.warmup_epochs), train, settings=settings, run_dir=run,
                  overwrite=args.overwrite,
                  config={"benchmark": "vae_planar_nll", **vars(args), "flows": args.flows, "flow_length": flow_length,
                          "out": str(args.out)})
    return model, {"epochs": len(history.records), "planned_epochs": epochs, "budget_from_plan": bool(from_plan),
                   "train_minutes": round((time.perf_counter() - started) / 60, 2),
                   "train_neg_elbo_last_epoch_nats": round(history.last("train", "neg_elbo"), 3)}


def evaluate_one(args: argparse.Namespace, model: PlanarVAE, x_test: torch.Tensor, device: torch.device,
                 run: Path | None = None) -> dict[str, object]:
    """Test -ELBO on ``x_test`` and -L_k on its first ``--eval-limit`` images, in nats, with the standard error
    of the -L_k mean; the -L_k of every image goes to ``run/test_nll_L<k>.json`` for paired comparisons."""
    elbo = lambda m, b: negative_elbo(m, b[0])  # noqa: E731  (analytic KL for K = 0, Monte Carlo for K > 0)
    test = TensorBatches(x_test.to(device), batch_size=1000, shuffle=False)
    row: dict[str, object] = {"test_neg_elbo_nats": round(evaluate(model, elbo, test, device, seed=123)["loss"], 3),
                              "test_images": len(x_test)}
    subset = x_test[: args.eval_limit] if args.eval_limit else x_test
    if len(subset) < len(x_test):
        subset_batches = TensorBatches(subset.to(device), batch_size=1000, shuffle=False)
        row["subset_neg_elbo_nats"] = round(evaluate(model, elbo, subset_batches, device, seed=123)["loss"], 3)
    started = time.perf_counter()
    per_image = importance_weighted_nll_per_example(model, subset, args.eval_k, args.eval_batch, args.chunk)
    nll = float(per_image.mean())
    assert math.isfinite(nll)
    row.update({f"test_nll_L{args.eval_k}_nats": round(nll, 3),
                f"test_nll_L{args.eval_k}_standard_error": round(float(per_image.std() / math.sqrt(len(per_image))), 3)
                if len(per_image) > 1 else None,
                "eval_images": len(subset),
                "eval_minutes": round((time.perf_counter() - started) / 60, 2), "eval_device": str(device)})
    if run is not None:
        (run / f"test_nll_L{args.eval_k}.json").write_text(json.dumps([round(v, 4) for v in per_image.tolist()]))
    return row


def paired_differences(out: Path, rows: list[dict[str, object]], eval_k: int) -> dict[str, dict[str, float]]:
    """-L_k of each K > 0 minus that of the first row (K = 0), image by image on the same test images: the mean
    difference and its standard error (far smaller than either row's own, which the spread of images dominates)."""
    values = {}
    for row in rows:
        path = out / f"K{row['K']}" / f"test_nll_L{eval_k}.json"
        if path.exists():
            values[int(row["K"])] = torch.tensor(json.loads(path.read_text()), dtype=torch.float64)
    base = int(rows[0]["K"])
    if base not in values:
        return {}
    differences = {}
    for k, v in values.items():
        if k == base or len(v) != len(values[base]) or len(v) < 2:
            continue
        d = v - values[base]
        differences[f"K{k}-K{base}"] = {"mean_nats": round(float(d.mean()), 3),
                                        "standard_error": round(float(d.std() / math.sqrt(len(d))), 3)}
    return differences


def figure(rows: list[dict[str, object]], eval_k: int) -> Figure:
    """Test bounds against the flow length: our -ELBO and -L_k beside the paper's Table 2 bounds."""
    fig = Figure(figsize=(6.0, 4.0), constrained_layout=True)
    ax = fig.add_subplot()
    flows = [int(row["K"]) for row in rows]
    ax.plot(flows, [row["test_neg_elbo_nats"] for row in rows], "o-", label=f"-ELBO ({rows[0]['test_images']} images)")
    subset_key = "subset_neg_elbo_nats" if "subset_neg_elbo_nats" in rows[0] else "test_neg_elbo_nats"
    if subset_key != "test_neg_elbo_nats":
        ax.plot(flows, [row[subset_key] for row in rows], "o:", label=f"-ELBO ({rows[0]['eval_images']} images)")
    ax.plot(flows, [row[f"test_nll_L{eval_k}_nats"] for row in rows], "s-",
            label=f"-L_{eval_k} ({rows[0]['eval_images']} images)")
    ax.plot(list(PAPER_TABLE2), list(PAPER_TABLE2.values()), "^--", color="grey",
            label="Rezende & Mohamed 2015, Table 2 (bound)")
    ax.set_xlabel("flow length K (planar steps)")
    ax.set_ylabel("test bound on -ln p(x) (nats)")
    ax.set_title("Planar-flow VAE, dynamically binarized MNIST")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    return fig


def table(rows: list[dict[str, object]], eval_k: int) -> str:
    """The rows as one text table, with the paper's bound for the same K where it has one."""
    subset = "subset_neg_elbo_nats" in rows[0]
    header = ["K", "params", "epochs", "train min", f"-ELBO ({rows[0]['test_images']})"]
    header += [f"-ELBO ({rows[0]['eval_images']})"] if subset else []
    header += [f"-L_{eval_k} ({rows[0]['eval_images']})", "paper bound"]
    lines = [header]
    for row in rows:
        paper = PAPER_TABLE2.get(int(row["K"]))
        cells = [row["K"], row["parameters"], row["epochs"], row["train_minutes"], row["test_neg_elbo_nats"]]
        cells += [row["subset_neg_elbo_nats"]] if subset else []
        cells += [row[f"test_nll_L{eval_k}_nats"], "-" if paper is None else f"<= {paper}"]
        lines.append([str(cell) for cell in cells])
    widths = [max(len(line[i]) for line in lines) for i in range(len(header))]
    text = ["  ".join(cell.rjust(width) for cell, width in zip(line, widths, strict=True)) for line in lines]
    paper_row = ", ".join(f"K={k}: {v}" for k, v in PAPER_TABLE2.items())
    return "\n".join([*text, f"Rezende & Mohamed 2015 Table 2 (nats, bounds; K=0 is the diagonal DLGM): {paper_row}"])


def _result(args: argparse.Namespace, rows: list[dict[str, object]], wall_minutes: float | None, train_images: int,
            device: torch.device) -> dict[str, object]:
    plan_path = args.out / "plan.json"
    return {
        "benchmark": "vae_planar_nll",
        "model": f"PlanarVAE(784, {[*args.hidden, 2 * args.latent]}, bernoulli, {args.activation}, flow_length=K)",
        "data": "dynamically binarized MNIST (train); test binarized once, seed 123",
        "budget_minutes_per_K": args.minutes, "train_images": train_images, "train_device": str(device),
        "budget_plan": json.loads(plan_path.read_text()) if plan_path.exists() else None,
        "wall_minutes": wall_minutes,
        "process_minutes": {str(row["K"]): round(float(row["train_minutes"]) + float(row["eval_minutes"]), 2)
                            for row in rows},
        "rows": rows,
        f"paired_L{args.eval_k}_differences": paired_differences(args.out, rows, args.eval_k),
        "paper_table2_nats": PAPER_TABLE2,
        "paper_note": "Rezende & Mohamed (2015) Table 2, variational bounds on -ln p(x); commonly quoted values, "
                      "K = 80 checked against one independent secondary source, the others unverified",
        "command": " ".join(sys.argv),
    }


def _write_result(args: argparse.Namespace, result: dict[str, object]) -> None:
    rows = result["rows"]
    (args.out / "result.json").write_text(json.dumps(result, indent=2) + "\n")
    plots.save_figure(figure(rows, args.eval_k), args.out / "bound_vs_flow_length.png")
    print(table(rows, args.eval_k))
    for name, difference in result[f"paired_L{args.eval_k}_differences"].items():
        print(f"paired -L_{args.eval_k} difference {name}: {difference['mean_nats']:+.3f} "
              f"+- {difference['standard_error']:.3f} nats (same images)")
    print(f"wall time {result['wall_minutes']} min, per K {result['process_minutes']}; wrote "
          f"{args.out / 'result.json'} and {args.out / 'bound_vs_flow_length.png'}")


def report(args: argparse.Namespace) -> None:
    """One result from the ``K<k>/row.json`` that separate runs of ``--flows`` wrote to ``--out``."""
    missing = [k for k in args.flows if not (args.out / f"K{k}" / "row.json").exists()]
    if missing:
        raise SystemExit(f"no row for K = {', '.join(map(str, missing))} in {args.out}: train those first (one "
                         f"run per K, same --out), or leave them out of --flows")
    rows = [json.loads((args.out / f"K{k}" / "row.json").read_text()) for k in args.flows]
    keys = {f"test_nll_L{args.eval_k}_nats" in row and row["eval_images"] for row in rows}
    if len(keys) != 1 or False in keys:
        raise SystemExit(f"the rows do not share one evaluation (-L_{args.eval_k} on the same images): "
                         f"{[(row['K'], row.get('eval_images')) for row in rows]}; evaluate them alike")
    # the rows ran as separate processes, maybe side by side: their minutes are kept per K, with no wall time
    _write_result(args, _result(args, rows, None, int(rows[0]["train_images"]), torch.device(rows[0]["eval_device"])))


def main() -> None:
    args = _parser().parse_args()
    if args.smoke:
        for key, value in SMOKE.items():
            setattr(args, key, value)
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.report:
        report(args)
        return
    device = resolve_device(args.device)
    x_train, _, transform = mnist_tensors("train", view="dynamic", seed=args.seed, limit=args.train_limit or None)
    args.out.mkdir(parents=True, exist_ok=True)
    if args.plan:
        plan(args, x_train, transform, device)
        return
    x_test, _, _ = mnist_tensors("test", view="static", seed=123)
    if args.test_limit:
        x_test = x_test[: args.test_limit]
    started = time.perf_counter()
    rows = []
    for flow_length in args.flows:
        run = args.out / f"K{flow_length}"
        if args.eval_only:
            # the architecture of a finished run comes from its own config.json, not from this command line
            trained = json.loads((run / "config.json").read_text())
            args.hidden, args.latent, args.activation = trained["hidden"], trained["latent"], trained["activation"]
            model = build(args, flow_length)
            load_weights(run / "checkpoint", model)
            model.to(device)
            records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines() if line.strip()]
            facts = {"epochs": len(records), "train_minutes": round(sum(r["seconds"] for r in records) / 60, 2),
                     "train_neg_elbo_last_epoch_nats": round(records[-1]["train"]["neg_elbo"], 3)}
        else:
            model, facts = train_one(args, flow_length, x_train, transform, device, run)
        row = {"K": flow_length, "parameters": count_parameters(model), **facts, "train_images": len(x_train),
               "threads": torch.get_num_threads(), **evaluate_one(args, model, x_test, device, run)}
        rows.append(row)
        (run / "row.json").write_text(json.dumps(row, indent=2) + "\n")
        print(json.dumps(row), flush=True)
    _write_result(args, _result(args, rows, round((time.perf_counter() - started) / 60, 2), len(x_train), device))


if __name__ == "__main__":
    main()
