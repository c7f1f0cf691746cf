"""torchvision's FCOS / RetinaNet inference post-processing, vectorised over the images of a batch.

``one_stage_detections(model, head_outputs, anchors, per_level, image_sizes)`` returns what
``model.postprocess_detections`` (torchvision's, before any label shift) returns for the same head
outputs, for the scoring path (``per_image.score_forward``), where a super-batch of 32 to 80 images is
post-processed at every step. torchvision loops over images and, within each, over feature levels
(about 10 small tensor operations per image and level), then runs class-wise NMS on every candidate of
the image although only the best ``detections_per_img`` kept boxes are returned. Here:

1. scores for all images and levels at once: FCOS ``sqrt(sigmoid(class logit) * sigmoid(centerness))``,
   RetinaNet ``sigmoid(class logit)``; per image and level the ``topk_candidates`` best scores, of which
   those above ``score_thresh`` are kept (the same candidates as thresholding first, then taking the
   top-k of the rest);
2. one decoding (``model.box_coder``) of every candidate of every image, clipped to its image's size;
3. per image, class-wise NMS run on the candidates in descending score order, on a prefix of them:
   greedy NMS keeps or suppresses a box from higher-scored boxes only, so the kept boxes of the best
   ``m`` candidates are the first kept boxes of all candidates. The prefix starts at ``FIRST_PREFIX``
   times ``detections_per_img`` and doubles until it holds ``detections_per_img`` kept boxes or every
   candidate. Each image takes the branch that ``torchvision.ops.batched_nms`` would take for all its
   candidates (one NMS over class-offset boxes, the offset computed from all the candidates; one NMS
   per class above ``VANILLA_NMS_NUMEL_CPU`` coordinates), so the IoUs compared are the same
   floating-point numbers.

Faster R-CNN is not handled here: its scoring keeps torchvision's ``roi_heads.postprocess_detections``.

The detections equal torchvision's up to the order of boxes with equal scores (both sort without a
stable order) and float rounding of elementwise operations run on differently shaped tensors.
"""

from __future__ import annotations

import torch
from torch import Tensor
from torchvision.models.detection import FCOS, RetinaNet
from torchvision.ops import nms

#: ``torchvision.ops.batched_nms`` (torchvision 0.29) runs one NMS per class when ``boxes.numel()`` exceeds
#: this on CPU (``VANILLA_NMS_NUMEL_ACCELERATOR`` elsewhere), else one NMS over class-offset boxes.
VANILLA_NMS_NUMEL_CPU = 4000
VANILLA_NMS_NUMEL_ACCELERATOR = 100_000
#: The first NMS prefix holds this many times ``detections_per_img`` candidates, then doubles: an FCOS
#: after 200 iterations on 128 px synthetic images kept its 100 detections within the best 2.1-5.4 x 100
#: of its 1,680 candidates, a randomly initialised one within the best 100.
FIRST_PREFIX = 3


def one_stage_detections(model: FCOS | RetinaNet, head_outputs: dict[str, Tensor], anchors: list[Tensor],
                         per_level: list[int], image_sizes: list[tuple[int, int]]) -> list[dict[str, Tensor]]:
    """Detections of a batch of N images from the head outputs, as ``model.postprocess_detections``.

    Parameters
    ----------
    model : torchvision FCOS or RetinaNet
        Read for ``score_thresh``, ``topk_candidates``, ``nms_thresh``, ``detections_per_img`` and
        ``box_coder``.
    head_outputs : dict of tensors, as ``model.head`` returns them (not split by level)
        ``"cls_logits"`` (N, A, K), ``"bbox_regression"`` (N, A, 4) and, for FCOS, ``"bbox_ctrness"``
        (N, A, 1), A = anchors over all levels.
    anchors : list of N (A, 4) float tensors, xyxy pixels of the padded batch (``model.anchor_generator``).
    per_level : anchors per feature level, summing to A.
    image_sizes : (height, width) of each image before padding; boxes are clipped to it.

    Returns
    -------
    list of N dicts
        ``{"boxes": (n, 4) xyxy absolute pixels, "scores": (n,) in (score_thresh, 1], "labels": (n,) int64
        class indices 0..K-1 of the head}``, n <= ``detections_per_img``, in descending score order.
    """
    logits = head_outputs["cls_logits"]
    scores = torch.sigmoid(logits)
    if isinstance(model, FCOS):
        scores = torch.sqrt(scores * torch.sigmoid(head_outputs["bbox_ctrness"]))
    num_images, _, num_classes = logits.shape
    values, flat = _level_candidates(scores, per_level, model.topk_candidates)
    rows, columns = torch.where(values > model.score_thresh)  # row-major: each image's candidates in one run
    candidates = flat[rows, columns]
    anchor_index = torch.div(candidates, num_classes, rounding_mode="floor")
    codes = head_outputs["bbox_regression"][rows, anchor_index]
    references = torch.stack(anchors)[rows, anchor_index]
    if isinstance(model, FCOS):
        boxes = model.box_coder.decode(codes, references)
    else:
        boxes = model.box_coder.decode_single(codes, references)
    boxes = _clip(boxes, rows, image_sizes)
    counts = torch.bincount(rows, minlength=num_images).tolist()
    per_image = zip(boxes.split(counts), values[rows, columns].split(counts),
                    (candidates % num_classes).split(counts), strict=True)
    detections = []
    for image_boxes, image_scores, image_labels in per_image:
        keep = top_class_wise_nms(image_boxes, image_scores, image_labels, iou_threshold=model.nms_thresh,
                                  limit=model.detections_per_img)
        detections.append({"boxes": image_boxes[keep], "scores": image_scores[keep],
                           "labels": image_labels[keep]})
    return detections


