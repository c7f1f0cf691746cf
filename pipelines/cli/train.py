"""``detcurate train``: the training engine from the command line (``detcurate evaluate``: ``cli.evaluate``)."""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Any

import click

from pipelines.cli import ui


def _progress_hook() -> Any:
    """A hook drawing a rich bar with loss, learning rate and images/s (negligible cost per step)."""
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        TextColumn,
        TimeElapsedColumn,
        TimeRemainingColumn,
    )

    from curation_core.engine.hooks import Hook

    class ProgressHook(Hook):
        def before_train(self) -> None:
            self.bar = Progress(TextColumn("[bold]train"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                                TimeRemainingColumn(), TextColumn("{task.fields[metrics]}"), console=ui.stderr,
                                disable=not ui.stderr.is_terminal)
            self.bar.start()
            self.task = self.bar.add_task("train", total=self.trainer.max_iter, completed=self.trainer.iter, metrics="")

        def after_step(self) -> None:
            m = self.trainer.last_metrics
            text = (f"loss {m.get('loss', float('nan')):.3f}  lr {m.get('lr', float('nan')):.2e}  "
                    f"{m.get('images_per_s', float('nan')):.1f} img/s")
            self.bar.update(self.task, completed=self.trainer.iter, metrics=text)

        def after_eval(self, stats: Any) -> None:
            named = stats.named()
            self.bar.console.print(f"iteration {self.trainer.iter}: val AP {named['AP']:.4f}  AP50 {named['AP50']:.4f}")

        def after_train(self) -> None:
            self.bar.stop()

    return ProgressHook()


@click.command("train")
@click.option("--config", "config_path", required=True, type=click.Path(path_type=Path), help="YAML training config.")
@click.option("--set", "overrides", multiple=True, metavar="KEY=VALUE",
              help="Override one config field, e.g. --set schedule.max_iter=600 (repeatable).")
@click.option("--resume", is_flag=True, help="Continue the run in train.output_dir exactly where it stopped.")
@click.option("--no-track", is_flag=True, help="Do not log the run to MLflow.")
@click.option("--register-as", metavar="NAME", help="Register the final checkpoint in the MLflow model registry.")
def train_cmd(config_path: Path, overrides: tuple[str, ...], resume: bool, no_track: bool, register_as: str | None) -> None:
    """Train a detector (FCOS, RetinaNet or Faster R-CNN, from scratch) as the config describes.

    Writes checkpoint.pt, config.yaml and metrics.json into train.output_dir; checkpoints every
    train.checkpoint_every iterations and on SIGINT/SIGTERM (then continue with --resume). Periodic
    COCO evaluation on the validation set. Tracked in MLflow unless --no-track.
    """
    from components.train import TrainingInterrupted, load_train_config, train_config

    config = load_train_config(config_path, overrides)  # validated once, before anything else starts
    rank0 = int(os.environ.get("RANK", "0")) == 0  # under torchrun, rank 0 draws progress and talks to MLflow
    hooks = [_progress_hook()] if rank0 else []
    if not no_track and rank0:
        from pipelines.tracking_hook import training_hooks

        hooks += training_hooks(config, register_as=register_as)
    resolve_uri = None
    if config.curation.teacher and config.curation.teacher.startswith("models:/"):
        from pipelines.registry import resolve_checkpoint as resolve_uri
    try:
        result = train_config(config, hooks=hooks, resume=resume, resolve_uri=resolve_uri)
    except TrainingInterrupted as stop:
        click.echo(f"detcurate train: {stop}", err=True)
        sys.exit(stop.exit_code)
    rows: list[tuple[str, Any]] = [("iterations", result.iterations), ("train images/s", result.images_per_s)]
    if config.curation.method != "none":
        rows += [("curation", config.curation.method), ("scored images/s", result.scored_images_per_s),
                 ("selections", str(result.output_dir / "selections.csv"))]
    rows.append(("checkpoint", str(result.checkpoint)))
    if result.final_stats is not None:
        rows += list(result.final_stats.named().items())
    ui.print_table(f"Training run {result.output_dir}", ["", "value"], rows)
