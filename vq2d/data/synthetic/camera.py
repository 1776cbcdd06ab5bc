"""Camera motion over a synthetic world: visits to points of interest joined by eased
pans, with zoom, roll, hand shake, changing light and motion blur, sampled at 5 fps."""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass
class CameraPath:
    """The camera of one clip, one entry per 5 fps frame (``T`` frames)."""

    frame_size: tuple[int, int]  # (width, height) of the frames
    centers: np.ndarray          # float [T, 2]: world point (x, y) seen at the frame centre
    zooms: np.ndarray            # float [T]: frame pixels per world pixel
    rolls: np.ndarray            # float [T]: camera roll, radians
    gains: np.ndarray            # float [T, 3]: light gain per RGB channel
    blurs: np.ndarray            # float [T, 2]: motion-blur streak (dx, dy), frame pixels

    def __len__(self) -> int:
        return len(self.zooms)

    def matrix(self, t: int) -> np.ndarray:
        """World -> frame affine map of frame ``t``: float ``[2, 3]`` (OpenCV pixel-centre convention)."""
        z, a = self.zooms[t], self.rolls[t]
        rot = z * np.array([[np.cos(a), -np.sin(a)], [np.sin(a), np.cos(a)]])
        centre = np.array([(self.frame_size[0] - 1) / 2, (self.frame_size[1] - 1) / 2])
        return np.concatenate([rot, (centre - rot @ self.centers[t])[:, None]], axis=1)


def order_visits(rng: np.random.Generator, counts: dict[int, int], points: dict[int, np.ndarray],
                 reach: float) -> list[int]:
    """A random order of visits (``counts[key]`` visits of the place ``points[key]``): no key
    follows itself when that is possible, and nearby places (within about ``reach``) are
    preferred next, so the camera wanders rather than jumps."""
    remaining = {k: c for k, c in counts.items() if c > 0}
    order: list[int] = []
    while remaining:
        total = sum(remaining.values())
        keys = [k for k in remaining if not order or k != order[-1]] or list(remaining)
        forced = [k for k in keys if 2 * remaining[k] > total]
        if forced:
            key = forced[0]
        else:
            weights = np.array([remaining[k] for k in keys], float)
            if order:
                here = points[order[-1]]
                weights *= np.exp(-np.array([np.hypot(*(points[k] - here)) for k in keys]) / reach)
            key = keys[int(rng.choice(len(keys), p=weights / weights.sum()))]
        order.append(key)
        remaining[key] -= 1
        if not remaining[key]:
            del remaining[key]
    return order


def _clamp_centers(centers: np.ndarray, zooms: np.ndarray, rolls: np.ndarray,
                   frame_size: tuple[int, int], world_size: tuple[int, int]) -> np.ndarray:
    """Move the centres so that every frame sees only the world: float ``[T, 2]``."""
    w, h = frame_size[0] / 2, frame_size[1] / 2
    cos, sin = np.abs(np.cos(rolls)), np.abs(np.sin(rolls))
    half = np.stack([(w * cos + h * sin) / zooms, (w * sin + h * cos) / zooms], axis=1) + 1.0
    world = np.array(world_size, float)
    lo, hi = half, world - 1 - half
    return np.where(lo < hi, np.clip(centers, lo, hi), (world - 1) / 2)


def plan_camera(rng: np.random.Generator, targets: np.ndarray, num_frames: int,
                frame_size: tuple[int, int], world_size: tuple[int, int],
                zoom_range: tuple[float, float], max_roll_deg: float, shake_px: float,
                blur_prob: float, exposure: float = 1 / 12) -> CameraPath:
    """The camera path of one clip.

    Args:
        targets: float ``[K, 2]`` world points looked at, in visit order (``K >= 2``).
        num_frames: number of 5 fps frames ``T``.
        zoom_range: range of frame pixels per world pixel at the visits.
        max_roll_deg: camera roll at a visit is uniform in +-this.
        shake_px: standard deviation of the per-frame hand shake, frame pixels.
        blur_prob: probability of an extra strongly blurred frame (head jerk).
        exposure: motion blur length as a fraction of the frame-to-frame motion.
    """
    k = len(targets)
    if k < 2:
        raise ValueError(f"a camera path needs at least 2 targets (got {k})")
    width, height = frame_size
    dwell = rng.uniform(1.5, 4.0, size=k)
    # pans take time in proportion to their length (in frame widths at zoom 1)
    travel = rng.uniform(0.8, 1.25, size=k - 1) * (1.0 + np.hypot(*np.diff(targets, axis=0).T) / width)
    ends = np.cumsum(np.stack([dwell, np.append(travel, 0.0)], axis=1).ravel())  # leave_0, arrive_1, ...
    times = np.concatenate([[0.0], ends[:-1]])
    times *= (num_frames - 1) / times[-1]
    phase = np.interp(np.arange(num_frames), times, np.repeat(np.arange(k), 2).astype(float))
    seg = np.minimum(phase.astype(int), k - 2)
    frac = phase - seg
    eased = frac * frac * (3 - 2 * frac)

    def along(values: np.ndarray) -> np.ndarray:
        values = np.asarray(values, float)
        step = values[seg + 1] - values[seg]
        return values[seg] + (eased.reshape(-1, *[1] * (values.ndim - 1)) * step)

    log_zoom = rng.uniform(np.log(zoom_range[0]), np.log(zoom_range[1]), size=k)
    roll = np.deg2rad(rng.uniform(-max_roll_deg, max_roll_deg, size=k))
    offset = rng.uniform(-0.22, 0.22, size=(k, 2)) * (width, height)  # target's place in the frame
    cos, sin = np.cos(roll), np.sin(roll)
    unrotated = np.stack([cos * offset[:, 0] + sin * offset[:, 1], -sin * offset[:, 0] + cos * offset[:, 1]], 1)
    centers = targets - unrotated / np.exp(log_zoom)[:, None]
    gains = rng.uniform(0.7, 1.25, size=(k, 1)) * rng.uniform(0.92, 1.08, size=(k, 3))

    zooms = np.exp(along(log_zoom) + rng.normal(0, 0.01, num_frames))
    rolls = along(roll) + np.deg2rad(rng.normal(0, 0.6, num_frames))
    centers = along(centers) + rng.normal(0, shake_px, (num_frames, 2)) / zooms[:, None]
    centers = _clamp_centers(centers, zooms, rolls, frame_size, world_size)
    gains = along(gains) * (1 + rng.normal(0, 0.02, (num_frames, 1)))

    velocity = np.gradient(centers, axis=0) if num_frames > 1 else np.zeros_like(centers)
    c, s = np.cos(rolls), np.sin(rolls)
    blurs = exposure * zooms[:, None] * np.stack([c * velocity[:, 0] - s * velocity[:, 1],
                                                  s * velocity[:, 0] + c * velocity[:, 1]], axis=1)
    jerk = rng.random(num_frames) < blur_prob
    angle = rng.uniform(0, np.pi, num_frames)
    length = rng.uniform(0.02, 0.045, num_frames) * width
    blurs[jerk] += (length[:, None] * np.stack([np.cos(angle), np.sin(angle)], 1))[jerk]
    return CameraPath(frame_size, centers, zooms, rolls, gains, blurs)
