"""Batched one-stage post-processing (``curation_core.losses.batched_detections``) against torchvision.

References are torchvision's own code on the same inputs: ``FCOS.postprocess_detections`` /
``RetinaNet.postprocess_detections`` on random head outputs, ``torchvision.ops.batched_nms`` on random
boxes, and ``model.eval()(images)`` on randomly initialised detectors. Head outputs and boxes are drawn
so that the score threshold, the per-level top-k, NMS suppression and ``detections_per_img`` all bind,
and so that images take both branches of ``batched_nms`` (class offsets, and NMS per class for more
than 1,000 candidates); a threshold of 1.0 leaves every image without detections.
"""

from __future__ import annotations

import pytest
import torch
from torch import Tensor, nn
from torchvision.models.detection import FCOS, RetinaNet
from torchvision.ops import batched_nms

from curation_core.engine.config import ModelConfig
from curation_core.engine.models import build_detector
from curation_core.losses.batched_detections import one_stage_detections, top_class_wise_nms
from curation_core.losses.per_image import _batch_images, score_forward

SIZE = 128
CATEGORIES = 8
#: (height, width) of the images of a batch padded to SIZE x SIZE: boxes are clipped to each.
IMAGE_SIZES = [(SIZE, SIZE), (100, 120), (SIZE, 90), (64, 64)]


@pytest.fixture(autouse=True)
def _one_thread() -> None:
    torch.set_num_threads(1)


def _model(detector: str, *, score_thresh: float, detections_per_img: int) -> nn.Module:
    torch.manual_seed(0)
    config = ModelConfig(detector=detector, backbone="nano", min_size=SIZE, max_size=SIZE, score_thresh=score_thresh,
                         detections_per_img=detections_per_img)
    return build_detector(config, num_categories=CATEGORIES).eval()


def _sorted(detection: dict[str, Tensor]) -> dict[str, Tensor]:
    """Detections by descending score, then box and label: one order for boxes of equal score."""
    keys = torch.cat([-detection["scores"][:, None], detection["boxes"], detection["labels"][:, None].float()], dim=1)
    order = torch.tensor(sorted(range(len(keys)), key=lambda i: keys[i].tolist()), dtype=torch.int64)
    return {k: v[order] for k, v in detection.items()}


def _assert_same(got: list[dict[str, Tensor]], want: list[dict[str, Tensor]]) -> None:
    assert len(got) == len(want)
    for index, (mine, theirs) in enumerate(zip(got, want, strict=True)):
        assert len(mine["boxes"]) == len(theirs["boxes"]), index
        torch.testing.assert_close(mine["scores"], theirs["scores"], rtol=0, atol=1e-6)  # same score order
        mine, theirs = _sorted(mine), _sorted(theirs)
        torch.testing.assert_close(mine["boxes"], theirs["boxes"], rtol=0, atol=1e-4)
        torch.testing.assert_close(mine["scores"], theirs["scores"], rtol=0, atol=1e-6)
        assert torch.equal(mine["labels"], theirs["labels"]) and mine["labels"].dtype == torch.int64


def _random_head(model: nn.Module, seed: int) -> tuple[dict[str, Tensor], list[Tensor], list[int]]:
    """Head outputs of the model's shapes for a padded SIZE x SIZE batch, drawn from ``seed``, and anchors.

    Boxes of neighbouring locations overlap (FCOS: distances of 0.5-4 strides; RetinaNet: small offsets
    of its anchors), so NMS suppresses; logits spread scores over (0, 1), so that per image more than
    1,000 candidates pass a threshold of 0.05 and fewer pass 0.9.
    """
    images = [torch.rand(3, SIZE, SIZE) for _ in IMAGE_SIZES]
    batch = _batch_images(model.transform, images)
    with torch.no_grad():
        features = list(model.backbone(batch.tensors).values())
        shapes = {k: v.shape for k, v in model.head(features).items()}
        anchors = model.anchor_generator(batch, features)
    locations = [x.size(2) * x.size(3) for x in features]
    per_location = shapes["cls_logits"][1] // sum(locations)
    generator = torch.Generator().manual_seed(seed)
    shift = 0.0 if isinstance(model, FCOS) else -4.0  # RetinaNet: 9 anchors per location, so fewer above 0.9
    outputs = {"cls_logits": 3.0 * torch.randn(shapes["cls_logits"], generator=generator) + shift}
    if isinstance(model, FCOS):
        outputs["bbox_regression"] = 0.5 + 3.5 * torch.rand(shapes["bbox_regression"], generator=generator)
        outputs["bbox_ctrness"] = 2.0 * torch.randn(shapes["bbox_ctrness"], generator=generator)
    else:
        outputs["bbox_regression"] = 0.3 * torch.randn(shapes["bbox_regression"], generator=generator)
    return outputs, anchors, [n * per_location for n in locations]


