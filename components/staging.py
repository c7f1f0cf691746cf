"""Step outputs that appear whole or not at all.

A step writes into a staging folder beside its output (``.<name>.partial``) and renames it onto the
output when it has finished, with a ``step.json`` that records the step's parameters (its fingerprint).
So a step killed halfway leaves no partial output: only the staging folder, which the next run with the
same parameters continues (training resumes from its checkpoint, bit for bit; synthesis rewrites only
missing files) and a run with other parameters deletes. A finished output with the same fingerprint is
reused as it is (idempotent re-runs: Airflow retries, ``dvc repro``, a Kubeflow retry on the same volume).
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

from curation_core.io import write_json_atomic

#: Written into a finished output: ``{"step": ..., "fingerprint": {...}, "result": {...}}``.
DONE_NAME = "step.json"
_STAGE_FINGERPRINT = ".fingerprint.json"


def staging_dir(out_dir: str | os.PathLike[str]) -> Path:
    """The staging folder of ``out_dir``: ``<parent>/.<name>.partial``."""
    out = Path(out_dir)
    return out.with_name(f".{out.name}.partial")


def _canonical(fingerprint: Mapping[str, Any]) -> Any:
    return json.loads(json.dumps(fingerprint, sort_keys=True, default=str))


def finished(out_dir: str | os.PathLike[str], fingerprint: Mapping[str, Any]) -> dict[str, Any] | None:
    """The ``step.json`` of ``out_dir`` if it is a finished output of these parameters, else None."""
    done = Path(out_dir) / DONE_NAME
    try:
        record = json.loads(done.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return record if record.get("fingerprint") == _canonical(fingerprint) else None


@contextlib.contextmanager
def staged_output(out_dir: str | os.PathLike[str], *, step: str, fingerprint: Mapping[str, Any],
                  result: dict[str, Any]) -> Iterator[Path]:
    """Yield the staging folder of ``out_dir``; on success publish it as ``out_dir`` in one rename.

    ``result`` is a dict the block may fill; it is stored in ``step.json`` with ``step`` and
    ``fingerprint``. On an exception the staging folder stays (for the next run to continue) and
    ``out_dir`` is untouched. A staging folder left by a run with another fingerprint is deleted first.
    """
    out, stage = Path(out_dir), staging_dir(out_dir)
    wanted = _canonical(fingerprint)
    marker = stage / _STAGE_FINGERPRINT
    if stage.exists():
        try:
            same = json.loads(marker.read_text(encoding="utf-8")) == wanted
        except (OSError, ValueError):
            same = False
        if not same:
            shutil.rmtree(stage)
    stage.mkdir(parents=True, exist_ok=True)
    write_json_atomic(marker, wanted)
    yield stage
    marker.unlink()
    write_json_atomic(stage / DONE_NAME, {"step": step, "fingerprint": wanted, "result": result}, indent=2)
    if out.is_symlink() or out.is_file():
        out.unlink()
    elif out.exists():
        shutil.rmtree(out)  # an older output (other parameters) or an empty folder made by the runner
    os.replace(stage, out)
