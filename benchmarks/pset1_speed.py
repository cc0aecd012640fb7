r"""Speed of the full ``dgmlab pset1`` against the problem set's own pipeline, side by side, part by part.

For each part of problem set 1 (autoencoder; VAE with the Monte-Carlo KL; VAE with the analytic KL; the
KL-estimator check; the torus point-cloud VAE) this script runs, one after the other on the same machine and
with the same thread settings:

(a) **the problem set's pipeline**, as its notebook does it: a torchvision-style per-example MNIST ``Dataset`` (a
    ``PIL.Image`` per item, then ``ToTensor``'s conversion; the class of ``benchmarks/data_pipeline.py``),
    ``DataLoader(batch_size=256, shuffle=True)``, the problem set's model code (written out below: the AE and the
    VAE whose ``forward`` returns a dict and averages decoded images over samples), its ``loss_func`` (mean MSE
    over batch and pixels, minus ``coeff`` times the batch mean of ``reg_func``: ``loss_SGVB`` or ``loss_KL_wo_E``)
    and its ``train`` loop with the per-batch ``loss.item()`` list and the per-epoch printed average;
(b) **dgmlab**, exactly what ``dgmlab pset1`` runs for the experiment:
    :func:`dgmlab.experiments.pset1.run_mnist_experiment` (config, tensor-resident data, ``fit`` with a test
    evaluation and a checkpoint after every epoch, ``metrics.jsonl``, then every figure);
(c) **dgmlab, training only** (MNIST parts): the same configuration through ``dgmlab.train.fit`` with no test
    split, no run directory (so no checkpoints) and no figures.

The KL-estimator check (problem 3b): (a) is the problem set's loop: for n in ``range(1, 4000, 100)``, the first
batch of a freshly shuffled per-example loader, one forward pass of an untrained ``VAE(784, [128, 32, 16, 4])``
with ``n_samples_per_z = n`` (decoding all 256 n samples and averaging the images), then ``loss_SGVB`` and
``loss_KL_wo_E``; (b) is ``dgmlab pset1``'s check (one fixed batch, no decoding, many repeats per n, figure).
The torus (problem 4): (a) is the problem set's run: ``TorusPointCloudDataset`` (3,000 points) through
``DataLoader(batch_size=3000, shuffle=True)``, its PointVAE (positional encoding, polar decoder, 3,919
parameters), 1,000 epochs of Adam on MSE + 1e-4 KL with its ``train``; (b) is ``dgmlab pset1``'s torus section,
which does **more** work: three decoders x three seeds, metrics, interpolations and figures.

Settings are the problem set's: AE ``[128, 32, 16, 2]`` 30 epochs, lr 1e-3; VAE ``[128, 32, 16, 4]`` with the
Monte-Carlo KL, lr 1e-4, coeff 1e-4, 30 epochs; VAE ``[128, 64, 8]`` with the analytic KL, lr 1e-3, coeff 1e-4,
100 epochs; Adam with weight decay 1e-8 everywhere; batch 256. Both sides start from the same initial weights
(the script checks this): the models create their layers in the same order after ``torch.manual_seed(seed)``.
Only the data order differs, so the final losses agree closely but not exactly.

Printed: seconds per part for (a), (b) and (c) and their totals; the speed-ups (a)/(b) and (a)/(c)
(target: (a)/(b) >= 4x on 2 CPU cores); the final **true** training losses of (a) and (b) (example-weighted
epoch means; target: within 5% of each other; for the torus, (b)'s polar decoder, mean over its seeds) beside
the reference solution's.

    .venv/bin/python benchmarks/pset1_speed.py                     # the full comparison (long: 160 epochs x 3)
    .venv/bin/python benchmarks/pset1_speed.py --epochs-scale 0.1  # a ten-times shorter validation run

Timings on a shared machine are noisy; run the full comparison on a quiet one.
"""

from __future__ import annotations

import argparse
import json
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

from dgmlab.config import apply_overrides, build_model_from_config, build_settings, load_bundled_config
from dgmlab.data import load_mnist
from dgmlab.experiments.pset1 import (
    EXPERIMENTS,
    REFERENCE,
    run_kl_check,
    run_mnist_experiment,
    run_pset1,
    run_torus_section,
)
from dgmlab.experiments.runs import prepare
from dgmlab.train import fit

sys.path.insert(0, str(Path(__file__).resolve().parent))
from data_pipeline import TorchvisionStyleMnist  # noqa: E402  (the per-example Dataset, shared with that benchmark)

