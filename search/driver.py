"""Launch and resume searches: Ray, the Tuner, the MLflow parent run, the end-of-search table.

Order of work in ``launch``, chosen so a mistake costs seconds, not a cluster start:
validate the space (pure Python) -> create the search folder and its state -> check the MLflow
store -> start/connect Ray -> check the cluster can ever place a trial (a GPU request on a
CPU-only cluster would leave every trial PENDING forever) -> run the Tuner -> report/export.

``resume`` restores Tune's experiment (finished trials are not rerun, unfinished ones restart
from their last checkpoint, errored ones stay failed: a diverged trial would only diverge
again, and Optuna keeps them FAIL anyway); the searcher state and the durable Optuna study
continue the same study, and the tracking callback reuses the parent and trial runs.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import logging
import os
import shutil
import signal
import socket
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

from compvae import __version__
from compvae.errors import SearchFailed, UserError, first_line
from compvae.paths import check_file_target, check_folder
from search.layout import (
    SearchLayout,
    SearchState,
    driver_lock,
    driver_running,
    resolve_search,
    storage_root,
    write_json_atomic,
)
from search.results import (
    COMPLETED,
    FAILED,
    LOST,
    STOPPED,
    TrialSummary,
    best_trials,
    format_table,
    trials_frame,
)
from search.space import NAME_RE, SearchSpace, load_space, space_from_dict
from search.tracking import JOURNAL, MlflowTracker, is_local_store, store_lock, sync_pending

Printer = Callable[[str], None]
log = logging.getLogger(__name__)


@dataclass
class Outcome:
    layout: SearchLayout
    finished: bool
    summaries: list[TrialSummary]


# ---- environment ------------------------------------------------------------------------------
def _quiet_tune() -> None:
    """Our console callback replaces Ray's progress table; Ray's per-trial CSV/TensorBoard
    loggers are replaced by the JSON logger alone (result.json keeps Tune's own tools working).
    Strict metric checking is off because final-epoch-only objectives (``child/dci_*``) are
    legitimately absent from earlier epochs; :class:`ObjectiveGuard` checks them instead."""
    os.environ.setdefault("TUNE_DISABLE_AUTO_CALLBACK_LOGGERS", "1")
    os.environ["TUNE_DISABLE_STRICT_METRIC_CHECKING"] = "1"
    os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "0")
    # Keeping one checkpoint per trial forces an experiment snapshot per epoch: intended here.
    os.environ.setdefault("TUNE_WARN_EXCESSIVE_EXPERIMENT_CHECKPOINT_SYNC_THRESHOLD_S", "0")
    # MLflow's HTTP client retries a dead server for minutes (7 retries, backoff 2) inside Tune's
    # event loop; the driver buffers writes instead (search.tracking.MlflowTracker), so fail fast.
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "2")
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR", "1")
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_TIMEOUT", "30")
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    for name in ("mlflow", "alembic"):
        logging.getLogger(name).setLevel(logging.WARNING)
    auth = logging.getLogger("ray._private.authentication.authentication_token_setup")
    if not any(isinstance(f, _TokenAuthNote) for f in auth.filters):
        auth.addFilter(_TokenAuthNote())
    for name in ("ray.tune.execution.tune_controller", "ray.tune.tune", "ray.tune.analysis.experiment_analysis"):
        logger = logging.getLogger(name)
        if not any(isinstance(f, _RepeatedTrialErrors) for f in logger.filters):
            logger.addFilter(_RepeatedTrialErrors())


class _RepeatedTrialErrors(logging.Filter):
    """Drops Tune's multi-line tracebacks for failed trials (the console callback already
    printed a one-line error per trial; the full traceback stays in the trial's error.txt) and
    its warning, on restore, that trials which never started have no result files."""

    def filter(self, record: logging.LogRecord) -> bool:
        msg = str(record.msg)
        # Tune's "Resume experiment with: Tuner.restore(...)" is replaced by our resume command.
        return not msg.startswith(("Trial task failed for trial", "Trials did not complete",
                                   "Failed to fetch metrics for", "Experiment has been interrupted"))


class _TokenAuthNote(logging.Filter):
    """Drops Ray's "Token authentication is enabled for this Ray cluster" note, printed on every
    local start when a token exists: it is not actionable, and a one-line error (say, a GPU
    request on a CPU-only cluster) must stay one line. The "disabled" security warning stays."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not str(record.msg).startswith("Token authentication is enabled for this Ray cluster")


def _token_available() -> bool:
    if os.environ.get("RAY_AUTH_TOKEN") or os.environ.get("RAY_AUTH_TOKEN_PATH"):
        return True
    return (Path.home() / ".ray" / "auth_token").is_file()


def _enable_token_auth() -> None:
    """RAY_AUTH_MODE=token for this process. Ray caches its config at import, so the env var
    alone is not enough once ``ray`` is imported: use Ray's own switch (what ``ray.init()``
    does for a local cluster it finds by itself), falling back to the env var."""
    try:
        from ray._private.authentication import authentication_token_setup as auth

        if auth.maybe_enable_token_auth_if_token_available(warn_if_disabled=False):
            return
    except (ImportError, AttributeError):
        pass
    os.environ["RAY_AUTH_MODE"] = "token"


def connect_ray(address: str | None, source: str = "--address") -> bool:
    """Start a new local Ray, or join the cluster at ``address``/``RAY_ADDRESS``.

    Returns whether this call initialised Ray (and so should shut it down). An already
    initialised Ray (a test session, a notebook) is reused as is. Ray 2.59+ uses token auth
    for local clusters but an explicit address never turns it on by itself, so with a token
    on this machine we opt in (a cluster without auth ignores the token).
    """
    import ray

    if ray.is_initialized():
        return False
    if not address and os.environ.get("RAY_ADDRESS"):
        address, source = os.environ["RAY_ADDRESS"], "RAY_ADDRESS"  # errors name what the user set
    if address:
        _check_reachable(address, source)
    if address and "RAY_AUTH_MODE" not in os.environ and _token_available():
        _enable_token_auth()
    # Trial stdout stays in Ray's session logs; failures reach the console via Tune's errors.
    kwargs: dict[str, Any] = {"logging_level": logging.WARNING, "log_to_driver": False}
    if address:
        kwargs["address"] = address
    else:
        # "local", not None: ray.init() would otherwise join the last `ray start` cluster of
        # this machine (recorded in /tmp/ray/ray_current_cluster, even when it is long dead).
        kwargs["address"] = "local"
        kwargs["include_dashboard"] = False
    try:
        ray.init(**kwargs)
    except (ConnectionError, RuntimeError, ValueError) as exc:
        first = first_line(exc)
        if address:
            raise UserError(f"{source} {address}: cannot join a Ray cluster there ({first}); start one with "
                            f"`ray start --head`, set RAY_AUTH_TOKEN for a remote cluster, or {_drop(source)} "
                            "for a local Ray") from None
        raise UserError(f"cannot start a local Ray instance: {first}") from None
    return True


def _drop(source: str) -> str:
    """How to stop using an address, worded for where it came from."""
    return {"--address": "drop --address", "RAY_ADDRESS": "unset RAY_ADDRESS"}.get(
        source, f"give --address (the {source} is used otherwise)")


def _check_reachable(address: str, source: str = "--address", timeout: float = 5.0) -> None:
    """Fail in seconds on a ``host:port`` nobody listens on. ``ray.init(address=...)`` retries
    the GCS connection forever (``Failed to connect to GCS ... within 5 seconds`` lines, no
    error), so without this a mistyped or stopped head node hangs the launch."""
    if address in ("auto", "local"):
        return  # Ray resolves these itself and fails fast when there is no cluster
    hostport = address.split("://", 1)[-1].rstrip("/")
    host, sep, port = hostport.rpartition(":")
    if not sep or not port.isdigit() or not host:
        raise UserError(f"{source} {address}: expected HOST:PORT of a Ray head node (e.g. 10.0.0.5:6379), "
                        f"or {_drop(source)} for a local Ray")
    try:
        with socket.create_connection((host.strip("[]"), int(port)), timeout=timeout):
            pass
    except OSError as exc:
        raise UserError(f"{source} {address}: cannot join a Ray cluster there (nothing answers: "
                        f"{exc.strerror or exc}); start one with `ray start --head --port {port}`, or "
                        f"{_drop(source)} for a local Ray") from None


class _SigtermAsInterrupt:
    """SIGTERM handled as Ctrl-C: the handler sends this process SIGINT, so Tune stops the run
    as it does for Ctrl-C (runs closed, state saved, resume hint) and the CLI exits 143. It is
    installed after ``ray.init``, which sets a handler of its own that dumps a stack and aborts."""

    def __init__(self) -> None:
        self.received = False

    def __call__(self, signum: int, frame: object) -> None:
        self.received = True
        os.kill(os.getpid(), signal.SIGINT)

    def install(self) -> Any:
        """Returns the handler it replaced (None off the main thread, where none can be set)."""
        try:
            return signal.signal(signal.SIGTERM, self)
        except ValueError:  # not the main thread (a library caller's worker thread)
            return None


SIGTERM = _SigtermAsInterrupt()


@contextmanager
def ray_session(address: str | None, space: SearchSpace, source: str = "--address") -> Iterator[None]:
    """Ray up and able to place one trial, for the duration of the block; shut down after
    only if this block started it. Runs before the search folder exists, so a wrong address or
    an impossible resource request leaves nothing behind."""
    owned = connect_ray(address, source)
    previous = SIGTERM.install()
    try:
        check_cluster(space)
        yield
    finally:
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)
        if owned:
            import ray

            ray.shutdown()


