"""SnAG's points and their training targets (docs/nlq.md#snag).

Every step of every pyramid level is a *point*: level l has ceil(T / 2^l) points at input
steps 0, 2^l, 2 * 2^l, ... (stride 2^l). Coordinates are in input steps, step i's centre being
i: a window [a, b] seconds of a clip of D seconds over N steps is [a N / D - 0.5, b N / D - 0.5]
(the inverse of ``(x + 0.5) D / N``). A point predicts the distances, in units of its stride,
from itself to the window's start and end.
"""
from __future__ import annotations

import math

import torch


def regression_ranges(num_levels: int, first: float = 4.0, overlap: float = 0.5) -> list[tuple[float, float]]:
    """Per level [lo, hi) of the larger distance from a point to the window's ends (input steps)
    that the level is responsible for: (0, first), then (hi_prev * overlap, 2 hi_prev), the last
    level unbounded above (SnAG's ``regression_range`` 4 and ``sigma`` 0.5)."""
    if not 0 < overlap <= 1:
        raise ValueError(f"range overlap must be in (0, 1] (got {overlap})")
    ranges, hi = [(0.0, float(first))], float(first)
    for level in range(1, num_levels):
        ranges.append((hi * overlap, math.inf if level == num_levels - 1 else 2 * hi))
        hi *= 2
    if num_levels == 1:
        ranges = [(0.0, math.inf)]
    return ranges


def level_points(lengths: list[int], ranges: list[tuple[float, float]], device=None) -> dict[str, torch.Tensor]:
    """The points of levels with ``lengths`` [T_l], concatenated level by level: ``position`` [P]
    (input step), ``stride`` [P], ``lo`` / ``hi`` [P] (the level's regression range)."""
    parts = {"position": [], "stride": [], "lo": [], "hi": []}
    for level, (n, (lo, hi)) in enumerate(zip(lengths, ranges)):
        stride = 2 ** level
        parts["position"].append(torch.arange(n, device=device, dtype=torch.float32) * stride)
        for key, value in (("stride", stride), ("lo", lo), ("hi", hi)):
            parts[key].append(torch.full((n,), float(value), device=device))
    return {key: torch.cat(value) for key, value in parts.items()}


def windows_to_steps(windows: torch.Tensor, duration: torch.Tensor, num_steps: torch.Tensor) -> torch.Tensor:
    """Windows [B, 2] in seconds -> point coordinates [B, 2] (module docstring)."""
    scale = (num_steps.float() / duration.float().clamp(min=1e-6))[:, None]
    return windows.float() * scale - 0.5


def steps_to_windows(segments: torch.Tensor, duration: float, num_steps: int) -> torch.Tensor:
    """Point coordinates [K, 2] of one clip -> windows [K, 2] in seconds, inside [0, duration]."""
    return ((segments.double() + 0.5) * (float(duration) / num_steps)).clamp(0.0, float(duration))


def assign_targets(points: dict[str, torch.Tensor], segments: torch.Tensor,
                   center_radius: float = 1.5) -> tuple[torch.Tensor, torch.Tensor]:
    """Positive points and their regression targets (SnAG's centre sampling).

    segments: [B, 2] ground truth in point coordinates. A point is positive when it lies
    strictly inside the window's centre region (centre +- ``center_radius`` x its stride,
    clipped to the window) and the larger of its distances to the window's ends is within its
    level's range. Returns ``labels`` [B, P] bool and ``offsets`` [B, P, 2] (distances to the
    start and end divided by the stride; meaningful where positive).
    """
    position, stride = points["position"][None], points["stride"][None]  # [1, P]
    start, end = segments[:, :1].float(), segments[:, 1:].float()  # [B, 1]
    to_start, to_end = position - start, end - position
    centre, radius = 0.5 * (start + end), stride * center_radius
    inside = (position > torch.maximum(centre - radius, start)) & (position < torch.minimum(centre + radius, end))
    reach = torch.maximum(to_start, to_end)
    in_range = (reach >= points["lo"][None]) & (reach < points["hi"][None])
    offsets = torch.stack([to_start, to_end], dim=-1) / stride[..., None]
    return inside & in_range, offsets
