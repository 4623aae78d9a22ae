"""The MLflow client of a search: explicit ``MlflowClient`` calls, journaled while the store is away.

A store that goes away mid-search (a restarted ``mlflow server``, a network cut) must not stop
training or lose results: writes it cannot take go to the :mod:`~search.tracking.journal` and are
replayed, in order, when it answers again. A store unreachable at launch is still one error line.
"""

from __future__ import annotations

import fcntl
import json
import logging
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

from mlflow.entities import Dataset, DatasetInput, InputTag, Metric, Param, RunTag
from mlflow.tracking import MlflowClient

from compvae.errors import first_line
from search.tracking.journal import PENDING_PREFIX, Journal

TRIAL_ID_TAG = "tune_trial_id"
MAX_TAG = 5000
_BATCH = 100
log = logging.getLogger(__name__)


def _param_value(v: Any) -> str:
    return v if isinstance(v, str) else json.dumps(v)


def is_local_store(uri: str) -> bool:
    return urlparse(uri).scheme not in ("http", "https", "databricks")


@contextmanager
def store_lock(uri: str) -> Iterator[None]:
    """Held while a SQLite store may be created or upgraded: MLflow's migrations are not safe
    against a second process migrating the same new file (``duplicate column name``). The lock
    is a file next to the database; other URIs need none (their server serialises)."""
    if not uri.startswith("sqlite:///"):
        yield
        return
    db = Path(uri[len("sqlite:///"):])
    db.parent.mkdir(parents=True, exist_ok=True)
    with open(db.with_name(db.name + ".lock"), "a+") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


RECONNECT_EVERY_S = 20.0


def unreachable(exc: BaseException) -> bool:
    """Whether ``exc`` means "the store cannot take writes now" (refused, timeout, 5xx until retries
    ran out, a shared SQLite file locked by another driver), not a write it rejects; only the former
    is journaled: replaying a rejected write would fail again."""
    seen: set[int] = set()
    cur: BaseException | None = exc
    while cur is not None and id(cur) not in seen:
        seen.add(id(cur))
        if isinstance(cur, (ConnectionError, TimeoutError)):
            return True
        if type(cur).__module__.startswith(("requests", "urllib3")):
            return True
        text = str(cur)
        if "Max retries exceeded" in text or "Failed to establish a new connection" in text:
            return True
        if "database is locked" in text:  # a SQLite store shared by several searches' drivers, busy
            return True
        cur = cur.__cause__ or cur.__context__
    return False


