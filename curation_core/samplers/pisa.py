"""Hierarchical Local Rank (HLR) of PISA, Prime Sample Attention (Cao et al., arXiv 1904.04821).

PISA ranks the samples of a training batch by how much they matter for mAP ("prime" samples) and
reweights their losses by that rank (``curation_core.losses.pisa``). Both functions here return the
normalised rank ``u`` of every sample, a float in (0, 1]: **u = 1 is the most prime sample** (rank 0),
and u falls linearly with the rank, ``u = (n_max - r) / n_max`` (the paper's Eq. 2).

- ``iou_hlr`` (positives): within each ground-truth object, its positives are ranked by the IoU of
  their regressed box with the object (local rank: 0 = best localised); then all the positives of a
  class are ranked by (local rank ascending, IoU descending), so the best sample of every object comes
  before the second best of any object. ``n_max`` is the largest number of positives of one class in
  the call, as in the paper, so a rare class's positives keep higher weights.
- ``score_hlr`` (negatives): negatives are grouped by NMS (each box joins the group of the highest
  scoring kept box that suppresses it, IoU > ``iou_threshold``), ranked by score within their group
  (local rank), then globally by (local rank ascending, score descending); ``n_max`` is the number
  of negatives.

Both are plain functions of detached tensors (no gradient flows through a rank). Ties are broken by
position (stable sorts), so results do not depend on anything but the inputs.
"""

from __future__ import annotations

import torch
from torch import Tensor
from torchvision.ops import box_iou, nms

#: IoU above which a negative joins the group of a higher-scoring one (PISA's Score-HLR, mmdetection's).
SCORE_HLR_IOU = 0.5


def iou_hlr(ious: Tensor, objects: Tensor, labels: Tensor) -> Tensor:
    """IoU-HLR of positive samples: normalised rank u in (0, 1], 1 = most prime.

    Parameters
    ----------
    ious : Tensor (n,), float
        IoU of each positive's regressed (predicted) box with the ground-truth box it is assigned to.
    objects : Tensor (n,), int64
        Identifier of that ground-truth object, unique over the batch (e.g. a running index over all
        images' boxes); positives of one object share it.
    labels : Tensor (n,), int64
        Class of that object. Ranking is per class.

    Returns
    -------
    Tensor (n,), float32
        ``u = (n_max - r) / n_max`` with ``r`` the IoU-HLR within the sample's class (0 = best) and
        ``n_max`` the largest number of positives of one class. Empty input gives an empty tensor.

    Raises
    ------
    ValueError
        When the three tensors are not 1-D of one length.
    """
    _check_same_length("iou_hlr", ious=ious, objects=objects, labels=labels)
    if ious.numel() == 0:
        return torch.zeros(0, dtype=torch.float32, device=ious.device)
    ious = ious.detach().float()
    # 1. Local rank: position of each sample in its object, by IoU descending.
    local = _rank_within_groups(objects, ious)
    # 2. Within each class: order by (local rank ascending, IoU descending); r = position in that order.
    ranks = _rank_within_groups(labels, ious, major=local)
    n_max = float(torch.bincount(_dense_ids(labels)).max())
    return (n_max - ranks.float()) / n_max


def score_hlr(boxes: Tensor, scores: Tensor, *, images: Tensor | None = None,
              iou_threshold: float = SCORE_HLR_IOU) -> Tensor:
    """Score-HLR of negative samples: normalised rank u in (0, 1], 1 = most prime (hardest negative).

    Parameters
    ----------
    boxes : Tensor (n, 4), float
        The negatives' boxes, xyxy in absolute pixels (PISA uses the regressed boxes).
    scores : Tensor (n,), float
        Their scores, higher = more confidently (wrongly) foreground: the largest foreground
        probability of each negative.
    images : Tensor (n,), int64, optional
        The image each negative comes from; NMS groups never span two images. None: one image.
    iou_threshold : float in [0, 1)
        A box joins the group of the first higher-scoring kept box whose IoU with it exceeds this.

    Returns
    -------
    Tensor (n,), float32
        ``u = (n - r) / n`` with ``r`` the global rank by (rank within the NMS group ascending, score
        descending), 0 = best. Empty input gives an empty tensor.

    Raises
    ------
    ValueError
        For boxes not of shape (n, 4), scores or images of another length, or a threshold outside [0, 1).
    """
    if boxes.dim() != 2 or boxes.shape[-1] != 4:
        raise ValueError(f"score_hlr(boxes=) expects a tensor of shape (n, 4); got {tuple(boxes.shape)}.")
    if not 0.0 <= iou_threshold < 1.0:
        raise ValueError(f"score_hlr(iou_threshold=) expects a value in [0, 1); got {iou_threshold}.")
    if images is None:
        images = torch.zeros(len(boxes), dtype=torch.int64, device=boxes.device)
    _check_same_length("score_hlr", scores=scores, images=images, boxes=boxes[:, 0])
    n = len(boxes)
    if n == 0:
        return torch.zeros(0, dtype=torch.float32, device=boxes.device)
    scores = scores.detach().float()
    groups = nms_groups(boxes.detach().float(), scores, images, iou_threshold)
    local = _rank_within_groups(groups, scores)
    ranks = _rank_within_groups(torch.zeros_like(groups), scores, major=local)
    return (n - ranks.float()) / n


