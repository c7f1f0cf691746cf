"""The detector factory: FCOS, RetinaNet and Faster R-CNN from torchvision, randomly initialised.

``build_detector(config, num_categories=K)`` returns a torchvision detector whose targets and outputs
use labels ``1..K`` (the position of the category id in the data set's category list, plus one).
Faster R-CNN has ``K + 1`` classes, 0 being background. RetinaNet and FCOS have ``K`` class outputs
(sigmoid scores need no background output): their subclasses here shift labels by one on the way in
(loss) and out (detections), so all three share one label convention and no output is wasted.

Resolution: ``config.min_size``/``max_size`` are used as given. In training mode the model does not
resize its input (``TrainResizeTransform``): the data pipeline has already scaled each image to the
model size times its scale jitter (``data.TrainTransform``), so the jitter is not undone. In eval mode
images of any size are resized to the model size and the boxes are mapped back, as in torchvision.

Feature levels (``model.fpn_levels``): by default as torchvision, RetinaNet and FCOS on P3-P7 (strides
8-128), Faster R-CNN on P2-P6 (strides 4-64). ``p2p6`` for a one-stage detector suits small images
with small objects (at stride 8 a 7 px object may contain no feature location, and FCOS's regression
ranges, 4 to 8 strides per level, put every object of a 128 px image on P3-P4), at about 2.5x the
head compute on CPU.

Anchors (RetinaNet, Faster R-CNN): torchvision's sizes 32-512 over the five levels on ResNets, a quarter
of them (8-128) on the small CPU backbones, so that 128 px images with 7-100 px objects are covered;
``model.anchor_sizes`` overrides them. FCOS's anchors are its strides.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from functools import partial
from typing import Any

from torch import Tensor, nn
from torchvision.models.detection import FCOS, FasterRCNN
from torchvision.models.detection.anchor_utils import AnchorGenerator
from torchvision.models.detection.faster_rcnn import FastRCNNPredictor, TwoMLPHead
from torchvision.models.detection.retinanet import RetinaNetHead
from torchvision.models.detection.transform import GeneralizedRCNNTransform
from torchvision.ops import MultiScaleRoIAlign
from torchvision.ops.poolers import initLevelMapper

from curation_core.engine.backbones import Levels, build_backbone, is_small
from curation_core.engine.config import ModelConfig
from curation_core.engine.one_stage import LossFCOSHead, LossRetinaNet, OneStageLoss
from curation_core.engine.two_stage import IgnoreRegionRPN, RoISampling, SampledRoIHeads

#: Per-channel mean and standard deviation the input is normalised with (RGB in [0, 1]).
IMAGE_MEAN = (0.485, 0.456, 0.406)
IMAGE_STD = (0.229, 0.224, 0.225)
#: Anchor scales within an octave and aspect ratios (h / w) of RetinaNet, as in its paper.
RETINANET_OCTAVE_SCALES = (1.0, 2 ** (1 / 3), 2 ** (2 / 3))
ASPECT_RATIOS = (0.5, 1.0, 2.0)
#: torchvision's base anchor sizes per FPN level, and their reduction on the small backbones.
RESNET_ANCHOR_SIZES = (32.0, 64.0, 128.0, 256.0, 512.0)
SMALL_ANCHOR_DIVISOR = 4.0
#: Strides of the FPN levels; FCOS uses them as its "anchor" sizes (one point per location), which
#: also sets its regression ranges: level l takes objects whose largest side distance is in
#: [4 s_l, 8 s_l] (the first level from 0, the last to infinity).
LEVEL_STRIDES = {"p3p7": (8, 16, 32, 64, 128), "p2p6": (4, 8, 16, 32, 64)}
#: Faster R-CNN proposal budgets (per FPN level before NMS, per image after) by backbone family:
#: torchvision's values for ResNets, smaller ones for 128 px images (a few thousand anchors in all).
RPN_BUDGET_RESNET = {"rpn_pre_nms_top_n_train": 2000, "rpn_post_nms_top_n_train": 2000,
                     "rpn_pre_nms_top_n_test": 1000, "rpn_post_nms_top_n_test": 1000,
                     "box_batch_size_per_image": 512}
RPN_BUDGET_SMALL = {"rpn_pre_nms_top_n_train": 1000, "rpn_post_nms_top_n_train": 500,
                    "rpn_pre_nms_top_n_test": 500, "rpn_post_nms_top_n_test": 300,
                    "box_batch_size_per_image": 256}
#: Width of Faster R-CNN's two-layer box head.
BOX_HEAD_WIDTH_RESNET = 1024
BOX_HEAD_WIDTH_SMALL = 256
#: GroupNorm groups in the RetinaNet head (torchvision's v2 head uses 32 with 256 channels).
HEAD_GROUPS = 16
#: Conv layers per tower (classification, regression) of torchvision's one-stage heads. At 128 px on
#: the CPU backbones the towers cost more than the backbone; ``model.head_convs`` can shorten them.
HEAD_CONVS = 4


class SingleValueGroupNorm(nn.GroupNorm):
    """``nn.GroupNorm`` that also accepts a group holding a single value.

    torchvision's FCOS head normalises with ``GroupNorm(32)``; on a 32-channel FPN that is one channel per
    group, and at the coarsest level of a small image (1 x 1 at 128 px) one value per group: torch then
    refuses a batch of one image ("Expected more than 1 value per channel"), although the result is
    defined: ``(x - mean) / sqrt(var + eps)`` is 0, so the output is ``bias``. This layer returns exactly
    that in that case and is ``nn.GroupNorm`` otherwise (same parameters, same state dict).
    """

    def forward(self, input: Tensor) -> Tensor:  # noqa: A002 - nn.Module's name
        per_group = input.shape[0] * (input.shape[1] // self.num_groups) * math.prod(input.shape[2:])
        if per_group == 1:
            out = input * 0.0
            return out + self.bias.view(1, -1, *([1] * (input.dim() - 2))) if self.affine else out
        return super().forward(input)


def _single_value_group_norms(module: nn.Module) -> nn.Module:
    """Replace every ``nn.GroupNorm`` under ``module`` by ``SingleValueGroupNorm`` (weights kept)."""
    for name, child in module.named_children():
        if type(child) is nn.GroupNorm:
            safe = SingleValueGroupNorm(child.num_groups, child.num_channels, eps=child.eps, affine=child.affine)
            safe.load_state_dict(child.state_dict())
            setattr(module, name, safe)
        else:
            _single_value_group_norms(child)
    return module


class TrainResizeTransform(GeneralizedRCNNTransform):
    """torchvision's transform, except that training inputs keep the size the data pipeline gave them."""

    def resize(self, image, target=None):  # noqa: ANN001, ANN201
        if self.training:
            return image, target
        return super().resize(image, target)


