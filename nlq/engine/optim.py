"""AdamW with a linear warmup / linear decay learning rate (docs/nlq.md#vslnet, docs/nlq.md#reler and docs/nlq.md#training-recipe).

The learning rate is a pure function of the global step (:class:`WarmupLinearSchedule`),
so a resumed run needs only the step counter to continue the schedule, and a run resumed
with a larger ``max_epochs`` continues on the longer schedule.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import nn


def build_optimizer(model: nn.Module, lr: float, weight_decay: float,
                    betas: tuple[float, float] = (0.9, 0.999)) -> torch.optim.AdamW:
    """AdamW over the trainable parameters of ``model``.

    Weight decay applies to matrices/kernels only: biases, norm scales and other 1-d
    parameters (ndim <= 1) are not decayed.
    """
    decay, no_decay = [], []
    for param in model.parameters():
        if not param.requires_grad:
            continue
        (no_decay if param.ndim <= 1 else decay).append(param)
    groups = [{"params": decay, "weight_decay": float(weight_decay)},
              {"params": no_decay, "weight_decay": 0.0}]
    return torch.optim.AdamW([g for g in groups if g["params"]], lr=float(lr), betas=betas)


@dataclass(frozen=True)
class WarmupLinearSchedule:
    """lr(step) rises linearly from ~0 to ``base_lr`` over ``warmup_steps``, then falls
    linearly to 0 at ``total_steps``.

    Args:
        base_lr: peak learning rate.
        total_steps: optimisation steps of the whole schedule (epochs x steps per epoch).
        warmup_steps: steps of the warmup (docs/nlq.md#training-recipe: 2.5% of ``total_steps``).
    """

    base_lr: float
    total_steps: int
    warmup_steps: int = 0

    @classmethod
    def from_fraction(cls, base_lr: float, total_steps: int, warmup_fraction: float) -> "WarmupLinearSchedule":
        total = max(int(total_steps), 1)
        return cls(float(base_lr), total, int(math.ceil(warmup_fraction * total)))

    def factor(self, step: int) -> float:
        """Multiplier of ``base_lr`` at 0-based optimisation ``step``."""
        if step < self.warmup_steps:
            return (step + 1) / self.warmup_steps
        remaining = self.total_steps - self.warmup_steps
        if remaining <= 0:
            return 1.0
        return max(0.0, (self.total_steps - step) / remaining)

    def lr(self, step: int) -> float:
        return self.base_lr * self.factor(step)

    def apply(self, optimizer: torch.optim.Optimizer, step: int) -> float:
        """Set every parameter group's lr for ``step``; returns it."""
        lr = self.lr(step)
        for group in optimizer.param_groups:
            group["lr"] = lr
        return lr
