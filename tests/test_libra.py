"""Libra R-CNN sampling (``samplers.libra``): exact counts, per-bin and per-instance targets, the bin range."""

from __future__ import annotations

import pytest
import torch

from curation_core.samplers.libra import sample_instance_balanced, sample_iou_balanced


def _gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def _bins(ious: torch.Tensor, low: float, high: float, k: int) -> list[int]:
    width = (high - low) / k
    index = ((ious - low) / width).floor().clamp(max=k - 1).long()
    return torch.bincount(index, minlength=k).tolist()


# ----------------------------------------------------------------------------------------------
# IoU-balanced negatives


@pytest.mark.parametrize("seed", range(20))
def test_iou_balanced_returns_exactly_min_available_requested_distinct(seed: int) -> None:
    g = torch.Generator().manual_seed(seed)
    n = int(torch.randint(0, 300, (1,), generator=g))
    num = int(torch.randint(0, 300, (1,), generator=g))
    ious = torch.rand(n, generator=g) ** 3 * 0.5  # skewed towards 0, as negatives are
    options = [{}, {"num_bins": 1}, {"num_bins": 5}, {"floor_thr": 0.1, "floor_fraction": 0.3},
               {"floor_thr": 0.0, "floor_fraction": 0.5}, {"bin_range": "mmdetection", "max_iou": 1.0}]
    for kwargs in options:
        picked = sample_iou_balanced(ious, num, generator=_gen(seed), **kwargs)
        assert len(picked) == min(n, num), kwargs
        assert len(set(picked.tolist())) == len(picked) and bool((picked >= 0).all() & (picked < max(n, 1)).all())


def test_iou_balanced_draws_n_over_k_per_bin_and_fills_a_short_bin_at_random() -> None:
    # IoUs in [0, 0.45]: bins [0, .15), [.15, .30), [.30, .45]; 300, 100 and 10 candidates.
    ious = torch.cat([torch.linspace(0.0, 0.149, 300), torch.linspace(0.15, 0.299, 100), torch.linspace(0.3, 0.45, 10)])
    picked = sample_iou_balanced(ious, 90, generator=_gen())
    counts = _bins(ious[picked], 0.0, 0.45, 3)
    # 30 per bin; the top bin has 10, so its 20 are drawn at random from the 370 left in the others.
    assert counts[2] == 10
    assert counts[0] >= 30 and counts[1] >= 30 and sum(counts) == 90
    assert counts[1] > 30 * 100 / 400  # well above random sampling's share of the middle bin


def test_iou_balanced_exact_per_bin_targets_when_every_bin_is_full() -> None:
    ious = torch.cat([torch.full((50,), 0.05), torch.full((50,), 0.2), torch.full((50,), 0.4)])
    picked = sample_iou_balanced(ious, 30, generator=_gen())
    assert _bins(ious[picked], 0.05, 0.4, 3) == [10, 10, 10]


def test_mmdetection_bin_range_leaves_the_top_bin_empty() -> None:
    # Negatives below 0.5, the largest IoU of all proposals 1.0 (gt appended): bins [0, .33), [.33, .67),
    # [.67, 1]. The top bin is empty and its third of the budget is drawn at random, mostly from the
    # mass of easy negatives; bins over the negatives' own range [0, .5) take a full third from each sixth
    # of the IoU axis. So [1/6, 1/3) gets 100 here and about 29 + 24 there (P(iou < x) = sqrt(2x)).
    g = torch.Generator().manual_seed(3)
    ious = torch.rand(2000, generator=g) ** 2 * 0.5
    ours = sample_iou_balanced(ious, 300, generator=_gen(), bin_range="negatives")
    theirs = sample_iou_balanced(ious, 300, generator=_gen(), bin_range="mmdetection", max_iou=1.0)
    middle = lambda picked: int(((ious[picked] >= 1 / 6) & (ious[picked] < 1 / 3)).sum())  # noqa: E731
    assert middle(ours) >= 95 and middle(theirs) < 75
    assert int((ious[theirs] >= 2 / 3).sum()) == 0
    high = float(ious.max())
    assert _bins(ious[ours], float(ious.min()), high, 3)[2] == 100  # our top bin is full