def head_targets(targets: list[dict[str, Tensor]]) -> list[dict[str, Tensor]]:
    """Targets with labels ``1..K`` shifted to the one-stage heads' ``0..K-1`` (other keys kept)."""
    return [{**target, "labels": target["labels"] - 1} for target in targets]


class _ForegroundLabels:
    """Mixin for torchvision's one-stage detectors: ``K`` class outputs for labels ``1..K``."""

    def compute_loss(self, targets, *args):  # noqa: ANN001, ANN002, ANN201
        return super().compute_loss(head_targets(targets), *args)

    def postprocess_detections(self, *args):  # noqa: ANN002, ANN201
        detections = super().postprocess_detections(*args)
        for detection in detections:
            detection["labels"] = detection["labels"] + 1
        return detections


class ForegroundFCOS(_ForegroundLabels, FCOS):
    """torchvision's FCOS with labels 1..K (see the module docstring)."""


class ForegroundRetinaNet(_ForegroundLabels, LossRetinaNet):
    """torchvision's RetinaNet with labels 1..K (see the module docstring) and the loss of
    ``curation_core.engine.one_stage`` (ignore regions, BRL, dampened unverified boxes, PISA)."""


def build_detector(config: ModelConfig, *, num_categories: int) -> nn.Module:
    """A randomly initialised detector for ``num_categories`` foreground categories (labels 1..K).

    Raises ``ValueError`` for an unknown detector name (listing the valid ones) or ``num_categories < 1``.
    """
    if num_categories < 1:
        raise ValueError(f"build_detector(num_categories=) expects an integer >= 1; got {num_categories}.")
    builder = DETECTORS.get(config.detector)
    if builder is None:
        raise ValueError(f"build_detector(config.detector=) expects one of {', '.join(DETECTORS)}; "
                         f"got {config.detector!r}.")
    model = builder(config, num_categories)
    model.transform = TrainResizeTransform(config.min_size, config.max_size, list(IMAGE_MEAN), list(IMAGE_STD))
    return model


def anchor_sizes(config: ModelConfig) -> tuple[float, ...]:
    """Base anchor size per FPN level (RetinaNet, Faster R-CNN)."""
    if config.anchor_sizes is not None:
        return tuple(config.anchor_sizes)
    if is_small(config.backbone):
        return tuple(s / SMALL_ANCHOR_DIVISOR for s in RESNET_ANCHOR_SIZES)
    return RESNET_ANCHOR_SIZES


def fpn_levels(config: ModelConfig) -> Levels:
    """``model.fpn_levels``; "auto": P2-P6 for Faster R-CNN, P3-P7 for RetinaNet and FCOS (torchvision's)."""
    if config.fpn_levels != "auto":
        return config.fpn_levels
    return "p2p6" if config.detector == "faster_rcnn" else "p3p7"


def _backbone(config: ModelConfig) -> nn.Module:
    return build_backbone(config.backbone, levels=fpn_levels(config), norm=config.norm,
                          fpn_channels=config.fpn_channels)


