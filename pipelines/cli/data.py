"""``detcurate data ...``: synthesise, validate and corrupt COCO data sets."""

from __future__ import annotations

import sys
from pathlib import Path

import click

from pipelines.cli import ui


@click.group()
def data() -> None:
    """Create, check and corrupt COCO detection data sets."""


@data.command("validate")
@click.argument("annotations", type=click.Path(path_type=Path))
@click.option("--images", "image_root", type=click.Path(path_type=Path, file_okay=False),
              help="Image folder: also check that every image file exists, decodes and has the recorded size.")
@click.option("--tolerance", type=float, default=1.0, show_default=True,
              help="Pixels by which a box may extend beyond its image.")
@click.option("--limit", type=click.IntRange(min=1), default=50, show_default=True,
              help="Print at most this many problems.")
def validate_cmd(annotations: Path, image_root: Path | None, tolerance: float, limit: int) -> None:
    """Check every record of a COCO file; print all problems and exit 2 if there is any.

    Checks duplicate ids, missing keys, wrong types, non-positive sizes, boxes beyond the image,
    unknown categories, annotations of missing images and (with --images) the image files.
    """
    from curation_core.coco import MAX_PROBLEMS, read_json, validate_coco

    raw = read_json(annotations)
    problems = validate_coco(raw, file=str(annotations), image_root=image_root, box_tolerance=tolerance,
                             progress=ui.progress_bar)
    if problems:
        for problem in problems[:limit]:
            click.echo(f"error: {problem}", err=True)
        hidden = len(problems) - limit
        if hidden > 0 or len(problems) >= MAX_PROBLEMS:
            more = f"{hidden}{'+' if len(problems) >= MAX_PROBLEMS else ''}"
            click.echo(f"error: ... and {more} more problems (raise --limit to see them)", err=True)
        click.echo(f"{annotations}: INVALID ({len(problems)}{'+' if len(problems) >= MAX_PROBLEMS else ''} problems)",
                   err=True)
        sys.exit(2)
    n_img, n_ann, n_cat = (len(raw[k]) for k in ("images", "annotations", "categories"))
    click.echo(f"{annotations}: OK ({n_img} images, {n_ann} annotations, {n_cat} categories)")

from pipelines.cli.corrupt import corrupt_cmd  # noqa: E402

data.add_command(corrupt_cmd)

from pipelines.cli.synth import synth_cmd  # noqa: E402

data.add_command(synth_cmd)