def test_floor_fraction_draws_from_the_floor_set() -> None:
    ious = torch.cat([torch.zeros(500), torch.linspace(0.2, 0.49, 100)])
    picked = sample_iou_balanced(ious, 100, generator=_gen(), floor_thr=0.0, floor_fraction=0.4)
    assert int((ious[picked] == 0).sum()) == 40
    # The balanced part spans the non-floor negatives' own range [0.2, 0.49]: 60 of them, 20 per bin.
    assert _bins(ious[picked][ious[picked] > 0], 0.2, 0.49, 3) == [20, 20, 20]


def test_iou_balanced_is_a_function_of_the_generator() -> None:
    ious = torch.rand(400, generator=_gen(9)) * 0.5
    a = sample_iou_balanced(ious, 50, generator=_gen(1))
    assert torch.equal(a, sample_iou_balanced(ious, 50, generator=_gen(1)))
    assert not torch.equal(a, sample_iou_balanced(ious, 50, generator=_gen(2)))


def test_iou_balanced_errors() -> None:
    with pytest.raises(ValueError, match=r"sample_iou_balanced\(max_iou=\) is required"):
        sample_iou_balanced(torch.rand(5), 2, generator=_gen(), bin_range="mmdetection")
    with pytest.raises(ValueError, match=r"sample_iou_balanced\(floor_fraction=\) expects .* 0 without floor_thr"):
        sample_iou_balanced(torch.rand(5), 2, generator=_gen(), floor_fraction=0.5)
    with pytest.raises(ValueError, match=r"sample_iou_balanced\(num=, num_bins=\) expect num >= 0"):
        sample_iou_balanced(torch.rand(5), 2, generator=_gen(), num_bins=0)
    with pytest.raises(ValueError, match=r"sample_iou_balanced\(ious=\) expects a 1-D tensor"):
        sample_iou_balanced(torch.rand(5, 2), 2, generator=_gen())


# ----------------------------------------------------------------------------------------------
# Instance-balanced positives


@pytest.mark.parametrize("seed", range(20))
def test_instance_balanced_counts_and_even_shares(seed: int) -> None:
    g = torch.Generator().manual_seed(seed)
    n = int(torch.randint(0, 200, (1,), generator=g))
    num = int(torch.randint(0, 120, (1,), generator=g))
    objects = (torch.rand(n, generator=g) ** 2 * 7).long()  # uneven object sizes
    picked = sample_instance_balanced(objects, num, generator=_gen(seed))
    assert len(picked) == min(n, num) and len(set(picked.tolist())) == len(picked)
    if n > num:
        available = torch.bincount(objects, minlength=7)
        got = torch.bincount(objects[picked], minlength=7)
        q = min(int(got[available > got].min()) if bool((available > got).any()) else num, num)
        # Every object not exhausted has q or q + 1 samples; an exhausted one has all its candidates.
        for a, c in zip(available.tolist(), got.tolist(), strict=True):
            assert c == a or c in (q, q + 1)
            assert c <= q + 1


def test_instance_balanced_hand_computed() -> None:
    # Objects with 10, 3 and 1 positives, 8 wanted: water level q = 3 (3 + 3 + 1 = 7), one extra to the
    # only object with more than 3 -> 4, 3, 1.
    objects = torch.tensor([0] * 10 + [1] * 3 + [2])
    picked = sample_instance_balanced(objects, 8, generator=_gen())
    assert torch.bincount(objects[picked], minlength=3).tolist() == [4, 3, 1]


def test_instance_balanced_one_object_and_empty() -> None:
    picked = sample_instance_balanced(torch.zeros(10, dtype=torch.long), 4, generator=_gen())
    assert len(picked) == 4
    assert sample_instance_balanced(torch.zeros(0, dtype=torch.long), 4, generator=_gen()).shape == (0,)
    with pytest.raises(ValueError, match=r"sample_instance_balanced\(num=\) expects an integer >= 0"):
        sample_instance_balanced(torch.zeros(3, dtype=torch.long), -1, generator=_gen())