def check_cluster(space: SearchSpace) -> None:
    """Fail now if no node can ever hold one trial's resources (else: PENDING forever)."""
    import ray

    need_cpu = space.search.resources.cpus
    need_gpu = space.search.resources.gpus
    nodes = [n for n in ray.nodes() if n.get("Alive")]
    fits = [n for n in nodes
            if n["Resources"].get("CPU", 0) >= need_cpu and n["Resources"].get("GPU", 0) >= need_gpu]
    if fits:
        return
    total = ray.cluster_resources()
    have = f"CPU {total.get('CPU', 0):g}, GPU {total.get('GPU', 0):g} over {len(nodes)} node(s)"
    if need_gpu > 0 and not any(n["Resources"].get("GPU", 0) >= need_gpu for n in nodes):
        raise UserError(f"search.resources.gpus: each trial asks for {need_gpu:g} GPU but no node of the "
                        f"Ray cluster has that ({have}); set search.resources.gpus: 0 for CPU trials or "
                        "connect to a GPU cluster with --address")
    raise UserError(f"search.resources.cpus: each trial asks for {need_cpu:g} CPU but no node of the Ray "
                    f"cluster has that ({have}); lower search.resources.cpus")


def _normalise_mlflow_uri(uri: str) -> str:
    parsed = urlparse(uri)
    if parsed.scheme == "sqlite":
        path = uri[len("sqlite:///"):] if uri.startswith("sqlite:///") else ""
        if not path:
            raise UserError(f"--mlflow-uri {uri}: expected sqlite:///path/to/mlflow.db")
        # relative: against the user's cwd, made absolute now; its folder must be creatable
        path = str(check_file_target("--mlflow-uri", path, shown=uri))
        return f"sqlite:///{path}"
    if parsed.scheme in ("http", "https"):
        return uri.rstrip("/")
    if parsed.scheme in ("postgresql", "mysql", "mssql") or parsed.scheme.startswith(("postgresql+", "mysql+")):
        _check_db_driver(uri)
        return uri
    raise UserError(f"--mlflow-uri {uri}: use sqlite:///ABS/PATH.db, a database URL, or http(s)://host:port "
                    "of `mlflow server` (MLflow 3 refuses plain folders)")


