r"""Denoising an image file: dgmlab's restorers and the field's classical denoisers behind one function, and what
``dgmlab denoise`` runs.

The noise model is the one of every measured table: :math:`y = x + n`, :math:`n \sim \mathcal N(0, \sigma^2 I)`,
grey levels in [0, 1], and :math:`\sigma` given on the 0..255 scale (``sigma_255``; 25 means
:math:`\sigma = 25/255`) whatever the file's bit depth. The methods (:data:`METHODS`):

* ``epll``: :func:`dgmlab.restoration.epll` with the paper's schedule and a Gaussian-mixture patch prior, by
  default the bundled one (:func:`dgmlab.priors.natural_patch_prior`, K = 200 on 8x8 patches);
* ``epll_adapted``: :func:`dgmlab.restoration.adapted_epll`, the same prior first re-estimated from the noisy
  image's own patches (10 EM iterations with the noise modelled, relevance 1 towards the prior), then EPLL, then
  the prior adapted again to that restoration's patches and EPLL once more (it needs the patches of an image
  of about 100x100 pixels or more: on a 48x48 crop it loses to ``epll``);
* ``dip``: :func:`dgmlab.restoration.deep_image_prior`, stopped after ``iterations`` steps (default
  :data:`DIP_ITERATIONS`, tuned at :math:`\sigma = 25` on 128x128 crops of a training photograph; the right number
  depends on the image and the noise). The image is padded by mirroring to the sizes its network takes and
  cropped back;
* ``bm3d``: the ``bm3d`` package (Dabov et al. 2007) with the noise level given;
* ``nl_means``, ``tv``, ``wavelet``, ``wiener``, ``gaussian``: scikit-image's non-local means, total variation
  (Chambolle) and BayesShrink wavelet shrinkage, scipy's Wiener and Gaussian filters. Each has one free parameter,
  chosen by ``benchmarks/denoise_epll.py`` on a training photograph at :math:`\sigma_{255} \in \{15, 25, 50\}`
  (:data:`TUNED`); the value of the nearest tuned noise level (on a log scale) is used.

Where :math:`\sigma` is not given it is estimated from the image by scikit-image's ``estimate_sigma`` (the median
absolute deviation of the finest diagonal wavelet coefficients over 0.6745, Donoho & Johnstone 1994).

:func:`read_grey_image` accepts any greyscale image file that Pillow reads (PNG, TIFF, JPEG...; 1, 8 or 16 bits;
colour files whose three channels are equal are grey and accepted) and refuses, with one
:class:`~dgmlab.errors.ImageFileError` that says why, a missing, empty or unreadable file, a colour image, a
transparent one, and an image smaller than the method needs.
"""

from __future__ import annotations

import io
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from dgmlab.errors import ImageFileError, RunExistsError

__all__ = ["DIP_ITERATIONS", "METHODS", "TUNED", "DenoiseReport", "classical_denoisers", "denoise", "denoise_file",
           "estimate_noise_sigma", "read_grey_image", "write_grey_png"]

METHODS = ("epll", "epll_adapted", "dip", "bm3d", "nl_means", "tv", "wavelet", "wiener", "gaussian")
DIP_ITERATIONS = 2000
WAVELETS = ("db1", "db2", "db4", "sym8")
# sigma_255 -> the parameter benchmarks/denoise_epll.py chose on a training photograph (its result file's
# tuned_parameters): the Gaussian filter's width, Wiener's window, TV's weight, the wavelet (an index into
# WAVELETS), NLM's h / sigma
TUNED: dict[str, dict[float, float]] = {
    "gaussian": {15.0: 0.75, 25.0: 0.75, 50.0: 1.25},
    "wiener": {15.0: 3, 25.0: 3, 50.0: 5},
    "tv": {15.0: 0.04, 25.0: 0.08, 50.0: 0.16},
    "wavelet": {15.0: 1, 25.0: 1, 50.0: 1},
    "nl_means": {15.0: 0.6, 25.0: 0.6, 50.0: 0.4},
}


