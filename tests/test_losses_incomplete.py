"""Incomplete images (``"incomplete": 1``): their negatives take no classification loss, their positives,
regression, centerness and normalisers are unchanged; the flag is validated, reaches the target, the
per-image losses, and is refused by Faster R-CNN.

Models are ``nano`` detectors at 64 px with 3 categories; head outputs are random tensors of the head's
shapes and the anchors the model's own (as in test_engine_one_stage.py). References are computed by hand
from torchvision's ``sigmoid_focal_loss`` and torchvision's own head losses on the positives only.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from test_engine_one_stage import _anchors, _outputs  # the same SIZE and K
from torch import Tensor, nn
from torchvision.models.detection import FCOS
from torchvision.models.detection.fcos import FCOSHead
from torchvision.ops import sigmoid_focal_loss

from curation_core.engine.config import ModelConfig
from curation_core.engine.models import build_detector, head_targets
from curation_core.losses.per_image import per_image_losses
from curation_core.losses.weights import anchor_weights, image_flag, image_negative_weight

SIZE, K = 64, 3
Targets = list[dict[str, Tensor]]


@pytest.fixture(autouse=True)
def _one_thread() -> None:
    torch.set_num_threads(1)


def _model(detector: str, **fields: object) -> nn.Module:
    torch.manual_seed(0)
    channels = 64 if detector == "fcos" else None  # FCOS's GroupNorm(32) needs two channels per group alone
    config = ModelConfig(detector=detector, backbone="nano", min_size=SIZE, max_size=SIZE, score_thresh=0.0,
                         fpn_channels=channels, **fields)
    return build_detector(config, num_categories=K)


def _targets(*, incomplete: bool) -> Targets:
    """Image 0: two objects (flagged incomplete when asked); image 1: one object, always complete."""
    return [{"boxes": torch.tensor([[4.0, 6.0, 34.0, 40.0], [30.0, 24.0, 60.0, 62.0]]), "labels": torch.tensor([1, 3]),
             "incomplete": torch.tensor(incomplete)},
            {"boxes": torch.tensor([[10.0, 8.0, 50.0, 58.0]]), "labels": torch.tensor([2]),
             "incomplete": torch.tensor(False)}]


def _loss(model: nn.Module, targets: Targets, outputs: dict[str, Tensor], anchors: list[Tensor],
          per_level: list[int]) -> dict[str, Tensor]:
    if isinstance(model, FCOS):
        return model.compute_loss(targets, outputs, anchors, per_level)
    return model.compute_loss(targets, outputs, anchors)


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


def _matching(model: nn.Module, targets: Targets, outputs: dict[str, Tensor], anchors: list[Tensor],
              per_level: list[int]) -> list[Tensor]:
    shifted = head_targets(targets)
    if isinstance(model, FCOS):
        return _fcos_matching(model, shifted, outputs, anchors, per_level)
    return [model.assign(t, a) for t, a in zip(shifted, anchors, strict=True)]


def _negative_sum(logits: Tensor, matched: Tensor) -> Tensor:
    """Focal loss of the anchors assigned to no box (all classes background), summed."""
    negatives = logits[matched == -1]
    return sigmoid_focal_loss(negatives, torch.zeros_like(negatives)).sum()


# ----------------------------------------------------------------------------------------------
# The weights seam


def test_anchor_weights_give_the_unassigned_anchors_the_negative_weight() -> None:
    matched = torch.tensor([1, -1, 0, -2, -3, 1])
    weights = torch.tensor([0.5, 1.0])
    assert anchor_weights(matched, weights).tolist() == [1.0, 1.0, 0.5, 1.0, 1.0, 1.0]
    assert anchor_weights(matched, weights, negative_weight=0.0).tolist() == [1.0, 0.0, 0.5, 0.0, 0.0, 1.0]
    assert image_negative_weight({"incomplete": torch.tensor(True)}) == 0.0
    assert image_negative_weight({"incomplete": torch.tensor(False)}) == image_negative_weight({}) == 1.0
    with pytest.raises(ValueError, match=r"anchor_weights\(negative_weight=\) expects a value in \[0, 1\]; got 2"):
        anchor_weights(matched, weights, negative_weight=2.0)
    with pytest.raises(ValueError, match=r"image_flag\(target=\) expects target\['incomplete'\] to hold one value"):
        image_flag({"incomplete": torch.tensor([True, False])}, "incomplete")


# ----------------------------------------------------------------------------------------------
# The one-stage losses


@pytest.mark.parametrize("seed", range(2))
def test_fcos_incomplete_image_negatives_take_no_loss_and_positives_are_unchanged(seed: int) -> None:
    model = _model("fcos")
    anchors, per_level = _anchors(model, 2)
    outputs = _outputs(model, 2, len(anchors[0]), seed, grad=True)
    complete, incomplete = _targets(incomplete=False), _targets(incomplete=True)
    matched = _matching(model, complete, outputs, anchors, per_level)
    assert int((matched[0] >= 0).sum()) > 0 and int((matched[0] == -1).sum()) > 0
    got = _loss(model, incomplete, outputs, anchors, per_level)
    with torch.no_grad():
        want = _loss(model, complete, outputs, anchors, per_level)
        negatives = float(_negative_sum(outputs["cls_logits"][0], matched[0]))
    # FCOS divides by the batch's foreground count, unchanged: only image 0's negatives leave the sum.
    normalizer = int(sum(int((m >= 0).sum()) for m in matched))
    expected = float(want["classification"]) - negatives / normalizer
    assert float(got["classification"].detach()) == pytest.approx(expected, rel=1e-5)
    assert float(got["classification"].detach()) < float(want["classification"])
    for key in ("bbox_regression", "bbox_ctrness"):
        assert float(got[key].detach()) == float(want[key]), key
    # One image alone: its loss is torchvision's FCOS head on its positive locations only.
    positive = matched[0] >= 0
    with torch.no_grad():
        alone = FCOSHead.compute_loss(model.head, head_targets(incomplete[:1]),
                                      {k: v[:1, positive] for k, v in outputs.items()}, [anchors[0][positive]],
                                      [matched[0][positive]])
        one = _loss(model, incomplete[:1], {k: v[:1] for k, v in outputs.items()}, anchors[:1], per_level)
    for key in alone:
        assert float(one[key]) == pytest.approx(float(alone[key]), rel=1e-5), key
    # The negatives' outputs take exactly zero loss: no gradient reaches them.
    sum(got.values()).backward()
    grad = outputs["cls_logits"].grad
    assert bool((grad[0][matched[0] == -1] == 0).all()) and bool((grad[1][matched[1] == -1] != 0).any())
    assert bool((grad[0][positive] != 0).any())


@pytest.mark.parametrize("options", [{}, {"loss": "brl"}], ids=["focal", "brl"])
def test_retinanet_incomplete_image_keeps_only_its_positives_classification_loss(options: dict[str, object]) -> None:
    model = _model("retinanet", **options)
    anchors, per_level = _anchors(model, 2)
    outputs = _outputs(model, 2, len(anchors[0]), 3)
    complete, incomplete = _targets(incomplete=False), _targets(incomplete=True)
    matched = _matching(model, complete, outputs, anchors, per_level)
    positive = matched[0] >= 0
    assert int(positive.sum()) > 0 and int((matched[0] < 0).sum()) > int(positive.sum())
    want = model.image_loss_terms(head_targets(complete), outputs, anchors)
    got = model.image_loss_terms(head_targets(incomplete), outputs, anchors)
    # Image 0: the focal loss of its positives (BRL's positives are focal too) / its positive count.
    logits = outputs["cls_logits"][0][positive]
    onehot = torch.zeros_like(logits)
    onehot[torch.arange(len(logits)), head_targets(complete)[0]["labels"][matched[0][positive]]] = 1.0
    expected = sigmoid_focal_loss(logits, onehot).sum() / int(positive.sum())
    assert float(got["classification"][0]) == pytest.approx(float(expected), rel=1e-5)
    assert float(got["classification"][0]) < float(want["classification"][0])
    assert float(got["classification"][1]) == float(want["classification"][1])  # the complete image: unchanged
    assert torch.equal(got["bbox_regression"], want["bbox_regression"])
    batch = _loss(model, incomplete, outputs, anchors, per_level)
    assert float(batch["classification"]) == pytest.approx(float(got["classification"].mean()), rel=1e-6)
    # Negatives, ignored and confusion anchors of image 0 take no loss: changing their logits changes nothing.
    changed = {k: v.detach().clone() for k, v in outputs.items()}
    changed["cls_logits"][0, ~positive] += 4.0
    again = _loss(model, incomplete, changed, anchors, per_level)
    assert float(again["classification"]) == pytest.approx(float(batch["classification"]), rel=1e-6)


def test_an_incomplete_image_without_boxes_takes_no_loss() -> None:
    model = _model("retinanet", loss="brl")
    anchors, per_level = _anchors(model, 1)
    outputs = _outputs(model, 1, len(anchors[0]), 4)
    empty = {"boxes": torch.zeros(0, 4), "labels": torch.zeros(0, dtype=torch.int64), "incomplete": torch.tensor(True)}
    losses = _loss(model, [empty], outputs, anchors, per_level)
    assert all(float(v) == 0.0 for v in losses.values())


# ----------------------------------------------------------------------------------------------
# Per-image losses agree with the batch loss


def _images() -> list[Tensor]:
    generator = torch.Generator().manual_seed(1)
    return [torch.rand(3, SIZE, SIZE, generator=generator) for _ in range(2)]


@pytest.mark.parametrize("detector", ["retinanet", "fcos"])
def test_per_image_losses_follow_the_flag_and_agree_with_the_batch_loss(detector: str) -> None:
    model = _model(detector).train()
    for module in model.modules():  # BatchNorm on running statistics: an image's loss does not depend on its batch
        if isinstance(module, nn.modules.batchnorm._BatchNorm):
            module.eval()
    images, flagged, plain = _images(), _targets(incomplete=True), _targets(incomplete=False)
    losses, unflagged = per_image_losses(model, images, flagged), per_image_losses(model, images, plain)
    assert float(losses[0]) < float(unflagged[0]) and float(losses[1]) == pytest.approx(float(unflagged[1]), rel=1e-6)
    with torch.no_grad():
        if detector == "retinanet":  # the mean over the batch is the training loss
            assert float(losses.mean()) == pytest.approx(float(sum(model(images, flagged).values())), rel=1e-5)
        else:  # each image's loss is the training loss of that image alone
            for i in range(2):
                alone = float(sum(model(images[i: i + 1], flagged[i: i + 1]).values()))
                assert float(losses[i]) == pytest.approx(alone, rel=1e-4), i


# ----------------------------------------------------------------------------------------------
# Data: the COCO flag, the target, Faster R-CNN


def _coco(**image: object) -> dict:
    return {"images": [{"id": 1, "file_name": "a.png", "width": 64, "height": 64, **image}],
            "categories": [{"id": 5, "name": "square"}],
            "annotations": [{"id": 1, "image_id": 1, "category_id": 5, "bbox": [1, 2, 10, 10]}]}


@pytest.mark.parametrize("value", [2, -1, 0.5, 1.0, "1", None])
def test_coco_validation_rejects_a_bad_incomplete_value_in_one_line(value: object) -> None:
    from curation_core.coco import dataset_from_dict
    from curation_core.errors import DataError

    with pytest.raises(DataError, match=r"^f\.json: image id=1 \(images\[0\]\): 'incomplete' must be 0 or 1; got ") as err:
        dataset_from_dict(_coco(incomplete=value), source="f.json")
    assert "\n" not in str(err.value)
    for good in (0, 1):
        assert dataset_from_dict(_coco(incomplete=good), source="f.json").images[0]["incomplete"] == good


def test_the_record_flag_reaches_the_target_and_survives_clipping(tmp_path: Path) -> None:
    from PIL import Image

    from curation_core.coco import dataset_from_dict
    from curation_core.engine.config import AugmentConfig
    from curation_core.engine.data import DetectionDataset, TrainTransform, build_target

    target = build_target([{"id": 1, "category_id": 5, "bbox": [1.0, 2.0, 10.0, 10.0]}], {5: 1}, image_id=1,
                          width=64, height=64, incomplete=True)
    assert target["incomplete"].dtype == torch.bool and target["incomplete"].shape == () and bool(target["incomplete"])
    assert not bool(build_target([], {5: 1}, image_id=2, width=8, height=8)["incomplete"])
    Image.new("RGB", (64, 64)).save(tmp_path / "a.png")
    raw = _coco(incomplete=1)
    raw["images"].append({"id": 2, "file_name": "a.png", "width": 64, "height": 64})
    dataset = DetectionDataset(dataset_from_dict(raw), tmp_path, category_ids=[5],
                               transform=TrainTransform(AugmentConfig(), 48, 48), seed=0)
    flags = [bool(dataset[(i, i)][1]["incomplete"]) for i in range(2)]
    assert flags == [True, False]


def test_faster_rcnn_refuses_incomplete_images(tmp_path: Path) -> None:
    from engine_fixtures import tiny_config_dict

    from curation_core.engine.config import config_from_dict
    from curation_core.engine.trainer import train
    from curation_core.errors import DataError

    model = _model("faster_rcnn").train()
    with pytest.raises(ValueError, match=r"IgnoreRegionRPN\(targets=\) expects complete images .* got "
                                         r"incomplete=True at image 0\."):
        model(_images(), _targets(incomplete=True))
    raw = tiny_config_dict(tmp_path, detector="faster_rcnn", max_iter=1, val=False)
    path = Path(raw["data"]["train_annotations"])
    coco = json.loads(path.read_text())
    coco["images"][1]["incomplete"] = 1
    path.write_text(json.dumps(coco))
    with pytest.raises(DataError, match=rf"image id={coco['images'][1]['id']}: is flagged incomplete, which "
                                        r"faster_rcnn does not train"):
        train(config_from_dict(raw))
