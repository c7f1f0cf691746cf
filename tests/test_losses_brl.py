"""Background Recalibration Loss (``curation_core.losses.brl``, arXiv 2002.05274): hand-computed cases on
each anchor class, the focal loss where recalibration is off, randomized checks against the formula."""

from __future__ import annotations

import math

import pytest
import torch
from torchvision.ops import sigmoid_focal_loss

from curation_core.losses.brl import (
    CONFUSION,
    IGNORED,
    NEGATIVE,
    BRLParams,
    assign_anchors,
    background_recalibration_loss,
    recalibrated_negative_loss,
)

ALPHA, GAMMA = 0.25, 2.0


def _logit(p: float) -> float:
    return math.log(p / (1.0 - p))


def _focal_negative(p: float) -> float:
    """-(1 - alpha) p^gamma log(1 - p): the focal loss of background."""
    return -(1 - ALPHA) * p ** GAMMA * math.log(1 - p)


def _mirrored(p: float) -> float:
    """-(1 - alpha) (1 - p)^gamma log(p): the positive branch mirrored, with the negative's alpha."""
    return -(1 - ALPHA) * (1 - p) ** GAMMA * math.log(p)


def test_hand_computed_loss_on_each_anchor_class() -> None:
    # Rows: a positive of class 0 (p = 0.5, other class p = 0.25), a negative with a confident score
    # (p = 0.8: not recalibrated, it is not a confusion anchor), two confusion anchors (p = 0.8 above
    # 1 - t = 0.5: mirrored; p = 0.25 below: focal), and a confusion anchor exactly at p = 1 - t.
    probabilities = [[0.5, 0.25], [0.8, 0.25], [0.8, 0.25], [0.25, 0.25], [0.5, 0.25]]
    logits = torch.tensor([[_logit(p) for p in row] for row in probabilities], dtype=torch.float64)
    targets = torch.zeros_like(logits)
    targets[0, 0] = 1.0
    confusion = torch.tensor([False, False, True, True, True])
    got = background_recalibration_loss(logits, targets, confusion, t=0.5, weight=0.1)
    positive = -ALPHA * 0.5 ** GAMMA * math.log(0.5)  # 0.0625 ln 2
    expected = [
        [positive, _focal_negative(0.25)],
        [_focal_negative(0.8), _focal_negative(0.25)],
        [0.1 * _mirrored(0.8), 0.1 * _focal_negative(0.25)],
        [0.1 * _focal_negative(0.25), 0.1 * _focal_negative(0.25)],
        [0.1 * _focal_negative(0.5), 0.1 * _focal_negative(0.25)],  # p_t == t: the focal branch
    ]
    torch.testing.assert_close(got, torch.tensor(expected, dtype=torch.float64), rtol=1e-12, atol=0)
    assert expected[0][0] == pytest.approx(0.0625 * math.log(2))
    assert expected[2][0] == pytest.approx(0.1 * 0.75 * 0.04 * -math.log(0.8))  # 6.694e-4


def test_mirrored_branch_pushes_a_confident_confusion_anchor_up() -> None:
    logit = torch.tensor([[_logit(0.9)]], requires_grad=True)
    recalibrated_negative_loss(logit, t=0.5).sum().backward()
    assert logit.grad is not None and float(logit.grad) < 0  # gradient descent raises the score
    focal = torch.tensor([[_logit(0.9)]], requires_grad=True)
    sigmoid_focal_loss(focal, torch.zeros_like(focal)).sum().backward()
    assert focal.grad is not None and float(focal.grad) > 0  # the focal loss would suppress it


@pytest.mark.parametrize("seed", range(5))
def test_t_zero_and_weight_one_is_the_focal_loss_exactly(seed: int) -> None:
    generator = torch.Generator().manual_seed(seed)
    logits = torch.randn(300, 4, generator=generator) * 4
    targets = torch.zeros_like(logits)
    positive = torch.rand(300, generator=generator) < 0.2
    targets[positive, torch.randint(0, 4, (int(positive.sum()),), generator=generator)] = 1.0
    confusion = ~positive & (torch.rand(300, generator=generator) < 0.7)
    focal = sigmoid_focal_loss(logits, targets)
    assert torch.equal(background_recalibration_loss(logits, targets, confusion, t=0.0, weight=1.0), focal)
    assert torch.equal(recalibrated_negative_loss(logits, t=0.0), sigmoid_focal_loss(logits, torch.zeros_like(logits)))
    # weight w with t = 0: the confusion rows are w x the focal loss, the others unchanged.
    scaled = background_recalibration_loss(logits, targets, confusion, t=0.0, weight=0.1)
    assert torch.equal(scaled[~confusion], focal[~confusion])
    torch.testing.assert_close(scaled[confusion], 0.1 * focal[confusion], rtol=0, atol=0)


