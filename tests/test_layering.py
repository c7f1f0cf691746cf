"""The dependency direction pipelines -> components -> curation_core, checked on every module's imports.

Imports are read with ``ast`` (nothing is executed), including imports inside functions, so a lazy
``import mlflow`` in the core is caught as well.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

#: Top-level names each layer must never import.
FORBIDDEN: dict[str, frozenset[str]] = {
    "curation_core": frozenset({"kfp", "airflow", "mlflow", "dvc", "dvc_data", "components", "pipelines"}),
    "components": frozenset({"pipelines", "mlflow", "kfp", "airflow", "dvc", "dvc_data"}),
}


def imported_modules(source: str, *, filename: str = "<string>") -> list[tuple[int, str]]:
    """``(line, module)`` for every absolute import in ``source``; relative imports are resolved by the caller."""
    found = []
    for node in ast.walk(ast.parse(source, filename=filename)):
        if isinstance(node, ast.Import):
            found.extend((node.lineno, alias.name) for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:  # relative: stays inside its own package, which cannot cross a layer by itself
                continue
            found.append((node.lineno, node.module or ""))
    return found


def layering_violations(root: Path) -> list[str]:
    """``"<file>:<line>: <layer> imports <module>"`` for each forbidden import under ``root``."""
    violations = []
    for layer, forbidden in FORBIDDEN.items():
        for file in sorted((root / layer).rglob("*.py")):
            for line, module in imported_modules(file.read_text(encoding="utf-8"), filename=str(file)):
                if module.split(".")[0] in forbidden:
                    violations.append(f"{file.relative_to(root)}:{line}: {layer} imports {module}")
    return violations


def test_project_respects_the_dependency_direction():
    assert (ROOT / "curation_core").is_dir() and (ROOT / "components").is_dir()
    assert layering_violations(ROOT) == []


def test_only_tracking_and_registry_import_mlflow():
    importers = sorted(
        file.relative_to(ROOT).as_posix()
        for package in ("curation_core", "components", "pipelines")
        for file in (ROOT / package).rglob("*.py")
        if any(module.split(".")[0] == "mlflow" for _, module in imported_modules(file.read_text(encoding="utf-8")))
    )
    assert set(importers) <= {"pipelines/tracking.py", "pipelines/registry.py"}, importers


def _write(root: Path, relpath: str, text: str) -> None:
    path = root / relpath
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8")


@pytest.mark.parametrize(
    ("relpath", "source", "expected"),
    [
        ("curation_core/metrics.py", "import mlflow\n", "curation_core/metrics.py:1: curation_core imports mlflow"),
        ("curation_core/engine/hook.py", "def f():\n    from mlflow.tracking import MlflowClient\n",
         "curation_core/engine/hook.py:2: curation_core imports mlflow.tracking"),
        ("curation_core/x.py", "import os, kfp.dsl as dsl\n", "curation_core/x.py:1: curation_core imports kfp.dsl"),
        ("curation_core/x.py", "from pipelines import tracking\n", "curation_core/x.py:1: curation_core imports pipelines"),
        ("curation_core/x.py", "from components.train import train_detector\n",
         "curation_core/x.py:1: curation_core imports components.train"),
        ("curation_core/x.py", "import dvc.api\n", "curation_core/x.py:1: curation_core imports dvc.api"),
        ("components/train.py", "\n\nfrom pipelines.tracking import MLflowHook\n",
         "components/train.py:3: components imports pipelines.tracking"),
        ("components/train.py", "import airflow\n", "components/train.py:1: components imports airflow"),
    ],
)
def test_checker_catches_forbidden_imports(tmp_path, relpath, source, expected):
    _write(tmp_path, "curation_core/ok.py", "import numpy as np\nfrom curation_core.errors import DataError\n")
    _write(tmp_path, "components/ok.py", "from curation_core import coco\n")
    assert layering_violations(tmp_path) == []
    _write(tmp_path, relpath, source)
    assert layering_violations(tmp_path) == [expected]


def test_checker_allows_lookalike_names_and_downward_imports(tmp_path):
    _write(tmp_path, "curation_core/a.py", "import mlflowish\nfrom .coco import load_coco\nimport dvcx\n")
    _write(tmp_path, "components/b.py", "import curation_core.engine\nfrom curation_core import io\n")
    _write(tmp_path, "pipelines/c.py", "import mlflow\nimport components\n")  # the top layer may import anything
    assert layering_violations(tmp_path) == []


def test_checker_reports_syntax_errors_instead_of_passing(tmp_path):
    _write(tmp_path, "curation_core/broken.py", "def f(:\n")
    with pytest.raises(SyntaxError):
        layering_violations(tmp_path)


def test_the_engine_never_imports_the_curation_package():
    """Curation plugs into the trainer as a ``BatchSelector``; the engine does not know its methods."""
    offenders = [f"{file.relative_to(ROOT)}:{line}: {module}"
                 for file in sorted((ROOT / "curation_core" / "engine").rglob("*.py"))
                 for line, module in imported_modules(file.read_text(encoding="utf-8"))
                 if module.startswith("curation_core.curation")]
    assert offenders == []
