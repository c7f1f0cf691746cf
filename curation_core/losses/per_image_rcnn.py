"""Faster R-CNN half of ``per_image.score_forward``: per-image losses and detections from one pass.

torchvision's ``RegionProposalNetwork`` and ``RoIHeads`` choose between their training and inference
branches with ``self.training``. Here the branches are taken apart and each piece is called directly,
whatever the caller's mode:

- losses: proposals with the *training* budget (``rpn._pre_nms_top_n["training"]``,
  ``_post_nms_top_n["training"]``); RPN anchor matching, fg/bg sampling and ``rpn.compute_loss`` on each
  image's slice; ``roi_heads.select_training_samples`` (gt boxes appended, proposals sampled) and
  ``fastrcnn_loss`` on each image's slice. torchvision normalises each term over the batch's sampled
  anchors / proposals; one image at a time makes that the image's own. The samplers draw from the torch
  global RNG, in torchvision's order (RPN for all images, then RoI heads for all images), so with the
  same seed a batch of one gives exactly torchvision's training loss.
- the configuration of ``build_detector``'s Faster R-CNN (``engine.two_stage``): ignored boxes
  (``target["ignore"]``) are regions, in the RPN and the RoI heads, as in training; the RoI sampler
  is the configured one (``random`` or ``libra``, each drawing from the torch global RNG); with
  ``model.pisa`` the RoI terms are ``two_stage.roi_losses`` on the image alone. ISR then keeps the
  image's classification loss (ISR redistributes a total among the samples it ranks, and here those
  are one image's), so PISA changes an image's loss by its CARL term only; an image's share of a
  batch's ISR-weighted loss would depend on the other images of the batch.
- detections: proposals with the *testing* budget, then the box head and
  ``roi_heads.postprocess_detections``, as torchvision's inference branch.

The proposal budget is read by ``RegionProposalNetwork.filter_proposals`` from ``rpn.training``: that
one flag (of the RPN module alone, not its children) is set for the call and restored.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import torch
from torch import Tensor, nn
from torchvision.models.detection import FasterRCNN
from torchvision.models.detection.image_list import ImageList
from torchvision.models.detection.roi_heads import fastrcnn_loss
from torchvision.models.detection.rpn import concat_box_prediction_layers

from curation_core.engine.two_stage import RoISamples, SampledRoIHeads, roi_losses


@dataclass(frozen=True)
class _RpnPass:
    """The RPN head's outputs for the batch: objectness (N * A, 1), deltas (N * A, 4), anchors N x (A, 4)."""

    objectness: Tensor
    deltas: Tensor
    anchors: list[Tensor]
    proposals: Tensor  # (N, A, 4) decoded boxes, xyxy absolute pixels of the padded batch
    per_level: list[int]  # anchors per FPN level


def rcnn_scoring(model: FasterRCNN, batch: ImageList, targets: list[dict[str, Tensor]] | None, *,
                 detections: bool) -> tuple[Tensor | None, list[dict[str, Tensor]] | None]:
    """Per-image losses (when ``targets`` is given), shape (N,), and/or detections from one backbone pass.

    Detections are in the coordinates of ``batch.image_sizes``, labels 1..K (the input images' own
    coordinates when the batch is padded, not resized, as in ``score_forward``).
    """
    features = model.backbone(batch.tensors)
    rpn_pass = _rpn_pass(model, batch, features)
    per_image = None
    if targets is not None:
        rpn_terms = _rpn_losses(model, rpn_pass, targets)  # RPN sampling first, as torchvision does
        proposals = _proposals(model, rpn_pass, batch, training=True)
        per_image = rpn_terms + _roi_losses(model, features, batch, proposals, targets)
    found = None
    if detections:
        found = _detections(model, features, batch, _proposals(model, rpn_pass, batch, training=False))
    return per_image, found


def _rpn_pass(model: FasterRCNN, batch: ImageList, features: dict[str, Tensor]) -> _RpnPass:
    """The first half of ``RegionProposalNetwork.forward``: head, anchors and decoded boxes."""
    rpn = model.rpn
    levels = list(features.values())
    objectness, deltas = rpn.head(levels)
    anchors = rpn.anchor_generator(batch, levels)
    per_level = [int(o[0].numel()) for o in objectness]  # anchors per location x H x W
    objectness, deltas = concat_box_prediction_layers(objectness, deltas)
    proposals = rpn.box_coder.decode(deltas, anchors).view(len(anchors), -1, 4)
    return _RpnPass(objectness, deltas, anchors, proposals, per_level)


