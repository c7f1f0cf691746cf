"""Faster R-CNN's training samples (``engine.two_stage``): ignore regions, Libra sampling, PISA, the config.

Models are randomly initialised ``nano`` Faster R-CNNs at 64 px with 3 categories; references are
torchvision's own ``RegionProposalNetwork`` / ``RoIHeads`` on the same modules.
"""

from __future__ import annotations

import copy
from pathlib import Path

import pytest
import torch
from engine_fixtures import tiny_config_dict, with_sections
from torch import nn
from torchvision.models.detection.roi_heads import RoIHeads
from torchvision.models.detection.rpn import RegionProposalNetwork

from curation_core.engine.config import ModelConfig, config_from_dict
from curation_core.engine.models import build_detector
from curation_core.engine.two_stage import DISCARDED, IgnoreRegionRPN, SampledRoIHeads
from curation_core.errors import ConfigError
from curation_core.losses.per_image import per_image_losses
from curation_core.samplers.ignore import covered_by_regions

SIZE = 64


@pytest.fixture(autouse=True)
def _one_thread() -> None:
    torch.set_num_threads(1)


def _model(**options: object) -> nn.Module:
    torch.manual_seed(0)
    config = ModelConfig(detector="faster_rcnn", backbone="nano", min_size=SIZE, max_size=SIZE, **options)
    return build_detector(config, num_categories=3)


def _torchvision_twin(model: nn.Module) -> nn.Module:
    """The same weights with torchvision's own RPN and RoI heads classes."""
    twin = copy.deepcopy(model)
    twin.rpn.__class__ = RegionProposalNetwork
    twin.roi_heads.__class__ = RoIHeads
    return twin


def _target(boxes: list[list[float]], labels: list[int], ignore: list[bool] | None = None) -> dict[str, torch.Tensor]:
    n = len(labels)
    return {"boxes": torch.tensor(boxes, dtype=torch.float32).reshape(n, 4),
            "labels": torch.tensor(labels, dtype=torch.int64),
            "ignore": torch.tensor(ignore if ignore is not None else [False] * n, dtype=torch.bool)}


def _batch() -> tuple[list[torch.Tensor], list[dict[str, torch.Tensor]]]:
    g = torch.Generator().manual_seed(1)
    images = [torch.rand(3, SIZE, SIZE, generator=g) for _ in range(3)]
    targets = [_target([[4, 6, 30, 40], [35, 10, 60, 28]], [1, 3]), _target([], []), _target([[10, 8, 50, 60]], [2])]
    return images, targets


def _losses(model: nn.Module, images: list[torch.Tensor], targets: list[dict[str, torch.Tensor]],
            seed: int = 5) -> dict[str, float]:
    torch.manual_seed(seed)
    return {k: float(v.detach()) for k, v in model.train()(images, targets).items()}


# ----------------------------------------------------------------------------------------------
# Ignore regions


def test_covered_by_regions_hand_computed() -> None:
    regions = torch.tensor([[0.0, 0.0, 10.0, 10.0]])
    boxes = torch.tensor([[0, 0, 5, 5], [5, 0, 15, 10], [6, 0, 16, 10], [20, 20, 30, 30], [3, 3, 3, 3.0]])
    # Fractions inside: 1, 0.5, 0.4, 0, a point inside.
    assert covered_by_regions(boxes, regions).tolist() == [True, True, False, False, True]
    assert covered_by_regions(boxes, regions[:0]).tolist() == [False] * 5


def test_build_detector_installs_the_subclasses() -> None:
    model = _model()
    assert isinstance(model.rpn, IgnoreRegionRPN) and isinstance(model.roi_heads, SampledRoIHeads)
    assert model.state_dict().keys() == _torchvision_twin(model).state_dict().keys()


def test_without_ignored_boxes_training_is_torchvision_exactly() -> None:
    model = _model()
    images, targets = _batch()
    assert _losses(model, images, targets) == _losses(_torchvision_twin(model), images, targets)


def test_rpn_discards_background_anchors_inside_ignored_boxes() -> None:
    model = _model()
    anchors = [torch.tensor([[0, 0, 20, 20], [30, 30, 50, 50], [32, 32, 48, 48], [0, 40, 10, 60.0]])]
    regular = _target([[0, 0, 20, 20]], [1])
    with_ignored = _target([[0, 0, 20, 20], [30, 30, 50, 50]], [1, 2], [False, True])
    plain, _ = model.rpn.assign_targets_to_anchors(anchors, [regular])
    labels, matched = model.rpn.assign_targets_to_anchors(anchors, [with_ignored])
    assert plain[0].tolist() == [1.0, 0.0, 0.0, 0.0]
    # The anchor equal to the ignored box and the one inside it are discarded, never positives.
    assert labels[0].tolist() == [1.0, DISCARDED, DISCARDED, 0.0]
    assert matched[0][0].tolist() == [0, 0, 20, 20]


