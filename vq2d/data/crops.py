"""The visual crop of a query (docs/vq2d.md#visual-crop).

The annotated box plus 16 px of context on each side, clipped to the image, padded to a
centred square with the value 125, resized (bilinear) to ``size`` x ``size``.

Training rotates crops as the original SiamRCNN code does (:func:`rotated_visual_crop`):
the whole reference frame is rotated on an expanded canvas (uncovered pixels 0), the box
becomes the axis-aligned bounding box of its rotated corners, and the crop is cut around
that box, so the context around a rotated object is real image, not padding.
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


def rotate_frame_with_box(image: np.ndarray, box_xyxy, angle_deg: float) -> tuple[np.ndarray, tuple[float, ...]]:
    """Rotate ``image`` [H, W, 3] about its centre by ``angle_deg`` (counter-clockwise) on a
    canvas expanded to hold all of it (uncovered pixels 0), and ``box_xyxy`` with it: the
    axis-aligned bounding box of the rotated corners. Returns (image, box)."""
    h, w = image.shape[:2]
    matrix = cv2.getRotationMatrix2D((w / 2.0, h / 2.0), float(angle_deg), 1.0)
    cos, sin = abs(matrix[0, 0]), abs(matrix[0, 1])
    new_w, new_h = int(np.rint(h * sin + w * cos)), int(np.rint(h * cos + w * sin))  # as detectron2
    matrix[0, 2] += new_w / 2.0 - w / 2.0
    matrix[1, 2] += new_h / 2.0 - h / 2.0
    rotated = cv2.warpAffine(image, matrix, (new_w, new_h), flags=cv2.INTER_LINEAR,
                             borderMode=cv2.BORDER_CONSTANT, borderValue=(0, 0, 0))
    x1, y1, x2, y2 = box_xyxy
    corners = np.array([[x1, y1, 1.0], [x2, y1, 1.0], [x1, y2, 1.0], [x2, y2, 1.0]]) @ matrix.T  # [4, 2]
    box = (float(corners[:, 0].min()), float(corners[:, 1].min()), float(corners[:, 0].max()),
           float(corners[:, 1].max()))
    return rotated, box


def rotated_visual_crop(image: np.ndarray, box_xyxy, angle_deg: float, size: int = CROP_SIZE,
                        context: int = CONTEXT_PX, pad_value: int = PAD_VALUE) -> np.ndarray:
    """The visual crop of ``box_xyxy`` cut from ``image`` rotated by ``angle_deg`` (see
    :func:`rotate_frame_with_box`) -> [size, size, 3] uint8."""
    rotated, box = rotate_frame_with_box(image, box_xyxy, angle_deg)
    return make_visual_crop(rotated, box, size=size, context=context, pad_value=pad_value)
