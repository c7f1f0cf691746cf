"""``detcurate balance``: a curation manifest (sampling weights, keep/drop, reasons) for a training set."""

from __future__ import annotations

from pathlib import Path

import click

from pipelines.cli import ui


@click.command("balance")
@click.option("--annotations", required=True, type=click.Path(path_type=Path, dir_okay=False),
              help="COCO JSON of the training set (never rewritten).")
@click.option("--images", type=click.Path(path_type=Path, file_okay=False), default=None,
              help="Image folder: exact duplicates by the hash of the decoded pixels (and backbone embeddings).")
@click.option("--predictions", type=click.Path(path_type=Path, dir_okay=False), default=None,
              help="COCO results on the training set: per-image detection signatures as embeddings.")
@click.option("--checkpoint", type=click.Path(path_type=Path, dir_okay=False), default=None,
              help="Trained detector: its pooled backbone/FPN features as embeddings (needs --images).")
@click.option("--out", "out_manifest", required=True, type=click.Path(path_type=Path, dir_okay=False),
              help="Manifest JSON to write; the report (.md, _classes.png, _weights.png) goes next to it.")
@click.option("--threshold", type=click.FloatRange(0.0, 1.0, min_open=True), default=0.3, show_default=True,
              help="Repeat-factor threshold t: r(c) = max(1, sqrt(t / f(c))), f(c) the fraction of images with c.")
@click.option("--near-threshold", type=click.FloatRange(0.0, 2.0), default=0.0, show_default=True,
              help="Cosine distance of near-duplicates (0: off); needs --checkpoint or --predictions.")
@click.option("--budget", type=click.IntRange(min=1), default=None,
              help="Keep a k-center greedy diversity subset of this many images; needs embeddings.")
@click.option("--device", default="cpu", show_default=True, help="Device of the checkpoint's backbone.")
@click.option("--no-track", is_flag=True, help="Do not log the manifest and its report to MLflow.")
def balance_cmd(annotations: Path, images: Path | None, predictions: Path | None, checkpoint: Path | None,
                out_manifest: Path, threshold: float, near_threshold: float, budget: int | None, device: str,
                no_track: bool) -> None:
    """Balance a training set offline: repeat factors (LVIS), duplicates dropped, a diversity subset.

    \b
    Writes a manifest of per-image sampling weights (expected draws per epoch; 0 = dropped) with the
    reasons; training reads it with `--set data.manifest=MANIFEST.json`. The data set is never rewritten.
    """
    from components.balance import balance_training_set

    summary = balance_training_set(annotations, out_manifest, images=images, predictions=predictions,
                                   checkpoint=checkpoint, threshold=threshold, near_threshold=near_threshold,
                                   budget=budget, device=device, progress=ui.progress_bar)
    s = summary.manifest.summary
    ui.print_table(f"{s['images']} images: kept {s['kept']}, dropped {s['dropped']}, repeated {s['repeated']}; "
                   f"{s['expected_images_per_epoch']:.1f} expected per epoch",
                   ["category", "images", "r(c)", "share before", "share after"],
                   [(r["name"], r["images"], "-" if r["r"] is None else f"{r['r']:.3f}", r["share_before"],
                     r["share_after"]) for r in summary.per_category])
    click.echo(f"wrote {out_manifest} and its report {summary.report_path}")
    if not no_track:
        from pipelines.tracking import log_curation_manifest

        run_id = log_curation_manifest(summary, annotations)
        click.echo(f"MLflow run {run_id}")
