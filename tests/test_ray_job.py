"""The README's `ray job submit` route (section 5, "Or submit the driver as a Ray job"), for real:
a `ray start --head` node on 127.0.0.1 with its dashboard (the job API), token auth on, and an
`mlflow server`; the search's driver runs as a Ray job under Ray's job supervisor on the head.
The `ray job` commands are the README's, with this test's address, ports and folders.

The module starts its own head node and MLflow server and stops exactly those process groups
afterwards (``tests/_services.py``); ``ray stop`` is never run (it would stop every Ray process of
the machine, other sessions' too). The dashboard needs ``ray[default]`` (the ``cluster`` extra,
which ``.ci/run`` installs for its slow pass): without it these tests skip on a developer
machine and fail under CI.
"""

from __future__ import annotations

import json
import os
import subprocess
import time
from pathlib import Path
from typing import Any

import pytest
import yaml
from _services import ray_head_and_mlflow_server, token_env
from mlflow.tracking import MlflowClient

from search.analysis.results import COMPLETED, TrialSummary
from search.layout import SearchLayout, SearchState

pytestmark = pytest.mark.slow  # a head node with its dashboard and two or three searches: ~3 min here

IN_CI = os.environ.get("CI", "").lower() in ("1", "true", "yes")
EPOCHS = 2


@pytest.fixture(scope="module")
def cluster(tmp_path_factory, free_port) -> Any:
    """(dashboard URL, MLflow URL, env for the `ray` CLI, Ray address) of a head node with its
    dashboard; the env holds the cluster's token (the head, its job drivers and the CLI share it).
    The head's RAY_JOB_STOP_WAIT_TIME_S gives a stopped driver time to close its runs (README)."""
    from ray._private.utils import get_dashboard_dependency_error

    missing = get_dashboard_dependency_error()
    if missing is not None:
        msg = f"the Ray dashboard (job API) needs ray[default]: {missing}; pip install -e '.[cluster]'"
        if IN_CI:
            pytest.fail(f"CI must run the ray job tests: {msg}")
        pytest.skip(msg)
    tmp = tmp_path_factory.mktemp("rayjob")
    env = token_env(RAY_JOB_STOP_WAIT_TIME_S="60")
    dashboard = (free_port(), free_port())
    with ray_head_and_mlflow_server(tmp, free_port(), free_port(), dashboard=dashboard, env=env) as (address, mlflow):
        cli_env = {k: v for k, v in env.items() if k != "RAY_JOB_STOP_WAIT_TIME_S"}
        yield f"http://127.0.0.1:{dashboard[0]}", mlflow, cli_env, address


def _space(tmp: Path) -> Path:
    """Two tiny trials (a grid over the masking mode), both at once."""
    data = {"name": "job", "preset": "tiny", "base": {"child": {"epochs": EPOCHS}},
            "params": {"child.masking_mode": {"choice": ["loss", "both"]}},
            "objective": {"metric": "child/mig", "mode": "max"},
            "search": {"sampler": "grid", "max_concurrent": 2, "max_failures": 1, "scheduler": "none",
                       "resources": {"cpus": 1, "gpus": 0}}}
    path = tmp / "space.yaml"
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


def _ray(env: dict[str, str], *args: str, timeout: float = 120) -> subprocess.CompletedProcess:
    """A `ray` CLI command; its output (Ray logs to stderr, a job's log to stdout) as one text."""
    return subprocess.run(["ray", *args], env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                          timeout=timeout)


def _check_finished(layout: SearchLayout, address: str, mlflow: str, epochs: int) -> list[TrialSummary]:
    state = SearchState.load(layout)
    assert state.status == "finished" and state.mlflow_uri == mlflow
    summaries = TrialSummary.load_all(layout)
    assert sorted(s.name for s in summaries) == ["trial_00000", "trial_00001"]
    assert all(s.status == COMPLETED and s.epoch == epochs for s in summaries), summaries
    port = address.rsplit(":", 1)[1]
    for s in summaries:  # every attempt ran on this head's cluster
        attempts = [json.loads(x) for x in (layout.trial_dir(s.name) / "attempts.jsonl").read_text().splitlines()]
        assert attempts and all(a["ray"].endswith(f":{port}") for a in attempts), attempts
    client = MlflowClient(mlflow)
    assert client.get_run(state.mlflow_parent_run_id).info.status == "FINISHED"
    runs = client.search_runs([state.mlflow_experiment_id],
                              filter_string=f"tags.mlflow.parentRunId = '{state.mlflow_parent_run_id}'")
    assert sorted(r.info.run_name for r in runs) == ["trial_00000", "trial_00001"]
    assert {r.info.status for r in runs} == {"FINISHED"}
    return summaries


