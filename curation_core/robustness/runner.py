"""Running the robustness grid: corrupted training sets, one training run per cell, resumable.

Output folder ``OUT``:

- ``data/train_<mode>.json`` (+ ``.report.json``): the corrupted training sets (``curation_core.corrupt``,
  seed ``corruption_seed``); ``normal`` trains on the clean file itself.
- ``cells/<mode>__<loss>__<curation>__seed<k>/``: the cell's training folder (``checkpoint.pt``,
  ``config.yaml``, ``metrics.json``), ``cell.json`` (what the cell trains: its spec) and, once it has
  finished and been evaluated, ``result.json`` (written atomically, last).
- ``robustness.json``, ``robustness.md``, ``robustness.png``: rewritten after every finished cell. The
  JSON's ``timing`` gives each cell's wall-clock and CPU seconds (of its last part, when it was resumed).

Resuming (the same command again): cells with a ``result.json`` are never retrained; an unfinished
cell continues from its own checkpoint (the engine resumes bit for bit) when its spec is unchanged, and
restarts cleanly otherwise (also when the engine refuses its checkpoint: corrupt, or written by an engine
version with other model fields). A finished cell whose spec differs from what the configuration now asks
(another recipe, another corrupted set) is a ``ConfigError`` before any training: its result would no
longer belong to the grid. The spec is the cell's training config without fields equal to their
defaults (so that a new engine field with a default keeps old cells valid; ``model.loss: focal`` counts as
a default) and without the fields that
say where or how fast it runs (paths, device, threads, workers, checkpoint and evaluation batch), plus
the MD5 of its training and validation annotation files.
"""

from __future__ import annotations

import hashlib
import json
import math
import shutil
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

from curation_core.coco import CocoDataset, load_coco
from curation_core.corrupt import corrupt_annotations
from curation_core.engine.checkpoint import CHECKPOINT_NAME
from curation_core.engine.config import TrainConfig
from curation_core.engine.hooks import Hook
from curation_core.engine.trainer import train
from curation_core.errors import CheckpointError, ConfigError, DataError
from curation_core.io import atomic_write, write_json_atomic
from curation_core.progress import ProgressFn, track
from curation_core.robustness.config import (
    Cell,
    DataPaths,
    RobustnessConfig,
    cell_list,
    cell_training_config,
    data_paths,
)
from curation_core.robustness.report import (
    METRICS,
    aggregate,
    markdown_report,
    paired_differences,
    plot_robustness,
)

JSON_NAME, MD_NAME, PNG_NAME = "robustness.json", "robustness.md", "robustness.png"
RESULT_NAME, SPEC_NAME = "result.json", "cell.json"
#: Fields that say where or how fast a cell runs, not what it learns: left out of its spec.
_RUNTIME_FIELDS = {"data": ("train_annotations", "train_images", "val_annotations", "val_images", "num_workers",
                            "check_images"),
                   "train": ("output_dir", "device", "num_threads", "eval_batch_size", "checkpoint_every")}


@dataclass(frozen=True)
class TrainingSet:
    """The training set of one mode: its annotation file and what the corruption removed."""

    mode: str
    annotations: str
    n_before: int
    n_after: int

    @property
    def dropped_fraction(self) -> float:
        """Removed / non-crowd annotations of the clean set (0.0 for ``normal``)."""
        return (self.n_before - self.n_after) / self.n_before if self.n_before else 0.0

    def as_dict(self) -> dict[str, Any]:
        return {"annotations": self.annotations, "annotations_before": self.n_before,
                "annotations_after": self.n_after, "dropped_fraction": self.dropped_fraction}


@dataclass(frozen=True)
class RobustnessResult:
    """What a (possibly partial) run of the grid holds: finished cells in grid order and the outputs."""

    cells: list[dict[str, Any]]
    total_cells: int
    training_sets: dict[str, TrainingSet]
    json_path: Path
    markdown_path: Path
    plot_path: Path

    @property
    def complete(self) -> bool:
        return len(self.cells) == self.total_cells


@dataclass(frozen=True)
class _Plan:
    cell: Cell
    config: TrainConfig
    directory: Path
    spec: dict[str, Any]


