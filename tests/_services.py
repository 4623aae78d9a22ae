"""Real services for the cluster, UI and fault tests: a `ray start --head` node (alone, or with
a second, worker node), and an `mlflow server`, started in their own process groups so a test
can stop exactly what it started."""

from __future__ import annotations

import contextlib
import os
import re
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def start_ray_head(port: int, log: Path, dashboard: tuple[int, int] | None = None,
                   env: dict[str, str] | None = None) -> subprocess.Popen:
    """`ray start --head` on 127.0.0.1 in its own process group. ``dashboard`` = (dashboard port,
    dashboard agent port) turns the dashboard on, bound to 127.0.0.1: the job API (`ray job
    submit`); both ports are given, since another Ray on the machine may hold the defaults
    (8265, 52365). ``env``: the head's environment (its workers and job drivers inherit it)."""
    if dashboard is None:
        ui = ["--include-dashboard=false"]
    else:
        ui = ["--include-dashboard=true", "--dashboard-host", "127.0.0.1", "--dashboard-port", str(dashboard[0]),
              "--dashboard-agent-listen-port", str(dashboard[1])]
    with open(log, "a") as fh:
        return subprocess.Popen(
            ["ray", "start", "--head", "--port", str(port), "--num-cpus", "2", "--node-ip-address",
             "127.0.0.1", *ui, "--disable-usage-stats", "--block"],
            stdout=fh, stderr=subprocess.STDOUT, start_new_session=True, env=env)


