"""Terminal output shared by the subcommands: rich progress bars (on stderr) and tables (on stdout)."""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence
from typing import Any, TypeVar

from rich.console import Console
from rich.markup import escape
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TaskProgressColumn,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)
from rich.table import Table

T = TypeVar("T")

stdout = Console()
stderr = Console(stderr=True)
#: Width a table is measured against outside a terminal: wider than any table.
_UNBOUNDED_WIDTH = 1 << 20


def progress_bar(items: Iterable[T], *, total: int | None = None, description: str = "") -> Iterator[T]:
    """A ``curation_core.progress.ProgressFn`` drawing a rich bar on stderr (hidden when not a terminal)."""
    columns = (
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TaskProgressColumn(),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
    )
    with Progress(*columns, console=stderr, transient=False, disable=not stderr.is_terminal) as bar:
        task = bar.add_task(description, total=total)
        for item in items:
            yield item
            bar.advance(task)


def print_table(title: str, columns: Sequence[str], rows: Iterable[Sequence[Any]]) -> None:
    """Print a table to stdout; floats are shown with 4 decimals.

    In a terminal the table fits its width. Into a pipe or a file nothing is wrapped: the title is one
    plain line and every cell stays whole (a file path is never cut into fragments), however wide the
    table gets, so that ``grep`` and scripts see each value on one line.
    """
    terminal = stdout.is_terminal
    table = Table(title=title if terminal else None, title_justify="left")
    for i, name in enumerate(columns):
        table.add_column(name, justify="left" if i == 0 else "right", no_wrap=not terminal)
    for row in rows:
        table.add_row(*(escape(f"{v:.4f}" if isinstance(v, float) else str(v)) for v in row))
    if terminal:
        stdout.print(table)
        return
    stdout.print(title, markup=False, highlight=False, soft_wrap=True)
    # Measured without the console's width (80 columns in a pipe), and printed through a console of the
    # table's own width: Console.print caps its width= at the console's, which would cut headers and cells.
    width = max(stdout.measure(table, options=stdout.options.update_width(_UNBOUNDED_WIDTH)).maximum, 1)
    Console(file=stdout.file, width=width, color_system=None).print(table, soft_wrap=False)
