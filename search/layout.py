"""Where a search keeps its state, and its ``search.json``.

One folder per search, every path absolute (trials run with another working directory, and
SQLite/MLflow/Ray resolve relative paths against whichever process opens them)::

    <storage>/<name>/
      space.yaml      the space as launched (command-line overrides applied): resume reads it
      search.json     name, MLflow URI/experiment/parent run, Optuna URL, Ray address, status
      optuna.db       the Optuna study (RDBStorage, written by the driver only)
      tune/           Ray Tune's experiment (tuner.pkl, experiment state, trial checkpoints)
      trials/<trial>/ run_trial outputs (config.yaml, metrics.json, figures/, weights),
                      summary.json (written by the driver), attempts.jsonl (by the trial);
                      trial_00003 is Optuna trial 3 (search/run/trainable.py: trial_name)
      lost_trials/    folders of trials a killed driver lost (started, never in Tune's snapshot)
      parents/        trained parents shared between trials (compvae.parent_store)
      report/         trials table and figures;  export/  best / Pareto configs
      driver.lock     held by the one driver running this search
      driver.pid      pid and host of that driver (`compvae-search stop` signals it)
    <storage>/mlflow.db, <storage>/mlartifacts/
                      the default MLflow store, one per storage folder: every search of a space
                      there is a run in the space's experiment, side by side in the UI
"""

from __future__ import annotations

import fcntl
import json
import os
import socket
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from compvae.errors import UserError
from compvae.io import atomic_write_json

DEFAULT_STORAGE = "searches"
STATE_FILE = "search.json"
DRIVER_PID = "driver.pid"


@dataclass(frozen=True)
class SearchLayout:
    root: Path

    def __post_init__(self) -> None:
        object.__setattr__(self, "root", Path(self.root).expanduser().resolve())

    @property
    def name(self) -> str:
        return self.root.name

    @property
    def space_file(self) -> Path:
        return self.root / "space.yaml"

    @property
    def state_file(self) -> Path:
        return self.root / STATE_FILE

    @property
    def optuna_url(self) -> str:
        return f"sqlite:///{self.root / 'optuna.db'}"

    @property
    def storage(self) -> Path:
        """The storage folder holding this search (and the default MLflow store)."""
        return self.root.parent

    @property
    def default_mlflow_uri(self) -> str:
        return f"sqlite:///{self.storage / 'mlflow.db'}"

    @property
    def mlartifacts(self) -> Path:
        return self.storage / "mlartifacts"


    @property
    def tune_dir(self) -> Path:
        return self.root / "tune"

    @property
    def trials_dir(self) -> Path:
        return self.root / "trials"

    def trial_dir(self, trial_name: str) -> Path:
        return self.trials_dir / trial_name

    def set_aside_lost_trial(self, trial_name: str, trial_id: str) -> Path:
        """Move a trial folder a killed driver lost (started, never in Tune's snapshot) to
        ``lost_trials/<name>-<trial id>``, so ``trials/`` holds only trials Tune knows."""
        dest = self.root / "lost_trials" / f"{trial_name}-{trial_id}"
        dest.parent.mkdir(exist_ok=True)
        n = 1
        while dest.exists():  # set aside before (a folder of that name came back): keep both
            n += 1
            dest = dest.with_name(f"{trial_name}-{trial_id}-{n}")
        os.replace(self.trial_dir(trial_name), dest)
        return dest

    @property
    def parents_dir(self) -> Path:
        return self.root / "parents"

    @property
    def data_dir(self) -> Path:
        """The search's shared rendered images (:class:`compvae.data_cache.DataCache`)."""
        return self.root / "data"

    @property
    def outer_file(self) -> Path:
        """The outer level's record (``search/outer.py``); its presence means the stage is done."""
        return self.root / "outer.json"

    @property
    def report_dir(self) -> Path:
        return self.root / "report"

    @property
    def export_dir(self) -> Path:
        return self.root / "export"


@dataclass
class SearchState:
    """``search.json``: what resume, export, report and ui need besides the space."""

    name: str
    space_name: str
    version: str
    created: str
    mlflow_uri: str
    optuna_url: str
    study_name: str
    ray_address: str | None = None
    mlflow_experiment_id: str | None = None
    mlflow_parent_run_id: str | None = None
    status: str = "created"  # created | running | interrupted | finished | failed
    history: list[dict[str, Any]] = field(default_factory=list)
    space_fingerprint: str | None = None  # of the launched space: resume refuses an edited one
    space_snapshot: dict[str, Any] | None = None  # the launched space, to name what was edited

    def save(self, layout: SearchLayout) -> None:
        write_json_atomic(layout.state_file, asdict(self))

    @classmethod
    def load(cls, layout: SearchLayout) -> SearchState:
        try:
            data = json.loads(layout.state_file.read_text())
            return cls(**data)
        except (OSError, ValueError, TypeError) as exc:
            raise UserError(f"{layout.state_file}: unreadable search state ({exc}); "
                            "is this a compvae-search folder?") from None


def write_json_atomic(path: Path, data: Any) -> None:
    """Readers (report, export, a second terminal) never see a half-written file."""
    atomic_write_json(path, data, indent=2, sort_keys=True, default=str)


def storage_root(storage: str | Path | None) -> Path:
    return Path(storage if storage is not None else DEFAULT_STORAGE).expanduser().resolve()


def resolve_search(name_or_dir: str, storage: str | Path | None = None) -> SearchLayout:
    """A search given as its folder or as its name under ``--storage`` (default ./searches)."""
    as_dir = Path(name_or_dir).expanduser()
    if (as_dir / STATE_FILE).is_file():
        return SearchLayout(as_dir)
    under = storage_root(storage) / name_or_dir
    if (under / STATE_FILE).is_file():
        return SearchLayout(under)
    raise UserError(f"no search '{name_or_dir}': neither {as_dir.resolve()} nor {under} holds a "
                    f"{STATE_FILE}; give the search's folder, or its name with --storage DIR")


def driver_running(layout: SearchLayout) -> bool:
    """Whether a driver holds this search's lock right now (a probe: takes nothing)."""
    path = layout.root / "driver.lock"
    if not path.is_file():
        return False
    with open(path, "a+") as fh:
        try:
            fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            return True
        fcntl.flock(fh, fcntl.LOCK_UN)
        return False


@contextmanager
def driver_lock(layout: SearchLayout) -> Iterator[None]:
    """One driver per search: two would both create trials and MLflow runs for it."""
    layout.root.mkdir(parents=True, exist_ok=True)
    with open(layout.root / "driver.lock", "a+") as fh:
        try:
            fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            raise UserError(f"search {layout.root} is already being run by another driver; "
                            "wait for it or stop it first") from None
        pid_file = layout.root / DRIVER_PID
        try:  # who holds the lock: `compvae-search stop` signals it
            pid_file.write_text(json.dumps({"pid": os.getpid(), "host": socket.gethostname()}))
            yield
        finally:
            pid_file.unlink(missing_ok=True)
            fcntl.flock(fh, fcntl.LOCK_UN)


def driver_process(layout: SearchLayout) -> dict[str, Any] | None:
    """``{"pid", "host"}`` of the driver running this search now, or None."""
    path = layout.root / DRIVER_PID
    if not driver_running(layout) or not path.is_file():
        return None
    try:
        return dict(json.loads(path.read_text()))
    except (OSError, ValueError):
        return None