def test_roi_heads_discard_proposals_inside_ignored_boxes_and_do_not_append_them() -> None:
    heads = _model().roi_heads
    proposals = [torch.tensor([[30, 30, 50, 50], [31, 31, 49, 49], [0, 40, 10, 60], [1, 1, 19, 19.0]])]
    target = _target([[0, 0, 20, 20], [30, 30, 50, 50]], [1, 2], [False, True])
    torch.manual_seed(0)
    samples = heads.sample(proposals, [target])
    kept = {tuple(box.tolist()): int(label) for box, label in zip(samples.proposals[0], samples.labels[0], strict=True)}
    assert (30.0, 30.0, 50.0, 50.0) not in kept and (31.0, 31.0, 49.0, 49.0) not in kept
    assert kept[(0.0, 40.0, 10.0, 60.0)] == 0  # background outside the ignored region stays a negative
    assert kept[(0.0, 0.0, 20.0, 20.0)] == 1 and kept[(1.0, 1.0, 19.0, 19.0)] == 1  # the regular box, appended
    assert 2 not in kept.values()


def test_an_image_of_ignored_boxes_only_trains_as_background_outside_them() -> None:
    model = _model(sampler="libra", pisa=True)
    images, _ = _batch()
    targets = [_target([[4, 6, 30, 40]], [1], [True]), _target([], []), _target([[10, 8, 50, 60]], [2], [True])]
    losses = _losses(model, images, targets)
    assert losses["loss_box_reg"] == 0.0 and losses["loss_carl"] == 0.0 and losses["loss_rpn_box_reg"] == 0.0
    assert all(v == v for v in losses.values())  # no NaN
    empty = _losses(model, images, [_target([], [])] * 3)  # a batch of background images only
    assert empty["loss_box_reg"] == 0.0 and empty["loss_carl"] == 0.0 and empty["loss_classifier"] > 0


def test_ignored_boxes_change_the_loss_from_ordinary_positives() -> None:
    model = _model()
    images, targets = _batch()
    flagged = [dict(t) for t in targets]
    flagged[0]["ignore"] = torch.tensor([True, False])
    assert _losses(model, images, flagged) != _losses(model, images, targets)


# ----------------------------------------------------------------------------------------------
# Libra and PISA in the RoI heads


def test_libra_draws_torchvision_s_numbers_of_positives_and_negatives() -> None:
    random_heads, libra_heads = _model().roi_heads, _model(sampler="libra").roi_heads
    g = torch.Generator().manual_seed(0)
    xy = torch.rand(600, 2, generator=g) * 50
    proposals = [torch.cat([xy, xy + 4 + torch.rand(600, 2, generator=g) * 30], dim=1)]
    target = _target([[4, 6, 30, 40], [35, 10, 60, 28], [10, 30, 40, 60]], [1, 3, 2])
    for heads in (random_heads, libra_heads):
        torch.manual_seed(0)
        samples = heads.sample(proposals, [target])
        labels = samples.labels[0]
        counts = (int((labels > 0).sum()), int((labels == 0).sum()))
        if heads is random_heads:
            expected = counts
        assert counts == expected and sum(counts) == heads.fg_bg_sampler.batch_size_per_image


def test_pisa_keeps_the_classification_total_and_adds_carl() -> None:
    images, targets = _batch()
    plain = _losses(_model(sampler="libra"), images, targets)
    pisa = _losses(_model(sampler="libra", pisa=True), images, targets)
    # Same seed, same samples: ISR only redistributes the cross-entropy among them.
    assert pisa["loss_classifier"] == pytest.approx(plain["loss_classifier"], rel=1e-5)
    assert pisa["loss_box_reg"] == pytest.approx(plain["loss_box_reg"], rel=1e-6)
    assert pisa["loss_carl"] > 0 and "loss_carl" not in plain