def classical_denoisers(sigma: float) -> dict[str, tuple[Callable[[np.ndarray, float], np.ndarray], list[float]]]:
    """Each classical denoiser at noise level ``sigma`` (grey levels in [0, 1]) as (its function of (noisy image,
    parameter), the grid of its parameter that ``benchmarks/denoise_epll.py`` tunes on)."""
    from scipy.ndimage import gaussian_filter
    from scipy.signal import wiener
    from skimage.restoration import denoise_nl_means, denoise_tv_chambolle, denoise_wavelet

    return {
        "gaussian": (lambda y, w: gaussian_filter(y, w), [0.5, 0.75, 1.0, 1.25, 1.5, 2.0, 2.5, 3.0]),
        "wiener": (lambda y, w: wiener(y, int(w), noise=sigma**2), [3, 5, 7, 9]),
        "tv": (lambda y, w: denoise_tv_chambolle(y, weight=w), [0.02, 0.04, 0.06, 0.08, 0.1, 0.13, 0.16, 0.2, 0.25]),
        "wavelet": (lambda y, w: denoise_wavelet(y, sigma=sigma, wavelet=WAVELETS[int(w)], mode="soft",
                                                 method="BayesShrink", rescale_sigma=True), [0, 1, 2, 3]),
        "nl_means": (lambda y, w: denoise_nl_means(y, h=w * sigma, sigma=sigma, patch_size=7, patch_distance=11,
                                                   fast_mode=True), [0.4, 0.6, 0.8, 1.0, 1.2]),
    }


def tuned_parameter(method: str, sigma_255: float) -> float:
    """The parameter of classical ``method`` tuned at the noise level nearest ``sigma_255`` on a log scale."""
    table = TUNED[method]
    nearest = min(table, key=lambda level: abs(math.log(level / sigma_255)))
    return table[nearest]


def estimate_noise_sigma(image: Tensor) -> float:
    """The noise's standard deviation in ``image`` (grey levels in [0, 1]) on the 0..255 scale, by
    scikit-image's wavelet estimate."""
    from skimage.restoration import estimate_sigma

    return float(estimate_sigma(image.double().numpy())) * 255