def _build_fcos(config: ModelConfig, num_categories: int) -> nn.Module:
    backbone = _backbone(config)
    strides = LEVEL_STRIDES[fpn_levels(config)]
    anchors = AnchorGenerator(tuple((s,) for s in strides), ((1.0,),) * len(strides))
    head = _single_value_group_norms(LossFCOSHead(backbone.out_channels, 1, num_categories,
                                                  num_convs=config.head_convs or HEAD_CONVS,
                                                  loss_options=OneStageLoss.from_config(config)))
    return ForegroundFCOS(backbone, num_categories, anchor_generator=anchors, head=head,
                          score_thresh=config.score_thresh, detections_per_img=config.detections_per_img,
                          **_sizes(config))


def _build_retinanet(config: ModelConfig, num_categories: int) -> nn.Module:
    backbone = _backbone(config)
    sizes = tuple(tuple(s * k for k in RETINANET_OCTAVE_SCALES) for s in anchor_sizes(config))
    anchors = AnchorGenerator(sizes, (ASPECT_RATIOS,) * len(sizes))
    # torchvision's v2 head: GroupNorm in the towers and a GIoU box loss, which train from scratch.
    head = RetinaNetHead(backbone.out_channels, anchors.num_anchors_per_location()[0], num_categories,
                         norm_layer=partial(nn.GroupNorm, HEAD_GROUPS))
    head.regression_head._loss_type = "giou"
    if config.head_convs is not None:  # torchvision builds 4 identical conv layers per tower: keep the first k
        head.classification_head.conv = head.classification_head.conv[: config.head_convs]
        head.regression_head.conv = head.regression_head.conv[: config.head_convs]
    return ForegroundRetinaNet(backbone, num_categories, anchor_generator=anchors, head=head, score_thresh=config.score_thresh,
                               detections_per_img=config.detections_per_img,
                               loss_options=OneStageLoss.from_config(config), **_sizes(config))


def _build_faster_rcnn(config: ModelConfig, num_categories: int) -> nn.Module:
    backbone = _backbone(config)
    sizes = tuple((s,) for s in anchor_sizes(config))
    anchors = AnchorGenerator(sizes, (ASPECT_RATIOS,) * len(sizes))
    small = is_small(config.backbone)
    width = BOX_HEAD_WIDTH_SMALL if small else BOX_HEAD_WIDTH_RESNET
    box_head = TwoMLPHead(backbone.out_channels * 7 * 7, width)  # 7x7 RoIAlign output
    model = FasterRCNN(backbone, num_classes=None, rpn_anchor_generator=anchors, box_head=box_head,
                       box_roi_pool=_roi_pool(fpn_levels(config)), box_predictor=FastRCNNPredictor(width, num_categories + 1),
                       box_score_thresh=config.score_thresh, box_detections_per_img=config.detections_per_img,
                       **(RPN_BUDGET_SMALL if small else RPN_BUDGET_RESNET), **_sizes(config))
    # Ignore regions in the RPN and RoI heads; the RoI sampler and PISA (curation_core.engine.two_stage).
    model.rpn = IgnoreRegionRPN.from_torchvision(model.rpn)
    model.roi_heads = SampledRoIHeads.from_torchvision(model.roi_heads, roi_sampling(config))
    return model


def roi_sampling(config: ModelConfig) -> RoISampling:
    """``model.sampler``, ``model.libra``, ``model.pisa`` and its parts as the RoI heads' sampling options."""
    libra = config.libra
    return RoISampling(sampler=config.sampler, num_bins=libra.bins, floor_thr=libra.floor_thr,
                       floor_fraction=libra.floor_fraction, bin_range=libra.bin_range,
                       balanced_positives=libra.balanced_positives, pisa=config.pisa,
                       pisa_parts=frozenset(config.pisa_parts))


def _roi_pool(levels: Levels) -> MultiScaleRoIAlign:
    """RoIAlign over the FPN levels with fixed scales 1 / stride.

    torchvision otherwise infers the scales from the first batch it sees (feature size / largest
    image size, rounded to a power of two) and keeps them. With small, scale-jittered images padded to
    a multiple of 32 that guess can be an octave off, and it would depend on which batch came first
    (so a resumed run would pool differently from an uninterrupted one).
    """
    strides = LEVEL_STRIDES[levels][: 4 if levels == "p2p6" else 3]  # the max-pool/P6-P7 levels are not pooled
    pool = MultiScaleRoIAlign([str(i) for i in range(len(strides))], output_size=7, sampling_ratio=2)
    pool.scales = [1.0 / s for s in strides]
    pool.map_levels = initLevelMapper(int(math.log2(strides[0])), int(math.log2(strides[-1])),
                                      canonical_scale=pool.canonical_scale, canonical_level=pool.canonical_level)
    return pool


def _sizes(config: ModelConfig) -> dict[str, Any]:
    return {"min_size": config.min_size, "max_size": config.max_size}


#: Detector name -> builder(config, number of foreground categories).
DETECTORS: dict[str, Callable[[ModelConfig, int], nn.Module]] = {
    "fcos": _build_fcos,
    "retinanet": _build_retinanet,
    "faster_rcnn": _build_faster_rcnn,
}
