"""Libra R-CNN's balanced sampling of RoI training samples (Pang et al., arXiv 1904.02701, Sec. 3.1).

Random sampling draws most negatives from the large mass of easy, low-IoU proposals. Libra R-CNN:

- ``sample_iou_balanced``: IoU-balanced negatives. The negatives' IoU range is split into ``num_bins``
  equal bins and ``N / num_bins`` negatives are drawn at random from each; a bin with fewer
  candidates gives all it has and the shortfall is drawn at random from the rest. Optionally a
  ``floor_fraction`` of N is drawn at random from the negatives below ``floor_thr`` (very low IoU),
  the rest IoU-balanced from those above.
- ``sample_instance_balanced``: instance-balanced positives. Each ground-truth object gets an equal
  share of the N positives (about N / #objects); an object with fewer positives gives all it has and
  its unused share goes to the others, one extra sample to each of randomly chosen objects.

Both return exactly ``min(available, requested)`` distinct indices, drawn with the
``torch.Generator`` passed in (never the global random state).

The bin range (``bin_range``): ``"negatives"`` (default) spans the IoUs of the negatives being
balanced (those at or above the floor), from the lowest to the highest, so the end bins always hold
candidates. ``"mmdetection"`` reproduces mmdetection's ``IoUBalancedNegSampler``: from the floor (0
without one) to the largest IoU over *all* proposals of the image (``max_iou``; with ground-truth
boxes appended as proposals this is 1.0). Negatives lie below the background threshold (0.5), so with
3 bins the top bin [0.67, 1.0) is always empty and its share is filled at random, and sampling drifts
towards random (mmdetection issue 5323). ``benchmarks/bench_sampling.py`` shows the histograms.
"""

from __future__ import annotations

from typing import Literal

import torch
from torch import Tensor

BinRange = Literal["negatives", "mmdetection"]
#: Libra R-CNN's number of IoU bins.
DEFAULT_BINS = 3


def sample_iou_balanced(ious: Tensor, num: int, *, generator: torch.Generator, num_bins: int = DEFAULT_BINS,
                        floor_thr: float | None = None, floor_fraction: float = 0.0,
                        bin_range: BinRange = "negatives", max_iou: float | None = None) -> Tensor:
    """IoU-balanced choice of ``min(len(ious), num)`` negatives.

    Parameters
    ----------
    ious : Tensor (n,), float
        Each candidate negative's largest IoU with a ground-truth box of its image, in [0, 1).
    num : int >= 0
        Negatives wanted.
    generator : torch.Generator
        Source of every random draw (on the CPU).
    num_bins : int >= 1
        IoU bins; 1 is random sampling.
    floor_thr : float in [0, 1), optional
        Negatives with IoU below it (with IoU exactly 0 when it is 0) form the floor set, sampled at
        random; None: no floor set.
    floor_fraction : float in [0, 1]
        Fraction of ``num`` drawn from the floor set (requires ``floor_thr``).
    bin_range : "negatives" or "mmdetection"
        See the module docstring.
    max_iou : float, optional
        ``bin_range="mmdetection"``: the largest IoU over all proposals of the image (required there).

    Returns
    -------
    Tensor (min(n, num),), int64
        Distinct indices into ``ious``, in no particular order.
    """
    _check_iou_args(ious, num, num_bins, floor_thr, floor_fraction, bin_range, max_iou)
    n = len(ious)
    if n <= num:
        return torch.arange(n, device=ious.device)
    ious_cpu = ious.detach().float().cpu()
    floor = torch.zeros(n, dtype=torch.bool)
    if floor_thr is not None:
        floor = ious_cpu == 0 if floor_thr == 0 else ious_cpu < floor_thr
    balanced_pool = torch.where(~floor)[0]
    num_balanced = min(len(balanced_pool), int(num * (1.0 - floor_fraction)))
    if bin_range == "negatives":
        values = ious_cpu[balanced_pool]
        low = float(values.min()) if len(values) else 0.0
        high = float(values.max()) if len(values) else low
    else:
        low, high = float(floor_thr or 0.0), float(max_iou)  # type: ignore[arg-type]  # checked above
    chosen = _balanced(ious_cpu, balanced_pool, num_balanced, num_bins, low, high, generator)
    # The floor set, then anything left, at random until ``num``.
    taken = torch.zeros(n, dtype=torch.bool)
    taken[chosen] = True
    floor_pick = _random_subset(torch.where(floor & ~taken)[0], num - len(chosen), generator)
    taken[floor_pick] = True
    rest = _random_subset(torch.where(~taken)[0], num - len(chosen) - len(floor_pick), generator)
    return torch.cat([chosen, floor_pick, rest]).to(ious.device)


