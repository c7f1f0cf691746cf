"""Offline balancing of a training set: repeat factors, duplicates removed, a diversity subset; a manifest.

``balance_dataset`` chains, in this order, what ``detcurate balance`` does:

1. LVIS repeat factors (``repeat_factors``): the sampling weight of every image;
2. exact duplicates (``dedup.pixel_hash`` of the decoded pixels; needs ``image_root``): dropped;
3. near-duplicates (``dedup.near_duplicates`` on embeddings within ``near_threshold``): dropped;
4. a diversity subset (``diversity.k_center_greedy`` on embeddings) of ``budget`` images: the rest dropped.

Embeddings (steps 3 and 4) come from a detector's backbone (``embeddings.backbone_embeddings``, with
``detector`` and ``image_root``) or from its detections (``embeddings.detection_embeddings``); without
either, steps 3 and 4 are skipped (and ``budget`` is an error). In each duplicate group the image with
the most annotations is kept. A dropped image has weight 0; every image carries its reasons.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Any

import numpy as np

from curation_core.coco import CocoDataset
from curation_core.errors import ConfigError
from curation_core.offline.dedup import exact_duplicates, near_duplicates, pixel_hash
from curation_core.offline.diversity import k_center_greedy
from curation_core.offline.manifest import Manifest, build_manifest
from curation_core.offline.repeat_factors import (
    category_frequencies,
    category_repeat_factors,
    image_repeat_factors,
)
from curation_core.progress import ProgressFn, track


def balance_dataset(dataset: CocoDataset, *, threshold: float, image_root: str | os.PathLike[str] | None = None,
                    detector: Any = None, detections: Sequence[dict[str, Any]] | None = None,
                    near_threshold: float = 0.0, budget: int | None = None,
                    progress: ProgressFn | None = None) -> Manifest:
    """The curation manifest of ``dataset`` (see the module docstring).

    Parameters
    ----------
    threshold : repeat-factor threshold ``t`` in (0, 1].
    image_root : image folder; enables exact deduplication (and backbone embeddings).
    detector : ``curation_core.engine.predict.LoadedDetector`` whose backbone embeds the images.
    detections : COCO results (validated) used as embeddings when no detector is given.
    near_threshold : cosine distance of near-duplicates, in [0, 2]; 0 turns the step off.
    budget : size of the diversity subset (``None``: keep every image left).

    Raises
    ------
    ConfigError
        Contradicting or incomplete options (``detector`` and ``detections`` together, a detector
        without ``image_root``, ``budget`` or ``near_threshold`` without embeddings, ``budget < 1``).
    """
    _check_options(image_root, detector, detections, near_threshold, budget)
    factors = image_repeat_factors(dataset, threshold=threshold)
    reasons = _factor_reasons(dataset, threshold, factors)
    keep = np.ones(len(dataset.images), dtype=bool)
    priority = [sum(not a["iscrowd"] for a in dataset.annotations_by_image[img["id"]]) for img in dataset.images]
    ids = [img["id"] for img in dataset.images]
    if image_root is not None:
        from curation_core.engine.data import load_image

        hashes = [pixel_hash(load_image(os.path.join(image_root, img["file_name"])))
                  for img in track(progress, dataset.images, total=len(dataset.images), description="hashing")]
        for dup in exact_duplicates(hashes, priority=priority):
            keep[dup.index] = False
            reasons[dup.index].append(f"exact duplicate of image {ids[dup.of]} (same decoded pixels)")
    embeddings = _embeddings(dataset, image_root, detector, detections, progress)
    if embeddings is not None and near_threshold > 0:
        alive = np.flatnonzero(keep)
        for dup in near_duplicates(embeddings[alive], threshold=near_threshold,
                                   priority=[priority[i] for i in alive]):
            index, of = int(alive[dup.index]), int(alive[dup.of])
            keep[index] = False
            reasons[index].append(f"near duplicate of image {ids[of]} (cosine distance {dup.distance:.4f})")
    if budget is not None and embeddings is not None:
        alive = np.flatnonzero(keep)
        chosen = set(alive[k_center_greedy(embeddings[alive], budget)].tolist())
        for index in alive:
            if int(index) not in chosen:
                keep[index] = False
                reasons[index].append(f"outside the diversity subset (k-center greedy, budget {budget})")
    weights = np.where(keep, factors, 0.0)
    parameters = {"threshold": threshold, "exact_dedup": image_root is not None, "near_threshold": near_threshold,
                  "budget": budget, "embeddings": None if embeddings is None else
                  ("backbone" if detector is not None else "detections")}
    summary = {"images": len(ids), "kept": int(keep.sum()), "dropped": int((~keep).sum()),
               "repeated": int(np.sum(keep & (factors > 1))),
               "expected_images_per_epoch": float(weights.sum()),
               "category_repeat_factors": {str(c): r for c, r in category_repeat_factors(dataset, threshold=threshold).items()},
               "category_frequencies": {str(c): f for c, f in category_frequencies(dataset).items()}}
    return build_manifest(dataset, weights, reasons, parameters=parameters, summary=summary)


def _check_options(image_root: Any, detector: Any, detections: Any, near_threshold: float, budget: int | None) -> None:
    if detector is not None and detections is not None:
        raise ConfigError("balance_dataset(detector=, detections=) takes one source of embeddings; got both.")
    if detector is not None and image_root is None:
        raise ConfigError("balance_dataset(detector=) embeds the images and needs image_root= (--images).")
    has_embeddings = detector is not None or detections is not None
    if not 0.0 <= near_threshold <= 2.0:
        raise ConfigError(f"balance_dataset(near_threshold=) expects a cosine distance in [0, 2]; got {near_threshold!r}.")
    if near_threshold > 0 and not has_embeddings:
        raise ConfigError("balance_dataset(near_threshold=) needs embeddings: give a checkpoint or predictions.")
    if budget is not None and (budget < 1 or not has_embeddings):
        raise ConfigError(f"balance_dataset(budget=) expects an integer >= 1 and embeddings (a checkpoint or "
                          f"predictions); got budget={budget!r}" + ("" if has_embeddings else " without embeddings") + ".")


def _embeddings(dataset: CocoDataset, image_root: Any, detector: Any, detections: Any,
                progress: ProgressFn | None) -> np.ndarray | None:
    from curation_core.offline.embeddings import backbone_embeddings, detection_embeddings

    if detector is not None:
        return backbone_embeddings(detector, dataset, image_root, progress=progress)
    if detections is not None:
        return detection_embeddings(dataset, detections)
    return None


def _factor_reasons(dataset: CocoDataset, threshold: float, factors: np.ndarray) -> list[list[str]]:
    """"repeat factor r from category 'name' (f = ...)" for images repeated more than once per epoch."""
    per_category = category_repeat_factors(dataset, threshold=threshold)
    frequency = category_frequencies(dataset)
    names = {c["id"]: c["name"] for c in dataset.categories}
    out: list[list[str]] = []
    for img, r in zip(dataset.images, factors.tolist(), strict=True):
        if r <= 1.0:
            out.append([])
            continue
        present = {a["category_id"] for a in dataset.annotations_by_image[img["id"]] if not a["iscrowd"]}
        rarest = max(present, key=lambda c: (per_category[c], -c))
        out.append([f"repeat factor {r:.3f} from category {names[rarest]!r} (f = {frequency[rarest]:.4f})"])
    return out