def run_robustness(config: RobustnessConfig, out_dir: str | Path, *, source: str = "<robustness config>",
                   progress: ProgressFn | None = None, cell_hooks: Callable[[Cell], Sequence[Hook]] | None = None,
                   on_cell: Callable[[dict[str, Any]], None] | None = None,
                   resolve_uri: Callable[[str], str] | None = None) -> RobustnessResult:
    """Train and evaluate every cell of ``config`` not finished yet in ``out_dir``; write the outputs.

    Parameters
    ----------
    source : the robustness file's name, for error messages.
    progress : wraps the iteration over the cells still to train (e.g. a progress bar).
    cell_hooks : training hooks for one cell (progress, tracking); called once per trained cell.
    on_cell : called with each finished cell's result (``{"mode", ..., "AP75", "seconds", ...}``).
    resolve_uri : turns a ``models:/`` teacher URI into a checkpoint path (curated cells).

    Raises
    ------
    ConfigError, DataError
        Bad configuration, data, or a finished cell that no longer matches it: before any training.
    TrainingInterrupted
        SIGINT/SIGTERM during a cell: its checkpoint is written; run again to resume.
    """
    out = Path(out_dir)
    data = data_paths(config, source=source)
    cells = cell_list(config)
    planned = {mode: str(out / "data" / f"train_{mode}.json") if mode != "normal" else data.train_annotations
               for mode in config.modes}
    configs = {c: cell_training_config(config, c, train_annotations=planned[c.mode], data=data,
                                       output_dir=out / "cells" / c.name, source=source) for c in cells}
    sets = prepare_training_sets(config, data, out, source=source)  # validation first, then data
    val_md5 = _md5(data.val_annotations)
    plans = [_Plan(c, cfg, out / "cells" / c.name, _spec(cfg, sets[c.mode].annotations, val_md5))
             for c, cfg in configs.items()]
    finished = {p.cell: r for p in plans if (r := _finished_result(p, source)) is not None}
    todo = [p for p in plans if p.cell not in finished]
    result = _write_outputs(config, out, plans, finished, sets)
    for plan in track(progress, todo, total=len(todo), description=f"robustness ({len(finished)} done)"):
        finished[plan.cell] = _run_cell(plan, cell_hooks, resolve_uri)
        result = _write_outputs(config, out, plans, finished, sets)
        if on_cell is not None:
            on_cell(finished[plan.cell])
    return result


def prepare_training_sets(config: RobustnessConfig, data: DataPaths, out_dir: Path, *,
                          source: str = "<robustness config>") -> dict[str, TrainingSet]:
    """Write the corrupted training set of every mode (unchanged files are not rewritten)."""
    clean = load_coco(data.train_annotations)
    val = load_coco(data.val_annotations)
    if sorted((c["id"], c["name"]) for c in clean.categories) != sorted((c["id"], c["name"]) for c in val.categories):
        raise DataError(f"{data.val_annotations}: <file>: categories differ from those of the training set "
                        f"{data.train_annotations}")
    n_before = sum(1 for a in clean.annotations if not a["iscrowd"])
    sets = {}
    for mode in config.modes:
        if mode == "normal":
            sets[mode] = TrainingSet(mode, data.train_annotations, n_before, n_before)
            continue
        fraction = config.drop_fraction if mode == "drop-per-category" else None
        result = corrupt_annotations(clean, mode=mode, seed=config.corruption_seed, fraction=fraction)
        path = out_dir / "data" / f"train_{mode}.json"
        _write_if_changed(path, result.dataset)
        report = {"input": data.train_annotations, "output": str(path), **result.as_dict()}
        write_json_atomic(path.with_suffix(".report.json"), report, indent=2)
        sets[mode] = TrainingSet(mode, str(path), result.n_before, result.n_after)
    return sets


def _write_if_changed(path: Path, dataset: CocoDataset) -> None:
    text = json.dumps(dataset.to_dict(), separators=(",", ":"))
    if path.is_file() and path.read_text(encoding="utf-8") == text:
        return  # keep the file (and its modification time) of an earlier run
    with atomic_write(path, "w") as handle:
        handle.write(text)


def _md5(path: str | Path) -> str:
    return hashlib.md5(Path(path).read_bytes(), usedforsecurity=False).hexdigest()


def _spec(config: TrainConfig, train_annotations: str, val_md5: str) -> dict[str, Any]:
    trained = config.model_dump(mode="json", exclude_defaults=True)
    for section, names in _RUNTIME_FIELDS.items():
        for name in names:
            trained.get(section, {}).pop(name, None)
    if trained.get("model", {}).get("loss") == "focal":  # what the one-stage detectors train without the field
        trained["model"].pop("loss")
    return {"training": trained, "train_annotations_md5": _md5(train_annotations), "val_annotations_md5": val_md5}


