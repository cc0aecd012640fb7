r"""Speed of ``dgmlab pset1``'s MNIST experiments against the problem set's own pipeline, side by side.

For each of the three MNIST experiments of problem set 1 (autoencoder; VAE with the Monte-Carlo KL; VAE with the
analytic KL) this script runs, one after the other on the same machine and with the same thread settings:

(a) **the problem set's pipeline**, as its notebook does it: a torchvision-style per-example MNIST ``Dataset`` (a
    ``PIL.Image`` per item, then ``ToTensor``'s conversion; the class of ``benchmarks/data_pipeline.py``),
    ``DataLoader(batch_size=256, shuffle=True)``, the problem set's model code (written out below: the AE and the
    VAE whose ``forward`` returns a dict and averages decoded images over samples), its ``loss_func`` (mean MSE
    over batch and pixels, minus ``coeff`` times the batch mean of ``reg_func``: ``loss_SGVB`` or ``loss_KL_wo_E``)
    and its ``train`` loop with the per-batch ``loss.item()`` list and the per-epoch printed average;
(b) **dgmlab**, exactly what ``dgmlab pset1`` runs for the experiment:
    :func:`dgmlab.experiments.pset1.run_mnist_experiment` (config, tensor-resident data, ``fit`` with a test
    evaluation and a checkpoint after every epoch, ``metrics.jsonl``, then every figure);
(c) **dgmlab, training only**: the same configuration through ``dgmlab.train.fit`` with no test split, no run
    directory (so no checkpoints) and no figures.

Settings are the problem set's: AE ``[128, 32, 16, 2]`` 30 epochs, lr 1e-3; VAE ``[128, 32, 16, 4]`` with the
Monte-Carlo KL, lr 1e-4, coeff 1e-4, 30 epochs; VAE ``[128, 64, 8]`` with the analytic KL, lr 1e-3, coeff 1e-4,
100 epochs; Adam with weight decay 1e-8 everywhere; batch 256. Both sides start from the same initial weights
(the script checks this): the models create their layers in the same order after ``torch.manual_seed(seed)``.
Only the data order differs, so the final losses agree closely but not exactly.

Printed: seconds per experiment for (a), (b) and (c) and their totals; the speed-ups (a)/(b) and (a)/(c)
(target: (a)/(b) >= 4x on 2 CPU cores); the final **true** training losses of (a) and (b) (example-weighted
epoch means; target: within 5% of each other) beside the reference solution's.

    .venv/bin/python benchmarks/pset1_speed.py                     # the full comparison (long: 160 epochs x 3)
    .venv/bin/python benchmarks/pset1_speed.py --epochs-scale 0.1  # a ten-times shorter validation run

Timings on a shared machine are noisy; run the full comparison on a quiet one.
"""

from __future__ import annotations

import argparse
import math
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn
from torch.utils.data import DataLoader

from dgmlab.config import apply_overrides, build_model_from_config, build_settings, load_config
from dgmlab.data import load_mnist
from dgmlab.experiments.pset1 import CONFIGS, EXPERIMENTS, REFERENCE, run_mnist_experiment
from dgmlab.experiments.runs import prepare
from dgmlab.train import fit

sys.path.insert(0, str(Path(__file__).resolve().parent))
from data_pipeline import TorchvisionStyleMnist  # noqa: E402  (the per-example Dataset, shared with that benchmark)

TARGET_SPEEDUP = 4.0
TARGET_LOSS_AGREEMENT = 0.05


# ----------------------------------------------------------------------------------------------------------
# The problem set's code, as its notebook writes it (paraphrased; the computation is the same)
# ----------------------------------------------------------------------------------------------------------
class ProblemSetAE(nn.Module):
    """Problem 1(a): Linear + ReLU down to a linear 2-D code, the mirror image up to a sigmoid."""

    def __init__(self, input_dim: int, hidden_dims: list[int]) -> None:
        super().__init__()
        encoder: list[nn.Module] = [nn.Linear(input_dim, hidden_dims[0])]
        for fan_in, fan_out in zip(hidden_dims[:-1], hidden_dims[1:], strict=True):
            encoder += [nn.ReLU(), nn.Linear(fan_in, fan_out)]
        decoder: list[nn.Module] = []
        reverse = hidden_dims[::-1]
        for fan_in, fan_out in zip(reverse[:-1], reverse[1:], strict=True):
            decoder += [nn.Linear(fan_in, fan_out), nn.ReLU()]
        decoder += [nn.Linear(hidden_dims[0], input_dim), nn.Sigmoid()]
        self.encoder, self.decoder = nn.Sequential(*encoder), nn.Sequential(*decoder)

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        return self.decoder(z)

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        return {"imgs": self.decoder(self.encoder(x))}


