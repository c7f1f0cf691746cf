"""``detcurate curation-report``: what did online curation pick? Statistics and figures of ``selections.csv``."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import click

from pipelines.cli import ui


def _fmt(value: Any, spec: str | None = None) -> Any:
    if value is None or (isinstance(value, float) and value != value):
        return "-"
    return value if spec is None else format(value, spec)


@click.command("curation-report")
@click.option("--selections", required=True, type=click.Path(path_type=Path),
              help="The selections.csv a curated training run wrote into its output folder.")
@click.option("--annotations", required=True, type=click.Path(path_type=Path),
              help="COCO annotations of the run's training set (data.train_annotations).")
@click.option("--out", required=True, type=click.Path(path_type=Path),
              help="Folder for curation_stats.json, curation_scores.png and curation_categories.png (atomic writes).")
@click.option("--clean-annotations", type=click.Path(path_type=Path), default=None,
              help="True labels of the same training images, when the run trained on noisy ones: reports "
                   "whether the picks avoid wrongly labelled images.")
def curation_report_cmd(selections: Path, annotations: Path, out: Path, clean_annotations: Path | None) -> None:
    """Summarise what online curation picked: repeats, background and category shares, scores, drift."""
    from components.curation_report import curation_report

    stats = curation_report(selections, annotations, out_dir=out, clean_annotations=clean_annotations)
    rows, images = stats["rows"], stats["distinct_images"]
    background, scores = stats["background_share"], stats["scores"]
    ui.print_table(f"Curation of {selections} ({', '.join(stats['methods'])})", ["", "value"], [
        ("scoring events", stats["scoring_events"]),
        ("rows scored / picked", f"{rows['scored']} / {rows['picked']}"),
        ("distinct images picked", f"{images['picked']} of {stats['train_images']} ({images['picked_frac']:.1%})"),
        ("picks per picked image: max / mean", f"{stats['picks_per_image']['max']} / "
                                               f"{stats['picks_per_image']['mean']:.2f}"),
        ("images never picked", stats["picks_per_image"]["never_picked"]),
        ("background-only share: picked", _fmt(background["picked"])),
        ("background-only share: scored", _fmt(background["scored"])),
        ("background-only share: data set", _fmt(background["dataset"])),
        ("boxes per image: picked / rejected / data set",
         " / ".join(_fmt(stats["boxes_per_image"][k], ".2f") for k in ("picked", "rejected", "dataset"))),
        *([] if "label_errors" not in stats else [
            (f"{kind} boxes per image: picked / rejected / data set",
             " / ".join(_fmt(stats["label_errors"][f"{kind}_per_image"][k], ".3f")
                        for k in ("picked", "rejected", "dataset"))) for kind in ("missing", "wrong")] + [
            ("wrong share of boxes: picked / rejected / data set",
             " / ".join(_fmt(stats["label_errors"]["wrong_box_share"][k], ".3f")
                        for k in ("picked", "rejected", "dataset")))]),
        ("mean score: picked", _fmt(scores["picked"]["mean"], ".4g")),
        ("mean score: rejected", _fmt(scores["rejected"]["mean"], ".4g")),
    ])
    ui.print_table("By third of training (scoring events)", ["stage", "iterations", "distinct images",
                                                             "background share", "mean picked score"],
                   [(s["stage"], "-" if s["first_iteration"] is None else f"{s['first_iteration']}-{s['last_iteration']}",
                     s["distinct_images"], _fmt(s["background_share_picked"]), _fmt(s["mean_picked_score"]))
                    for s in stats["stages"]])
    for path in stats["files"].values():  # unwrapped and without markup, so paths can be copied
        ui.stdout.print(f"wrote {path}", soft_wrap=True, markup=False)
