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

One image-level key, optional too (missing means False):

- ``target["incomplete"]`` bool (): the image's boxes are not all of its objects (COCO image record
  ``"incomplete": 1``, e.g. an image that joined the labelled set through one verified box in box-level
  active learning). Its negatives, anchors assigned to no box, may lie on an unlabelled object, so
  they take no classification loss (``image_negative_weight`` is 0, passed to ``anchor_weights``);
  its positives, their regression and the normalisers (foreground counts) are unchanged.

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


def image_flag(target: dict[str, Tensor], key: str) -> bool:
    """``target[key]`` as a bool, False when absent; ``ValueError`` if it is not one value."""
    flag = target.get(key)
    if flag is None:
        return False
    if flag.numel() != 1:
        raise ValueError(f"image_flag(target=) expects target[{key!r}] to hold one value, a flag of the image; "
                         f"got shape {tuple(flag.shape)}.")
    return bool(flag.reshape(()))


def image_negative_weight(target: dict[str, Tensor]) -> float:
    """Classification-loss weight of the image's negatives: 0 if ``target["incomplete"]``, else 1."""
    return 0.0 if image_flag(target, "incomplete") else 1.0


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


def anchor_weights(matched_idxs: Tensor, weights: Tensor, *, negative_weight: float = 1.0) -> Tensor:
    """Per-anchor weight, float32 (A,): the weight of the assigned box, ``negative_weight`` for the others.

    Parameters
    ----------
    matched_idxs : Tensor (A,), int64
        Box index >= 0 per assigned anchor, negative codes otherwise (negatives, ignored, BRL's
        confusion anchors; the caller drops ignored anchors from the loss).
    weights : Tensor (n,), float
        Weight per box (``box_weights``).
    negative_weight : float in [0, 1]
        Weight of the unassigned anchors (``image_negative_weight``: 0 on an incomplete image).
    """
    if not 0.0 <= negative_weight <= 1.0:
        raise ValueError(f"anchor_weights(negative_weight=) expects a value in [0, 1]; got {negative_weight}.")
    out = torch.full(matched_idxs.shape, negative_weight, dtype=torch.float32, device=matched_idxs.device)
    assigned = matched_idxs >= 0
    if weights.numel():
        out[assigned] = weights.to(out)[matched_idxs[assigned]]
    return out
