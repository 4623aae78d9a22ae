"""A real two-node Ray cluster on loopback, and a chaos soak on it.

The cluster is a head node with no CPUs (`ray start --head --num-cpus 0`) and a worker node
with 2 (`ray start --address`), token auth on, both importing this checkout; an `mlflow server`
on 127.0.0.1 holds the runs. Every trial and outer parent must run on the worker node, through
the search folder (the storage both nodes share) alone: its ``parents/`` store, ``trials/``
outputs, and what ``export`` and ``compvae train`` read. The soak then SIGKILLs trial workers
and the driver itself and checks that ``resume`` ends with every store consistent.

Only this module's processes are killed: trial workers are found among the worker node's raylet
children, the driver is our own subprocess, and the cluster is stopped by its process groups.
"""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import pytest
import yaml
from _checks import check_stores, write_tiny_space
from _services import cmdline, http_ok, start_mlflow_server, stop_group, two_node_cluster, wait_for
from mlflow.tracking import MlflowClient

from compvae.config import TrialConfig
from search.analysis.results import COMPLETED, TrialSummary
from search.layout import SearchLayout, SearchState
from search.run.outer import load_record

pytestmark = pytest.mark.slow
TRIAL_TITLE = "ray::ImplicitFunc.train"  # the process title of a Ray worker running a trial


@pytest.fixture(scope="module")
def cluster(tmp_path_factory, free_port):
    """(two-node cluster, MLflow URL), stopped (their process groups) after the module."""
    tmp = tmp_path_factory.mktemp("cluster")
    port = free_port()
    server = start_mlflow_server(tmp, port, tmp / "mlflow-server.log")
    try:
        with two_node_cluster(tmp, free_port()) as nodes:
            url = f"http://127.0.0.1:{port}"
            wait_for(lambda: http_ok(f"{url}/health"), server, tmp / "mlflow-server.log", "mlflow server")
            yield nodes, url
    finally:
        stop_group(server)


def _space(tmp: Path, **search: Any) -> Path:
    return write_tiny_space(
        tmp, "cluster", {"parent.beta": {"choice": [2.0, 4.0]}, "child.masking_mode": {"choice": ["loss", "both"]}},
        {"outer": {"params": ["parent.beta"]}}, **search)


def _cli(module: str, *args: str, env: dict[str, str], cwd: Path, timeout: float = 300) -> str:
    """A CLI of this checkout (``python -m``: the console scripts may be another checkout's)."""
    done = subprocess.run([sys.executable, "-m", module, *args], cwd=cwd, env=env, capture_output=True,
                          text=True, timeout=timeout)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    return done.stdout


def _attempts(layout: SearchLayout, trial: str) -> list[dict[str, Any]]:
    path = layout.trial_dir(trial) / "attempts.jsonl"
    return [json.loads(x) for x in path.read_text().splitlines()] if path.is_file() else []


def _export_and_retrain(layout: SearchLayout, tmp: Path, env: dict[str, str]) -> None:
    """`compvae-search export` then `compvae train` on its best.yaml: same config, same metrics
    as the trial (CPU, same seed), except ``parent/reused`` (the trial reused its parent)."""
    _cli("search.cli", "export", layout.name, "--storage", str(layout.root.parent), "--out", str(tmp / "best"),
         env=env, cwd=tmp)
    (rank1,) = (tmp / "best").glob("rank01_*.yaml")
    trial = rank1.stem.removeprefix("rank01_")
    assert TrialConfig.from_yaml(tmp / "best" / "best.yaml") == TrialConfig.from_yaml(
        layout.trial_dir(trial) / "config.yaml")
    _cli("compvae.cli", "train", str(tmp / "best" / "best.yaml"), "--out", str(tmp / "retrained"), "--quiet",
         env=env, cwd=tmp)
    searched = json.loads((layout.trial_dir(trial) / "metrics.json").read_text())
    retrained = json.loads((tmp / "retrained" / "metrics.json").read_text())
    assert searched.pop("parent/reused") == 1.0 and retrained.pop("parent/reused") == 0.0
    assert retrained == pytest.approx(searched, rel=1e-6, abs=1e-9)


def test_two_node_cluster_search_runs_on_the_worker_node_and_exports(cluster, tmp_path):
    nodes, mlflow_url = cluster
    space = _space(tmp_path)
    storage = tmp_path / "s"
    out = _cli("search.cli", "launch", str(space), "--storage", str(storage), "--name", "two-node",
               "--address", nodes.address, "--mlflow-uri", mlflow_url, env=nodes.env, cwd=tmp_path)
    assert "outer level: 2 parents" in out, out
    layout = SearchLayout(storage / "two-node")
    state = SearchState.load(layout)
    assert state.status == "finished" and state.ray_address == nodes.address
    assert not (layout.storage / "mlflow.db").exists()  # everything went to the server

    record = load_record(layout)
    assert record is not None and len(record["points"]) == 2
    assert all(p["node"] == nodes.worker_node_id and "error" not in p for p in record["points"]), record
    stored = {p.name for p in layout.parents_dir.iterdir() if (p / "DONE").is_file()}
    assert stored == {p["key"] for p in record["points"]}  # the store is in the shared search folder

    summaries = TrialSummary.load_all(layout)
    assert len(summaries) == 4 and all(s.status == COMPLETED for s in summaries)
    for s in summaries:
        attempts = _attempts(layout, s.name)
        assert attempts and all(a["node"] == nodes.worker_node_id for a in attempts), attempts
        assert s.metrics["parent/reused"] == 1.0  # every trial loaded an outer parent from the store
        assert (layout.trial_dir(s.name) / "child.pt").is_file()
    check_stores(layout, MlflowClient(mlflow_url))
    _export_and_retrain(layout, tmp_path, nodes.env)


