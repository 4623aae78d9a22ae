"""Real services for the cluster, UI and fault tests: a `ray start --head` node and an
`mlflow server`, started in their own process groups so a test can stop exactly what it started."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path


def start_ray_head(port: int, log: Path) -> subprocess.Popen:
    with open(log, "a") as fh:
        return subprocess.Popen(
            ["ray", "start", "--head", "--port", str(port), "--num-cpus", "2", "--node-ip-address",
             "127.0.0.1", "--include-dashboard=false", "--disable-usage-stats", "--block"],
            stdout=fh, stderr=subprocess.STDOUT, start_new_session=True)


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
def ray_head_and_mlflow_server(tmp: Path, ray_port: int, mlflow_port: int,
                               ray_stop: bool = False) -> Iterator[tuple[str, str]]:
    """(Ray address, MLflow URL) of a `ray start --head` node and an `mlflow server`, started
    side by side and stopped afterwards. ``ray_stop`` also runs `ray stop` (CI: nothing of the
    head may outlive the test). Afterwards a plain ``ray.init()`` must not try to join the dead
    head, so its entry in ``ray_current_cluster`` goes too, as `ray stop` would do."""
    head_log, server_log = tmp / "ray-head.log", tmp / "mlflow-server.log"
    head = start_ray_head(ray_port, head_log)
    server = start_mlflow_server(tmp, mlflow_port, server_log)
    mlflow_url = f"http://127.0.0.1:{mlflow_port}"
    try:
        wait_for(lambda: http_ok(f"{mlflow_url}/health"), server, server_log, "mlflow server")
        wait_for(lambda: "Ray runtime started" in head_log.read_text(), head, head_log, "ray start --head")
        yield f"127.0.0.1:{ray_port}", mlflow_url
    finally:
        stop_group(server)
        if ray_stop:
            subprocess.run(["ray", "stop"], check=True, capture_output=True, timeout=120)
        stop_group(head)
        current = Path(tempfile.gettempdir()) / "ray" / "ray_current_cluster"
        if current.is_file() and current.read_text().strip().endswith(f":{ray_port}"):
            current.unlink()
