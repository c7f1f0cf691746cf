"""One-stage training losses (``curation_core.engine.one_stage``): torchvision's losses where nothing is
flagged, ignore regions, dampened unverified boxes, BRL in RetinaNet, PISA (ISR-P, CARL), empty images.

The models are ``nano`` detectors at 64 px with 3 categories; the head outputs are random tensors of the
head's shapes (so every branch is exercised), the anchors the model's own. References are torchvision's
``RetinaNet.compute_loss`` / ``FCOSHead.compute_loss`` on the same inputs.
"""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
from torch import Tensor, nn
from torchvision.models.detection import FCOS, RetinaNet
from torchvision.models.detection.fcos import FCOSHead
from torchvision.models.detection.image_list import ImageList
from torchvision.ops import box_iou

from curation_core.engine.config import ModelConfig
from curation_core.engine.models import build_detector, head_targets
from curation_core.engine.one_stage import LossFCOSHead, OneStageLoss, box_losses
from curation_core.losses.brl import BRLParams, recalibrated_negative_loss
from curation_core.losses.pisa import carl_weights

SIZE, K = 64, 3
Targets = list[dict[str, Tensor]]


@pytest.fixture(autouse=True)
def _one_thread() -> None:
    torch.set_num_threads(1)


def _model(detector: str, **fields: object) -> nn.Module:
    torch.manual_seed(0)
    config = ModelConfig(detector=detector, backbone="nano", min_size=SIZE, max_size=SIZE, **fields)
    return build_detector(config, num_categories=K)


def _anchors(model: nn.Module, n: int) -> tuple[list[Tensor], list[int]]:
    """The model's anchors for n images of SIZE px, and the anchors per level."""
    with torch.no_grad():
        batch = ImageList(torch.zeros(n, 3, SIZE, SIZE), [(SIZE, SIZE)] * n)
        features = list(model.backbone(batch.tensors).values())
        anchors = model.anchor_generator(batch, features)
    per_location = len(anchors[0]) // sum(f.shape[2] * f.shape[3] for f in features)
    return anchors, [f.shape[2] * f.shape[3] * per_location for f in features]


def _outputs(model: nn.Module, n: int, count: int, seed: int, *, grad: bool = False) -> dict[str, Tensor]:
    generator = torch.Generator().manual_seed(seed)
    outputs = {"cls_logits": torch.randn(n, count, K, generator=generator) * 3,
               "bbox_regression": torch.randn(n, count, 4, generator=generator) * 0.3}
    if isinstance(model, FCOS):  # FCOS regresses non-negative distances and a centerness logit
        outputs["bbox_regression"] = torch.rand(n, count, 4, generator=generator) * 2
        outputs["bbox_ctrness"] = torch.randn(n, count, 1, generator=generator)
    return {k: v.requires_grad_(grad) for k, v in outputs.items()}


def _random_targets(n: int, seed: int, *, max_boxes: int = 4) -> Targets:
    generator = torch.Generator().manual_seed(seed)
    targets = []
    for i in range(n):
        count = 0 if i == 1 else int(torch.randint(1, max_boxes + 1, (), generator=generator))  # image 1 is empty
        xy = torch.rand(count, 2, generator=generator) * SIZE * 0.6
        wh = 6 + torch.rand(count, 2, generator=generator) * SIZE * 0.5
        boxes = torch.cat([xy, (xy + wh).clamp(max=SIZE)], dim=1)
        targets.append({"boxes": boxes, "labels": torch.randint(1, K + 1, (count,), generator=generator),
                        "ignore": torch.zeros(count, dtype=torch.bool),
                        "unverified": torch.zeros(count, dtype=torch.bool)})
    return targets


def _flag(targets: Targets, key: str, image: int, box: int) -> Targets:
    out = [dict(t) for t in targets]
    flags = out[image][key].clone()
    flags[box] = True
    out[image][key] = flags
    return out


def _loss(model: nn.Module, targets: Targets, outputs: dict[str, Tensor], anchors: list[Tensor],
          per_level: list[int]) -> dict[str, Tensor]:
    if isinstance(model, FCOS):
        return model.compute_loss(targets, outputs, anchors, per_level)
    return model.compute_loss(targets, outputs, anchors)


