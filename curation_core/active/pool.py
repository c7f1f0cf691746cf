"""The unlabelled box pool: a detector's high-recall predictions on the images still open to queries.

From Desai & Balasubramanian (CVPRW 2020): the candidates of box-level querying are the detector's own
predicted boxes on the unlabelled images, taken at a low score threshold so that few objects are
missed. Here the detections (COCO results, xywh) above ``score_thresh`` are merged class-agnostically
by NMS at ``nms_iou`` (RetinaNet and FCOS regress one box per anchor for all classes, so one object
yields a box per class: the merge keeps the best-scoring one, whose score is the box's largest class
probability), at most ``max_per_image`` per image, and boxes already answered by the annotator
(IoU >= ``answered_iou`` with an answered box of the image) leave the pool.

Pool rows are ordered by image id, then by descending score (ties by input order): the order never
depends on the order of the input records beyond ties.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from curation_core.active.annotator import pairwise_iou
from curation_core.errors import DataError


@dataclass(frozen=True)
class BoxPool:
    """Candidate boxes for querying.

    Attributes
    ----------
    image_ids : (P,) int64.
    boxes : (P, 4) float64 xyxy, absolute pixels of the stored image.
    scores : (P,) float64 in [0, 1]: the box's largest class probability (higher = more confident).
    category_ids : (P,) int64: the predicted class.
    """

    image_ids: np.ndarray
    boxes: np.ndarray
    scores: np.ndarray
    category_ids: np.ndarray

    def __len__(self) -> int:
        return int(self.scores.size)

    def rows_of(self, image_id: int) -> np.ndarray:
        """Row indices of the boxes of one image."""
        return np.flatnonzero(self.image_ids == image_id)


def xywh_to_xyxy(xywh: np.ndarray) -> np.ndarray:
    """(n, 4) xywh -> xyxy, float64."""
    xywh = np.asarray(xywh, dtype=np.float64).reshape(-1, 4)
    return np.concatenate([xywh[:, :2], xywh[:, :2] + xywh[:, 2:]], axis=1)


def build_pool(detections: Sequence[dict[str, Any]], image_ids: Collection[int], *, score_thresh: float = 0.05,
               nms_iou: float = 0.5, max_per_image: int = 30,
               answered: Mapping[int, np.ndarray] | None = None, answered_iou: float = 0.5,
               known_image_ids: Collection[int] | None = None, source: str = "predictions") -> BoxPool:
    """The pool of the images ``image_ids`` from COCO results ``detections`` (module docstring).

    Parameters
    ----------
    detections : COCO results (``image_id``, ``category_id``, ``bbox`` xywh, ``score``); records of
        images outside ``image_ids`` but inside ``known_image_ids`` are skipped (labelled images).
    known_image_ids : every image id of the data set (default: ``image_ids``); a record of another
        image is a ``DataError`` naming it.
    answered : image id -> (n, 4) xyxy boxes the annotator has answered already.

    Raises
    ------
    DataError
        A record for an image the data set does not have.
    """
    if not 0.0 < nms_iou <= 1.0:
        raise ValueError(f"build_pool(nms_iou=) expects a value in (0, 1]; got {nms_iou}.")
    if max_per_image < 1:
        raise ValueError(f"build_pool(max_per_image=) expects an integer >= 1; got {max_per_image}.")
    wanted = set(int(i) for i in image_ids)
    known = wanted if known_image_ids is None else set(int(i) for i in known_image_ids)
    by_image: dict[int, list[int]] = defaultdict(list)
    for index, det in enumerate(detections):
        image_id = int(det["image_id"])
        if image_id not in known:
            raise DataError(f"{source}: detection [{index}]: image_id {image_id} is not an image of the data set")
        if image_id in wanted and float(det["score"]) >= score_thresh:
            by_image[image_id].append(index)
    rows: list[tuple[int, np.ndarray, float, int]] = []
    for image_id in sorted(by_image):
        rows.extend(_image_rows(detections, by_image[image_id], image_id, nms_iou=nms_iou,
                                max_per_image=max_per_image, answered=(answered or {}).get(image_id),
                                answered_iou=answered_iou))
    if not rows:
        return BoxPool(np.zeros(0, np.int64), np.zeros((0, 4)), np.zeros(0), np.zeros(0, np.int64))
    return BoxPool(image_ids=np.asarray([r[0] for r in rows], dtype=np.int64),
                   boxes=np.stack([r[1] for r in rows]).astype(np.float64),
                   scores=np.asarray([r[2] for r in rows], dtype=np.float64),
                   category_ids=np.asarray([r[3] for r in rows], dtype=np.int64))


def _image_rows(detections: Sequence[dict[str, Any]], indices: list[int], image_id: int, *, nms_iou: float,
                max_per_image: int, answered: np.ndarray | None,
                answered_iou: float) -> list[tuple[int, np.ndarray, float, int]]:
    import torch
    from torchvision.ops import nms

    boxes = xywh_to_xyxy(np.asarray([detections[i]["bbox"] for i in indices]))
    scores = np.asarray([float(detections[i]["score"]) for i in indices])
    order = np.argsort(-scores, kind="stable")  # torchvision's nms breaks ties arbitrarily: pre-sort, stable
    boxes, scores = boxes[order], scores[order]
    indices = [indices[i] for i in order]
    keep = nms(torch.as_tensor(boxes), torch.as_tensor(scores) - torch.arange(len(scores)) * 1e-12, nms_iou).numpy()
    keep = np.sort(keep)  # back to descending score, input order within ties
    if answered is not None and len(answered):
        open_ = pairwise_iou(boxes[keep], answered).max(axis=1) < answered_iou
        keep = keep[open_]
    keep = keep[:max_per_image]
    return [(image_id, boxes[k], float(scores[k]), int(detections[indices[k]]["category_id"])) for k in keep]


def roi_features(model: Any, images: Sequence[Any], boxes: Sequence[np.ndarray], *, device: Any) -> list[np.ndarray]:
    """Faster R-CNN box-head features of given boxes: float32 (n_i, D) per image.

    ``images`` are float (3, H, W) tensors in [0, 1] (stored size); ``boxes`` xyxy (n_i, 4) in their
    pixels. Each image goes through the detector's transform, backbone, RoI pooling and box head
    (``roi_heads.box_roi_pool``, ``roi_heads.box_head``): the representation the classifier sees.
    """
    import torch

    model.eval()
    with torch.inference_mode():
        batch, _ = model.transform([image.to(device) for image in images])
        features = model.backbone(batch.tensors)
        scaled = []
        for image, size, b in zip(images, batch.image_sizes, boxes, strict=True):
            sy, sx = size[0] / image.shape[-2], size[1] / image.shape[-1]
            factor = torch.tensor([sx, sy, sx, sy], dtype=torch.float32, device=device)
            scaled.append(torch.as_tensor(np.asarray(b, dtype=np.float32).reshape(-1, 4), device=device) * factor)
        pooled = model.roi_heads.box_roi_pool(features, scaled, batch.image_sizes)
        head = model.roi_heads.box_head(pooled).float().cpu().numpy()
    out, start = [], 0
    for b in scaled:
        out.append(head[start:start + len(b)])
        start += len(b)
    return out