def _finished_result(plan: _Plan, source: str) -> dict[str, Any] | None:
    path = plan.directory / RESULT_NAME
    if not path.is_file():
        return None
    try:
        stored = json.loads(path.read_text(encoding="utf-8"))
        result, spec = stored["result"], stored["spec"]
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise DataError(f"{path}: <file>: not a readable cell result ({exc}); delete it to retrain the cell") from None
    if spec != plan.spec:
        raise ConfigError(f"{source}: cell {plan.cell.name}: finished with another {_first_difference(spec, plan.spec)} "
                          f"than the configuration now gives; use another output folder, or delete {plan.directory} "
                          f"to retrain it")
    return result


def _first_difference(old: Any, new: Any, prefix: str = "") -> str:
    if isinstance(old, dict) and isinstance(new, dict):
        for key in sorted(set(old) | set(new)):
            if old.get(key) != new.get(key):
                return _first_difference(old.get(key), new.get(key), f"{prefix}{key}.")
    return f"{prefix.rstrip('.').removeprefix('training.')} ({old!r}, now {new!r})"


def _run_cell(plan: _Plan, cell_hooks: Callable[[Cell], Sequence[Hook]] | None,
              resolve_uri: Callable[[str], str] | None) -> dict[str, Any]:
    spec_path = plan.directory / SPEC_NAME
    if plan.directory.exists():
        try:
            same = json.loads(spec_path.read_text(encoding="utf-8")) == plan.spec
        except (OSError, ValueError):
            same = False
        if not same:  # a half-trained cell of another recipe: restart it cleanly
            shutil.rmtree(plan.directory)
    write_json_atomic(spec_path, plan.spec, indent=2)
    selector = None
    if plan.config.curation.method != "none":
        from curation_core.curation.curator import build_curator

        selector = partial(build_curator, resolve_uri=resolve_uri)
    hooks = list(cell_hooks(plan.cell)) if cell_hooks is not None else []
    start, cpu_start = time.perf_counter(), time.process_time()
    try:
        trained = train(plan.config, hooks=hooks, resume=True, selector_factory=selector)
    except CheckpointError as error:
        own = plan.directory / CHECKPOINT_NAME
        if not own.is_file() or str(own) not in str(error):
            raise
        # The cell's own checkpoint is corrupt or was written by another engine version: restart it.
        shutil.rmtree(plan.directory)
        write_json_atomic(spec_path, plan.spec, indent=2)
        hooks = list(cell_hooks(plan.cell)) if cell_hooks is not None else []
        trained = train(plan.config, hooks=hooks, resume=True, selector_factory=selector)
    if trained.final_stats is None:  # cannot happen: every cell has a validation set
        raise DataError(f"{plan.config.data.val_annotations}: <file>: the cell {plan.cell.name} was not evaluated")
    named = trained.final_stats.named()
    result = {**plan.cell.key(), **{m: named[m] for m in METRICS}, "iterations": trained.iterations,
              "seconds": time.perf_counter() - start, "cpu_seconds": time.process_time() - cpu_start,
              "images_per_s": trained.images_per_s if math.isfinite(trained.images_per_s) else None}
    write_json_atomic(plan.directory / RESULT_NAME, {"result": result, "spec": plan.spec}, indent=2)
    return result


def _write_outputs(config: RobustnessConfig, out: Path, plans: list[_Plan], finished: dict[Cell, dict[str, Any]],
                   sets: dict[str, TrainingSet]) -> RobustnessResult:
    done = [finished[p.cell] for p in plans if p.cell in finished]
    cells = [{k: r[k] for k in ("mode", "loss", "curation", "seed", *METRICS)} for r in done]
    training_sets = {mode: s.as_dict() for mode, s in sets.items()}
    report = {
        "cells": cells,
        "training_sets": training_sets,
        "summary": aggregate(cells),
        "brl_minus_focal": paired_differences(cells),
        "progress": {"cells_done": len(cells), "cells_total": len(plans)},
        "timing": [{k: r.get(k) for k in ("mode", "loss", "curation", "seed", "iterations", "seconds", "cpu_seconds",
                                          "images_per_s")} for r in done],
        "config": config.model_dump(mode="json"),
    }
    json_path, md_path, png_path = out / JSON_NAME, out / MD_NAME, out / PNG_NAME
    write_json_atomic(json_path, report, indent=2)
    with atomic_write(md_path, "w") as handle:
        handle.write(markdown_report(cells, training_sets, total_cells=len(plans)))
    if cells:
        plot_robustness(cells, training_sets, png_path, modes=config.modes)
    return RobustnessResult(cells, len(plans), sets, json_path, md_path, png_path)