def _torchvision_loss(model: nn.Module, targets: Targets, outputs: dict[str, Tensor], anchors: list[Tensor],
                      per_level: list[int]) -> dict[str, Tensor]:
    """torchvision's own loss code (its head's compute_loss, its matching) on the same inputs."""
    shifted = head_targets(targets)
    if isinstance(model, FCOS):
        head = model.head
        head.compute_loss = lambda *args: FCOSHead.compute_loss(head, *args)  # the instance attribute wins
        try:
            return FCOS.compute_loss(model, shifted, outputs, anchors, per_level)
        finally:
            del head.compute_loss
    return RetinaNet.compute_loss(model, shifted, outputs, anchors)


def _close(got: dict[str, Tensor], want: dict[str, Tensor], rtol: float = 1e-5) -> None:
    assert set(got) == set(want)
    for key in want:
        assert float(got[key]) == pytest.approx(float(want[key]), rel=rtol, abs=1e-7), key


# ----------------------------------------------------------------------------------------------
# torchvision's losses where nothing is flagged


@pytest.mark.parametrize("seed", range(3))
@pytest.mark.parametrize(("detector", "loss_type"), [("retinanet", "giou"), ("retinanet", "l1"),
                                                      ("retinanet", "smooth_l1"), ("fcos", None)])
def test_equals_torchvision_without_flags(detector: str, loss_type: str | None, seed: int) -> None:
    model = _model(detector)
    if loss_type is not None:
        model.head.regression_head._loss_type = loss_type
    anchors, per_level = _anchors(model, 3)
    outputs = _outputs(model, 3, len(anchors[0]), seed)
    targets = _random_targets(3, seed)
    _close(_loss(model, targets, outputs, anchors, per_level), _torchvision_loss(model, targets, outputs, anchors, per_level))


@pytest.mark.parametrize("seed", range(3))
def test_brl_with_t_zero_and_weight_one_is_torchvision_focal_loss(seed: int) -> None:
    model = _model("retinanet", loss="brl", brl={"t": 0.0, "weight": 1.0})
    anchors, per_level = _anchors(model, 3)
    outputs, targets = _outputs(model, 3, len(anchors[0]), seed), _random_targets(3, seed)
    _close(_loss(model, targets, outputs, anchors, per_level), _torchvision_loss(model, targets, outputs, anchors, per_level))
    recalibrating = _model("retinanet", loss="brl")  # t 0.5, weight 0.1: a different loss
    got = _loss(recalibrating, targets, outputs, anchors, per_level)
    assert float(got["classification"]) < 0.5 * float(_torchvision_loss(model, targets, outputs, anchors,
                                                                         per_level)["classification"])


def test_brl_on_an_empty_image_is_the_weighted_recalibrated_loss_of_all_anchors() -> None:
    model = _model("retinanet", loss="brl", brl={"t": 0.4, "weight": 0.2})
    anchors, per_level = _anchors(model, 1)
    outputs = _outputs(model, 1, len(anchors[0]), 0)
    empty = [{"boxes": torch.zeros(0, 4), "labels": torch.zeros(0, dtype=torch.int64)}]
    got = _loss(model, empty, outputs, anchors, per_level)
    expected = 0.2 * recalibrated_negative_loss(outputs["cls_logits"][0], t=0.4).sum()  # / max(1, 0 positives)
    assert float(got["classification"]) == pytest.approx(float(expected), rel=1e-6)
    assert float(got["bbox_regression"]) == 0.0


# ----------------------------------------------------------------------------------------------
# Ignore regions


