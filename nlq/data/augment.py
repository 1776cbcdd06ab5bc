"""ReLER's training augmentations of one NLQ sample (docs/nlq.md#reler): variable-length sliding
window crop and video splicing.

They act on a sample BEFORE pooling to max_len: clip features ``[T, D]``, the GT window
(seconds) and the duration (seconds). The N steps of a sample are taken to span its
duration evenly, each ``step_sec = duration / T`` long (the geometry of
:mod:`nlq.data.labels`), so keeping steps ``[a, a + L)`` keeps seconds
``[a * step_sec, (a + L) * step_sec]``; windows and durations are shifted and scaled by
whole steps, and the features under the GT window are those under the original window.
Start / end / highlight labels are computed afterwards from the new window and duration.

Every draw comes from the explicit ``numpy.random.Generator`` passed in; a probability of 0
draws nothing (the sample and the generator's stream are left as they are).
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable, Mapping, Protocol, Sequence

import numpy as np
import torch

STEP_TOLERANCE = 1e-6  # fraction of a step

# rng -> features [T', D] of another training clip (a different clip_uid), or None when
# there is none (a single-clip data set); given by the dataset.
DonorSampler = Callable[[np.random.Generator], torch.Tensor | None]


@dataclass(frozen=True)
class AugmentSample:
    """One training sample as the augmentations see it.

    features: ``[T, D]`` clip features (not pooled).
    window: GT (start, end) in seconds, inside ``[0, duration]``.
    duration: seconds spanned by the T steps.
    """

    features: torch.Tensor
    window: tuple[float, float]
    duration: float

    @property
    def num_steps(self) -> int:
        return int(self.features.shape[0])

    @property
    def step_sec(self) -> float:
        return self.duration / self.num_steps

    def gt_steps(self) -> tuple[int, int]:
        """(first, last) step overlapping the GT window, ``0 <= first <= last < T`` (overlaps
        under :data:`STEP_TOLERANCE` of a step, rounding errors of shifted windows, are ignored)."""
        first = min(max(int(math.floor(self.window[0] / self.step_sec + STEP_TOLERANCE)), 0), self.num_steps - 1)
        last = min(max(int(math.ceil(self.window[1] / self.step_sec - STEP_TOLERANCE)) - 1, first),
                   self.num_steps - 1)
        return first, last

    def keep(self, offset: int, length: int) -> "AugmentSample":
        """Steps ``[offset, offset + length)``: window shifted by ``offset`` steps, duration ``length`` steps."""
        step = self.step_sec
        duration = length * step
        shift = offset * step
        start = min(max(self.window[0] - shift, 0.0), duration)
        end = min(max(self.window[1] - shift, start), duration)
        return AugmentSample(self.features[offset:offset + length], (start, end), duration)


class Augmentation(Protocol):
    def __call__(self, sample: AugmentSample, rng: np.random.Generator,
                 donors: DonorSampler | None = None) -> AugmentSample: ...


def _check_ratio(name: str, low: float, high: float, upper: float) -> None:
    if not 0.0 < low <= high <= upper:
        raise ValueError(f"{name}: need 0 < min_ratio <= max_ratio <= {upper} (got {low}, {high})")


def _check_prob(name: str, prob: float) -> None:
    if not 0.0 <= prob <= 1.0:
        raise ValueError(f"{name}: prob must be in [0, 1] (got {prob})")


def _window_offset(rng: np.random.Generator, first: int, last: int, length: int, num_steps: int) -> int:
    """Uniform start of a run of ``length`` steps inside ``[0, T)`` containing steps ``first..last``."""
    low, high = max(0, last + 1 - length), min(first, num_steps - length)
    return int(rng.integers(low, high + 1))


class SlidingWindowCrop:
    """Variable-length sliding window crop (ReLER).

    With probability ``prob``: draw ``ratio ~ U(min_ratio, max_ratio)`` and keep a
    contiguous run of ``L = max(round(ratio * T), GT steps)`` steps (at most T) placed
    uniformly among the runs that contain every step overlapping the GT window; window and
    duration are shifted / shortened accordingly (``duration' = L * duration / T``).

    Args:
        prob: probability of cropping a sample.
        min_ratio, max_ratio: bounds of the kept fraction of the steps.
    """

    def __init__(self, prob: float, min_ratio: float = 0.4, max_ratio: float = 0.8):
        _check_prob("SlidingWindowCrop", prob)
        _check_ratio("SlidingWindowCrop", min_ratio, max_ratio, 1.0)
        self.prob, self.min_ratio, self.max_ratio = float(prob), float(min_ratio), float(max_ratio)

    def __repr__(self) -> str:
        return f"SlidingWindowCrop(prob={self.prob}, min_ratio={self.min_ratio}, max_ratio={self.max_ratio})"

    def __call__(self, sample: AugmentSample, rng: np.random.Generator,
                 donors: DonorSampler | None = None) -> AugmentSample:
        if self.prob <= 0.0 or rng.random() >= self.prob:
            return sample
        num_steps = sample.num_steps
        first, last = sample.gt_steps()
        ratio = rng.uniform(self.min_ratio, self.max_ratio)
        length = min(max(int(round(ratio * num_steps)), last - first + 1, 1), num_steps)
        return sample.keep(_window_offset(rng, first, last, length, num_steps), length)


class VideoSplice:
    """Video splicing (ReLER), as interpreted here: part of the sample is replaced by
    features of ANOTHER training clip, joined at one end, the total length kept.

    With probability ``prob`` (and a donor available): draw ``ratio ~ U(min_ratio,
    max_ratio)``; ``n = round(ratio * T)`` steps (at most the donor's length and at most
    ``T`` minus the GT steps) come from a uniformly placed run of the donor; the sample keeps
    a uniformly placed run of ``T - n`` of its own steps that contains the GT steps; the donor
    run goes before or after it (a fair coin). The result has the input's T steps and
    duration (so the clip scale the model sees is unchanged and the pooling to max_len is
    the same); the GT window moves with its content: by ``n - a`` steps when the donor comes
    first, by ``-a`` when it comes last (``a``: the sample's dropped leading steps). Donor
    steps are taken as steps of this sample (``duration / T`` seconds each), whatever the
    donor's own rate. Crop and splice compose (crop first): a spliced crop has the crop's T.

    Args:
        prob: probability of splicing a sample.
        min_ratio, max_ratio: bounds of the donor's share of the T steps (< 1).
    """

    def __init__(self, prob: float = 0.5, min_ratio: float = 0.2, max_ratio: float = 0.5):
        _check_prob("VideoSplice", prob)
        _check_ratio("VideoSplice", min_ratio, max_ratio, 0.99)
        self.prob, self.min_ratio, self.max_ratio = float(prob), float(min_ratio), float(max_ratio)

    def __repr__(self) -> str:
        return f"VideoSplice(prob={self.prob}, min_ratio={self.min_ratio}, max_ratio={self.max_ratio})"

    def __call__(self, sample: AugmentSample, rng: np.random.Generator,
                 donors: DonorSampler | None = None) -> AugmentSample:
        if self.prob <= 0.0 or donors is None or rng.random() >= self.prob:
            return sample
        donor = donors(rng)  # [T', D]
        if donor is None or donor.shape[0] == 0:
            return sample
        if donor.ndim != 2 or donor.shape[1] != sample.features.shape[1]:
            raise ValueError(f"VideoSplice: donor features {tuple(donor.shape)} do not match the sample's "
                             f"{tuple(sample.features.shape)}")
        num_steps = sample.num_steps
        first, last = sample.gt_steps()
        ratio = rng.uniform(self.min_ratio, self.max_ratio)
        spliced = min(int(round(ratio * num_steps)), donor.shape[0], num_steps - (last - first + 1))
        if spliced <= 0:
            return sample
        own = num_steps - spliced
        kept = sample.keep(_window_offset(rng, first, last, own, num_steps), own)
        donor_offset = int(rng.integers(0, donor.shape[0] - spliced + 1))
        part = donor[donor_offset:donor_offset + spliced].to(sample.features.dtype)  # [n, D]
        if rng.random() < 0.5:  # donor after the sample's own steps
            return AugmentSample(torch.cat([kept.features, part]), kept.window, sample.duration)
        shift = spliced * sample.step_sec
        window = (min(kept.window[0] + shift, sample.duration), min(kept.window[1] + shift, sample.duration))
        return AugmentSample(torch.cat([part, kept.features]), window, sample.duration)


def apply_augmentations(augmentations: Sequence[Augmentation] | None, sample: AugmentSample,
                        rng: np.random.Generator, donors: DonorSampler | None = None) -> AugmentSample:
    """Apply ``augmentations`` in order (None or empty: ``sample`` unchanged)."""
    for augmentation in augmentations or ():
        sample = augmentation(sample, rng, donors)
    return sample


AUGMENT_DEFAULTS: dict = {
    "crop_prob": 0.0,            # probability of the variable-length sliding window crop
    "crop_ratio": [0.4, 0.8],    # kept fraction of the steps ~ U(min, max) (GT always kept)
    "splice_prob": 0.0,          # probability of splicing in another clip's features
    "splice_ratio": [0.2, 0.5],  # donor's share of the steps ~ U(min, max)
}


def build_augmentations(cfg: Mapping | None) -> list[Augmentation] | None:
    """The ``data.augment`` config (:data:`AUGMENT_DEFAULTS` keys) as augmentation objects,
    crop first; None when every probability is 0 (or ``cfg`` is None)."""
    if cfg is None:
        return None
    unknown = set(cfg) - set(AUGMENT_DEFAULTS)
    if unknown:
        raise KeyError(f"unknown config key(s) data.augment.{', '.join(sorted(unknown))} "
                       f"(known: {', '.join(AUGMENT_DEFAULTS)})")
    merged = {k: cfg.get(k) if cfg.get(k) is not None else v for k, v in AUGMENT_DEFAULTS.items()}
    for key in ("crop_ratio", "splice_ratio"):
        if len(merged[key]) != 2:
            raise ValueError(f"data.augment.{key} must be [min_ratio, max_ratio] (got {merged[key]!r})")
    out: list[Augmentation] = []
    if merged["crop_prob"] > 0:
        out.append(SlidingWindowCrop(float(merged["crop_prob"]), *map(float, merged["crop_ratio"])))
    if merged["splice_prob"] > 0:
        out.append(VideoSplice(float(merged["splice_prob"]), *map(float, merged["splice_ratio"])))
    return out or None


__all__ = ["AUGMENT_DEFAULTS", "AugmentSample", "Augmentation", "DonorSampler", "SlidingWindowCrop", "VideoSplice",
           "apply_augmentations", "build_augmentations"]
