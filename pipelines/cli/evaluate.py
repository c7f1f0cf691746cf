"""Evaluation from the command line, identical to pycocotools.

``detcurate eval`` scores a file of predictions (COCO results JSON); ``detcurate evaluate`` runs a
trained checkpoint on a data set first, then scores its predictions (and logs or registers it in MLflow).
"""

from __future__ import annotations

import json
from pathlib import Path

import click

from pipelines.cli import ui


@click.command("eval")
@click.option("--gt", "gt_path", required=True, type=click.Path(path_type=Path), help="Ground-truth COCO JSON.")
@click.option("--dt", "dt_path", required=True, type=click.Path(path_type=Path),
              help="Detections: COCO results JSON (list of image_id, category_id, bbox xywh, score).")
@click.option("--json", "as_json", is_flag=True, help="Print a JSON object whose 'stats' is the list of 12 numbers.")
@click.option("--out", type=click.Path(path_type=Path), help="Also write the JSON report to this file (atomically).")
def eval_cmd(gt_path: Path, dt_path: Path, as_json: bool, out: Path | None) -> None:
    """Score a predictions file: the 12 COCO box statistics of DT (results JSON) against GT, as pycocotools.

    Takes predictions already made (a COCO results JSON); to run a trained checkpoint on a data set
    and score it, use `detcurate evaluate --checkpoint`.
    """
    from curation_core.coco import load_coco, load_detections
    from curation_core.evaluation import COCO_STAT_NAMES, evaluate_detections
    from curation_core.io import write_json_atomic

    gt = load_coco(gt_path)
    detections = load_detections(dt_path, gt)
    result = evaluate_detections(gt, detections)
    report = result.as_dict()
    if out is not None:
        write_json_atomic(out, report, indent=2)
    if as_json:
        click.echo(json.dumps(report))
        return
    names = {c["id"]: c["name"] for c in gt.categories}
    ui.print_table(f"COCO box evaluation: {dt_path} vs {gt_path}", ["statistic", "value"],
                   zip(COCO_STAT_NAMES, result.stats, strict=True))
    ui.print_table("AP@[.50:.95] per category", ["category", "AP"],
                   ((names[cid], "n/a (no ground truth)" if ap != ap else ap)
                    for cid, ap in result.per_category_ap.items()))


@click.command("evaluate")
@click.option("--checkpoint", required=True, type=click.Path(path_type=Path),
              help="Checkpoint written by detcurate train (predictions are made from it).")
@click.option("--annotations", required=True, type=click.Path(path_type=Path), help="Ground-truth COCO JSON.")
@click.option("--images", required=True, type=click.Path(path_type=Path), help="Folder of the images.")
@click.option("--out", type=click.Path(path_type=Path), help="Write the JSON report here (atomically).")
@click.option("--detections", type=click.Path(path_type=Path), help="Write the detections (COCO results JSON) here.")
@click.option("--device", default="cpu", show_default=True, help="cpu, cuda or cuda:N.")
@click.option("--no-track", is_flag=True, help="Do not log the evaluation to MLflow.")
@click.option("--register-as", metavar="NAME", help="Register the checkpoint in the MLflow model registry.")
@click.option("--alias", default="champion", show_default=True,
              help="Alias the registered version gets (e.g. teacher: curation.teacher=models:/NAME@teacher).")
def evaluate_cmd(checkpoint: Path, annotations: Path, images: Path, out: Path | None, detections: Path | None,
                 device: str, no_track: bool, register_as: str | None, alias: str) -> None:
    """Run a checkpoint on a data set and score it: the 12 COCO box statistics, as pycocotools.

    Takes a trained checkpoint (detcurate train) and the images; to score a predictions file (COCO
    results JSON) instead, use `detcurate eval --dt`. Logs the evaluation to MLflow (unless --no-track)
    and registers the checkpoint with --register-as.
    """
    import tempfile

    from components.evaluate_model import evaluate_model
    from curation_core.evaluation import COCO_STAT_NAMES

    with tempfile.TemporaryDirectory() as tmp:
        report = out if out is not None else Path(tmp) / "report.json"
        stats = evaluate_model(str(checkpoint), str(annotations), str(images), out_json=str(report),
                               detections_json=str(detections) if detections else None, device=device,
                               progress=ui.progress_bar)
        if not no_track:
            from pipelines.tracking import log_evaluation

            register = None
            if register_as:
                from pipelines.registry import registrar

                register = registrar(register_as, checkpoint, alias=alias)
            log_evaluation(stats, checkpoint=checkpoint, report_path=report, data_paths=[annotations, images],
                           register=register)
    ui.print_table(f"{checkpoint} on {annotations}", ["statistic", "value"],
                   zip(COCO_STAT_NAMES, stats.stats, strict=True))
