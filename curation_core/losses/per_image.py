"""Unreduced per-image training losses and detections from one no-grad forward of a detector.

``score_forward(model, images, targets, losses=..., detections=...)`` runs the backbone and head once on
a batch and derives from that pass what was asked:

- per-image losses: the detector's own training loss terms for each image, normalised within that image
  instead of over the batch (see ``score_forward``);
- detections: torchvision's inference post-processing, in the coordinates of the input images (for
  FCOS and RetinaNet its batched equivalent, ``batched_detections.one_stage_detections``; Faster
  R-CNN keeps torchvision's).

The detectors are those of ``curation_core.engine.models.build_detector`` (labels ``1..K`` everywhere).
Images are expected at the model's training size and are not resized. Module modes are left to the
caller: BatchNorm in eval mode uses its running statistics; BatchNorm left in train mode normalises with
the statistics of this batch (so an image's loss then depends on its batch) and updates its running
statistics, which the caller avoids, if it must, with ``momentum = 0.0``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import cast

import torch
from torch import Tensor, nn
from torchvision.models.detection import FCOS, FasterRCNN, RetinaNet
from torchvision.models.detection.image_list import ImageList
from torchvision.models.detection.transform import GeneralizedRCNNTransform

from curation_core.engine.models import ForegroundFCOS, ForegroundRetinaNet, head_targets
from curation_core.engine.one_stage import LossRetinaNet
from curation_core.losses.batched_detections import one_stage_detections
from curation_core.losses.per_image_rcnn import rcnn_scoring


@dataclass(frozen=True)
class ScoringOutput:
    """What ``score_forward`` computed.

    Attributes
    ----------
    losses : Tensor of shape (N,), float32, or None
        Per-image total training loss (sum of the detector's loss terms for that image, >= 0, higher =
        worse fit); None when not requested.
    detections : list of N dicts, or None
        ``{"boxes": (n, 4) float xyxy in absolute pixels of the input image, "scores": (n,) in [0, 1]
        (higher = more confident), "labels": (n,) int64 in 1..K}``; None when not requested.
    """

    losses: Tensor | None
    detections: list[dict[str, Tensor]] | None


def score_forward(model: nn.Module, images: list[Tensor], targets: list[dict[str, Tensor]] | None, *,
                  losses: bool, detections: bool) -> ScoringOutput:
    """One ``torch.no_grad()`` backbone + head pass giving per-image losses and/or detections.

    Parameters
    ----------
    model : ForegroundFCOS, ForegroundRetinaNet or FasterRCNN from ``build_detector``
        Its module modes and buffers are not changed here (only flags this function sets for the length
        of the call, and restores); BatchNorm behaves as the caller set it (see the module docstring).
    images : list of N float tensors of shape (3, H, W) in [0, 1]
        Already at the model's training size: they are normalised and padded, never resized.
    targets : list of N dicts, or None
        ``"boxes"`` (n, 4) float xyxy absolute pixels with x1 > x0, y1 > y0, ``"labels"`` (n,) int64 in
        1..K; the flags the losses read (``ignore``, ``unverified`` per box, ``incomplete`` per image)
        are optional; other keys ("ann_ids", "image_id", "position", ...) are carried and ignored.
        Required when ``losses`` is True. Images without boxes are legal.
    losses, detections : bool
        What to compute; at least one must be True.

    Returns
    -------
    ScoringOutput
        ``losses[i]`` is image i's training loss, computed by the model's own loss code and so with its
        loss configuration (``curation_core.engine.one_stage``: ignore regions, BRL, dampened
        unverified boxes, incomplete images, PISA), with the terms normalised within the image: RetinaNet: classification
        (focal or BRL, summed over non-ignored anchors) + box regression (the head's ``_loss_type``)
        [+ CARL], each / max(1, foreground anchors of image i), from one pass over the batch (PISA's
        ranks and normalisations are the batch's), so their mean over the batch is the model's
        training loss exactly; FCOS: focal classification + GIoU + centerness BCE, each / max(1,
        foreground locations of image i) (the training loss divides by the batch's count), i.e. the
        model's loss on image i alone; Faster R-CNN: RPN objectness + RPN box + RoI classification + RoI box,
        each normalised over image i's sampled anchors / proposals (training proposal budget, gt boxes
        appended). RetinaNet and FCOS are deterministic; Faster R-CNN samples anchors and proposals with
        the torch global RNG (as in training), so seed it with ``torch.manual_seed`` for repeatable
        values.

    Raises
    ------
    ValueError
        For another model type, no output requested, missing or mismatched targets, bad images, boxes
        or labels (naming the image and box).
    """
    num_categories = _num_categories(model)
    _check_request(images, targets, losses=losses, detections=detections)
    _check_images(images)
    if targets is not None:
        _check_targets(targets, num_categories)
    if not images:  # an empty batch: nothing to run
        return ScoringOutput(torch.zeros(0) if losses else None, [] if detections else None)
    transform = cast(GeneralizedRCNNTransform, model.transform)
    with torch.no_grad():
        # Padded, never resized: detections are in input pixels (``transform.postprocess`` would scale by 1).
        batch = _batch_images(transform, images)
        loss_targets = targets if losses else None
        if isinstance(model, FasterRCNN):
            per_image, found = rcnn_scoring(model, batch, loss_targets, detections=detections)
        else:
            per_image, found = _one_stage_scoring(cast(FCOS | RetinaNet, model), batch, loss_targets,
                                                  detections=detections)
    return ScoringOutput(per_image.float() if per_image is not None else None, found)


def per_image_losses(model: nn.Module, images: list[Tensor], targets: list[dict[str, Tensor]]) -> Tensor:
    """Per-image training losses, shape (N,) float32: ``score_forward(..., losses=True).losses``."""
    losses = score_forward(model, images, targets, losses=True, detections=False).losses
    assert losses is not None  # requested above
    return losses


def _num_categories(model: nn.Module) -> int:
    """K, the number of foreground categories; ValueError for a model this module does not handle."""
    if isinstance(model, ForegroundFCOS | ForegroundRetinaNet):
        return int(model.head.classification_head.num_classes)
    if isinstance(model, FasterRCNN):
        return int(model.roi_heads.box_predictor.cls_score.out_features) - 1
    raise ValueError("score_forward(model=) expects an FCOS, RetinaNet or FasterRCNN from build_detector; "
                     f"got {type(model).__name__}.")


def _check_request(images: list[Tensor], targets: list[dict[str, Tensor]] | None, *,
                   losses: bool, detections: bool) -> None:
    if not (losses or detections):
        raise ValueError("score_forward(losses=, detections=) expects at least one to be True; "
                         "got both False.")
    if losses and targets is None:
        raise ValueError("score_forward(targets=) expects a list of target dicts when losses=True; got None.")
    if targets is not None and len(targets) != len(images):
        raise ValueError(f"score_forward(targets=) expects one target per image ({len(images)}); "
                         f"got {len(targets)}.")


def _check_images(images: list[Tensor]) -> None:
    for i, image in enumerate(images):
        if image.dim() != 3 or not image.is_floating_point():
            raise ValueError(f"score_forward(images=) expects float tensors of shape (3, H, W); "
                             f"got {image.dtype} {tuple(image.shape)} at image {i}.")


def _check_targets(targets: list[dict[str, Tensor]], num_categories: int) -> None:
    for i, target in enumerate(targets):
        if "boxes" not in target or "labels" not in target:
            raise ValueError(f"score_forward(targets=) expects dicts with 'boxes' and 'labels'; "
                             f"got keys {sorted(target)} at image {i}.")
        boxes, labels = target["boxes"], target["labels"]
        if boxes.dim() != 2 or boxes.shape[-1] != 4 or not boxes.is_floating_point():
            raise ValueError(f"score_forward(targets=) expects float boxes of shape (n, 4); "
                             f"got {boxes.dtype} {tuple(boxes.shape)} at image {i}.")
        if labels.dtype != torch.int64 or labels.shape != boxes.shape[:1]:
            raise ValueError(f"score_forward(targets=) expects int64 labels of shape ({len(boxes)},); "
                             f"got {labels.dtype} {tuple(labels.shape)} at image {i}.")
        bad = torch.where((labels < 1) | (labels > num_categories))[0]
        if len(bad):
            raise ValueError(f"score_forward(targets=) expects labels in 1..{num_categories}; "
                             f"got {int(labels[bad[0]])} at image {i}, box {int(bad[0])}.")
        degenerate = torch.where((boxes[:, 2:] <= boxes[:, :2]).any(dim=1))[0]
        if len(degenerate):
            raise ValueError(f"score_forward(targets=) expects xyxy boxes with x1 > x0 and y1 > y0; got "
                             f"{boxes[degenerate[0]].tolist()} at image {i}, box {int(degenerate[0])}.")


def _batch_images(transform: GeneralizedRCNNTransform, images: list[Tensor]) -> ImageList:
    """The transform's training-mode path without its resize: normalise, then pad into one batch."""
    normalized = [transform.normalize(image) for image in images]
    sizes = [(int(image.shape[-2]), int(image.shape[-1])) for image in normalized]
    return ImageList(transform.batch_images(normalized, size_divisible=transform.size_divisible), sizes)


def _one_stage_scoring(model: FCOS | RetinaNet, batch: ImageList, targets: list[dict[str, Tensor]] | None, *,
                       detections: bool) -> tuple[Tensor | None, list[dict[str, Tensor]] | None]:
    """FCOS / RetinaNet: one backbone + head pass, then per-image losses and/or detections."""
    features = list(model.backbone(batch.tensors).values())
    head_outputs = model.head(features)
    anchors = model.anchor_generator(batch, features)
    # Anchors per level = locations x anchors per location, as RetinaNet.forward recovers them.
    locations = [x.size(2) * x.size(3) for x in features]
    per_location = head_outputs["cls_logits"].size(1) // sum(locations)
    per_level = [n * per_location for n in locations]
    per_image = None
    if targets is not None and isinstance(model, LossRetinaNet):
        terms = model.image_loss_terms(head_targets(targets), head_outputs, anchors)
        per_image = torch.stack([term.float() for term in terms.values()]).sum(dim=0)
    elif targets is not None:
        per_image = torch.stack([_one_stage_image_loss(model, target, head_outputs, anchors[i], per_level, i)
                                 for i, target in enumerate(targets)])
    found = None
    if detections:
        found = one_stage_detections(model, head_outputs, anchors, per_level, batch.image_sizes)
        for detection in found:  # head classes 0..K-1 -> labels 1..K, as ForegroundFCOS / ForegroundRetinaNet
            detection["labels"] = detection["labels"] + 1
    return per_image, found


def _one_stage_image_loss(model: FCOS | RetinaNet, target: dict[str, Tensor], head_outputs: dict[str, Tensor],
                          anchors: Tensor, per_level: list[int], index: int) -> Tensor:
    """Image ``index``'s loss: the model's own ``compute_loss`` (label shift included) on a one-image slice.

    A batch of one makes the FCOS normalisation per image: it divides by the image's foreground count.
    """
    outputs = {k: v[index: index + 1] for k, v in head_outputs.items()}
    if isinstance(model, FCOS):
        terms = model.compute_loss([target], outputs, [anchors], per_level)
    else:
        terms = model.compute_loss([target], outputs, [anchors])
    return torch.stack([term.float() for term in terms.values()]).sum()