def token_env(**extra: str) -> dict[str, str]:
    """An environment for Ray nodes and Ray CLIs of one test cluster: no RAY_* of the caller's, one
    random token with token auth on (what Ray 2.59+ clusters use), this checkout first on
    PYTHONPATH (workers and job drivers import the code under test, not an installed copy)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("RAY_")}
    path = os.pathsep.join(p for p in (str(REPO), env.get("PYTHONPATH", "")) if p)
    env.update(PYTHONPATH=path, OMP_NUM_THREADS="1", RAY_AUTH_TOKEN=secrets.token_hex(32), RAY_AUTH_MODE="token")
    env.update(extra)
    return env


def start_mlflow_server(tmp: Path, port: int, log: Path) -> subprocess.Popen:
    """A server over ``tmp/server.db`` and ``tmp/server-artifacts``; restarting one on the same
    ``tmp`` serves the same store."""
    with open(log, "a") as fh:
        return subprocess.Popen(
            [sys.executable, "-m", "mlflow", "server", "--backend-store-uri", f"sqlite:///{tmp / 'server.db'}",
             "--artifacts-destination", str(tmp / "server-artifacts"), "--host", "127.0.0.1",
             "--port", str(port), "--workers", "1"],
            stdout=fh, stderr=subprocess.STDOUT, start_new_session=True)


def http_ok(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=2):
            return True
    except OSError:
        return False


def wait_for(ready: Callable[[], bool], proc: subprocess.Popen, log: Path, what: str, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while not ready():
        assert proc.poll() is None, f"{what} exited: {log.read_text()[-2000:]}"
        assert time.monotonic() < deadline, f"{what} did not come up: {log.read_text()[-2000:]}"
        time.sleep(0.5)


def stop_group(proc: subprocess.Popen) -> None:
    """Stop the process group we started (ray start's gcs_server/raylet/workers live in it)."""
    for sig in (signal.SIGTERM, signal.SIGKILL):
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            return
        deadline = time.monotonic() + 5  # ray start --block and mlflow server linger on SIGTERM
        while time.monotonic() < deadline:
            proc.poll()  # reap the leader
            try:
                os.killpg(proc.pid, 0)
            except ProcessLookupError:
                return
            time.sleep(0.3)


@contextlib.contextmanager
def ray_head_and_mlflow_server(tmp: Path, ray_port: int, mlflow_port: int, ray_stop: bool = False,
                               dashboard: tuple[int, int] | None = None,
                               env: dict[str, str] | None = None) -> Iterator[tuple[str, str]]:
    """(Ray address, MLflow URL) of a `ray start --head` node and an `mlflow server`, started
    side by side and stopped afterwards. ``ray_stop`` also runs `ray stop` (CI: nothing of the
    head may outlive the test). Afterwards a plain ``ray.init()`` must not try to join the dead
    head, so its entry in ``ray_current_cluster`` goes too, as `ray stop` would do.
    ``dashboard`` and ``env``: as :func:`start_ray_head` (the dashboard is up when this yields)."""
    head_log, server_log = tmp / "ray-head.log", tmp / "mlflow-server.log"
    head = start_ray_head(ray_port, head_log, dashboard, env)
    server = start_mlflow_server(tmp, mlflow_port, server_log)
    mlflow_url = f"http://127.0.0.1:{mlflow_port}"
    try:
        wait_for(lambda: http_ok(f"{mlflow_url}/health"), server, server_log, "mlflow server")
        wait_for(lambda: "Ray runtime started" in head_log.read_text(), head, head_log, "ray start --head")
        if dashboard is not None:  # the job API answers once the dashboard is up
            wait_for(lambda: http_ok(f"http://127.0.0.1:{dashboard[0]}/api/gcs_healthz"), head, head_log, "Ray dashboard")
        yield f"127.0.0.1:{ray_port}", mlflow_url
    finally:
        stop_group(server)
        if ray_stop:
            subprocess.run(["ray", "stop"], check=True, capture_output=True, timeout=120)
        stop_group(head)
        current = Path(tempfile.gettempdir()) / "ray" / "ray_current_cluster"
        if current.is_file() and current.read_text().strip().endswith(f":{ray_port}"):
            current.unlink()


def descendants(pid: int) -> list[int]:
    """Every live descendant of ``pid``, from /proc (Linux; no psutil needed)."""
    children: dict[int, list[int]] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        with contextlib.suppress(OSError, ValueError, IndexError):
            fields = stat.read_text().rsplit(")", 1)[1].split()
            children.setdefault(int(fields[1]), []).append(int(stat.parent.name))
    found, todo = [], [pid]
    while todo:
        kids = children.get(todo.pop(), [])
        found += kids
        todo += kids
    return found


def cmdline(pid: int) -> str:
    """The process's command line (its title, for a Ray worker: ``ray::ImplicitFunc.train``)."""
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace").strip()
    except OSError:
        return ""


def processes(ancestor: int, title: str) -> list[int]:
    """Descendants of ``ancestor`` whose command line starts with ``title``: only the processes a
    test started itself, never another session's Ray workers."""
    return [pid for pid in descendants(ancestor) if cmdline(pid).startswith(title)]


@dataclass
class TwoNodeCluster:
    """A head node with no CPUs and one worker node holding them all, on 127.0.0.1: every task
    and actor needing a CPU (trials, outer parents) runs on the worker node."""

    address: str
    env: dict[str, str]  # for a driver or CLI joining it: the token, this checkout on PYTHONPATH
    worker_node_id: str
    raylet_pid: int

    def workers(self, title: str) -> list[int]:
        """The worker node's Ray workers whose process title starts with ``title``."""
        return processes(self.raylet_pid, title)


@contextlib.contextmanager
def two_node_cluster(tmp: Path, port: int) -> Iterator[TwoNodeCluster]:
    """`ray start --head --num-cpus 0` and `ray start --address` (2 CPUs), both on loopback, with
    token auth (what Ray 2.59+ clusters use; one random token in every node's environment) and
    this checkout on PYTHONPATH (workers import the code under test, not an installed copy).
    Both nodes share the head's short temp dir (Unix socket paths are limited to 107 bytes)."""
    temp = Path(tempfile.mkdtemp(prefix="ray-", dir="/tmp"))
    node_env = token_env(PYTHONPATH=str(REPO))
    env = {k: v for k, v in node_env.items() if k != "RAY_AUTH_MODE"}
    common = ["--node-ip-address", "127.0.0.1", "--disable-usage-stats", "--block"]
    head_log, worker_log = tmp / "ray-head.log", tmp / "ray-worker.log"
    address = f"127.0.0.1:{port}"
    procs: list[subprocess.Popen] = []
    try:
        with open(head_log, "a") as fh:
            procs.append(subprocess.Popen(
                ["ray", "start", "--head", "--port", str(port), "--num-cpus", "0", "--temp-dir", str(temp),
                 "--include-dashboard=false", *common],
                stdout=fh, stderr=subprocess.STDOUT, start_new_session=True, env=node_env))
        wait_for(lambda: "Ray runtime started" in head_log.read_text(), procs[0], head_log, "ray start --head")
        with open(worker_log, "a") as fh:
            procs.append(subprocess.Popen(
                ["ray", "start", "--address", address, "--num-cpus", "2", *common],
                stdout=fh, stderr=subprocess.STDOUT, start_new_session=True, env=node_env))
        wait_for(lambda: "Ray runtime started" in worker_log.read_text(), procs[1], worker_log,
                 "ray start --address (worker node)")
        raylet = next((p for p in descendants(procs[1].pid) if "/raylet " in cmdline(p)), None)
        assert raylet is not None, worker_log.read_text()[-2000:]
        node_id = re.search(r"--node_id=([0-9a-f]+)", cmdline(raylet))
        assert node_id, cmdline(raylet)
        yield TwoNodeCluster(address, env, node_id.group(1), raylet)
    finally:
        for proc in reversed(procs):
            stop_group(proc)
        shutil.rmtree(temp, ignore_errors=True)


@contextlib.contextmanager
def local_ray(**env: str) -> Iterator[str]:
    """One local Ray for a test module (its GCS address), with ``env`` set before ``ray.init``
    (workers inherit the raylet's environment) and Tune's default loggers off; both restored."""
    import ray

    env = {"TUNE_DISABLE_AUTO_CALLBACK_LOGGERS": "1", **env}
    saved = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False, logging_level="WARNING")
    try:
        yield ray.get_runtime_context().gcs_address
    finally:
        ray.shutdown()
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v

