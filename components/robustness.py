"""Pipeline step: the missing-label robustness grid (DVC stage, Kubeflow component, Airflow task).

File in, folder out: reads a robustness YAML (``curation_core.robustness.config``), calls
``curation_core.robustness.runner.run_robustness`` once, and leaves ``robustness.json``,
``robustness.md`` and ``robustness.png`` (plus the cells' training folders) in ``out_dir``. Running it
again on the same folder resumes at the first unfinished cell; finished cells are never retrained.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from curation_core.engine.hooks import Hook
from curation_core.progress import ProgressFn
from curation_core.robustness.config import Cell, load_robustness_config
from curation_core.robustness.runner import RobustnessResult, run_robustness

#: Called once with the result when every cell has finished (e.g. ``pipelines.tracking.log_robustness``).
Tracker = Callable[[RobustnessResult, str], None]


def robustness_grid(config_path: str, out_dir: str, *, overrides: Sequence[str] = (), tracker: Tracker | None = None,
                    progress: ProgressFn | None = None, cell_hooks: Callable[[Cell], Sequence[Hook]] | None = None,
                    on_cell: Callable[[dict[str, Any]], None] | None = None,
                    resolve_uri: Callable[[str], str] | None = None) -> RobustnessResult:
    """Run (or resume) the robustness grid of ``config_path`` into ``out_dir``.

    Parameters
    ----------
    overrides : ``FIELD=VALUE`` for top-level fields of the robustness file (``losses=[focal]``).
    tracker : called as ``tracker(result, config_path)`` after the last cell (not after a partial run).
    progress, cell_hooks, on_cell, resolve_uri : see ``run_robustness``.

    Raises
    ------
    ConfigError, DataError
        Bad configuration or data (one line), before any training.
    TrainingInterrupted
        SIGINT/SIGTERM: the running cell's checkpoint is written; call again to resume.
    """
    config = load_robustness_config(config_path, overrides)
    result = run_robustness(config, out_dir, source=config_path, progress=progress, cell_hooks=cell_hooks,
                            on_cell=on_cell, resolve_uri=resolve_uri)
    if tracker is not None and result.complete:
        tracker(result, config_path)
    return result