def _check_db_driver(uri: str) -> None:
    """A database URI whose Python driver is missing fails now, not after Ray has started.
    ``create_engine`` imports the driver without connecting."""
    import sqlalchemy

    try:
        sqlalchemy.create_engine(uri).dispose()
    except Exception as exc:  # NoSuchModuleError, ModuleNotFoundError, ArgumentError
        raise UserError(f"--mlflow-uri {uri}: cannot use this database URI ({type(exc).__name__}: "
                        f"{first_line(exc)}); install its Python driver (e.g. psycopg2-binary, pymysql) "
                        "or use sqlite:///ABS/PATH.db") from None


def _check_mlflow_server(uri: str) -> None:
    if not uri.startswith(("http://", "https://")):
        return
    try:
        with urllib.request.urlopen(f"{uri}/health", timeout=10) as resp:
            resp.read()
    except (urllib.error.URLError, OSError) as exc:
        raise UserError(f"--mlflow-uri {uri}: no MLflow server answers there ({exc}); start one with "
                        "`mlflow server --host 127.0.0.1 --port PORT`") from None


def _check_data(space: SearchSpace) -> SearchSpace:
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


# ---- the Tuner -------------------------------------------------------------------------------
def _trainable(space: SearchSpace, layout: SearchLayout) -> Any:
    from ray import tune

    from search.trainable import trial_fn

    resources = {"cpu": space.search.resources.cpus, "gpu": space.search.resources.gpus}
    return tune.with_resources(
        tune.with_parameters(trial_fn, base=space.base_dict(), root=str(layout.root),
                             reuse_parents=space.search.reuse_parents), resources)


