"""The background of a synthetic world: a few tinted photo textures (floor, table, wall)
tiled over Voronoi cells, under a slowly varying illumination."""
from __future__ import annotations

import cv2
import numpy as np

from vq2d.data.synthetic.photos import SURFACE_TEXTURES, load_photo


def muted_color(rng: np.random.Generator, saturation: tuple[float, float] = (0.1, 0.45)) -> np.ndarray:
    """A random RGB colour pulled towards grey: float ``[3]`` in 0..255."""
    color = rng.uniform(40.0, 230.0, size=3)
    return color.mean() + rng.uniform(*saturation) * (color - color.mean())


def tiled_texture(rng: np.random.Generator, name: str, size: tuple[int, int], scale: float) -> np.ndarray:
    """A grey texture resized by ``scale`` and mirror-tiled to ``size = (width, height)``: uint8 ``[H, W]``."""
    texture = load_photo(name)
    if texture.ndim == 3:
        texture = cv2.cvtColor(texture, cv2.COLOR_RGB2GRAY)
    h, w = texture.shape
    texture = cv2.resize(texture, (max(8, round(w * scale)), max(8, round(h * scale))),
                         interpolation=cv2.INTER_AREA if scale < 1 else cv2.INTER_LINEAR)
    h, w = texture.shape
    ox, oy = int(rng.integers(0, w)), int(rng.integers(0, h))
    # mirror tiling (texture, flipped texture, ...) keeps the seams continuous
    tiled = cv2.copyMakeBorder(texture, 0, size[1] + oy, 0, size[0] + ox, cv2.BORDER_REFLECT)
    return tiled[oy:oy + size[1], ox:ox + size[0]]


def build_background(rng: np.random.Generator, size: tuple[int, int], texture_scale: float = 1.0,
                     cells: tuple[int, int] = (3, 6)) -> np.ndarray:
    """A world background of ``size = (width, height)``: uint8 ``[H, W, 3]`` RGB.

    Args:
        texture_scale: world pixels per texture pixel (times a random factor per cell).
        cells: inclusive range of the number of Voronoi cells (surfaces).
    """
    width, height = size
    n = int(rng.integers(cells[0], cells[1] + 1))
    seeds = rng.uniform((0, 0), (width, height), size=(n, 2)).astype(np.float32)
    # Voronoi cells, computed at half resolution (a 2-pixel staircase on the cell borders)
    xs = np.arange(0, width, 2, dtype=np.float32)
    ys = np.arange(0, height, 2, dtype=np.float32)[:, None]
    cell = np.argmin(np.stack([(xs - sx) ** 2 + (ys - sy) ** 2 for sx, sy in seeds]), axis=0).astype(np.uint8)
    cell = cv2.resize(cell, (width, height), interpolation=cv2.INTER_NEAREST)
    image = np.zeros((height, width, 3), np.uint8)
    ramp = np.linspace(0.0, 1.0, 256, dtype=np.float32)[:, None]
    for k in range(n):
        name = SURFACE_TEXTURES[int(rng.integers(len(SURFACE_TEXTURES)))]
        gray = tiled_texture(rng, name, size, texture_scale * rng.uniform(0.6, 1.4))
        base = muted_color(rng)
        lo, hi = base * rng.uniform(0.3, 0.6), np.minimum(base * rng.uniform(1.1, 1.4), 255.0)
        table = np.clip(lo + ramp * (hi - lo), 0, 255).astype(np.uint8)[:, None, :]  # [256, 1, 3] tint
        cv2.copyTo(cv2.LUT(cv2.merge([gray, gray, gray]), table), (cell == k).view(np.uint8), image)
    # illumination: a coarse random field, smoothly upsampled
    light = rng.uniform(0.75, 1.15, size=(3, 4)).astype(np.float32)
    light = cv2.resize(light, (width, height), interpolation=cv2.INTER_CUBIC)
    return cv2.multiply(image, cv2.merge([light, light, light]), dtype=cv2.CV_8U)