def _torchvision_postprocess(model: nn.Module, outputs: dict[str, Tensor], anchors: list[Tensor],
                             per_level: list[int]) -> list[dict[str, Tensor]]:
    """torchvision's own ``postprocess_detections`` (head classes 0..K-1, before the models' label shift)."""
    split_outputs = {k: list(v.split(per_level, dim=1)) for k, v in outputs.items()}
    split_anchors = [list(a.split(per_level)) for a in anchors]
    base = FCOS if isinstance(model, FCOS) else RetinaNet
    return base.postprocess_detections(model, split_outputs, split_anchors, IMAGE_SIZES)


@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize(("score_thresh", "detections_per_img", "nms_thresh"),
                         [(0.05, 100, 0.6), (0.6, 100, 0.6), (0.05, 7, 0.6), (0.9, 2000, 0.6), (0.05, 100, 0.2),
                          (0.6, 50, 0.3), (1.0, 100, 0.6)])
@pytest.mark.parametrize("detector", ["fcos", "retinanet"])
def test_batched_postprocess_equals_torchvision_on_random_head_outputs(detector: str, score_thresh: float,
                                                                       detections_per_img: int, nms_thresh: float,
                                                                       seed: int) -> None:
    model = _model(detector, score_thresh=score_thresh, detections_per_img=detections_per_img)
    model.nms_thresh = nms_thresh  # low thresholds suppress most candidates: the NMS prefix must grow
    outputs, anchors, per_level = _random_head(model, seed)
    want = _torchvision_postprocess(model, outputs, anchors, per_level)
    got = one_stage_detections(model, outputs, anchors, per_level, IMAGE_SIZES)
    _assert_same(got, want)
    for detection, (height, width) in zip(got, IMAGE_SIZES, strict=True):  # clipped to each image
        boxes = detection["boxes"]
        assert bool((boxes >= 0).all() and (boxes[:, 0::2] <= width).all() and (boxes[:, 1::2] <= height).all())


def test_random_head_outputs_reach_both_nms_branches_and_every_limit() -> None:
    """The cases above: per image more and fewer than 1,000 candidates; NMS suppresses; the limit binds."""
    counts = {}
    for detector in ("fcos", "retinanet"):
        for score_thresh in (0.05, 0.9):
            model = _model(detector, score_thresh=score_thresh, detections_per_img=100)
            outputs, anchors, per_level = _random_head(model, 0)
            want = _torchvision_postprocess(model, outputs, anchors, per_level)
            model.detections_per_img = 100_000
            unlimited = _torchvision_postprocess(model, outputs, anchors, per_level)
            model.nms_thresh = 1.0
            candidates = _torchvision_postprocess(model, outputs, anchors, per_level)
            counts[detector, score_thresh] = [(len(c["boxes"]), len(u["boxes"]), len(w["boxes"]))
                                              for c, u, w in zip(candidates, unlimited, want, strict=True)]
    for detector in ("fcos", "retinanet"):
        assert all(c > 1000 for c, _, _ in counts[detector, 0.05])
        assert all(c < 1000 for c, _, _ in counts[detector, 0.9])
        assert all(u < c and w == 100 for c, u, w in counts[detector, 0.05])


@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("count", [0, 1, 60, 999, 1001, 3000])
@pytest.mark.parametrize("limit", [1, 10, 100, 5000])
def test_top_class_wise_nms_equals_batched_nms(count: int, limit: int, seed: int) -> None:
    generator = torch.Generator().manual_seed(seed)
    centres = 100.0 * torch.rand(count, 2, generator=generator)  # crowded: many overlaps in a 100 px square
    sizes = 4.0 + 30.0 * torch.rand(count, 2, generator=generator)
    boxes = torch.cat([centres - sizes / 2, centres + sizes / 2], dim=1)
    scores = (torch.randperm(count, generator=generator).float() + 1) / (count + 1)  # distinct: one order
    labels = torch.randint(0, 4, (count,), generator=generator)
    want = batched_nms(boxes, scores, labels, 0.5)[:limit]
    got = top_class_wise_nms(boxes, scores, labels, iou_threshold=0.5, limit=limit)
    assert torch.equal(got, want)


@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("detections_per_img", [100, 5])
@pytest.mark.parametrize("detector", ["fcos", "retinanet"])
def test_score_forward_detections_equal_the_eval_forward(detector: str, detections_per_img: int, seed: int) -> None:
    model = _model(detector, score_thresh=0.05, detections_per_img=detections_per_img)
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():  # random weights whose scores spread over (0, 1) and whose boxes vary
        for parameter in model.head.parameters():
            parameter.copy_(0.1 * torch.randn(parameter.shape, generator=generator))
    images = [torch.rand(3, SIZE, SIZE, generator=generator) for _ in range(5)]
    with torch.no_grad():
        want = model(images)
    got = score_forward(model, images, None, losses=False, detections=True).detections
    assert got is not None and all(len(w["boxes"]) == detections_per_img for w in want)
    _assert_same(got, want)
