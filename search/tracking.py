"""MLflow tracking from the driver: the single writer of a search's runs.

Why the driver and not the trials: many trial processes writing one SQLite file hit
"database is locked", and Ray's ``MLflowLoggerCallback`` logs Tune's bookkeeping (``pid``,
``timestamp``, ``config/...``) as metrics, has no parent run and duplicates runs after a
restore. Here a Tune :class:`Callback` (it runs in the driver) does all the writing:

* one parent run per search (created by the driver before Ray starts, id in ``search.json``);
* one nested run per trial (``mlflow.parentRunId``), named after the trial and tagged with the
  Tune ``trial_id``. Before creating a run the callback looks that tag up, so a resumed search
  (whose callback is a fresh object) reuses the run instead of creating a duplicate; epochs
  already logged before the interruption are skipped by the logged ``epoch`` metric;
* params = every ``TrialConfig.flat()`` field plus ``parent/hash`` (the parent store key, so
  trials sharing a parent can be grouped in the UI); per-epoch metrics with ``step=epoch``, only
  the trial's own keys; the tag ``parent/reused`` (0 trained, 1 taken from the store) at the
  first result; on completion ``config.yaml``, ``metrics.json``, figures and weights;
  a failed trial ends FAILED with the error as the ``error`` tag.

The callback also writes ``trials/<trial>/summary.json`` (see :mod:`search.results`).

A store that goes away mid-search (an ``mlflow server`` restarted, a network cut) must not stop
the training or lose results: :class:`MlflowTracker` journals writes it cannot send to
``<search>/mlflow_pending.jsonl`` and replays them, in order, when the store answers again (tried
every ``RECONNECT_EVERY_S`` while the search runs, at the start and end of every launch/resume,
and by ``compvae-search report``). A store unreachable at *launch* is still one error line.
"""

from __future__ import annotations

import fcntl
import json
import logging
import os
import re
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

from mlflow.entities import Metric, Param, RunTag
from mlflow.tracking import MlflowClient
from ray.tune import Callback
from ray.tune.experiment import Trial
from ray.tune.result import AUTO_RESULT_KEYS, DEBUG_METRICS
from ray.tune.stopper import Stopper

from compvae.config import TrialConfig
from compvae.errors import ConfigError, UserError, first_line
from compvae.parent_store import parent_key
from search.layout import SearchLayout, SearchState
from search.results import COMPLETED, FAILED, FINAL_FAILURE, LOST, RUNNING, STOPPED, TrialSummary
from search.space import SearchSpace, space_from_dict

# Keys Tune adds to every result: never logged as metrics.
TUNE_KEYS = frozenset(AUTO_RESULT_KEYS) | frozenset(DEBUG_METRICS) | {
    "done", "trial_id", "experiment_tag", "should_checkpoint", "iterations_since_restore",
    "time_since_restore", "timesteps_since_restore", "training_iteration", "episodes_total",
    "timesteps_total", "checkpoint_dir_name", "time_this_iter_s", "time_total_s", "experiment_id",
}
TRIAL_ID_TAG = "tune_trial_id"
PARENT_HASH_PARAM = "parent/hash"
PARENT_REUSED = "parent/reused"  # metric and tag: 0 = this trial trained its parent, 1 = reused
MAX_TAG = 5000
_BATCH = 100
# Writes buffered while the MLflow store is unreachable (see MlflowTracker), in the search folder.
JOURNAL = "mlflow_pending.jsonl"
log = logging.getLogger(__name__)


def trial_metrics(result: dict[str, Any]) -> dict[str, float]:
    """The trial's own numeric metrics from a Tune result (Tune's bookkeeping removed)."""
    return {k: float(v) for k, v in result.items()
            if k not in TUNE_KEYS and isinstance(v, (int, float)) and not isinstance(v, bool)}


def short_error(exc: BaseException | None) -> str:
    """'Type: first line' of the innermost cause: Ray wraps a trial's exception in
    RayTaskError/TuneError whose text is a whole traceback."""
    if exc is None:
        return "unknown error"
    seen: set[int] = set()
    while id(exc) not in seen:
        seen.add(id(exc))
        cause = getattr(exc, "cause", None) or exc.__cause__
        if not isinstance(cause, BaseException):
            break
        exc = cause
    text = str(exc).strip()
    first = text.splitlines()[0] if text else ""
    return f"{type(exc).__name__}: {first}" if first else type(exc).__name__


