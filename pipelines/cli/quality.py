"""``detcurate quality``: rank likely label errors of a COCO data set from out-of-sample predictions."""

from __future__ import annotations

from pathlib import Path

import click

from pipelines.cli import ui

#: Same as ``components.quality.PROTOCOLS`` (literal so that --help imports nothing heavy).
PROTOCOL_NAMES = ("k-fold", "held-out", "in-sample", "unknown")


@click.command("quality")
@click.option("--annotations", "annotations", required=True, type=click.Path(path_type=Path, dir_okay=False),
              help="COCO JSON whose labels are checked.")
@click.option("--predictions", "predictions", required=True, type=click.Path(path_type=Path, dir_okay=False),
              help="Out-of-sample detections: a COCO results list, or {\"protocol\", \"folds\", \"detections\"}.")
@click.option("--out", "out_dir", required=True, type=click.Path(path_type=Path, file_okay=False),
              help="Folder for images.csv, annotations.csv, missing_boxes.json, summary.json, report.md.")
@click.option("--protocol", type=click.Choice(PROTOCOL_NAMES), default=None,
              help="How the predictions were made, when the file does not say (k-fold or held-out: out-of-sample).")
@click.option("--threshold", type=click.FloatRange(0.0, 1.0), default=0.5, show_default=True,
              help="Score from which an image or annotation is flagged.")
@click.option("--top", type=click.IntRange(min=1), default=10, show_default=True, help="Rows printed per ranking.")
def quality_cmd(annotations: Path, predictions: Path, out_dir: Path, protocol: str | None, threshold: float,
                top: int) -> None:
    """Rank likely label errors: missing boxes, wrong classes, badly placed and spurious boxes.

    \b
    Compares out-of-sample predictions (k-fold or a held-out half: a model that never saw an image's
    labels) with the labels, as cleanlab's object-detection scores and FiftyOne's mistakenness do. Every
    image and annotation gets a score in [0, 1] (higher = more likely an error) and a kind.
    """
    from components.quality import label_quality_report

    summary = label_quality_report(annotations, predictions, out_dir, protocol=protocol, threshold=threshold, top=top)
    note = "out-of-sample" if summary.protocol in ("k-fold", "held-out") else "NOT known to be out-of-sample"
    click.echo(f"{summary.num_images} images, {summary.num_annotations} annotations, {summary.num_predictions} "
               f"predictions ({summary.protocol}: {note})")
    ui.print_table(f"top {top} images (score >= {threshold} flagged: "
                   + ", ".join(f"{k} {v}" for k, v in summary.flagged_images.items()) + ")",
                   ["image_id", "score", "kind"],
                   [(i.image_id, i.score, i.kind) for i in summary.report.ranked_images()[:top]])
    click.echo(f"wrote {out_dir}/report.md, images.csv, annotations.csv, missing_boxes.json, summary.json")