TARGET_SPEEDUP = 4.0
PARTS = [key for key, _, _ in EXPERIMENTS] + ["kl_check", "torus"]
REFERENCE_OTHER = {"kl_check": "analytic KL about 0.058 nats", "torus": "true final loss about 0.004"}
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


@torch.no_grad()
def run_problem_set_kl_check(images: torch.Tensor, labels: torch.Tensor, seed: int,
                             device: torch.device) -> tuple[float, float]:
    """Problem 3(b) as the problem set runs it; returns (seconds, mean analytic KL over the 40 batches)."""
    started = time.perf_counter()
    dataset = TorchvisionStyleMnist(images, labels)
    torch.manual_seed(seed)
    model = ProblemSetVAE(784, [128, 32, 16, 4]).to(device)
    analytic = []
    for n in range(1, 4000, 100):
        loader = DataLoader(dataset, batch_size=256, shuffle=True)
        x, _ = next(iter(loader))
        x = x.reshape(x.shape[0], -1).to(device)
        # its forward: mean and logvar repeated n times per row, every sample decoded, images averaged
        mean, logvar = torch.split(model.encoder(x), model.latent_dim, dim=1)
        mean, logvar = mean.repeat_interleave(n, dim=0), logvar.repeat_interleave(n, dim=0)
        z = mean + torch.exp(0.5 * logvar) * torch.randn_like(mean)
        imgs = model.decode(z).reshape(x.shape[0], n, -1).mean(dim=1)
        output = {"imgs": imgs, "z": z, "mean": mean, "logvar": logvar}
        loss_SGVB(output).mean().item()
        analytic.append(-loss_KL_wo_E(output).mean().item())
    return time.perf_counter() - started, sum(analytic) / len(analytic)


class ProblemSetTorusVAE(nn.Module):
    """Problem 4: positional encoding (10 frequencies, 60 features) -> VAE(60, [32, 20, 10, 6]) whose 3 outputs
    are read as spherical coordinates (the reference solution's PolarVAE)."""

    def __init__(self) -> None:
        super().__init__()
        self.register_buffer("frequencies", 2.0 ** torch.arange(10, dtype=torch.float32))
        self.vae = ProblemSetVAE(60, [32, 20, 10, 6])
        self.vae.decoder = self.vae.decoder[:-1]  # decode_dim=3 and no sigmoid
        self.vae.decoder[-1] = nn.Linear(32, 3)

    def encode_positions(self, points: torch.Tensor) -> torch.Tensor:
        angles = points[..., None] * self.frequencies  # [N, 3, 10]
        return torch.stack((angles.sin(), angles.cos()), dim=-1).reshape(points.shape[0], -1)

    def forward(self, points: torch.Tensor) -> dict[str, torch.Tensor]:
        vae = self.vae
        mean, logvar = torch.split(vae.encoder(self.encode_positions(points)), vae.latent_dim, dim=1)
        z = vae.reparameterize(mean, logvar)
        rho, theta, phi = vae.decode(z).unbind(dim=1)
        imgs = torch.stack((rho * theta.sin() * phi.cos(), rho * theta.sin() * phi.sin(), rho * theta.cos()), dim=1)
        return {"imgs": imgs, "z": z, "mean": mean, "logvar": logvar}


class TorusPointCloudDataset(torch.utils.data.Dataset):
    """The problem set's dataset: items are (point, 0)."""

    def __init__(self, points: torch.Tensor) -> None:
        self.points = points.float()

    def __len__(self) -> int:
        return len(self.points)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        return self.points[index], 0


def run_problem_set_torus(seed: int, device: torch.device, epochs: int = 1000) -> tuple[float, float]:
    """Problem 4(a) as the problem set runs it; returns (seconds, final true loss)."""
    from dgmlab.data import torus_point_cloud

    started = time.perf_counter()
    points, _ = torus_point_cloud(1.0, 0.5, 3000, seed=1234)
    loader = DataLoader(TorusPointCloudDataset(points), batch_size=3000, shuffle=True)
    torch.manual_seed(seed)
    model = ProblemSetTorusVAE().to(device)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3, weight_decay=1e-8)

    def loss_fn(m, x):
        return loss_func(m, x, reg_func=loss_KL_wo_E, coeff=1e-4)

    losses, _ = problem_set_train(loader, model, loss_fn, optimizer, epochs, device, verbose=False)
    return time.perf_counter() - started, losses[-1]


