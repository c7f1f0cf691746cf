"""Training losses of the one-stage detectors: ignore regions, dampened unverified boxes, incomplete
images, BRL, PISA.

torchvision's RetinaNet and FCOS train every annotated box as a positive. The subclasses here replace
their loss at the seams that see targets and assignments together (``build_detector`` installs them,
with the label-shift mixin first in the MRO, so labels arrive here as 0..K-1):

- ``LossRetinaNet.compute_loss`` (targets, anchors and the IoU matrix in one place);
- ``LossFCOSHead.compute_loss`` (targets and torchvision's FCOS assignment, ``matched_idxs``).

What they add, selected by ``OneStageLoss`` (from ``model.loss``, ``model.brl``,
``model.unverified_weight`` and ``model.pisa``):

- ignore regions, always: anchors (locations) assigned to a box with ``target["ignore"]`` take no loss
  (not foreground, not negative); RetinaNet marks them ``BETWEEN_THRESHOLDS`` (-2);
- dampening: anchors assigned to a box with ``target["unverified"]`` weigh ``unverified_weight`` in the
  classification, regression (and FCOS centerness) sums; the normalisers (foreground counts) are not
  weighted, so a dampened box contributes that fraction of its loss;
- incomplete images, always: on an image with ``target["incomplete"]`` (its boxes are not all of its
  objects) the negatives, anchors (locations) assigned to no box, BRL's confusion anchors included, take no
  classification loss: an unlabelled object is not trained as background. Positives, regression,
  centerness and the normalisers are unchanged (``curation_core.losses.weights``);
- ``loss: brl`` (RetinaNet): anchors split by IoU into positives, ignored, negatives and confusion
  anchors, the last trained with the recalibrated loss (``curation_core.losses.brl``);
- ``pisa`` (RetinaNet): ISR-P reweights the positives' classification losses by their IoU-HLR
  (rescaled so that the classification loss total is unchanged) and CARL adds the classification-aware
  regression term ``bbox_carl`` (``curation_core.losses.pisa``, ``curation_core.samplers.pisa``).

With no flags in the targets, ``loss: focal`` and no PISA the losses are torchvision's (up to float
summation order). RetinaNet normalises per image as torchvision does (each image by its foreground
count, then the mean over images), and ``LossRetinaNet.image_loss_terms`` returns those per-image terms,
so per-image losses of a batch average to the batch loss exactly, PISA included (its ranks and
normalisations are over the batch). FCOS divides by the batch's foreground count, as torchvision.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor
from torchvision.models.detection import RetinaNet
from torchvision.models.detection._utils import BoxCoder
from torchvision.models.detection.fcos import FCOSHead
from torchvision.ops import (
    box_iou,
    complete_box_iou_loss,
    distance_box_iou_loss,
    generalized_box_iou_loss,
    sigmoid_focal_loss,
)

from curation_core.engine.config import UNVERIFIED_WEIGHT, ModelConfig
from curation_core.losses.brl import (
    CONFUSION,
    IGNORED,
    NEGATIVE,
    BRLParams,
    assign_anchors,
    background_recalibration_loss,
)
from curation_core.losses.pisa import ISR_P_BETA, ISR_P_GAMMA, carl_weights, isr_weights
from curation_core.losses.weights import (
    anchor_weights,
    box_flags,
    box_weights,
    ignore_assigned,
    image_negative_weight,
)
from curation_core.samplers.pisa import iou_hlr

#: torchvision's box-loss epsilon for the IoU losses, and its smooth-L1 beta when none is configured.
BOX_LOSS_EPS = 1e-7
SMOOTH_L1_BETA = 1.0
_IOU_LOSSES = {"giou": generalized_box_iou_loss, "diou": distance_box_iou_loss, "ciou": complete_box_iou_loss}


@dataclass(frozen=True)
class OneStageLoss:
    """How a one-stage detector computes its training loss (see the module docstring).

    Attributes
    ----------
    loss : "focal" or "brl"
        Classification loss (brl: RetinaNet only).
    brl : BRLParams
        Thresholds and weight of BRL (used when ``loss == "brl"``).
    unverified_weight : float in [0, 1]
        Weight of anchors assigned to unverified boxes.
    pisa : bool
        ISR-P and CARL (RetinaNet only).
    """

    loss: str = "focal"
    brl: BRLParams = field(default_factory=BRLParams)
    unverified_weight: float = UNVERIFIED_WEIGHT
    pisa: bool = False

    def __post_init__(self) -> None:
        if self.loss not in ("focal", "brl"):
            raise ValueError(f"OneStageLoss(loss=) expects one of focal, brl; got {self.loss!r}.")
        if not 0.0 <= self.unverified_weight <= 1.0:
            raise ValueError(f"OneStageLoss(unverified_weight=) expects a value in [0, 1]; got {self.unverified_weight}.")

    @classmethod
    def from_config(cls, config: ModelConfig) -> OneStageLoss:
        """The loss settings of a validated ``model`` section (a one-stage detector)."""
        brl = BRLParams(**config.brl.model_dump())
        return cls(loss=config.loss or "focal", brl=brl, unverified_weight=config.unverified_weight,
                   pisa=config.pisa)


def box_losses(loss_type: str, box_coder: BoxCoder, anchors: Tensor, gt_boxes: Tensor, deltas: Tensor) -> Tensor:
    """Unreduced box-regression loss of each positive anchor, shape (n,): torchvision's ``_box_loss``
    (RetinaNet) without its sum. ``anchors``, ``gt_boxes`` (n, 4) xyxy pixels; ``deltas`` (n, 4)."""
    if loss_type in ("l1", "smooth_l1"):
        target = box_coder.encode_single(gt_boxes, anchors)
        if loss_type == "l1":
            return F.l1_loss(deltas, target, reduction="none").sum(dim=1)
        return F.smooth_l1_loss(deltas, target, reduction="none", beta=SMOOTH_L1_BETA).sum(dim=1)
    if loss_type not in _IOU_LOSSES:
        raise ValueError(f"box_losses(loss_type=) expects one of l1, smooth_l1, {', '.join(_IOU_LOSSES)}; "
                         f"got {loss_type!r}.")
    return _IOU_LOSSES[loss_type](box_coder.decode_single(deltas, anchors), gt_boxes, reduction="none",
                                  eps=BOX_LOSS_EPS)


@dataclass
class _ImageLoss:
    """Unreduced loss pieces of one image (RetinaNet)."""

    cls_rows: Tensor  # (A,) weighted classification loss per anchor (0 on ignored anchors)
    positives: Tensor  # (P,) int64 anchor indices of the positives
    assigned: Tensor  # (P,) int64 index of each positive's box in the target
    reg: Tensor  # (P,) weighted regression loss per positive
    normalizer: int  # max(1, P)

    def reduced(self, rows: Tensor | None = None) -> Tensor:
        """The image's classification term: ``rows`` (default ``cls_rows``) summed / normaliser."""
        return (self.cls_rows if rows is None else rows).sum() / self.normalizer


