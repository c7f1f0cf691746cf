"""Ignore regions: training samples covered by an annotation flagged ``ignore=1``.

pycocotools evaluates an ignored ground-truth box as a crowd region: a detection that matches no
regular box but lies inside an ignored one (intersection over the *detection's* area >= the IoU
threshold, 0.5 at the loosest) is neither a true nor a false positive. Training mirrors that: an
anchor or proposal that would be a negative (background) but lies inside an ignored box by the same
measure is left out of the loss (neither foreground nor background), and ignored boxes are never
matched as foreground. Samples that match a regular box keep their label (pycocotools prefers
regular boxes too).
"""

from __future__ import annotations

import torch
from torch import Tensor
from torchvision.ops import box_area

#: Intersection over the sample's area above which a background sample inside an ignored box is
#: ignored: pycocotools' loosest IoU threshold (0.5), with its crowd measure.
IGNORE_IOF = 0.5


def covered_by_regions(boxes: Tensor, regions: Tensor, *, threshold: float = IGNORE_IOF) -> Tensor:
    """Which ``boxes`` lie inside some region: max over regions of ``area(box & region) / area(box)`` >= threshold.

    Parameters
    ----------
    boxes : Tensor (n, 4), float
        Anchors or proposals, xyxy in absolute pixels.
    regions : Tensor (m, 4), float
        Ignored ground-truth boxes, xyxy in absolute pixels; m may be 0 (nothing is covered).
    threshold : float in (0, 1]
        Fraction of a box's area that must lie inside one region.

    Returns
    -------
    Tensor (n,), bool
        True where covered. A box of zero area counts as covered when its corner lies in a region.
    """
    if boxes.dim() != 2 or boxes.shape[-1] != 4 or regions.dim() != 2 or regions.shape[-1] != 4:
        raise ValueError(f"covered_by_regions(boxes=, regions=) expects tensors of shape (n, 4) and (m, 4); "
                         f"got {tuple(boxes.shape)} and {tuple(regions.shape)}.")
    if not 0.0 < threshold <= 1.0:
        raise ValueError(f"covered_by_regions(threshold=) expects a value in (0, 1]; got {threshold}.")
    if len(regions) == 0 or len(boxes) == 0:
        return torch.zeros(len(boxes), dtype=torch.bool, device=boxes.device)
    regions = regions.to(boxes.dtype)
    top_left = torch.maximum(boxes[:, None, :2], regions[None, :, :2])
    bottom_right = torch.minimum(boxes[:, None, 2:], regions[None, :, 2:])
    inter = (bottom_right - top_left).clamp(min=0).prod(dim=2)  # (n, m)
    area = box_area(boxes)[:, None]
    inside = (boxes[:, None, :2] >= regions[None, :, :2]).all(2) & (boxes[:, None, :2] <= regions[None, :, 2:]).all(2)
    fraction = torch.where(area > 0, inter / area.clamp(min=torch.finfo(boxes.dtype).tiny), inside.to(boxes.dtype))
    return (fraction >= threshold).any(dim=1)


def split_ignored(target: dict[str, Tensor]) -> tuple[Tensor, Tensor, Tensor]:
    """(regular boxes (k, 4), their labels (k,), ignored boxes (m, 4)) of one target.

    ``target["ignore"]`` (bool or 0/1, (n,)) is optional; without it every box is regular.
    """
    boxes, labels = target["boxes"], target["labels"]
    flags = target.get("ignore")
    if flags is None:
        return boxes, labels, boxes[:0]
    flags = flags.to(torch.bool)
    return boxes[~flags], labels[~flags], boxes[flags]
