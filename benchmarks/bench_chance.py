"""Floor and ceiling of COCO AP on a data set: random detections, and the ground truth itself.

What a trained model's AP is compared against. Rows:

- random: ``--per-image`` boxes per image, each with the width and height of a ground-truth box drawn at
  random from the whole set, a uniform position inside the image, a uniform category and a uniform score
  (mean and spread over ``--repeats`` seeds);
- ground truth: every non-crowd box as a detection with score 1 (pycocotools must give AP 1).

    python benchmarks/bench_chance.py --annotations data/synth/val/annotations.json [--per-image 100]
        [--repeats 3] [--quick] [--out benchmarks/results/chance.json]
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import print_rows, write_result  # noqa: E402

from curation_core.coco import CocoDataset, load_coco  # noqa: E402
from curation_core.evaluation import evaluate_detections  # noqa: E402

REPO = Path(__file__).resolve().parent.parent


def random_detections(gt: CocoDataset, *, per_image: int, rng: np.random.Generator) -> list[dict[str, Any]]:
    """``per_image`` random xywh boxes per image (sizes from the ground truth, clipped to the image)."""
    sizes = np.array([a["bbox"][2:] for a in gt.annotations], dtype=np.float64).reshape(-1, 2)
    if not len(sizes):
        sizes = np.array([[1.0, 1.0]])
    categories = np.array(gt.category_ids)
    out = []
    for image in gt.images:
        wh = np.minimum(sizes[rng.integers(len(sizes), size=per_image)], [image["width"], image["height"]])
        xy = rng.uniform(0.0, 1.0, size=(per_image, 2)) * ([image["width"], image["height"]] - wh)
        labels = rng.choice(categories, size=per_image)
        scores = rng.uniform(size=per_image)
        out += [{"image_id": image["id"], "category_id": int(c), "bbox": [*map(float, p), *map(float, s)],
                 "score": float(v)} for p, s, c, v in zip(xy, wh, labels, scores, strict=True)]
    return out


def ground_truth_detections(gt: CocoDataset) -> list[dict[str, Any]]:
    """Every non-crowd annotation as a detection with score 1."""
    return [{"image_id": a["image_id"], "category_id": a["category_id"], "bbox": list(a["bbox"]), "score": 1.0}
            for a in gt.annotations if not a.get("iscrowd", 0)]


def measure(gt: CocoDataset, *, per_image: int, repeats: int) -> list[dict[str, Any]]:
    """Rows: random detections (mean and standard deviation over seeds 0..repeats-1) and the ground truth."""
    random = np.array([[evaluate_detections(gt, random_detections(gt, per_image=per_image,
                                                                    rng=np.random.default_rng(seed))).named()[k]
                        for k in ("AP", "AP50")] for seed in range(repeats)])
    truth = evaluate_detections(gt, ground_truth_detections(gt)).named()
    return [
        {"detections": f"random, {per_image} per image", "seeds": repeats, "AP": float(random[:, 0].mean()),
         "AP std": float(random[:, 0].std()), "AP50": float(random[:, 1].mean())},
        {"detections": "ground truth, score 1", "seeds": 1, "AP": truth["AP"], "AP std": 0.0, "AP50": truth["AP50"]},
    ]


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--annotations", type=Path, default=REPO / "data" / "synth" / "val" / "annotations.json",
                        help="COCO ground truth (default: the demo validation set)")
    parser.add_argument("--per-image", type=int, default=100, help="random detections per image")
    parser.add_argument("--repeats", type=int, default=3, help="random seeds")
    parser.add_argument("--out", type=Path, default=REPO / "benchmarks" / "results" / "chance.json")
    parser.add_argument("--quick", action="store_true", help="a smoke run: one seed, 20 detections per image")
    args = parser.parse_args(argv)
    if args.quick:
        args.per_image, args.repeats = 20, 1
    if args.per_image < 1 or args.repeats < 1:
        parser.error("--per-image and --repeats must be >= 1")
    gt = load_coco(args.annotations)
    rows = measure(gt, per_image=args.per_image, repeats=args.repeats)
    write_result(args.out, "chance", rows, annotations=str(args.annotations), per_image=args.per_image)
    print_rows(f"COCO AP floor and ceiling on {args.annotations}", rows)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
