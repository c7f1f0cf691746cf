"""PISA (arXiv 1904.04821): HLR ranks (``samplers.pisa``), ISR weights and CARL (``losses.pisa``).

Hand-computed cases, randomized cases against a loop reference written from the paper's definitions,
and the properties: ISR keeps the total loss, CARL weights have mean 1, no NaN on large batches.
"""

from __future__ import annotations

import pytest
import torch
from torchvision.ops import box_iou

from curation_core.losses.pisa import ISR_N_GAMMA, ISR_P_GAMMA, carl_loss, carl_weights, isr_weights
from curation_core.samplers.pisa import iou_hlr, nms_groups, score_hlr

# ----------------------------------------------------------------------------------------------
# References: the definitions written as plain loops


def _iou_hlr_reference(ious: list[float], objects: list[int], labels: list[int]) -> list[float]:
    local = {}
    for obj in set(objects):
        members = sorted((i for i, o in enumerate(objects) if o == obj), key=lambda i: (-ious[i], i))
        local.update({i: r for r, i in enumerate(members)})
    ranks = {}
    for lab in set(labels):
        members = sorted((i for i, c in enumerate(labels) if c == lab), key=lambda i: (local[i], -ious[i], i))
        ranks.update({i: r for r, i in enumerate(members)})
    n_max = max(labels.count(c) for c in set(labels))
    return [(n_max - ranks[i]) / n_max for i in range(len(ious))]


def _greedy_groups(boxes: torch.Tensor, scores: list[float], images: list[int], thr: float) -> list[int]:
    order = sorted(range(len(scores)), key=lambda i: (-scores[i], i))
    iou = box_iou(boxes, boxes)
    leader: dict[int, int] = {}
    for i in order:
        if i in leader:
            continue
        leader[i] = i
        for j in order:
            if j not in leader and images[j] == images[i] and float(iou[i, j]) > thr:
                leader[j] = i
    return [leader[i] for i in range(len(scores))]


def _score_hlr_reference(boxes: torch.Tensor, scores: list[float], images: list[int], thr: float) -> list[float]:
    groups = _greedy_groups(boxes, scores, images, thr)
    local = {}
    for g in set(groups):
        members = sorted((i for i, h in enumerate(groups) if h == g), key=lambda i: (-scores[i], i))
        local.update({i: r for r, i in enumerate(members)})
    order = sorted(range(len(scores)), key=lambda i: (local[i], -scores[i], i))
    n = len(scores)
    ranks = {i: r for r, i in enumerate(order)}
    return [(n - ranks[i]) / n for i in range(n)]


def _random_boxes(generator: torch.Generator, n: int) -> torch.Tensor:
    xy = torch.rand(n, 2, generator=generator) * 60
    wh = 5 + torch.rand(n, 2, generator=generator) * 30
    return torch.cat([xy, xy + wh], dim=1)


# ----------------------------------------------------------------------------------------------
# IoU-HLR


def test_iou_hlr_hand_computed() -> None:
    # Class 1: object 0 has IoUs 0.9, 0.6; object 1 has 0.8, 0.7. Local ranks 0, 1, 0, 1; class order
    # (0, .9), (0, .8), (1, .7), (1, .6) -> ranks 0, 3, 1, 2; n_max = 4 -> u = (4 - r) / 4.
    # Class 2: one positive, rank 0 -> u = 1.
    u = iou_hlr(torch.tensor([0.9, 0.6, 0.8, 0.7, 0.5]), torch.tensor([0, 0, 1, 1, 2]), torch.tensor([1, 1, 1, 1, 2]))
    assert u.tolist() == pytest.approx([1.0, 0.25, 0.75, 0.5, 1.0])


def test_iou_hlr_prefers_the_best_of_every_object_over_a_second_best() -> None:
    # The second-best sample of object 0 (IoU 0.85) ranks below the best one of object 1 (IoU 0.3).
    u = iou_hlr(torch.tensor([0.9, 0.85, 0.3]), torch.tensor([0, 0, 1]), torch.tensor([1, 1, 1]))
    assert u[2] > u[1]


@pytest.mark.parametrize("seed", range(5))
def test_iou_hlr_matches_reference(seed: int) -> None:
    g = torch.Generator().manual_seed(seed)
    n = 40
    ious = torch.rand(n, generator=g).round(decimals=1)  # ties on purpose
    objects = torch.randint(0, 8, (n,), generator=g)
    labels = objects % 3 + 1
    expected = _iou_hlr_reference(ious.tolist(), objects.tolist(), labels.tolist())
    assert iou_hlr(ious, objects, labels).tolist() == pytest.approx(expected)


def test_iou_hlr_empty_and_single() -> None:
    assert iou_hlr(torch.zeros(0), torch.zeros(0, dtype=torch.long), torch.zeros(0, dtype=torch.long)).shape == (0,)
    assert iou_hlr(torch.tensor([0.4]), torch.tensor([3]), torch.tensor([2])).tolist() == [1.0]