class LossRetinaNet(RetinaNet):
    """torchvision's RetinaNet with the loss of ``OneStageLoss`` (keyword ``loss_options``)."""

    def __init__(self, *args: Any, loss_options: OneStageLoss | None = None, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.loss_options = loss_options or OneStageLoss()

    def compute_loss(self, targets: list[dict[str, Tensor]], head_outputs: dict[str, Tensor],  # type: ignore[override]
                     anchors: list[Tensor]) -> dict[str, Tensor]:
        """The batch loss terms: the mean over images of ``image_loss_terms`` (torchvision's reduction)."""
        return {name: terms.mean() for name, terms in self.image_loss_terms(targets, head_outputs, anchors).items()}

    def image_loss_terms(self, targets: list[dict[str, Tensor]], head_outputs: dict[str, Tensor],
                         anchors: list[Tensor]) -> dict[str, Tensor]:
        """Each image's loss terms, ``{"classification", "bbox_regression"[, "bbox_carl"]}`` -> (N,).

        ``targets`` have labels 0..K-1 (``boxes`` (n, 4) xyxy pixels, optional ``ignore`` /
        ``unverified`` bool (n,) and ``incomplete`` bool ()); ``head_outputs`` ``cls_logits`` (N, A, K)
        and ``bbox_regression`` (N, A, 4); ``anchors`` N tensors (A, 4) xyxy. Each term of image i is its sum over anchors divided
        by max(1, positives of image i); their mean over images is the batch loss.
        """
        pieces = [self._image_loss(target, logits, deltas, anchors_i) for target, logits, deltas, anchors_i in
                  zip(targets, head_outputs["cls_logits"], head_outputs["bbox_regression"], anchors, strict=True)]
        if self.loss_options.pisa:
            classification = self._isr_p(pieces, targets, head_outputs, anchors)
        else:
            classification = torch.stack([piece.reduced() for piece in pieces])
        terms = {"classification": classification,
                 "bbox_regression": torch.stack([piece.reg.sum() / piece.normalizer for piece in pieces])}
        if self.loss_options.pisa:
            terms["bbox_carl"] = self._carl(pieces, targets, head_outputs)
        return terms

    def assign(self, target: dict[str, Tensor], anchors: Tensor) -> Tensor:
        """Anchor assignment of one image, (A,) int64: box index >= 0, or ``NEGATIVE`` (-1), ``IGNORED``
        (-2, between the thresholds or assigned to an ignored box) or ``CONFUSION`` (-3, BRL only)."""
        options, boxes = self.loss_options, target["boxes"]
        if boxes.shape[0] == 0:  # an image without boxes: all background (BRL: all confusion anchors)
            code = CONFUSION if options.loss == "brl" and options.brl.confusion_iou > 0 else NEGATIVE
            return torch.full((anchors.shape[0],), code, dtype=torch.int64, device=anchors.device)
        iou = box_iou(boxes, anchors)
        if options.loss == "brl":
            matched = assign_anchors(iou, pos_iou=options.brl.pos_iou, neg_iou=options.brl.neg_iou,
                                     confusion_iou=options.brl.confusion_iou)
        else:
            matched = self.proposal_matcher(iou)
        return ignore_assigned(matched, box_flags(target, "ignore"), code=IGNORED)

    def _image_loss(self, target: dict[str, Tensor], logits: Tensor, deltas: Tensor, anchors: Tensor) -> _ImageLoss:
        options = self.loss_options
        matched = self.assign(target, anchors)
        weights = anchor_weights(matched, box_weights(target, unverified_weight=options.unverified_weight),
                                 negative_weight=image_negative_weight(target))
        positives = torch.where(matched >= 0)[0]
        assigned = matched[positives]
        onehot = torch.zeros_like(logits)
        onehot[positives, target["labels"][assigned]] = 1.0
        if options.loss == "brl":
            elements = background_recalibration_loss(logits, onehot, matched == CONFUSION, t=options.brl.t,
                                                     weight=options.brl.weight)
        else:
            elements = sigmoid_focal_loss(logits, onehot)
        rows = elements.sum(dim=1)
        cls_rows = torch.where(matched != IGNORED, rows, torch.zeros_like(rows)) * weights.to(rows)
        regression = self.head.regression_head
        reg = box_losses(regression._loss_type, regression.box_coder, anchors[positives], target["boxes"][assigned],
                         deltas[positives])
        return _ImageLoss(cls_rows, positives, assigned, reg * weights[positives].to(reg),
                          max(1, int(positives.numel())))

    def _isr_p(self, pieces: list[_ImageLoss], targets: list[dict[str, Tensor]], head_outputs: dict[str, Tensor],
               anchors: list[Tensor]) -> Tensor:
        """Per-image classification terms with PISA's ISR-P weights on the positives.

        The positives of the whole batch are ranked by IoU-HLR (IoU of the regressed box with its
        object); ``isr_weights`` rescales the weights so that the batch's classification loss, the mean
        over images of each image's sum / normaliser, is unchanged.
        """
        count = sum(int(piece.positives.numel()) for piece in pieces)
        if count <= 1:  # no positive, or one: its rank is 1 and ISR keeps its loss, so its weight is 1
            return torch.stack([piece.reduced() for piece in pieces])
        coder = self.head.regression_head.box_coder
        ious, objects, labels, shares, offset = [], [], [], [], 0
        for i, (piece, target) in enumerate(zip(pieces, targets, strict=True)):
            with torch.no_grad():
                predicted = coder.decode_single(head_outputs["bbox_regression"][i][piece.positives],
                                                anchors[i][piece.positives])
                ious.append(_aligned_iou(predicted, target["boxes"][piece.assigned]))
            objects.append(piece.assigned + offset)  # object ids unique over the batch
            labels.append(target["labels"][piece.assigned])
            # Each positive's share of the batch loss: its loss / (image normaliser x images).
            shares.append(piece.cls_rows[piece.positives] / (piece.normalizer * len(pieces)))
            offset += int(target["boxes"].shape[0])
        ranks = iou_hlr(torch.cat(ious), torch.cat(objects), torch.cat(labels))
        weights = isr_weights(ranks, torch.cat(shares), gamma=ISR_P_GAMMA, beta=ISR_P_BETA)
        out, start = [], 0
        for piece in pieces:
            n = int(piece.positives.numel())
            scale = torch.ones_like(piece.cls_rows)
            scale[piece.positives] = weights[start: start + n].to(scale)
            out.append(piece.reduced(piece.cls_rows * scale))
            start += n
        return torch.stack(out)

    def _carl(self, pieces: list[_ImageLoss], targets: list[dict[str, Tensor]],
              head_outputs: dict[str, Tensor]) -> Tensor:
        """Per-image CARL terms: sum over the image's positives of c_j x regression loss_j / normaliser,
        ``c = carl_weights(p)`` of mean 1 over the batch's positives with a finite regression loss
        (``p`` the sigmoid score of the positive's class, with its gradient)."""
        probabilities = []
        for i, (piece, target) in enumerate(zip(pieces, targets, strict=True)):
            classes = target["labels"][piece.assigned]
            logits = head_outputs["cls_logits"][i][piece.positives]
            probabilities.append(torch.sigmoid(logits.gather(1, classes[:, None]).squeeze(1)))
        regression = torch.cat([piece.reg for piece in pieces]).float()
        finite = torch.isfinite(regression)
        weights = carl_weights(torch.cat(probabilities), valid=finite)
        contributions = weights * torch.where(finite, regression, torch.zeros_like(regression))
        out, start = [], 0
        for piece in pieces:
            n = int(piece.positives.numel())
            out.append(contributions[start: start + n].sum() / piece.normalizer)
            start += n
        return torch.stack(out)


def _aligned_iou(boxes: Tensor, others: Tensor) -> Tensor:
    """IoU of ``boxes[i]`` with ``others[i]``, (n,); both (n, 4) xyxy."""
    lt = torch.maximum(boxes[:, :2], others[:, :2])
    rb = torch.minimum(boxes[:, 2:], others[:, 2:])
    inter = (rb - lt).clamp(min=0).prod(dim=1)
    area = (boxes[:, 2:] - boxes[:, :2]).clamp(min=0).prod(dim=1)
    area_other = (others[:, 2:] - others[:, :2]).clamp(min=0).prod(dim=1)
    return inter / (area + area_other - inter).clamp(min=torch.finfo(inter.dtype).eps)


class LossFCOSHead(FCOSHead):
    """torchvision's FCOS head with ignore regions and dampened unverified boxes (``loss_options``).

    ``compute_loss`` receives torchvision's assignment (``FCOS.compute_loss``: a location inside a box,
    near its centre and in its level's scale range, takes the smallest such box). Locations assigned
    to an ignored box take no loss; those assigned to an unverified box weigh ``unverified_weight``;
    on an image flagged ``incomplete`` the background locations take no classification loss.
    Terms are sums over the batch divided by max(1, foreground locations of the batch), as torchvision.
    """

    def __init__(self, *args: Any, loss_options: OneStageLoss | None = None, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        options = loss_options or OneStageLoss()
        if options.loss != "focal" or options.pisa:
            raise ValueError(f"LossFCOSHead(loss_options=) supports loss 'focal' without PISA; got loss "
                             f"{options.loss!r}, pisa {options.pisa}.")
        self.loss_options = options

    def compute_loss(self, targets: list[dict[str, Tensor]], head_outputs: dict[str, Tensor], anchors: list[Tensor],
                     matched_idxs: list[Tensor]) -> dict[str, Tensor]:
        """FCOS's three loss terms; arguments as torchvision's ``FCOSHead.compute_loss`` (labels 0..K-1)."""
        cls_logits, bbox_regression = head_outputs["cls_logits"], head_outputs["bbox_regression"]
        matched, weights, gt_classes, gt_boxes = [], [], [], []
        for target, matched_i in zip(targets, matched_idxs, strict=True):
            codes = ignore_assigned(matched_i, box_flags(target, "ignore"), code=IGNORED)
            matched.append(codes)
            box_weight = box_weights(target, unverified_weight=self.loss_options.unverified_weight)
            weights.append(anchor_weights(codes, box_weight, negative_weight=image_negative_weight(target)))
            if target["labels"].numel() == 0:  # an image without boxes: every location is background
                gt_classes.append(target["labels"].new_zeros(codes.shape))
                gt_boxes.append(target["boxes"].new_zeros((codes.numel(), 4)))
            else:
                gt_classes.append(target["labels"][codes.clip(min=0)])
                gt_boxes.append(target["boxes"][codes.clip(min=0)])
        codes, weight = torch.stack(matched), torch.stack(weights)
        boxes, classes, anchor_boxes = torch.stack(gt_boxes), torch.stack(gt_classes), torch.stack(anchors)
        foreground = codes >= 0
        normalizer = max(1, int(foreground.sum()))
        onehot = torch.zeros_like(cls_logits)
        onehot[foreground, classes[foreground]] = 1.0
        rows = sigmoid_focal_loss(cls_logits, onehot).sum(dim=-1)
        loss_cls = (torch.where(codes != IGNORED, rows, torch.zeros_like(rows)) * weight.to(rows)).sum()
        fg_weight = weight[foreground]
        pred_boxes = self.box_coder.decode(bbox_regression, anchor_boxes)
        loss_reg = (generalized_box_iou_loss(pred_boxes[foreground], boxes[foreground], reduction="none")
                    * fg_weight.to(pred_boxes)).sum()
        centerness = _centerness_targets(self.box_coder.encode(anchor_boxes, boxes))
        loss_ctr = (F.binary_cross_entropy_with_logits(head_outputs["bbox_ctrness"].squeeze(dim=2)[foreground],
                                                       centerness[foreground], reduction="none") * fg_weight).sum()
        return {"classification": loss_cls / normalizer, "bbox_regression": loss_reg / normalizer,
                "bbox_ctrness": loss_ctr / normalizer}


def _centerness_targets(reg_targets: Tensor) -> Tensor:
    """FCOS centerness sqrt(min(l, r) / max(l, r) x min(t, b) / max(t, b)) of (N, A, 4) ltrb targets."""
    if reg_targets.numel() == 0:
        return reg_targets.new_zeros(reg_targets.shape[:-1])
    left_right, top_bottom = reg_targets[:, :, [0, 2]], reg_targets[:, :, [1, 3]]
    return torch.sqrt((left_right.min(dim=-1)[0] / left_right.max(dim=-1)[0])
                      * (top_bottom.min(dim=-1)[0] / top_bottom.max(dim=-1)[0]))