def top_class_wise_nms(boxes: Tensor, scores: Tensor, labels: Tensor, *, iou_threshold: float,
                       limit: int) -> Tensor:
    """``torchvision.ops.batched_nms(boxes, scores, labels, iou_threshold)[:limit]``, computed on the
    fewest best-scored boxes that decide it (see the module docstring).

    Parameters
    ----------
    boxes : (n, 4) float xyxy; scores : (n,) float (higher = better); labels : (n,) int64 classes.
    iou_threshold : boxes of one class with IoU above it with a better kept box are suppressed.
    limit : the most kept boxes returned (>= 1).

    Returns
    -------
    Tensor of int64 indices into ``boxes``, at most ``limit``, in descending score order.
    """
    total = len(boxes)
    if total == 0:
        return torch.zeros(0, dtype=torch.int64, device=boxes.device)
    on_cpu = boxes.device.type == "cpu"
    per_class = boxes.numel() > (VANILLA_NMS_NUMEL_CPU if on_cpu else VANILLA_NMS_NUMEL_ACCELERATOR)
    if not per_class:  # torchvision's offsets: class c moves by c * (largest coordinate + 1)
        boxes = boxes + (labels.to(boxes) * (boxes.max() + torch.tensor(1).to(boxes)))[:, None]
    order = scores.argsort(descending=True)
    size = min(total, FIRST_PREFIX * limit)
    while True:
        prefix = order[:size]
        if per_class:
            keep = prefix[_per_class_nms(boxes[prefix], scores[prefix], labels[prefix], iou_threshold)]
        else:
            keep = prefix[nms(boxes[prefix], scores[prefix], iou_threshold)]
        if len(keep) >= limit or size == total:
            return keep[:limit]
        size = min(total, 2 * size)


def _level_candidates(scores: Tensor, per_level: list[int], k: int) -> tuple[Tensor, Tensor]:
    """Per image and level the best ``k`` scores (N, C) and their flat anchor x class indices (N, C)."""
    num_classes = scores.shape[-1]
    values, flat = [], []
    start = 0
    for count in per_level:
        level = scores[:, start: start + count].flatten(1)
        best = level.topk(min(k, level.shape[1]), dim=1)
        values.append(best.values)
        flat.append(best.indices + start * num_classes)
        start += count
    return torch.cat(values, dim=1), torch.cat(flat, dim=1)


def _clip(boxes: Tensor, rows: Tensor, image_sizes: list[tuple[int, int]]) -> Tensor:
    """``torchvision.ops.clip_boxes_to_image`` with each box clipped to the size of its image ``rows[i]``."""
    sizes = torch.tensor(image_sizes, dtype=boxes.dtype, device=boxes.device)[rows]  # (n, 2): height, width
    limits = sizes.flip(1).repeat(1, 2)  # (n, 4): width, height, width, height
    return torch.minimum(boxes.clamp(min=0), limits)


def _per_class_nms(boxes: Tensor, scores: Tensor, labels: Tensor, iou_threshold: float) -> Tensor:
    """torchvision's per-class branch of ``batched_nms``: NMS within each class, kept indices by score."""
    by_class = labels.argsort(stable=True)
    counts = torch.unique(labels, return_counts=True)[1].tolist()
    classes = zip(by_class.split(counts), boxes[by_class].split(counts), scores[by_class].split(counts),
                  strict=True)
    kept = [index[nms(class_boxes, class_scores, iou_threshold)] for index, class_boxes, class_scores in classes]
    keep = torch.cat(kept)
    return keep[scores[keep].sort(descending=True)[1]]