def test_iou_hlr_rejects_mismatched_lengths() -> None:
    with pytest.raises(ValueError, match=r"iou_hlr\(\) expects 1-D tensors of one length"):
        iou_hlr(torch.rand(3), torch.zeros(2, dtype=torch.long), torch.zeros(3, dtype=torch.long))


# ----------------------------------------------------------------------------------------------
# Score-HLR


def test_score_hlr_hand_computed() -> None:
    # Boxes 0, 1 overlap (IoU 0.81), boxes 2, 3 overlap (IoU 0.9); 3 (0.95) and 0 (0.9) lead the groups.
    # Local ranks: 3 -> 0, 2 -> 1, 0 -> 0, 1 -> 1. Global: 3, 0, 1, 2 -> u = 1, .75, .5, .25.
    boxes = torch.tensor([[0, 0, 10, 10], [1, 1, 10, 10], [50, 50, 60, 60], [51, 50, 60, 60.0]])
    scores = torch.tensor([0.9, 0.8, 0.7, 0.95])
    assert nms_groups(boxes, scores, torch.zeros(4, dtype=torch.long), 0.5).tolist() == [0, 0, 3, 3]
    assert score_hlr(boxes, scores).tolist() == pytest.approx([0.75, 0.5, 0.25, 1.0])


def test_score_hlr_never_groups_across_images() -> None:
    boxes = torch.tensor([[0, 0, 10, 10], [0, 0, 10, 10.0]])
    scores = torch.tensor([0.9, 0.8])
    assert score_hlr(boxes, scores).tolist() == pytest.approx([1.0, 0.5])  # one group: 0.8 is rank 1 locally
    assert score_hlr(boxes, scores, images=torch.tensor([0, 1])).tolist() == pytest.approx([1.0, 0.5])
    assert nms_groups(boxes, scores, torch.tensor([0, 1]), 0.5).tolist() == [0, 1]


@pytest.mark.parametrize("seed", range(5))
def test_score_hlr_matches_reference(seed: int) -> None:
    g = torch.Generator().manual_seed(seed)
    n = 60
    boxes = _random_boxes(g, n)
    scores = torch.rand(n, generator=g)
    images = torch.randint(0, 2, (n,), generator=g)
    expected = _score_hlr_reference(boxes, scores.tolist(), images.tolist(), 0.5)
    assert score_hlr(boxes, scores, images=images).tolist() == pytest.approx(expected)


def test_score_hlr_empty_and_errors() -> None:
    assert score_hlr(torch.zeros(0, 4), torch.zeros(0)).shape == (0,)
    with pytest.raises(ValueError, match=r"score_hlr\(boxes=\) expects a tensor of shape \(n, 4\)"):
        score_hlr(torch.zeros(3, 5), torch.zeros(3))
    with pytest.raises(ValueError, match=r"score_hlr\(iou_threshold=\) expects a value in \[0, 1\)"):
        score_hlr(torch.zeros(1, 4), torch.zeros(1), iou_threshold=1.0)
    with pytest.raises(ValueError, match=r"score_hlr\(\) expects 1-D tensors of one length"):
        score_hlr(torch.zeros(3, 4), torch.zeros(2))


# ----------------------------------------------------------------------------------------------
# ISR


def test_isr_hand_computed() -> None:
    # u = 1, 0.5, gamma 2: raw weights 1, 0.25; losses 1, 2: weighted 1.5, total 3 -> factor 2.
    w = isr_weights(torch.tensor([1.0, 0.5]), torch.tensor([1.0, 2.0]), gamma=2.0)
    assert w.tolist() == pytest.approx([2.0, 0.5])
    # beta 0.5: raw ((0.5 u + 0.5))^1 = 1, 0.75; losses 1, 1: factor 2 / 1.75.
    w = isr_weights(torch.tensor([1.0, 0.5]), torch.tensor([1.0, 1.0]), gamma=1.0, beta=0.5)
    assert w.tolist() == pytest.approx([2 / 1.75, 0.75 * 2 / 1.75])


@pytest.mark.parametrize("gamma", [ISR_P_GAMMA, ISR_N_GAMMA, 0.0])
def test_isr_keeps_the_total_loss(gamma: float) -> None:
    g = torch.Generator().manual_seed(0)
    losses = torch.rand(200, generator=g) * 3
    ranks = torch.rand(200, generator=g)
    w = isr_weights(ranks, losses, gamma=gamma)
    assert float((w * losses).sum()) == pytest.approx(float(losses.sum()), rel=1e-5)
    assert not w.requires_grad and bool((w >= 0).all())
    if gamma == 0.0:
        assert w.tolist() == pytest.approx([1.0] * 200)


def test_isr_orders_weights_by_rank() -> None:
    ranks = torch.tensor([0.2, 1.0, 0.6])
    w = isr_weights(ranks, torch.ones(3), gamma=2.0)
    assert w[1] > w[2] > w[0]


