"""ReLER's training augmentations of one NLQ sample as released in NaQ (docs/nlq.md#reler):
variable-length sliding window crop and video splicing.

They act on a sample BEFORE pooling to max_len: clip features ``[T, D]``, the GT window
(seconds) and the duration (seconds). The N steps of a sample are taken to span its
duration evenly, each ``step_sec = duration / T`` long (the geometry of
:mod:`nlq.data.labels`), so keeping steps ``[a, a + L)`` keeps seconds
``[a * step_sec, (a + L) * step_sec]``; windows and durations are shifted and scaled by
whole steps, and the features under the GT window are those under the original window.
Start / end / highlight labels are computed afterwards from the new window and duration.
(The release shifts by a fixed 16/30 s per step, the step of its 1.875 Hz features.)

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


class SlidingWindowCrop:
    """Variable-length sliding window crop as released (``--use_sw 1 --sw_len_ratio 0.4 0.8``).

    With probability ``prob`` (released: every training sample): GT steps
    ``s = floor(min(start / D, 1) * (T - 1))``, ``e = ceil(min(end / D, 1) * (T - 1))``;
    ``L = int(T * U(min_ratio, max_ratio))``; if ``L <= e - s + 1`` it becomes T when the GT
    spans the clip, else a uniform integer in ``[e - s + 1, T - 1]``; the kept run
    ``[a, a + L)`` starts at a uniform integer ``a`` in ``[max(0, e - L), min(s, T - L))``, or
    at ``min(s, T - L)`` when that range is empty. (As released, ``a = e - L`` leaves step e
    out of the run; the window is then clipped to the run.)
    """

    def __init__(self, prob: float = 1.0, min_ratio: float = 0.4, max_ratio: float = 0.8):
        _check_prob("SlidingWindowCrop", prob)
        _check_ratio("SlidingWindowCrop", min_ratio, max_ratio, 1.0)
        self.prob, self.min_ratio, self.max_ratio = float(prob), float(min_ratio), float(max_ratio)

    def __repr__(self) -> str:
        return f"SlidingWindowCrop(prob={self.prob}, min_ratio={self.min_ratio}, max_ratio={self.max_ratio})"

    def __call__(self, sample: AugmentSample, rng: np.random.Generator,
                 donors: DonorSampler | None = None) -> AugmentSample:
        if self.prob <= 0.0 or (self.prob < 1.0 and rng.random() >= self.prob):
            return sample
        num_steps, duration = sample.num_steps, sample.duration
        first = int(math.floor(min(sample.window[0] / duration, 1.0) * (num_steps - 1)))
        last = int(math.ceil(min(sample.window[1] / duration, 1.0) * (num_steps - 1)))
        gt_len = last - first + 1
        length = int(num_steps * rng.uniform(self.min_ratio, self.max_ratio))
        if length <= gt_len:
            length = num_steps if gt_len >= num_steps else int(rng.integers(gt_len, num_steps))
        low, high = max(0, last - length), min(first, num_steps - length)
        offset = int(rng.integers(low, high)) if num_steps > length and low < high else high
        return sample.keep(offset, min(offset + length, num_steps) - offset)


class VideoSplice:
    """Video splicing as released (``--use_vs 1 --vs_prob 0.5``): with probability ``prob`` the
    whole sample is inserted into a donor clip, at a uniform step ``k`` in ``[1, T' - 2]`` of
    the donor's T' steps: features ``donor[:k] + sample + donor[k:]``, the window moved by k
    steps, the duration grown to ``(T + T') * step_sec`` (donor steps count as steps of this
    sample). Donors of fewer than 3 steps leave the sample as it is.
    """

    def __init__(self, prob: float = 0.5):
        _check_prob("VideoSplice", prob)
        self.prob = float(prob)

    def __repr__(self) -> str:
        return f"VideoSplice(prob={self.prob})"

    def __call__(self, sample: AugmentSample, rng: np.random.Generator,
                 donors: DonorSampler | None = None) -> AugmentSample:
        if self.prob <= 0.0 or donors is None or rng.random() >= self.prob:
            return sample
        donor = _draw_donor(self, sample, rng, donors)
        if donor is None or donor.shape[0] < 3:
            return sample
        k = int(rng.integers(1, donor.shape[0] - 1))
        step = sample.step_sec
        features = torch.cat([donor[:k], sample.features, donor[k:]])
        shift = k * step
        return AugmentSample(features, (sample.window[0] + shift, sample.window[1] + shift),
                             features.shape[0] * step)


def _draw_donor(augmentation, sample: AugmentSample, rng: np.random.Generator,
                donors: DonorSampler) -> torch.Tensor | None:
    """Donor features [T', D] in the sample's dtype (None: no donor); a width mismatch is an error."""
    donor = donors(rng)
    if donor is None or donor.shape[0] == 0:
        return None
    if donor.ndim != 2 or donor.shape[1] != sample.features.shape[1]:
        raise ValueError(f"{type(augmentation).__name__}: donor features {tuple(donor.shape)} do not match the "
                         f"sample's {tuple(sample.features.shape)}")
    return donor.to(sample.features.dtype)


def apply_augmentations(augmentations: Sequence[Augmentation] | None, sample: AugmentSample,
                        rng: np.random.Generator, donors: DonorSampler | None = None) -> AugmentSample:
    """Apply ``augmentations`` in order (None or empty: ``sample`` unchanged)."""
    for augmentation in augmentations or ():
        sample = augmentation(sample, rng, donors)
    return sample


AUGMENT_DEFAULTS: dict = {
    "crop_prob": 0.0,            # probability of the sliding window crop (released ReLER: 1.0, every sample)
    "crop_ratio": [0.4, 0.8],    # kept fraction of the steps ~ U(min, max) (--sw_len_ratio)
    "splice_prob": 0.0,          # probability of video splicing (released ReLER: 0.5, --vs_prob)
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
    if len(merged["crop_ratio"]) != 2:
        raise ValueError(f"data.augment.crop_ratio must be [min_ratio, max_ratio] (got {merged['crop_ratio']!r})")
    out: list[Augmentation] = []
    if merged["crop_prob"] > 0:
        out.append(SlidingWindowCrop(float(merged["crop_prob"]), *map(float, merged["crop_ratio"])))
    if merged["splice_prob"] > 0:
        out.append(VideoSplice(float(merged["splice_prob"])))
    return out or None


__all__ = ["AUGMENT_DEFAULTS", "AugmentSample", "Augmentation", "DonorSampler", "SlidingWindowCrop", "VideoSplice",
           "apply_augmentations", "build_augmentations"]
