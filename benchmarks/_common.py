"""Shared helpers of the benchmark scripts: result files and tables."""

from __future__ import annotations

import json
import os
import platform
import time
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

#: Width of printed tables when the output is not a terminal.
TABLE_WIDTH = 200


def machine_info() -> dict[str, Any]:
    """Where a number was measured."""
    info: dict[str, Any] = {"python": platform.python_version(), "machine": platform.machine(), "cpus": os.cpu_count()}
    try:
        import torch

        info["torch"] = torch.__version__
        if torch.cuda.is_available():
            info["gpu"] = torch.cuda.get_device_name(0)
    except ImportError:
        pass
    return info


def write_result(path: str | Path, name: str, rows: list[dict[str, Any]], **extra: Any) -> None:
    """Write ``{"benchmark", "time", "machine", "rows", ...}`` to ``path`` (atomically)."""
    from curation_core.io import write_json_atomic

    payload = {"benchmark": name, "time": time.strftime("%Y-%m-%dT%H:%M:%S"), "machine": machine_info(), "rows": rows, **extra}
    write_json_atomic(path, payload, indent=2)


def print_rows(title: str, rows: list[dict[str, Any]]) -> None:
    """Print ``rows`` (dicts with the same keys) as a table."""
    table = Table(title=title, title_justify="left")
    if not rows:
        Console().print(f"{title}: no rows")
        return
    for key in rows[0]:
        table.add_column(str(key), justify="right")
    for row in rows:
        table.add_row(*(f"{v:.4g}" if isinstance(v, float) else str(v) for v in row.values()))
    console = Console()
    if not console.is_terminal:  # a log file or pipe: never squeeze the columns to 80 characters
        console = Console(width=max(console.width, TABLE_WIDTH))
    console.print(table)


def dump_json(obj: Any) -> str:
    return json.dumps(obj, indent=2)
