"""Detector factory: every detector x small backbone trains and predicts; names are checked."""

from __future__ import annotations

import math

import pytest
import torch

from curation_core.engine.backbones import build_backbone, norm_layer
from curation_core.engine.config import ModelConfig
from curation_core.engine.models import build_detector, fpn_levels

DETECTORS = ("fcos", "retinanet", "faster_rcnn")


def _targets() -> list[dict[str, torch.Tensor]]:
    return [
        {"boxes": torch.tensor([[4.0, 6.0, 30.0, 40.0], [35.0, 10.0, 60.0, 28.0]]), "labels": torch.tensor([1, 3])},
        {"boxes": torch.zeros((0, 4)), "labels": torch.zeros((0,), dtype=torch.int64)},  # background-only image
    ]


@pytest.mark.parametrize("detector", DETECTORS)
def test_small_detectors_train_and_predict(detector: str) -> None:
    torch.manual_seed(0)
    config = ModelConfig(detector=detector, backbone="tiny", min_size=64, max_size=64, detections_per_img=7)
    model = build_detector(config, num_categories=3)
    model.train()
    losses = model([torch.rand(3, 64, 64), torch.rand(3, 56, 64)], _targets())
    total = sum(losses.values())
    assert all(math.isfinite(float(v.detach())) for v in losses.values())
    total.backward()
    assert any(p.grad is not None and float(p.grad.abs().sum()) > 0 for p in model.parameters())
    model.eval()
    with torch.inference_mode():
        outputs = model([torch.rand(3, 100, 80)])  # eval resizes any size and maps boxes back
    boxes = outputs[0]["boxes"]
    assert boxes.shape[1] == 4 and len(boxes) <= 7
    assert bool((boxes[:, 2] <= 80 + 1e-3).all() and (boxes[:, 3] <= 100 + 1e-3).all())
    assert bool(((outputs[0]["labels"] >= 1) & (outputs[0]["labels"] <= 3)).all())


def test_training_mode_keeps_the_input_size() -> None:
    # Scale jitter comes from the data pipeline; the model must not resize training images back.
    model = build_detector(ModelConfig(detector="fcos", backbone="tiny", min_size=64, max_size=64), num_categories=2)
    model.train()
    images, _ = model.transform([torch.rand(3, 96, 80)], [{"boxes": torch.zeros((0, 4)), "labels": torch.zeros(0)}])
    assert images.image_sizes == [(96, 80)]
    model.eval()
    images, _ = model.transform([torch.rand(3, 96, 80)])
    assert images.image_sizes == [(64, 53)]


def test_levels_and_class_counts() -> None:
    tiny = ModelConfig(detector="fcos", backbone="tiny", min_size=64, max_size=64)
    assert fpn_levels(tiny) == "p3p7"
    assert fpn_levels(tiny.model_copy(update={"detector": "faster_rcnn"})) == "p2p6"
    assert fpn_levels(tiny.model_copy(update={"fpn_levels": "p2p6"})) == "p2p6"
    fcos = build_detector(tiny, num_categories=5)
    assert fcos.head.classification_head.num_classes == 5  # sigmoid scores: no background output
    frcnn = build_detector(tiny.model_copy(update={"detector": "faster_rcnn"}), num_categories=5)
    assert frcnn.roi_heads.box_predictor.cls_score.out_features == 6


def _tower_convs(tower: torch.nn.Module) -> int:
    return sum(isinstance(m, torch.nn.Conv2d) for m in tower.conv.modules())


@pytest.mark.parametrize("detector", ["fcos", "retinanet"])
@pytest.mark.parametrize("head_convs", [None, 1, 2, 4])
def test_head_convs_sets_the_depth_of_both_towers(detector: str, head_convs: int | None) -> None:
    torch.manual_seed(0)
    config = ModelConfig(detector=detector, backbone="nano", min_size=64, max_size=64, head_convs=head_convs)
    model = build_detector(config, num_categories=3)
    expected = 4 if head_convs is None else head_convs  # torchvision's towers have 4
    assert _tower_convs(model.head.classification_head) == expected
    assert _tower_convs(model.head.regression_head) == expected
    model.train()
    losses = model([torch.rand(3, 64, 64), torch.rand(3, 56, 64)], _targets())
    sum(losses.values()).backward()
    first = next(iter(model.head.classification_head.conv.parameters()))
    assert first.grad is not None and float(first.grad.abs().sum()) > 0


def test_head_convs_is_refused_for_faster_rcnn_and_out_of_range() -> None:
    with pytest.raises(ValueError, match=r"head_convs applies to the one-stage heads"):
        ModelConfig(detector="faster_rcnn", backbone="tiny", head_convs=2)
    for bad in (0, 5):
        with pytest.raises(ValueError, match=r"head_convs"):
            ModelConfig(detector="fcos", backbone="tiny", head_convs=bad)


