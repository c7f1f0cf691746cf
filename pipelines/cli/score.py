"""``detcurate score``: leave-one-out DetGain of every image for a teacher and a student, and learnability."""

from __future__ import annotations

from pathlib import Path

import click

from pipelines.cli import ui

#: Same names as ``curation_core.detgain.ESTIMATORS`` (literal so that --help imports nothing heavy).
ESTIMATOR_NAMES = ("exact", "uniform", "empirical")


@click.command("score")
@click.option("--gt", "gt_path", required=True, type=click.Path(path_type=Path), help="Ground-truth COCO JSON.")
@click.option("--teacher-dt", "teacher_path", required=True, type=click.Path(path_type=Path),
              help="Teacher detections: COCO results JSON (image_id, category_id, bbox xywh, score).")
@click.option("--student-dt", "student_path", required=True, type=click.Path(path_type=Path),
              help="Student detections: COCO results JSON on the same images.")
@click.option("--estimator", type=click.Choice(ESTIMATOR_NAMES), default="exact", show_default=True,
              help="exact: pycocotools mAP change, computed incrementally; uniform: the paper's closed form; "
                   "empirical: the same change read from the actual score distributions.")
@click.option("--out", "out_csv", type=click.Path(path_type=Path, dir_okay=False), default=None,
              help="CSV to write (atomically): image_id,delta_teacher,delta_student,learnability.")
@click.option("--top", type=click.IntRange(min=1), default=20, show_default=True,
              help="Rows printed when --out is not given.")
def score_cmd(gt_path: Path, teacher_path: Path, student_path: Path, estimator: str, out_csv: Path | None,
              top: int) -> None:
    """Score every image by learnability: teacher DetGain minus student DetGain (arXiv 2511.14197).

    \b
    DetGain of image x = mAP(all images) - mAP(all images but x), per model; with --estimator exact both
    mAPs are exactly pycocotools' AP@[.50:.95]. Rows are sorted by learnability descending (ties by
    image id); higher = the teacher gains more from the image than the student, so it is worth training on.
    """
    from components.score import score_images

    summary = score_images(gt_path, teacher_path, student_path, estimator=estimator, out_csv=out_csv)
    click.echo(f"{summary.num_images} images; mAP teacher {summary.teacher_map:.4f}, student "
               f"{summary.student_map:.4f}; estimator {summary.estimator}")
    if out_csv is not None:
        click.echo(f"wrote {out_csv}")
        return
    r = summary.ranking
    rows = [(int(r.image_ids[i]), float(r.delta_teacher[i]), float(r.delta_student[i]), float(r.learnability[i]))
            for i in range(min(top, r.image_ids.size))]
    ui.print_table(f"top {len(rows)} of {summary.num_images} images by learnability",
                   ["image_id", "delta_teacher", "delta_student", "learnability"],
                   [(i, f"{a:.3e}", f"{b:.3e}", f"{c:.3e}") for i, a, b, c in rows])
