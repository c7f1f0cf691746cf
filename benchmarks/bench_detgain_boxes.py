r"""How DetGain learnability depends on an image's box count, on real teacher and student predictions.

The online curation benchmark found DetGain picking sparse images and skipping crowded ones (mean
learnability negative for images with 6 or more boxes). A first-order reading of the score explains a
part of that. Adding image x with n_x ground-truth boxes to D (N boxes) changes model m's mAP by about

    delta_m(x) ~ (n_x / N) * (q_m(x) - AP_m),

q_m(x) being how well m detects x's boxes and AP_m its mAP on D. The learnability is then

    delta_T(x) - delta_S(x) ~ (n_x / N) * [(q_T(x) - q_S(x)) - (AP_T - AP_S)]:

the image's own teacher-student gap minus the global gap, *times its box count*. With a teacher much
stronger than the student (AP_T - AP_S > 0) every image whose own gap is below the global one scores
negative in proportion to n_x, so crowded images sink to the bottom of the ranking. Divided by n_x
(``per_box``, an image without boxes counting as one) the count factor is gone.

This script measures it: D = ``--window`` random images of the predictions file, each model against
its own ``DetGainState`` of them (as in training); ``--batches`` random super-batches of B = 32 other
images, top 16 kept by each score. Per box-count bin: images, mean per-image AP of each model, mean
DetGain of each model and learnability (``empirical`` and ``exact``), the per-box learnability, and the
pick rate of top-16-of-32 under learnability, per-box learnability, the difference of the two models'
DetGains each standardised over the super-batch (``z``), and the per-image AP gap (``image_ap``).
Also Spearman's rho of each score with the box count and the boxes per picked image.

    python benchmarks/bench_detgain_boxes.py --online GT.json TEACHER_DT.json STUDENT_DT.json \
        [--window 600] [--batches 300] [--out benchmarks/results/detgain_boxes.json]

The predictions come from ``detcurate evaluate --detections`` on the training images of a data set the
models were not tuned on (the scoring thresholds are the evaluation's: 0.05, 100 per image). The
result in ``benchmarks/results/detgain_boxes.json``: the curation benchmark's teacher (``tiny``, 2,400
iterations, val AP 0.179) and a student of it at mid-training level (``nano``, the benchmark's
``clean:strong`` seed 0 run, val AP 0.074) on the development data set::

    detcurate data synth --out dev1 --train 1000 --val 10 --size 128 --seed 1
    detcurate evaluate --checkpoint T.pt --annotations dev1/train/annotations.json \
        --images dev1/train/images --detections teacher_dt.json --no-track      # and the student
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import print_rows, write_result  # noqa: E402
from bench_detgain import subset_matches  # noqa: E402

from curation_core.coco import load_coco, load_detections  # noqa: E402
from curation_core.detgain import DetGainState, StateConfig, learnability  # noqa: E402
from curation_core.matching import DatasetMatches, match_dataset  # noqa: E402
from curation_core.target_matching import per_image_ap  # noqa: E402

SUPER_BATCH, KEEP = 32, 16
#: Box-count bins: (low, high) inclusive.
BINS: tuple[tuple[int, int], ...] = ((0, 0), (1, 2), (3, 4), (5, 6), (7, 9), (10, 13), (14, 1_000_000))


def _spearman(a: np.ndarray, b: np.ndarray) -> float:
    ra, rb = np.argsort(np.argsort(a)), np.argsort(np.argsort(b))
    return float(np.corrcoef(ra, rb)[0, 1])


def _z(values: np.ndarray) -> np.ndarray:
    """``values`` standardised over the super-batch (0 where they are all equal)."""
    spread = values.std()
    return (values - values.mean()) / spread if spread > 0 else np.zeros_like(values)


def _top(scores: np.ndarray) -> np.ndarray:
    """Top ``KEEP`` positions by score, ties by position (the trainer's top-b rule)."""
    return np.lexsort((np.arange(scores.size), -scores))[:KEEP]


def box_count_scores(teacher: DatasetMatches, student: DatasetMatches, *, window: int, batches: int,
                     seed: int) -> dict[str, Any]:
    """Per-image scores of ``batches`` online super-batches and the picks of each score (module docstring)."""
    rng = np.random.default_rng(seed)
    n = teacher.image_ids.size
    if n < window + SUPER_BATCH:
        raise ValueError(f"box_count_scores() expects at least window + {SUPER_BATCH} images; got {n}.")
    perm = rng.permutation(n)
    d_rows, pool = np.sort(perm[:window]), perm[window:]
    config = StateConfig(window=window)
    states = {role: DetGainState.from_matches(subset_matches(m, d_rows), config=config)
              for role, m in (("teacher", teacher), ("student", student))}
    boxes_all = teacher.gt_count.sum(axis=1)
    ap_t, ap_s = per_image_ap(teacher), per_image_ap(student)
    columns: dict[str, list[np.ndarray]] = {k: [] for k in (
        "boxes", "ap_teacher", "ap_student", "delta_teacher", "delta_student", "learn_empirical", "learn_exact",
        "per_box", "pick_learn", "pick_per_box", "pick_z", "pick_image_ap")}
    for _ in range(batches):
        rows = np.sort(rng.choice(pool, SUPER_BATCH, replace=False))
        bt, bs = subset_matches(teacher, rows), subset_matches(student, rows)
        emp = learnability(states["teacher"], states["student"], bt, bs, estimator="empirical")
        exact = learnability(states["teacher"], states["student"], bt, bs, estimator="exact")
        boxes = boxes_all[rows]
        per_box = emp.learnability / np.maximum(boxes, 1)
        gap = np.nan_to_num(ap_t[rows] - ap_s[rows], nan=0.0)
        z = _z(emp.delta_teacher) - _z(emp.delta_student)
        for key, value in (("boxes", boxes), ("ap_teacher", ap_t[rows]), ("ap_student", ap_s[rows]),
                           ("delta_teacher", emp.delta_teacher), ("delta_student", emp.delta_student),
                           ("learn_empirical", emp.learnability), ("learn_exact", exact.learnability),
                           ("per_box", per_box)):
            columns[key].append(np.asarray(value, dtype=np.float64))
        for key, score in (("pick_learn", emp.learnability), ("pick_per_box", per_box), ("pick_z", z),
                           ("pick_image_ap", gap)):
            picked = np.zeros(SUPER_BATCH)
            picked[_top(score)] = 1.0
            columns[key].append(picked)
    return {k: np.concatenate(v) for k, v in columns.items()}


def summarise(name: str, cols: dict[str, np.ndarray]) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    rows = []
    for low, high in BINS:
        sel = (cols["boxes"] >= low) & (cols["boxes"] <= high)
        if not sel.any():
            continue
        mean = lambda key, s=sel: float(np.nanmean(cols[key][s])) if np.isfinite(cols[key][s]).any() else None  # noqa: E731
        rows.append({
            "set": name, "boxes": f"{low}" if low == high else (f"{low}+" if high > 999 else f"{low}-{high}"),
            "images": int(sel.sum()), "ap_t": mean("ap_teacher"), "ap_s": mean("ap_student"),
            "dT_1e5": 1e5 * mean("delta_teacher"), "dS_1e5": 1e5 * mean("delta_student"),
            "learn_1e5": 1e5 * mean("learn_empirical"), "exact_1e5": 1e5 * mean("learn_exact"),
            "per_box_1e5": 1e5 * mean("per_box"),
            "pick_learn": mean("pick_learn"), "pick_per_box": mean("pick_per_box"), "pick_z": mean("pick_z"),
            "pick_image_ap": mean("pick_image_ap"),
        })
    boxes = cols["boxes"]
    picked_boxes = {key: float((boxes * cols[key]).sum() / cols[key].sum())
                    for key in ("pick_learn", "pick_per_box", "pick_z", "pick_image_ap")}
    overall = {
        "set": name, "scored": int(boxes.size), "boxes_per_image": float(boxes.mean()),
        **{f"boxes_per_pick_{k[5:]}": v for k, v in picked_boxes.items()},
        "rho_boxes_learn": _spearman(cols["learn_empirical"], boxes),
        "rho_boxes_per_box": _spearman(cols["per_box"], boxes),
        "rho_learn_exact": _spearman(cols["learn_empirical"], cols["learn_exact"]),
    }
    return rows, overall


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--online", nargs=3, action="append", required=True, metavar=("GT", "TEACHER_DT", "STUDENT_DT"))
    parser.add_argument("--window", type=int, default=600)
    parser.add_argument("--batches", type=int, default=300)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=Path(__file__).resolve().parent / "results" / "detgain_boxes.json")
    args = parser.parse_args(argv)
    bins, overall = [], []
    for gt_path, teacher_path, student_path in args.online:
        gt = load_coco(gt_path)
        teacher = match_dataset(gt, load_detections(teacher_path, gt))
        student = match_dataset(gt, load_detections(student_path, gt))
        name = f"{Path(teacher_path).stem}-{Path(student_path).stem}"
        cols = box_count_scores(teacher, student, window=args.window, batches=args.batches, seed=args.seed)
        b, o = summarise(name, cols)
        bins += b
        overall.append(o)
    print_rows("DetGain by box count (x 1e-5 for gains; pick = top 16 of 32)", bins)
    print_rows("Overall", overall)
    write_result(args.out, "detgain_boxes", bins, overall=overall, window=args.window, batches=args.batches,
                 inputs=args.online)


if __name__ == "__main__":
    main()
