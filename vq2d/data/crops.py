"""The visual crop of a query (docs/vq2d.md#visual-crop).

The annotated box plus 16 px of context on each side, clipped to the image, padded to a
centred square with the value 125, resized (bilinear) to ``size`` x ``size``.
"""
from __future__ import annotations

import cv2
import numpy as np

from episodic.errors import DataError

CONTEXT_PX = 16
PAD_VALUE = 125
CROP_SIZE = 256


def crop_region(box_xyxy, image_hw: tuple[int, int], context: int = CONTEXT_PX) -> tuple[int, int, int, int]:
    """Integer pixel region (x1, y1, x2, y2) of the box + context, clipped to the image.

    Raises DataError when nothing of the box lies inside the image."""
    h, w = image_hw
    x1, y1, x2, y2 = box_xyxy
    rx1 = max(int(np.floor(x1 - context)), 0)
    ry1 = max(int(np.floor(y1 - context)), 0)
    rx2 = min(int(np.ceil(x2 + context)), w)
    ry2 = min(int(np.ceil(y2 + context)), h)
    if rx2 <= rx1 or ry2 <= ry1:
        raise DataError(f"visual crop box {tuple(round(v, 1) for v in box_xyxy)} lies outside the "
                        f"{w}x{h} image")
    return rx1, ry1, rx2, ry2


def make_visual_crop(image: np.ndarray, box_xyxy, size: int = CROP_SIZE, context: int = CONTEXT_PX,
                     pad_value: int = PAD_VALUE) -> np.ndarray:
    """Cut the visual crop out of ``image`` [H, W, 3] uint8 -> [size, size, 3] uint8."""
    x1, y1, x2, y2 = crop_region(box_xyxy, image.shape[:2], context)
    patch = image[y1:y2, x1:x2]
    ph, pw = patch.shape[:2]
    side = max(ph, pw)
    square = np.full((side, side, image.shape[2]), pad_value, dtype=image.dtype)
    top, left = (side - ph) // 2, (side - pw) // 2
    square[top:top + ph, left:left + pw] = patch
    return cv2.resize(square, (size, size), interpolation=cv2.INTER_LINEAR)