def test_retinanet_anchors_of_an_ignored_box_are_between_thresholds() -> None:
    model = _model("retinanet")
    anchors, per_level = _anchors(model, 3)
    outputs, targets = _outputs(model, 3, len(anchors[0]), 4), _random_targets(3, 4)
    ignored = _flag(targets, "ignore", 0, 0)
    # Reference: torchvision's head with the ignored box's anchors set to BETWEEN_THRESHOLDS (-2).
    shifted = head_targets(ignored)
    matched = [model.proposal_matcher(box_iou(t["boxes"], a)) if len(t["boxes"]) else torch.full((len(a),), -1)
               for t, a in zip(shifted, anchors, strict=True)]
    hit = matched[0] == 0
    assert int(hit.sum()) > 0
    matched[0] = matched[0].masked_fill(hit, -2)
    want = model.head.compute_loss(shifted, outputs, anchors, matched)  # torchvision's RetinaNetHead
    _close(_loss(model, ignored, outputs, anchors, per_level), want)
    plain = _loss(model, targets, outputs, anchors, per_level)
    assert float(plain["classification"]) != pytest.approx(float(want["classification"]), rel=1e-4)
    # The ignored anchors' outputs take no loss at all.
    changed = {k: v.clone() for k, v in outputs.items()}
    changed["cls_logits"][0, hit] += 5.0
    changed["bbox_regression"][0, hit] -= 1.0
    _close(_loss(model, ignored, changed, anchors, per_level), want)


def test_fcos_locations_of_an_ignored_box_take_no_loss() -> None:
    model = _model("fcos")
    anchors, per_level = _anchors(model, 1)
    outputs = _outputs(model, 1, len(anchors[0]), 5)
    targets = [{"boxes": torch.tensor([[4.0, 4.0, 40.0, 44.0], [30.0, 20.0, 60.0, 62.0]]),
                "labels": torch.tensor([1, 3]), "ignore": torch.tensor([False, True])}]
    shifted = head_targets(targets)
    matched = _fcos_matching(model, shifted, outputs, anchors, per_level)[0]
    keep = matched != 1  # the ignored box is index 1
    assert int((~keep).sum()) > 0 and int((matched == 0).sum()) > 0
    # Reference: torchvision's FCOS head on the other locations only, with torchvision's assignment.
    want = FCOSHead.compute_loss(model.head, shifted, {k: v[:, keep] for k, v in outputs.items()},
                                 [anchors[0][keep]], [matched[keep]])
    _close(_loss(model, targets, outputs, anchors, per_level), want)
    changed = {k: v.clone() for k, v in outputs.items()}
    changed["cls_logits"][0, ~keep] += 5.0
    changed["bbox_ctrness"][0, ~keep] -= 2.0
    _close(_loss(model, targets, changed, anchors, per_level), want)


def _fcos_matching(model: nn.Module, targets: Targets, outputs: dict[str, Tensor], anchors: list[Tensor],
                   per_level: list[int]) -> list[Tensor]:
    """torchvision's FCOS assignment (``matched_idxs``), captured from its ``FCOS.compute_loss``."""
    captured: list[list[Tensor]] = []
    head = model.head
    head.compute_loss = lambda t, o, a, matched: captured.append(matched) or {}
    try:
        FCOS.compute_loss(model, targets, outputs, anchors, per_level)
    finally:
        del head.compute_loss
    return captured[0]


# ----------------------------------------------------------------------------------------------
# Dampened unverified boxes


@pytest.mark.parametrize("detector", ["retinanet", "fcos"])
def test_unverified_boxes_scale_their_anchors_loss_by_the_weight(detector: str) -> None:
    anchors, per_level = _anchors(_model(detector), 3)
    targets = _random_targets(3, 6)
    unverified = [{**t, "unverified": torch.ones(len(t["boxes"]), dtype=torch.bool)} for t in targets]
    losses = {}
    for weight in (0.0, 0.3, 1.0):
        model = _model(detector, unverified_weight=weight)
        outputs = _outputs(model, 3, len(anchors[0]), 6)
        losses[weight] = {k: float(v) for k, v in _loss(model, unverified, outputs, anchors, per_level).items()}
    plain = _torchvision_loss(model, targets, outputs, anchors, per_level)
    _close({k: torch.tensor(v) for k, v in losses[1.0].items()}, plain)
    for key in losses[1.0]:
        if key == "classification":  # negatives keep weight 1: linear in the weight, from the negatives' part
            expected = losses[0.0][key] + 0.3 * (losses[1.0][key] - losses[0.0][key])
            assert 0 < losses[0.0][key] < losses[0.3][key] < losses[1.0][key]
        else:  # regression and centerness come from positives only: exactly the weight
            expected = 0.3 * losses[1.0][key]
            assert losses[0.0][key] == 0.0
        assert losses[0.3][key] == pytest.approx(expected, rel=1e-5), key