class MlflowTracker:
    """Thin, explicit MlflowClient wrapper (no fluent global state: the driver may also run
    other MLflow code, and a callback must never depend on an "active run").

    With a ``journal`` file, writes survive a tracking store that goes away: a write that fails
    because the store is unreachable, and every write after it, is appended to the journal
    (JSON lines, in order) instead of raising, so the search keeps training and nothing is lost.
    Runs created meanwhile get a ``pending-...`` placeholder id. Every ``RECONNECT_EVERY_S`` the
    next write tries :meth:`flush`, which replays the journal in order (a trial run is first
    looked up by its trial-id tag, so a replay never duplicates it) and goes back online. The
    driver flushes at the start and end of every launch/resume, and ``compvae-search report``
    flushes too, so whatever is still pending when a search ends is sent once the store is back.
    Without a journal (report, export of a finished search) errors raise as before.
    """

    def __init__(self, uri: str, journal: Path | None = None) -> None:
        self.uri = uri
        self.client = MlflowClient(tracking_uri=uri)
        self.journal = journal
        self._journal_file = Journal(journal) if journal is not None else None
        self.offline_reason: str | None = None
        self.resolved: dict[str, str] = {}  # placeholder run id -> real run id, after a flush
        self._next_try = 0.0

    # ---- journal -------------------------------------------------------------------------------
    def pending(self) -> int:
        """Writes waiting in the journal."""
        return 0 if self._journal_file is None else self._journal_file.pending()

    def _has_pending(self) -> bool:
        return self._journal_file is not None and self._journal_file.has_pending()

    def _go_offline(self, exc: BaseException) -> None:
        if self.offline_reason is None:
            first = first_line(exc)
            self.offline_reason = first[:200]
            log.warning("MLflow store %s unreachable (%s); buffering writes in %s", self.uri, self.offline_reason,
                        self.journal)
        self._next_try = time.monotonic() + RECONNECT_EVERY_S

    def _write(self, op: str, **args: Any) -> Any:
        """Apply a write now, or journal it (see class docstring). Returns what the op returns
        (a run id for ``create_run``; a placeholder when journaled)."""
        if self.journal is None:
            return self._apply(op, args)
        if self._has_pending() and not self._try_flush():
            return self._journal(op, args)
        try:
            return self._apply(op, args)
        except Exception as exc:
            if not unreachable(exc):
                raise
            self._go_offline(exc)
            return self._journal(op, args)

    def _journal(self, op: str, args: dict[str, Any]) -> Any:
        if op == "create_run" and not args.get("placeholder"):
            args = {**args, "placeholder": f"{PENDING_PREFIX}{uuid.uuid4().hex}"}
        if op == "log_metrics" and "timestamp" not in args:
            args = {**args, "timestamp": int(time.time() * 1000)}
        assert self._journal_file is not None
        self._journal_file.append(op, args)
        return args.get("placeholder")

    def _try_flush(self) -> bool:
        if time.monotonic() < self._next_try:
            return False
        try:
            self.flush()
        except Exception as exc:  # a store that answers but rejects a write: keep the journal
            self._go_offline(exc)
        return self.pending() == 0

    def flush(self) -> int:
        """Replay the journal in order; returns how many writes were sent. On an unreachable
        store the unsent rest is written back (with ids resolved so far) and stays pending."""
        if self._journal_file is None or not self._journal_file.path.is_file():
            return 0
        ops = self._journal_file.entries()
        sent = 0
        for i, entry in enumerate(ops):
            try:
                self._apply(entry["op"], entry["args"])
            except Exception as exc:
                if not unreachable(exc):
                    log.warning("MLflow rejected a buffered %s (%s); dropped", entry["op"], exc)
                    sent += 1
                    continue
                self._go_offline(exc)
                self._journal_file.keep([{**e, "args": self._resolve_args(e["args"])} for e in ops[i:]])
                return sent
            sent += 1
        self._journal_file.clear()
        self.offline_reason = None
        return sent

    def _resolve_args(self, args: dict[str, Any]) -> dict[str, Any]:
        run_id = args.get("run_id")
        return {**args, "run_id": self.resolved.get(run_id, run_id)} if run_id else args

    def _apply(self, op: str, args: dict[str, Any]) -> Any:
        args = self._resolve_args(args)
        run_id = args.get("run_id")
        if isinstance(run_id, str) and run_id.startswith(PENDING_PREFIX):
            raise ValueError(f"run {run_id} was never created in MLflow (its creation was rejected)")
        if op == "create_run":
            tags = args["tags"]
            existing = None
            if TRIAL_ID_TAG in tags and "mlflow.parentRunId" in tags:
                existing = self._find(args["experiment_id"], tags["mlflow.parentRunId"], tags[TRIAL_ID_TAG])
            real = (existing.info.run_id if existing is not None else
                    self.client.create_run(args["experiment_id"], run_name=args["run_name"], tags=tags).info.run_id)
            if args.get("placeholder"):
                self.resolved[args["placeholder"]] = real
            return real
        if op == "set_status":
            if args["status"] == "RUNNING":
                self.client.update_run(run_id, status="RUNNING")
            else:
                self.client.set_terminated(run_id, status=args["status"])
        elif op == "log_params":
            items = [Param(k, _param_value(v)[:6000]) for k, v in args["params"].items()]
            for i in range(0, len(items), _BATCH):
                self.client.log_batch(run_id, params=items[i : i + _BATCH])
        elif op == "log_metrics":
            ts = args.get("timestamp") or int(time.time() * 1000)
            items = [Metric(k, v, ts, args["step"]) for k, v in args["metrics"].items()]
            for i in range(0, len(items), 1000):
                self.client.log_batch(run_id, metrics=items[i : i + 1000])
        elif op == "set_tags":
            self.client.log_batch(run_id, tags=[RunTag(k, str(v)[:MAX_TAG]) for k, v in args["tags"].items()])
        elif op == "log_artifact":
            path = Path(args["path"])
            if path.is_dir():
                self.client.log_artifacts(run_id, str(path), args.get("artifact_path"))
            elif path.is_file():
                self.client.log_artifact(run_id, str(path), args.get("artifact_path"))
        elif op == "log_text":
            self.client.log_text(run_id, args["text"], args["artifact_file"])
        elif op == "log_input":
            d = args["dataset"]
            dataset = Dataset(d["name"], d["digest"], d["source_type"], d["source"])
            context = InputTag("mlflow.data.context", d.get("context", "training"))
            self.client.log_inputs(run_id, datasets=[DatasetInput(dataset, tags=[context])])
        else:
            raise ValueError(f"unknown tracking op {op!r}")
        return None

    # ---- reads and set-up (never journaled: they need an answer) ----------------------------------
    def ensure_experiment(self, name: str, artifact_location: str | None,
                          tags: dict[str, str] | None = None) -> str:
        """The experiment named ``name`` (several searches of a space share it), with ``tags`` set."""
        exp = self.client.get_experiment_by_name(name)
        exp_id = exp.experiment_id if exp is not None else self.client.create_experiment(
            name, artifact_location=artifact_location)
        for k, v in (tags or {}).items():
            if exp is None or exp.tags.get(k) != v:
                self.client.set_experiment_tag(exp_id, k, v)
        return exp_id

    def start_parent(self, experiment_id: str, run_name: str, tags: dict[str, str]) -> str:
        run = self.client.create_run(experiment_id, run_name=run_name, tags=tags)
        return run.info.run_id

    def _find(self, experiment_id: str, parent_run_id: str, trial_id: str) -> Any | None:
        runs = self.client.search_runs(
            [experiment_id],
            filter_string=f"tags.mlflow.parentRunId = '{parent_run_id}' and tags.{TRIAL_ID_TAG} = '{trial_id}'",
            max_results=2)
        return runs[0] if runs else None

    def _read(self, fn: Any, default: Any) -> Any:
        """A lookup; while the store is unreachable (journal mode only) it answers ``default``."""
        if self.journal is not None and self._has_pending() and not self._try_flush():
            return default
        try:
            return fn()
        except Exception as exc:
            if self.journal is None or not unreachable(exc):
                raise
            self._go_offline(exc)
            return default

    def find_trial_run(self, experiment_id: str, parent_run_id: str, trial_id: str) -> Any | None:
        return self._read(lambda: self._find(experiment_id, parent_run_id, trial_id), None)

    def trial_runs(self, experiment_id: str, parent_run_id: str) -> list[Any]:
        return self._read(lambda: list(self.client.search_runs(
            [experiment_id], filter_string=f"tags.mlflow.parentRunId = '{parent_run_id}'",
            max_results=10000)), [])

    # ---- writes ------------------------------------------------------------------------------------
    def close_running(self, experiment_id: str, parent_run_id: str, status: str, tags: dict[str, str],
                      keep: set[str] | frozenset[str] = frozenset()) -> None:
        """End every trial run still RUNNING under the parent (except trial ids in ``keep``)
        with ``status``, tagged with why: nothing may stay RUNNING once no process owns it."""
        for run in self.trial_runs(experiment_id, parent_run_id):
            if run.info.status == "RUNNING" and run.data.tags.get(TRIAL_ID_TAG) not in keep:
                self.set_tags(run.info.run_id, tags)
                self.set_status(run.info.run_id, status)

    def create_run(self, experiment_id: str, run_name: str, tags: dict[str, str]) -> str:
        return str(self._write("create_run", experiment_id=experiment_id, run_name=run_name, tags=tags))

    def set_status(self, run_id: str, status: str) -> None:
        self._write("set_status", run_id=run_id, status=status)

    def log_params(self, run_id: str, params: dict[str, Any]) -> None:
        self._write("log_params", run_id=run_id, params=params)

    def log_metrics(self, run_id: str, metrics: dict[str, float], step: int) -> None:
        self._write("log_metrics", run_id=run_id, metrics=metrics, step=step)

    def set_tags(self, run_id: str, tags: dict[str, str]) -> None:
        self._write("set_tags", run_id=run_id, tags={k: str(v) for k, v in tags.items()})

    def log_artifact(self, run_id: str, path: Path, artifact_path: str | None = None) -> None:
        self._write("log_artifact", run_id=run_id, path=str(path), artifact_path=artifact_path)

    def log_input(self, run_id: str, dataset: dict[str, str]) -> None:
        """A dataset (:func:`search.tracking.context.dataset_record`) as the run's input."""
        self._write("log_input", run_id=run_id, dataset=dataset)

    def log_text(self, run_id: str, text: str, artifact_file: str) -> None:
        self._write("log_text", run_id=run_id, text=text, artifact_file=artifact_file)