class ProblemSetVAE(nn.Module):
    """Problems 2(b)-(c): the last encoder width holds mean and log-variance; the decoder starts at half of it."""

    def __init__(self, input_dim: int, hidden_dims: list[int]) -> None:
        super().__init__()
        self.latent_dim = hidden_dims[-1] // 2
        encoder: list[nn.Module] = [nn.Linear(input_dim, hidden_dims[0])]
        for fan_in, fan_out in zip(hidden_dims[:-1], hidden_dims[1:], strict=True):
            encoder += [nn.ReLU(), nn.Linear(fan_in, fan_out)]
        widths = [self.latent_dim, *hidden_dims[-2::-1]]
        decoder: list[nn.Module] = []
        for fan_in, fan_out in zip(widths[:-1], widths[1:], strict=True):
            decoder += [nn.Linear(fan_in, fan_out), nn.ReLU()]
        decoder += [nn.Linear(widths[-1], input_dim), nn.Sigmoid()]
        self.encoder, self.decoder = nn.Sequential(*encoder), nn.Sequential(*decoder)

    def reparameterize(self, mean: torch.Tensor, logvar: torch.Tensor, n_samples: int = 1) -> torch.Tensor:
        mean, logvar = mean.repeat_interleave(n_samples, dim=0), logvar.repeat_interleave(n_samples, dim=0)
        return mean + torch.exp(0.5 * logvar) * torch.randn_like(mean)

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        return self.decoder(z)

    def forward(self, x: torch.Tensor, n_samples: int = 1) -> dict[str, torch.Tensor]:
        mean, logvar = torch.split(self.encoder(x), self.latent_dim, dim=1)
        z = self.reparameterize(mean, logvar, n_samples)
        # the problem set averages the decoded images over the samples (the same compute for n = 1)
        imgs = self.decode(z).reshape(x.shape[0], n_samples, -1).mean(dim=1)
        return {"imgs": imgs, "z": z, "mean": mean, "logvar": logvar}


LOG_2PI = math.log(2.0 * math.pi)


def log_normal_pdf(sample: torch.Tensor, mean, logvar) -> torch.Tensor:
    mean, logvar = torch.as_tensor(mean), torch.as_tensor(logvar)
    return torch.sum(-0.5 * ((sample - mean) ** 2.0 * torch.exp(-logvar) + logvar + LOG_2PI), dim=1)


def loss_SGVB(output: dict[str, torch.Tensor]) -> torch.Tensor:  # noqa: N802  (the problem set's name)
    """log p(z) - log q(z|x) at the sampled z: minus the single-sample KL estimate, per example."""
    return log_normal_pdf(output["z"], 0.0, 0.0) - log_normal_pdf(output["z"], output["mean"], output["logvar"])


def loss_KL_wo_E(output: dict[str, torch.Tensor]) -> torch.Tensor:  # noqa: N802  (the problem set's name)
    """Minus the analytic KL, per example."""
    mean, logvar = output["mean"], output["logvar"]
    return 0.5 * torch.sum(1 + logvar - mean**2 - torch.exp(logvar), dim=1)


MSE = nn.MSELoss()


def loss_func(model: nn.Module, x: torch.Tensor, reg_func=None, coeff: float = 1e-3) -> torch.Tensor:
    output = model(x)
    err = MSE(output["imgs"], x)
    log_px = -torch.sum(err)
    reg = reg_func(output) if reg_func is not None else 0.0
    return -torch.mean(log_px + coeff * reg)


@dataclass
class BaselineResult:
    seconds_total: float  # dataset + loader + model + training
    seconds_training: float
    true_final_loss: float  # example-weighted mean over the last epoch
    mean_batch_loss: float  # unweighted mean of the last epoch's batch losses (the returned list)
    printed_average: float  # what the problem set printed (0.376 x the true mean on MNIST)


def problem_set_train(dataloader, model, loss_fn, optimizer, epochs: int, device: torch.device,
                      verbose: bool) -> tuple[list[float], list[int]]:
    """The problem set's ``train``: one ``loss.item()`` per batch, a printed (mis-scaled) average per epoch."""
    losses, sizes = [], []
    for epoch in range(epochs):
        running_loss = 0.0
        for images, _ in dataloader:
            batch_size = images.shape[0]
            images = images.reshape(batch_size, -1).to(device)
            loss = loss_fn(model, images)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            losses.append(loss.item())
            sizes.append(batch_size)
            running_loss += loss.item()
        average = running_loss / len(dataloader.dataset) * batch_size
        if verbose:
            print(f"    Epoch [{epoch + 1}/{epochs}], Average Loss: {average:.4f}")
    return losses, sizes