def sample_instance_balanced(objects: Tensor, num: int, *, generator: torch.Generator) -> Tensor:
    """Instance-balanced choice of ``min(len(objects), num)`` positives.

    Parameters
    ----------
    objects : Tensor (n,), int64
        The ground-truth object each candidate positive is assigned to.
    num : int >= 0
        Positives wanted.
    generator : torch.Generator
        Source of every random draw.

    Returns
    -------
    Tensor (min(n, num),), int64
        Distinct indices into ``objects``. Object g receives ``min(c_g, q)`` or ``q + 1`` samples, c_g
        its candidates and q the largest equal share that fits: ``sum_g min(c_g, q) <= num``.
    """
    if objects.dim() != 1:
        raise ValueError(f"sample_instance_balanced(objects=) expects a 1-D tensor; got shape {tuple(objects.shape)}.")
    if num < 0:
        raise ValueError(f"sample_instance_balanced(num=) expects an integer >= 0; got {num}.")
    n = len(objects)
    if n <= num:
        return torch.arange(n, device=objects.device)
    ids = torch.unique(objects.detach().cpu(), return_inverse=True)[1]
    counts = torch.bincount(ids)
    quota = _water_level(counts, num)
    share = torch.minimum(counts, torch.full_like(counts, quota))
    extra = num - int(share.sum())  # < number of objects with more than ``quota`` candidates
    open_objects = torch.where(counts > quota)[0]
    share[open_objects[torch.randperm(len(open_objects), generator=generator)[:extra]]] += 1
    picks = [_random_subset(torch.where(ids == g)[0], int(k), generator) for g, k in enumerate(share.tolist())]
    return torch.cat(picks).to(objects.device)


def _water_level(counts: Tensor, num: int) -> int:
    """Largest q with sum(min(counts, q)) <= num (counts > 0, num < counts.sum())."""
    low, high = 0, int(counts.max())
    while low < high:  # binary search on the monotone sum
        mid = (low + high + 1) // 2
        if int(torch.minimum(counts, torch.full_like(counts, mid)).sum()) <= num:
            low = mid
        else:
            high = mid - 1
    return low


def _balanced(ious: Tensor, pool: Tensor, num: int, num_bins: int, low: float, high: float,
              generator: torch.Generator) -> Tensor:
    """``num`` indices from ``pool``: ``num // num_bins`` at random from each IoU bin, the rest at random."""
    if num <= 0:
        return torch.zeros(0, dtype=torch.int64)
    per_bin = num // num_bins
    width = (high - low) / num_bins
    values = ious[pool]
    # Bin of each candidate; the top edge belongs to the last bin. Values outside [low, high] are in no bin.
    index = torch.floor((values - low) / width).long() if width > 0 else torch.zeros(len(pool), dtype=torch.int64)
    index = torch.where(values == high, torch.full_like(index, num_bins - 1), index)
    index = torch.where((values < low) | (values > high), torch.full_like(index, -1), index)
    chosen = [_random_subset(pool[index == b], per_bin, generator) for b in range(num_bins)]
    picked = torch.cat(chosen)
    left = torch.ones(len(ious), dtype=torch.bool)
    left[picked] = False
    remaining = pool[left[pool]]
    return torch.cat([picked, _random_subset(remaining, num - len(picked), generator)])


def _random_subset(indices: Tensor, k: int, generator: torch.Generator) -> Tensor:
    """``min(len(indices), k)`` of ``indices`` at random (all of them, shuffled, when k >= len)."""
    k = max(0, min(k, len(indices)))
    return indices[torch.randperm(len(indices), generator=generator)[:k]]


def _check_iou_args(ious: Tensor, num: int, num_bins: int, floor_thr: float | None, floor_fraction: float,
                    bin_range: str, max_iou: float | None) -> None:
    name = "sample_iou_balanced"
    if ious.dim() != 1:
        raise ValueError(f"{name}(ious=) expects a 1-D tensor; got shape {tuple(ious.shape)}.")
    if num < 0 or num_bins < 1:
        raise ValueError(f"{name}(num=, num_bins=) expect num >= 0 and num_bins >= 1; got {num}, {num_bins}.")
    if floor_thr is not None and not 0.0 <= floor_thr < 1.0:
        raise ValueError(f"{name}(floor_thr=) expects None or a value in [0, 1); got {floor_thr}.")
    if not 0.0 <= floor_fraction <= 1.0 or (floor_fraction > 0 and floor_thr is None):
        raise ValueError(f"{name}(floor_fraction=) expects a value in [0, 1], and 0 without floor_thr; "
                         f"got {floor_fraction} with floor_thr={floor_thr}.")
    if bin_range not in ("negatives", "mmdetection"):
        raise ValueError(f"{name}(bin_range=) expects 'negatives' or 'mmdetection'; got {bin_range!r}.")
    if bin_range == "mmdetection" and max_iou is None:
        raise ValueError(f"{name}(max_iou=) is required with bin_range='mmdetection'; got None.")
