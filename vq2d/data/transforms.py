"""Image augmentation of training pairs (docs/vq2d.md#training-samples), on numpy ``[H, W, 3]`` uint8 RGB images.

* Frame: horizontal flip (boxes flipped with it), brightness factor in [0.75, 1.333].
  Multi-scale training (short side 640..800 step 32, long side <= 1333) is done by the
  model itself (``model.min_size`` / ``model.max_size``: SiamRCNN draws the short side in
  training); the data pipeline only shrinks frames once to the largest of those sizes
  (:func:`shrink_to`), on the loader workers, so that less data travels to the model.
* Crop: flip and brightness drawn independently of the frame's, plus a rotation in
  [-120, 120] degrees. ``crop_rotation_mode="frame"`` (the originals): the reference frame is
  rotated before the crop is cut (:func:`vq2d.data.crops.rotated_visual_crop`; the mapper
  asks :meth:`PairAugmentation.reference_rotation` for the angle); ``"crop"``: the cut crop
  is rotated about its centre, the uncovered corners filled with the pad value 125.
* Pair (``pair_channel_shuffle``, off in the originals): the frame and all the crops of a
  pair get the same random order of their colour channels, so crop and frame still agree
  while the object looks new (a training set of ~60 objects gets up to 6x the appearances).
* Pair (``pair_flip``, off in the originals): one flip draw per pair mirrors the frame and
  all its crops together, so a crop is never the mirror image of its object (with
  independent draws, half the positive pairs are).

Every random draw comes from the ``np.random.Generator`` passed in, so a sample's
augmentation is reproducible from its seed (see :class:`vq2d.data.train_dataset.TrainMapper`).
"""
from __future__ import annotations

import cv2
import numpy as np

from vq2d.data.crops import PAD_VALUE

ROTATION_MODES = ("frame", "crop")


def shrink_to(image: np.ndarray, short_side: int, max_size: int) -> tuple[np.ndarray, float]:
    """Resize ``image`` down so that its short side is <= ``short_side`` and its long side
    <= ``max_size`` (never enlarged). Returns (image, scale = new / old size)."""
    h, w = image.shape[:2]
    scale = min(short_side / min(h, w), max_size / max(h, w), 1.0)
    if scale >= 1.0:
        return image, 1.0
    size = (max(int(round(w * scale)), 1), max(int(round(h * scale)), 1))
    return cv2.resize(image, size, interpolation=cv2.INTER_AREA), scale