def test_backbones_give_five_fpn_levels() -> None:
    for name, levels, strides, width in (("nano", "p3p7", (8, 16, 32, 64, 128), 32),
                                         ("tiny", "p3p7", (8, 16, 32, 64, 128), 64),
                                         ("small", "p2p6", (4, 8, 16, 32, 64), 64),
                                         ("resnet18", "p3p7", (8, 16, 32, 64, 128), 32)):
        backbone = build_backbone(name, levels=levels, fpn_channels=32 if name == "resnet18" else None)
        features = backbone(torch.rand(1, 3, 128, 128))
        assert [128 // f.shape[-1] for f in features.values()] == list(strides)
        assert backbone.out_channels == width
        assert all(f.shape[1] == width for f in features.values())
    assert isinstance(norm_layer("group")(48), torch.nn.GroupNorm)


def test_resnet_detectors_are_built_without_weights() -> None:
    model = build_detector(ModelConfig(detector="retinanet", backbone="resnet50"), num_categories=2)
    n_params = sum(p.numel() for p in model.parameters())
    assert 30e6 < n_params < 40e6  # ResNet-50-FPN RetinaNet without any downloaded weights
    assert isinstance(model.backbone.body.bn1, torch.nn.BatchNorm2d)  # trainable BN, not frozen (from scratch)


def test_unknown_names_raise_value_errors_listing_the_choices() -> None:
    with pytest.raises(ValueError, match=r"build_backbone\(name=\) expects one of nano, tiny, small, resnet18, resnet50"):
        build_backbone("vgg16", levels="p3p7")
    with pytest.raises(ValueError, match=r"build_backbone\(levels=\) expects 'p3p7' or 'p2p6'; got 'p4'"):
        build_backbone("tiny", levels="p4")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match=r"norm_layer\(kind=\) expects 'batch' or 'group'; got 'layer'"):
        norm_layer("layer")
    config = ModelConfig.model_construct(**{**ModelConfig(detector="fcos", backbone="tiny").model_dump(),
                                            "detector": "yolo"})
    with pytest.raises(ValueError, match=r"expects one of fcos, retinanet, faster_rcnn; got 'yolo'"):
        build_detector(config, num_categories=2)
    with pytest.raises(ValueError, match=r"build_detector\(num_categories=\) expects an integer >= 1; got 0"):
        build_detector(ModelConfig(detector="fcos", backbone="tiny"), num_categories=0)


def test_faster_rcnn_pools_with_fixed_scales() -> None:
    # torchvision would infer the RoIAlign scales from the first batch and keep them; a first batch of
    # small padded images gives scales an octave off. They are fixed from the strides instead.
    model = build_detector(ModelConfig(detector="faster_rcnn", backbone="tiny", min_size=64, max_size=64),
                           num_categories=2)
    pool = model.roi_heads.box_roi_pool
    assert pool.scales == [1 / 4, 1 / 8, 1 / 16, 1 / 32]
    model.train()
    model([torch.rand(3, 40, 40)], [{"boxes": torch.tensor([[2.0, 2.0, 20.0, 20.0]]), "labels": torch.tensor([1])}])
    assert pool.scales == [1 / 4, 1 / 8, 1 / 16, 1 / 32]
    assert (pool.map_levels.k_min, pool.map_levels.k_max) == (2, 5)


def test_the_nano_fcos_head_detects_in_a_single_image_as_in_a_batch() -> None:
    """GroupNorm(32) on nano's 32-channel FPN holds one value per group at 1 x 1: torch refuses a batch of one."""
    import torch

    from curation_core.engine.config import ModelConfig
    from curation_core.engine.models import SingleValueGroupNorm, build_detector

    torch.manual_seed(0)
    model = build_detector(ModelConfig(detector="fcos", backbone="nano", min_size=128, max_size=128),
                           num_categories=3).eval()
    assert any(isinstance(m, SingleValueGroupNorm) for m in model.head.modules())
    images = [torch.rand(3, 128, 128), torch.rand(3, 128, 128)]
    with torch.no_grad():
        alone, batch = model(images[:1])[0], model(images)[0]
    torch.testing.assert_close(alone["scores"], batch["scores"], atol=1e-6, rtol=0)
    torch.testing.assert_close(alone["boxes"], batch["boxes"], atol=1e-4, rtol=0)
    norm = SingleValueGroupNorm(4, 4)
    torch.nn.init.normal_(norm.bias)
    x = torch.randn(1, 4, 1, 1)
    torch.testing.assert_close(norm(x), norm.bias.view(1, 4, 1, 1).expand_as(x))  # (x - mean) = 0 -> bias
    y = torch.randn(2, 4, 3, 3)
    torch.testing.assert_close(norm(y), torch.nn.functional.group_norm(y, 4, norm.weight, norm.bias, norm.eps))