@pytest.mark.parametrize("seed", range(5))
def test_randomized_recalibration_matches_the_formula(seed: int) -> None:
    generator = torch.Generator().manual_seed(seed)
    t = float(torch.rand((), generator=generator))
    logits = torch.randn(500, 3, generator=generator, dtype=torch.float64) * 3
    p = torch.sigmoid(logits)
    formula = torch.where(p > 1 - t, -(1 - ALPHA) * (1 - p) ** GAMMA * torch.log(p),
                          -(1 - ALPHA) * p ** GAMMA * torch.log(1 - p))
    torch.testing.assert_close(recalibrated_negative_loss(logits, t=t), formula, rtol=1e-10, atol=1e-12)
    assert bool((p > 1 - t).any()) and bool((p <= 1 - t).any())  # both branches exercised


def test_t_one_mirrors_every_confusion_score() -> None:
    logits = torch.linspace(-6, 6, 25)[:, None]
    mirrored = sigmoid_focal_loss(logits, torch.ones_like(logits), alpha=1 - ALPHA)
    torch.testing.assert_close(recalibrated_negative_loss(logits, t=1.0), mirrored, rtol=0, atol=0)


def test_assign_anchors_on_each_class_and_configurable_thresholds() -> None:
    # Box 0 overlaps anchors 0-3 at 0.7, 0.45, 0.2, 0.05; box 1's best anchor (4) has IoU 0.08 only,
    # and is a positive by RetinaNet's low-quality match, not a confusion anchor.
    iou = torch.tensor([[0.7, 0.45, 0.2, 0.05, 0.0, 0.0], [0.0, 0.0, 0.0, 0.0, 0.08, 0.02]])
    codes = assign_anchors(iou, pos_iou=0.5, neg_iou=0.4, confusion_iou=0.1)
    assert codes.tolist() == [0, IGNORED, NEGATIVE, CONFUSION, 1, CONFUSION]
    wider = assign_anchors(iou, pos_iou=0.6, neg_iou=0.3, confusion_iou=0.25)
    assert wider.tolist() == [0, IGNORED, CONFUSION, CONFUSION, 1, CONFUSION]
    off = assign_anchors(iou, pos_iou=0.5, neg_iou=0.4, confusion_iou=0.0)  # no confusion anchor at all
    assert off.tolist() == [0, IGNORED, NEGATIVE, NEGATIVE, 1, NEGATIVE]


def test_an_image_without_boxes_has_only_confusion_anchors() -> None:
    empty = torch.zeros((0, 7))
    assert assign_anchors(empty, pos_iou=0.5, neg_iou=0.4, confusion_iou=0.1).tolist() == [CONFUSION] * 7
    assert assign_anchors(empty, pos_iou=0.5, neg_iou=0.4, confusion_iou=0.0).tolist() == [NEGATIVE] * 7
    assert assign_anchors(torch.zeros((0, 0)), pos_iou=0.5, neg_iou=0.4, confusion_iou=0.1,
                          num_anchors=3).tolist() == [CONFUSION] * 3


def test_errors() -> None:
    logits = torch.zeros(2, 3)
    with pytest.raises(ValueError, match=r"expects shapes \(A, K\), \(A, K\), \(A,\); got \(2, 3\), \(2, 2\), \(2,\)\."):
        background_recalibration_loss(logits, torch.zeros(2, 2), torch.zeros(2, dtype=torch.bool), t=0.5, weight=0.1)
    targets = torch.zeros(2, 3)
    targets[1, 2] = 1.0
    with pytest.raises(ValueError, match=r"marks anchor 1, which has a positive target; confusion anchors are background"):
        background_recalibration_loss(logits, targets, torch.tensor([False, True]), t=0.5, weight=0.1)
    with pytest.raises(ValueError, match=r"assign_anchors\(iou=\) expects a \(M, A\) matrix; got shape \(3,\)\."):
        assign_anchors(torch.zeros(3), pos_iou=0.5, neg_iou=0.4, confusion_iou=0.1)
    with pytest.raises(ValueError, match=r"BRLParams\(t=\) expects a value in \[0, 1\]; got 1\.5\."):
        BRLParams(t=1.5)
    with pytest.raises(ValueError, match=r"BRLParams\(weight=\) expects a value >= 0; got -0\.1\."):
        BRLParams(weight=-0.1)
    with pytest.raises(ValueError, match=r"expects 0 <= confusion_iou <= neg_iou <= pos_iou <= 1, pos_iou > 0; "
                                         r"got 0\.1, 0\.6, 0\.5\."):
        BRLParams(neg_iou=0.6)
