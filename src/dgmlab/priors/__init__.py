r"""Trained priors shipped inside the package, so that restoring an image needs no training first.

``natural_8x8_k200.safetensors`` is Zoran & Weiss's (2011) patch prior: a Gaussian mixture with
:math:`K = 200` full-covariance components on mean-removed :math:`8 \times 8` patches of grey levels in [0, 1],

.. math:: p(x) = \sum_{k=1}^{200} \pi_k\,\mathcal N(x \mid \mu_k, \Sigma_k),

fitted by EM (:func:`dgmlab.models.mixtures.em_fit`) to 300,000 random patches of the eight training photographs
of :mod:`dgmlab.data.images` (50 iterations from a k-means++ start; held-out log-likelihood 202.39 nats per test
patch). ``benchmarks/patch_prior_gmm.py`` fits it again (the command is in the file's metadata and in
``benchmarks/results/patch_prior_gmm_300k_cpu_2026-12-04.json``). Until 2026-12-04 the package shipped the same
mixture fitted to 50,000 patches (test log-likelihood 198.69, SHA-256 6d217338...): a result file whose prior
is ``bundled: natural_8x8_k200.safetensors`` with no SHA-256 after it used that one. It is stored in float32
(3.3 MB) and read back in float64; EPLL with it and with the float64 original agree to 1e-6 dB. The file is
checked against its SHA-256 before it is read.
"""

from __future__ import annotations

from importlib import resources
from pathlib import Path

from dgmlab.errors import DgmlabDataError
from dgmlab.models.mixtures import GaussianMixture, load_mixture

__all__ = ["NATURAL_PATCH_PRIOR", "natural_patch_prior", "natural_patch_prior_path"]

# file in this package and its SHA-256
NATURAL_PATCH_PRIOR = ("natural_8x8_k200.safetensors",
                       "463a2e7104ccfccda93e8946c34b5f29ddf83b2da4f0be2981f087814819a766")


def natural_patch_prior_path() -> Path:
    """Where the bundled natural-image patch prior lies in the installed package."""
    return Path(str(resources.files(__name__) / NATURAL_PATCH_PRIOR[0]))


def natural_patch_prior() -> GaussianMixture:
    """The bundled patch prior (K = 200, D = 64, float64), after checking the file's SHA-256."""
    from dgmlab.data.mnist import _sha256_of_file

    path = natural_patch_prior_path()
    if not path.is_file():
        raise DgmlabDataError(f"the bundled patch prior {path} is missing; reinstall dgmlab (pip install -e .)")
    digest = _sha256_of_file(path)
    if digest != NATURAL_PATCH_PRIOR[1]:
        raise DgmlabDataError(f"the bundled patch prior {path} has SHA-256 {digest}, expected "
                              f"{NATURAL_PATCH_PRIOR[1]}: the file is damaged; reinstall dgmlab")
    return load_mixture(path)