def trial_error(trial: Trial) -> str:
    try:
        exc = trial.get_pickled_error()
    except Exception:  # an unreadable pickle should not hide the text version
        exc = None
    if exc is not None:
        return short_error(exc)
    path = trial.error_file
    if path and Path(path).is_file():
        lines = [ln for ln in Path(path).read_text().splitlines() if ln.strip()]
        if lines:  # 'pkg.module.ErrorType: message' -> 'ErrorType: message', as short_error
            return re.sub(r"^(?:[A-Za-z_][\w]*\.)+(\w+: )", r"\1", lines[-1].strip())
    return "unknown error"


def trial_label(trial: Trial) -> str:
    """The trial's name as set by ``trial_name_creator`` (``trial_00003``)."""
    return trial.custom_trial_name or str(trial)


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


PENDING_PREFIX = "pending-"
RECONNECT_EVERY_S = 20.0


def unreachable(exc: BaseException) -> bool:
    """Whether ``exc`` means "the tracking store cannot be reached right now" (connection
    refused, timeout, a server answering 5xx until retries ran out), as opposed to a request
    the store rejects. Only the former is journaled: replaying a rejected write would fail again."""
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
        self.offline_reason: str | None = None
        self.resolved: dict[str, str] = {}  # placeholder run id -> real run id, after a flush
        self._next_try = 0.0

    # ---- journal -------------------------------------------------------------------------------
    def pending(self) -> int:
        """Writes waiting in the journal."""
        if self.journal is None or not self.journal.is_file():
            return 0
        return sum(1 for line in self.journal.read_text().splitlines() if line.strip())

    def _has_pending(self) -> bool:
        """Cheap check for the write path (a stat, not a read of the whole journal)."""
        try:
            return self.journal is not None and self.journal.stat().st_size > 0
        except FileNotFoundError:
            return False

    def _append(self, op: str, args: dict[str, Any]) -> None:
        assert self.journal is not None
        self.journal.parent.mkdir(parents=True, exist_ok=True)
        with open(self.journal, "a") as fh:
            fh.write(json.dumps({"op": op, "args": args, "time": time.time()}) + "\n")
            fh.flush()

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
        self._append(op, args)
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
        if self.journal is None or not self.journal.is_file():
            return 0
        ops = [json.loads(line) for line in self.journal.read_text().splitlines() if line.strip()]
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
                rest = [{**e, "args": self._resolve_args(e["args"])} for e in ops[i:]]
                tmp = self.journal.with_name(self.journal.name + ".tmp")
                tmp.write_text("".join(json.dumps(e) + "\n" for e in rest))
                os.replace(tmp, self.journal)
                return sent
            sent += 1
        self.journal.unlink(missing_ok=True)
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
        else:
            raise ValueError(f"unknown tracking op {op!r}")
        return None

    # ---- reads and set-up (never journaled: they need an answer) ----------------------------------
    def ensure_experiment(self, name: str, artifact_location: str | None) -> str:
        exp = self.client.get_experiment_by_name(name)
        if exp is not None:
            return exp.experiment_id
        return self.client.create_experiment(name, artifact_location=artifact_location)

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

    def log_text(self, run_id: str, text: str, artifact_file: str) -> None:
        self._write("log_text", run_id=run_id, text=text, artifact_file=artifact_file)


def sync_pending(tracker: MlflowTracker, layout: SearchLayout) -> tuple[int, int]:
    """Send buffered MLflow writes if the store is back; point trial summaries that still hold a
    placeholder run id at the real run. Returns (writes sent, writes still pending)."""
    try:
        sent = tracker.flush()
    except Exception as exc:  # the store answers but fails otherwise: keep the journal for later
        log.warning("could not send buffered MLflow writes: %s", exc)
        sent = 0
    pending = tracker.pending()
    stale = [x for x in TrialSummary.load_all(layout) if (x.mlflow_run_id or "").startswith(PENDING_PREFIX)]
    if stale and not pending:
        state = SearchState.load(layout)
        for summary in stale:
            real = tracker.resolved.get(summary.mlflow_run_id or "")
            if real is None and state.mlflow_experiment_id and state.mlflow_parent_run_id:
                run = tracker.find_trial_run(state.mlflow_experiment_id, state.mlflow_parent_run_id,
                                             summary.trial_id)
                real = run.info.run_id if run is not None else None
            if real is not None:
                summary.mlflow_run_id = real
                summary.save(layout)
    return sent, pending


