"""Per-anchor loss weights and ignore marks derived from per-box flags of a training target.

Anchors (RetinaNet), locations (FCOS) and proposals (Faster R-CNN) are made inside the detector, so
per-anchor values cannot come from the data: they come from per-box keys of the target through the
matcher's ``matched_idxs`` (box index >= 0 for an assigned anchor, negative codes otherwise). The
per-box keys, all optional (a missing key means all False), one row per box as ``boxes``:

- ``target["ignore"]`` bool (n,): an ignored region (COCO ``"ignore": 1``). Anchors assigned to it take
  no loss at all: not a foreground, and not a negative either (``ignore_assigned``).
- ``target["unverified"]`` bool (n,): a box nobody has confirmed yet (COCO ``"unverified": 1``, e.g. a
  pseudo-label or a box awaiting review in box-level active learning). Anchors assigned to it take
  the weight ``unverified_weight`` (lambda_d, 0.5 by default) on their classification and regression
  losses (``box_weights`` then ``anchor_weights``): the dampened loss.

These are plain functions of tensors, shared by the one-stage losses and usable by a two-stage one
(proposals have ``matched_idxs`` too).
"""

from __future__ import annotations

import torch
from torch import Tensor

#: The matcher code of anchors that take no classification loss (torchvision's BETWEEN_THRESHOLDS).
IGNORED = -2


def box_flags(target: dict[str, Tensor], key: str) -> Tensor:
    """``target[key]`` as bool (n,), all False when absent; ``ValueError`` if it has another length."""
    count = int(target["boxes"].shape[0])
    flags = target.get(key)
    if flags is None:
        return torch.zeros(count, dtype=torch.bool, device=target["boxes"].device)
    if flags.shape != (count,):
        raise ValueError(f"box_flags(target=) expects target[{key!r}] of shape ({count},), one flag per box; "
                         f"got {tuple(flags.shape)}.")
    return flags.to(device=target["boxes"].device, dtype=torch.bool)


def box_weights(target: dict[str, Tensor], *, unverified_weight: float) -> Tensor:
    """Per-box loss weight, float32 (n,): ``unverified_weight`` for boxes flagged unverified, else 1."""
    if not 0.0 <= unverified_weight <= 1.0:
        raise ValueError(f"box_weights(unverified_weight=) expects a value in [0, 1]; got {unverified_weight}.")
    unverified = box_flags(target, "unverified")
    weights = torch.ones(unverified.shape, dtype=torch.float32, device=unverified.device)
    return weights.masked_fill(unverified, unverified_weight)


def ignore_assigned(matched_idxs: Tensor, ignore: Tensor, *, code: int = IGNORED) -> Tensor:
    """``matched_idxs`` with every anchor assigned to an ignored box set to ``code`` (a new tensor).

    Parameters
    ----------
    matched_idxs : Tensor (A,), int64
        Box index >= 0 per assigned anchor, negative codes otherwise.
    ignore : Tensor (n,), bool
        Ignore flag per box (``box_flags(target, "ignore")``).
    code : int < 0
        What ignored anchors become (``IGNORED``, which torchvision's RetinaNet skips).
    """
    if not bool(ignore.any()):
        return matched_idxs.clone()
    assigned = matched_idxs >= 0
    hit = torch.zeros_like(assigned)
    hit[assigned] = ignore[matched_idxs[assigned]]
    return matched_idxs.masked_fill(hit, code)


def anchor_weights(matched_idxs: Tensor, weights: Tensor) -> Tensor:
    """Per-anchor weight, float32 (A,): the weight of the assigned box, 1 for unassigned anchors."""
    out = torch.ones(matched_idxs.shape, dtype=torch.float32, device=matched_idxs.device)
    assigned = matched_idxs >= 0
    if weights.numel():
        out[assigned] = weights.to(out)[matched_idxs[assigned]]
    return out