def test_one_unverified_box_dampens_only_its_own_anchors() -> None:
    model = _model("retinanet", unverified_weight=0.5)
    anchors, per_level = _anchors(model, 1)
    outputs = _outputs(model, 1, len(anchors[0]), 7)
    boxes = torch.tensor([[2.0, 2.0, 30.0, 30.0], [34.0, 30.0, 62.0, 60.0]])
    both = [{"boxes": boxes, "labels": torch.tensor([1, 2]), "unverified": torch.tensor([False, True])}]
    matched = model.proposal_matcher(box_iou(boxes, anchors[0]))
    assert set(matched.tolist()) >= {0, 1}
    # Regression is a sum over positives / positives: box 1's share is halved.
    reg = model.head.regression_head
    per_anchor = box_losses(reg._loss_type, reg.box_coder, anchors[0][matched >= 0], boxes[matched[matched >= 0]],
                            outputs["bbox_regression"][0][matched >= 0])
    weights = torch.where(matched[matched >= 0] == 1, 0.5, 1.0)
    expected = (per_anchor * weights).sum() / int((matched >= 0).sum())
    got = _loss(model, both, outputs, anchors, per_level)
    assert float(got["bbox_regression"]) == pytest.approx(float(expected), rel=1e-6)


def test_ignore_wins_over_unverified() -> None:
    model = _model("retinanet", unverified_weight=0.5)
    anchors, per_level = _anchors(model, 2)
    outputs, targets = _outputs(model, 2, len(anchors[0]), 8), _random_targets(2, 8)
    ignored = _flag(targets, "ignore", 0, 0)
    _close(_loss(model, _flag(ignored, "unverified", 0, 0), outputs, anchors, per_level),
           _loss(model, ignored, outputs, anchors, per_level), rtol=0)


# ----------------------------------------------------------------------------------------------
# Empty images and images with one object


@pytest.mark.parametrize("options", [{}, {"loss": "brl"}, {"pisa": True}, {"loss": "brl", "pisa": True}],
                         ids=["focal", "brl", "pisa", "brl_pisa"])
def test_empty_images_and_single_objects_give_finite_losses_and_gradients(options: dict[str, object]) -> None:
    model = _model("retinanet", **options)
    anchors, per_level = _anchors(model, 2)
    one = {"boxes": torch.tensor([[8.0, 10.0, 40.0, 44.0]]), "labels": torch.tensor([2])}
    empty = {"boxes": torch.zeros(0, 4), "labels": torch.zeros(0, dtype=torch.int64)}
    for targets in ([empty, empty], [one, empty], [one, one]):
        outputs = _outputs(model, 2, len(anchors[0]), 9, grad=True)
        losses = _loss(model, targets, outputs, anchors, per_level)
        total = sum(losses.values())
        total.backward()
        assert math.isfinite(float(total.detach())) and float(total.detach()) > 0
        assert all(bool(torch.isfinite(v.grad).all()) for v in outputs.values() if v.grad is not None)
        if targets[0] is empty:
            assert all(float(losses[k]) == 0.0 for k in losses if k != "classification")


def test_fcos_empty_image_and_one_object_equal_torchvision() -> None:
    model = _model("fcos")
    anchors, per_level = _anchors(model, 2)
    outputs = _outputs(model, 2, len(anchors[0]), 10)
    one = {"boxes": torch.tensor([[8.0, 10.0, 40.0, 44.0]]), "labels": torch.tensor([2])}
    empty = {"boxes": torch.zeros(0, 4), "labels": torch.zeros(0, dtype=torch.int64)}
    for targets in ([empty, empty], [one, empty]):
        _close(_loss(model, targets, outputs, anchors, per_level),
               _torchvision_loss(model, targets, outputs, anchors, per_level))


# ----------------------------------------------------------------------------------------------
# PISA in RetinaNet: ISR-P keeps the classification loss, CARL