# ----------------------------------------------------------------------------------------------------------
# dgmlab
# ----------------------------------------------------------------------------------------------------------
def experiment_config(file: str, device: str, seed: int, epochs: int | None) -> dict:
    overrides = [f'train.device="{device}"', f"train.seed={seed}", "train.progress=false"]
    if epochs is not None:
        overrides.append(f"train.epochs={epochs}")
    return apply_overrides(load_bundled_config(Path(file).stem), overrides)


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
    parser.add_argument("--experiments", default=",".join(PARTS),
                        help=f"comma-separated subset of {', '.join(PARTS)}")
    parser.add_argument("--out", type=Path, default=None, help="dgmlab's run folder (default: a temporary one)")
    parser.add_argument("--verbose", action="store_true", help="print the problem set's per-epoch lines")
    parser.add_argument("--per-part", action="store_true",
                        help="time dgmlab part by part in this process instead of the whole `dgmlab pset1`")
    parser.add_argument("--training-only", action="store_true",
                        help="also time (c): the MNIST configurations through fit alone")
    args = parser.parse_args(argv)
    if not args.epochs_scale > 0:
        parser.error("--epochs-scale must be positive")
    selected = [item.strip() for item in args.experiments.split(",") if item.strip()]
    unknown = sorted(set(selected) - set(PARTS))
    if unknown:
        parser.error(f"unknown experiment(s) {', '.join(unknown)}; choose from {', '.join(PARTS)}")
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
    whole = set(selected) == set(PARTS) and not args.per_part
    try:
        baselines: dict[str, tuple[float, float]] = {}
        for key, title, file in EXPERIMENTS:
            if key not in selected:
                continue
            full_epochs = load_bundled_config(Path(file).stem)["train"]["epochs"]
            epochs = max(1, round(full_epochs * args.epochs_scale))
            config = experiment_config(file, args.device, args.seed, epochs)
            print(f"\n{key}: {epochs} epoch(s) (problem set: {full_epochs}); "
                  f"same initial weights on both sides: {same_initial_weights(config, args.seed)}")
            baseline = run_problem_set(key, config, images, labels, args.seed, device, args.verbose)
            print(f"  (a) problem set pipeline   {baseline.seconds_total:8.1f} s "
                  f"(training {baseline.seconds_training:.1f} s); final true loss {baseline.true_final_loss:.4f} "
                  f"(it would print {baseline.printed_average:.4f})")
            baselines[key] = (baseline.seconds_total, baseline.true_final_loss)
            if not whole:
                ours_seconds, ours_loss = run_dgmlab(key, title, file, out, args.device, args.seed,
                                                     None if epochs == full_epochs else epochs)
                print(f"  (b) dgmlab, this part alone {ours_seconds:8.1f} s; final true loss {ours_loss:.4f}")
            else:
                ours_seconds, ours_loss = math.nan, math.nan
            train_seconds = None
            if args.training_only:
                train_seconds, train_loss = run_dgmlab_training_only(config)
                print(f"  (c) dgmlab training only   {train_seconds:8.1f} s; final true loss {train_loss:.4f}")
            rows.append([key, epochs, *baselines[key], ours_seconds, ours_loss, train_seconds])
        if "kl_check" in selected:
            print("\nkl_check: n = 1, 101, ..., 3901 (problem set) against dgmlab's fixed-batch check")
            seconds, analytic = run_problem_set_kl_check(images, labels, args.seed, device)
            print(f"  (a) problem set pipeline   {seconds:8.1f} s; mean analytic KL {analytic:.4f} nats")
            ours_seconds = ours = math.nan
            if not whole:
                started = time.perf_counter()
                section = run_kl_check(out, quick=False, seed=args.seed)
                ours_seconds = time.perf_counter() - started
                ours = section.settings["metrics"]["analytic_kl_nats"]
                print(f"  (b) dgmlab, this part alone {ours_seconds:8.1f} s; analytic KL {ours:.4f} nats")
            rows.append(["kl_check", 0, seconds, analytic, ours_seconds, ours, None])
        if "torus" in selected:
            print("\ntorus: 1000 full-batch steps (problem set: one polar VAE; dgmlab: 3 decoders x 3 seeds)")
            seconds, loss = run_problem_set_torus(args.seed, device)
            print(f"  (a) problem set pipeline   {seconds:8.1f} s; final true loss {loss:.4f}")
            ours_seconds = ours = math.nan
            if not whole:
                started = time.perf_counter()
                section = run_torus_section(out, False, args.device, args.seed, progress=False)
                ours_seconds = time.perf_counter() - started
                ours = section.settings["metrics"]["decoders"]["polar"]["final_loss_mean"]
                print(f"  (b) dgmlab, this part alone {ours_seconds:8.1f} s; polar final loss {ours:.4f}")
            rows.append(["torus", 1000, seconds, loss, ours_seconds, ours, None])
        whole_seconds = None
        if whole:
            print("\n(b) the whole dgmlab pset1, as `dgmlab pset1` runs it (its parts in parallel processes):")
            started = time.perf_counter()
            run_pset1(out, quick=False, device=args.device, seed=args.seed, progress=False,
                      log=lambda line: print("    " + line, flush=True), epochs_scale=args.epochs_scale)
            whole_seconds = time.perf_counter() - started
            metrics = json.loads((out / "metrics.json").read_text())
            print(f"  (b) dgmlab pset1           {whole_seconds:8.1f} s in all ({metrics['workers']} worker processes)")
            for row in rows:
                key = row[0]
                if key in REFERENCE:
                    row[4], row[5] = metrics[key]["seconds"], metrics[key]["train"]["loss"]
                elif key == "kl_check":
                    row[5] = metrics["kl_check"]["analytic_kl_nats"]
                elif key == "torus":
                    row[4] = metrics["torus"]["seconds"]["total"]
                    row[5] = metrics["torus"]["decoders"]["polar"]["final_loss_mean"]
    finally:
        if temporary is not None:
            temporary.cleanup()

    print(f"\n{'part':13s} {'epochs':>6s} {'(a) pset s':>11s} {'(b) dgmlab s':>13s} {'(c) train s':>12s} "
          f"{'a/b':>6s} {'loss (a)':>9s} {'loss (b)':>9s} {'diff':>7s}  reference (full run)")
    totals = [0.0, 0.0, 0.0]
    worst = 0.0
    for key, epochs, base_seconds, base_loss, ours_seconds, ours_loss, train_seconds in rows:
        difference = abs(ours_loss - base_loss) / base_loss
        if key in REFERENCE:  # the MNIST losses are the ones the target compares
            worst = max(worst, difference)
        totals[0] += base_seconds
        totals[1] += 0.0 if math.isnan(ours_seconds) else ours_seconds
        totals[2] += train_seconds or 0.0
        ours_text = f"{ours_seconds:13.1f}" if not math.isnan(ours_seconds) else f"{'(in the run)':>13s}"
        ratio = f"{base_seconds / ours_seconds:5.1f}x" if not math.isnan(ours_seconds) else f"{'-':>6s}"
        train_text = f"{train_seconds:12.1f}" if train_seconds is not None else f"{'-':>12s}"
        reference = REFERENCE[key]["true"] if key in REFERENCE else REFERENCE_OTHER[key]
        print(f"{key:13s} {epochs or '':>6} {base_seconds:11.1f} {ours_text} {train_text} {ratio} "
              f"{base_loss:9.4f} {ours_loss:9.4f} {difference:6.1%}  {reference}")
    if whole_seconds is not None:
        totals[1] = whole_seconds  # the parts overlap in parallel processes: the whole run's wall time counts
    speedup = totals[0] / totals[1]
    print(f"{'total':13s} {'':6s} {totals[0]:11.1f} {totals[1]:13.1f}")
    if whole_seconds is not None:
        print("(b) per part: its own seconds inside the whole run, where parts overlap in two processes; the total "
              "is the whole run's wall time, figures and report included")
    print(f"\nspeed-up of dgmlab pset1 (with test evaluation, checkpoints and figures) over the problem set's "
          f"pipeline: {speedup:.2f}x ({'meets' if speedup >= TARGET_SPEEDUP else 'MISSES'} the "
          f"{TARGET_SPEEDUP:g}x target)")
    if args.training_only and totals[2]:
        mnist = sum(row[2] for row in rows if row[0] in REFERENCE)
        print(f"MNIST parts, training only (c): {mnist / totals[2]:.2f}x")
    print(f"largest difference of final true training losses (MNIST parts): {worst:.1%} "
          f"({'within' if worst <= TARGET_LOSS_AGREEMENT else 'OUTSIDE'} the {TARGET_LOSS_AGREEMENT:.0%} target)")
    if args.epochs_scale != 1:
        print("(a shortened run: the losses are not comparable with the reference's full-run values)")


if __name__ == "__main__":
    main()
