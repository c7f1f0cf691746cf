"""Pipeline step: leave-one-out DetGain of every image for a teacher and a student, and its learnability.

Reads a COCO ground truth and two COCO results files, calls
``curation_core.detgain.leave_one_out_learnability`` once and writes a CSV (atomically) with the header
``image_id,delta_teacher,delta_student,learnability``, one row per image of the ground truth, sorted by
learnability descending (ties by ascending image id). ``delta`` is ``mAP(all) - mAP(all but x)``; with
``estimator="exact"`` both mAPs are pycocotools' ``stats[0]``. Floats are written with 17 significant
digits (they read back bit for bit).
"""

from __future__ import annotations

import os
from dataclasses import dataclass

from curation_core.coco import load_coco, load_detections
from curation_core.detgain.aggregate import mean_ap
from curation_core.detgain.scoring import ESTIMATORS, Learnability, leave_one_out_learnability
from curation_core.errors import ConfigError
from curation_core.io import atomic_write

#: Header of the scores CSV.
CSV_COLUMNS: tuple[str, ...] = ("image_id", "delta_teacher", "delta_student", "learnability")


@dataclass(frozen=True)
class ScoreSummary:
    """What ``score_images`` computed.

    Attributes
    ----------
    estimator : the estimator used.
    num_images : images scored (every image of the ground truth).
    num_teacher_detections, num_student_detections : detections in each results file.
    teacher_map, student_map : pycocotools ``stats[0]`` of each model on the whole set (0 without ground truth).
    ranking : the scores, sorted by learnability descending (ties by image id).
    out_csv : the CSV written, or None.
    """

    estimator: str
    num_images: int
    num_teacher_detections: int
    num_student_detections: int
    teacher_map: float
    student_map: float
    ranking: Learnability
    out_csv: str | None


def score_images(
    gt_path: str | os.PathLike[str],
    teacher_dt_path: str | os.PathLike[str],
    student_dt_path: str | os.PathLike[str],
    *,
    estimator: str = "exact",
    out_csv: str | os.PathLike[str] | None = None,
) -> ScoreSummary:
    """Score every image of ``gt_path`` by learnability and optionally write the scores as CSV.

    Raises
    ------
    ConfigError
        Unknown ``estimator`` (nothing is read or written).
    DataError
        An input file cannot be read or is invalid (``CocoValidationError`` names the record).
    """
    if estimator not in ESTIMATORS:
        raise ConfigError(f"score_images(estimator=) expects one of {', '.join(ESTIMATORS)}; got {estimator!r}.")
    from curation_core.matching import average_precision_from_matches, match_dataset

    gt = load_coco(gt_path)
    teacher_dets = load_detections(teacher_dt_path, gt)
    student_dets = load_detections(student_dt_path, gt)
    teacher, student = match_dataset(gt, teacher_dets), match_dataset(gt, student_dets)
    scores = leave_one_out_learnability(teacher, student, estimator=estimator).ranked()
    if out_csv is not None:
        write_scores_csv(out_csv, scores)
    maps = [mean_ap(average_precision_from_matches(m).mean(axis=1)) for m in (teacher, student)]
    return ScoreSummary(
        estimator=estimator, num_images=int(scores.image_ids.size), num_teacher_detections=len(teacher_dets),
        num_student_detections=len(student_dets), teacher_map=maps[0], student_map=maps[1], ranking=scores,
        out_csv=None if out_csv is None else str(out_csv),
    )


def write_scores_csv(path: str | os.PathLike[str], scores: Learnability) -> None:
    """Write ``scores`` (in their order) as CSV with ``CSV_COLUMNS``, atomically."""
    with atomic_write(path, "w") as handle:
        handle.write(",".join(CSV_COLUMNS) + "\n")
        for row in zip(scores.image_ids.tolist(), scores.delta_teacher.tolist(), scores.delta_student.tolist(),
                       scores.learnability.tolist(), strict=True):
            handle.write(f"{row[0]},{row[1]:.17g},{row[2]:.17g},{row[3]:.17g}\n")
