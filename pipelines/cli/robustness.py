"""``detcurate robustness``: the missing-label robustness grid (modes x losses x curation x seeds)."""

from __future__ import annotations

import sys
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any, TypeVar

import click

from pipelines.cli import ui

T = TypeVar("T")


class _GridProgress:
    """One rich display with two bars: the cells of the grid and the iterations of the running cell.

    (Two separate rich displays cannot be live at once.) Off a terminal it prints one line per
    finished cell instead.
    """

    def __init__(self) -> None:
        from rich.progress import (
            BarColumn,
            MofNCompleteColumn,
            Progress,
            TextColumn,
            TimeElapsedColumn,
            TimeRemainingColumn,
        )

        self.bar = Progress(TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
                            TimeElapsedColumn(), TimeRemainingColumn(), TextColumn("{task.fields[info]}"),
                            console=ui.stderr, disable=not ui.stderr.is_terminal)

    def cells(self, items: Iterable[T], *, total: int | None = None, description: str = "") -> Iterator[T]:
        with self.bar:
            task = self.bar.add_task(description, total=total, info="")
            for item in items:
                yield item
                self.bar.advance(task)

    def hooks(self, cell: Any) -> list[Any]:
        from curation_core.engine.hooks import Hook

        bar = self.bar

        class CellBar(Hook):
            def before_train(self) -> None:
                self.task = bar.add_task(cell.name, total=self.trainer.max_iter, completed=self.trainer.iter, info="")

            def after_step(self) -> None:
                loss = self.trainer.last_metrics.get("loss", float("nan"))
                bar.update(self.task, completed=self.trainer.iter, info=f"loss {loss:.3f}")

            def after_train(self) -> None:
                bar.remove_task(self.task)

            def on_exception(self, error: BaseException) -> None:
                bar.remove_task(self.task)

        return [CellBar()]

    def finished(self, result: dict[str, Any]) -> None:
        line = (f"{result['mode']} {result['loss']} {result['curation']} seed {result['seed']}: AP {result['AP']:.4f} "
                f"AP50 {result['AP50']:.4f} AP75 {result['AP75']:.4f} ({result['seconds']:.0f} s)")
        if ui.stderr.is_terminal:
            self.bar.console.print(line)
        else:
            click.echo(line, err=True)


@click.command("robustness")
@click.option("--config", "config_path", required=True, type=click.Path(path_type=Path),
              help="Robustness YAML (configs/robustness_*.yaml).")
@click.option("--out", "out_dir", required=True, type=click.Path(path_type=Path, file_okay=False),
              help="Output folder: robustness.json/.md/.png, data/, cells/ (resumed if it exists).")
@click.option("--set", "overrides", multiple=True, metavar="FIELD=VALUE",
              help="Override a top-level field of the robustness file (--set 'seeds=[0]') or a training-config "
                   "field (--set base.overrides.schedule.max_iter=100); repeatable.")
@click.option("--no-track", is_flag=True, help="Do not log the finished grid to MLflow.")
def robustness_cmd(config_path: Path, out_dir: Path, overrides: tuple[str, ...], no_track: bool) -> None:
    """Robustness to missing labels: train and evaluate one detector per mode, loss, curation and seed.

    \b
    Cells: every mode (normal, easy, hard, extreme, drop-per-category) x loss x curation x seed, all
    seeds' first cells first. Each is evaluated on the clean validation set (pycocotools AP/AP50/AP75).
    Writes OUT/robustness.json, a Markdown table of mean and spread over seeds and a figure, after
    every cell. Run it again to resume: finished cells are never retrained, an interrupted cell
    continues from its checkpoint. The whole configuration is checked before any training.
    """
    from components.robustness import robustness_grid
    from curation_core.engine.trainer import TrainingInterrupted
    from curation_core.robustness.config import load_robustness_config

    config = load_robustness_config(config_path, overrides)  # a bad file fails before MLflow is touched
    tracker = None
    if not no_track:
        from pipelines.tracking import log_robustness, require_mlflow

        require_mlflow()
        tracker = log_robustness
    resolve_uri = None
    if any(str(o.get("curation.teacher", "")).startswith("models:/") for o in config.curation_overrides.values()):
        from pipelines.registry import resolve_checkpoint as resolve_uri
    display = _GridProgress()
    try:
        result = robustness_grid(str(config_path), str(out_dir), overrides=overrides, tracker=tracker,
                                 progress=display.cells, cell_hooks=display.hooks, on_cell=display.finished,
                                 resolve_uri=resolve_uri)
    except TrainingInterrupted as stop:
        cause = f"signal {stop.signum}" if stop.signum else "a stop request"
        click.echo(f"detcurate robustness: stopped by {cause} at iteration {stop.iteration}/{stop.max_iter} of the cell "
                   f"in {stop.checkpoint.parent} (checkpoint written); run the same command again to resume the grid",
                   err=True)
        sys.exit(stop.exit_code)
    ui.stdout.print(result.markdown_path.read_text(encoding="utf-8"))
    ui.stdout.print(f"wrote {result.json_path}, {result.markdown_path} and {result.plot_path}"
                    + ("" if result.complete else f" ({len(result.cells)} of {result.total_cells} cells)"))
