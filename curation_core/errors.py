"""Exceptions raised for bad user input.

Every exception here carries a one-line, user-facing message: the command-line front end prints it
and exits with status 2, without a traceback. Programming errors are not wrapped.
"""

from __future__ import annotations

from dataclasses import dataclass


class DetCurateError(Exception):
    """Base class of every user-facing error (bad data, bad config, bad checkpoint)."""


class DataError(DetCurateError, ValueError):
    """A data file is missing, unreadable or violates the expected schema."""


class ConfigError(DetCurateError, ValueError):
    """A configuration file or override is invalid."""


class CheckpointError(DetCurateError, ValueError):
    """A checkpoint is corrupt, truncated or incompatible with the requested model or data."""


@dataclass(frozen=True)
class Problem:
    """One validation problem: which file, which record, what is wrong.

    ``record`` names the record the way a user finds it in the file, e.g. ``"annotation id=17"``,
    ``"images[3]"`` (when the record has no usable id) or ``"<file>"`` for whole-file problems.
    """

    file: str
    record: str
    message: str

    def __str__(self) -> str:
        return f"{self.file}: {self.record}: {self.message}"


class CocoValidationError(DataError):
    """A COCO file has one or more problems; ``problems`` lists them all (up to the collection limit)."""

    def __init__(self, problems: list[Problem], *, truncated: bool = False) -> None:
        if not problems:
            raise ValueError("CocoValidationError(problems=) expects at least one problem; got none.")
        self.problems = list(problems)
        self.truncated = truncated
        more = len(self.problems) - 1
        suffix = ""
        if more or truncated:
            count = f"{more}{'+' if truncated else ''}"
            suffix = f" (and {count} more problems; 'detcurate data validate' lists them)"
        super().__init__(f"{self.problems[0]}{suffix}")