def run_problem_set(key: str, config: dict, images: torch.Tensor, labels: torch.Tensor, seed: int,
                    device: torch.device, verbose: bool) -> BaselineResult:
    """Experiment ``key`` with the problem set's pipeline and the settings of ``config``."""
    started = time.perf_counter()
    dataset = TorchvisionStyleMnist(images, labels)
    loader = DataLoader(dataset, batch_size=config["data"]["batch_size"], shuffle=True)
    torch.manual_seed(seed)
    model_cls = ProblemSetAE if config["model"]["name"] == "ae" else ProblemSetVAE
    model = model_cls(784, list(config["model"]["hidden_dims"])).to(device)
    objective = config["objective"]
    if objective["name"] == "reconstruction_mse":
        loss_fn: Callable = loss_func
    else:
        reg_func = loss_SGVB if objective["kl"] == "monte_carlo" else loss_KL_wo_E
        coeff = objective["coeff"]

        def loss_fn(m, x):
            return loss_func(m, x, reg_func=reg_func, coeff=coeff)
    train = config["train"]
    optimizer = torch.optim.Adam(model.parameters(), lr=train["lr"], weight_decay=train["weight_decay"])
    training_started = time.perf_counter()
    losses, sizes = problem_set_train(loader, model, loss_fn, optimizer, train["epochs"], device, verbose)
    finished = time.perf_counter()
    per_epoch = len(loader)
    last_losses, last_sizes = losses[-per_epoch:], sizes[-per_epoch:]
    true_mean = sum(loss * size for loss, size in zip(last_losses, last_sizes, strict=True)) / sum(last_sizes)
    printed = sum(last_losses) / len(dataset) * last_sizes[-1]
    return BaselineResult(finished - started, finished - training_started, true_mean,
                          sum(last_losses) / len(last_losses), printed)


# ----------------------------------------------------------------------------------------------------------
# dgmlab
# ----------------------------------------------------------------------------------------------------------
def experiment_config(file: str, device: str, seed: int, epochs: int | None) -> dict:
    overrides = [f'train.device="{device}"', f"train.seed={seed}", "train.progress=false"]
    if epochs is not None:
        overrides.append(f"train.epochs={epochs}")
    return apply_overrides(load_config(CONFIGS / file), overrides)


def run_dgmlab(key: str, title: str, file: str, out: Path, device: str, seed: int,
               epochs: int | None) -> tuple[float, float]:
    """What ``dgmlab pset1`` runs for one experiment; returns (seconds, final true training loss)."""
    started = time.perf_counter()
    overrides = [] if epochs is None else [f"train.epochs={epochs}"]
    section = run_mnist_experiment(key, title, file, out, quick=False, device=device, seed=seed, progress=False,
                                   overrides=overrides)
    seconds = time.perf_counter() - started
    return seconds, float(section.settings["metrics"]["train"]["loss"])


def run_dgmlab_training_only(config: dict) -> tuple[float, float]:
    """The same configuration through ``fit`` alone: no test split, checkpoints or figures."""
    model, objective, data = prepare(config)
    settings = build_settings(config)
    started = time.perf_counter()
    history = fit(model, objective, data.train, None, settings)
    return time.perf_counter() - started, history.last()


def same_initial_weights(config: dict, seed: int) -> bool:
    """dgmlab's model (seeded as ``prepare`` seeds it) and the problem set's start from equal weights."""
    torch.manual_seed(seed)
    ours = build_model_from_config(config, input_dim=784)
    torch.manual_seed(seed)
    theirs = (ProblemSetAE if config["model"]["name"] == "ae" else ProblemSetVAE)(784, config["model"]["hidden_dims"])
    ours_tensors, their_tensors = list(ours.state_dict().values()), list(theirs.state_dict().values())
    return len(ours_tensors) == len(their_tensors) and all(
        a.shape == b.shape and torch.equal(a, b) for a, b in zip(ours_tensors, their_tensors, strict=True))