def _proposals(model: FasterRCNN, rpn_pass: _RpnPass, batch: ImageList, *, training: bool) -> list[Tensor]:
    """``filter_proposals`` with the training or testing top-n budget; N tensors of shape (n_i, 4)."""
    with _training_flag(model.rpn, training):
        boxes, _ = model.rpn.filter_proposals(rpn_pass.proposals, rpn_pass.objectness, batch.image_sizes,
                                              rpn_pass.per_level)
    return boxes


def _rpn_losses(model: FasterRCNN, rpn_pass: _RpnPass, targets: list[dict[str, Tensor]]) -> Tensor:
    """(N,) objectness BCE (mean over the image's sampled anchors) + smooth-L1 box loss / that count."""
    rpn = model.rpn
    labels, matched_boxes = rpn.assign_targets_to_anchors(rpn_pass.anchors, targets)
    regression_targets = rpn.box_coder.encode(matched_boxes, rpn_pass.anchors)
    starts = torch.tensor([0] + [len(a) for a in rpn_pass.anchors]).cumsum(0).tolist()
    losses = []
    for i in range(len(targets)):
        rows = slice(starts[i], starts[i + 1])  # concat_box_prediction_layers stacks images one after another
        objectness, box = rpn.compute_loss(rpn_pass.objectness[rows], rpn_pass.deltas[rows], [labels[i]],
                                           [regression_targets[i]])
        losses.append(objectness.float() + box.float())
    return torch.stack(losses)


def _roi_losses(model: FasterRCNN, features: dict[str, Tensor], batch: ImageList, proposals: list[Tensor],
                targets: list[dict[str, Tensor]]) -> Tensor:
    """(N,) RoI cross-entropy (mean over the image's sampled proposals) + smooth-L1 box loss / that count.

    With ``SampledRoIHeads`` (every Faster R-CNN of ``build_detector``) sampling is the configured one
    (ignore regions, random or Libra) and the terms are ``two_stage.roi_losses`` on the image's slice:
    with PISA, ISR computed over one image keeps that image's classification total, and CARL adds the
    image's own ``loss_carl``. Otherwise torchvision's ``fastrcnn_loss``.
    """
    roi_heads = model.roi_heads
    if isinstance(roi_heads, SampledRoIHeads):
        samples = roi_heads.sample(proposals, targets)
        sampled = samples.proposals
    else:
        sampled, _, labels, regression_targets = roi_heads.select_training_samples(proposals, targets)
    class_logits, box_regression = _box_predictions(model, features, batch, sampled)
    counts = [len(p) for p in sampled]
    losses = []
    for i, (logits, regression) in enumerate(zip(class_logits.split(counts), box_regression.split(counts),
                                                 strict=True)):
        if isinstance(roi_heads, SampledRoIHeads):
            terms = roi_losses(roi_heads, logits, regression, _one_image(samples, i))
            losses.append(torch.stack([term.float() for term in terms.values()]).sum())
        else:
            classification, box = fastrcnn_loss(logits, regression, [labels[i]], [regression_targets[i]])
            losses.append(classification.float() + box.float())
    return torch.stack(losses)


def _one_image(samples: RoISamples, i: int) -> RoISamples:
    """Image ``i``'s samples as a batch of one."""
    return RoISamples([samples.proposals[i]], [samples.labels[i]], [samples.matched_idxs[i]],
                      [samples.regression_targets[i]], [samples.gt_boxes[i]])


def _detections(model: FasterRCNN, features: dict[str, Tensor], batch: ImageList,
                proposals: list[Tensor]) -> list[dict[str, Tensor]]:
    """The inference branch of ``RoIHeads.forward``: boxes (n, 4), scores (n,), labels (n,) in 1..K."""
    class_logits, box_regression = _box_predictions(model, features, batch, proposals)
    boxes, scores, labels = model.roi_heads.postprocess_detections(class_logits, box_regression, proposals,
                                                                  batch.image_sizes)
    return [{"boxes": b, "scores": s, "labels": lab} for b, s, lab in zip(boxes, scores, labels, strict=True)]


def _box_predictions(model: FasterRCNN, features: dict[str, Tensor], batch: ImageList,
                     proposals: list[Tensor]) -> tuple[Tensor, Tensor]:
    """RoIAlign, box head and predictor: logits (sum n_i, K + 1) and box deltas (sum n_i, 4 (K + 1))."""
    roi_heads = model.roi_heads
    pooled = roi_heads.box_roi_pool(features, proposals, batch.image_sizes)
    return roi_heads.box_predictor(roi_heads.box_head(pooled))


@contextmanager
def _training_flag(module: nn.Module, value: bool) -> Iterator[None]:
    """Set ``module.training`` alone (not its children's) for the block; restore it after."""
    saved = module.training
    module.training = value
    try:
        yield
    finally:
        module.training = saved
