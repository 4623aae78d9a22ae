"""A search against an existing cluster (`ray start --head` on 127.0.0.1) logging over HTTP to
`mlflow server`: the deployment shape of a real cluster, on one machine.

The module starts its own head node and MLflow server and stops exactly those processes
(their process groups) afterwards. ``ray stop`` is not used: it stops every Ray process of the
machine, including other sessions' local instances.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

import pytest
import ray
from mlflow.tracking import MlflowClient

from compvae.config import TrialConfig
from search.cli import main
from search.layout import SearchLayout, SearchState
from search.results import COMPLETED, TrialSummary
from search.tracking import PARENT_HASH_PARAM, TRIAL_ID_TAG


def _stop_group(proc: subprocess.Popen) -> None:
    """Stop the process group we started (ray start's gcs_server/raylet/workers live in it)."""
    for sig in (signal.SIGTERM, signal.SIGKILL):
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            return
        deadline = time.monotonic() + 3  # ray start --block and mlflow server linger on SIGTERM
        while time.monotonic() < deadline:
            proc.poll()  # reap the leader
            try:
                os.killpg(proc.pid, 0)
            except ProcessLookupError:
                return
            time.sleep(0.3)


def _wait_for(ready, proc: subprocess.Popen, log: Path, what: str, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while not ready():
        assert proc.poll() is None, f"{what} exited: {log.read_text()[-2000:]}"
        assert time.monotonic() < deadline, f"{what} did not come up: {log.read_text()[-2000:]}"
        time.sleep(0.5)


def _http_ok(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=2):
            return True
    except OSError:
        return False


@pytest.fixture(scope="module")
def services(tmp_path_factory, free_port):
    """(ray address, mlflow URI): a head node and an MLflow server, started side by side."""
    assert not ray.is_initialized()
    tmp = tmp_path_factory.mktemp("services")
    ray_port, mlflow_port = free_port(), free_port()
    head_log, server_log = tmp / "ray-head.log", tmp / "mlflow-server.log"
    with open(head_log, "w") as hl, open(server_log, "w") as sl:
        head = subprocess.Popen(
            ["ray", "start", "--head", "--port", str(ray_port), "--num-cpus", "2", "--node-ip-address",
             "127.0.0.1", "--include-dashboard=false", "--disable-usage-stats", "--block"],
            stdout=hl, stderr=subprocess.STDOUT, start_new_session=True)
        server = subprocess.Popen(
            [sys.executable, "-m", "mlflow", "server", "--backend-store-uri", f"sqlite:///{tmp / 'server.db'}",
             "--artifacts-destination", str(tmp / "server-artifacts"), "--host", "127.0.0.1",
             "--port", str(mlflow_port), "--workers", "1"],
            stdout=sl, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        _wait_for(lambda: _http_ok(f"http://127.0.0.1:{mlflow_port}/health"), server, server_log, "mlflow server")
        _wait_for(lambda: "Ray runtime started" in head_log.read_text(), head, head_log, "ray start --head")
        yield f"127.0.0.1:{ray_port}", f"http://127.0.0.1:{mlflow_port}"
    finally:
        _stop_group(server)
        _stop_group(head)
        # what `ray stop` would also do: a plain ray.init() must not try to join this dead head
        current = Path(tempfile.gettempdir()) / "ray" / "ray_current_cluster"
        if current.is_file() and current.read_text().strip().endswith(f":{ray_port}"):
            current.unlink()


def test_search_on_a_ray_start_cluster_logging_to_mlflow_server(services, write_space, tmp_path, monkeypatch,
                                                                capsys):
    address, mlflow_uri = services
    monkeypatch.setenv("RAY_ADDRESS", address)  # (--address is exercised by the resume tests)
    monkeypatch.delenv("RAY_AUTH_MODE", raising=False)  # the driver opts into token auth itself
    space = write_space(search={"num_samples": 3, "max_concurrent": 2})
    rc = main(["launch", str(space), "--storage", str(tmp_path / "s"), "--name", "e2e-cluster",
               "--mlflow-uri", mlflow_uri])
    assert rc == 0, capsys.readouterr()
    assert not ray.is_initialized()  # the driver disconnected; the cluster lives on
    layout = SearchLayout(tmp_path / "s" / "e2e-cluster")
    state = SearchState.load(layout)
    assert state.ray_address == address and state.mlflow_uri == mlflow_uri
    assert not (layout.root / "mlflow.db").exists()  # everything went to the server

    summaries = TrialSummary.load_all(layout)
    assert len(summaries) == 3 and any(s.status == COMPLETED for s in summaries)
    port = address.rsplit(":", 1)[1]
    for s in summaries:  # every trial ran on the cluster at --address
        attempts = [json.loads(x) for x in (layout.trial_dir(s.name) / "attempts.jsonl").read_text().splitlines()]
        assert all(a["ray"].endswith(f":{port}") for a in attempts), attempts

    client = MlflowClient(mlflow_uri)
    parent = client.get_run(state.mlflow_parent_run_id)
    assert parent.info.status == "FINISHED" and parent.data.tags["ray.address"] == address
    runs = client.search_runs([state.mlflow_experiment_id],
                              filter_string=f"tags.mlflow.parentRunId = '{state.mlflow_parent_run_id}'")
    assert sorted(r.data.tags[TRIAL_ID_TAG] for r in runs) == sorted(s.trial_id for s in summaries)
    for r in runs:
        assert set(r.data.params) == set(TrialConfig().flat()) | {PARENT_HASH_PARAM}
        names = {a.path for a in client.list_artifacts(r.info.run_id)}
        assert "config.yaml" in names
    done = next(r for r in runs if r.data.tags.get("trial_status") == COMPLETED)
    weights = {a.path for a in client.list_artifacts(done.info.run_id, "weights")}
    assert weights == {"weights/parent.pt", "weights/child.pt"}
    local = Path(client.download_artifacts(done.info.run_id, "config.yaml", str(tmp_path)))
    assert TrialConfig.from_yaml(local) == TrialConfig.from_yaml(
        layout.trial_dir(done.info.run_name) / "config.yaml")


def test_unreachable_cluster_and_server_are_one_line_errors(write_space, tmp_path, capsys, monkeypatch):
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    space = write_space()
    assert main(["launch", str(space), "--storage", str(tmp_path / "s"), "--mlflow-uri", "http://127.0.0.1:9"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: --mlflow-uri http://127.0.0.1:9: no MLflow server answers there") and "\n" not in err
    assert not (tmp_path / "s").exists()
