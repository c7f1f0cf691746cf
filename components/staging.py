"""Step outputs that appear whole or not at all.

A step writes into a staging folder beside its output (``.<name>.partial``) and renames it onto the
output when it has finished, with a ``step.json`` that records the step's parameters (its fingerprint).
So a step killed halfway leaves no partial output: only the staging folder, which the next run with the
same parameters continues (training resumes from its checkpoint, bit for bit; synthesis rewrites only
missing files) and a run with other parameters deletes. A finished output with the same fingerprint is
reused as it is (idempotent re-runs: Airflow retries, ``dvc repro``).

A retry that runs somewhere else finds no staging folder beside its output: a Kubeflow retry runs in a
fresh pod, whose output artifact folder is new and empty. ``scratch_output`` keeps such a step's work in
a folder that outlives the attempt (on a volume every attempt mounts), named by a key that every attempt
of the task shares, and copies the finished output onto the attempt's own output folder at the end.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

from curation_core.errors import ConfigError
from curation_core.io import write_json_atomic

#: Written into a finished output: ``{"step": ..., "fingerprint": {...}, "result": {...}}``.
DONE_NAME = "step.json"
_STAGE_FINGERPRINT = ".fingerprint.json"
#: One part of a scratch key: a plain folder name (no separator, no leading dot, no unresolved ``{{...}}``).
_KEY_PART = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*")


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
    _replace(stage, out)


def scratch_dir(root: str | os.PathLike[str], key: Sequence[str]) -> Path:
    """The scratch folder of ``key`` under ``root``: ``<root>/<key[0]>/<key[1]>/...``.

    Each part of ``key`` must be a plain folder name (letters, digits, ``.``, ``_``, ``-``, not starting
    with a dot): no key reaches outside ``root``, and an unresolved runtime placeholder such as
    ``{{$.pipeline_job_uuid}}`` (the same string in every run) is refused instead of shared.
    """
    if not key:
        raise ConfigError("scratch_dir(key=) expects at least one part; got ()")
    for index, part in enumerate(key):
        if not _KEY_PART.fullmatch(part):
            raise ConfigError(f"scratch_dir(key=) expects plain folder names (letters, digits, '.', '_', '-'); "
                              f"got {part!r} at part {index}")
    return Path(root).joinpath(*key)


@contextlib.contextmanager
def scratch_output(out_dir: str | os.PathLike[str], *, root: str | os.PathLike[str] | None,
                   key: Sequence[str]) -> Iterator[Path]:
    """Yield the folder a step should write as its output; with ``root``, the work stays there until whole.

    Without ``root`` (None or empty) this yields ``out_dir`` itself and does nothing else: the step
    stages beside its output as usual (``staged_output``) and ``key`` is not read. With ``root`` (a
    folder that outlives the process, e.g. on a volume that every attempt of a task mounts) it yields
    ``scratch_dir(root, key) / <name of out_dir>``: there the step stages, resumes and publishes as
    usual, so an attempt after a killed one continues from what that one left (training from its
    checkpoint) although its own ``out_dir`` is new. Attempts of one task must share ``key``; other
    tasks and other runs must not.

    When the block ends, the finished folder is copied into ``staging_dir(out_dir)`` and renamed onto
    ``out_dir`` (the output appears whole or not at all), with the paths into the scratch folder that
    its ``step.json`` records rewritten to name ``out_dir`` (``_relocate_record``); then the key's
    folder is deleted, with the parents it leaves empty below ``root``. On an exception the scratch
    folder stays for the next attempt and ``out_dir`` is untouched; a task whose attempts all failed
    leaves its folder behind.
    """
    if not root:
        yield Path(out_dir)
        return
    base, out = Path(root), Path(out_dir)
    scratch = scratch_dir(base, key)
    work = scratch / out.name
    scratch.mkdir(parents=True, exist_ok=True)
    yield work
    stage = staging_dir(out)
    if stage.exists():
        shutil.rmtree(stage)
    shutil.copytree(work, stage, symlinks=True)  # the output may lie on another file system: copy, then rename
    _relocate_record(stage / DONE_NAME, work, out)
    _replace(stage, out)
    shutil.rmtree(scratch)
    for parent in scratch.relative_to(base).parents[:-1]:  # the key's own parents, root excluded
        try:
            (base / parent).rmdir()
        except OSError:  # not empty: another task of the run works there
            break


def _relocate_record(record: Path, old: Path, new: Path) -> None:
    """Rewrite every string of the JSON file ``record`` that is ``old`` or a path below it to the same path
    below ``new`` (nothing if there is no such file)."""
    if not record.is_file():
        return
    prefixes = {str(old), str(old.resolve())}

    def move(value: Any) -> Any:
        if isinstance(value, dict):
            return {k: move(v) for k, v in value.items()}
        if isinstance(value, list):
            return [move(v) for v in value]
        if isinstance(value, str):
            for prefix in prefixes:
                if value == prefix or value.startswith(prefix + os.sep):
                    return str(new) + value[len(prefix):]
        return value

    write_json_atomic(record, move(json.loads(record.read_text(encoding="utf-8"))), indent=2)


def _replace(stage: Path, out: Path) -> None:
    """Rename the finished ``stage`` onto ``out``, whatever ``out`` held."""
    if out.is_symlink() or out.is_file():
        out.unlink()
    elif out.exists():
        shutil.rmtree(out)  # an older output (other parameters) or an empty folder made by the runner
    os.replace(stage, out)
