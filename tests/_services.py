"""Real services for the cluster, UI and fault tests: a `ray start --head` node and an
`mlflow server`, started in their own process groups so a test can stop exactly what it started."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable
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
