"""Copy the figures the notes show from a run of ``dgmlab pset1`` into docs/figures/pset1/.

The notes show figures that dgmlab itself made. They come from one command, run from the repository root:

    dgmlab pset1 --out runs/pset1                  # about 3 minutes on 2 CPU cores
    python docs/figures/update_figures.py runs/pset1

The copies are committed, so building the site never trains a model. Rerun both commands after a change
to the models, the objectives or the plots, and check the captions in docs/notes/lecture2-vae.md still
describe what the figures show.
"""

from __future__ import annotations

import shutil
import sys
from pathlib import Path

# (file in the run directory, name under docs/figures/pset1/)
FIGURES = [
    ("ae/latent_manifold.png", "ae-latent-manifold.png"),
    ("vae_mc/latent_manifold.png", "vae-mc-latent-manifold.png"),
    ("vae_mc/reconstructions_train_0_4.png", "vae-mc-reconstructions.png"),
    ("vae_analytic/reconstructions_train_0_4.png", "vae-analytic-reconstructions.png"),
    ("vae_mc/samples.png", "vae-mc-samples.png"),
    ("kl_check/kl_estimator_convergence.png", "kl-estimator-convergence.png"),
]


def main(run_dir: str) -> int:
    source, target = Path(run_dir), Path(__file__).resolve().parent / "pset1"
    absent = [name for name, _ in FIGURES if not (source / name).is_file()]
    if absent:
        print(f"{source} lacks {', '.join(absent)}: run `dgmlab pset1 --out {source}` first", file=sys.stderr)
        return 1
    target.mkdir(exist_ok=True)
    for name, copy in FIGURES:
        shutil.copyfile(source / name, target / copy)
        print(f"{source / name} -> {target / copy}")
    return 0


if __name__ == "__main__":
    if len(sys.argv) != 2:
        print(__doc__, file=sys.stderr)
        sys.exit(2)
    sys.exit(main(sys.argv[1]))
