"""``detcurate eval``: COCO box statistics of a results file, identical to pycocotools."""

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
    """Print the 12 COCO box statistics (AP, AP50, ..., ARl) of DT against GT, as pycocotools computes them."""
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
