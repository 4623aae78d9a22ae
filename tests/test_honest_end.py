"""Searches that end honestly, through the real ``compvae-search`` CLI in a subprocess (its own
local Ray) on the tiny preset: a search in which no trial completes fails (exit 1, parent run
FAILED, one line) without retrying deterministic failures; SIGTERM is handled like Ctrl-C; a
search whose launch failed during start-up can be resumed.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

from mlflow.tracking import MlflowClient
from test_faults import _attempts, _finish, _launch, _space, _wait

from search.analysis.results import COMPLETED, FAILED, TrialSummary
from search.layout import SearchLayout, SearchState


def _env() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}


def test_no_trial_completes_exit_1_parent_failed_and_no_retry(tmp_path):
    # child.lr 1.0 diverges at the first step in both grid points (a real divergence)
    space = _space(tmp_path, {"child.lr": {"choice": [1.0]}, "child.masking_mode": {"choice": ["loss", "both"]}},
                   epochs=2)
    proc = _launch(tmp_path, space, "allfail")
    out = _finish(proc)
    assert proc.returncode == 1, out
    errors = [ln for ln in out.splitlines() if ln.startswith("error: ")]
    assert len(errors) == 1 and "search allfail: no trial completed (2 failed" in errors[0], out
    assert "TrainingDiverged" in errors[0] and "Traceback" not in out
    layout = SearchLayout(tmp_path / "s" / "allfail")
    summaries = TrialSummary.load_all(layout)
    assert len(summaries) == 2 and all(s.status == FAILED and s.retries == 0 for s in summaries)
    for s in summaries:  # max_failures is 1, but a divergence is not retried
        assert len(_attempts(layout, s.name)) == 1, s.name
    state = SearchState.load(layout)
    assert state.status == "failed"
    client = MlflowClient(state.mlflow_uri)
    assert client.get_run(state.mlflow_parent_run_id).info.status == "FAILED"
    runs = client.search_runs([state.mlflow_experiment_id])
    assert "RUNNING" not in {r.info.status for r in runs}


def test_sigterm_is_handled_like_ctrl_c(tmp_path):
    space = _space(tmp_path, {"child.masking_mode": {"choice": ["loss"]}}, epochs=8)
    proc = _launch(tmp_path, space, "term")
    layout = SearchLayout(tmp_path / "s" / "term")
    _wait(lambda: layout.trials_dir.is_dir() and any(s.epoch >= 1 for s in TrialSummary.load_all(layout)),
          proc, "a first epoch")
    proc.send_signal(signal.SIGTERM)
    out = _finish(proc, timeout=120)
    assert proc.returncode == 143, out
    assert f"compvae-search resume {layout.root}" in out, out
    assert "Tuner.restore" not in out and "Traceback" not in out, out
    state = SearchState.load(layout)
    assert state.status == "interrupted"
    client = MlflowClient(state.mlflow_uri)
    assert client.get_run(state.mlflow_parent_run_id).info.status == "KILLED"
    assert "RUNNING" not in {r.info.status for r in client.search_runs([state.mlflow_experiment_id])}


def test_a_search_whose_start_up_failed_can_be_resumed(tmp_path):
    # a SQLite file that is not a database: MLflow fails after the search folder exists
    store = tmp_path / "store.db"
    store.write_text("not a database\n")
    space = _space(tmp_path, {"child.masking_mode": {"choice": ["loss"]}}, epochs=1)
    proc = _launch(tmp_path, space, "startup", "--mlflow-uri", f"sqlite:///{store}")
    out = _finish(proc)
    assert proc.returncode == 2, out
    layout = SearchLayout(tmp_path / "s" / "startup")
    assert SearchState.load(layout).status == "created"
    store.unlink()  # the user fixes the store; the same name is not blocked
    resumed = subprocess.run([sys.executable, "-m", "search.cli", "resume", "startup", "--storage",
                              str(tmp_path / "s")], cwd=tmp_path, env=_env(), capture_output=True, text=True,
                             timeout=300)
    assert resumed.returncode == 0, resumed.stdout[-3000:] + resumed.stderr[-3000:]
    assert "never started; launching it again" in resumed.stdout
    assert SearchState.load(layout).status == "finished"
    assert [s.status for s in TrialSummary.load_all(layout)] == [COMPLETED]
    assert Path(store).is_file()  # the store it was launched with


_CREATE_STORE = """
import sys, time
from search.tracking.client import MlflowTracker, store_lock
uri, start = sys.argv[1], float(sys.argv[2])
time.sleep(max(0.0, start - time.time()))  # both processes reach the new store together
with store_lock(uri):
    MlflowTracker(uri).ensure_experiment(sys.argv[3], None)
"""


def test_two_processes_creating_one_new_sqlite_store(tmp_path):
    """The schema-migration race of two launches on one new store (``duplicate column name``):
    creation is serialised by the lock next to the database, so both succeed."""
    import time

    uri = f"sqlite:///{tmp_path / 'shared' / 'mlflow.db'}"
    start = str(time.time() + 8)
    env = {**_env(), "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
    procs = [subprocess.Popen([sys.executable, "-c", _CREATE_STORE, uri, start, f"exp{i}"], env=env,
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True) for i in range(2)]
    outs = [p.communicate(timeout=120)[0] for p in procs]
    assert [p.returncode for p in procs] == [0, 0], outs
    assert (tmp_path / "shared" / "mlflow.db.lock").is_file()
    names = {e.name for e in MlflowClient(uri).search_experiments()}
    assert {"exp0", "exp1"} <= names
