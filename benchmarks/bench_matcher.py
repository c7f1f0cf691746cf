"""Throughput of the vectorised matcher against pycocotools' per-image evaluation.

Synthetic COCO-like data: ``--images`` images (default 2000) of 640x480, 80 categories, about 7
ground-truth boxes per image, and detector-like results (jittered copies of the ground truth with the
right or a confusable class, plus background boxes) cut to the top ``D`` scores per image, for D = 100
and D = 20. Timed side by side in one run:

* ``COCOeval.evaluate()`` (``computeIoU`` + ``evaluateImg`` for every image and category) with
  ``params.areaRng`` restricted to "all", against ``match_dataset(area_range=all)``;
* the same with pycocotools' four area ranges, against four ``match_dataset`` calls;
* ``COCOeval.accumulate()`` (all areas and max-dets) against ``average_precision_from_matches``
  (one area, one max-dets: reported for scale, not as a like-for-like ratio).

Loading (``COCO()``, ``loadRes``) is outside every timing.

    python benchmarks/bench_matcher.py [--images 2000] [--quick] [--out benchmarks/results/matcher.json]
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import io
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import print_rows, write_result  # noqa: E402

from curation_core.coco import dataset_from_dict  # noqa: E402
from curation_core.evaluation import COCO_AREA_RANGES  # noqa: E402
from curation_core.matching import average_precision_from_matches, match_dataset  # noqa: E402


def make_data(n_images: int, dets_per_image: int, *, n_categories: int = 80, gt_per_image: float = 7.0,
              seed: int = 0) -> tuple[dict, list[dict]]:
    """A COCO ground truth and a results list of at most ``dets_per_image`` detections per image."""
    rng = np.random.default_rng(seed)
    size = np.array([640.0, 480.0])
    images, anns, dets = [], [], []
    for img in range(1, n_images + 1):
        images.append({"id": img, "width": 640, "height": 480, "file_name": f"{img:06d}.jpg"})
        n_gt = rng.poisson(gt_per_image)
        wh = np.exp(rng.uniform(np.log(8), np.log(300), (n_gt, 2)))
        xy = rng.uniform(0, 1, (n_gt, 2)) * (size - wh)
        gts = np.round(np.concatenate([xy, wh], axis=1), 2)
        cats = rng.integers(1, n_categories + 1, n_gt)
        for box, cat in zip(gts, cats, strict=True):
            anns.append({"id": len(anns) + 1, "image_id": img, "category_id": int(cat), "bbox": box.tolist(),
                         "area": float(box[2] * box[3]), "iscrowd": int(rng.random() < 0.01)})
        boxes, labels, scores = [], [], []
        for box, cat in zip(gts, cats, strict=True):  # about 8 candidates per object, mostly the right class
            k = rng.integers(4, 12)
            boxes.append(box + rng.normal(0, 0.12, (k, 4)) * np.r_[box[2:], box[2:]])
            labels.append(np.where(rng.random(k) < 0.6, cat, rng.integers(1, n_categories + 1, k)))
            scores.append(rng.beta(2, 2, k))
        n_bg = max(dets_per_image, 2 * dets_per_image - sum(len(b) for b in boxes))
        bg_wh = np.exp(rng.uniform(np.log(8), np.log(300), (n_bg, 2)))
        boxes.append(np.concatenate([rng.uniform(0, 1, (n_bg, 2)) * (size - bg_wh), bg_wh], axis=1))
        labels.append(rng.integers(1, n_categories + 1, n_bg))
        scores.append(rng.beta(1, 4, n_bg))
        b, c, s = np.concatenate(boxes), np.concatenate(labels), np.round(np.concatenate(scores), 3)
        b[:, 2:] = np.maximum(b[:, 2:], 1.0)
        top = np.argsort(-s, kind="stable")[:dets_per_image]  # a detector keeps its top-D boxes per image
        dets.extend({"image_id": img, "category_id": int(c[j]), "bbox": np.round(b[j], 2).tolist(), "score": float(s[j])}
                    for j in top)
    categories = [{"id": c, "name": f"class{c}"} for c in range(1, n_categories + 1)]
    return {"images": images, "annotations": anns, "categories": categories}, dets


def _best_of(repeats: int, fn: Callable[[], Any]) -> float:
    times = []
    for _ in range(repeats):
        gc.collect()
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return min(times)


def _pycocotools_evaluator(gt_dict: dict, dets: list[dict], areas: list[str]) -> Callable[[], Any]:
    """A zero-argument function that builds a fresh COCOeval (untimed) and times only ``evaluate``."""
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    with contextlib.redirect_stdout(io.StringIO()):
        coco_gt = COCO()
        coco_gt.dataset = gt_dict
        coco_gt.createIndex()
        coco_dt = coco_gt.loadRes([dict(d) for d in dets])
    labels = ["all", "small", "medium", "large"]

    def make() -> Any:
        ev = COCOeval(coco_gt, coco_dt, iouType="bbox")
        ev.params.areaRng = [ev.params.areaRng[labels.index(a)] for a in areas]
        ev.params.areaRngLbl = list(areas)
        return ev

    return make


def _time_pycocotools(make: Callable[[], Any], repeats: int) -> tuple[float, float]:
    """Best-of times of ``evaluate()`` and of ``accumulate()``."""
    best_eval = best_acc = float("inf")
    for _ in range(repeats):
        ev = make()
        with contextlib.redirect_stdout(io.StringIO()):
            best_eval = min(best_eval, _best_of(1, ev.evaluate))
            best_acc = min(best_acc, _best_of(1, ev.accumulate))
    return best_eval, best_acc


def run_case(n_images: int, dets_per_image: int, repeats_ref: int, repeats_ours: int) -> list[dict[str, Any]]:
    gt_dict, dets = make_data(n_images, dets_per_image)
    gt = dataset_from_dict(gt_dict)
    label = f"{len(gt.annotations) / n_images:.1f}/{len(dets) / n_images:.0f}"
    rows = []
    make_all = _pycocotools_evaluator(gt_dict, dets, ["all"])
    ref_all, ref_acc = _time_pycocotools(make_all, repeats_ref)
    ours_all = _best_of(repeats_ours, lambda: match_dataset(gt, dets))
    rows.append(_row(label, "evaluate, all", ref_all, ours_all, n_images))
    make_full = _pycocotools_evaluator(gt_dict, dets, ["all", "small", "medium", "large"])
    ref_full, _ = _time_pycocotools(make_full, repeats_ref)
    ours_full = _best_of(repeats_ours, lambda: [match_dataset(gt, dets, area_range=r) for r in COCO_AREA_RANGES.values()])
    rows.append(_row(label, "evaluate, 4 areas", ref_full, ours_full, n_images))
    matches = match_dataset(gt, dets)
    ours_ap = _best_of(repeats_ours, lambda: average_precision_from_matches(matches))
    rows.append(_row(label, "accumulate*", ref_acc, ours_ap, n_images))
    return rows


def _row(case: str, step: str, ref: float, ours: float, n_images: int) -> dict[str, Any]:
    return {"gt/det per img": case, "step": step, "pycocotools s": ref, "ours s": ours,
            "pycocotools img/s": n_images / ref, "ours img/s": n_images / ours, "speedup": ref / ours}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=2000)
    parser.add_argument("--quick", action="store_true", help="200 images, one repetition")
    parser.add_argument("--out", default="benchmarks/results/matcher.json")
    args = parser.parse_args(argv)
    n_images = 200 if args.quick else args.images
    repeats_ref, repeats_ours = (1, 1) if args.quick else (2, 5)
    rows = []
    for dets_per_image in (100, 20):
        rows.extend(run_case(n_images, dets_per_image, repeats_ref, repeats_ours))
    print_rows(f"match_dataset vs pycocotools COCOeval, {n_images} images, 80 categories "
               "(speedup = pycocotools / ours; *accumulate: pycocotools 1 area x 3 max-dets, ours 1 x 1)", rows)
    write_result(args.out, "matcher", rows, images=n_images, categories=80)


if __name__ == "__main__":
    main()