def _scheduler(space: SearchSpace) -> Any:
    from ray.tune.schedulers import ASHAScheduler, FIFOScheduler

    asha = space.search.scheduler
    if asha is None:
        return FIFOScheduler()
    metric, mode = space.scheduler_metric()
    max_t = space.max_epochs
    # stop_last_trials=False: a trial at its last epoch must run on to write its outputs.
    return ASHAScheduler(time_attr="epoch", metric=metric, mode=mode, max_t=max_t,
                         grace_period=min(asha.grace_period, max_t), reduction_factor=asha.reduction_factor,
                         brackets=asha.brackets, stop_last_trials=False)


def _new_tuner(space: SearchSpace, layout: SearchLayout, state: SearchState) -> Any:
    from ray import tune
    from ray.tune.logger import JsonLoggerCallback

    from search.console import ConsoleCallback
    from search.samplers import make_searcher
    from search.tracking import ObjectiveGuard, TrackingCallback
    from search.trainable import trial_name

    assert state.mlflow_experiment_id and state.mlflow_parent_run_id
    base_epochs = space.base_config().child.epochs
    tracking = TrackingCallback(str(layout.root), space.to_dict(), state.mlflow_uri,
                                state.mlflow_experiment_id, state.mlflow_parent_run_id)
    asha_metric = space.scheduler_metric()[0] if space.search.scheduler is not None else None
    console = ConsoleCallback(space.metrics, list(space.params), space.num_trials, base_epochs, asha_metric)
    return tune.Tuner(
        _trainable(space, layout),
        tune_config=tune.TuneConfig(
            search_alg=make_searcher(space, state.optuna_url, state.study_name),
            scheduler=_scheduler(space),
            num_samples=space.num_trials,
            max_concurrent_trials=space.search.max_concurrent,
            trial_name_creator=trial_name,
            trial_dirname_creator=trial_name,
        ),
        run_config=tune.RunConfig(
            name=layout.tune_dir.name,
            storage_path=str(layout.root),
            callbacks=[tracking, console, JsonLoggerCallback()],
            stop=ObjectiveGuard(str(layout.root), space.metrics, base_epochs),
            failure_config=tune.FailureConfig(max_failures=space.search.max_failures),
            checkpoint_config=tune.CheckpointConfig(num_to_keep=None),  # epoch markers: see trainable.py
            verbose=0,
        ),
    )


# ---- MLflow parent run -----------------------------------------------------------------------
def _parent_tags(space: SearchSpace, layout: SearchLayout, address: str | None) -> dict[str, str]:
    s = space.search
    return {
        "compvae.space": space.name,
        "compvae.version": __version__,
        "compvae.search": layout.name,
        "search.dir": str(layout.root),
        "search.sampler": s.sampler,
        "search.seed": str(s.seed),
        "search.num_samples": str(space.num_trials),
        "search.max_concurrent": str(s.max_concurrent),
        "search.scheduler": ("none" if s.scheduler is None else
                             f"asha(grace_period={s.scheduler.grace_period}, "
                             f"reduction_factor={s.scheduler.reduction_factor:g}, "
                             f"metric={space.scheduler_metric()[0]})"),
        "search.resources": f"cpus={s.resources.cpus:g}, gpus={s.resources.gpus:g}",
        "search.max_failures": str(s.max_failures),
        "search.reuse_parents": str(s.reuse_parents).lower(),
        "search.objective": ", ".join(f"{o.metric} ({o.mode})" for o in space.objective),
        "search.params": ", ".join(space.params),
        "ray.address": address or "local",
    }