@pytest.mark.parametrize("parts", [("isr_p",), ("isr_n",), ("carl",), ("isr_p", "isr_n")])
def test_pisa_parts_switch_their_terms(parts: tuple[str, ...]) -> None:
    images, targets = _batch()
    plain = _losses(_model(), images, targets)
    some = _losses(_model(pisa=True, pisa_parts=parts), images, targets)
    assert ("loss_carl" in some) == ("carl" in parts)
    assert some["loss_classifier"] == pytest.approx(plain["loss_classifier"], rel=1e-5)  # ISR keeps the total


def test_carl_reaches_the_classifier_through_the_trainer_s_loss() -> None:
    model = _model(pisa=True).train()
    images, targets = _batch()
    torch.manual_seed(5)
    model(images, targets)["loss_carl"].backward()
    grad = model.roi_heads.box_predictor.cls_score.weight.grad
    assert grad is not None and float(grad.abs().sum()) > 0


@pytest.mark.parametrize("options", [{}, {"sampler": "libra"}, {"sampler": "libra", "pisa": True}])
def test_per_image_loss_of_a_batch_of_one_is_the_training_loss(options: dict[str, object]) -> None:
    model = _model(**options).train()
    for module in model.modules():  # BatchNorm on running statistics, as a scoring pass would use
        if isinstance(module, nn.modules.batchnorm._BatchNorm):
            module.eval()
    images, targets = _batch()
    flagged = dict(targets[0], ignore=torch.tensor([True, False]))
    for image, target in ((images[0], flagged), (images[2], targets[2]), (images[1], targets[1])):
        expected = sum(_losses(model, [image], [target]).values())
        torch.manual_seed(5)
        assert float(per_image_losses(model, [image], [target])[0]) == pytest.approx(expected, rel=1e-5)


# ----------------------------------------------------------------------------------------------
# Configuration: one-line errors before training


@pytest.mark.parametrize("model, message", [
    ({"sampler": "ohem"}, "model.sampler: invalid value 'ohem'; valid choices: random, libra"),
    ({"detector": "retinanet", "sampler": "libra"}, "sampler 'libra' applies to the RoI heads of faster_rcnn"),
    ({"libra": {"bins": 4}}, "libra applies to sampler 'libra' only"),
    ({"sampler": "libra", "libra": {"floor_fraction": 0.5}}, "floor_fraction (0.5) needs floor_thr"),
    ({"sampler": "libra", "libra": {"bin_range": "max"}}, "valid choices: negatives, mmdetection"),
    ({"sampler": "libra", "libra": {"bins": 0}}, "model.libra.bins: Input should be greater than or equal to 1"),
    ({"sampler": "libra", "libra": {"nbins": 3}}, "model.libra.nbins: unknown field; valid fields: bins, floor_thr"),
    ({"detector": "fcos", "pisa": True}, "pisa applies to faster_rcnn and retinanet"),
    ({"pisa": "yes"}, "model.pisa: Input should be a valid boolean"),
    ({"pisa_parts": ["carl"]}, "pisa_parts selects parts of faster_rcnn's PISA and needs pisa: true"),
    ({"pisa": True, "pisa_parts": ["carl", "ohem"]}, "valid choices: isr_p, isr_n, carl"),
    ({"pisa": True, "pisa_parts": []}, "pisa_parts must list distinct parts"),
    ({"detector": "retinanet", "pisa": True, "pisa_parts": ["carl"]}, "retinanet's PISA is ISR-P and CARL together"),
])
def test_bad_sampling_configs_are_one_line_errors(tmp_path: Path, model: dict[str, object], message: str) -> None:
    raw = with_sections(tiny_config_dict(tmp_path, val=False, detector="faster_rcnn"), model=model)
    with pytest.raises(ConfigError) as info:
        config_from_dict(raw, source="run.yaml")
    assert message in str(info.value) and "\n" not in str(info.value)


@pytest.mark.slow
@pytest.mark.parametrize("curation", [None, {"method": "loss", "super_batch": 4}])
def test_faster_rcnn_with_libra_and_pisa_trains_through_the_trainer(tmp_path: Path, curation: dict | None) -> None:
    from components.train import train_config

    raw = with_sections(tiny_config_dict(tmp_path, val=True, detector="faster_rcnn", max_iter=3),
                        model={"sampler": "libra", "pisa": True, "libra": {"floor_thr": 0.05, "floor_fraction": 0.2}})
    if curation is not None:
        raw = with_sections(raw, curation=curation)
    result = train_config(config_from_dict(raw))  # builds the batch selector when curation asks for one
    assert result.checkpoint.exists() and result.iterations == 3
    assert result.final_stats is not None
