"""dgmlab's trainer beside pythae's TrainingPipeline on the same VAE, in one process: seconds per epoch,
examples per second and the final training loss (negative ELBO, nats per example) of each.

    .venv/bin/pip install -c constraints.txt -e '.[bench]'          # pythae (the optional `bench` extra)
    .venv/bin/python benchmarks/peers/vae_pythae.py                  # the recorded setting (3 rounds x 3 epochs)
    .venv/bin/python benchmarks/peers/vae_pythae.py --epochs 1 --rounds 1 --limit 512 --threads 1   # a smoke run
    .venv/bin/python benchmarks/peers/vae_pythae.py --out benchmarks/results/vae_pythae_cpu_DATE.json
    .venv/bin/python benchmarks/peers/vae_pythae.py --precision bf16 [--compile]   # dgmlab's steps in bf16

The model, the same in both libraries: a VAE 784-512-32 with a Bernoulli decoder. Encoder 784 -> 512 (ReLU)
-> the mean and log-variance of 32 latents; decoder 32 -> 512 (ReLU) -> 784. dgmlab:
``VAE(784, [512, 64], likelihood="bernoulli", activation="relu")`` (the last width holds mean and log-variance
side by side, so 64 gives 32 latents; the decoder returns logits). pythae 0.1.2: ``pythae.models.VAE`` with
``VAEConfig(input_dim=(1, 28, 28), latent_dim=32, reconstruction_loss="bce")`` and its default MLPs
(``Encoder_VAE_MLP``: 784 -> 512 ReLU, two Linear(512, 32) heads; ``Decoder_AE_MLP``: 32 -> 512 ReLU -> 784
sigmoid), 853,840 parameters each, PyTorch's default initialisation in both.

The loss, the same in both and in the same units: pythae's VAE loss is the batch mean of (BCE of the sigmoid
probabilities summed over the 784 pixels + the analytic KL), i.e. the negative ELBO in nats per example, which
is what ``dgmlab.objectives.negative_elbo`` returns (Bernoulli log-likelihood from logits summed over pixels,
analytic KL); no conversion is needed. The script checks it: pythae's ``loss_function`` and dgmlab's
``negative_elbo`` on the same weights, batch and latent draw (``loss_units_check``). Both train on the grey
MNIST levels in [0, 1] as targets (a cross-entropy, not a likelihood of binary images). The reported epoch
loss is each library's own running mean over the epoch: dgmlab's weights every example once, pythae's
averages the batch means (the short last batch counts as a full one; a difference of well under 0.1 nats).

Training: the 60,000 MNIST training digits (``--limit`` takes the first N), batch 128, shuffled, Adam 1e-3,
``--epochs`` epochs, on the CPU with ``--threads`` threads. dgmlab: ``dgmlab.train.fit`` on ``TensorBatches``
(index slicing of one in-memory tensor); its epoch times are the ``seconds`` of its History. pythae:
``TrainingPipeline`` on the images as a ``[N, 1, 28, 28]`` tensor (a ``DataLoader`` over its ``BaseDataset``,
no evaluation set, no checkpoints, its outputs in a temporary folder that is deleted); its epoch times run
from its ``on_epoch_begin`` to its ``on_epoch_end`` callback, which includes what its trainer does in every
epoch (it keeps a deep copy of the best model on the training loss when there is no evaluation set). The
whole call of each (pythae's data checks, sanity check and final save included) is reported as
``call_seconds``. pythae's console logs are silenced, and its tqdm bars through tqdm's ``TQDM_DISABLE``
(pythae has no option for them; dgmlab runs with ``progress=False``).

Fair timing on a noisy, shared machine: first an untimed warm-up epoch of each library on 256 digits (the
first training call in a process pays about 2 s of lazy imports inside torch, whichever library makes it),
then ``--rounds`` rounds, each training a fresh model of each library for
``--epochs`` epochs, alternating which goes first; the median seconds per epoch over all epochs of all rounds
is reported per library, with the ratio pythae / dgmlab (dgmlab's throughput advantage when above 1).
"""

from __future__ import annotations

import argparse
import functools
import json
import logging
import math
import os
import statistics
import tempfile
import time
from importlib.metadata import version
from pathlib import Path
from typing import Any

# pythae's trainer always draws tqdm progress bars; tqdm reads TQDM_* overrides once, when it is first
# imported (torch imports it), so this must come before the imports below
os.environ.setdefault("TQDM_DISABLE", "1")

import torch  # noqa: E402
from torch import nn  # noqa: E402

from dgmlab.data import TensorBatches, mnist_tensors  # noqa: E402
from dgmlab.models import VAE, count_parameters  # noqa: E402
from dgmlab.objectives import negative_elbo  # noqa: E402
from dgmlab.train import TrainSettings, fit  # noqa: E402

LATENT, HIDDEN, BATCH, LIBRARIES = 32, 512, 128, ("dgmlab", "pythae")


