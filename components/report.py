"""Pipeline step: figures of training runs (COCO AP over iterations), as a PNG file.

Input: the ``metrics.json`` that ``detcurate train`` writes next to its checkpoint (``history``: one
entry per periodic evaluation, ``{"iteration", "AP", "AP50", ...}``; ``final``: the statistics at the
end). Output: one figure, one panel per statistic, one line per run, written atomically.
"""

from __future__ import annotations

import io
import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from curation_core.errors import DataError
from curation_core.io import write_bytes_atomic

#: Statistics drawn by default, one panel each (names of ``CocoStats.named()``).
DEFAULT_STATS = ("AP", "AP50")
#: Size of one panel in inches, and the resolution of the PNG.
PANEL_SIZE = (4.5, 3.2)
DPI = 110


def read_history(path: str | Path) -> list[dict[str, Any]]:
    """The evaluation history of a ``metrics.json``, sorted by iteration.

    Raises ``DataError`` naming the file when it is missing, not JSON, or has no usable history.
    """
    source = Path(path)
    try:
        report = json.loads(source.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise DataError(f"{source}: <file>: metrics file does not exist (train the run first)") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise DataError(f"{source}: <file>: not a readable JSON metrics file ({exc})") from None
    history = report.get("history") if isinstance(report, dict) else None
    if not isinstance(history, list) or not all(isinstance(h, dict) and "iteration" in h for h in history):
        raise DataError(f"{source}: history: expected a list of evaluations with an 'iteration' each")
    if not history:
        raise DataError(f"{source}: history: no evaluations (the run had no validation set)")
    return sorted(history, key=lambda h: h["iteration"])


def plot_training_curves(runs: Mapping[str, str | Path], out_png: str | Path, *,
                         stats: Sequence[str] = DEFAULT_STATS, title: str | None = None) -> Path:
    """Draw ``stats`` over training iterations for every run of ``runs`` (label -> metrics.json) into ``out_png``.

    A run whose history lacks a statistic is a ``DataError`` naming the file and the statistic. Returns
    the path written.
    """
    if not runs:
        raise ValueError("plot_training_curves(runs=) expects at least one run; got none.")
    histories = {label: read_history(path) for label, path in runs.items()}
    for label, history in histories.items():
        for stat in stats:
            missing = [h["iteration"] for h in history if not isinstance(h.get(stat), int | float)]
            if missing:
                raise DataError(f"{runs[label]}: history: no numeric {stat!r} at iteration {missing[0]}")
    import matplotlib

    matplotlib.use("Agg")  # files only, never a window
    from matplotlib import pyplot as plt

    figure, axes = plt.subplots(1, len(stats), figsize=(PANEL_SIZE[0] * len(stats), PANEL_SIZE[1]), squeeze=False)
    for axis, stat in zip(axes[0], stats, strict=True):
        for label, history in histories.items():
            axis.plot([h["iteration"] for h in history], [h[stat] for h in history], marker="o", label=label)
        axis.set_xlabel("iteration")
        axis.set_ylabel(f"val {stat}")
        axis.grid(alpha=0.3)
        axis.legend()
    if title:
        figure.suptitle(title)
    figure.tight_layout()
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=DPI)
    plt.close(figure)
    write_bytes_atomic(out_png, buffer.getvalue())
    return Path(out_png)
