"""One process of the distributed tests (started by tests/test_distributed.py, under torchrun or by hand).

Trains a small float64 MADE on dynamically binarized grey vectors with the one trainer, in whatever process
group the environment describes, and writes this rank's final parameters to ``OUT/rank{r}.safetensors``.
Not a test module itself (pytest collects only ``test_*.py``).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch
from safetensors.torch import save_file

from dgmlab import distributed
from dgmlab.data import TensorBatches
from dgmlab.data.views import dynamic_binarize
from dgmlab.errors import DgmlabError
from dgmlab.models import MADE, VQVAE
from dgmlab.objectives import exact_nll, vqvae_loss
from dgmlab.train import TrainSettings, fit


def data(dim: int = 12) -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(0)
    grey = torch.rand(203, dim, generator=generator, dtype=torch.float64)
    test = torch.bernoulli(torch.rand(57, dim, generator=generator, dtype=torch.float64), generator=generator)
    return grey, test


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--out", required=True)
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--batch-size", type=int, default=31)
    parser.add_argument("--resume", action="store_true")
    parser.add_argument("--model", choices=["made", "vqvae"], default="made",
                        help="vqvae: a tiny VQ-VAE with an EMA codebook, dead codes restarted after every unused step")
    parser.add_argument("--checkpoint-every-step", action="store_true", help="checkpoint inside epochs, every step")
    parser.add_argument("--step-delay", type=float, default=0.0, help="seconds of sleep per step (the kill test)")
    args = parser.parse_args()
    torch.set_num_threads(1)
    out = Path(args.out)
    with distributed.session("cpu") as group:
        if args.model == "made":
            grey, test = data()
            torch.manual_seed(0)
            model = MADE(12, [16, 16]).double()
            loss = exact_nll
        else:
            grey, test = data(64)
            grey, test = grey.reshape(-1, 1, 8, 8), test.reshape(-1, 1, 8, 8)
            torch.manual_seed(0)
            model = VQVAE("vq_ema", 16, 3, hidden=8, residual_blocks=0, image_size=8,
                          quantizer_options={"restart_after": 1}).double()
            loss = vqvae_loss
        train = TensorBatches(grey, batch_size=args.batch_size, seed=3, transform=dynamic_binarize)
        test_batches = TensorBatches(test, batch_size=8, shuffle=False)

        def objective(m, batch):
            if args.step_delay and m.training:
                time.sleep(args.step_delay)
            return loss(m, batch[0].double())

        settings = TrainSettings(epochs=args.epochs, lr=1e-2, seed=5, device="cpu", progress=False, ema_decay=0.9,
                                 checkpoint_every_minutes=1e-9 if args.checkpoint_every_step else None)
        try:
            fit(model, objective, train, test_batches, settings, run_dir=out / "run", config={"name": "worker"},
                resume=args.resume)
        except DgmlabError as error:  # one line, as the command line reports it
            print(f"worker: error: {error}", file=sys.stderr)
            return 2
        state = {k: v.contiguous() for k, v in model.state_dict().items()}
        save_file(state, str(out / f"rank{group.rank}.safetensors"))
    return 0


if __name__ == "__main__":
    sys.exit(main())
