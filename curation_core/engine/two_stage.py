"""Faster R-CNN's training-sample seams: ignore regions, Libra R-CNN sampling and PISA in the RoI heads.

``build_detector`` replaces torchvision's ``RegionProposalNetwork`` and ``RoIHeads`` of a Faster R-CNN
by the thin subclasses here (same submodules, same state dict; inference is torchvision's):

- ``IgnoreRegionRPN``: anchors are matched to the regular boxes only (``target["ignore"]`` False);
  a background anchor inside an ignored box (``samplers.ignore.covered_by_regions``) is discarded,
  neither foreground nor background. The RPN keeps torchvision's random fg/bg sampler.
- ``SampledRoIHeads``: the same ignore rule for proposals (ignored boxes are not appended as
  proposals either), then the configured sampler (``RoISampling.sampler``): ``random`` is
  torchvision's ``BalancedPositiveNegativeSampler`` (global RNG, so a model without ignored boxes
  trains exactly as torchvision's), ``libra`` draws the same numbers of positives and negatives
  (``min(available, 25 % of the budget)`` positives, negatives up to the budget) with
  ``samplers.libra`` (IoU-balanced negatives, instance-balanced positives or random ones), from a
  ``torch.Generator`` seeded from the global RNG (checkpointed by the trainer, so resuming is exact).
  With ``pisa`` the training branch of ``forward`` computes ``roi_losses`` instead of torchvision's
  ``fastrcnn_loss`` (which takes no weights): ISR-P and ISR-N on the classification loss and CARL
  as an extra ``loss_carl`` term (``pisa_parts`` selects a subset, for ablations).

Incomplete images (``target["incomplete"]``, whose boxes are not all of their objects) have no
training rule here: the RPN and RoI samplers would draw their background from unlabelled objects.
``IgnoreRegionRPN`` refuses such targets (``ValueError``) rather than train them as complete.

``roi_losses`` is also what ``losses.per_image_rcnn`` evaluates on each image's slice, so per-image
losses follow the same configuration: ignore regions and the sampler apply as in training; ISR
keeps the classification total of the samples it is computed over, so on one image it leaves that
image's classification loss unchanged (the per-image loss is not the image's share of a batch's
reweighted loss); CARL adds the image's own term.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor
from torchvision.models.detection.roi_heads import RoIHeads
from torchvision.models.detection.rpn import RegionProposalNetwork
from torchvision.ops import box_iou

from curation_core.losses.pisa import ISR_N_BETA, ISR_N_GAMMA, ISR_P_BETA, ISR_P_GAMMA, carl_loss, isr_weights
from curation_core.losses.weights import image_flag
from curation_core.samplers.ignore import covered_by_regions, split_ignored
from curation_core.samplers.libra import BinRange, sample_instance_balanced, sample_iou_balanced
from curation_core.samplers.pisa import iou_hlr, score_hlr

#: torchvision's smooth-L1 beta for the RoI box loss (``fastrcnn_loss``).
ROI_SMOOTH_L1_BETA = 1.0 / 9.0
#: Label of a discarded sample, as torchvision's matcher code writes it (neither fg nor bg).
DISCARDED = -1


@dataclass(frozen=True)
class RoISampling:
    """How the RoI heads choose and weight their training samples (from ``ModelConfig``)."""

    sampler: Literal["random", "libra"] = "random"
    num_bins: int = 3
    floor_thr: float | None = None
    floor_fraction: float = 0.0
    bin_range: BinRange = "negatives"
    balanced_positives: bool = True
    pisa: bool = False
    pisa_parts: frozenset[str] = frozenset({"isr_p", "isr_n", "carl"})


@dataclass(frozen=True)
class RoISamples:
    """The sampled proposals of a batch, per image.

    ``proposals`` (n_i, 4) xyxy; ``labels`` (n_i,) int64, 0 background, 1..K foreground; ``matched_idxs``
    (n_i,) index into the image's *regular* boxes (0 for background); ``regression_targets`` (n_i, 4)
    encoded; ``gt_boxes`` (n_i, 4) the matched regular box (zeros for background).
    """

    proposals: list[Tensor]
    labels: list[Tensor]
    matched_idxs: list[Tensor]
    regression_targets: list[Tensor]
    gt_boxes: list[Tensor]


class IgnoreRegionRPN(RegionProposalNetwork):
    """torchvision's RPN with ignore regions in its anchor labels (see the module docstring)."""

    @classmethod
    def from_torchvision(cls, rpn: RegionProposalNetwork) -> IgnoreRegionRPN:
        """The same RPN (same head and anchor generator modules, same settings) as this class."""
        new = cls(rpn.anchor_generator, rpn.head, rpn.proposal_matcher.high_threshold,
                  rpn.proposal_matcher.low_threshold, rpn.fg_bg_sampler.batch_size_per_image,
                  rpn.fg_bg_sampler.positive_fraction, dict(rpn._pre_nms_top_n), dict(rpn._post_nms_top_n),
                  rpn.nms_thresh, score_thresh=rpn.score_thresh)
        new.min_size = rpn.min_size
        return new

    def assign_targets_to_anchors(self, anchors: list[Tensor],
                                  targets: list[dict[str, Tensor]]) -> tuple[list[Tensor], list[Tensor]]:
        """torchvision's labels (1 fg, 0 bg, -1 discarded) and matched boxes, with ignored boxes as regions."""
        regular, regions = [], []
        for i, target in enumerate(targets):
            if image_flag(target, "incomplete"):
                raise ValueError(f"IgnoreRegionRPN(targets=) expects complete images (faster_rcnn has no loss for "
                                 f"partly labelled ones; use fcos or retinanet); got incomplete=True at image {i}.")
            boxes, labels, ignored = split_ignored(target)
            regular.append({"boxes": boxes, "labels": labels})
            regions.append(ignored)
        labels, matched = super().assign_targets_to_anchors(anchors, regular)
        for anchors_i, labels_i, regions_i in zip(anchors, labels, regions, strict=True):
            if len(regions_i):
                labels_i[(labels_i == 0) & covered_by_regions(anchors_i, regions_i)] = DISCARDED
        return labels, matched