class ObjectiveGuard(Stopper):
    """Ends the search when a trial reaches its final epoch without an objective metric.

    Names of metrics are only known once a trial reports, so a typo in ``objective`` (or an
    evaluation metric missing from ``eval.metrics``) is caught at the first completed trial
    instead of after the whole budget. The message goes to ``abort.txt`` for the driver to
    raise as a UserError (the stopper object itself is pickled away by Tune on resume).
    """

    def __init__(self, layout_root: str, metrics: list[str], base_epochs: int) -> None:
        self.root = layout_root
        self.metrics = list(metrics)
        self.base_epochs = base_epochs
        self._abort = False

    def __call__(self, trial_id: str, result: dict[str, Any]) -> bool:
        config = result.get("config") or {}
        final = int(config.get("child.epochs", self.base_epochs))
        if float(result.get("epoch", 0)) < final:
            return False
        missing = [m for m in self.metrics if m not in result]
        if not missing:
            return False
        known = sorted(trial_metrics(result))
        msg = (f"objective: metric {', '.join(missing)} is not reported by the trials "
               f"(they report {', '.join(known)}); fix objective.metric or eval.metrics in the space")
        (Path(self.root) / "abort.txt").write_text(msg)
        self._abort = True
        return True

    def stop_all(self) -> bool:
        return self._abort


