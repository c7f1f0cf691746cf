"""Random detector-like predictions for testing and benchmarking the DetGain estimators.

Two generators with the same model of a detector: every category has a quality q in [0.3, 1]; a
ground-truth box is found with probability ``recall * q`` by a detection whose IoU shrinks and whose
score (Beta-distributed) drops as q falls, found boxes are sometimes detected twice (a duplicate that is a
false positive), and every image gets Poisson many background false positives at low scores.

- ``synthetic_coco`` draws boxes: a COCO ground truth and a COCO results list (xywh, absolute pixels)
  that go through ``matching.match_dataset`` and pycocotools like real files.
- ``synthetic_matches`` draws ``DatasetMatches`` directly (IoU per detection, no boxes): millions of
  detections in seconds, for speed benchmarks.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from curation_core.evaluation import COCO_IOU_THRESHOLDS
from curation_core.matching import DatasetMatches


def synthetic_coco(seed: int, *, n_images: int = 200, n_categories: int = 10, boxes_per_image: float = 4.0,
                   recall: float = 0.7, false_per_image: float = 6.0, crowd_fraction: float = 0.02,
                   image_size: int = 256) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """A random COCO ground truth (dict) and detections (list of dict, xywh pixels, score in [0, 1])."""
    rng = np.random.default_rng(seed)
    size = image_size
    cat_p = rng.dirichlet(np.full(n_categories, 0.7))
    quality = rng.uniform(0.3, 1.0, n_categories)
    images = [{"id": i + 1, "width": size, "height": size, "file_name": f"{i + 1:06d}.png"} for i in range(n_images)]
    anns: list[dict[str, Any]] = []
    dets: list[dict[str, Any]] = []

    def box() -> list[float]:
        w, h = rng.uniform(8, size / 3, 2)
        return [float(rng.uniform(0, size - w)), float(rng.uniform(0, size - h)), float(w), float(h)]

    for img in images:
        for _ in range(rng.poisson(boxes_per_image)):
            c = int(rng.choice(n_categories, p=cat_p))
            x, y, w, h = box()
            anns.append({"id": len(anns) + 1, "image_id": img["id"], "category_id": c + 1, "bbox": [x, y, w, h],
                         "area": w * h, "iscrowd": int(rng.random() < crowd_fraction)})
            if rng.random() < recall * quality[c]:
                j = rng.normal(0, 0.08 * (1.3 - quality[c]), 4) * np.array([w, h, w, h])
                found = [float(np.clip(x + j[0], 0, size - 2)), float(np.clip(y + j[1], 0, size - 2)),
                         float(max(w + j[2], 2.0)), float(max(h + j[3], 2.0))]
                dets.append({"image_id": img["id"], "category_id": c + 1, "bbox": found,
                             "score": float(rng.beta(2 + 3 * quality[c], 2))})
                if rng.random() < 0.2:
                    dets.append(dict(dets[-1], score=float(rng.beta(2, 3))))
        for _ in range(rng.poisson(false_per_image)):
            dets.append({"image_id": img["id"], "category_id": int(rng.choice(n_categories, p=cat_p)) + 1,
                         "bbox": box(), "score": float(rng.beta(1.5, 4))})
    categories = [{"id": c + 1, "name": f"class{c + 1}"} for c in range(n_categories)]
    return {"images": images, "annotations": anns, "categories": categories}, dets


def synthetic_matches(seed: int, *, n_images: int, n_categories: int, dets_per_image: int = 100,
                      boxes_per_image: float = 7.0, recall: float = 0.8, first_image_id: int = 1,
                      iou_thresholds: np.ndarray = COCO_IOU_THRESHOLDS) -> DatasetMatches:
    """``DatasetMatches`` of ``n_images`` images with exactly ``dets_per_image`` detections each.

    Each image has Poisson(``boxes_per_image``) boxes; a box is hit with probability ``recall * q`` by
    one detection with IoU ~ Beta (true positive at every threshold <= IoU); the remaining detections are
    false positives. Scores: hits Beta(2 + 3q, 2), false positives Beta(1.5, 4).
    """
    rng = np.random.default_rng(seed)
    n_t = len(iou_thresholds)
    quality = rng.uniform(0.3, 1.0, n_categories)
    cat_p = rng.dirichlet(np.full(n_categories, 0.7))
    n_box = rng.poisson(boxes_per_image, n_images)
    box_image = np.repeat(np.arange(n_images), n_box)
    box_cat = rng.choice(n_categories, box_image.size, p=cat_p)
    hit = rng.random(box_image.size) < recall * quality[box_cat]
    # At most dets_per_image hits per image: drop the excess (rare).
    per_image_rank = np.arange(box_image.size) - np.searchsorted(box_image, box_image)
    hit &= per_image_rank < dets_per_image
    n_hit = np.bincount(box_image[hit], minlength=n_images)
    n_fp = dets_per_image - n_hit
    det_image = np.concatenate([box_image[hit], np.repeat(np.arange(n_images), n_fp)])
    det_cat = np.concatenate([box_cat[hit], rng.choice(n_categories, int(n_fp.sum()), p=cat_p)])
    q = quality[box_cat[hit]]
    iou = np.concatenate([1.0 - rng.beta(2, 8 + 20 * q), np.zeros(int(n_fp.sum()))])
    score = np.concatenate([rng.beta(2 + 3 * q, 2), rng.beta(1.5, 4, int(n_fp.sum()))])
    tp = iou[:, None] >= np.asarray(iou_thresholds)[None, :]
    order = np.lexsort((-score, det_image, det_cat))  # (category, image, score desc) like match_dataset
    det_image, det_cat, score, tp = det_image[order], det_cat[order], score[order], tp[order]
    group = det_cat * n_images + det_image
    rank = np.arange(group.size) - np.searchsorted(group, group)
    gt_count = np.zeros((n_images, n_categories), dtype=np.int64)
    np.add.at(gt_count, (box_image, box_cat), 1)
    return DatasetMatches(
        image_ids=np.arange(first_image_id, first_image_id + n_images, dtype=np.int64),
        category_ids=np.arange(1, n_categories + 1, dtype=np.int64),
        iou_thresholds=np.asarray(iou_thresholds, dtype=np.float64), det_image=det_image.astype(np.int64),
        det_category=det_cat.astype(np.int64), det_score=score, det_rank=rank.astype(np.int64),
        det_true_positive=tp, det_ignored=np.zeros((score.size, n_t), dtype=bool), gt_count=gt_count,
    )