class SampledRoIHeads(RoIHeads):
    """torchvision's box RoI heads with ignore regions, a choice of sampler and PISA (module docstring)."""

    def __init__(self, *args, sampling: RoISampling = RoISampling(), **kwargs) -> None:  # noqa: ANN002, ANN003
        super().__init__(*args, **kwargs)
        self.sampling = sampling

    @classmethod
    def from_torchvision(cls, heads: RoIHeads, sampling: RoISampling) -> SampledRoIHeads:
        """The same box heads (same modules and settings) as this class; masks/keypoints are not supported."""
        if heads.has_mask() or heads.has_keypoint():
            raise ValueError("SampledRoIHeads.from_torchvision(heads=) expects box-only RoI heads; "
                             "got heads with a mask or keypoint branch.")
        return cls(heads.box_roi_pool, heads.box_head, heads.box_predictor, heads.proposal_matcher.high_threshold,
                   heads.proposal_matcher.low_threshold, heads.fg_bg_sampler.batch_size_per_image,
                   heads.fg_bg_sampler.positive_fraction, heads.box_coder.weights, heads.score_thresh,
                   heads.nms_thresh, heads.detections_per_img, sampling=sampling)

    def select_training_samples(self, proposals, targets):  # noqa: ANN001, ANN201 - torchvision's signature
        """torchvision's 4-tuple (proposals, matched_idxs, labels, regression_targets) of ``sample``."""
        samples = self.sample(proposals, targets)
        return samples.proposals, samples.matched_idxs, samples.labels, samples.regression_targets

    def sample(self, proposals: list[Tensor], targets: list[dict[str, Tensor]] | None) -> RoISamples:
        """Match proposals (+ regular gt boxes) to regular boxes, discard those in ignore regions, sample."""
        self.check_targets(targets)
        assert targets is not None  # check_targets raised otherwise
        dtype, device = proposals[0].dtype, proposals[0].device
        split = [split_ignored(t) for t in targets]
        gt_boxes = [boxes.to(dtype) for boxes, _, _ in split]
        proposals = self.add_gt_proposals(proposals, gt_boxes)
        matched_idxs, labels, max_ious = [], [], []
        for proposals_i, (boxes, classes, regions) in zip(proposals, split, strict=True):
            matched, label, best = self._match(proposals_i, boxes.to(dtype), classes)
            if len(regions):
                label[(label == 0) & covered_by_regions(proposals_i, regions.to(dtype))] = DISCARDED
            matched_idxs.append(matched)
            labels.append(label)
            max_ious.append(best)
        keep = self._subsample(labels, matched_idxs, max_ious)
        out = RoISamples([], [], [], [], [])
        for i, keep_i in enumerate(keep):
            boxes = gt_boxes[i] if len(gt_boxes[i]) else torch.zeros((1, 4), dtype=dtype, device=device)
            matched = matched_idxs[i][keep_i]
            out.proposals.append(proposals[i][keep_i])
            out.labels.append(labels[i][keep_i])
            out.matched_idxs.append(matched)
            out.gt_boxes.append(boxes[matched])
        out.regression_targets.extend(self.box_coder.encode(out.gt_boxes, out.proposals))
        return out

    def _match(self, proposals: Tensor, boxes: Tensor, classes: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """torchvision's ``assign_targets_to_proposals`` for one image, plus each proposal's max IoU."""
        if len(boxes) == 0:
            zeros = torch.zeros(len(proposals), dtype=torch.int64, device=proposals.device)
            return zeros, zeros.clone(), torch.zeros(len(proposals), dtype=proposals.dtype, device=proposals.device)
        quality = box_iou(boxes, proposals)
        matched = self.proposal_matcher(quality)
        labels = classes[matched.clamp(min=0)].to(torch.int64)
        labels[matched == self.proposal_matcher.BELOW_LOW_THRESHOLD] = 0
        labels[matched == self.proposal_matcher.BETWEEN_THRESHOLDS] = DISCARDED
        return matched.clamp(min=0), labels, quality.max(dim=0).values

    def _subsample(self, labels: list[Tensor], matched_idxs: list[Tensor], max_ious: list[Tensor]) -> list[Tensor]:
        """Indices of the sampled proposals of each image (positives first for ``libra``)."""
        if self.sampling.sampler == "random":
            return self.subsample(labels)
        budget = self.fg_bg_sampler.batch_size_per_image
        generator = torch.Generator().manual_seed(int(torch.randint(0, 2**62, (1,))))
        keep = []
        for labels_i, matched_i, ious_i in zip(labels, matched_idxs, max_ious, strict=True):
            positive, negative = torch.where(labels_i >= 1)[0], torch.where(labels_i == 0)[0]
            num_pos = min(len(positive), int(budget * self.fg_bg_sampler.positive_fraction))
            num_neg = min(len(negative), budget - num_pos)
            if self.sampling.balanced_positives:
                pos = sample_instance_balanced(matched_i[positive].cpu(), num_pos, generator=generator)
            else:
                pos = torch.randperm(len(positive), generator=generator)[:num_pos]
            neg = sample_iou_balanced(ious_i[negative].cpu(), num_neg, generator=generator,
                                      num_bins=self.sampling.num_bins, floor_thr=self.sampling.floor_thr,
                                      floor_fraction=self.sampling.floor_fraction, bin_range=self.sampling.bin_range,
                                      max_iou=float(ious_i.max()) if len(ious_i) else 0.0)
            keep.append(torch.cat([positive[pos.to(positive.device)], negative[neg.to(negative.device)]]))
        return keep

    def forward(self, features, proposals, image_shapes, targets=None):  # noqa: ANN001, ANN201 - torchvision's
        """torchvision's forward, except the training branch with ``pisa`` (``roi_losses``)."""
        if not (self.training and self.sampling.pisa):
            return super().forward(features, proposals, image_shapes, targets)
        for target in targets or []:
            if not target["boxes"].is_floating_point() or target["labels"].dtype != torch.int64:
                raise TypeError("SampledRoIHeads.forward(targets=) expects float boxes and int64 labels; "
                                f"got {target['boxes'].dtype} and {target['labels'].dtype}.")
        samples = self.sample(proposals, targets)
        pooled = self.box_head(self.box_roi_pool(features, samples.proposals, image_shapes))
        class_logits, box_regression = self.box_predictor(pooled)
        return [], roi_losses(self, class_logits, box_regression, samples)


def roi_losses(heads: SampledRoIHeads, class_logits: Tensor, box_regression: Tensor,
               samples: RoISamples) -> dict[str, Tensor]:
    """The RoI heads' training loss terms over ``samples``, with PISA when ``heads.sampling.pisa``.

    Without PISA these equal torchvision's ``fastrcnn_loss``: cross-entropy averaged over the n sampled
    proposals, smooth L1 (beta 1/9) of the positives' class-specific deltas summed and divided by n.
    With PISA: each cross-entropy term is weighted by ISR (positives: IoU-HLR of their regressed box
    with their object, gamma 2; negatives: Score-HLR of their regressed box and largest foreground
    probability, NMS-grouped within each image, gamma 0.5), each rescaled so that the positives' and
    the negatives' totals are unchanged; ``loss_carl`` is CARL on the positives' smooth-L1 losses / n.

    Shapes: class_logits (n, K + 1), box_regression (n, 4 (K + 1)), n = sum of the samples' lengths.
    """
    labels = torch.cat(samples.labels)
    targets = torch.cat(samples.regression_targets)
    n = max(1, labels.numel())
    cross_entropy = F.cross_entropy(class_logits, labels, reduction="none")
    positive = torch.where(labels > 0)[0]
    deltas = box_regression.reshape(len(labels), -1, 4)[positive, labels[positive]]
    smooth_l1 = F.smooth_l1_loss(deltas, targets[positive], beta=ROI_SMOOTH_L1_BETA, reduction="none").sum(dim=1)
    if not heads.sampling.pisa:
        return {"loss_classifier": cross_entropy.sum() / n, "loss_box_reg": smooth_l1.sum() / n}
    parts = heads.sampling.pisa_parts
    weights = _isr(heads, class_logits.detach(), box_regression.detach(), labels, cross_entropy.detach(), samples,
                   positives="isr_p" in parts, negatives="isr_n" in parts)
    terms = {"loss_classifier": (weights * cross_entropy).sum() / n, "loss_box_reg": smooth_l1.sum() / n}
    if "carl" in parts:
        probability = class_logits.softmax(dim=-1)[positive, labels[positive]]
        terms["loss_carl"] = carl_loss(probability, smooth_l1, normalizer=float(n))
    return terms


def _isr(heads: SampledRoIHeads, class_logits: Tensor, box_regression: Tensor, labels: Tensor,
         cross_entropy: Tensor, samples: RoISamples, *, positives: bool, negatives: bool) -> Tensor:
    """(n,) ISR weights: IoU-HLR ranks for positives, Score-HLR ranks for negatives (detached inputs);
    1 for the samples of a part that is off."""
    weights = torch.ones_like(cross_entropy, dtype=torch.float32)
    if len(labels) == 0 or not (positives or negatives):
        return weights
    counts = [len(p) for p in samples.proposals]
    predicted = heads.box_coder.decode(box_regression, samples.proposals).reshape(len(labels), -1, 4)
    images = torch.repeat_interleave(torch.arange(len(counts), device=labels.device),
                                     torch.tensor(counts, device=labels.device))
    positive = torch.where(labels > 0)[0] if positives else labels[:0]
    negative = torch.where(labels == 0)[0] if negatives else labels[:0]
    if len(positive):
        boxes = predicted[positive, labels[positive]]
        ious = _paired_iou(boxes, torch.cat(samples.gt_boxes)[positive])
        matched = torch.cat(samples.matched_idxs)[positive]
        objects = images[positive] * (int(matched.max()) + 1) + matched  # object ids unique over the batch
        u = iou_hlr(ious, objects, labels[positive])
        weights[positive] = isr_weights(u, cross_entropy[positive], gamma=ISR_P_GAMMA, beta=ISR_P_BETA)
    if len(negative):
        foreground = class_logits[negative].softmax(dim=-1)[:, 1:]
        scores, best = foreground.max(dim=1)
        boxes = predicted[negative, best + 1]
        u = score_hlr(boxes, scores, images=images[negative])
        weights[negative] = isr_weights(u, cross_entropy[negative], gamma=ISR_N_GAMMA, beta=ISR_N_BETA)
    return weights


def _paired_iou(a: Tensor, b: Tensor) -> Tensor:
    """IoU of a[i] with b[i]: (n,) for two (n, 4) xyxy tensors (0 where the union is empty)."""
    top_left = torch.maximum(a[:, :2], b[:, :2])
    bottom_right = torch.minimum(a[:, 2:], b[:, 2:])
    inter = (bottom_right - top_left).clamp(min=0).prod(dim=1)
    area_a = (a[:, 2:] - a[:, :2]).clamp(min=0).prod(dim=1)
    area_b = (b[:, 2:] - b[:, :2]).clamp(min=0).prod(dim=1)
    union = area_a + area_b - inter
    return torch.where(union > 0, inter / union.clamp(min=torch.finfo(a.dtype).tiny), torch.zeros_like(union))
