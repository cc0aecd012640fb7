"""What the restoration benchmarks (denoise_epll.py, inpaint_epll.py, deep_image_prior.py) share: the patch prior,
read from a file, bundled, or fitted on the spot. Imported by those scripts (their folder is
on ``sys.path`` when they run); not a benchmark itself."""

from __future__ import annotations

import argparse

import torch

from dgmlab.data.images import photographs, random_patches
from dgmlab.models.mixtures import GaussianMixture, em_fit, load_mixture, mixture_from_seeds


def load_prior(args: argparse.Namespace) -> tuple[GaussianMixture, str]:
    """The mixture in ``args.prior`` (a file of benchmarks/patch_prior_gmm.py, or ``bundled``: the prior that ships
    in dgmlab.priors, the K = 200 mixture of the result files), or one of ``args.components`` fitted here to
    ``args.train_patches`` mean-removed 8x8 patches of the training photographs; with a line saying which."""
    if args.prior is not None and str(args.prior) == "bundled":
        from dgmlab.priors import NATURAL_PATCH_PRIOR, natural_patch_prior, natural_patch_prior_path

        # the file's SHA-256 prefix says which bundled prior a result file was measured with
        return natural_patch_prior(), (f"bundled: {natural_patch_prior_path().name} "
                                       f"(SHA-256 {NATURAL_PATCH_PRIOR[1][:12]})")
    if args.prior is not None:
        return load_mixture(args.prior), str(args.prior)
    generator = torch.Generator().manual_seed(args.seed)
    patches = random_patches(photographs("train"), args.train_patches, 8, generator=generator)
    mixture = mixture_from_seeds(patches, args.components, generator=generator)
    history = em_fit(mixture, patches, max_iter=100, tol=1e-3, compute_dtype=torch.float32)
    return mixture, (f"fitted here: K = {args.components}, {args.train_patches} training patches, "
                     f"{history.iterations} EM iterations")
