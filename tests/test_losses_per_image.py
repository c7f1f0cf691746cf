"""Per-image losses and one-pass detections (``curation_core.losses.per_image``) against torchvision.

Every detector is a randomly initialised ``nano`` model at 64 px, 3 categories. References are
torchvision's own forward: training-mode loss dicts and eval-mode detections.
"""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from curation_core.engine.config import ModelConfig
from curation_core.engine.models import build_detector
from curation_core.losses.per_image import ScoringOutput, per_image_losses, score_forward

DETECTORS = ("fcos", "retinanet", "faster_rcnn")
SIZE = 64


@pytest.fixture(autouse=True)
def _one_thread() -> None:
    torch.set_num_threads(1)


def _model(detector: str, **fields: object) -> nn.Module:
    torch.manual_seed(0)
    # FCOS's towers use GroupNorm(32): on a 32-channel FPN (nano) a single 64 px image has a 1x1 P7 with
    # one value per group, which torch rejects; 64 channels give two, so torchvision runs on one image.
    channels = 64 if detector == "fcos" else None
    config = ModelConfig(detector=detector, backbone="nano", min_size=SIZE, max_size=SIZE, score_thresh=0.0,
                         fpn_channels=channels, **fields)
    return build_detector(config, num_categories=3)


def _freeze_batchnorm(model: nn.Module) -> nn.Module:
    """Training mode, BatchNorm on running statistics: an image's loss then does not depend on its batch."""
    model.train()
    for module in model.modules():
        if isinstance(module, nn.modules.batchnorm._BatchNorm):
            module.eval()
    return model


def _target(boxes: list[list[float]], labels: list[int], image_id: int) -> dict[str, torch.Tensor]:
    n = len(labels)
    return {"boxes": torch.tensor(boxes, dtype=torch.float32).reshape(n, 4),
            "labels": torch.tensor(labels, dtype=torch.int64), "ann_ids": torch.arange(n) + 10 * image_id,
            "ignore": torch.zeros(n, dtype=torch.bool), "image_id": torch.tensor(image_id),
            "position": torch.tensor(image_id)}


def _batch() -> tuple[list[torch.Tensor], list[dict[str, torch.Tensor]]]:
    """Three 64 px images: two objects, none, one large one; targets carry the data pipeline's extra keys."""
    generator = torch.Generator().manual_seed(1)
    images = [torch.rand(3, SIZE, SIZE, generator=generator) for _ in range(3)]
    targets = [_target([[4.0, 6.0, 30.0, 40.0], [35.0, 10.0, 60.0, 28.0]], [1, 3], 0),
               _target([], [], 1),
               _target([[10.0, 8.0, 50.0, 60.0]], [2], 2)]
    return images, targets


def _torchvision_loss(model: nn.Module, images: list[torch.Tensor],
                      targets: list[dict[str, torch.Tensor]]) -> float:
    with torch.no_grad():
        return float(sum(model(images, targets).values()))


@pytest.mark.parametrize("loss_type", ["giou", "l1"])
def test_retinanet_mean_of_per_image_losses_is_torchvision_loss(loss_type: str) -> None:
    model = _model("retinanet").train()  # BatchNorm in train mode: both passes see the same batch
    model.head.regression_head._loss_type = loss_type
    images, targets = _batch()
    losses = per_image_losses(model, images, targets)
    assert losses.shape == (3,) and losses.dtype == torch.float32
    assert float(losses.mean()) == pytest.approx(_torchvision_loss(model, images, targets), rel=1e-5)


def test_fcos_per_image_losses_are_torchvision_losses_of_each_image_alone() -> None:
    model = _freeze_batchnorm(_model("fcos"))
    images, targets = _batch()
    losses = per_image_losses(model, images, targets)
    for i in range(3):
        alone = _torchvision_loss(model, images[i: i + 1], targets[i: i + 1])
        assert float(losses[i]) == pytest.approx(alone, rel=1e-4), i  # batched vs single-image convolutions
        single = per_image_losses(model, images[i: i + 1], targets[i: i + 1])
        assert float(single[0]) == pytest.approx(alone, rel=1e-5)
    # torchvision divides by the batch's foreground count, so its batch loss is not the mean of these.
    assert float(losses.mean()) != pytest.approx(_torchvision_loss(model, images, targets), rel=1e-3)


def _flagged_batch() -> tuple[list[torch.Tensor], list[dict[str, torch.Tensor]]]:
    """``_batch`` with image 0's first box an ignored region and image 2's box unverified."""
    images, targets = _batch()
    targets[0]["ignore"] = torch.tensor([True, False])
    for target in targets:
        target["unverified"] = torch.zeros(len(target["labels"]), dtype=torch.bool)
    targets[2]["unverified"] = torch.tensor([True])
    return images, targets


