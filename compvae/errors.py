"""User-facing errors.

Anything a user can fix (a bad field, a missing file, an unreachable service) is raised
as :class:`UserError`. The CLIs catch it and print exactly one line, exit code 2, no
traceback; library callers still get a normal exception they can catch.
"""

from __future__ import annotations


def first_line(exc: BaseException) -> str:
    """An exception's message cut to its first line (its type's name when it has none), for
    one-line reports of errors raised by libraries."""
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


class UserError(Exception):
    """A problem with the user's input, worded as one line: what is wrong and how to fix it."""

    exit_code = 2

    def __init__(self, message: str) -> None:
        super().__init__(message.strip().splitlines()[0] if message.strip() else message)


class DataError(UserError):
    """A dataset file is missing, corrupt or of the wrong shape."""


class ConfigError(UserError):
    """A config or search-space field is invalid."""


class TrainingDiverged(RuntimeError):
    """A loss term became NaN or inf. Not a UserError: it is a property of the trial's knobs,
    so a search records the trial as FAILED with this message and carries on."""