def _pythae() -> Any:
    try:
        import pythae.models
        import pythae.pipelines
        import pythae.trainers
        import pythae.trainers.training_callbacks
    except ImportError:
        raise SystemExit("pythae is not installed: pip install -c constraints.txt -e '.[bench]'") from None
    # its modules log every step of the pipeline to the console, each through a handler of its own
    for name in list(logging.Logger.manager.loggerDict):
        if name.startswith("pythae"):
            logging.getLogger(name).setLevel(logging.WARNING)
    return pythae


def dgmlab_vae(seed: int) -> VAE:
    torch.manual_seed(seed)
    return VAE(784, [HIDDEN, 2 * LATENT], likelihood="bernoulli", activation="relu")


def pythae_vae(seed: int) -> nn.Module:
    pythae = _pythae()
    torch.manual_seed(seed)
    config = pythae.models.VAEConfig(input_dim=(1, 28, 28), latent_dim=LATENT, reconstruction_loss="bce")
    return pythae.models.VAE(config)  # its default Encoder_VAE_MLP and Decoder_AE_MLP


def loss_units_check(x: torch.Tensor) -> dict[str, float]:
    """pythae's loss_function and dgmlab's negative_elbo on the same weights, images and latent draw, nats/example."""
    model, theirs = dgmlab_vae(0), pythae_vae(0)
    flat = x.reshape(len(x), -1)
    with torch.no_grad():
        torch.manual_seed(1)
        ours = negative_elbo(model, flat)
        torch.manual_seed(1)  # the same epsilon again: negative_elbo draws it through model.reparameterize
        mean, logvar = model.encode(flat)
        z = model.reparameterize(mean, logvar, n_samples=1)[0]
        probabilities = torch.sigmoid(model.decode(z))
        loss, _, kl = theirs.loss_function(probabilities.reshape(x.shape), x, mean, logvar, z)
    return {"dgmlab_neg_elbo": round(float(ours.loss.mean()), 4), "pythae_loss": round(float(loss), 4),
            "dgmlab_kl": round(float(ours.terms["kl"].mean()), 4), "pythae_kl": round(float(kl), 4),
            "abs_difference": round(abs(float(ours.loss.mean()) - float(loss)), 5)}


def train_dgmlab(x: torch.Tensor, epochs: int, seed: int, precision: str = "fp32",
                 compile: bool = False) -> dict[str, Any]:
    model = dgmlab_vae(seed)
    batches = TensorBatches(x.reshape(len(x), -1), batch_size=BATCH, seed=seed)
    settings = TrainSettings(epochs=epochs, lr=1e-3, seed=seed, device="cpu", progress=False, precision=precision,
                             compile=compile)
    started = time.perf_counter()
    history = fit(model, lambda m, b: negative_elbo(m, b[0]), batches, settings=settings)
    call = time.perf_counter() - started
    return {"seconds_per_epoch": [float(r["seconds"]) for r in history.records],
            "train_loss_nats": [float(r["train"]["loss"]) for r in history.records], "call_seconds": call}