# ----------------------------------------------------------------------------------------------------------
def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs-scale", type=float, default=1.0,
                        help="multiply every experiment's epochs (30, 30, 100) by this, at least 1 (default 1)")
    parser.add_argument("--threads", type=int, default=0, help="torch threads (default: torch's own choice)")
    parser.add_argument("--device", default="cpu", help="device for both sides (default cpu)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--experiments", default=",".join(key for key, _, _ in EXPERIMENTS),
                        help="comma-separated subset of ae, vae_mc, vae_analytic")
    parser.add_argument("--out", type=Path, default=None, help="dgmlab's run folder (default: a temporary one)")
    parser.add_argument("--verbose", action="store_true", help="print the problem set's per-epoch lines")
    args = parser.parse_args(argv)
    if not args.epochs_scale > 0:
        parser.error("--epochs-scale must be positive")
    selected = [item.strip() for item in args.experiments.split(",") if item.strip()]
    unknown = sorted(set(selected) - {key for key, _, _ in EXPERIMENTS})
    if unknown:
        parser.error(f"unknown experiment(s) {', '.join(unknown)}; choose from ae, vae_mc, vae_analytic")
    if args.threads > 0:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)

    images, labels = load_mnist("train")  # verified once; later loads (ours included) are memoized copies
    load_mnist("test")
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, device {device}; "
          f"epochs scale {args.epochs_scale:g}")
    temporary = tempfile.TemporaryDirectory(prefix="pset1_speed_") if args.out is None else None
    out = Path(temporary.name) if temporary is not None else args.out
    rows = []
    try:
        for key, title, file in EXPERIMENTS:
            if key not in selected:
                continue
            full_epochs = load_config(CONFIGS / file)["train"]["epochs"]
            epochs = max(1, round(full_epochs * args.epochs_scale))
            config = experiment_config(file, args.device, args.seed, epochs)
            print(f"\n{key}: {epochs} epoch(s) (problem set: {full_epochs}); "
                  f"same initial weights on both sides: {same_initial_weights(config, args.seed)}")
            baseline = run_problem_set(key, config, images, labels, args.seed, device, args.verbose)
            print(f"  (a) problem set pipeline   {baseline.seconds_total:8.1f} s "
                  f"(training {baseline.seconds_training:.1f} s); final true loss {baseline.true_final_loss:.4f} "
                  f"(it would print {baseline.printed_average:.4f})")
            ours_seconds, ours_loss = run_dgmlab(key, title, file, out, args.device, args.seed,
                                                 None if epochs == full_epochs else epochs)
            print(f"  (b) dgmlab pset1           {ours_seconds:8.1f} s; final true loss {ours_loss:.4f}")
            train_seconds, train_loss = run_dgmlab_training_only(config)
            print(f"  (c) dgmlab training only   {train_seconds:8.1f} s; final true loss {train_loss:.4f}")
            rows.append((key, epochs, baseline, ours_seconds, ours_loss, train_seconds))
    finally:
        if temporary is not None:
            temporary.cleanup()

    print(f"\n{'experiment':13s} {'epochs':>6s} {'(a) pset s':>11s} {'(b) dgmlab s':>13s} {'(c) train s':>12s} "
          f"{'a/b':>6s} {'a/c':>6s} {'loss (a)':>9s} {'loss (b)':>9s} {'diff':>7s}  reference (full run)")
    totals = [0.0, 0.0, 0.0]
    worst = 0.0
    for key, epochs, baseline, ours_seconds, ours_loss, train_seconds in rows:
        difference = abs(ours_loss - baseline.true_final_loss) / baseline.true_final_loss
        worst = max(worst, difference)
        totals[0] += baseline.seconds_total
        totals[1] += ours_seconds
        totals[2] += train_seconds
        print(f"{key:13s} {epochs:6d} {baseline.seconds_total:11.1f} {ours_seconds:13.1f} {train_seconds:12.1f} "
              f"{baseline.seconds_total / ours_seconds:5.1f}x {baseline.seconds_total / train_seconds:5.1f}x "
              f"{baseline.true_final_loss:9.4f} {ours_loss:9.4f} {difference:6.1%}  {REFERENCE[key]['true']}")
    speedup, training_speedup = totals[0] / totals[1], totals[0] / totals[2]
    print(f"{'total':13s} {'':6s} {totals[0]:11.1f} {totals[1]:13.1f} {totals[2]:12.1f} "
          f"{speedup:5.1f}x {training_speedup:5.1f}x")
    print(f"\nspeed-up of dgmlab pset1 (with test evaluation, checkpoints and figures) over the problem set's "
          f"pipeline: {speedup:.2f}x ({'meets' if speedup >= TARGET_SPEEDUP else 'MISSES'} the "
          f"{TARGET_SPEEDUP:g}x target); training only: {training_speedup:.2f}x")
    print(f"largest difference of final true training losses: {worst:.1%} "
          f"({'within' if worst <= TARGET_LOSS_AGREEMENT else 'OUTSIDE'} the {TARGET_LOSS_AGREEMENT:.0%} target)")
    if args.epochs_scale != 1:
        print("(a shortened run: the losses are not comparable with the reference's full-run values)")


if __name__ == "__main__":
    main()
