"""Ray for a search: quiet logs, token authentication, connect or start, SIGTERM, cluster fit."""

from __future__ import annotations

import logging
import os
import signal
import socket
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from compvae.compat import RAY_TOKEN_LOGGER, ray_enable_token_auth
from compvae.errors import UserError, first_line
from search.space import SearchSpace


# ---- environment ------------------------------------------------------------------------------
def quiet_tune() -> None:
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
    # event loop; the driver buffers writes instead (search.tracking.client.MlflowTracker), so fail fast.
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "2")
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR", "1")
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_TIMEOUT", "30")
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    for name in ("mlflow", "alembic"):
        logging.getLogger(name).setLevel(logging.WARNING)
    auth = logging.getLogger(RAY_TOKEN_LOGGER)
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
    """RAY_AUTH_MODE=token for this process: Ray's own switch where it has one, else the env var."""
    if not ray_enable_token_auth():
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