def test_isr_zero_losses_and_empty() -> None:
    w = isr_weights(torch.tensor([1.0, 0.5]), torch.zeros(2), gamma=2.0)
    assert w.tolist() == pytest.approx([1.6, 0.4])  # raw 1, 0.25 scaled to mean 1
    assert isr_weights(torch.zeros(0), torch.zeros(0), gamma=2.0).shape == (0,)


def test_isr_errors() -> None:
    with pytest.raises(ValueError, match=r"isr_weights\(ranks=\) expects values in \[0, 1\]"):
        isr_weights(torch.tensor([1.5]), torch.ones(1), gamma=2.0)
    with pytest.raises(ValueError, match=r"isr_weights\(gamma=, beta=\) expect gamma >= 0"):
        isr_weights(torch.ones(1), torch.ones(1), gamma=-1.0)
    with pytest.raises(ValueError, match=r"isr_weights\(ranks=, losses=\) expect 1-D tensors of one shape"):
        isr_weights(torch.ones(2), torch.ones(3), gamma=2.0)


# ----------------------------------------------------------------------------------------------
# CARL


def test_carl_hand_computed() -> None:
    # p = 1, 0: raw 0.2 + 0.8 p = 1, 0.2; mean 0.6 -> weights 5/3, 1/3; losses 0.3, 0.6, normalizer 2.
    p = torch.tensor([1.0, 0.0], requires_grad=True)
    losses = torch.tensor([0.3, 0.6], requires_grad=True)
    assert carl_weights(p).tolist() == pytest.approx([5 / 3, 1 / 3])
    loss = carl_loss(p, losses, normalizer=2.0)
    assert float(loss.detach()) == pytest.approx((5 / 3 * 0.3 + 1 / 3 * 0.6) / 2)


def test_carl_gradient_reaches_the_classifier() -> None:
    logits = torch.tensor([[2.0, 0.0], [0.0, 1.0], [1.0, 1.0]], requires_grad=True)
    labels = torch.tensor([0, 1, 1])
    p = logits.softmax(-1)[torch.arange(3), labels]
    losses = torch.tensor([0.1, 2.0, 0.5])
    carl_loss(p, losses, normalizer=3.0).backward()
    assert logits.grad is not None and float(logits.grad.abs().sum()) > 0
    # A high-loss sample is pushed towards a lower probability of its class (gradient > 0 on its logit).
    assert float(logits.grad[1, 1]) > 0 and float(logits.grad[0, 0]) < 0


@pytest.mark.parametrize("k, bias", [(1.0, 0.2), (2.0, 0.0), (0.5, 0.5)])
def test_carl_weights_have_mean_one(k: float, bias: float) -> None:
    p = torch.rand(500, generator=torch.Generator().manual_seed(1))
    assert float(carl_weights(p, k=k, bias=bias).mean()) == pytest.approx(1.0, rel=1e-6)


def test_carl_large_batch_in_half_precision_stays_finite() -> None:
    # 2 million positives in fp16: a float16 sum of the weights would overflow (max 65504) to inf.
    n = 2_000_000
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(n, generator=g).half().requires_grad_()
    losses = (torch.rand(n, generator=g) * 4).half().requires_grad_()
    weights = carl_weights(logits.sigmoid())
    assert torch.isfinite(weights).all() and float(weights.detach().mean()) == pytest.approx(1.0, rel=1e-4)
    loss = carl_loss(logits.sigmoid(), losses, normalizer=float(n))
    loss.backward()
    assert torch.isfinite(loss) and torch.isfinite(logits.grad).all() and torch.isfinite(losses.grad).all()


def test_carl_leaves_out_non_finite_losses() -> None:
    p = torch.tensor([0.5, 0.5, 0.9])
    losses = torch.tensor([1.0, float("nan"), float("inf")])
    loss = carl_loss(p, losses, normalizer=1.0)
    assert float(loss) == pytest.approx(1.0)  # the one finite sample has weight 1 (mean over valid ones)
    assert carl_weights(torch.tensor([float("nan"), 0.5])).isfinite().all()


def test_carl_empty_is_zero_in_the_graph() -> None:
    p = torch.zeros(0, requires_grad=True)
    loss = carl_loss(p, torch.zeros(0), normalizer=1.0)
    assert float(loss.detach()) == 0.0 and loss.requires_grad


def test_carl_errors() -> None:
    with pytest.raises(ValueError, match=r"carl_loss\(normalizer=\) expects a value > 0"):
        carl_loss(torch.ones(1), torch.ones(1), normalizer=0.0)
    with pytest.raises(ValueError, match=r"carl_weights\(k=, bias=\) expect k > 0"):
        carl_weights(torch.ones(1), k=0.0)
    with pytest.raises(ValueError, match=r"carl_loss\(probabilities=, regression_losses=\) expect one shape"):
        carl_loss(torch.ones(2), torch.ones(3), normalizer=1.0)
