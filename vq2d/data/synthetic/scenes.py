"""A synthetic world: a background of tinted photo textures with objects lying on it.

The world is a static image much larger than a frame; the camera (camera.py) moves over
it. ``Scene.labels`` marks which object covers each world pixel, so the visible extent of
every object in any frame can be measured exactly (sightings.py).
"""
from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np

from vq2d.data.synthetic.objects import ObjectRecipe, make_distractor, make_recipe, render_object
from vq2d.data.synthetic.surfaces import build_background

# Everyday object names for the annotation's object_title.
OBJECT_TITLES = (
    "mug", "scissors", "phone", "bowl", "bottle", "screwdriver", "pliers", "hammer", "spanner",
    "bucket", "container", "tape", "remote control", "wallet", "keys", "glue", "spray can",
    "cup", "plate", "knife", "spoon", "chopping board", "jar", "box", "book", "notebook",
    "laptop", "mouse", "kettle", "pan", "tin", "sponge", "towel", "paint brush", "drill",
    "battery", "charger", "glasses", "watch", "cushion", "basket", "plant pot", "lid",
)


@dataclass
class SceneObject:
    """One object placed in the world."""

    label: int                   # its value in Scene.labels (1-based)
    title: str                   # object_title when it is queried
    recipe: ObjectRecipe
    imitates: int | None         # label of the object this distractor looks like, else None
    x0: int                      # top-left corner of its patch in world pixels
    y0: int
    mask: np.ndarray             # bool [h, w], True on the object

    @property
    def area(self) -> int:
        """Number of world pixels it covers."""
        return int(self.mask.sum())

    @property
    def center(self) -> tuple[float, float]:
        h, w = self.mask.shape
        return self.x0 + (w - 1) / 2, self.y0 + (h - 1) / 2


@dataclass
class Scene:
    image: np.ndarray            # uint8 [H_world, W_world, 3] RGB
    labels: np.ndarray           # uint8 [H_world, W_world]: 0 background, k on objects[k - 1]
    objects: list[SceneObject]   # objects[k - 1].label == k

    @property
    def size(self) -> tuple[int, int]:
        """(width, height) in world pixels."""
        return self.image.shape[1], self.image.shape[0]


def _place(rng: np.random.Generator, shape: tuple[int, int], size: tuple[int, int],
           placed: list[tuple[float, float, float]], margin: float, tries: int = 200) -> tuple[int, int] | None:
    """Top-left corner for a patch of ``shape = (h, w)`` away from the ``placed`` discs (x, y, r)."""
    h, w = shape
    r = 0.5 * float(np.hypot(h, w))
    lo, hi = margin + r, (size[0] - margin - r, size[1] - margin - r)
    if hi[0] <= lo or hi[1] <= lo:
        return None
    for _ in range(tries):
        cx, cy = rng.uniform(lo, hi[0]), rng.uniform(lo, hi[1])
        if all((cx - px) ** 2 + (cy - py) ** 2 > (r + pr + 6) ** 2 for px, py, pr in placed):
            placed.append((cx, cy, r))
            return int(round(cx - (w - 1) / 2)), int(round(cy - (h - 1) / 2))
    return None


def build_scene(rng: np.random.Generator, size: tuple[int, int], num_objects: int, num_distractors: int,
                object_long_side: tuple[float, float], view_margin: float,
                texture_scale: float = 1.0) -> Scene:
    """A world of ``size = (width, height)`` with objects and look-alike distractors.

    Args:
        num_objects: distinct objects (the first ones are the intended query objects).
        num_distractors: look-alikes of the first ``num_distractors`` objects.
        object_long_side: range of an object's longer side, world pixels.
        view_margin: no object closer than this to the world border (so a camera can centre it).
        texture_scale: world pixels per background texture pixel.
    """
    image = build_background(rng, size, texture_scale)
    labels = np.zeros(image.shape[:2], np.uint8)
    titles = rng.permutation(len(OBJECT_TITLES))
    # (recipe, index of the recipe it imitates or None, title)
    recipes: list[tuple[ObjectRecipe, int | None, str]] = []
    for k in range(num_objects):
        recipes.append((make_recipe(rng, object_long_side), None, OBJECT_TITLES[titles[k % len(titles)]]))
    for k in range(min(num_distractors, num_objects)):
        recipe, _, title = recipes[k]
        look_alike = make_distractor(rng, recipe)
        same_object = look_alike.crop == recipe.crop  # recoloured copy: same kind of thing
        title = title if same_object else OBJECT_TITLES[titles[(num_objects + k) % len(titles)]]
        recipes.append((look_alike, k, title))
    objects: list[SceneObject] = []
    placed: list[tuple[float, float, float]] = []
    label_of: dict[int, int] = {}  # recipe index -> label of the placed object
    for i, (recipe, imitates, title) in enumerate(recipes):
        texture, mask = render_object(recipe)
        corner = _place(rng, mask.shape, size, placed, view_margin)
        if corner is None or len(objects) >= 255:
            continue
        label = label_of[i] = len(objects) + 1
        objects.append(SceneObject(label, title, recipe, label_of.get(imitates), corner[0], corner[1], mask))
        _paste(image, labels, texture, mask, corner, label)
    return Scene(image=image, labels=labels, objects=objects)


def _paste(image: np.ndarray, labels: np.ndarray, texture: np.ndarray, mask: np.ndarray,
           corner: tuple[int, int], label: int) -> None:
    """Draw a soft drop shadow, then the object, into the world (in place)."""
    h, w = mask.shape
    x0, y0 = corner
    pad = 6
    shadow = np.zeros((h + 2 * pad, w + 2 * pad), np.float32)
    shadow[pad + 3:pad + 3 + h, pad + 3:pad + 3 + w] = mask
    shadow = cv2.GaussianBlur(shadow, (7, 7), 2.0)
    H, W = labels.shape
    sy0, sx0 = max(0, y0 - pad), max(0, x0 - pad)
    sy1, sx1 = min(H, y0 + h + pad), min(W, x0 + w + pad)
    region = image[sy0:sy1, sx0:sx1].astype(np.float32)
    region *= 1.0 - 0.4 * shadow[sy0 - (y0 - pad):sy1 - (y0 - pad), sx0 - (x0 - pad):sx1 - (x0 - pad), None]
    image[sy0:sy1, sx0:sx1] = region.astype(np.uint8)
    image[y0:y0 + h, x0:x0 + w][mask] = texture[mask]
    labels[y0:y0 + h, x0:x0 + w][mask] = label
