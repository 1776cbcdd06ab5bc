"""SGD with per-part learning rates and a warmup + multi-step schedule (docs/vq2d.md#model).

The siamese head learns at ``lr_head`` (0.02), the backbone + RPN at ``lr_backbone``
(0.002 in the seed paper; frozen in the baseline, where they have no group at all).
"""
from __future__ import annotations

from bisect import bisect_right
from collections.abc import Sequence

import torch
from torch.optim.lr_scheduler import LRScheduler

WARMUP_METHODS = ("linear", "constant")


def build_sgd(
    model: torch.nn.Module,
    *,
    lr_head: float,
    lr_backbone: float,
    momentum: float = 0.9,
    weight_decay: float = 1e-4,
    nesterov: bool = False,
) -> torch.optim.SGD:
    """SGD over ``model.param_groups(lr_head, lr_backbone, weight_decay)`` (groups named
    "head" and "backbone"; frozen parameters left out)."""
    groups = model.param_groups(lr_head=lr_head, lr_backbone=lr_backbone, weight_decay=weight_decay)
    if not groups:
        raise ValueError("the model has no trainable parameter")
    return torch.optim.SGD(groups, lr=lr_head, momentum=momentum, weight_decay=weight_decay, nesterov=nesterov)


def warmup_multistep_factor(
    iteration: int, milestones: Sequence[int], gamma: float, warmup_iters: int, warmup_factor: float,
    warmup_method: str = "linear",
) -> float:
    """Learning-rate multiplier at ``iteration``: ``gamma ** (milestones passed)`` times a
    warmup factor that goes from ``warmup_factor`` to 1 over ``warmup_iters`` (linear) or
    stays at ``warmup_factor`` (constant)."""
    factor = gamma ** bisect_right(list(milestones), iteration)
    if iteration < warmup_iters:
        if warmup_method == "linear":
            alpha = iteration / warmup_iters
            factor *= warmup_factor * (1 - alpha) + alpha
        else:
            factor *= warmup_factor
    return factor


class WarmupMultiStepLR(LRScheduler):
    """Per-iteration schedule: warmup, then the lr times ``gamma`` at each milestone.

    Args:
        optimizer: its groups' initial lrs are the base lrs.
        milestones: increasing iterations at which the lr is multiplied by ``gamma``.
        gamma: decay factor (0.1).
        warmup_iters: iterations of warmup (0 = none).
        warmup_factor: lr multiplier at iteration 0 (0.001).
        warmup_method: "linear" or "constant".
    """

    def __init__(
        self,
        optimizer: torch.optim.Optimizer,
        *,
        milestones: Sequence[int],
        gamma: float = 0.1,
        warmup_iters: int = 1000,
        warmup_factor: float = 0.001,
        warmup_method: str = "linear",
        last_epoch: int = -1,
    ):
        if list(milestones) != sorted(milestones):
            raise ValueError(f"milestones must be increasing, got {list(milestones)}")
        if warmup_method not in WARMUP_METHODS:
            raise ValueError(f"warmup_method must be one of {WARMUP_METHODS}, got {warmup_method!r}")
        self.milestones = [int(m) for m in milestones]
        self.gamma = float(gamma)
        self.warmup_iters = int(warmup_iters)
        self.warmup_factor = float(warmup_factor)
        self.warmup_method = warmup_method
        super().__init__(optimizer, last_epoch)

    def get_lr(self) -> list[float]:
        factor = warmup_multistep_factor(self.last_epoch, self.milestones, self.gamma, self.warmup_iters,
                                         self.warmup_factor, self.warmup_method)
        return [base * factor for base in self.base_lrs]

    def _get_closed_form_lr(self) -> list[float]:
        return self.get_lr()
