"""The simulated annotator of box-level active learning (Desai & Balasubramanian, CVPRW 2020).

A queried box is shown to the annotator with the image's ground truth at hand. Its rule, from the
paper's simulation: if the box overlaps a ground-truth box with IoU >= ``match_iou`` (0.5), the
annotator moves it onto the ground-truth box of largest IoU and gives it that box's class; otherwise
it labels the box background, coordinates unchanged. Ties (equal largest IoU) go to the ground-truth
box listed first. Crowd annotations are never targets. Every answer costs one box.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

#: The paper's threshold: a box with IoU >= 0.5 with a ground-truth box is that object.
MATCH_IOU = 0.5


@dataclass(frozen=True)
class Answer:
    """The annotator's answer for one queried box.

    Attributes
    ----------
    box : (4,) float64 xyxy, absolute pixels: the ground-truth box (object) or the query (background).
    category_id : the ground-truth class, or ``None`` for background.
    gt_id : the COCO annotation id the box was snapped to, or ``None``.
    iou : largest IoU of the query with a ground-truth box (0 without any).
    """

    box: np.ndarray
    category_id: int | None
    gt_id: int | None
    iou: float

    @property
    def is_object(self) -> bool:
        return self.category_id is not None


def pairwise_iou(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """IoU of xyxy boxes ``a`` (n, 4) against ``b`` (m, 4), float64 (n, m) (``torchvision.ops.box_iou``)."""
    import torch
    from torchvision.ops import box_iou

    a = torch.as_tensor(np.asarray(a, dtype=np.float64).reshape(-1, 4))
    b = torch.as_tensor(np.asarray(b, dtype=np.float64).reshape(-1, 4))
    return np.nan_to_num(box_iou(a, b).numpy(), nan=0.0)


def gt_boxes(annotations: Sequence[dict[str, Any]]) -> tuple[np.ndarray, list[int], list[int]]:
    """Non-crowd ground truth of one image: xyxy (m, 4) float64, category ids, annotation ids."""
    kept = [a for a in annotations if not a.get("iscrowd", 0)]
    xywh = np.asarray([a["bbox"] for a in kept], dtype=np.float64).reshape(-1, 4)
    return (np.concatenate([xywh[:, :2], xywh[:, :2] + xywh[:, 2:]], axis=1),
            [int(a["category_id"]) for a in kept], [int(a["id"]) for a in kept])


def annotate_boxes(queries: np.ndarray, annotations: Sequence[dict[str, Any]], *,
                   match_iou: float = MATCH_IOU) -> list[Answer]:
    """The annotator's answers for the queried boxes of one image (module docstring).

    Parameters
    ----------
    queries : (n, 4) xyxy boxes, absolute pixels of the stored image.
    annotations : the image's COCO annotations (xywh), the ground truth.
    match_iou : a query with IoU >= this with some ground-truth box becomes that box.
    """
    if not 0.0 < match_iou <= 1.0:
        raise ValueError(f"annotate_boxes(match_iou=) expects a value in (0, 1]; got {match_iou}.")
    queries = np.asarray(queries, dtype=np.float64).reshape(-1, 4)
    boxes, categories, ids = gt_boxes(annotations)
    iou = pairwise_iou(queries, boxes)
    answers: list[Answer] = []
    for i, query in enumerate(queries):
        if boxes.shape[0] == 0:
            answers.append(Answer(query.copy(), None, None, 0.0))
            continue
        j = int(np.argmax(iou[i]))  # the first maximum: ties go to the ground truth listed first
        best = float(iou[i, j])
        if best >= match_iou:
            answers.append(Answer(boxes[j].copy(), categories[j], ids[j], best))
        else:
            answers.append(Answer(query.copy(), None, None, best))
    return answers
