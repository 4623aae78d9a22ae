"""User-facing errors.

Anything a user can fix (a bad field, a missing file, an unreachable service) is raised
as :class:`UserError`. The CLIs catch it and print exactly one line, exit code 2, no
traceback; library callers still get a normal exception they can catch.
"""

from __future__ import annotations

import argparse
import sys
from typing import NoReturn, TextIO


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


class SearchFailed(UserError):
    """A search ran but cannot give a result (no trial completed): one line like a UserError,
    but exit code 1, since the input was valid and retrying it gives the same end."""

    exit_code = 1


class TrialFailed(RuntimeError):
    """A failure caused by a trial's own knobs (empty mask, divergence, an impossible combination).
    Deterministic, so a search records it as FAILED without retrying it; crashes are retried."""


class TrainingDiverged(TrialFailed):
    """A loss term became NaN or inf: a property of the trial's knobs, not of the input."""


class EmptyMaskError(TrialFailed):
    """The mask of the chosen latent (almost) never fires (the latent, delta, threshold, or a
    parent that collapsed): the trial fails instead of training a child on nothing."""


def report_error(exc: UserError | TrialFailed, stream: TextIO | None = None) -> int:
    """The one error-to-exit-code mapping of both CLIs: one ``error: ...`` line, then the code
    (a UserError's own, 1 for a trial's knobs that failed)."""
    what = "training diverged: " if isinstance(exc, TrainingDiverged) else ""
    print(f"error: {what}{exc}", file=stream or sys.stderr)
    return exc.exit_code if isinstance(exc, UserError) else 1


# What the CLIs catch and report with :func:`report_error`; anything else is a crash.
REPORTED = (UserError, TrialFailed)


class ArgumentParser(argparse.ArgumentParser):
    """argparse whose errors are one line (``error: ...; see PROG --help``) and exit code 2,
    like every other error of the CLIs, instead of a usage block."""

    def error(self, message: str) -> NoReturn:
        message = message.replace("argument command: ", "command: ")
        print(f"error: {message}; see `{self.prog} --help`", file=sys.stderr)
        sys.exit(2)