LOSS_OPTIONS = {"focal": {}, "brl": {"loss": "brl"}, "pisa": {"pisa": True},
                "brl_pisa_dampened": {"loss": "brl", "pisa": True, "unverified_weight": 0.25}}


@pytest.mark.parametrize("options", LOSS_OPTIONS)
def test_retinanet_per_image_losses_follow_the_loss_configuration(options: str) -> None:
    model = _model("retinanet", **LOSS_OPTIONS[options]).train()
    images, targets = _flagged_batch()
    losses = per_image_losses(model, images, targets)
    # The mean is the model's own training loss on the batch, flags and options included (PISA's ranks
    # and normalisations are the batch's in both).
    assert float(losses.mean()) == pytest.approx(_torchvision_loss(model, images, targets), rel=1e-5)
    unflagged = per_image_losses(model, *_batch())
    assert not torch.allclose(losses, unflagged, rtol=1e-4)  # the flags reach the per-image losses
    if options == "focal":  # the flags change only the images that carry them
        torch.testing.assert_close(losses[1], unflagged[1])


def test_fcos_per_image_losses_with_flags_are_each_image_alone() -> None:
    model = _freeze_batchnorm(_model("fcos", unverified_weight=0.25))
    images, targets = _flagged_batch()
    losses = per_image_losses(model, images, targets)
    unflagged = per_image_losses(model, *_batch())
    for i in range(3):
        alone = _torchvision_loss(model, images[i: i + 1], targets[i: i + 1])
        assert float(losses[i]) == pytest.approx(alone, rel=1e-4), i
    assert float(losses[0]) != pytest.approx(float(unflagged[0]), rel=1e-4)
    assert float(losses[2]) != pytest.approx(float(unflagged[2]), rel=1e-4)


@pytest.mark.parametrize("mode", ["train", "eval"])
@pytest.mark.parametrize("index", [0, 1], ids=["objects", "no_objects"])
def test_faster_rcnn_batch_of_one_equals_torchvision_with_the_same_seed(index: int, mode: str) -> None:
    # In eval mode the losses must still use the training proposal budget and sampling: compare with
    # torchvision in training mode with BatchNorm on its running statistics, as model.eval() has it.
    model = _model("faster_rcnn").train() if mode == "train" else _freeze_batchnorm(_model("faster_rcnn"))
    images, targets = _batch()
    image, target = images[index: index + 1], targets[index: index + 1]
    torch.manual_seed(7)
    expected = _torchvision_loss(model, image, target)
    if mode == "eval":
        model.eval()
    torch.manual_seed(7)
    assert abs(float(per_image_losses(model, image, target)[0]) - expected) < 1e-5


