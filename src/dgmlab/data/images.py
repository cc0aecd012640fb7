r"""Natural photographs for image priors, read offline from inside the scikit-image wheel, and their patches.

scikit-image ships a few photographs in ``skimage/data/``; they are read here straight from the installed
package's folder (no download, no ``skimage`` import), each checked against its SHA-256 first, and turned into
grey levels in [0, 1] (colour images by the ITU-R BT.709 luma :math:`0.2125R + 0.7154G + 0.0721B`, as
``skimage.color.rgb2gray``). The split is fixed: the priors learn from ``TRAIN_PHOTOGRAPHS`` and every
restoration is measured on ``TEST_PHOTOGRAPHS``, which no prior has seen.

Patches are :math:`p \times p` windows flattened row by row; with ``remove_mean`` each patch has its own mean
(its DC component) subtracted, as in Zoran & Weiss (2011), whose priors model the remaining :math:`p^2`
values (a :math:`p^2 - 1` dimensional subspace).
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from dgmlab.data.mnist import _sha256_of_file
from dgmlab.errors import DgmlabDataError
from dgmlab.utils import check_int

__all__ = ["PHOTOGRAPHS", "TEST_PHOTOGRAPHS", "TRAIN_PHOTOGRAPHS", "centre_crop", "extract_patches", "photograph",
           "photographs", "random_patches"]

# file in skimage/data/ and its SHA-256 (scikit-image 0.26)
PHOTOGRAPHS: dict[str, tuple[str, str]] = {
    "astronaut": ("astronaut.png", "88431cd9653ccd539741b555fb0a46b61558b301d4110412b5bc28b5e3ea6cb5"),
    "coffee": ("coffee.png", "cc02f8ca188b167c775a7101b5d767d1e71792cf762c33d6fa15a4599b5a8de7"),
    "chelsea": ("chelsea.png", "596aa1e7cb875eb79f437e310381d26b338a81c2da23439704a73c4651e8c4bb"),
    "rocket": ("rocket.jpg", "c2dd0de7c538df8d111e479619b129464d0269d0ae5fd18ca91d33a7fdfea95c"),
    "motorcycle": ("motorcycle_left.png", "db18e9c4157617403c3537a6ba355dfeafe9a7eabb6b9b94cb33f6525dd49179"),
    "brick": ("brick.png", "7966caf324f6ba843118d98f7a07746d22f6a343430add0233eca5f6eaaa8fcf"),
    "grass": ("grass.png", "b6b6022426b38936c43a4ac09635cd78af074e90f42ffa8227ac8b7452d39f89"),
    "gravel": ("gravel.png", "c48615b451bf1e606fbd72c0aa9f8cc0f068ab7111ef7d93bb9b0f2586440c12"),
    "camera": ("camera.png", "b0793d2adda0fa6ae899c03989482bff9a42d3d5690fc7e3648f2795d730c23a"),
    "coins": ("coins.png", "f8d773fc9cfa6f4d8e5942dc34d0a0788fcaed2a4fefbbed0aef5398d7ef4cba"),
    "moon": ("moon.png", "78739619d11f7eb9c165bb5d2efd4772cee557812ec847532dbb1d92ef71f577"),
}
TRAIN_PHOTOGRAPHS = ("astronaut", "coffee", "chelsea", "rocket", "motorcycle", "brick", "grass", "gravel")
TEST_PHOTOGRAPHS = ("camera", "coins", "moon")
_SPLITS = {"train": TRAIN_PHOTOGRAPHS, "test": TEST_PHOTOGRAPHS}
_LUMA = np.array([0.2125, 0.7154, 0.0721])


def _data_folder() -> Path:
    spec = importlib.util.find_spec("skimage")
    if spec is None or not spec.submodule_search_locations:
        raise DgmlabDataError("the photographs come from inside the scikit-image package, which is not installed: "
                              "pip install 'dgmlab[images]' (or make setup)")
    return Path(next(iter(spec.submodule_search_locations))) / "data"


def photograph(name: str) -> Tensor:
    """The photograph ``name`` (a key of ``PHOTOGRAPHS``) as grey levels in [0, 1], float64 ``[H, W]``."""
    from PIL import Image

    if name not in PHOTOGRAPHS:
        raise DgmlabDataError(f"no photograph named {name!r}; choose one of {', '.join(PHOTOGRAPHS)}")
    file, expected = PHOTOGRAPHS[name]
    path = _data_folder() / file
    if not path.is_file():
        raise DgmlabDataError(f"{path} is missing from the installed scikit-image; reinstall it "
                              f"(pip install --force-reinstall scikit-image)")
    digest = _sha256_of_file(path)
    if digest != expected:
        raise DgmlabDataError(f"{path}: SHA-256 {digest}, expected {expected}: this scikit-image ships another "
                              f"version of the photograph (the results here are for scikit-image 0.26); install "
                              f"the version in constraints.txt")
    with Image.open(path) as image:
        pixels = np.asarray(image.convert("RGB") if image.mode not in ("L", "RGB") else image, dtype=np.float64)
    if pixels.ndim == 3:
        pixels = pixels[..., :3] @ _LUMA
    # the luma weights sum to 1, so white can round to 1 + 2e-16: clip to the range that grey levels have
    return torch.from_numpy(np.clip(pixels / 255.0, 0.0, 1.0))


def photographs(split: str) -> dict[str, Tensor]:
    """The photographs of ``split`` (``"train"`` or ``"test"``) by name, each as :func:`photograph`."""
    if split not in _SPLITS:
        raise DgmlabDataError(f"split must be 'train' or 'test', got {split!r}")
    return {name: photograph(name) for name in _SPLITS[split]}


def centre_crop(image: Tensor, side: int, *, multiple: int = 1) -> Tensor:
    """The centre ``side`` x ``side`` crop of ``image`` ``[H, W]`` (the whole image for ``side <= 0``; a side the
    image is shorter than stays whole), its height and width then rounded down to multiples of ``multiple``."""
    check_int(multiple, "multiple", minimum=1, owner="centre_crop")
    height, width = image.shape if side <= 0 else (min(side, image.shape[0]), min(side, image.shape[1]))
    height, width = height // multiple * multiple, width // multiple * multiple
    if height == 0 or width == 0:
        raise ValueError(f"centre_crop: a {list(image.shape)} image has no crop whose sides are multiples of "
                         f"{multiple}")
    top, left = (image.shape[0] - height) // 2, (image.shape[1] - width) // 2
    return image[top:top + height, left:left + width]


def _check_image(image: object, size: int, owner: str) -> Tensor:
    if not isinstance(image, Tensor) or image.dim() != 2 or not image.is_floating_point():
        shape = list(image.shape) if isinstance(image, Tensor) else type(image).__name__
        raise ValueError(f"{owner}: image must be a float tensor of grey levels [H, W], got {shape}")
    if min(image.shape) < size:
        raise ValueError(f"{owner}: a {list(image.shape)} image has no {size}x{size} patch; use a smaller size")
    return image


def extract_patches(image: Tensor, size: int = 8, stride: int = 1, *, remove_mean: bool = False) -> Tensor:
    """Every ``size`` x ``size`` patch of ``image`` ``[H, W]`` whose top-left corner is on the ``stride`` grid,
    flattened row by row: ``[n_rows * n_cols, size**2]``, patches in row-major order of their corners."""
    check_int(size, "size", minimum=1, owner="extract_patches")
    check_int(stride, "stride", minimum=1, owner="extract_patches")
    image = _check_image(image, size, "extract_patches")
    windows = image.unfold(0, size, stride).unfold(1, size, stride)  # [rows, cols, size, size]
    patches = windows.reshape(-1, size * size)
    return patches - patches.mean(1, keepdim=True) if remove_mean else patches.clone()


def random_patches(images: dict[str, Tensor] | list[Tensor], count: int, size: int = 8, *,
                   generator: torch.Generator | None = None, remove_mean: bool = True) -> Tensor:
    """``count`` patches drawn uniformly from all patch positions of all ``images`` (a larger image gives more),
    ``[count, size**2]``, mean-removed by default."""
    check_int(count, "count", minimum=1, owner="random_patches")
    check_int(size, "size", minimum=1, owner="random_patches")
    images = list(images.values()) if isinstance(images, dict) else list(images)
    if not images:
        raise ValueError("random_patches: no images given")
    images = [_check_image(image, size, "random_patches") for image in images]
    positions = torch.tensor([(image.shape[0] - size + 1) * (image.shape[1] - size + 1) for image in images])
    flat = torch.randint(int(positions.sum()), (count,), generator=generator)
    which = torch.searchsorted(torch.cumsum(positions, 0), flat, right=True)
    offsets = flat - torch.cat([torch.zeros(1, dtype=torch.long), torch.cumsum(positions, 0)[:-1]])[which]
    patches = torch.empty(count, size * size, dtype=images[0].dtype)
    for index, image in enumerate(images):
        chosen = torch.nonzero(which == index).flatten()
        if len(chosen) == 0:
            continue
        width = image.shape[1] - size + 1
        rows, cols = offsets[chosen] // width, offsets[chosen] % width
        grid = torch.arange(size)
        patches[chosen] = image[(rows[:, None, None] + grid[:, None]), (cols[:, None, None] + grid)].reshape(
            len(chosen), size * size)
    return patches - patches.mean(1, keepdim=True) if remove_mean else patches
