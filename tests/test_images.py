"""Photographs from inside the scikit-image wheel (dgmlab.data.images): offline, verified, split, and patched."""

from __future__ import annotations

import math

import pytest
import torch

from dgmlab.data import images as image_data
from dgmlab.data.images import (
    PHOTOGRAPHS,
    TEST_PHOTOGRAPHS,
    TRAIN_PHOTOGRAPHS,
    centre_crop,
    extract_patches,
    photograph,
    photographs,
    random_patches,
)
from dgmlab.errors import DgmlabDataError

skimage_data = pytest.importorskip("skimage.data")
skimage_color = pytest.importorskip("skimage.color")


@pytest.mark.parametrize("name", sorted(PHOTOGRAPHS))
def test_every_photograph_is_the_one_scikit_image_ships_as_grey_levels_in_0_1(name):
    ours = photograph(name)
    theirs = getattr(skimage_data, "stereo_motorcycle" if name == "motorcycle" else name)()
    theirs = theirs[0] if name == "motorcycle" else theirs  # the left image of the stereo pair
    theirs = skimage_color.rgb2gray(theirs) if theirs.ndim == 3 else theirs / 255.0
    assert ours.dtype == torch.float64 and ours.shape == theirs.shape
    torch.testing.assert_close(ours, torch.from_numpy(theirs).double(), atol=1e-12, rtol=0)
    assert 0.0 <= float(ours.min()) and float(ours.max()) <= 1.0 and float(ours.std()) > 0.05


def test_the_split_is_fixed_and_disjoint():
    assert set(TRAIN_PHOTOGRAPHS).isdisjoint(TEST_PHOTOGRAPHS)
    assert set(TRAIN_PHOTOGRAPHS) | set(TEST_PHOTOGRAPHS) == set(PHOTOGRAPHS)
    assert list(photographs("test")) == list(TEST_PHOTOGRAPHS)


def test_a_changed_file_is_refused_before_it_is_read(monkeypatch):
    file, _ = PHOTOGRAPHS["camera"]
    monkeypatch.setitem(image_data.PHOTOGRAPHS, "camera", (file, "0" * 64))
    with pytest.raises(DgmlabDataError, match="SHA-256 .* expected 0000.*constraints.txt"):
        photograph("camera")


def test_missing_package_unknown_names_and_splits_are_clear_errors(monkeypatch):
    with pytest.raises(DgmlabDataError, match="no photograph named 'lena'; choose one of astronaut"):
        photograph("lena")
    with pytest.raises(DgmlabDataError, match="split must be 'train' or 'test'"):
        photographs("validation")
    monkeypatch.setattr(image_data.importlib.util, "find_spec", lambda name: None)
    with pytest.raises(DgmlabDataError, match=r"pip install 'dgmlab\[images\]'"):
        photograph("camera")


def test_extract_patches_takes_every_window_row_by_row():
    image = torch.arange(5 * 7, dtype=torch.float64).reshape(5, 7)
    patches = extract_patches(image, size=3)
    assert patches.shape == ((5 - 2) * (7 - 2), 9)
    torch.testing.assert_close(patches[1 * 5 + 2], image[1:4, 2:5].reshape(9))
    strided = extract_patches(image, size=3, stride=2)
    assert strided.shape == (2 * 3, 9)
    torch.testing.assert_close(strided[-1], image[2:5, 4:7].reshape(9))
    centred = extract_patches(image, size=3, remove_mean=True)
    torch.testing.assert_close(centred.mean(1), torch.zeros(len(centred), dtype=torch.float64))
    torch.testing.assert_close(centred + patches.mean(1, keepdim=True), patches)


def test_random_patches_are_real_windows_drawn_in_proportion_to_each_images_positions():
    small = torch.rand(12, 12, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    large = torch.rand(30, 20, dtype=torch.float64, generator=torch.Generator().manual_seed(1)) + 10.0
    draws = random_patches([small, large], 4000, size=4, generator=torch.Generator().manual_seed(2),
                           remove_mean=False)
    assert torch.equal(draws, random_patches([small, large], 4000, size=4, remove_mean=False,
                                             generator=torch.Generator().manual_seed(2)))
    # every draw is one of the windows of the image it came from (the large one's values are >= 10)
    from_large = draws[:, 0] >= 10
    for source, chosen in ((small, ~from_large), (large, from_large)):
        windows = extract_patches(source, size=4)
        distances = torch.cdist(draws[chosen], windows, compute_mode="donot_use_mm_for_euclid_dist")
        assert (distances.min(1).values < 1e-12).all()
    # uniform over all 81 + 459 positions: the share of the large image within 4 standard errors
    share = 459 / (81 + 459)
    assert abs(float(from_large.double().mean()) - share) < 4 * math.sqrt(share * (1 - share) / 4000)
    centred = random_patches({"a": small}, 10, size=4)
    torch.testing.assert_close(centred.mean(1), torch.zeros(10, dtype=torch.float64))


def test_patch_errors_say_what_is_wrong():
    with pytest.raises(ValueError, match=r"no 8x8 patch; use a smaller size"):
        extract_patches(torch.zeros(5, 20), size=8)
    with pytest.raises(ValueError, match=r"grey levels \[H, W\]"):
        extract_patches(torch.zeros(3, 10, 10))
    with pytest.raises(ValueError, match="no images given"):
        random_patches([], 5)


def test_centre_crop_takes_the_middle_and_rounds_sides_down_to_a_multiple():
    image = torch.arange(10 * 12, dtype=torch.float64).reshape(10, 12)
    assert torch.equal(centre_crop(image, 4), image[3:7, 4:8])
    assert torch.equal(centre_crop(image, 0), image) and torch.equal(centre_crop(image, 50), image)
    assert torch.equal(centre_crop(image, 0, multiple=4), image[1:9, 0:12])
    assert torch.equal(centre_crop(image, 11, multiple=4), image[1:9, 2:10])
    with pytest.raises(ValueError, match="no crop whose sides are multiples of 16"):
        centre_crop(image, 0, multiple=16)