def test_one_stage_losses_follow_their_image_when_the_batch_is_permuted() -> None:
    images, targets = _batch()
    order = [2, 0, 1]
    for detector in ("fcos", "retinanet"):
        model = _freeze_batchnorm(_model(detector))
        losses = per_image_losses(model, images, targets)
        permuted = per_image_losses(model, [images[i] for i in order], [targets[i] for i in order])
        torch.testing.assert_close(permuted, losses[order], rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("mode", ["eval", "train_frozen_bn"])
@pytest.mark.parametrize("detector", DETECTORS)
def test_detections_equal_the_eval_forward(detector: str, mode: str) -> None:
    model = _model(detector).eval()
    images, targets = _batch()
    with torch.no_grad():
        expected = model(images)
    if mode == "train_frozen_bn":  # heads in training mode must still take the inference branch
        _freeze_batchnorm(model)
    torch.manual_seed(3)
    out = score_forward(model, images, targets, losses=True, detections=True)
    assert isinstance(out, ScoringOutput) and out.detections is not None and out.losses is not None
    for got, want in zip(out.detections, expected, strict=True):
        assert len(want["boxes"]) > 0
        torch.testing.assert_close(got["boxes"], want["boxes"], rtol=0, atol=1e-5)
        torch.testing.assert_close(got["scores"], want["scores"], rtol=0, atol=1e-5)
        assert torch.equal(got["labels"], want["labels"]) and got["labels"].dtype == torch.int64
        assert bool(((got["labels"] >= 1) & (got["labels"] <= 3)).all())
    torch.manual_seed(3)  # the same pass asked for losses only gives the same losses
    torch.testing.assert_close(out.losses, per_image_losses(model, images, targets))
    assert score_forward(model, images, None, losses=False, detections=True).losses is None


@pytest.mark.parametrize("mode", ["eval", "train"])
@pytest.mark.parametrize("detector", DETECTORS)
def test_state_and_modes_are_unchanged(detector: str, mode: str) -> None:
    model = _model(detector).eval() if mode == "eval" else _model(detector).train()
    for module in model.modules():  # in train mode BatchNorm would update its statistics: the caller's choice
        if isinstance(module, nn.modules.batchnorm._BatchNorm):
            module.momentum = 0.0
    before = {k: v.clone() for k, v in model.state_dict().items()}
    modes = [m.training for m in model.modules()]
    images, targets = _batch()
    score_forward(model, images, targets, losses=True, detections=True)
    assert [m.training for m in model.modules()] == modes
    for key, value in model.state_dict().items():
        if mode == "eval" or not key.endswith("num_batches_tracked"):
            assert torch.equal(value, before[key]), key


@pytest.mark.parametrize("detector", DETECTORS)
def test_images_without_boxes_have_finite_losses(detector: str) -> None:
    model = _freeze_batchnorm(_model(detector))
    images, targets = _batch()
    empty = per_image_losses(model, images[1:2], targets[1:2])
    mixed = per_image_losses(model, images[:2], targets[:2])
    for losses, n in ((empty, 1), (mixed, 2)):
        assert losses.shape == (n,) and all(math.isfinite(v) and v >= 0 for v in losses.tolist())


def test_targets_are_not_modified_and_an_empty_batch_is_legal() -> None:
    model = _model("retinanet").eval()
    images, targets = _batch()
    per_image_losses(model, images, targets)
    assert targets[0]["labels"].tolist() == [1, 3] and set(targets[0]) == set(_batch()[1][0])
    out = score_forward(model, [], [], losses=True, detections=True)
    assert out.losses is not None and out.losses.shape == (0,) and out.detections == []


def _bad_target(**update: torch.Tensor) -> list[dict[str, torch.Tensor]]:
    return [{**_target([[4.0, 6.0, 30.0, 40.0]], [1], 0), **update}]


ERRORS = {  # case -> (score_forward arguments to replace, the error message's pattern)
    "model": ({"model": nn.Linear(2, 2)},
              r"expects an FCOS, RetinaNet or FasterRCNN from build_detector; got Linear\."),
    "nothing_asked": ({"losses": False}, r"expects at least one to be True; got both False\."),
    "no_targets": ({"targets": None}, r"expects a list of target dicts when losses=True; got None\."),
    "target_count": ({"targets": _bad_target() * 2}, r"expects one target per image \(1\); got 2\."),
    "image_shape": ({"images": [torch.rand(64, 64)]},
                    r"expects float tensors of shape \(3, H, W\); got torch.float32 \(64, 64\) at image 0\."),
    "label_high": ({"targets": _bad_target(labels=torch.tensor([4]))},
                   r"labels in 1\.\.3; got 4 at image 0, box 0\."),
    "label_zero": ({"targets": _bad_target(labels=torch.tensor([0]))},
                   r"labels in 1\.\.3; got 0 at image 0, box 0\."),
    "label_dtype": ({"targets": _bad_target(labels=torch.tensor([1], dtype=torch.int32))},
                    r"expects int64 labels of shape \(1,\); got torch.int32"),
    "degenerate_box": ({"targets": _bad_target(boxes=torch.tensor([[4.0, 6.0, 4.0, 40.0]]))},
                       r"x1 > x0 and y1 > y0; got \[4\.0, 6\.0, 4\.0, 40\.0\] at image 0, box 0\."),
    "missing_key": ({"targets": [{"boxes": torch.zeros((0, 4))}]},
                    r"expects dicts with 'boxes' and 'labels'; got keys \['boxes'\] at image 0\."),
    "box_shape": ({"targets": _bad_target(boxes=torch.tensor([4.0, 6.0, 30.0, 40.0]))},
                  r"expects float boxes of shape \(n, 4\); got torch.float32 \(4,\) at image 0\."),
}


@pytest.mark.parametrize("case", ERRORS)
def test_errors(case: str) -> None:
    update, match = ERRORS[case]
    call = {"model": _model("retinanet"), "images": [torch.rand(3, SIZE, SIZE)], "targets": _bad_target(),
            "losses": True, "detections": False, **update}
    with pytest.raises(ValueError, match=match):
        score_forward(call.pop("model"), call.pop("images"), call.pop("targets"), **call)
