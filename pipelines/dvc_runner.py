"""The pipeline as DVC stages: a ``dvc.yaml`` of ``detcurate pipeline step`` commands in a run folder.

``run_dvc(params, workdir)`` writes ``workdir/params.yaml`` (the run's parameters) and
``workdir/dvc.yaml`` (one stage per step of ``pipelines.steps.GRAPH``, with its exact deps, params and
outs), initialises DVC there (no git) and runs ``dvc repro``: a second run with the same parameters
does nothing, a changed parameter re-runs only the stages below it. The project's own ``dvc.yaml`` is
the demo of ``detcurate demo``.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Any

from curation_core.errors import DetCurateError
from curation_core.io import atomic_write
from pipelines.steps import GRAPH, layout

#: Environment variables the stage commands read (kept out of the commands, so DVC's cache keys
#: do not change with the pipeline run's id).
ENV_PIPELINE_RUN = "DETCURATE_PIPELINE_RUN"
ENV_TRACK = "DETCURATE_TRACK"
#: Parameter sections each stage reads besides profile, seed, prefix (and a training step its model's).
STAGE_PARAMS = {"data": ("data", "data_rev"), "balance": ("balance",), "robustness": ("robustness", "student"),
                "active_learning": ("active_learning", "student"), "label_quality": ("label_quality",),
                "report": ("data_rev",), "promote": ("promotion",)}


def dvc_stages(workdir: str | os.PathLike[str]) -> dict[str, Any]:
    """The ``stages`` of the run's ``dvc.yaml``, paths relative to ``workdir``."""
    root = Path(workdir)
    where = {name: path.relative_to(root).as_posix() for name, path in layout(root).items()}
    stages: dict[str, Any] = {}
    for name, inputs in GRAPH.items():
        params = ["profile", "seed", "register_prefix", *STAGE_PARAMS.get(name, ())]
        if name.startswith("train_"):
            params.append(name.removeprefix("train_"))
        deps = sorted({where[i] for i in inputs})
        stages[name] = {"cmd": f"detcurate pipeline step {name} --params params.yaml --workdir .",
                        "deps": deps, "params": params, "outs": [{where[name]: {"cache": False}}]}
    return stages


def run_dvc(params: dict[str, Any], workdir: str | os.PathLike[str], *, data_rev: str | None = None,
            track: bool = True, pipeline_run: str = "") -> Path:
    """Write the run's DVC project into ``workdir`` and ``dvc repro`` it; return its ``metrics.json``."""
    import yaml

    root = Path(workdir).resolve()
    root.mkdir(parents=True, exist_ok=True)
    with atomic_write(root / "params.yaml") as handle:
        yaml.safe_dump({**params, "data_rev": data_rev or ""}, handle, sort_keys=False)
    with atomic_write(root / "dvc.yaml") as handle:
        yaml.safe_dump({"stages": dvc_stages(root),
                        "metrics": [f"{layout(root)['report'].relative_to(root).as_posix()}/metrics.json"]},
                       handle, sort_keys=False)
    bindir = Path(sys.executable).parent
    dvc = str(bindir / "dvc")
    env = {**os.environ, "PATH": f"{bindir}{os.pathsep}{os.environ.get('PATH', '')}",
           ENV_PIPELINE_RUN: pipeline_run, ENV_TRACK: "1" if track else "0"}
    if not (root / ".dvc").is_dir():
        _dvc([dvc, "init", "--no-scm", "-q"], root, env)
    _dvc([dvc, "repro"], root, env)
    return layout(root)["report"] / "metrics.json"


def _dvc(command: list[str], cwd: Path, env: dict[str, str]) -> None:
    done = subprocess.run(command, cwd=cwd, env=env, check=False)
    if done.returncode != 0:
        raise DetCurateError(f"dvc: `{' '.join(Path(command[0]).name.split() + command[1:])}` in {cwd} exited "
                             f"{done.returncode} (see above)")
