"""Photographs and textures that ship inside scikit-image (never downloaded).

Every image here is a file bundled in the ``skimage/data`` folder of the wheel; the
loaders below only read those files. Images are cached per process.
"""
from __future__ import annotations

from functools import lru_cache

import numpy as np

# Grey textures that make good large surfaces (floors, tables, walls); tinted when used.
SURFACE_TEXTURES = ("brick", "grass", "gravel", "moon", "page", "text")
# Colour photographs that objects are cut from.
COLOR_PHOTOS = ("astronaut", "chelsea", "coffee", "rocket", "colorwheel", "hubble_deep_field",
                "immunohistochemistry", "retina", "logo", "motorcycle")
# Grey photographs that objects are cut from after colourising them.
GRAY_PHOTOS = ("camera", "clock", "coins", "cell")


@lru_cache(maxsize=None)
def load_photo(name: str) -> np.ndarray:
    """A bundled image as uint8: ``[H, W, 3]`` for colour photos, ``[H, W]`` for grey ones."""
    import skimage.data

    if name == "motorcycle":
        image = skimage.data.stereo_motorcycle()[0]
    else:
        image = getattr(skimage.data, name)()
    if image.ndim == 3 and image.shape[2] == 4:  # logo: RGBA on white, keep RGB
        image = image[..., :3]
    image = np.ascontiguousarray(image, dtype=np.uint8)
    image.setflags(write=False)
    return image


@lru_cache(maxsize=None)
def horse_silhouette() -> np.ndarray:
    """The bundled horse silhouette, cropped to its extent: bool ``[H, W]``, True on the horse."""
    import skimage.data

    mask = ~skimage.data.horse()
    rows, cols = np.nonzero(mask)
    mask = np.ascontiguousarray(mask[rows.min():rows.max() + 1, cols.min():cols.max() + 1])
    mask.setflags(write=False)
    return mask
