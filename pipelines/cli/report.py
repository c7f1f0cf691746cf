"""``detcurate report``: figures of training runs."""

from __future__ import annotations

from pathlib import Path

import click

from curation_core.errors import ConfigError
from pipelines.cli import ui


def _parse_run(item: str) -> tuple[str, Path]:
    label, sep, path = item.partition("=")
    if not sep or not label.strip() or not path.strip():
        raise ConfigError(f"--run {item!r}: expected LABEL=PATH/TO/metrics.json (e.g. teacher=runs/demo_teacher/metrics.json)")
    return label.strip(), Path(path.strip())


@click.command("report")
@click.option("--run", "runs", multiple=True, required=True, metavar="LABEL=METRICS_JSON",
              help="A training run: a label and the metrics.json detcurate train wrote (repeatable).")
@click.option("--out", required=True, type=click.Path(path_type=Path), help="PNG file to write (atomically).")
@click.option("--stat", "stats", multiple=True, default=("AP", "AP50"), show_default=True,
              help="COCO statistic to draw, one panel each (repeatable): AP, AP50, AP75, APs, APm, APl, AR1, ...")
@click.option("--title", help="Figure title.")
def report_cmd(runs: tuple[str, ...], out: Path, stats: tuple[str, ...], title: str | None) -> None:
    """Draw validation COCO statistics over training iterations, one line per run, into a PNG."""
    from components.report import plot_training_curves
    from curation_core.evaluation import COCO_STAT_NAMES

    unknown = [s for s in stats if s not in COCO_STAT_NAMES]
    if unknown:
        raise ConfigError(f"--stat {unknown[0]!r}: unknown statistic; valid choices: {', '.join(COCO_STAT_NAMES)}")
    parsed = dict(_parse_run(item) for item in runs)
    if len(parsed) != len(runs):
        raise ConfigError("--run: every label must be different")
    path = plot_training_curves(parsed, out, stats=stats, title=title)
    ui.stdout.print(f"wrote {path}")


@click.command("report-html")
@click.option("--out", required=True, type=click.Path(path_type=Path),
              help="Folder to write report.html, report.md and figures/ into (whole or not at all).")
@click.option("--results", type=click.Path(path_type=Path), default=Path("benchmarks/results"), show_default=True,
              help="Benchmark results folder (<name>.md tables, <name>.json rows, <name>*.png figures).")
@click.option("--pipeline-report", type=click.Path(path_type=Path),
              help="Report folder of a pipeline run (report.md, training_curves.png), shown first.")
@click.option("--title", default="DetCurate report", show_default=True, help="Title of the report.")
@click.option("--no-track", is_flag=True, help="Do not log the report to MLflow.")
def html_report_cmd(out: Path, results: Path, pipeline_report: Path | None, title: str, no_track: bool) -> None:
    """One HTML report (self-contained, figures embedded) and its Markdown twin, of the benchmark
    results and a pipeline run; logged to MLflow as the artifacts of a run named `report`."""
    from components.html_report import write_report

    paths = write_report(out, results_dir=results, pipeline_dir=pipeline_report, title=title)
    ui.stdout.print(f"wrote {paths['html']} and {paths['markdown']} ({len(paths['figures'])} figures)")
    if not no_track:
        from pipelines.tracking import log_report

        run_id = log_report(out)
        ui.stdout.print(f"logged to MLflow run {run_id} (artifacts under report/)")
