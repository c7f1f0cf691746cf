"""``detcurate active-learning``: simulated box-level (or image-level) active learning, round by round."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import click

from pipelines.cli import ui


def _round_line(record: dict[str, Any]) -> None:
    click.echo(f"round {record['round']}: {record['boxes']} boxes labelled ({record['queried']} queried: "
               f"{record['objects']} objects, {record['background']} background, {record['duplicates']} duplicates; "
               f"pool {record['pool']}), {record['images']} images; val AP {record['AP']:.4f} AP50 {record['AP50']:.4f}",
               err=True)


@click.command("active-learning")
@click.option("--config", "config_path", required=True, type=click.Path(path_type=Path),
              help="Active-learning YAML (configs/active_learning_*.yaml).")
@click.option("--out", "out_dir", required=True, type=click.Path(path_type=Path, file_okay=False),
              help="Output folder: round_R/, state.json, curve.json (resumed if it exists).")
@click.option("--set", "overrides", multiple=True, metavar="FIELD=VALUE",
              help="Override a top-level field of the file (--set measure=random --set rounds=2); repeatable.")
@click.option("--no-track", is_flag=True, help="Do not log the curve to MLflow.")
def active_learning_cmd(config_path: Path, out_dir: Path, overrides: tuple[str, ...], no_track: bool) -> None:
    """Active learning with a simulated annotator: query boxes (or images), retrain, repeat.

    \b
    Round 0 trains a detector on a few random, fully labelled images. Each later round predicts the
    unlabelled pool at a low score threshold, queries `budget` boxes by the measure (random,
    uncertainty, coreset, detgain), snaps each to its ground-truth box at IoU >= 0.5 (else background), adds
    the images with a verified box to the labelled set (their other predictions as noisy labels of
    loss weight lambda_d) and retrains. Cost is counted in boxes. Writes OUT/curve.json after every
    round; run the same command again to resume at the last completed round.
    """
    from components.active_learning import active_learning
    from curation_core.active.config import load_active_learning_config
    from curation_core.engine.trainer import TrainingInterrupted

    load_active_learning_config(config_path, overrides)  # a bad file fails before MLflow or training
    tracker = None
    if not no_track:
        from pipelines.tracking import log_active_learning, require_mlflow

        require_mlflow()
        tracker = log_active_learning
    try:
        summary = active_learning(str(config_path), str(out_dir), overrides=overrides, tracker=tracker,
                                  progress=ui.progress_bar, on_round=_round_line)
    except TrainingInterrupted as stop:
        click.echo(f"detcurate active-learning: stopped at iteration {stop.iteration}/{stop.max_iter} of "
                   f"{stop.checkpoint.parent} (checkpoint written); run the same command again to resume", err=True)
        sys.exit(stop.exit_code)
    ui.print_table(f"{summary.config.level}-level active learning, measure {summary.config.measure}",
                   ["round", "boxes", "images", "AP", "AP50"],
                   [(r["round"], r["boxes"], r["images"], f"{r['AP']:.4f}", f"{r['AP50']:.4f}") for r in summary.rounds])
    click.echo(f"wrote {summary.curve_path}")
