"""The one check for every path a user names for output (``--out``, ``--storage``, ...).

Run before any work, it turns "a regular file where a folder goes", "no folder can be made
there" and "not writable" into one :class:`~compvae.errors.UserError` line, instead of a
traceback from the first ``mkdir`` after training or Ray has started. It creates nothing.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

from compvae.errors import UserError


def check_folder(option: str, path: str | os.PathLike[str], shown: str | None = None) -> Path:
    """``path`` resolved; an existing folder, or one that can be created, else a UserError
    naming ``option`` and ``shown`` (default: the path as given). Writability is tried for real
    (a temporary folder made and removed): ``os.access`` says yes to root on read-only mounts."""
    given = os.fspath(path)
    text = shown if shown is not None else given
    if not given.strip():
        raise UserError(f"{option}: empty path; give a folder")
    p = Path(given).expanduser().resolve()
    if p.exists() and not p.is_dir():
        raise UserError(f"{option} {text}: {p} is a file, not a folder; give a folder path")
    ancestor = p
    while not ancestor.exists():
        ancestor = ancestor.parent
    if not ancestor.is_dir():
        raise UserError(f"{option} {text}: {ancestor} is a file, so no folder can be made under it; "
                        "choose another path")
    try:
        os.rmdir(tempfile.mkdtemp(prefix=".compvae-check-", dir=ancestor))
    except OSError as exc:
        raise UserError(f"{option} {text}: cannot write in {ancestor} ({exc.strerror or exc}); "
                        "choose a folder you can write to") from None
    return p


def check_file_target(option: str, path: str | os.PathLike[str], shown: str | None = None) -> Path:
    """A file the program will create or open for writing (a SQLite database): not a folder,
    and its folder passes :func:`check_folder`."""
    text = shown if shown is not None else os.fspath(path)
    p = Path(os.fspath(path)).expanduser().resolve()
    if p.is_dir():
        raise UserError(f"{option} {text}: {p} is a folder, not a file; give a file path")
    check_folder(option, p.parent, shown=text)
    return p