def _start_tracking(space: SearchSpace, layout: SearchLayout, state: SearchState, address: str | None) -> None:
    artifacts = layout.mlartifacts.as_uri() if is_local_store(state.mlflow_uri) else None
    try:
        # Creating a SQLite store runs its schema migrations; two launches doing it at once on
        # one new store race (`duplicate column name`), so creation is serialised by a lock.
        with store_lock(state.mlflow_uri):
            tracker = MlflowTracker(state.mlflow_uri)
            state.mlflow_experiment_id = tracker.ensure_experiment(space.name, artifacts)
        state.mlflow_parent_run_id = tracker.start_parent(
            state.mlflow_experiment_id, layout.name, _parent_tags(space, layout, address))
    except Exception as exc:  # any store problem is the user's URI/server: one line
        raise UserError(f"MLflow store {state.mlflow_uri}: {first_line(exc)}") from None
    tracker.log_artifact(state.mlflow_parent_run_id, layout.space_file)
    state.save(layout)


# ---- entry points ----------------------------------------------------------------------------
def launch(space_path: str | Path, *, name: str | None = None, storage: str | Path | None = None,
           mlflow_uri: str | None = None, address: str | None = None, num_samples: int | None = None,
           max_concurrent: int | None = None, seed: int | None = None, reuse_parents: bool | None = None,
           out: Printer = print) -> Outcome:
    _quiet_tune()
    space = load_space(space_path).with_overrides(num_samples, max_concurrent, seed, reuse_parents)
    return _launch(space, name=name, storage=storage, mlflow_uri=mlflow_uri, address=address, out=out)


def _launch(space: SearchSpace, *, name: str | None, storage: str | Path | None, mlflow_uri: str | None,
            address: str | None, out: Printer, address_source: str = "--address") -> Outcome:
    """Every check that needs no Ray (space, data, paths, MLflow URI) runs before Ray starts."""
    space = _check_data(space)
    recorded = address or os.environ.get("RAY_ADDRESS") or None  # recorded for resume and MLflow
    if name is None:
        name = f"{space.name}-{dt.datetime.now():%Y%m%d-%H%M%S}"
    if not NAME_RE.match(name):
        raise UserError(f"--name {name!r}: letters, digits, '_', '-', '.' only (1-100 characters, "
                        "starting with a letter or digit)")
    root = check_folder("--storage", storage_root(storage), shown=str(storage or storage_root(None)))
    layout = SearchLayout(check_folder("--name", root / name, shown=name))
    stale = False
    if layout.state_file.exists():
        previous = SearchState.load(layout)
        if previous.status != "created" or driver_running(layout):
            raise UserError(f"search '{name}' already exists in {layout.root}; resume it with "
                            f"`compvae-search resume {layout.root}` or choose another --name")
        stale = True  # a launch that failed during start-up: no trial ran, so it starts afresh
    uri = _normalise_mlflow_uri(mlflow_uri) if mlflow_uri else layout.default_mlflow_uri
    _check_mlflow_server(uri)
    with ray_session(address, space, address_source):
        if stale:
            shutil.rmtree(layout.root)
        with driver_lock(layout):
            layout.space_file.write_text(space.to_yaml())
            state = SearchState(name=name, space_name=space.name, version=__version__,
                                created=dt.datetime.now().isoformat(timespec="seconds"), mlflow_uri=uri,
                                optuna_url=layout.optuna_url, study_name=name, ray_address=recorded,
                                space_fingerprint=space_fingerprint(space), space_snapshot=space.to_dict())
            state.save(layout)
            _start_tracking(space, layout, state, recorded)
            out(f"search {name}: {space.num_trials} trials of space '{space.name}' "
                f"({space.search.sampler}, {space.search.max_concurrent} at a time) in {layout.root}")
            out(f"MLflow: {uri} (experiment '{space.name}', run '{name}'); "
                f"`compvae-search ui {layout.root}` to browse")
            return _run(space, layout, state, recorded, restore=False, out=out)


def space_fingerprint(space: SearchSpace) -> str:
    """What ``resume`` compares: the launched space, overrides and absolute data paths included."""
    return hashlib.sha256(json.dumps(space.to_dict(), sort_keys=True).encode()).hexdigest()[:16]


def _check_unchanged(layout: SearchLayout, state: SearchState, space: SearchSpace) -> None:
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


