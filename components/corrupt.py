"""Pipeline step: corrupt the annotations of a COCO file (missing-label and noisy-label protocols).

Reads ``in_path``, calls ``curation_core.corrupt.corrupt_annotations`` once, and writes the corrupted
COCO file and a JSON report, both atomically. Options are checked before anything is read or written.
"""

from __future__ import annotations

import os
from pathlib import Path

from curation_core.coco import load_coco, save_coco
from curation_core.corrupt import CorruptionResult, check_corruption_options, corrupt_annotations
from curation_core.io import write_json_atomic


def default_report_path(out_path: str | os.PathLike[str]) -> Path:
    """``train_easy.json`` -> ``train_easy.report.json``."""
    return Path(out_path).with_suffix(".report.json")


def corrupt_coco(
    in_path: str | os.PathLike[str],
    out_path: str | os.PathLike[str],
    *,
    mode: str,
    seed: int,
    fraction: float | None = None,
    amount: float | None = None,
    report_path: str | os.PathLike[str] | None = None,
) -> CorruptionResult:
    """Write a corrupted copy of the COCO file ``in_path`` to ``out_path`` and a report beside it.

    Parameters
    ----------
    in_path, out_path : COCO JSON files (``out_path`` may equal ``in_path``; writes are atomic).
    mode, seed, fraction, amount : see ``curation_core.corrupt.corrupt_annotations``.
    report_path : JSON report; defaults to ``out_path`` with the suffix ``.report.json``. It holds the
        mode, parameters, seed, both paths, overall and per-category counts and the affected ids.

    Raises
    ------
    ConfigError
        Invalid options (nothing is written).
    DataError
        ``in_path`` cannot be read or is not valid COCO (nothing is written).
    """
    check_corruption_options(mode, seed=seed, fraction=fraction, amount=amount)
    dataset = load_coco(in_path)
    result = corrupt_annotations(dataset, mode=mode, seed=seed, fraction=fraction, amount=amount)
    report = {"input": str(in_path), "output": str(out_path), **result.as_dict()}
    save_coco(result.dataset, out_path)
    write_json_atomic(report_path if report_path is not None else default_report_path(out_path), report, indent=2)
    return result
