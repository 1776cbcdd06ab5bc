"""Visual crop: context, clipping, centred square padding, size."""
import numpy as np
import pytest

from episodic.errors import DataError
from vq2d.data.crops import crop_region, make_visual_crop


def test_region_adds_context_and_clips():
    assert crop_region((50, 40, 70, 100), (200, 300)) == (34, 24, 86, 116)
    assert crop_region((-20, -5, 10, 30), (100, 100)) == (0, 0, 26, 46)
    assert crop_region((90, 90, 130, 140), (100, 120)) == (74, 74, 120, 100)


def test_region_outside_image_is_an_error():
    with pytest.raises(DataError, match="outside"):
        crop_region((500, 500, 520, 530), (100, 100))


def test_tall_box_padded_left_and_right_with_125():
    img = np.zeros((400, 400, 3), np.uint8)
    img[100:300, 180:220] = 255           # a tall white object
    crop = make_visual_crop(img, (180, 100, 220, 300), size=64, context=0)
    assert crop.shape == (64, 64, 3) and crop.dtype == np.uint8
    assert (crop[:, :5] == 125).all() and (crop[:, -5:] == 125).all()   # padding on both sides
    assert (crop[:, 28:36] == 255).all()                                 # object centred


def test_wide_box_padded_top_and_bottom():
    img = np.full((100, 200, 3), 7, np.uint8)
    crop = make_visual_crop(img, (20, 40, 180, 60), size=32, context=0)
    assert (crop[:4] == 125).all() and (crop[-4:] == 125).all()
    assert (crop[14:18] == 7).all()