def nms_groups(boxes: Tensor, scores: Tensor, images: Tensor, iou_threshold: float) -> Tensor:
    """Group of every box under greedy NMS: the index of the kept box that suppresses it (its own if kept).

    Greedy NMS visits boxes by score descending and keeps a box unless a kept box before it overlaps
    it with IoU > ``iou_threshold``; a suppressed box belongs to the first such kept box (mmcv's
    ``nms_match``). Boxes of different ``images`` never overlap. Shapes: boxes (n, 4) xyxy, scores (n,),
    images (n,); returns (n,) int64 indices into the input.
    """
    out = torch.arange(len(boxes), device=boxes.device)
    for image in torch.unique(images):  # one image at a time: the IoU matrix is per image
        members = torch.where(images == image)[0]
        out[members] = members[_nms_groups_one_image(boxes[members], scores[members], iou_threshold)]
    return out


def _nms_groups_one_image(boxes: Tensor, scores: Tensor, iou_threshold: float) -> Tensor:
    n = len(boxes)
    order = torch.sort(scores, descending=True, stable=True).indices
    sorted_boxes = boxes[order]
    # Kept boxes by torchvision's NMS, as positions in the sorted order.
    kept_mask = torch.zeros(n, dtype=torch.bool, device=boxes.device)
    kept_mask[nms(sorted_boxes, scores[order], iou_threshold)] = True
    kept = torch.where(kept_mask)[0]
    # Box j is suppressed by the first kept box i before it (i < j) with IoU > threshold.
    overlap = box_iou(sorted_boxes[kept], sorted_boxes) > iou_threshold
    overlap &= kept[:, None] < torch.arange(n, device=boxes.device)[None, :]
    has_leader = overlap.any(dim=0) & ~kept_mask
    first = overlap.to(torch.int8).argmax(dim=0)  # first True row (kept boxes are in score order)
    leader = torch.where(has_leader, kept[first], torch.arange(n, device=boxes.device))
    out = torch.empty(n, dtype=torch.int64, device=boxes.device)
    out[order] = order[leader]
    return out


def _rank_within_groups(groups: Tensor, values: Tensor, *, major: Tensor | None = None) -> Tensor:
    """Rank of each element within its group, by ``major`` ascending then ``values`` descending (0 = first)."""
    n = len(values)
    position = torch.arange(n, device=values.device)
    # Stable lexicographic sort, least significant key first: values desc, then major asc, then group.
    order = torch.sort(values, descending=True, stable=True).indices
    if major is not None:
        order = order[torch.sort(major[order], stable=True).indices]
    order = order[torch.sort(groups[order], stable=True).indices]
    sorted_groups = groups[order]
    starts = torch.ones(n, dtype=torch.bool, device=values.device)
    starts[1:] = sorted_groups[1:] != sorted_groups[:-1]
    first = torch.cummax(torch.where(starts, position, torch.zeros_like(position)), dim=0).values
    ranks = torch.empty(n, dtype=torch.int64, device=values.device)
    ranks[order] = position - first
    return ranks


def _dense_ids(ids: Tensor) -> Tensor:
    return torch.unique(ids, return_inverse=True)[1]


def _check_same_length(function: str, **tensors: Tensor) -> None:
    lengths = {name: tuple(t.shape) for name, t in tensors.items()}
    shapes = set(lengths.values())
    if any(len(s) != 1 for s in shapes) or len(shapes) != 1:
        listed = ", ".join(f"{name} {shape}" for name, shape in lengths.items())
        raise ValueError(f"{function}() expects 1-D tensors of one length; got {listed}.")
