"""The ``dgmlab`` command line: thin, it parses arguments and calls the library.

Subcommands::

    dgmlab train --config vae_mc [--out runs/x] [--epochs N] [--lr X] [--set table.key=value]
    dgmlab configs                                 # the bundled configs, by name
    dgmlab train --resume runs/x [--epochs N]      # continue a run from its last checkpoint
    dgmlab train --config vae_mc --overwrite       # replace the run in runs/vae_mc (without it: refused)
    dgmlab eval runs/x [--iw-samples 5000]         # test-set metrics of a trained run
    dgmlab sample runs/x [--n 64] [--class 7]      # a grid of samples (of one class, if conditional)
    dgmlab pset1 [--quick] [--out DIR]             # problem set 1, end to end, with a report
    dgmlab potentials [--quick] [--out DIR]        # Rezende & Mohamed's Figure 3: flows fitted to 2-D potentials
    dgmlab residual-estimators [--quick]           # every i-ResNet estimator against its exact value
    dgmlab toy2d [--quick] [--out DIR]             # i-ResNet, Residual Flow, RealNVP on 2-D densities, exact LL
    dgmlab denoise IMAGE --method epll --sigma 25 --out clean.png   # any greyscale image file

Every error a user can cause (a missing file, an unknown model name, a negative learning rate...) ends the
program with one line that says what is wrong and the valid choices, and exit status 2.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from dgmlab import __version__


class CLIError(Exception):
    """A wrong combination of command-line arguments, reported on one line."""


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be a positive integer, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be a positive integer, got {text!r}")
    return value


def _nonnegative_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be an integer >= 0, got {text!r}") from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be an integer >= 0, got {text!r}")
    return value


def _positive_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be a positive number, got {text!r}") from None
    if not value > 0 or value == float("inf"):
        raise argparse.ArgumentTypeError(f"must be a positive number, got {text!r}")
    return value


def _nonnegative_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be a number >= 0, got {text!r}") from None
    if not 0 <= value < float("inf"):
        raise argparse.ArgumentTypeError(f"must be a number >= 0, got {text!r}")
    return value


DEVICE_CHOICES = ("auto", "cpu", "cuda", "mps")
PRECISION_CHOICES = ("fp32", "bf16")  # dgmlab.train.PRECISIONS (kept here so --help needs no torch import)
# dgmlab.denoising.METHODS
DENOISE_METHODS = ("epll", "epll_adapted", "dip", "bm3d", "nl_means", "tv", "wavelet", "wiener", "gaussian")



def _experiment_arguments(parser: argparse.ArgumentParser, out: str, *, quick: str, workers: bool = False,
                          config: tuple[str, str] | None = None) -> None:
    """The arguments every experiment command shares: --out (refused if it holds results, unless --overwrite),
    [--config (a default and its help),] --quick, --seed, --overwrite[, --workers]."""
    parser.add_argument("--out", type=Path, default=Path(out),
                        help=f"output folder (default {out}); it must not hold results yet, unless --overwrite")
    if config is not None:
        parser.add_argument("--config", default=config[0], help=config[1])
    parser.add_argument("--quick", action="store_true", help=quick)
    parser.add_argument("--seed", type=_nonnegative_int, default=0)
    parser.add_argument("--overwrite", action="store_true", help="replace the results already in --out")
    if workers:
        parser.add_argument("--workers", type=_nonnegative_int, default=None,
                            help="processes of one thread (default: 2 on a machine with two or more cores; 0: here)")

def build_parser() -> argparse.ArgumentParser:
    """The argument parser of ``dgmlab`` (also used to generate the CLI reference of the docs)."""
    parser = argparse.ArgumentParser(
        prog="dgmlab",
        description="Deep generative models of MIT 6.S978: train, evaluate, sample, reproduce problem set 1, and "
                    "run the experiments of the notes.",
    )
    parser.add_argument("--version", action="version", version=f"dgmlab {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True

    train = sub.add_parser("train", help="train a model from a TOML config file, or resume a run",
                           description="Train a model from a TOML config file or a bundled config by name "
                                       "(dgmlab configs lists them), or resume a run.")
    source = train.add_mutually_exclusive_group(required=True)
    source.add_argument("--config", metavar="CONFIG",
                        help="a TOML file with [model], [data], [objective], [train], or the name of a bundled "
                             "config (dgmlab configs lists them), e.g. vae_mc")
    source.add_argument("--resume", type=Path, metavar="RUN_DIR", help="continue this run from its checkpoint")
    train.epilog = ("A run is never replaced by accident: training into a folder that already holds a run "
                    "(config.json, metrics.jsonl or a checkpoint) stops with an error; continue that run with "
                    "--resume, replace it with --overwrite, or choose another --out. A folder that another process "
                    "is training in is refused. With [train] checkpoint_every_minutes = M in the config (or --set "
                    "train.checkpoint_every_minutes=M), a checkpoint is also written inside an epoch every M "
                    "minutes, and --resume continues from it exactly.")
    train.add_argument("--out", type=Path, help="run directory (default: runs/<config name>); it must not hold a "
                                                "run yet, unless --overwrite")
    train.add_argument("--overwrite", action="store_true",
                       help="replace the run already in --out (its config, metrics, checkpoint, eval.json and "
                            "figures; other files stay); not with --resume")
    train.add_argument("--epochs", type=_positive_int, help="number of epochs (on resume: the new total)")
    train.add_argument("--lr", type=_positive_float, help="Adam learning rate")
    train.add_argument("--batch-size", type=_positive_int, help="examples per batch")
    train.add_argument("--seed", type=_nonnegative_int, help="random seed")
    train.add_argument("--device", choices=DEVICE_CHOICES, help="where to train (default auto: cuda, mps, cpu)")
    train.add_argument("--precision", choices=PRECISION_CHOICES,
                       help="fp32 (default) or bf16: training steps under bfloat16 autocast, weights and "
                            "evaluation in fp32 (faster where the CPU or GPU has native bfloat16, e.g. AVX-512 BF16)")
    train.add_argument("--compile", action="store_true",
                       help="run each training step's forward pass and loss under torch.compile (inductor; "
                            "needs a C++ compiler on the CPU, else it warns and trains without); evaluation "
                            "is not compiled")
    train.add_argument("--set", dest="overrides", action="append", default=[], metavar="TABLE.KEY=VALUE",
                       help="override any config value, e.g. --set objective.coeff=1e-3 (repeatable)")
    train.add_argument("--no-progress", action="store_true", help="no progress bars")

    evaluate = sub.add_parser("eval", help="evaluate a trained run on the test split",
                              description="Evaluate a trained run on the test split and write eval.json.")
    evaluate.add_argument("run_dir", type=Path, metavar="RUN_DIR")
    evaluate.add_argument("--iw-samples", type=_nonnegative_int, default=0,
                          help="importance samples k for the L_k NLL bound of a VAE (0: skip; 5000: the paper's)")
    evaluate.add_argument("--device", choices=DEVICE_CHOICES, default="auto")
    exact = evaluate.add_mutually_exclusive_group()
    exact.add_argument("--exact-logdet", dest="exact_logdet", action="store_const", const=True, default=None,
                       help="for a flow whose log-determinant is estimated (i-ResNet, residual flow): also compute "
                            "the exact log-likelihood by the autograd Jacobian, whatever the dimension (default: "
                            "only for examples of at most 64 values; the cost grows as d backward passes)")
    exact.add_argument("--no-exact-logdet", dest="exact_logdet", action="store_const", const=False,
                       help="report only the estimate, even where the exact value is cheap")

    sample = sub.add_parser("sample", help="draw samples from a trained run",
                            description="Draw samples from a trained run and save them as a PNG grid.")
    sample.add_argument("run_dir", type=Path, metavar="RUN_DIR")
    sample.add_argument("--n", type=_positive_int, default=64, help="number of samples (default 64)")
    sample.add_argument("--seed", type=_nonnegative_int, default=0)
    sample.add_argument("--out", type=Path, help="PNG file (default RUN_DIR/samples.png)")
    sample.add_argument("--temperature", type=_nonnegative_float, default=None, metavar="T",
                        help="for a flow: sample z = T * noise (0: the image of the base's mode; 0.7 is Glow's "
                             "favourite; default 1, the model itself)")
    sample.add_argument("--class", dest="label", type=_nonnegative_int, default=None, metavar="LABEL",
                        help="for a class-conditional model: the class to sample (default: every class in turn)")

    sub.add_parser("configs", help="list the bundled configs (use one with dgmlab train --config NAME)",
                   description="List the configs that ship with dgmlab, by name, with what each trains.")

    pset1 = sub.add_parser("pset1", help="reproduce problem set 1 end to end and write report.html",
                           description="Run every experiment of problem set 1 and write a report.")
    pset1.add_argument("--quick", action="store_true", help="few epochs, for a smoke test (under a minute)")
    pset1.add_argument("--out", type=Path, default=Path("runs/pset1"),
                       help="run directory (default runs/pset1); it must not hold a pset1 run or any of its runs "
                            "yet, unless --overwrite")
    pset1.add_argument("--overwrite", action="store_true",
                       help="replace the pset1 run already in --out: its report, metrics and every run it trained")
    pset1.add_argument("--device", choices=DEVICE_CHOICES, default="auto")
    pset1.add_argument("--seed", type=_nonnegative_int, default=0)
    pset1.add_argument("--no-progress", action="store_true", help="no progress bars")
    pset1.add_argument("--workers", type=_nonnegative_int, default=None,
                       help="processes for the MNIST experiments (default: 2 on a CPU, one thread each; "
                            "0: all in order in this process)")

    potentials = sub.add_parser("potentials", help="fit planar and radial flows to the 2-D potentials of Rezende & "
                                                   "Mohamed's Figure 3",
                                description="Fit every flow and length of a potentials config to the four 2-D "
                                            "potentials of Rezende & Mohamed (2015) by reverse KL and write "
                                            "results.json, table.md and figure.png.")
    _experiment_arguments(potentials, "runs/potentials", quick="the config's [quick] settings (seconds)",
                          workers=True, config=("planar_potentials", "a bundled potentials config by name or a TOML "
                                                                     "file (default planar_potentials)"))
    potentials.add_argument("--no-progress", action="store_true", help="no line per finished fit")

    residual = sub.add_parser("residual-estimators",
                              help="measure every estimator of the invertible residual block against its exact "
                                   "value",
                              description="Measure the fixed-point inverse against Banach's bounds, the truncated "
                                          "power series of ln det(I + J_g) against its truncation bound, the "
                                          "variance of Gaussian and Rademacher Hutchinson probes against "
                                          "2||A_s||_F^2, and the Russian-roulette estimator's bias and cost, all "
                                          "in float64 against the exact values from the autograd Jacobian; write "
                                          "results.json, table.md and four figures.")
    _experiment_arguments(residual, "runs/residual_estimators", quick="fewer points, probes and draws (seconds)")

    toy2d = sub.add_parser("toy2d", help="fit an i-ResNet, a Residual Flow and a RealNVP to four 2-D densities",
                           description="Fit an i-ResNet, a Residual Flow and a RealNVP of matched parameter counts "
                                       "to the checkerboard, eight Gaussians, two moons and rings by maximum "
                                       "likelihood; report each model's held-out log-likelihood with the exact "
                                       "log-determinant beside the data's own E[log p], and write results.json, "
                                       "table.md and densities.png.")
    _experiment_arguments(toy2d, "runs/toy2d", quick="smaller models and fewer steps (seconds)", workers=True)

    denoise = sub.add_parser("denoise", help="denoise a greyscale image file with EPLL, the deep image prior, BM3D "
                                             "or a classical denoiser",
                             description="Denoise a greyscale image file (PNG, TIFF, JPEG...; 8 or 16 bits) and write "
                                         "the result as a PNG of the same bit depth. The noise is taken to be "
                                         "Gaussian with standard deviation --sigma on the 0..255 scale.")
    denoise.add_argument("image", type=Path, metavar="IMAGE", help="the noisy greyscale image (with --add-noise: "
                                                                    "a clean one)")
    denoise.add_argument("--out", type=Path, required=True, help="the PNG to write; an existing file is refused "
                                                                  "unless --overwrite")
    denoise.add_argument("--method", choices=DENOISE_METHODS, default="epll",
                         help="epll (default: the bundled K = 200 patch prior), epll_adapted (that prior first "
                              "adapted to the image's own patches by EM; for images of about 100x100 pixels or "
                              "more: on smaller ones it loses to epll), dip (the deep image prior), bm3d, or "
                              "a classical denoiser with its parameter tuned per noise level: nl_means, tv, "
                              "wavelet, wiener, gaussian")
    denoise.add_argument("--sigma", type=_positive_float, default=None, metavar="SIGMA",
                         help="the noise's standard deviation on the 0..255 scale, e.g. 25 (default: estimated from "
                              "the image)")
    denoise.add_argument("--prior", type=Path, default=None, metavar="FILE",
                         help="for epll and epll_adapted: a patch prior in safetensors (written by "
                              "dgmlab.models.mixtures.save_mixture; default: the bundled natural-image prior)")
    denoise.add_argument("--clean", type=Path, default=None, metavar="REFERENCE",
                         help="a clean image of the same size: report the PSNR of the input and of the result")
    denoise.add_argument("--add-noise", action="store_true",
                         help="IMAGE is clean: add Gaussian noise of --sigma (seeded) first, and report the PSNR")
    denoise.add_argument("--noisy-out", type=Path, default=None, metavar="PNG",
                         help="with --add-noise: also write the noisy image here (clipped to the file's range)")
    denoise.add_argument("--iterations", type=_positive_int, default=2000,
                         help="for dip: the Adam steps before stopping (default 2000, tuned at sigma 25 on 128x128 "
                              "crops)")
    denoise.add_argument("--seed", type=_nonnegative_int, default=0, help="the noise's and the deep image prior's seed")
    denoise.add_argument("--overwrite", action="store_true", help="replace --out (and --noisy-out) if they exist")
    denoise.add_argument("--no-progress", action="store_true", help="no progress bar for dip")
    return parser


def _train(args: argparse.Namespace) -> None:
    from dgmlab.experiments.runs import resume_run, train_run

    overrides = list(args.overrides)
    for flag, key in (("epochs", "train.epochs"), ("lr", "train.lr"), ("batch_size", "data.batch_size"),
                      ("seed", "train.seed")):
        value = getattr(args, flag)
        if value is not None:
            overrides.append(f"{key}={value!r}")
    if args.device is not None:
        overrides.append(f'train.device="{args.device}"')
    if args.precision is not None:
        overrides.append(f'train.precision="{args.precision}"')
    if args.no_progress:
        overrides.append("train.progress=false")
    if args.compile:
        overrides.append("train.compile=true")
    if args.resume is not None:
        if args.overwrite:
            raise CLIError("--resume continues a run and --overwrite replaces it; give one of them")
        if args.out is not None or args.overrides or args.lr or args.batch_size or args.seed is not None:
            raise CLIError("--resume continues a run with its own config; only --epochs, --device, --precision, "
                           "--compile and --no-progress may be given with it")
        run_dir = resume_run(args.resume, epochs=args.epochs, device=args.device, precision=args.precision,
                             progress=not args.no_progress, compile=True if args.compile else None)
    else:
        run_dir = train_run(args.config, out=args.out, overrides=overrides, overwrite=args.overwrite)
    _report(f"run written to {run_dir}")


def _eval(args: argparse.Namespace) -> None:
    from dgmlab.experiments.runs import evaluate_run

    results = evaluate_run(args.run_dir, iw_samples=args.iw_samples, device=args.device,
                           exact_logdet=args.exact_logdet)
    _report(json.dumps(results, indent=2))


def _sample(args: argparse.Namespace) -> None:
    from dgmlab.experiments.runs import sample_run

    path = sample_run(args.run_dir, n=args.n, seed=args.seed, out=args.out, label=args.label,
                      temperature=args.temperature)
    print(f"samples written to {path}")


def _configs(args: argparse.Namespace) -> None:
    from dgmlab.config import bundled_configs

    configs = bundled_configs()
    width = max(map(len, configs))
    for name, summary in configs.items():
        print(f"{name:<{width}}  {summary}")
    print(f"\ntrain one with: dgmlab train --config NAME   (e.g. dgmlab train --config {next(iter(configs))}); "
          f"a config marked [run with dgmlab COMMAND] holds the settings of that command instead")


def _pset1(args: argparse.Namespace) -> None:
    from dgmlab.experiments.pset1 import run_pset1

    report = run_pset1(out=args.out, quick=args.quick, device=args.device, seed=args.seed,
                       progress=not args.no_progress, workers=args.workers, overwrite=args.overwrite)
    print(f"report written to {report}")


def _potentials(args: argparse.Namespace) -> None:
    from dgmlab.experiments.potentials import run_potentials

    out = run_potentials(args.out, quick=args.quick, config=args.config, seed=args.seed, overwrite=args.overwrite,
                         progress=not args.no_progress, workers=args.workers)
    print(f"results written to {out}")


def _residual_estimators(args: argparse.Namespace) -> None:
    from dgmlab.experiments.residual_estimators import run_residual_estimators

    out = run_residual_estimators(args.out, quick=args.quick, seed=args.seed, overwrite=args.overwrite)
    print(f"results written to {out}")


def _toy2d(args: argparse.Namespace) -> None:
    from dgmlab.experiments.toy2d import run_toy2d

    out = run_toy2d(args.out, quick=args.quick, seed=args.seed, overwrite=args.overwrite, workers=args.workers)
    print(f"results written to {out}")


def _denoise(args: argparse.Namespace) -> None:
    from dgmlab.denoising import denoise_file

    report = denoise_file(args.image, args.out, method=args.method, sigma_255=args.sigma, prior=args.prior,
                          clean=args.clean, add_noise=args.add_noise, noisy_out=args.noisy_out,
                          iterations=args.iterations, seed=args.seed, overwrite=args.overwrite,
                          progress=not args.no_progress)
    print(report.summary())


COMMANDS: dict[str, Any] = {"train": _train, "eval": _eval, "sample": _sample, "configs": _configs, "pset1": _pset1,
                            "potentials": _potentials, "residual-estimators": _residual_estimators, "toy2d": _toy2d,
                            "denoise": _denoise}


def _user_errors() -> tuple[type[BaseException], ...]:
    from dgmlab.errors import DgmlabError

    return (CLIError, DgmlabError, FileNotFoundError, ValueError)


DISTRIBUTED_COMMANDS = ("train", "eval")  # the commands that run on many processes under torchrun


def _world_size() -> int:
    text = os.environ.get("WORLD_SIZE", "1")
    return int(text) if text.isdigit() else 1


def _run(args: argparse.Namespace) -> None:
    """Run the command, inside the process group that torchrun describes (:mod:`dgmlab.distributed`)."""
    if _world_size() <= 1:
        COMMANDS[args.command](args)
        return
    if args.command not in DISTRIBUTED_COMMANDS:
        raise CLIError(f"only {' and '.join(DISTRIBUTED_COMMANDS)} run on many processes; run dgmlab "
                       f"{args.command} without torchrun")
    from dgmlab import distributed

    with distributed.session(getattr(args, "device", None) or "auto"):
        COMMANDS[args.command](args)


def _report(text: str) -> None:
    """Print ``text`` on standard output, from rank 0 only in a run on many processes."""
    if os.environ.get("RANK", "0") == "0":
        print(text)


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``dgmlab`` console script; returns the exit status."""
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        _run(args)
    except _user_errors() as error:
        message = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        where = f" (rank {os.environ.get('RANK', '?')} of {_world_size()})" if _world_size() > 1 else ""
        print(f"dgmlab {args.command}{where}: error: {message}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"dgmlab {args.command}: interrupted; the last checkpoint is intact", file=sys.stderr)
        return 130
    except BrokenPipeError:  # the output went to a reader that stopped early (dgmlab eval RUN | head)
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # no second error when Python flushes
        return 0
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
