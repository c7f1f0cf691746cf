"""Pipeline step: the report of a pipeline run, from the evaluation of every model it trained.

Output folder (published whole): ``metrics.json`` (per model the 12 COCO statistics in pycocotools'
order, by name, and the AP per category; nothing that depends on where or how fast the run went, so
two runners of the same profile and seed write the same file), ``report.md`` (one table, a row per
model) and, when the models have an evaluation history, ``training_curves.png`` (``components.report``),
and ``html/``: the run's HTML report (``components.html_report``: ``report.html``, self-contained, with
``report.md`` and ``figures/``), the pipeline's table and figure first, then the sections of the other
steps' results handed in as ``sections`` (their Markdown tables and figures: balancing, robustness).
"""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from components.html_report import write_report
from components.report import plot_training_curves, read_history
from components.staging import staged_output
from curation_core.errors import DataError
from curation_core.evaluation import COCO_STAT_NAMES
from curation_core.io import write_json_atomic

METRICS_NAME = "metrics.json"
MARKDOWN_NAME = "report.md"
FIGURE_NAME = "training_curves.png"
HTML_DIR = "html"
#: Statistics in the Markdown table.
TABLE_STATS = ("AP", "AP50", "AP75", "APs", "APm", "APl", "AR100")


def pipeline_report(evaluations: Mapping[str, str | os.PathLike[str]], out_dir: str | os.PathLike[str], *,
                    histories: Mapping[str, str | os.PathLike[str]] | None = None, title: str = "Pipeline run",
                    extra: Mapping[str, Any] | None = None,
                    sections: Mapping[str, str | os.PathLike[str]] | None = None) -> dict[str, Any]:
    """Write the report of the models ``evaluations`` (name -> ``eval.json`` of ``evaluate_trained``).

    ``histories``: name -> ``metrics.json`` of the training run, drawn as AP over iterations when every
    one has evaluations. ``extra``: JSON-ready entries added to ``metrics.json`` (profile, seed, data
    version). ``sections``: file name -> path of the other steps' results for the HTML report, named as
    ``components.html_report`` reads a results folder (``robustness.md``, ``robustness.png``,
    ``balance.md``, ``balance_classes.png``); a missing file is a ``DataError`` naming it. Returns the
    content of ``metrics.json``.
    """
    if not evaluations:
        raise ValueError("pipeline_report(evaluations=) expects at least one model; got none.")
    models = {name: _model_entry(name, Path(path)) for name, path in evaluations.items()}
    metrics: dict[str, Any] = {**dict(extra or {}), "models": models}
    with staged_output(out_dir, step="report", fingerprint={"evaluations": {k: str(v) for k, v in evaluations.items()},
                                                            "extra": dict(extra or {})}, result={}) as stage:
        write_json_atomic(stage / METRICS_NAME, metrics, indent=2)
        figure = _figure(histories or {}, stage / FIGURE_NAME, title)
        (stage / MARKDOWN_NAME).write_text(_markdown(title, models, figure), encoding="utf-8")
        _html(stage, sections or {}, title)
    return metrics


def _html(stage: Path, sections: Mapping[str, str | os.PathLike[str]], title: str) -> None:
    """``stage/html`` from the pipeline's table and figure (as ``pipeline.md``, ``pipeline_*.png``) plus
    ``sections``, copied into a results folder for ``write_report`` and removed afterwards."""
    results = stage / ".sections"
    if results.exists():
        shutil.rmtree(results)
    results.mkdir()
    own = {"pipeline.md": stage / MARKDOWN_NAME, f"pipeline_{FIGURE_NAME}": stage / FIGURE_NAME}
    for name, source in {**{k: v for k, v in own.items() if v.is_file()}, **sections}.items():
        if not Path(source).is_file():
            raise DataError(f"{source}: <file>: result of a pipeline step for the report does not exist")
        shutil.copyfile(source, results / name)
    write_report(stage / HTML_DIR, results_dir=results, pipeline_dir=None, title=title)
    shutil.rmtree(results)


def _model_entry(name: str, path: Path) -> dict[str, Any]:
    try:
        report = json.loads(path.read_text(encoding="utf-8"))
        stats = [float(v) for v in report["stats"]]
    except FileNotFoundError:
        raise DataError(f"{path}: <file>: evaluation of model {name!r} does not exist") from None
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise DataError(f"{path}: stats: not an evaluation report of model {name!r} ({exc})") from None
    if len(stats) != len(COCO_STAT_NAMES):
        raise DataError(f"{path}: stats: expected {len(COCO_STAT_NAMES)} COCO statistics; got {len(stats)}")
    return {"stats": stats, "named": dict(zip(COCO_STAT_NAMES, stats, strict=True)),
            "per_category_ap": report.get("per_category_ap_by_name") or report.get("per_category_ap", {})}


def _figure(histories: Mapping[str, str | os.PathLike[str]], out_png: Path, title: str) -> bool:
    if not histories:
        return False
    try:
        for path in histories.values():
            read_history(path)
    except DataError:
        return False  # a run without periodic evaluations has no curve to draw
    plot_training_curves(histories, out_png, title=title)
    return True


def _markdown(title: str, models: Mapping[str, dict[str, Any]], figure: bool) -> str:
    lines = [f"# {title}", "", "| model | " + " | ".join(TABLE_STATS) + " |",
             "|---|" + "---|" * len(TABLE_STATS)]
    for name, entry in models.items():
        lines.append(f"| {name} | " + " | ".join(_cell(entry["named"][s]) for s in TABLE_STATS) + " |")
    lines += ["", "COCO box statistics on the validation set (pycocotools); -1: undefined (no ground truth "
              "in that size range)."]
    if figure:
        lines += ["", f"![validation AP over training iterations]({FIGURE_NAME})"]
    return "\n".join(lines) + "\n"


def _cell(value: float) -> str:
    return "n/a" if value < 0 else f"{value:.4f}"
