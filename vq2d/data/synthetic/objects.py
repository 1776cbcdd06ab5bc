"""Objects of the synthetic worlds: textured patches cut from bundled photographs, with
their own shapes, and look-alike distractors derived from them.

An object is described by an :class:`ObjectRecipe` (plain numbers) and drawn by
:func:`render_object`, so a distractor is just a recipe derived from another one.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import cv2
import numpy as np

from vq2d.data.synthetic.photos import COLOR_PHOTOS, GRAY_PHOTOS, horse_silhouette, load_photo

SHAPES = ("ellipse", "rounded_box", "polygon", "horse")


@dataclass(frozen=True)
class ObjectRecipe:
    """How to draw one object."""

    photo: str                          # name in photos.COLOR_PHOTOS or photos.GRAY_PHOTOS
    crop: tuple[int, int, int, int]     # x, y, width, height of the texture in the photo
    palette: tuple[tuple[float, float, float], tuple[float, float, float]] | None  # grey photos: dark, bright RGB
    hue_shift: int                      # added to the hue (OpenCV units, 0..179)
    shape: str                          # one of SHAPES
    polygon: tuple[tuple[float, float], ...]  # shape "polygon": (angle rad, radius factor) per vertex
    size: tuple[int, int]               # width, height in world pixels, before rotation
    angle: float                        # rotation in the world, degrees


def _random_palette(rng: np.random.Generator) -> tuple[tuple[float, ...], tuple[float, ...]]:
    dark = rng.uniform(0, 120, size=3)
    bright = rng.uniform(120, 255, size=3)
    bright[int(rng.integers(3))] = rng.uniform(0, 90)  # keep the bright colour saturated
    return tuple(float(v) for v in dark), tuple(float(v) for v in bright)


def _random_polygon(rng: np.random.Generator) -> tuple[tuple[float, float], ...]:
    n = int(rng.integers(5, 10))
    angles = (np.arange(n) + rng.uniform(-0.3, 0.3, size=n)) * 2 * np.pi / n
    radii = rng.uniform(0.6, 1.0, size=n)
    return tuple((float(a), float(r)) for a, r in zip(angles, radii))


def _random_crop(rng: np.random.Generator, photo: str, size: tuple[int, int],
                 zoom: float) -> tuple[int, int, int, int]:
    ph, pw = load_photo(photo).shape[:2]
    w = int(min(pw, max(8, size[0] / zoom)))
    h = int(min(ph, max(8, size[1] / zoom)))
    return int(rng.integers(0, pw - w + 1)), int(rng.integers(0, ph - h + 1)), w, h


def make_recipe(rng: np.random.Generator, long_side: tuple[float, float]) -> ObjectRecipe:
    """A random object whose longer side (world pixels) lies in ``long_side``."""
    colour = rng.random() < 0.7
    photos = COLOR_PHOTOS if colour else GRAY_PHOTOS
    photo = photos[int(rng.integers(len(photos)))]
    long = rng.uniform(*long_side)
    short = long * rng.uniform(0.55, 1.0)
    size = (round(long), round(short)) if rng.random() < 0.5 else (round(short), round(long))
    return ObjectRecipe(
        photo=photo,
        crop=_random_crop(rng, photo, size, rng.uniform(0.35, 1.2)),
        palette=None if colour else _random_palette(rng),
        hue_shift=0,
        shape=SHAPES[int(rng.integers(len(SHAPES)))],
        polygon=_random_polygon(rng),
        size=size,
        angle=float(rng.uniform(-90, 90)),
    )


def make_distractor(rng: np.random.Generator, recipe: ObjectRecipe) -> ObjectRecipe:
    """A look-alike of ``recipe``: the same object recoloured, or a neighbouring patch of
    the same photograph with the same kind of shape."""
    angle = float(rng.uniform(-90, 90))
    if rng.random() < 0.5:
        if recipe.palette is not None:
            return dataclasses.replace(recipe, palette=_random_palette(rng), angle=angle)
        return dataclasses.replace(recipe, hue_shift=int(recipe.hue_shift + rng.integers(45, 135)) % 180,
                                   angle=angle)
    ph, pw = load_photo(recipe.photo).shape[:2]
    x, y, w, h = recipe.crop
    dx, dy = rng.uniform(0.6, 1.2, size=2) * rng.choice([-1, 1], size=2) * (w, h)
    crop = (int(np.clip(x + dx, 0, pw - w)), int(np.clip(y + dy, 0, ph - h)), w, h)
    scale = rng.uniform(0.85, 1.15)
    size = (max(8, round(recipe.size[0] * scale)), max(8, round(recipe.size[1] * scale)))
    return dataclasses.replace(recipe, crop=crop, size=size, polygon=_random_polygon(rng), angle=angle)


def _shape_mask(recipe: ObjectRecipe) -> np.ndarray:
    """uint8 ``[h, w]`` (255 inside) of the unrotated shape."""
    w, h = recipe.size
    mask = np.zeros((h, w), np.uint8)
    if recipe.shape == "ellipse":
        cv2.ellipse(mask, (w // 2, h // 2), (max(1, w // 2 - 1), max(1, h // 2 - 1)), 0, 0, 360, 255, -1)
    elif recipe.shape == "rounded_box":
        r = max(1, min(w, h) // 5)
        cv2.rectangle(mask, (r, 0), (w - 1 - r, h - 1), 255, -1)
        cv2.rectangle(mask, (0, r), (w - 1, h - 1 - r), 255, -1)
        for cx, cy in ((r, r), (w - 1 - r, r), (r, h - 1 - r), (w - 1 - r, h - 1 - r)):
            cv2.circle(mask, (cx, cy), r, 255, -1)
    elif recipe.shape == "polygon":
        pts = [((w - 1) / 2 * (1 + r * np.cos(a)), (h - 1) / 2 * (1 + r * np.sin(a))) for a, r in recipe.polygon]
        cv2.fillPoly(mask, [np.round(np.array(pts)).astype(np.int32)], 255)
    elif recipe.shape == "horse":
        mask = cv2.resize(horse_silhouette().astype(np.uint8) * 255, (w, h), interpolation=cv2.INTER_NEAREST)
    else:
        raise ValueError(f"unknown object shape {recipe.shape!r}; expected one of {SHAPES}")
    return mask


def _texture(recipe: ObjectRecipe) -> np.ndarray:
    """uint8 ``[h, w, 3]`` RGB texture of the unrotated object."""
    x, y, cw, ch = recipe.crop
    patch = load_photo(recipe.photo)[y:y + ch, x:x + cw]
    patch = cv2.resize(patch, recipe.size, interpolation=cv2.INTER_AREA if cw > recipe.size[0] else cv2.INTER_LINEAR)
    if recipe.palette is not None:
        dark, bright = (np.array(c, np.float32) for c in recipe.palette)
        patch = (dark + patch[..., None].astype(np.float32) / 255.0 * (bright - dark)).astype(np.uint8)
    if recipe.hue_shift:
        hsv = cv2.cvtColor(patch, cv2.COLOR_RGB2HSV)
        hsv[..., 0] = ((hsv[..., 0].astype(np.int32) + recipe.hue_shift) % 180).astype(np.uint8)
        patch = cv2.cvtColor(hsv, cv2.COLOR_HSV2RGB)
    return patch


def render_object(recipe: ObjectRecipe) -> tuple[np.ndarray, np.ndarray]:
    """Draw an object, rotated and cropped to its extent.

    Returns:
        texture: uint8 ``[h, w, 3]`` RGB (outline darkened);
        mask: bool ``[h, w]``, True on the object.
    """
    texture, mask = _texture(recipe), _shape_mask(recipe)
    outline = (mask > 0) & (cv2.erode(mask, np.ones((3, 3), np.uint8)) == 0)
    texture[outline] = (texture[outline] * 0.45).astype(np.uint8)
    w, h = recipe.size
    rot = cv2.getRotationMatrix2D(((w - 1) / 2, (h - 1) / 2), recipe.angle, 1.0)
    cos, sin = abs(rot[0, 0]), abs(rot[0, 1])
    out_w, out_h = int(np.ceil(w * cos + h * sin)) + 2, int(np.ceil(w * sin + h * cos)) + 2
    rot[:, 2] += ((out_w - 1) / 2 - (w - 1) / 2, (out_h - 1) / 2 - (h - 1) / 2)
    texture = cv2.warpAffine(texture, rot, (out_w, out_h), flags=cv2.INTER_LINEAR)
    mask = cv2.warpAffine(mask, rot, (out_w, out_h), flags=cv2.INTER_NEAREST) > 0
    rows, cols = np.nonzero(mask)
    box = np.s_[rows.min():rows.max() + 1, cols.min():cols.max() + 1]
    return np.ascontiguousarray(texture[box]), np.ascontiguousarray(mask[box])