class _Chaos(threading.Thread):
    """SIGKILLs a random worker running a trial every few seconds (the first kill lands while the
    pinned trials train the streamed stage's outer parents, which then resume from the store):
    ``before`` times, then (once ``go_on`` is set: the driver was killed) ``after`` more, within
    ``seconds`` in all. Seeded, so a failure can be replayed."""

    def __init__(self, nodes: Any, before: int, after: int, seconds: float, seed: int = 0) -> None:
        super().__init__(daemon=True)
        self.nodes, self.before, self.budget = nodes, before, before + after
        self.deadline = time.monotonic() + seconds
        self.rng = random.Random(seed)
        self.killed: list[tuple[float, str, int]] = []  # (time, title, pid)
        self.go_on, self.stop = threading.Event(), threading.Event()

    def run(self) -> None:
        while len(self.killed) < self.budget and time.monotonic() < self.deadline and not self.stop.is_set():
            if len(self.killed) >= self.before and not self.go_on.is_set():
                self.go_on.wait(0.5)
                continue
            victims = self.nodes.workers(TRIAL_TITLE)
            if not victims:
                self.stop.wait(0.2)
                continue
            victim = self.rng.choice(victims)
            title = cmdline(victim)
            try:
                os.kill(victim, signal.SIGKILL)
            except ProcessLookupError:  # it ended by itself meanwhile
                continue
            self.killed.append((time.monotonic(), title, victim))
            self.stop.wait(self.rng.uniform(3.0, 8.0))


def test_chaos_soak_killed_workers_and_driver_then_resume(cluster, tmp_path):
    nodes, mlflow_url = cluster
    num_trials, before, after = 12, 3, 2
    # every kill could hit one trial: max_failures covers them all, so every trial must complete
    space = _space(tmp_path, sampler="tpe", seed=0, num_samples=num_trials, max_failures=before + after)
    data = yaml.safe_load(space.read_text())
    data["params"]["child.beta"] = {"loguniform": [1.0, 8.0]}
    data["base"] = {"child": {"epochs": 3}}  # checkpoints to resume from
    space.write_text(yaml.safe_dump(data, sort_keys=False))
    storage = tmp_path / "s"
    layout = SearchLayout(storage / "soak")
    chaos = _Chaos(nodes, before=before, after=after, seconds=200, seed=int(os.environ.get("SOAK_SEED", "0")))
    driver = subprocess.Popen(
        [sys.executable, "-m", "search.cli", "launch", str(space), "--storage", str(storage), "--name", "soak",
         "--address", nodes.address, "--mlflow-uri", mlflow_url], cwd=tmp_path, env=nodes.env,
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True)
    chaos.start()
    try:
        deadline = time.monotonic() + 240
        while True:  # the driver dies once some trials are done, chaos has struck `before` times,
            # and a trial is between its checkpoints (so resume has one to continue from)
            summaries = TrialSummary.load_all(layout)
            done = [s for s in summaries if s.status == COMPLETED]
            midway = [s for s in summaries if s.status == "RUNNING" and s.epoch >= 1]
            if len(done) >= num_trials // 3 and len(chaos.killed) >= before and midway:
                break
            assert driver.poll() is None, driver.stdout.read() if driver.stdout else ""
            assert time.monotonic() < deadline, (len(done), chaos.killed)
            time.sleep(0.3)
        os.killpg(driver.pid, signal.SIGKILL)
        driver.wait(timeout=30)
        killed_driver_at = time.monotonic()
        running = [s.name for s in TrialSummary.load_all(layout) if s.status == "RUNNING"]
        chaos.go_on.set()  # the rest of the kills hit the resumed search
        _cli("search.cli", "resume", "soak", "--storage", str(storage), env=nodes.env, cwd=tmp_path, timeout=400)
    finally:
        chaos.stop.set()
        chaos.join(timeout=10)
        if driver.poll() is None:
            os.killpg(driver.pid, signal.SIGKILL)
    print(f"chaos: {[(title, pid) for _, title, pid in chaos.killed]}; driver killed with {running} running")
    assert len(chaos.killed) >= before + 1, chaos.killed
    assert any(t > killed_driver_at for t, _, _ in chaos.killed), "no kill hit the resumed search"

    summaries = TrialSummary.load_all(layout)
    assert len(summaries) == num_trials, [(s.name, s.status) for s in summaries]
    assert all(s.status == COMPLETED for s in summaries), [(s.name, s.status, s.error) for s in summaries]
    for s in summaries:  # every attempt in a trial's folder was that trial's (nothing taken over)
        attempts = _attempts(layout, s.name)
        assert attempts and {a["trial_id"] for a in attempts} == {s.trial_id}, (s.name, s.trial_id, attempts)
        assert all(a["node"] == nodes.worker_node_id for a in attempts)
    record = load_record(layout)
    assert record is not None and all("error" not in p for p in record["points"]), record
    check_stores(layout, MlflowClient(mlflow_url))
    runs = MlflowClient(mlflow_url).search_runs([SearchState.load(layout).mlflow_experiment_id])
    assert "RUNNING" not in {r.info.status for r in runs}
    _export_and_retrain(layout, tmp_path, nodes.env)