def flip_horizontal(image: np.ndarray, boxes: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Mirror ``image`` ``[H, W, 3]`` and its boxes ``[n, 4]`` xyxy left-right."""
    w = image.shape[1]
    boxes = boxes.copy()
    boxes[:, [0, 2]] = w - boxes[:, [2, 0]]
    return np.ascontiguousarray(image[:, ::-1]), boxes


def adjust_brightness(image: np.ndarray, factor: float) -> np.ndarray:
    """Pixel values times ``factor``, saturated to 0..255."""
    return cv2.convertScaleAbs(image, alpha=float(factor), beta=0.0)


def rotate_square(image: np.ndarray, angle_deg: float, fill: int = PAD_VALUE) -> np.ndarray:
    """Rotate ``image`` about its centre by ``angle_deg`` (counter-clockwise), same size,
    uncovered pixels set to ``fill``."""
    h, w = image.shape[:2]
    matrix = cv2.getRotationMatrix2D((w / 2.0, h / 2.0), float(angle_deg), 1.0)
    return cv2.warpAffine(image, matrix, (w, h), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_CONSTANT,
                          borderValue=(fill, fill, fill))


class PairAugmentation:
    """Random flip / brightness of a frame and of a visual crop, and rotation of the crop.

    Args:
        flip_prob: chance of a horizontal flip (frame and crop drawn independently).
        brightness: (low, high) range of the brightness factor; ``None`` = off.
        crop_rotation: (low, high) rotation range of the crop in degrees; ``None`` = off.
        crop_rotation_prob: chance that a crop is rotated at all.
        crop_rotation_mode: "frame" (rotate the reference frame, then cut the crop; the
            originals) or "crop" (rotate the cut crop).
        pair_channel_shuffle: chance that a pair's frame and crops get the same random order of
            their colour channels (0: off, the originals).
        pair_flip: flip a pair's frame and all its crops together (one draw of ``flip_prob``
            per pair: crop and object never mirror images of each other) instead of each
            independently (False, the originals).
    """

    def __init__(
        self,
        *,
        flip_prob: float = 0.5,
        brightness: tuple[float, float] | None = (0.75, 1.333),
        crop_rotation: tuple[float, float] | None = (-120.0, 120.0),
        crop_rotation_prob: float = 1.0,
        crop_rotation_mode: str = "crop",
        pair_channel_shuffle: float = 0.0,
        pair_flip: bool = False,
    ):
        if crop_rotation_mode not in ROTATION_MODES:
            raise ValueError(f"crop_rotation_mode must be one of {ROTATION_MODES} (got {crop_rotation_mode!r})")
        for name, p in (("flip_prob", flip_prob), ("crop_rotation_prob", crop_rotation_prob),
                        ("pair_channel_shuffle", pair_channel_shuffle)):
            if not 0.0 <= p <= 1.0:
                raise ValueError(f"{name} must be in [0, 1] (got {p})")
        for name, rng in (("brightness", brightness), ("crop_rotation", crop_rotation)):
            if rng is not None and (len(rng) != 2 or rng[0] > rng[1]):
                raise ValueError(f"{name} must be a (low, high) pair or null (got {rng})")
        self.flip_prob = flip_prob
        self.brightness = None if brightness is None else (float(brightness[0]), float(brightness[1]))
        self.crop_rotation = None if crop_rotation is None else (float(crop_rotation[0]), float(crop_rotation[1]))
        self.crop_rotation_prob = crop_rotation_prob
        self.crop_rotation_mode = crop_rotation_mode
        self.pair_channel_shuffle = float(pair_channel_shuffle)
        self.pair_flip = bool(pair_flip)

    def pair_flip_draw(self, rng: np.random.Generator) -> bool | None:
        """Whether a pair's frame and crops are all flipped (``pair_flip``), or None (no draw:
        each is flipped on its own draw)."""
        return bool(rng.random() < self.flip_prob) if self.pair_flip else None

    def _flips(self, rng: np.random.Generator, flip: bool | None) -> bool:
        """The pair's flip when given, else a draw of ``flip_prob`` (one ``rng.random()``)."""
        return bool(rng.random() < self.flip_prob) if flip is None else flip

    def pair_channels(self, rng: np.random.Generator) -> np.ndarray | None:
        """The colour-channel order shared by a frame and its crops (a new-looking object whose
        crop and frame still agree), or None (no shuffle, and no draw when the option is off)."""
        if self.pair_channel_shuffle <= 0.0 or rng.random() >= self.pair_channel_shuffle:
            return None
        return rng.permutation(3)

    def _rotation(self, rng: np.random.Generator) -> float | None:
        if self.crop_rotation is not None and rng.random() < self.crop_rotation_prob:
            return float(rng.uniform(*self.crop_rotation))
        return None

    def reference_rotation(self, rng: np.random.Generator) -> float | None:
        """The angle (degrees) to rotate the reference frame by before the crop is cut, in
        "frame" mode; None (no draw) otherwise or when rotation is off."""
        return self._rotation(rng) if self.crop_rotation_mode == "frame" else None

    def _photometric(self, image: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        if self.brightness is not None:
            image = adjust_brightness(image, rng.uniform(*self.brightness))
        return image

    def frame(self, image: np.ndarray, boxes: np.ndarray, rng: np.random.Generator,
              flip: bool | None = None) -> tuple[np.ndarray, np.ndarray]:
        """Augment a frame ``[H, W, 3]`` with its boxes ``[n, 4]`` xyxy (n may be 0); ``flip``:
        the pair's flip (None: drawn here)."""
        if self._flips(rng, flip):
            image, boxes = flip_horizontal(image, boxes)
        return self._photometric(image, rng), boxes

    def crop(self, crop: np.ndarray, rng: np.random.Generator, flip: bool | None = None) -> np.ndarray:
        """Augment a square visual crop ``[S, S, 3]``; ``flip``: the pair's flip (None: drawn here)."""
        if self._flips(rng, flip):
            crop = np.ascontiguousarray(crop[:, ::-1])
        if self.crop_rotation_mode == "crop":
            angle = self._rotation(rng)
            if angle is not None:
                crop = rotate_square(crop, angle)
        return self._photometric(crop, rng)
