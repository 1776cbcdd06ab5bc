"""AdamW and the learning-rate schedule of NLQ training (docs/nlq.md#training-recipe).

The learning rate is a pure function of the global step (:class:`WarmupLinearSchedule`),
so a resumed run needs only the step counter to continue the schedule, and a run resumed
with a larger ``max_epochs`` continues on the longer schedule.

Which parameters are exempt from weight decay (``no_decay``):
``ndim`` (this toolkit's: every parameter with ndim <= 1), ``bias_norm`` (the released
VSLNet: biases and LayerNorm parameters, by name) and ``none`` (the released ReLER: torch
AdamW with one weight decay for every parameter).
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import nn

NO_DECAY_RULES = ("ndim", "bias_norm", "none")
LR_DECAYS = ("linear", "step")


def _exempt_names(model: nn.Module, rule: str) -> set[str]:
    """Names of the parameters of ``model`` without weight decay under ``rule``."""
    if rule not in NO_DECAY_RULES:
        raise ValueError(f"no_decay must be one of {NO_DECAY_RULES} (got {rule!r})")
    if rule == "none":
        return set()
    if rule == "ndim":
        return {name for name, p in model.named_parameters() if p.ndim <= 1}
    exempt = {name for name, _ in model.named_parameters() if name.split(".")[-1] == "bias"}
    for module_name, module in model.named_modules():
        if isinstance(module, nn.LayerNorm):
            exempt.update(f"{module_name}.{n}" if module_name else n for n, _ in module.named_parameters())
    return exempt


def build_optimizer(model: nn.Module, lr: float, weight_decay: float,
                    betas: tuple[float, float] = (0.9, 0.999), eps: float = 1e-8,
                    no_decay: str = "ndim") -> torch.optim.AdamW:
    """AdamW over the trainable parameters of ``model``; ``no_decay`` picks the parameters
    without weight decay (module docstring). The released VSLNet used eps 1e-6 (transformers'
    AdamW), the released ReLER torch's 1e-8."""
    exempt = _exempt_names(model, no_decay)
    decay, no_decay_params = [], []
    for name, param in model.named_parameters():
        if not param.requires_grad:
            continue
        (no_decay_params if name in exempt else decay).append(param)
    groups = [{"params": decay, "weight_decay": float(weight_decay)},
              {"params": no_decay_params, "weight_decay": 0.0}]
    return torch.optim.AdamW([g for g in groups if g["params"]], lr=float(lr), betas=betas, eps=float(eps))


@dataclass(frozen=True)
class WarmupLinearSchedule:
    """lr(step) rises linearly from ~0 to ``base_lr`` over ``warmup_steps``, then
    ``decay="linear"``: falls linearly to 0 at ``total_steps`` (the released VSLNet), or
    ``decay="step"``: stays, times 0.1 every ``drop_every`` steps (the released ReLER's
    StepLR; with its 400-epoch drop and 200 epochs the lr stays constant).

    Args:
        base_lr: peak learning rate.
        total_steps: optimisation steps of the whole schedule (epochs x steps per epoch).
        warmup_steps: steps of the warmup (2.5% of ``total_steps`` in NaQ's scripts).
        decay: "linear" or "step".
        drop_every: steps between two x0.1 drops of ``decay="step"`` (0: never).
    """

    base_lr: float
    total_steps: int
    warmup_steps: int = 0
    decay: str = "linear"
    drop_every: int = 0

    def __post_init__(self):
        if self.decay not in LR_DECAYS:
            raise ValueError(f"lr decay must be one of {LR_DECAYS} (got {self.decay!r})")

    @classmethod
    def from_fraction(cls, base_lr: float, total_steps: int, warmup_fraction: float, decay: str = "linear",
                      drop_every: int = 0) -> "WarmupLinearSchedule":
        total = max(int(total_steps), 1)
        return cls(float(base_lr), total, int(math.ceil(warmup_fraction * total)), decay, int(drop_every))

    def factor(self, step: int) -> float:
        """Multiplier of ``base_lr`` at 0-based optimisation ``step``."""
        if step < self.warmup_steps:
            return (step + 1) / self.warmup_steps
        if self.decay == "step":
            return 0.1 ** (step // self.drop_every) if self.drop_every > 0 else 1.0
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