def test_ray_job_submit_runs_the_search_on_the_head(cluster, tmp_path):
    """README: submit (no wait), follow the logs to the end, status; then `compvae-search status`
    as a job of its own."""
    url, mlflow, env, address = cluster
    storage = tmp_path / "searches"
    space = _space(tmp_path)
    t0 = time.monotonic()
    sub = _ray(env, "job", "submit", "--address", url, "--submission-id", "job1", "--no-wait", "--",
               "compvae-search", "launch", str(space), "--name", "job1", "--storage", str(storage),
               "--mlflow-uri", mlflow)
    assert sub.returncode == 0 and "Job 'job1' submitted successfully" in sub.stdout, sub.stdout
    logs = _ray(env, "job", "logs", "--address", url, "job1", "--follow", timeout=600)  # until the job ends
    assert logs.returncode == 0, logs.stdout[-3000:]
    status = _ray(env, "job", "status", "--address", url, "job1")
    assert status.returncode == 0 and "Job 'job1' succeeded" in status.stdout, logs.stdout[-3000:] + status.stdout
    print(f"job1: submit to success {time.monotonic() - t0:.0f}s")

    # the job's log is the search's console: its header, each trial's progress, the final table
    out = logs.stdout
    assert f"search job1: 2 trials of space 'job' (grid, 2 at a time) in {storage / 'job1'}" in out, out
    for name in ("trial_00000", "trial_00001"):
        assert f"{name} started " in out and f"{name} epoch {EPOCHS}/{EPOCHS} " in out and f"{name} completed " in out
    assert "search job1 finished: 2 trials, 2 complete, 0 stopped by ASHA, 0 failed" in out
    _check_finished(SearchLayout(storage / "job1"), address, mlflow, EPOCHS)

    shown = _ray(env, "job", "submit", "--address", url, "--", "compvae-search", "status", "job1",
                 "--storage", str(storage), timeout=300)
    assert shown.returncode == 0, shown.stdout[-3000:]
    assert "search job1: finished, 2/2 trials done (2 complete, 0 pruned, 0 failed)" in shown.stdout, shown.stdout


def test_ray_job_stop_then_resume_as_a_job(cluster, tmp_path):
    """`ray job stop` sends the driver SIGTERM: it stops as on Ctrl-C (runs closed, search
    interrupted), and `compvae-search resume` submitted as a job finishes the search, each trial
    going on from its checkpoint."""
    url, mlflow, env, address = cluster
    storage = tmp_path / "searches"
    layout = SearchLayout(storage / "job2")
    epochs = 12  # long enough to be caught mid-trial
    sub = _ray(env, "job", "submit", "--address", url, "--submission-id", "job2", "--no-wait", "--",
               "compvae-search", "launch", str(_space(tmp_path)), "--name", "job2", "--storage", str(storage),
               "--mlflow-uri", mlflow, "--set", f"child.epochs={epochs}")
    assert sub.returncode == 0, sub.stdout
    deadline = time.monotonic() + 300
    while not any(s.epoch >= 1 for s in (TrialSummary.load_all(layout) if layout.trials_dir.is_dir() else [])):
        assert time.monotonic() < deadline, _ray(env, "job", "logs", "--address", url, "job2").stdout[-3000:]
        time.sleep(0.5)
    stop = _ray(env, "job", "stop", "--address", url, "job2", timeout=180)  # waits until the job has exited
    assert stop.returncode == 0 and "Job 'job2' was stopped" in stop.stdout, stop.stdout
    assert "Job 'job2' was stopped" in _ray(env, "job", "status", "--address", url, "job2").stdout
    logs = _ray(env, "job", "logs", "--address", url, "job2").stdout
    assert f"continue with `compvae-search resume {layout.root}`" in logs, logs[-3000:]
    state = SearchState.load(layout)
    assert state.status == "interrupted", logs[-3000:]
    client = MlflowClient(mlflow)
    assert client.get_run(state.mlflow_parent_run_id).info.status == "KILLED"
    before = {s.name: s for s in TrialSummary.load_all(layout)}
    assert any(s.status == "RUNNING" and 1 <= s.epoch < epochs for s in before.values()), before

    resumed = _ray(env, "job", "submit", "--address", url, "--submission-id", "job2-resume", "--",
                   "compvae-search", "resume", "job2", "--storage", str(storage), timeout=600)
    assert resumed.returncode == 0 and "Job 'job2-resume' succeeded" in resumed.stdout, resumed.stdout[-3000:]
    after = {s.name: s for s in _check_finished(layout, address, mlflow, epochs)}
    assert [h["event"] for h in SearchState.load(layout).history] == ["launch", "resume"]
    for name, s in before.items():  # same trials, same names, each on from its own checkpoint
        assert after[name].trial_id == s.trial_id
        if s.status == "RUNNING" and s.epoch >= 1:
            attempts = [json.loads(x) for x in (layout.trial_dir(name) / "attempts.jsonl").read_text().splitlines()]
            assert attempts[-1]["resumed_from_epoch"] >= 1, (name, attempts)
