"""Label-quality benchmark: ``detcurate quality`` against cleanlab's object-detection module.

    python benchmarks/bench_label_quality.py                    # CPU profile (resumable: finished folds are kept)
    python benchmarks/bench_label_quality.py --profile smoke    # seconds: the test's profile
    python benchmarks/bench_label_quality.py --predict-only     # train the folds and predict, score later

For each scenario a synthetic training set (the benchmark's own data seed) is corrupted by
``curation_core.corrupt.corrupt_annotations`` (the code behind ``detcurate data corrupt``), so every
corrupted record is known:

- ``mixed``: ``drop-per-category`` (missing boxes), then on disjoint random subsets of the remaining
  boxes ``jitter`` (badly placed) and ``swap`` (wrong class), then ``spurious`` (added false boxes);
- ``hard``: the BRL ``hard`` protocol alone (half the boxes of every image removed).

Out-of-sample predictions, 2-fold: the images are split in two halves; a detector (the engine's FCOS,
``tiny`` backbone) is trained on the corrupted labels of one half and predicts the other, then the
halves swap. Both methods then score the same predictions against the same corrupted labels:
``curation_core.offline.label_quality.find_label_errors`` and ``cleanlab.object_detection.rank``
(``get_label_quality_scores`` per image, and its per-box ``compute_overlooked_box_scores``,
``compute_badloc_box_scores``, ``compute_swap_box_scores``).

What is ranked for each kind (positives = the corrupted records):

- missing: images (positive: at least one removed box), by each method's missing-box image score
  (cleanlab: its overlooked scores pooled per image with its own softmin); and predicted boxes
  (positive: same class and IoU >= 0.5 with a removed box), by each method's per-prediction score;
- badly placed / wrong class / spurious: the annotations of the corrupted set (positive: jittered /
  swapped / added), by each method's score of that kind (cleanlab: badloc, swap, and the lower of
  the two for spurious boxes, which it has no subtype for);
- any: images by each method's overall image score (positive: any corrupted record in the image).

A third row, ``cleanlab-calibrated``, runs cleanlab on the same predictions with each score replaced
by our calibrated confidence ``q``: it separates what calibration alone gives from the scores' rules.

Metrics: AUROC (Mann-Whitney, ties counted half) and precision at the top k (k = 10, 50 and the
number of positives). Results: ``benchmarks/results/label_quality.json`` and ``label_quality.md``.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import machine_info, print_rows  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
#: Seed of the benchmark's data set and corruptions.
DATA_SEED = 2027
KINDS = ("missing", "badly_placed", "wrong_class", "spurious")


@dataclass(frozen=True)
class Profile:
    train_images: int
    size: int
    iterations: int
    batch_size: int
    backbone: str = "tiny"
    max_objects: int = 12
    drop: float = 0.15
    jitter_fraction: float = 0.10
    jitter_amount: float = 0.3
    swap_fraction: float = 0.10
    spurious_fraction: float = 0.05
    scenarios: tuple[str, ...] = ("mixed", "hard")


PROFILES = {
    # 2 CPU cores shared with other work (measured 3 to 10 training images/s): 400 iterations of 16 on
    # 400 images per fold (16 epochs); the `hard` scenario on request (--scenarios mixed,hard).
    "cpu": Profile(train_images=800, size=128, iterations=400, batch_size=16, scenarios=("mixed",)),
    # a GPU: 10x the images, the small backbone.
    "gpu": Profile(train_images=12000, size=128, iterations=6000, batch_size=32, backbone="small"),
    # seconds, for tests/test_quality_bench.py
    "smoke": Profile(train_images=24, size=64, iterations=3, batch_size=4, scenarios=("mixed",)),
}


# ----------------------------------------------------------------------------------------------
# Data and corruption


def corrupt_mixed(clean: Any, profile: Profile, seed: int) -> tuple[Any, dict[str, list[int]]]:
    """The ``mixed`` scenario: (corrupted data set, {kind: annotation ids}); ``missing`` holds removed ids."""
    from curation_core.coco import CocoDataset
    from curation_core.corrupt import corrupt_annotations

    def subset(ds: CocoDataset, ids: set[int]) -> CocoDataset:
        return CocoDataset(images=ds.images, annotations=[a for a in ds.annotations if a["id"] in ids],
                           categories=ds.categories, extra=ds.extra, source=ds.source)

    dropped = corrupt_annotations(clean, mode="drop-per-category", fraction=profile.drop, seed=seed)
    ds = dropped.dataset
    plain = sorted(a["id"] for a in ds.annotations if not a["iscrowd"])
    order = np.random.default_rng([seed, 101]).permutation(len(plain))
    n_jit, n_swap = round(profile.jitter_fraction * len(plain)), round(profile.swap_fraction * len(plain))
    jitter_ids = {plain[i] for i in order[:n_jit]}
    swap_ids = {plain[i] for i in order[n_jit:n_jit + n_swap]}
    jittered = corrupt_annotations(subset(ds, jitter_ids), mode="jitter", amount=profile.jitter_amount, seed=seed)
    swapped = corrupt_annotations(subset(ds, swap_ids), mode="swap", fraction=1.0, seed=seed)
    replaced = {a["id"]: a for a in jittered.dataset.annotations + swapped.dataset.annotations}
    merged = CocoDataset(images=ds.images, annotations=[dict(replaced.get(a["id"], a)) for a in ds.annotations],
                         categories=ds.categories, extra=ds.extra, source=ds.source)
    spurious = corrupt_annotations(merged, mode="spurious", fraction=profile.spurious_fraction, seed=seed)
    kinds = {"missing": list(dropped.removed_ids), "badly_placed": list(jittered.changed_ids),
             "wrong_class": list(swapped.changed_ids), "spurious": list(spurious.added_ids)}
    return spurious.dataset, kinds


def corrupt_hard(clean: Any, profile: Profile, seed: int) -> tuple[Any, dict[str, list[int]]]:
    from curation_core.corrupt import corrupt_annotations

    result = corrupt_annotations(clean, mode="hard", seed=seed)
    return result.dataset, {"missing": list(result.removed_ids), "badly_placed": [], "wrong_class": [], "spurious": []}


SCENARIOS = {"mixed": corrupt_mixed, "hard": corrupt_hard}


def subset_images(ds: Any, image_ids: set[int]) -> Any:
    from curation_core.coco import CocoDataset

    return CocoDataset(images=[i for i in ds.images if i["id"] in image_ids],
                       annotations=[a for a in ds.annotations if a["image_id"] in image_ids],
                       categories=ds.categories, extra=ds.extra, source=ds.source)


# ----------------------------------------------------------------------------------------------
# Out-of-sample predictions


def fold_config(profile: Profile, annotations: Path, images: Path, output: Path, seed: int) -> Any:
    from curation_core.engine.config import config_from_dict

    size = profile.size
    return config_from_dict({
        "model": {"detector": "fcos", "backbone": profile.backbone, "min_size": size, "max_size": size,
                  "score_thresh": 0.01, "detections_per_img": 100},
        "data": {"train_annotations": str(annotations), "train_images": str(images), "num_workers": 0},
        "augment": {"hflip": 0.5},
        "optim": {"name": "adamw", "lr": 0.002, "weight_decay": 0.05, "clip_grad_norm": 10.0},
        "schedule": {"max_iter": profile.iterations, "policy": "cosine",
                     "warmup_iters": min(50, max(1, profile.iterations // 10))},
        "train": {"output_dir": str(output), "batch_size": profile.batch_size, "seed": seed, "device": "auto",
                  "checkpoint_every": max(1, profile.iterations // 4), "eval_batch_size": 32},
    })


def log_progress(items: Any, *, total: int | None = None, description: str = "") -> Any:
    """A ``ProgressFn`` printing one line every 10 % (for a log file)."""
    every = max(1, (total or 0) // 10)
    start = time.time()
    for n, item in enumerate(items, 1):
        yield item
        if n % every == 0:
            print(f"  {description} {n}/{total} ({time.time() - start:.0f} s)", flush=True)


def out_of_sample_predictions(work: Path, corrupted: Any, images: Path, profile: Profile, seed: int,
                              progress: Any) -> list[dict[str, Any]]:
    """2-fold: train on one half's corrupted labels, predict the other; cached in ``work``."""
    from curation_core.coco import save_coco
    from curation_core.engine.predict import load_detector, predict_dataset
    from curation_core.engine.trainer import train

    cache = work / "predictions.json"
    if cache.is_file():
        return json.loads(cache.read_text())["detections"]
    ids = sorted(img["id"] for img in corrupted.images)
    order = np.random.default_rng([seed, 202]).permutation(len(ids))
    halves = [{ids[i] for i in order[: len(ids) // 2]}, {ids[i] for i in order[len(ids) // 2:]}]
    detections: list[dict[str, Any]] = []
    for fold, (train_ids, test_ids) in enumerate([(halves[0], halves[1]), (halves[1], halves[0])]):
        fold_dir = work / f"fold{fold}"
        done = fold_dir / "predictions.json"
        if not done.is_file():
            ann = fold_dir / "train.json"
            save_coco(subset_images(corrupted, train_ids), ann)
            config = fold_config(profile, ann, images, fold_dir / "run", seed)
            start = time.time()
            print(f"{work.name}: fold {fold}: training on {len(train_ids)} images", flush=True)
            train(config, resume=True, progress=progress)
            detector = load_detector(fold_dir / "run" / "checkpoint.pt")
            dets = predict_dataset(detector, subset_images(corrupted, test_ids), images, batch_size=32)
            from curation_core.io import write_json_atomic

            write_json_atomic(done, {"train_seconds": time.time() - start, "detections": dets})
        detections += json.loads(done.read_text())["detections"]
    from curation_core.io import write_json_atomic

    write_json_atomic(cache, {"protocol": "k-fold", "folds": 2, "detections": detections})
    return detections


# ----------------------------------------------------------------------------------------------
# Metrics


def auroc(scores: np.ndarray, positive: np.ndarray) -> float | None:
    """Area under the ROC curve of ``scores`` (higher = more likely positive); ties count half."""
    from scipy.stats import rankdata

    scores, positive = np.asarray(scores, dtype=np.float64), np.asarray(positive, dtype=bool)
    n_pos, n_neg = int(positive.sum()), int((~positive).sum())
    if not n_pos or not n_neg:
        return None
    ranks = rankdata(scores)
    return float((ranks[positive].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg))


def precision_at(scores: np.ndarray, positive: np.ndarray, k: int) -> float | None:
    """Fraction of positives among the ``k`` highest scores (stable order on ties: input order)."""
    if k <= 0 or len(scores) == 0:
        return None
    top = np.argsort(-np.asarray(scores, dtype=np.float64), kind="stable")[:k]
    return float(np.asarray(positive, dtype=bool)[top].mean())


def ranking_metrics(scores: np.ndarray, positive: np.ndarray) -> dict[str, Any]:
    n_pos = int(np.sum(positive))
    return {"n": int(len(scores)), "positives": n_pos, "auroc": auroc(scores, positive),
            "p@10": precision_at(scores, positive, 10), "p@50": precision_at(scores, positive, 50),
            "p@positives": precision_at(scores, positive, n_pos)}


# ----------------------------------------------------------------------------------------------
# The two methods on the same predictions


def cleanlab_inputs(gt: Any, detections: list[dict[str, Any]]) -> tuple[list[dict[str, Any]], list[list[np.ndarray]]]:
    """cleanlab's format: per image, labels {bboxes xyxy (L, 4), labels 0..K-1 (L,)} and per class an
    (M_k, 5) array [x1, y1, x2, y2, score] of predictions; crowd boxes left out."""
    column = {cid: j for j, cid in enumerate(gt.category_ids)}
    k = len(column)
    per_image: dict[int, list[list[list[float]]]] = {img["id"]: [[] for _ in range(k)] for img in gt.images}
    for d in detections:
        x, y, w, h = d["bbox"]
        per_image[d["image_id"]][column[d["category_id"]]].append([x, y, x + w, y + h, d["score"]])
    labels, predictions = [], []
    for img in gt.images:
        anns = [a for a in gt.annotations_by_image[img["id"]] if not a["iscrowd"]]
        boxes = np.asarray([[a["bbox"][0], a["bbox"][1], a["bbox"][0] + a["bbox"][2], a["bbox"][1] + a["bbox"][3]]
                            for a in anns], dtype=np.float64).reshape(-1, 4)
        labels.append({"bboxes": boxes, "labels": np.asarray([column[a["category_id"]] for a in anns], dtype=np.int64),
                       "image_name": str(img["id"])})
        predictions.append([np.asarray(p, dtype=np.float64).reshape(-1, 5) for p in per_image[img["id"]]])
    return labels, predictions


def cleanlab_scores(gt: Any, detections: list[dict[str, Any]]) -> dict[str, Any]:
    """cleanlab's scores turned to "higher = more likely an error" (1 - score; NaN box scores -> 0)."""
    from cleanlab.object_detection import rank

    labels, predictions = cleanlab_inputs(gt, detections)
    overlooked = rank.compute_overlooked_box_scores(labels=labels, predictions=predictions)
    badloc = rank.compute_badloc_box_scores(labels=labels, predictions=predictions)
    swap = rank.compute_swap_box_scores(labels=labels, predictions=predictions)
    image = rank.get_label_quality_scores(labels, predictions, verbose=False)
    missing_image = rank.pool_box_scores_per_image(overlooked)
    ann_ids = [[a["id"] for a in gt.annotations_by_image[img["id"]] if not a["iscrowd"]] for img in gt.images]
    per_ann: dict[int, dict[str, float]] = {}
    for ids, b, s in zip(ann_ids, badloc, swap, strict=True):
        for i, bi, si in zip(ids, b.tolist(), s.tolist(), strict=True):
            per_ann[i] = {"badly_placed": 1 - bi, "wrong_class": 1 - si, "spurious": 1 - min(bi, si)}
    # per prediction, in the order of cleanlab_inputs: class by class
    per_pred = [np.nan_to_num(1 - o, nan=0.0) for o in overlooked]
    return {"image": 1 - image, "missing_image": 1 - missing_image, "annotation": per_ann, "prediction": per_pred}


def ours_scores(gt: Any, detections: list[dict[str, Any]]) -> dict[str, Any]:
    from curation_core.offline.label_quality import find_label_errors

    report = find_label_errors(gt, detections)
    per_ann = {a.annotation_id: dict(a.kind_scores) for a in report.annotations}
    image = {i.image_id: i for i in report.images}
    return {"image": np.asarray([image[img["id"]].score for img in gt.images]),
            "missing_image": np.asarray([image[img["id"]].kind_scores["missing"] for img in gt.images]),
            "annotation": per_ann, "report": report}


def _iou_xywh(a: list[float], b: list[float]) -> float:
    ax2, ay2, bx2, by2 = a[0] + a[2], a[1] + a[3], b[0] + b[2], b[1] + b[3]
    w, h = max(0.0, min(ax2, bx2) - max(a[0], b[0])), max(0.0, min(ay2, by2) - max(a[1], b[1]))
    inter = w * h
    union = a[2] * a[3] + b[2] * b[3] - inter
    return inter / union if union > 0 else 0.0


def evaluate(clean: Any, corrupted: Any, kinds: dict[str, list[int]], detections: list[dict[str, Any]]) -> list[dict]:
    """Rows ``{unit, kind, method, auroc, p@k...}`` for both methods."""
    ours, theirs = ours_scores(corrupted, detections), cleanlab_scores(corrupted, detections)
    # cleanlab on the calibrated confidences instead of the raw scores: is the difference only calibration?
    calibrated = [dict(d, score=float(q)) for d, q in zip(detections, ours["report"].prediction_confidence, strict=True)]
    theirs_cal = cleanlab_scores(corrupted, calibrated)
    image_ids = [img["id"] for img in corrupted.images]
    removed = {i for i in kinds["missing"]}
    clean_ann = {a["id"]: a for a in clean.annotations}
    removed_by_image: dict[int, list[dict[str, Any]]] = {}
    for i in removed:
        removed_by_image.setdefault(clean_ann[i]["image_id"], []).append(clean_ann[i])
    record_image = {a["id"]: a["image_id"] for a in corrupted.annotations} | {i: clean_ann[i]["image_id"] for i in removed}
    rows = []

    def add(unit: str, kind: str, method: str, scores: np.ndarray, positive: np.ndarray) -> None:
        rows.append({"unit": unit, "kind": kind, "method": method, **ranking_metrics(scores, positive)})

    if removed:
        pos = np.asarray([i in removed_by_image for i in image_ids])
        add("image", "missing", "detcurate", ours["missing_image"], pos)
        add("image", "missing", "cleanlab", theirs["missing_image"], pos)
        add("image", "missing", "cleanlab-calibrated", theirs_cal["missing_image"], pos)
        # predicted boxes, in cleanlab's order (image, then class): a true missing box = same class, IoU >= 0.5
        column = {cid: j for j, cid in enumerate(corrupted.category_ids)}
        by_image: dict[int, list[list[dict[str, Any]]]] = {i: [[] for _ in column] for i in image_ids}
        for d in detections:
            by_image[d["image_id"]][column[d["category_id"]]].append(d)
        ours_pred = {(d["image_id"], d["category_id"], tuple(d["bbox"]), d["score"]): s
                     for d, s in zip(ours["report"].predictions_in, ours["report"].prediction_missing, strict=True)}
        flat, theirs_flat, cal_flat, ours_flat = [], [], [], []
        for n, image_id in enumerate(image_ids):
            preds = [d for per_class in by_image[image_id] for d in per_class]
            theirs_flat += theirs["prediction"][n].tolist()
            cal_flat += theirs_cal["prediction"][n].tolist()
            for d in preds:
                ours_flat.append(ours_pred[(d["image_id"], d["category_id"], tuple(d["bbox"]), d["score"])])
                flat.append(any(a["category_id"] == d["category_id"] and _iou_xywh(a["bbox"], d["bbox"]) >= 0.5
                                for a in removed_by_image.get(image_id, [])))
        add("prediction", "missing", "detcurate", np.asarray(ours_flat), np.asarray(flat))
        add("prediction", "missing", "cleanlab", np.asarray(theirs_flat), np.asarray(flat))
        add("prediction", "missing", "cleanlab-calibrated", np.asarray(cal_flat), np.asarray(flat))
    ann_ids = [a["id"] for a in corrupted.annotations if not a["iscrowd"]]
    for kind in ("badly_placed", "wrong_class", "spurious"):
        if not kinds[kind]:
            continue
        pos = np.isin(ann_ids, kinds[kind])
        add("annotation", kind, "detcurate", np.asarray([ours["annotation"][i][kind] for i in ann_ids]), pos)
        add("annotation", kind, "cleanlab", np.asarray([theirs["annotation"][i][kind] for i in ann_ids]), pos)
        add("annotation", kind, "cleanlab-calibrated", np.asarray([theirs_cal["annotation"][i][kind] for i in ann_ids]),
            pos)
    touched = {record_image[i] for ids in kinds.values() for i in ids}
    pos = np.asarray([i in touched for i in image_ids])
    add("image", "any", "detcurate", ours["image"], pos)
    add("image", "any", "cleanlab", theirs["image"], pos)
    add("image", "any", "cleanlab-calibrated", theirs_cal["image"], pos)
    return rows


# ----------------------------------------------------------------------------------------------
# Driver


def detector_ap(clean: Any, detections: list[dict[str, Any]]) -> dict[str, float]:
    """COCO AP / AP50 of the out-of-sample predictions against the clean labels."""
    from curation_core.evaluation import evaluate_detections

    stats = evaluate_detections(clean, detections).named()
    return {"AP": stats["AP"], "AP50": stats["AP50"]}


def run(profile_name: str, work: Path, out: Path, *, predict_only: bool) -> dict[str, Any]:
    from components.synth import synthesize
    from curation_core.coco import load_coco, save_coco

    profile = PROFILES[profile_name]
    data = work / "data"
    if not (data / "synth.json").is_file():
        synthesize(data, train=profile.train_images, val=1, size=profile.size, seed=DATA_SEED, imbalance=3.0,
                   max_objects=profile.max_objects)
    clean = load_coco(data / "train" / "annotations.json")
    images = data / "train" / "images"
    results: dict[str, Any] = {"profile": profile_name, "profile_settings": vars(profile) | {"scenarios": list(profile.scenarios)},
                               "data_seed": DATA_SEED, "scenarios": {}}
    for name in profile.scenarios:
        folder = work / name
        corrupted, kinds = SCENARIOS[name](clean, profile, DATA_SEED)
        save_coco(corrupted, folder / "corrupted.json")
        detections = out_of_sample_predictions(folder, corrupted, images, profile, DATA_SEED, progress=log_progress)
        if predict_only:
            continue
        start = time.time()
        rows = evaluate(clean, corrupted, kinds, detections)
        results["scenarios"][name] = {
            "corrupted_records": {k: len(v) for k, v in kinds.items()},
            "annotations": len(corrupted.annotations), "images": len(corrupted.images),
            "detections": len(detections), "out_of_sample": {"protocol": "k-fold", "folds": 2},
            "detector_vs_clean_labels": detector_ap(clean, detections),
            "scoring_seconds": round(time.time() - start, 2), "rows": rows,
        }
        print_rows(f"label quality, scenario {name}", rows)
    if not predict_only:
        results["machine"] = machine_info()
        results["time"] = time.strftime("%Y-%m-%dT%H:%M:%S")
        from curation_core.io import write_json_atomic

        write_json_atomic(out, results, indent=2)
        out.with_suffix(".md").write_text(markdown(results))
    return results


def _fmt(v: Any) -> str:
    return "-" if v is None else f"{v:.3f}"


def markdown(results: dict[str, Any]) -> str:
    lines = [f"# Label quality: detcurate quality vs cleanlab.object_detection (profile {results['profile']})", ""]
    for name, sc in results["scenarios"].items():
        det = sc["detector_vs_clean_labels"]
        lines += [f"## Scenario `{name}`", "",
                  f"{sc['images']} images, {sc['annotations']} annotations after corruption; corrupted records: "
                  + ", ".join(f"{k} {v}" for k, v in sc["corrupted_records"].items())
                  + f". Out-of-sample predictions (2-fold): {sc['detections']} detections, AP {det['AP']:.3f} / "
                    f"AP50 {det['AP50']:.3f} against the clean labels.", "",
                  "| unit | kind | positives / n | AUROC detcurate | AUROC cleanlab | AUROC cleanlab, calibrated "
                  "scores | P@10 d / c | P@50 d / c | P@positives d / c |", "|---|---|---|---|---|---|---|---|---|"]
        rows = sc["rows"]
        for ours in (r for r in rows if r["method"] == "detcurate"):
            theirs, cal = (next(r for r in rows if r["method"] == m and r["unit"] == ours["unit"]
                                and r["kind"] == ours["kind"]) for m in ("cleanlab", "cleanlab-calibrated"))
            lines.append(f"| {ours['unit']} | {ours['kind']} | {ours['positives']} / {ours['n']} | "
                         f"{_fmt(ours['auroc'])} | {_fmt(theirs['auroc'])} | {_fmt(cal['auroc'])} | "
                         f"{_fmt(ours['p@10'])} / {_fmt(theirs['p@10'])} | "
                         f"{_fmt(ours['p@50'])} / {_fmt(theirs['p@50'])} | "
                         f"{_fmt(ours['p@positives'])} / {_fmt(theirs['p@positives'])} |")
        lines.append("")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--profile", choices=sorted(PROFILES), default="cpu")
    parser.add_argument("--work", type=Path, default=None, help="working folder (default benchmarks/work/label_quality_PROFILE)")
    parser.add_argument("--out", type=Path, default=None, help="result JSON (default benchmarks/results/label_quality.json; "
                                                                "smoke: in the working folder)")
    parser.add_argument("--predict-only", action="store_true", help="train the folds and predict; no scoring")
    parser.add_argument("--scenarios", default=None, help=f"comma-separated subset of {', '.join(SCENARIOS)} "
                                                          "(default: the profile's)")
    args = parser.parse_args(argv)
    if args.scenarios:
        unknown = sorted(set(args.scenarios.split(",")) - set(SCENARIOS))
        if unknown:
            parser.error(f"--scenarios: unknown {unknown}; choose from {', '.join(SCENARIOS)}")
        PROFILES[args.profile] = replace(PROFILES[args.profile], scenarios=tuple(args.scenarios.split(",")))
    work = args.work or ROOT / "benchmarks" / "work" / f"label_quality_{args.profile}"
    default_out = work / "label_quality.json" if args.profile == "smoke" else ROOT / "benchmarks" / "results" / "label_quality.json"
    os.environ.setdefault("MLFLOW_TRACKING_URI", "")
    run(args.profile, work, args.out or default_out, predict_only=args.predict_only)


if __name__ == "__main__":
    main()
