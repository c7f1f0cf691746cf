"""Optimizer and learning-rate schedule.

The schedule is a pure function of the iteration (no hidden state), so resuming a run at iteration
``i`` gives exactly the learning rates of an uninterrupted run:

1. warm-up, ``i < W``: ``lr * (f + (1 - f) * i / W)`` with ``f = warmup_factor``;
2. step: ``lr * gamma ** (number of steps <= i)``;
3. cosine: ``lr * (m + (1 - m) * (1 + cos(pi * i / max_iter)) / 2)`` with ``m = min_lr_factor``.

Warm-up multiplies the decayed value (as in detectron2), so both are continuous at ``i = W``
only when the decay has not started yet, which is the usual set-up.
"""

from __future__ import annotations

import bisect
import math

import torch
from torch import nn

from curation_core.engine.config import OptimConfig, ScheduleConfig

#: Parameter types that get ``weight_decay_norm`` instead of ``weight_decay``.
_NORM_TYPES = (nn.BatchNorm2d, nn.GroupNorm, nn.LayerNorm, nn.SyncBatchNorm)


def build_optimizer(model: nn.Module, config: OptimConfig) -> torch.optim.Optimizer:
    """SGD (momentum) or AdamW over the trainable parameters of ``model``.

    Two parameter groups: conv/linear weights (``weight_decay``) and normalisation parameters and
    biases (``weight_decay_norm``). The learning rate is set by ``lr_at`` before every step.
    """
    decay, no_decay = [], []
    seen: set[int] = set()
    for module in model.modules():
        for name, param in module.named_parameters(recurse=False):
            if not param.requires_grad or id(param) in seen:
                continue
            seen.add(id(param))
            (no_decay if isinstance(module, _NORM_TYPES) or name == "bias" else decay).append(param)
    groups = [{"params": decay, "weight_decay": config.weight_decay},
              {"params": no_decay, "weight_decay": config.weight_decay_norm}]
    if config.name == "sgd":
        return torch.optim.SGD(groups, lr=config.lr, momentum=config.momentum)
    if config.name == "adamw":
        return torch.optim.AdamW(groups, lr=config.lr, betas=config.betas)
    raise ValueError(f"build_optimizer(config.name=) expects 'sgd' or 'adamw'; got {config.name!r}.")


def lr_at(iteration: int, *, lr: float, schedule: ScheduleConfig) -> float:
    """Learning rate of the step that follows ``iteration`` finished steps (see the module docstring)."""
    if schedule.policy == "step":
        value = lr * schedule.gamma ** bisect.bisect_right(schedule.steps, iteration)
    elif schedule.policy == "cosine":
        m = schedule.min_lr_factor
        value = lr * (m + (1.0 - m) * 0.5 * (1.0 + math.cos(math.pi * min(iteration, schedule.max_iter) / schedule.max_iter)))
    else:
        raise ValueError(f"lr_at(schedule.policy=) expects 'step' or 'cosine'; got {schedule.policy!r}.")
    if iteration < schedule.warmup_iters:
        f = schedule.warmup_factor
        value *= f + (1.0 - f) * iteration / schedule.warmup_iters
    return value


def set_lr(optimizer: torch.optim.Optimizer, value: float) -> None:
    """Set the learning rate of every parameter group."""
    for group in optimizer.param_groups:
        group["lr"] = value