def resume(name_or_dir: str, *, storage: str | Path | None = None, address: str | None = None,
           out: Printer = print) -> Outcome:
    _quiet_tune()
    layout = resolve_search(name_or_dir, storage)
    state = SearchState.load(layout)
    source = "--address" if address else "ray_address of search.json"
    if state.status == "created" and not driver_running(layout):
        # its launch failed during start-up (no trial ran): launch it again, same settings
        space = load_space(layout.space_file)
        out(f"search {layout.name} never started; launching it again")
        uri = None if state.mlflow_uri == layout.default_mlflow_uri else state.mlflow_uri
        return _launch(space, name=layout.name, storage=layout.root.parent, mlflow_uri=uri,
                       address=address or state.ray_address, out=out, address_source=source)
    with driver_lock(layout):
        state = SearchState.load(layout)
        space = load_space(layout.space_file)
        _check_unchanged(layout, state, space)
        address = address or state.ray_address
        done = [s for s in TrialSummary.load_all(layout) if s.status in (COMPLETED, STOPPED, FAILED)]
        out(f"resuming search {layout.name}: {len(done)}/{space.num_trials} trials already done")
        with ray_session(address, space, source):
            return _run(space, layout, state, address, restore=True, out=out)


def _run(space: SearchSpace, layout: SearchLayout, state: SearchState, address: str | None,
         restore: bool, out: Printer) -> Outcome:
    (layout.root / "abort.txt").unlink(missing_ok=True)
    tracker = MlflowTracker(state.mlflow_uri, journal=layout.root / JOURNAL)
    assert state.mlflow_parent_run_id
    sent, _ = sync_pending(tracker, layout)  # left over from an earlier run whose store went away
    if sent:
        out(f"MLflow: sent {sent} buffered writes to {state.mlflow_uri}")
    try:
        return _run_tuner(space, layout, state, address, restore, out, tracker)
    finally:
        _note_pending(tracker, layout, state, out)


def _note_pending(tracker: MlflowTracker, layout: SearchLayout, state: SearchState, out: Printer) -> None:
    """The one line a user needs when the MLflow store went away: results are safe locally."""
    _, pending = sync_pending(tracker, layout)
    if pending:
        out(f"MLflow: {state.mlflow_uri} is unreachable; {pending} writes are kept in {layout.root / JOURNAL} "
            f"(trial results are safe in {layout.trials_dir}); `compvae-search report {layout.root}` "
            "sends them once the store is back")


def _run_tuner(space: SearchSpace, layout: SearchLayout, state: SearchState, address: str | None,
               restore: bool, out: Printer, tracker: MlflowTracker) -> Outcome:
    from ray import tune

    assert state.mlflow_parent_run_id
    try:
        tracker.set_status(state.mlflow_parent_run_id, "RUNNING")
        state.status = "running"
        state.history.append({"event": "resume" if restore else "launch",
                              "time": dt.datetime.now().isoformat(timespec="seconds"), "address": address})
        state.save(layout)
        space = _outer_level(space, layout, state, tracker, out)
        if restore and tune.Tuner.can_restore(str(layout.tune_dir)):
            tuner = tune.Tuner.restore(str(layout.tune_dir), trainable=_trainable(space, layout),
                                       resume_unfinished=True, resume_errored=False, restart_errored=False)
        else:  # a fresh search, or one stopped before Tune saved anything: the study goes on
            tuner = _new_tuner(space, layout, state)
        tuner.fit()
    except KeyboardInterrupt:
        _mark(tracker, layout, state, "interrupted", "KILLED")
        out(f"interrupted; continue with `compvae-search resume {layout.root}`")
        raise
    except UserError:
        _mark(tracker, layout, state, "failed", "FAILED")
        raise
    abort = layout.root / "abort.txt"
    if abort.is_file():
        _mark(tracker, layout, state, "failed", "FAILED")
        raise UserError(abort.read_text().strip())
    summaries = [s for s in TrialSummary.load_all(layout) if s.status != LOST]
    finished = (len(summaries) >= space.num_trials
                and all(s.status in (COMPLETED, STOPPED, FAILED) for s in summaries))
    if not finished:
        _mark(tracker, layout, state, "interrupted", "KILLED")
        out(f"interrupted: {sum(s.status != 'RUNNING' for s in summaries)}/{space.num_trials} trials done; "
            f"continue with `compvae-search resume {layout.root}`")
        return Outcome(layout, False, summaries)
    finish(space, layout, state, summaries, out)
    return Outcome(layout, True, summaries)