@pytest.mark.parametrize("seed", range(3))
def test_isr_p_keeps_the_total_classification_loss(seed: int) -> None:
    plain, pisa = _model("retinanet", unverified_weight=0.5), _model("retinanet", pisa=True, unverified_weight=0.5)
    anchors, per_level = _anchors(plain, 4)
    outputs = _outputs(plain, 4, len(anchors[0]), seed)
    targets = _flag(_random_targets(4, seed), "unverified", 0, 0)
    base = plain.image_loss_terms(head_targets(targets), outputs, anchors)
    weighted = pisa.image_loss_terms(head_targets(targets), outputs, anchors)
    assert float(weighted["classification"].mean()) == pytest.approx(float(base["classification"].mean()), rel=1e-5)
    assert not torch.allclose(weighted["classification"], base["classification"], rtol=1e-3)  # moved between images
    torch.testing.assert_close(weighted["bbox_regression"], base["bbox_regression"])
    assert set(pisa.compute_loss(targets, outputs, anchors)) == {"classification", "bbox_regression", "bbox_carl"}


def test_carl_with_equal_scores_is_the_regression_loss_and_its_gradient_reaches_the_classifier() -> None:
    model = _model("retinanet", pisa=True)
    anchors, per_level = _anchors(model, 3)
    outputs = _outputs(model, 3, len(anchors[0]), 11)
    targets = _random_targets(3, 11)
    equal = {**outputs, "cls_logits": torch.full_like(outputs["cls_logits"], 0.3)}
    losses = _loss(model, targets, equal, anchors, per_level)  # all p equal: every CARL weight is 1
    assert float(losses["bbox_carl"]) == pytest.approx(float(losses["bbox_regression"]), rel=1e-6)
    outputs = _outputs(model, 3, len(anchors[0]), 11, grad=True)
    _loss(model, targets, outputs, anchors, per_level)["bbox_carl"].backward()
    grad = outputs["cls_logits"].grad
    assert grad is not None and float(grad.abs().sum()) > 0
    # Hand reference: weights (0.2 + 0.8 p) normalised to mean 1 over the batch's positives.
    terms = model.image_loss_terms(head_targets(targets), outputs, anchors)
    shifted = head_targets(targets)
    probabilities, regression, images = [], [], []
    for i, (target, a) in enumerate(zip(shifted, anchors, strict=True)):
        if not len(target["boxes"]):
            continue
        matched = model.proposal_matcher(box_iou(target["boxes"], a))
        positive = torch.where(matched >= 0)[0]
        logits = outputs["cls_logits"][i][positive, target["labels"][matched[positive]]]
        probabilities.append(torch.sigmoid(logits))
        reg = model.head.regression_head
        regression.append(box_losses(reg._loss_type, reg.box_coder, a[positive], target["boxes"][matched[positive]],
                                     outputs["bbox_regression"][i][positive]) / len(positive))
        images.append(torch.full((len(positive),), i))
    p = torch.cat(probabilities).detach()
    weights = (0.2 + 0.8 * p) / (0.2 + 0.8 * p).mean()
    expected = torch.zeros(3).index_add_(0, torch.cat(images), weights * torch.cat(regression).detach())
    torch.testing.assert_close(terms["bbox_carl"].detach(), expected, rtol=1e-5, atol=1e-7)
    torch.testing.assert_close(carl_weights(p), weights, rtol=1e-6, atol=0)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_pisa_on_a_large_batch_with_an_iou_loss_stays_finite(dtype: torch.dtype) -> None:
    model = _model("retinanet", pisa=True)
    model.head.regression_head._loss_type = "giou"
    n = 48
    anchors, per_level = _anchors(model, n)
    outputs = {k: (v * 4).to(dtype).requires_grad_(True) for k, v in _outputs(model, n, len(anchors[0]), 12).items()}
    targets = _random_targets(n, 12, max_boxes=12)
    losses = _loss(model, targets, outputs, anchors, per_level)
    total = sum(v.float() for v in losses.values())
    total.backward()
    assert all(math.isfinite(float(v)) for v in losses.values()), losses
    assert all(bool(torch.isfinite(v.grad.float()).all()) for v in outputs.values())


