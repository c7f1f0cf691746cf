"""The selection log: one CSV row per scored image, ``selections.csv`` in the run folder.

Columns: ``iteration`` (the training step, 1-based, at which the super-batch was scored), ``position``
(stream position), ``image_id``, ``score`` (higher = more useful), ``picked`` (1 if kept), ``method``.

Rows are buffered and flushed before every checkpoint, so the file always covers the checkpoint; on
resume the rows of steps after the checkpoint (written by a run that was killed later) are cut off,
so the log of a resumed run equals that of an uninterrupted one.
"""

from __future__ import annotations

import csv
import os
from pathlib import Path

import numpy as np

#: File name inside ``train.output_dir``.
LOG_NAME = "selections.csv"
COLUMNS = ("iteration", "position", "image_id", "score", "picked", "method")


class SelectionLog:
    """Appends rows to ``path``; ``truncate_after(iteration)`` when resuming."""

    def __init__(self, path: str | os.PathLike[str], method: str) -> None:
        self.path, self.method = Path(path), method
        self._rows: list[tuple[object, ...]] = []

    def add(self, iteration: int, positions: np.ndarray, image_ids: np.ndarray, scores: np.ndarray,
            picked: np.ndarray) -> None:
        for row in zip(positions.tolist(), image_ids.tolist(), scores.tolist(), picked.astype(int).tolist(), strict=True):
            self._rows.append((iteration, row[0], row[1], f"{row[2]:.6g}", row[3], self.method))

    def flush(self) -> None:
        """Append the buffered rows (the header first if the file is new)."""
        new = not self.path.is_file()
        if not self._rows and not new:
            return
        with self.path.open("a", newline="", encoding="utf-8") as handle:
            writer = csv.writer(handle)
            if new:
                writer.writerow(COLUMNS)
            writer.writerows(self._rows)
            handle.flush()
            os.fsync(handle.fileno())
        self._rows.clear()

    def truncate_after(self, iteration: int) -> None:
        """Keep only rows of steps ``<= iteration`` (rewritten atomically)."""
        if not self.path.is_file():
            return
        from curation_core.io import atomic_write

        with self.path.open(newline="", encoding="utf-8") as handle:
            rows = list(csv.reader(handle))
        kept = [rows[0]] + [r for r in rows[1:] if int(r[0]) <= iteration] if rows else [list(COLUMNS)]
        with atomic_write(self.path, "w") as handle:
            csv.writer(handle).writerows(kept)


def read_selections(path: str | os.PathLike[str]) -> dict[str, np.ndarray]:
    """The log as columns: int64 arrays, ``score`` float64, ``method`` as strings."""
    with Path(path).open(newline="", encoding="utf-8") as handle:
        rows = list(csv.DictReader(handle))
    out: dict[str, np.ndarray] = {}
    for name in COLUMNS:
        values = [r[name] for r in rows]
        out[name] = np.array(values, dtype=np.float64 if name == "score" else object if name == "method" else np.int64)
    return out
