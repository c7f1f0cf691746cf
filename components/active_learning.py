"""Pipeline step: simulated active learning, box-level or image-level (DVC stage, Kubeflow, Airflow).

File in, folder out: reads an active-learning YAML (``curation_core.active.config``), calls
``curation_core.active.loop.run_active_learning`` once, and leaves in ``out_dir`` the rounds' folders,
``state.json``, ``curve.json`` (``{"level", "measure", "seed", "points": [[boxes, AP], ...],
"rounds": [...]}``) and ``curve.md`` (a row per round: boxes labelled, images, validation AP and AP50),
both rewritten after every round. Running it again on the same folder resumes at the last completed
round.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from curation_core.active.config import ActiveLearningConfig, load_active_learning_config
from curation_core.active.loop import STATE_NAME, run_active_learning
from curation_core.coco import read_json
from curation_core.engine.hooks import Hook
from curation_core.io import atomic_write, write_json_atomic
from curation_core.progress import ProgressFn

CURVE_NAME = "curve.json"
CURVE_TABLE = "curve.md"
#: Called once with the finished run (e.g. ``pipelines.tracking.log_active_learning``).
Tracker = Callable[["ActiveLearningSummary", str], None]


@dataclass(frozen=True)
class ActiveLearningSummary:
    """What ``active_learning`` wrote: the curve file and its content."""

    config: ActiveLearningConfig
    curve_path: Path
    points: list[list[float]]
    rounds: list[dict[str, Any]]


def active_learning(config_path: str, out_dir: str, *, overrides: Sequence[str] = (), tracker: Tracker | None = None,
                    progress: ProgressFn | None = None, round_hooks: Callable[[int], Sequence[Hook]] | None = None,
                    on_round: Callable[[dict[str, Any]], None] | None = None) -> ActiveLearningSummary:
    """Run (or resume) the active-learning rounds of ``config_path`` into ``out_dir``.

    Parameters
    ----------
    overrides : ``FIELD=VALUE`` for top-level fields of the file (``measure=random``).
    tracker : called as ``tracker(summary, config_path)`` when every round has finished.
    progress, round_hooks, on_round : see ``run_active_learning`` (``hooks``, ``on_round``).

    Raises
    ------
    ConfigError, DataError
        Bad configuration or data (one line), before any training.
    TrainingInterrupted
        SIGINT/SIGTERM: the running round's checkpoint is written; call again to resume.
    """
    config = load_active_learning_config(config_path, overrides)
    curve_path = Path(out_dir) / CURVE_NAME

    def write_curve(rounds: list[dict[str, Any]]) -> None:
        write_json_atomic(curve_path, {"level": config.level, "measure": config.measure, "seed": config.seed,
                                       "points": [[r["boxes"], r["AP"]] for r in rounds], "rounds": rounds}, indent=1)
        with atomic_write(Path(out_dir) / CURVE_TABLE) as handle:
            handle.write(curve_markdown(config, rounds))

    def after_round(record: dict[str, Any]) -> None:
        write_curve(read_json(Path(out_dir) / STATE_NAME)["rounds"])  # resumed rounds included
        if on_round is not None:
            on_round(record)

    result = run_active_learning(config, out_dir, source=config_path, progress=progress, hooks=round_hooks,
                                 on_round=after_round)
    write_curve(result.rounds)
    summary = ActiveLearningSummary(config=config, curve_path=curve_path, points=result.points, rounds=result.rounds)
    if tracker is not None:
        tracker(summary, config_path)
    return summary


def curve_markdown(config: ActiveLearningConfig, rounds: Sequence[dict[str, Any]]) -> str:
    """The curve as a Markdown table, a row per round (``round``, ``boxes``, ``images``, ``AP``, ``AP50``)."""
    lines = [f"# {config.level.capitalize()}-level active learning, measure {config.measure}", "",
             f"Round 0: {config.initial_images} random, fully labelled images; then {config.rounds} rounds of "
             f"{config.budget} boxes. AP on the validation set; cost in boxes labelled.", "",
             "| round | boxes | images | AP | AP50 |", "|---|---|---|---|---|"]
    lines += [f"| {r['round']} | {r['boxes']} | {r['images']} | {r['AP']:.4f} | {r['AP50']:.4f} |" for r in rounds]
    return "\n".join(lines) + "\n"
