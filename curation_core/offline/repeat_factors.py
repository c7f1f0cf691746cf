"""Class balancing by repeat factors (LVIS, Gupta et al., arXiv 1908.03195, Sec. 4).

An image that holds a rare category is repeated more often within an epoch. With ``t`` the threshold
and ``f(c)`` the fraction of the training images that contain category ``c``:

1. ``f(c) = |{images containing c}| / |images|`` (images without boxes count in the denominator);
2. category repeat factor ``r(c) = max(1, sqrt(t / f(c)))``;
3. image repeat factor ``r(I) = max over the categories c in I of r(c)``, and ``r(I) = 1`` for an
   image without boxes.

Fractional factors are rounded stochastically per epoch (``stochastic_round``): an image of factor
2.3 is drawn 2 times in 70 % of the epochs and 3 times in 30 %, so its expected count is 2.3.
Crowd annotations (``iscrowd = 1``) are not training targets and do not count. A category that no
image contains has no factor (it is absent from the result). As detectron2's
``RepeatFactorTrainingSampler`` does, this module only computes the factors; the seeded,
resumable stream that uses them is ``curation_core.engine.data.TrainBatchSampler``.
"""

from __future__ import annotations

import math

import numpy as np

from curation_core.coco import CocoDataset


def category_frequencies(dataset: CocoDataset) -> dict[int, float]:
    """``f(c)``: the fraction of images of ``dataset`` holding at least one non-crowd box of ``c``.

    Returns ``{category id: f(c)}`` for the categories present in at least one image (file order of
    the categories); an empty dict for a data set without images.
    """
    if not dataset.images:
        return {}
    images_with: dict[int, set[int]] = {}
    for ann in dataset.annotations:
        if not ann["iscrowd"]:
            images_with.setdefault(ann["category_id"], set()).add(ann["image_id"])
    n = len(dataset.images)
    return {cid: len(images_with[cid]) / n for cid in dataset.category_ids if cid in images_with}


def category_repeat_factors(dataset: CocoDataset, *, threshold: float) -> dict[int, float]:
    """``r(c) = max(1, sqrt(t / f(c)))`` for every category present in ``dataset``.

    Parameters
    ----------
    dataset : validated COCO data.
    threshold : ``t`` in (0, 1]: categories in fewer than this fraction of the images are repeated.

    Raises
    ------
    ValueError
        ``threshold`` outside (0, 1].
    """
    if not (isinstance(threshold, int | float) and 0.0 < threshold <= 1.0):
        raise ValueError(f"category_repeat_factors(threshold=) expects a number in (0, 1]; got {threshold!r}.")
    # 1. f(c), 2. r(c) = max(1, sqrt(t / f(c)))
    return {cid: max(1.0, math.sqrt(threshold / f)) for cid, f in category_frequencies(dataset).items()}


def image_repeat_factors(dataset: CocoDataset, *, threshold: float) -> np.ndarray:
    """``r(I)`` of every image, float64 (N,) in the file order of ``dataset.images``; all >= 1.

    See ``category_repeat_factors`` for ``threshold``.
    """
    factors = category_repeat_factors(dataset, threshold=threshold)
    by_image = dataset.annotations_by_image
    out = np.ones(len(dataset.images), dtype=np.float64)
    for index, image in enumerate(dataset.images):
        # 3. r(I) = max_{c in I} r(c); 1 for an image without (non-crowd) boxes
        present = [factors[a["category_id"]] for a in by_image[image["id"]] if not a["iscrowd"]]
        out[index] = max(present, default=1.0)
    return out


def stochastic_round(weights: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Round each weight to one of its two neighbouring integers, up with probability ``w - floor(w)``.

    Parameters
    ----------
    weights : float (N,), finite, >= 0 (a weight of 0 always gives 0).
    rng : draws exactly N uniforms, in index order.

    Returns
    -------
    int64 (N,) with expectation ``weights``.
    """
    w = np.asarray(weights, dtype=np.float64)
    if w.ndim != 1 or not np.all(np.isfinite(w)) or np.any(w < 0):
        raise ValueError(f"stochastic_round(weights=) expects a 1-d array of finite numbers >= 0; got shape "
                         f"{w.shape}, min {np.min(w) if w.size else None}.")
    base = np.floor(w)
    return (base + (rng.random(w.size) < (w - base))).astype(np.int64)
