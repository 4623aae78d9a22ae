"""Checks that need no Ray, run before it starts: MLflow URI and server, data, an unedited space."""

from __future__ import annotations

import hashlib
import json
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

from compvae.errors import UserError, first_line
from compvae.paths import check_file_target
from search.layout import (
    SearchLayout,
    SearchState,
)
from search.space import SearchSpace, space_from_dict


def normalise_mlflow_uri(uri: str, field: str = "--mlflow-uri") -> str:
    """An absolute, checked tracking URI; a bad one is one line naming ``field``."""
    parsed = urlparse(uri)
    if parsed.scheme == "sqlite":
        path = uri[len("sqlite:///"):] if uri.startswith("sqlite:///") else ""
        if not path:
            raise UserError(f"{field} {uri}: expected sqlite:///path/to/mlflow.db")
        # relative: against the user's cwd, made absolute now; its folder must be creatable
        path = str(check_file_target(field, path, shown=uri))
        return f"sqlite:///{path}"
    if parsed.scheme in ("http", "https"):
        return uri.rstrip("/")
    if parsed.scheme in ("postgresql", "mysql", "mssql") or parsed.scheme.startswith(("postgresql+", "mysql+")):
        _check_db_driver(uri, field)
        return uri
    raise UserError(f"{field} {uri}: use sqlite:///ABS/PATH.db, a database URL, or http(s)://host:port "
                    "of `mlflow server` (MLflow 3 refuses plain folders)")


def _check_db_driver(uri: str, field: str = "--mlflow-uri") -> None:
    """A database URI whose Python driver is missing fails now, not after Ray has started.
    ``create_engine`` imports the driver without connecting."""
    import sqlalchemy

    try:
        sqlalchemy.create_engine(uri).dispose()
    except Exception as exc:  # NoSuchModuleError, ModuleNotFoundError, ArgumentError
        raise UserError(f"{field} {uri}: cannot use this database URI ({type(exc).__name__}: "
                        f"{first_line(exc)}); install its Python driver (e.g. psycopg2-binary, pymysql) "
                        "or use sqlite:///ABS/PATH.db") from None


def check_mlflow_server(uri: str) -> None:
    if not uri.startswith(("http://", "https://")):
        return
    try:
        with urllib.request.urlopen(f"{uri}/health", timeout=10) as resp:
            resp.read()
    except (urllib.error.URLError, OSError) as exc:
        raise UserError(f"--mlflow-uri {uri}: no MLflow server answers there ({exc}); start one with "
                        "`mlflow server --host 127.0.0.1 --port PORT`") from None


def check_search_data(space: SearchSpace) -> SearchSpace:
    """Every dataset a trial can get opens now, and ``data.path`` becomes absolute.

    Trials run with a per-trial working directory, so a relative ``data.path`` (meant, as in
    ``compvae train``, against the launch directory) would be missing in every trial; and a
    missing or corrupt file would only surface as N identical failed trials. Both are fixed
    here, before the search folder or Ray exist. The space saved in the search folder carries
    the absolute paths, so ``resume`` from anywhere finds the same files.
    """
    from compvae.data import check_data

    def absolute(value: Any) -> Any:
        return str(Path(value).expanduser().resolve()) if isinstance(value, str) and value else value

    data = space.to_dict()
    base_data = data.get("base", {}).get("data", {})
    changed = False
    if base_data.get("path"):
        base_data["path"], changed = absolute(base_data["path"]), True
    spec = data["params"].get("data.path")
    if spec and "choice" in spec:
        spec["choice"], changed = [absolute(v) for v in spec["choice"]], True
    resolved = space_from_dict(data, source="space") if changed else space
    base = resolved.base_config()
    names = resolved.params["data.name"].values() if "data.name" in resolved.params else [base.data.name]
    paths = resolved.params["data.path"].values() if "data.path" in resolved.params else [base.data.path]
    # the largest batch any trial can draw must fit the dataset (a plain image set may be small)
    batch_sizes = {}
    for key in ("parent.batch_size", "child.batch_size"):
        spec = resolved.params.get(key)
        values = [getattr(base, key.split(".")[0]).batch_size] if spec is None else list(spec.bounds())
        batch_sizes[key] = int(max(values))
    for name in names:
        for path in paths:
            check_data(str(name), path, base.parent.resolution, base.data.num_train, batch_sizes)
    return resolved



def space_fingerprint(space: SearchSpace) -> str:
    """What ``resume`` compares: the launched space, overrides and absolute data paths included."""
    return hashlib.sha256(json.dumps(space.to_dict(), sort_keys=True).encode()).hexdigest()[:16]


def check_unchanged(layout: SearchLayout, state: SearchState, space: SearchSpace) -> None:
    """Resuming an edited ``space.yaml`` would restore the old Tune experiment under new
    settings (a search that never finishes): refuse, naming the fields that changed."""
    if state.space_fingerprint is None or space_fingerprint(space) == state.space_fingerprint:
        return
    from compvae.config import flatten

    before = flatten(json.loads(json.dumps(state.space_snapshot or {})))
    after = flatten(json.loads(json.dumps(space.to_dict())))
    changed = sorted(k for k in before.keys() | after.keys() if before.get(k) != after.get(k))
    shown = ", ".join(changed[:5]) + (f" and {len(changed) - 5} more" if len(changed) > 5 else "")
    raise UserError(f"{layout.space_file}: edited since the search was launched ({shown or 'its layout'} "
                    "changed); undo the edit to resume, or launch a new search with the edited space")