def _outer_level(space: SearchSpace, layout: SearchLayout, state: SearchState, tracker: MlflowTracker,
                 out: Printer) -> SearchSpace:
    """Train the space's outer parents (once per search) and return the space the Tuner runs.
    Without reuse (the benchmark's baseline) trials train their own parents as ever."""
    from search.outer import effective_space, load_record, pretrain_parents

    if space.outer is None or not space.search.reuse_parents:
        return space
    record = load_record(layout)
    if record is None:
        assert state.mlflow_parent_run_id
        record = pretrain_parents(space, layout, out)
        write_json_atomic(layout.outer_file, record)
        kept = record["kept"]
        tracker.set_tags(state.mlflow_parent_run_id, {
            "outer.parents": str(len(record["points"])),
            "outer.kept": "all" if kept is None else ", ".join(map(str, kept)),
            "outer.rank_by": f"{space.outer.rank_by.metric} ({space.outer.rank_by.mode})",
        })
        tracker.log_artifact(state.mlflow_parent_run_id, layout.outer_file)
    return effective_space(space, record)


def _mark(tracker: MlflowTracker, layout: SearchLayout, state: SearchState, status: str, run_status: str) -> None:
    state.status = status
    state.save(layout)
    try:
        assert state.mlflow_parent_run_id and state.mlflow_experiment_id
        # Trials in flight when the driver stopped get no Tune end event: close their runs too,
        # so nothing is left RUNNING in MLflow. Resume finds them by trial id and reopens them.
        tracker.close_running(state.mlflow_experiment_id, state.mlflow_parent_run_id, run_status,
                              {"trial_status": f"interrupted (search {status})"})
        tracker.set_status(state.mlflow_parent_run_id, run_status)
    except Exception as exc:  # never mask the original problem with a tracking one
        log.warning("could not mark the MLflow runs %s: %s", run_status, exc)


def _close_orphaned_study_trials(state: SearchState) -> None:
    """A driver killed (SIGKILL) between Optuna's ``ask`` and Tune's next experiment snapshot
    leaves a study trial that no Tune trial owns; resume samples a new one in its place. Once the
    search is finished every live trial has been told, so any study trial still RUNNING is such
    an orphan: mark it FAIL (Optuna cannot delete trials) so the study has none left RUNNING."""
    import optuna
    from optuna.trial import TrialState

    try:
        study = optuna.load_study(study_name=state.study_name, storage=state.optuna_url)
        for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
            study._storage.set_trial_user_attr(t._trial_id, "orphaned", "lost when the driver was killed")
            study._storage.set_trial_state_values(t._trial_id, TrialState.FAIL)
    except Exception as exc:  # bookkeeping only: never fail a finished search over it
        log.warning("could not close orphaned Optuna trials: %s", exc)


def finish(space: SearchSpace, layout: SearchLayout, state: SearchState, summaries: list[TrialSummary],
           out: Printer) -> None:
    """End of a search: table, report and export into the search folder and the parent run."""
    from search.export import export_best
    from search.report import build_report

    tracker = MlflowTracker(state.mlflow_uri, journal=layout.root / JOURNAL)
    assert state.mlflow_parent_run_id
    _close_orphaned_study_trials(state)
    build_report(layout, space, state, tracker=tracker)
    best = best_trials(summaries, space)
    if best:
        export_best(layout, space, layout.export_dir, tracker=tracker, state=state)
    failed = sum(s.status == FAILED for s in summaries)
    stopped = sum(s.status == STOPPED for s in summaries)
    if not any(s.status == COMPLETED for s in summaries):
        errors = [s for s in summaries if s.status == FAILED and s.error]
        first = f"; first error: {errors[0].name}: {errors[0].error}" if errors else ""
        _mark(tracker, layout, state, "failed", "FAILED")
        raise SearchFailed(f"search {layout.name}: no trial completed ({failed} failed, {stopped} stopped by "
                           f"ASHA){first}; fix the space and launch a new search (report: {layout.report_dir})")
    out(f"\nsearch {layout.name} finished: {len(summaries)} trials, {len(summaries) - failed - stopped} complete, "
        f"{stopped} stopped by ASHA, {failed} failed")
    title = "Pareto front" if space.multi_objective else "best trials"
    frame = trials_frame([s for s in summaries if s in best], space) if best else trials_frame(summaries, space)
    out(f"{title} ({', '.join(f'{o.metric} {o.mode}' for o in space.objective)}):")
    out(format_table(frame, max_rows=10))
    out(f"report: {layout.report_dir}   configs: {layout.export_dir}   MLflow: {state.mlflow_uri}")
    state.status = "finished"
    state.save(layout)
    tracker.set_status(state.mlflow_parent_run_id, "FINISHED")