def train_pythae(x: torch.Tensor, epochs: int, seed: int) -> dict[str, Any]:
    pythae = _pythae()

    class EpochClock(pythae.trainers.training_callbacks.TrainingCallback):
        """Seconds from each epoch's start to its end, and the epoch's training loss as pythae logs it."""

        def __init__(self) -> None:
            self.seconds: list[float] = []
            self.losses: list[float] = []
            self.started = 0.0

        def on_epoch_begin(self, training_config: Any, **kwargs: Any) -> None:
            self.started = time.perf_counter()

        def on_epoch_end(self, training_config: Any, **kwargs: Any) -> None:
            self.seconds.append(time.perf_counter() - self.started)

        def on_log(self, training_config: Any, logs: dict[str, float], **kwargs: Any) -> None:
            self.losses.append(float(logs["train_epoch_loss"]))

    model = pythae_vae(seed)
    clock = EpochClock()
    with tempfile.TemporaryDirectory(prefix="vae_pythae_") as output_dir:
        config = pythae.trainers.BaseTrainerConfig(
            output_dir=output_dir, num_epochs=epochs, learning_rate=1e-3, per_device_train_batch_size=BATCH,
            per_device_eval_batch_size=BATCH, optimizer_cls="Adam", steps_saving=None, steps_predict=None,
            no_cuda=True, seed=seed)
        pipeline = pythae.pipelines.TrainingPipeline(model=model, training_config=config)
        started = time.perf_counter()
        pipeline(train_data=x, callbacks=[clock])
        call = time.perf_counter() - started
    if len(clock.seconds) != epochs or len(clock.losses) != epochs:
        raise RuntimeError(f"pythae reported {len(clock.seconds)} epoch times and {len(clock.losses)} losses "
                           f"for {epochs} epochs")
    return {"seconds_per_epoch": clock.seconds, "train_loss_nats": clock.losses, "call_seconds": call}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=3, help="epochs per model and round")
    parser.add_argument("--rounds", type=int, default=3, help="rounds of a fresh model each (the order alternates)")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--limit", type=int, default=0, help="train on the first N digits only (0: all 60,000)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=None, help="write the result JSON here")
    parser.add_argument("--precision", choices=["fp32", "bf16"], default="fp32",
                        help="dgmlab's training steps: fp32, or bf16 mixed precision (dgmlab.train); pythae stays "
                             "fp32: its amp option is CUDA autocast only, off with no_cuda and for the BCE loss")
    parser.add_argument("--compile", action="store_true", help="dgmlab's steps under torch.compile (dgmlab.train)")
    args = parser.parse_args()
    if args.epochs < 1 or args.rounds < 1 or args.threads < 1 or args.limit < 0:
        parser.error("--epochs, --rounds and --threads must be >= 1 and --limit >= 0")
    torch.set_num_threads(args.threads)
    _pythae()
    x, _, _ = mnist_tensors("train", view="grey", flatten=False, limit=args.limit or None)  # [N, 1, 28, 28]
    n = len(x)
    print(f"torch {torch.__version__}, pythae {version('pythae')}, {torch.get_num_threads()} threads, {n} digits, "
          f"batch {BATCH}, {args.epochs} epochs x {args.rounds} rounds", flush=True)

    parameters = {"dgmlab": count_parameters(dgmlab_vae(0)), "pythae": count_parameters(pythae_vae(0))}
    if parameters["dgmlab"] != parameters["pythae"]:
        raise RuntimeError(f"the two VAEs differ: {parameters} parameters")
    check = loss_units_check(x[:BATCH])
    print(f"loss units: on the same weights, batch and draw dgmlab -ELBO {check['dgmlab_neg_elbo']} nats, "
          f"pythae loss {check['pythae_loss']} (|difference| {check['abs_difference']})", flush=True)

    trainers = {"dgmlab": functools.partial(train_dgmlab, precision=args.precision, compile=args.compile),
                "pythae": train_pythae}
    for name in LIBRARIES:  # untimed: one-time costs (lazy imports on the first training step) fall on neither
        trainers[name](x[:2 * BATCH], 1, args.seed)
    runs: dict[str, list[dict[str, Any]]] = {name: [] for name in LIBRARIES}
    for index in range(args.rounds):
        order = LIBRARIES if index % 2 == 0 else LIBRARIES[::-1]
        for name in order:
            run = trainers[name](x, args.epochs, args.seed + index)
            run["round"] = index + 1
            runs[name].append(run)
            print(f"{name:<7s} round {index + 1}: "
                  + " ".join(f"{s:.3f}" for s in run["seconds_per_epoch"]) + " s/epoch, "
                  + f"train -ELBO {run['train_loss_nats'][-1]:.2f} nats after epoch {args.epochs} "
                  + f"(whole call {run['call_seconds']:.2f} s)", flush=True)

    result: dict[str, Any] = {
        "setting": f"VAE 784-{HIDDEN}-{LATENT} (ReLU, Bernoulli decoder) on {n} grey MNIST digits, batch {BATCH}, "
                   f"Adam 1e-3, {args.epochs} epochs x {args.rounds} rounds alternating, cpu, "
                   f"{torch.get_num_threads()} threads; dgmlab {args.precision}"
                   f"{' compiled' if args.compile else ''}, pythae fp32",
        "torch_version": torch.__version__, "pythae_version": version("pythae"), "threads": torch.get_num_threads(),
        "examples": n, "batch_size": BATCH, "epochs": args.epochs, "rounds": args.rounds,
        "dgmlab_precision": args.precision, "dgmlab_compile": args.compile,
        "loss_units_check": check,
    }
    medians = {}
    for name in LIBRARIES:
        epochs = [s for run in runs[name] for s in run["seconds_per_epoch"]]
        medians[name] = statistics.median(epochs)
        final = [run["train_loss_nats"][-1] for run in runs[name]]
        if not all(math.isfinite(loss) for loss in final):
            raise RuntimeError(f"{name}: a non-finite training loss {final}")
        result[name] = {
            "parameters": parameters[name], "median_seconds_per_epoch": round(medians[name], 4),
            "examples_per_second": round(n / medians[name], 1),
            "final_train_loss_nats": round(statistics.fmean(final), 3),
            "runs": [{"round": run["round"], "seconds_per_epoch": [round(s, 4) for s in run["seconds_per_epoch"]],
                      "train_loss_nats": [round(v, 3) for v in run["train_loss_nats"]],
                      "call_seconds": round(run["call_seconds"], 3)} for run in runs[name]],
        }
        print(f"{name:<7s} median {medians[name]:.3f} s/epoch ({len(epochs)} epochs), "
              f"{result[name]['examples_per_second']:.0f} examples/s, final train -ELBO "
              f"{result[name]['final_train_loss_nats']:.2f} nats (mean of {args.rounds})", flush=True)
    result["speedup_dgmlab_over_pythae"] = round(medians["pythae"] / medians["dgmlab"], 3)
    print(f"pythae / dgmlab seconds per epoch = {result['speedup_dgmlab_over_pythae']:.2f}", flush=True)
    if args.out is not None:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