class TrackingCallback(Callback):
    """The driver-side single MLflow writer and summary keeper (see module docstring)."""

    def __init__(self, layout_root: str, space: dict[str, Any], mlflow_uri: str,
                 experiment_id: str, parent_run_id: str) -> None:
        self.root = layout_root
        self.space_dict = space
        self.mlflow_uri = mlflow_uri
        self.experiment_id = experiment_id
        self.parent_run_id = parent_run_id
        self._init_runtime()

    # Tune pickles callbacks into tuner.pkl: keep only the settings, rebuild the rest.
    def __getstate__(self) -> dict[str, Any]:
        return {k: self.__dict__[k] for k in
                ("root", "space_dict", "mlflow_uri", "experiment_id", "parent_run_id")}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        self._init_runtime()

    def _init_runtime(self) -> None:
        self._tracker: MlflowTracker | None = None
        self._space: SearchSpace | None = None
        self._runs: dict[str, str] = {}
        self._last_epoch: dict[str, int] = {}
        self._summaries: dict[str, TrialSummary] = {}

    @property
    def layout(self) -> SearchLayout:
        return SearchLayout(Path(self.root))

    @property
    def tracker(self) -> MlflowTracker:
        if self._tracker is None:
            self._tracker = MlflowTracker(self.mlflow_uri, journal=Path(self.root) / JOURNAL)
        return self._tracker

    @property
    def space(self) -> SearchSpace:
        if self._space is None:
            self._space = space_from_dict(self.space_dict, source="space")
        return self._space

    # ---- trial bookkeeping ---------------------------------------------------------------------
    def _config(self, trial: Trial) -> TrialConfig | None:
        try:
            return self.space.trial_config(dict(trial.config))
        except (ConfigError, UserError):
            return None

    def _summary(self, trial: Trial) -> TrialSummary:
        s = self._summaries.get(trial.trial_id)
        if s is None:
            path = self.layout.trial_dir(trial_label(trial)) / "summary.json"
            saved = json.loads(path.read_text()) if path.is_file() else {}
            if saved.get("trial_id") == trial.trial_id:
                s = TrialSummary(**saved)
            else:  # new, or a same-named trial lost with a killed driver: start afresh
                cfg = self._config(trial)
                s = TrialSummary(trial_id=trial.trial_id, name=trial_label(trial),
                                 final_epoch=cfg.child.epochs if cfg else 0,
                                 params=dict(trial.config), config=cfg.to_dict() if cfg else {})
            self._summaries[trial.trial_id] = s
        return s

    def _run_id(self, trial: Trial) -> str:
        """The trial's nested run: cached, else found by its trial_id tag, else created."""
        run_id = self._runs.get(trial.trial_id)
        if run_id is not None:
            run_id = self.tracker.resolved.get(run_id, run_id)  # a placeholder sent meanwhile
            self._runs[trial.trial_id] = run_id
            return run_id
        existing = self.tracker.find_trial_run(self.experiment_id, self.parent_run_id, trial.trial_id)
        if existing is not None:
            run_id = existing.info.run_id
            self._last_epoch[trial.trial_id] = int(existing.data.metrics.get("epoch", 0))
            if existing.info.status != "RUNNING":
                self.tracker.set_status(run_id, "RUNNING")
        else:
            run_id = self._create_run(trial)
            self._last_epoch[trial.trial_id] = 0
        self._runs[trial.trial_id] = run_id
        return run_id

    def _create_run(self, trial: Trial) -> str:
        cfg = self._config(trial)
        tags = {
            "mlflow.parentRunId": self.parent_run_id,
            TRIAL_ID_TAG: trial.trial_id,
            "trial_name": trial_label(trial),
            "compvae.search": self.layout.name,
            "searched_params": ",".join(self.space.params),
        }
        run_id = self.tracker.create_run(self.experiment_id, trial_label(trial), tags)
        if cfg is not None:
            self.tracker.log_params(run_id, {**cfg.flat(), PARENT_HASH_PARAM: parent_key(cfg)})
            self.tracker.log_text(run_id, cfg.to_yaml(), "config.yaml")
        else:
            self.tracker.log_params(run_id, dict(trial.config))
        return run_id

    # ---- Tune hooks ---------------------------------------------------------------------------
    def on_trial_start(self, iteration: int, trials: list[Trial], trial: Trial, **info: Any) -> None:
        s = self._summary(trial)
        s.mlflow_run_id = self._run_id(trial)
        s.status, s.error = RUNNING, None
        s.save(self.layout)

    def on_trial_result(self, iteration: int, trials: list[Trial], trial: Trial,
                        result: dict[str, Any], **info: Any) -> None:
        if FINAL_FAILURE in result:  # the trial raises next; Tune must not retry it
            trial.max_failures = 0
            return
        metrics = trial_metrics(result)
        epoch = int(result.get("epoch", 0))
        run_id = self._run_id(trial)
        if epoch > self._last_epoch.get(trial.trial_id, 0):
            self.tracker.log_metrics(run_id, metrics, step=epoch)
            if PARENT_REUSED in metrics and self._last_epoch.get(trial.trial_id, 0) == 0:
                self.tracker.set_tags(run_id, {PARENT_REUSED: str(int(metrics[PARENT_REUSED]))})
            self._last_epoch[trial.trial_id] = epoch
        s = self._summary(trial)
        s.mlflow_run_id = run_id
        s.epoch = max(s.epoch, epoch)
        s.metrics = metrics
        s.save(self.layout)

    def on_trial_complete(self, iteration: int, trials: list[Trial], trial: Trial, **info: Any) -> None:
        s = self._summary(trial)
        run_id = self._run_id(trial)
        if trial.last_result:
            s.epoch = max(s.epoch, int(trial.last_result.get("epoch", 0)))
        s.status = COMPLETED if s.final_epoch and s.epoch >= s.final_epoch else STOPPED
        out = self.layout.trial_dir(trial_label(trial))
        timings = out / "timings.json"
        if timings.is_file():
            values = {k: float(v) for k, v in json.loads(timings.read_text()).items()}
            self.tracker.log_metrics(run_id, values, step=s.epoch)
        for name in ("metrics.json", "timings.json", "attempts.jsonl"):
            self.tracker.log_artifact(run_id, out / name)
        self.tracker.log_artifact(run_id, out / "figures", "figures")
        for name in ("parent.pt", "child.pt"):
            self.tracker.log_artifact(run_id, out / name, "weights")
        self.tracker.set_tags(run_id, {"trial_status": s.status})
        self.tracker.set_status(run_id, "FINISHED")
        s.save(self.layout)

    def on_trial_recover(self, iteration: int, trials: list[Trial], trial: Trial, **info: Any) -> None:
        s = self._summary(trial)
        s.retries += 1
        message = trial_error(trial)
        self.tracker.set_tags(self._run_id(trial), {"retries": str(s.retries), "last_error": message})
        s.save(self.layout)

    def on_experiment_end(self, trials: list[Trial], **info: Any) -> None:
        """Close runs of trials Tune no longer knows: a driver killed (SIGKILL) after a trial
        started but before Tune saved its experiment state loses that trial, and the resumed
        search runs a new one in its place. The lost trial's run would stay RUNNING forever."""
        known = {t.trial_id for t in trials}
        self.tracker.close_running(self.experiment_id, self.parent_run_id, "KILLED",
                                   {"orphaned": "lost when the driver was killed; a new trial replaced it on resume"},
                                   keep=known)
        for summary in TrialSummary.load_all(self.layout):
            if summary.status == RUNNING and summary.trial_id not in known:
                summary.status = LOST
                summary.save(self.layout)

    def on_trial_error(self, iteration: int, trials: list[Trial], trial: Trial, **info: Any) -> None:
        s = self._summary(trial)
        run_id = self._run_id(trial)
        s.status, s.error = FAILED, trial_error(trial)
        self.tracker.set_tags(run_id, {"error": s.error, "trial_status": FAILED})
        self.tracker.log_artifact(run_id, self.layout.trial_dir(trial_label(trial)) / "attempts.jsonl")
        self.tracker.set_status(run_id, "FAILED")
        s.save(self.layout)