def _padded_for_dip(image: np.ndarray, multiple: int, minimum: int) -> tuple[np.ndarray, tuple[int, int]]:
    height, width = image.shape
    target = [max(minimum, -(-side // multiple) * multiple) for side in (height, width)]
    pad = [(0, target[0] - height), (0, target[1] - width)]
    return np.pad(image, pad, mode="symmetric"), (height, width)


def denoise(noisy: Tensor, method: str, sigma_255: float, *, prior=None, iterations: int = DIP_ITERATIONS,
            seed: int = 0, progress: Callable[[int], None] | None = None) -> Tensor:
    """Denoise ``noisy`` ``[H, W]`` (grey levels in [0, 1]) with ``method`` (one of :data:`METHODS`) at noise
    level ``sigma_255`` (0..255 scale); returns the restored image ``[H, W]`` in [0, 1], float64.

    ``prior``: EPLL's patch prior (a :class:`~dgmlab.models.mixtures.GaussianMixture`; default the bundled one).
    ``iterations`` and ``seed``: the deep image prior's steps and seed. ``progress(step)``: called after each of
    the deep image prior's steps."""
    from dgmlab.restoration import adapted_epll, deep_image_prior, epll

    if method not in METHODS:
        raise ValueError(f"denoise: unknown method {method!r}; choose one of {', '.join(METHODS)}")
    if not (isinstance(sigma_255, (int, float)) and math.isfinite(sigma_255) and sigma_255 > 0):
        raise ValueError(f"denoise: sigma must be the noise's standard deviation on the 0..255 scale (> 0), got "
                         f"{sigma_255!r}")
    sigma = sigma_255 / 255
    noisy = noisy.double()
    if method in ("epll", "epll_adapted"):
        if prior is None:
            from dgmlab.priors import natural_patch_prior

            prior = natural_patch_prior()
        return (epll if method == "epll" else adapted_epll)(noisy, prior, sigma).image
    if method == "dip":
        from dgmlab.models.deep_image_prior import SkipNet

        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            net = SkipNet(32, 1)  # the paper's denoising network, initialised as deep_image_prior would
        padded, (height, width) = _padded_for_dip(noisy.numpy(), net.size_multiple, net.smallest_size)
        callback = None if progress is None else (lambda step, output, average: progress(step))
        result = deep_image_prior(torch.from_numpy(padded), iterations=iterations, seed=seed, net=net,
                                  callback=callback)
        return result.image[:height, :width].double()
    if method == "bm3d":
        try:
            import bm3d
        except ImportError:
            raise ImageFileError("the bm3d method needs the bm3d package: pip install bm3d (it is in "
                                 "dgmlab[bench])") from None
        return torch.from_numpy(np.clip(np.asarray(bm3d.bm3d(noisy.numpy(), sigma), dtype=np.float64), 0, 1))
    function, _ = classical_denoisers(sigma)[method]
    return torch.from_numpy(np.clip(function(noisy.numpy(), tuned_parameter(method, sigma_255)), 0, 1))


# --- files -----------------------------------------------------------------------------------------------------

MINIMUM_SIDE = {"epll": 8, "epll_adapted": 8, "dip": 8, "bm3d": 8, "nl_means": 8, "tv": 2, "wavelet": 2, "wiener": 3,
                "gaussian": 1}


def read_grey_image(path: str | Path) -> tuple[Tensor, int]:
    """The greyscale image in ``path`` as grey levels in [0, 1] (float64 ``[H, W]``) and its bit depth (8 or 16;
    a 1-bit image reads as 8). Anything else is one :class:`~dgmlab.errors.ImageFileError` saying why."""
    from PIL import Image, UnidentifiedImageError

    path = Path(path)
    if not path.exists():
        raise ImageFileError(f"{path} does not exist")
    if path.is_dir():
        raise ImageFileError(f"{path} is a folder, not an image file")
    if path.stat().st_size == 0:
        raise ImageFileError(f"{path} is empty (0 bytes), not an image")
    try:
        with Image.open(path) as image:
            image.load()
            mode = image.mode
            if mode in ("I;16", "I;16B", "I;16L", "I"):
                pixels = np.asarray(image, dtype=np.float64)
                if pixels.min() < 0 or pixels.max() > 65535:
                    raise ImageFileError(f"{path} holds {mode} values outside 0..65535; save it as an 8- or "
                                         f"16-bit greyscale PNG")
                return torch.from_numpy(pixels / 65535.0), 16
            if mode == "F":
                raise ImageFileError(f"{path} is a floating-point image; save it as an 8- or 16-bit greyscale PNG")
            if mode in ("1", "L"):
                pixels = np.asarray(image.convert("L"), dtype=np.float64)
            else:
                rgba = np.asarray(image.convert("RGBA"), dtype=np.float64)
                if (rgba[..., 3] < 255).any():
                    raise ImageFileError(f"{path} has transparent pixels ({mode}); flatten it onto a background "
                                         f"and save it as a greyscale PNG")
                rgb = rgba[..., :3]
                if not ((rgb[..., 0] == rgb[..., 1]) & (rgb[..., 1] == rgb[..., 2])).all():
                    raise ImageFileError(
                        f"{path} is a colour image ({mode}); denoising takes greyscale images: convert it first, e.g. "
                        f"python -c \"from PIL import Image; Image.open('{path.name}').convert('L')"
                        f".save('grey.png')\"")
                pixels = rgb[..., 0]
    except ImageFileError:
        raise
    except UnidentifiedImageError:
        raise ImageFileError(f"{path} is not an image file that Pillow can read (PNG, TIFF, JPEG...)") from None
    except (OSError, SyntaxError, ValueError) as error:
        raise ImageFileError(f"{path} is a damaged or truncated image file ({error})") from None
    if pixels.size == 0:
        raise ImageFileError(f"{path} has no pixels")
    return torch.from_numpy(pixels / 255.0), 8


def write_grey_png(image: Tensor, path: str | Path, *, bit_depth: int = 8) -> Path:
    """Write ``image`` (grey levels, clipped to [0, 1]) to the PNG file ``path`` with ``bit_depth`` 8 or 16,
    atomically (a crash leaves any earlier file intact)."""
    from PIL import Image

    from dgmlab.checkpoint import atomic_write_bytes

    if bit_depth not in (8, 16):
        raise ValueError(f"write_grey_png: bit_depth must be 8 or 16, got {bit_depth!r}")
    top = 255 if bit_depth == 8 else 65535
    values = np.rint(np.clip(image.double().numpy(), 0, 1) * top).astype(np.uint8 if bit_depth == 8 else np.uint16)
    buffer = io.BytesIO()
    Image.fromarray(values).save(buffer, format="PNG")
    path = Path(path)
    atomic_write_bytes(path, buffer.getvalue())
    return path


@dataclass
class DenoiseReport:
    """What :func:`denoise_file` did: the method, the noise level on the 0..255 scale and whether it was
    ``estimated``, the image's ``shape`` and ``bit_depth``, the files written, the seconds the denoiser took, and,
    where a clean reference was known, the PSNR (dB) of the noisy input and of the result."""

    method: str
    sigma_255: float
    estimated: bool
    shape: tuple[int, int]
    bit_depth: int
    out: Path
    seconds: float
    noisy_out: Path | None = None
    psnr_noisy_db: float | None = None
    psnr_db: float | None = None
    notes: list[str] = field(default_factory=list)

    def summary(self) -> str:
        how = "estimated" if self.estimated else "given"
        lines = [f"{self.method} at sigma = {self.sigma_255:.4g} ({how}, 0..255 scale) on a {self.shape[0]}x"
                 f"{self.shape[1]} image in {self.seconds:.1f} s: wrote {self.out}"]
        if self.noisy_out is not None:
            lines.append(f"noisy image written to {self.noisy_out}")
        if self.psnr_db is not None:
            lines.append(f"PSNR against the clean image: noisy {self.psnr_noisy_db:.2f} dB, denoised "
                         f"{self.psnr_db:.2f} dB")
        return "\n".join(lines + self.notes)


def _check_out(out: Path, inputs: list[Path], overwrite: bool, flag: str) -> None:
    if out.suffix.lower() != ".png":
        raise ImageFileError(f"{flag} {out} must be a .png file")
    if any(out.resolve() == source.resolve() for source in inputs):
        raise ImageFileError(f"{flag} {out} is an input image; write the result to another file")
    if out.is_dir():
        raise ImageFileError(f"{flag} {out} is a folder; give a file name ending in .png")
    if out.exists() and not overwrite:
        raise RunExistsError(f"{out} exists; choose another {flag} or pass --overwrite to replace it")


def denoise_file(image: str | Path, out: str | Path, *, method: str = "epll", sigma_255: float | None = None,
                 prior: str | Path | None = None, clean: str | Path | None = None, add_noise: bool = False,
                 noisy_out: str | Path | None = None, iterations: int = DIP_ITERATIONS, seed: int = 0,
                 overwrite: bool = False, progress: bool = False) -> DenoiseReport:
    """Denoise the greyscale file ``image`` with ``method`` and write the result to the PNG ``out`` (in the input's
    bit depth), refusing to replace an existing file unless ``overwrite``. Every input is checked before any work.

    ``sigma_255``: the noise level on the 0..255 scale (``None``: estimated from the image). ``prior``: a mixture
    saved by :func:`~dgmlab.models.mixtures.save_mixture` for ``epll`` and ``epll_adapted`` (default: the bundled
    prior). ``clean``: a clean reference of the same size, to report the PSNR. ``add_noise``: ``image`` is clean;
    Gaussian noise of ``sigma_255`` (required) from ``seed`` is added first, the PSNR is reported against
    ``image``, and the noisy image is written to ``noisy_out`` if given. ``iterations`` and ``progress``: the deep
    image prior's steps and a progress bar for them."""
    from dgmlab.models.mixtures import load_mixture
    from dgmlab.restoration import add_noise as noise_of
    from dgmlab.restoration import psnr

    if method not in METHODS:
        raise ValueError(f"unknown method {method!r}; choose one of {', '.join(METHODS)}")
    if sigma_255 is not None and not (math.isfinite(sigma_255) and sigma_255 > 0):
        raise ValueError(f"sigma must be a positive number on the 0..255 scale, got {sigma_255!r}")
    if add_noise and sigma_255 is None:
        raise ValueError("adding noise needs its level: give --sigma (on the 0..255 scale) with --add-noise")
    if add_noise and clean is not None:
        raise ValueError("with --add-noise the image itself is the clean reference; leave out --clean")
    if noisy_out is not None and not add_noise:
        raise ValueError("--noisy-out writes the image with the noise added: it needs --add-noise")
    if prior is not None and method not in ("epll", "epll_adapted"):
        raise ValueError(f"--prior is EPLL's patch prior; the {method} method takes none")
    image, out = Path(image), Path(out)
    inputs = [image] + ([Path(clean)] if clean is not None else [])
    _check_out(out, inputs, overwrite, "--out")
    if noisy_out is not None:
        noisy_out = Path(noisy_out)
        _check_out(noisy_out, inputs, overwrite, "--noisy-out")
        if noisy_out.resolve() == out.resolve():
            raise ImageFileError("--noisy-out and --out are the same file; give two names")
    pixels, bit_depth = read_grey_image(image)
    if min(pixels.shape) < MINIMUM_SIDE[method]:
        raise ImageFileError(f"{image} is {pixels.shape[0]}x{pixels.shape[1]} pixels; the {method} method needs at "
                             f"least {MINIMUM_SIDE[method]}x{MINIMUM_SIDE[method]}")
    reference = None
    if clean is not None:
        reference, _ = read_grey_image(clean)
        if reference.shape != pixels.shape:
            raise ImageFileError(f"the clean image {clean} is {reference.shape[0]}x{reference.shape[1]} pixels and "
                                 f"{image} is {pixels.shape[0]}x{pixels.shape[1]}; they must be the same size")
    mixture = load_mixture(prior) if prior is not None else None
    if mixture is not None and min(pixels.shape) ** 2 < mixture.dim:
        raise ImageFileError(f"{image} is smaller than the prior's patches ({math.isqrt(mixture.dim)} pixels wide)")
    if add_noise:
        reference = pixels
        pixels = noise_of(pixels, sigma_255 / 255, seed=seed)
    estimated = sigma_255 is None
    if estimated:
        sigma_255 = estimate_noise_sigma(pixels)
        if not sigma_255 > 0:
            raise ImageFileError(f"{image} looks noise-free (estimated sigma 0); give the noise level with --sigma")
    bar = None
    step = None
    if progress and method == "dip":
        from tqdm import tqdm

        bar = tqdm(total=iterations, desc="deep image prior", unit="step", leave=False)
        step = lambda _: bar.update(1)  # noqa: E731
    started = time.perf_counter()
    try:
        restored = denoise(pixels, method, sigma_255, prior=mixture, iterations=iterations, seed=seed, progress=step)
    finally:
        if bar is not None:
            bar.close()
    seconds = time.perf_counter() - started
    report = DenoiseReport(method=method, sigma_255=float(sigma_255), estimated=estimated,
                           shape=tuple(pixels.shape), bit_depth=bit_depth, out=out, seconds=seconds)
    if add_noise and noisy_out is not None:
        report.noisy_out = write_grey_png(pixels, noisy_out, bit_depth=bit_depth)
    write_grey_png(restored, out, bit_depth=bit_depth)
    if reference is not None:
        report.psnr_noisy_db = psnr(pixels.clamp(0, 1), reference)
        report.psnr_db = psnr(restored, reference)
    if method == "dip" and iterations == DIP_ITERATIONS:
        report.notes.append(f"the deep image prior stopped after the default {DIP_ITERATIONS} steps (tuned at sigma "
                            f"= 25 on 128x128 crops); other images and noise levels may want --iterations")
    return report
