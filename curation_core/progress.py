"""A minimal progress protocol so that the core reports progress without depending on a UI library.

Long-running core functions take ``progress: ProgressFn | None``. The function wraps an iterable and
yields its items unchanged; a front end may draw a bar while doing so. The core never prints.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from typing import Protocol, TypeVar

T = TypeVar("T")


class ProgressFn(Protocol):
    def __call__(self, items: Iterable[T], *, total: int | None, description: str) -> Iterator[T]: ...


def no_progress(items: Iterable[T], *, total: int | None = None, description: str = "") -> Iterator[T]:
    """The silent default: yields ``items`` unchanged."""
    yield from items


def track(progress: ProgressFn | None, items: Iterable[T], *, total: int | None, description: str) -> Iterator[T]:
    """Wrap ``items`` with ``progress`` when one is given."""
    if progress is None:
        return iter(items)
    return progress(items, total=total, description=description)
