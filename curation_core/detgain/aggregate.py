"""From per-(image, category) AP changes to per-image changes of the dataset mAP.

COCO's mAP is the mean, over the categories that have at least one non-ignored ground-truth box, of the
category AP (itself the mean over IoU thresholds). Adding or removing one image changes the AP of the
categories it touches only, and may add a category to the mean (the image brings its first ground
truth) or drop one (the image held its only ground truth). A set without any ground truth has no mAP
in pycocotools (it reports -1); DetGain counts it as 0 so that the gain of the first informative image
is its own mAP.
"""

from __future__ import annotations

import numpy as np


def mean_ap(category_ap: np.ndarray) -> float:
    """mAP over the categories with ground truth (finite entries of ``category_ap``); 0 if none."""
    finite = np.isfinite(category_ap)
    return float(category_ap[finite].mean()) if finite.any() else 0.0


def image_map_changes(
    category_ap: np.ndarray,
    job_image: np.ndarray,
    job_category: np.ndarray,
    job_category_ap: np.ndarray,
    num_images: int,
) -> np.ndarray:
    """mAP after replacing, for each image separately, the AP of the categories it touches.

    Parameters
    ----------
    category_ap : (K,) float64, AP of every category of the base set D; NaN = no ground truth in D.
    job_image, job_category : (J,) int64, the (image, category) pairs touched; each pair at most once.
        ``job_category`` indexes ``category_ap``.
    job_category_ap : (J,) float64, the category AP after the change; NaN = no ground truth left.
    num_images : number of images (``job_image`` < num_images).

    Returns
    -------
    (num_images,) float64: for image i, mAP(D changed by image i) - mAP(D).
    """
    base = np.isfinite(category_ap)
    base_sum, base_count = float(category_ap[base].sum()), int(base.sum())
    old = category_ap[job_category]
    old_in = np.isfinite(old)
    new_in = np.isfinite(job_category_ap)
    diff = np.where(new_in, job_category_ap, 0.0) - np.where(old_in, old, 0.0)
    sum_change = np.bincount(job_image, weights=diff, minlength=num_images)
    count_change = np.bincount(job_image, weights=new_in.astype(np.float64) - old_in, minlength=num_images)
    count = base_count + count_change
    base_map = base_sum / base_count if base_count else 0.0
    with np.errstate(invalid="ignore", divide="ignore"):
        new_map = np.where(count > 0, (base_sum + sum_change) / np.maximum(count, 1), 0.0)
        # Same category set: the change is the summed AP change over the count (no cancellation).
        same = count_change == 0
        out = np.where(same & (count > 0), sum_change / np.maximum(count, 1), new_map - base_map)
    return out


class APSummary:
    """Mixin of the exact and envelope indexes: D's AP from their ``ap`` (K, T) array."""

    ap: np.ndarray

    @property
    def num_thresholds(self) -> int:
        return int(self.ap.shape[1])

    @property
    def category_ap(self) -> np.ndarray:
        """(K,) float64, AP averaged over IoU thresholds; NaN for a category without ground truth."""
        return self.ap.mean(axis=1)

    @property
    def mean_ap(self) -> float:
        """pycocotools' ``stats[0]`` of D (0 instead of -1 when D has no ground truth)."""
        return mean_ap(self.category_ap)
