"""``detcurate train`` and ``detcurate evaluate``: the training engine from the command line."""

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
    from components.train import train_detector
    from curation_core.engine.config import load_config
    from curation_core.engine.trainer import TrainingInterrupted

    config = load_config(config_path, overrides)  # validate before anything else starts
    rank0 = int(os.environ.get("RANK", "0")) == 0  # under torchrun, rank 0 draws progress and talks to MLflow
    hooks = [_progress_hook()] if rank0 else []
    if not no_track and rank0:
        from pipelines.tracking import training_hooks

        hooks += training_hooks(config, register_as=register_as)
    resolve_uri = None
    if config.curation.teacher and config.curation.teacher.startswith("models:/"):
        from pipelines.registry import resolve_checkpoint as resolve_uri
    try:
        result = train_detector(str(config_path), overrides, hooks=hooks, resume=resume, resolve_uri=resolve_uri)
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


@click.command("evaluate")
@click.option("--checkpoint", required=True, type=click.Path(path_type=Path), help="Checkpoint written by detcurate train.")
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
    """Evaluate a checkpoint on a COCO data set: the 12 COCO box statistics, as pycocotools computes them."""
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

            log_evaluation(stats, checkpoint=checkpoint, report_path=report, data_paths=[annotations, images],
                           register_as=register_as, alias=alias)
    ui.print_table(f"{checkpoint} on {annotations}", ["statistic", "value"],
                   zip(COCO_STAT_NAMES, stats.stats, strict=True))