def test_options_are_validated() -> None:
    with pytest.raises(ValueError, match=r"OneStageLoss\(loss=\) expects one of focal, brl; got 'ce'\."):
        OneStageLoss(loss="ce")
    with pytest.raises(ValueError, match=r"OneStageLoss\(unverified_weight=\) expects a value in \[0, 1\]; got 2"):
        OneStageLoss(unverified_weight=2.0)
    with pytest.raises(ValueError, match=r"LossFCOSHead\(loss_options=\) supports loss 'focal' without PISA"):
        LossFCOSHead(32, 1, 3, loss_options=OneStageLoss(loss="brl", brl=BRLParams()))
    options = OneStageLoss.from_config(ModelConfig(detector="retinanet", backbone="nano", loss="brl",
                                                   brl={"t": 0.3}, unverified_weight=0.2))
    assert options == OneStageLoss(loss="brl", brl=BRLParams(t=0.3), unverified_weight=0.2, pisa=False)


# ----------------------------------------------------------------------------------------------
# The data layer carries the flags; a short training run through the real trainer


def test_build_target_carries_unverified_flags_like_ignore() -> None:
    from curation_core.engine.data import build_target

    annotations = [{"id": 1, "category_id": 5, "bbox": [1.0, 2.0, 10.0, 10.0], "unverified": 1},
                   {"id": 2, "category_id": 5, "bbox": [20.0, 20.0, 10.0, 10.0], "ignore": 1},
                   {"id": 3, "category_id": 5, "bbox": [30.0, 30.0, 10.0, 10.0], "iscrowd": 1, "unverified": 1},
                   {"id": 4, "category_id": 5, "bbox": [70.0, 70.0, 10.0, 10.0], "unverified": 1}]  # outside: dropped
    target = build_target(annotations, {5: 1}, image_id=1, width=64, height=64)
    assert target["ann_ids"].tolist() == [1, 2]
    assert target["unverified"].tolist() == [True, False] and target["ignore"].tolist() == [False, True]
    assert target["unverified"].dtype == torch.bool
    empty = build_target([], {5: 1}, image_id=2, width=64, height=64)
    assert empty["unverified"].shape == (0,) and empty["unverified"].dtype == torch.bool


def test_coco_validation_rejects_a_bad_unverified_value() -> None:
    from curation_core.coco import CocoValidationError, dataset_from_dict

    raw = {"images": [{"id": 1, "file_name": "a.png", "width": 64, "height": 64}],
           "categories": [{"id": 5, "name": "square"}],
           "annotations": [{"id": 1, "image_id": 1, "category_id": 5, "bbox": [1, 2, 10, 10], "unverified": 2}]}
    with pytest.raises(CocoValidationError, match=r"'unverified' must be 0 or 1; got 2"):
        dataset_from_dict(raw, source="f.json")
    raw["annotations"][0]["unverified"] = 1
    assert dataset_from_dict(raw, source="f.json").annotations[0]["unverified"] == 1


@pytest.mark.slow
def test_retinanet_trains_with_brl_pisa_and_flagged_boxes(tmp_path: Path) -> None:
    import json

    from engine_fixtures import tiny_config_dict, with_sections

    from curation_core.engine.config import config_from_dict, load_config
    from curation_core.engine.hooks import Hook
    from curation_core.engine.trainer import train

    raw = with_sections(tiny_config_dict(tmp_path, detector="retinanet", max_iter=3, val=False),
                        model={"loss": "brl", "brl": {"t": 0.5, "weight": 0.1}, "pisa": True, "unverified_weight": 0.5})
    path = Path(raw["data"]["train_annotations"])
    coco = json.loads(path.read_text())
    coco["annotations"][1]["ignore"] = 1
    coco["annotations"][2]["unverified"] = 1
    path.write_text(json.dumps(coco))
    seen: list[dict[str, float]] = []

    class Record(Hook):
        def after_step(self) -> None:
            seen.append(dict(self.trainer.last_metrics))

    result = train(config_from_dict(raw), hooks=[Record()])
    assert result.iterations == 3 and len(seen) == 3
    assert all(math.isfinite(m[k]) for m in seen for k in ("classification", "bbox_regression", "bbox_carl", "loss"))
    saved = load_config(result.config_path).model
    assert saved.loss == "brl" and saved.brl.t == 0.5 and saved.pisa and saved.unverified_weight == 0.5
