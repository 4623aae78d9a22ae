"""Faults during a real search: each test drives the real ``compvae-search`` CLI in a subprocess
(its own local Ray), injects a real fault at a point read from the search's own state, and then
checks every store the search writes: Tune's experiment, the Optuna study and MLflow.

Covered elsewhere (not repeated here): Ctrl-C then ``resume`` (``test_search_e2e.py::
test_resume_after_ctrl_c``), a driver killed with SIGKILL then ``resume`` (``test_search_e2e.py::
test_resume_after_killed_driver``, slow), a trial that raises once and is retried from its
checkpoint and a trial that fails on every attempt (``test_search_e2e.py::
test_multi_objective_grid_failures_and_retry``), an MLflow server unreachable at launch
(``test_search_cluster.py`` and ``test_bad_input.py``).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from _checks import check_stores as _check_stores
from _checks import write_tiny_space
from _services import http_ok, processes, start_mlflow_server, stop_group
from mlflow.tracking import MlflowClient

from search.analysis.results import COMPLETED, FAILED, TrialSummary
from search.cli import main
from search.layout import SearchLayout, SearchState
from search.tracking.client import TRIAL_ID_TAG
from search.tracking.journal import JOURNAL

REPO = Path(__file__).resolve().parents[1]


# ---- helpers -----------------------------------------------------------------------------------
def _space(tmp: Path, params: dict[str, Any], epochs: int, **search: Any) -> Path:
    """A grid space on the tiny preset: the grid fixes which trial gets which value."""
    return write_tiny_space(tmp, "faults", params, {"base": {"child": {"epochs": epochs}}}, **search)


def _launch(tmp: Path, space: Path, name: str, *extra: str) -> subprocess.Popen:
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}  # its own local Ray
    return subprocess.Popen(
        [sys.executable, "-m", "search.cli", "launch", str(space), "--storage", str(tmp / "s"), "--name", name,
         *extra], cwd=tmp, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
        start_new_session=True)


def _finish(proc: subprocess.Popen, timeout: float = 300) -> str:
    try:
        out, _ = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        out, _ = proc.communicate()
        raise AssertionError(f"search did not finish in {timeout}s:\n{out[-3000:]}") from None
    return out


def _wait(cond: Callable[[], Any], proc: subprocess.Popen, what: str, timeout: float = 240) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = cond()
        if value:
            return value
        if proc.poll() is not None:
            out = proc.stdout.read() if proc.stdout else ""
            raise AssertionError(f"process exited ({proc.returncode}) before {what}:\n{out[-3000:]}")
        time.sleep(0.3)
    raise AssertionError(f"timed out waiting for {what}")


def _launch_outer(tmp: Path, name: str, params: dict, base: dict | None = None,
                  **search: Any) -> tuple[subprocess.Popen, SearchLayout]:
    """A tiny search (1024 images) whose first param is its outer level, launched."""
    extra = {"base": {"data": {"num_train": 1024}, **(base or {})}, "outer": {"params": [next(iter(params))]}}
    space = write_tiny_space(tmp, f"{name}-space", params, extra, **search)
    return _launch(tmp, space, name), SearchLayout(tmp / "s" / name)


def _partial_parent(layout: SearchLayout) -> bool:
    return layout.parents_dir.is_dir() and any(layout.parents_dir.glob("*.partial/parent_trainer.pt"))


def _summary(layout: SearchLayout, trial: str) -> TrialSummary | None:
    path = layout.trial_dir(trial) / "summary.json"
    try:
        return TrialSummary(**json.loads(path.read_text())) if path.is_file() else None
    except ValueError:  # caught between write and rename cannot happen (atomic), but be safe
        return None


def _attempts(layout: SearchLayout, trial: str) -> list[dict[str, Any]]:
    path = layout.trial_dir(trial) / "attempts.jsonl"
    return [json.loads(x) for x in path.read_text().splitlines()] if path.is_file() else []


# ---- a trial whose loss goes NaN ------------------------------------------------------------------
def test_nan_trial_ends_failed_with_its_message_and_the_search_completes(tmp_path):
    # child.lr 1.0 makes the child's first step NaN (a real divergence, nothing injected)
    space = _space(tmp_path, {"child.lr": {"choice": [0.001, 1.0]}}, epochs=2)
    proc = _launch(tmp_path, space, "nan")
    out = _finish(proc)
    assert proc.returncode == 0, out
    layout = SearchLayout(tmp_path / "s" / "nan")
    by_lr = {s.params["child.lr"]: s for s in TrialSummary.load_all(layout)}
    good, bad = by_lr[0.001], by_lr[1.0]
    assert good.status == COMPLETED and good.epoch == 2
    assert bad.status == FAILED and bad.error == "TrainingDiverged: step 1: term loss is nan", bad.error
    # a divergence is a TrialFailed (caused by the knobs): not retried, a retry would diverge
    # again (retry *from a checkpoint* after a crash is covered by the kill test below)
    assert [a["resumed_from_epoch"] for a in _attempts(layout, bad.name)] == [0]
    assert bad.retries == 0
    assert f"{bad.name}" in out and "TrainingDiverged" in out and "Traceback" not in out
    runs = _check_stores(layout)
    run = runs[bad.name]
    assert run.data.tags["error"] == bad.error and run.data.tags["trial_status"] == FAILED
    assert "last_error" not in run.data.tags  # set by a retry; there was none


# ---- the process running a trial is killed ---------------------------------------------------------
def test_killed_trial_process_is_retried_from_its_checkpoint(tmp_path):
    # 10 epochs: the kill at epoch 2 must land mid-trial (tiny epochs take well under a second,
    # and a reused worker outlives its trial, so a kill after the trial's end retries nothing)
    epochs = 10
    space = _space(tmp_path, {"child.masking_mode": {"choice": ["loss"]}}, epochs=epochs)
    proc = _launch(tmp_path, space, "killtrial")
    layout = SearchLayout(tmp_path / "s" / "killtrial")
    trial = "trial_00000"  # Optuna trial 0, the search's only trial
    # Tune registers a result's checkpoint just after the callbacks see the result: once epoch 2
    # is reported, the epoch-1 checkpoint is certainly registered.
    _wait(lambda: (s := _summary(layout, trial)) is not None and s.epoch >= 2, proc, "epoch 2 of the trial")
    first = _attempts(layout, trial)
    assert len(first) == 1 and first[0]["resumed_from_epoch"] == 0
    killed_at = _summary(layout, trial).epoch  # type: ignore[union-attr]
    os.kill(first[0]["pid"], signal.SIGKILL)  # the Ray worker running the trial
    assert killed_at < epochs, "the trial ended before the kill: the test needs more epochs"
    out = _finish(proc)
    assert proc.returncode == 0, out
    attempts = _attempts(layout, trial)
    assert len(attempts) == 2 and attempts[1]["pid"] != first[0]["pid"], attempts
    # the retry resumes from the trial's persisted state: at least the epoch seen before the
    # kill was sent, and at most one more (state is written before its epoch is reported)
    assert 1 <= attempts[1]["resumed_from_epoch"] <= killed_at + 1, (attempts, killed_at)
    s = _summary(layout, trial)
    assert s is not None and s.status == COMPLETED and s.epoch == epochs and s.retries == 1
    run = _check_stores(layout)[trial]
    assert run.data.tags["retries"] == "1"
    # the retried trial reported the epochs after its checkpoint; MLflow holds each epoch once
    results = (layout.tune_dir / trial / "result.json").read_text().splitlines()
    reported = [int(json.loads(line)["epoch"]) for line in results if line.strip()]
    assert reported[-(epochs - attempts[1]["resumed_from_epoch"]):] == list(
        range(attempts[1]["resumed_from_epoch"] + 1, epochs + 1)), reported


# ---- the MLflow server goes away mid-search ----------------------------------------------------------
def _start_server(tmp: Path, port: int) -> subprocess.Popen:
    proc = start_mlflow_server(tmp, port, tmp / f"mlflow-server-{port}.log")
    _wait(lambda: http_ok(f"http://127.0.0.1:{port}/health"), proc, "mlflow server", timeout=120)
    return proc


@pytest.mark.slow  # two MLflow server starts plus a search: ~2-3 min on 2 busy cores
def test_mlflow_server_lost_mid_search_buffers_and_report_sends(tmp_path, free_port):
    port = free_port()
    uri = f"http://127.0.0.1:{port}"
    server = _start_server(tmp_path, port)
    try:
        space = _space(tmp_path, {"child.masking_mode": {"choice": ["loss", "both"]}}, epochs=3)
        proc = _launch(tmp_path, space, "lostserver", "--mlflow-uri", uri)
        layout = SearchLayout(tmp_path / "s" / "lostserver")
        # the first epoch has reached MLflow (the callback logs it before writing the summary)
        _wait(lambda: any(s.epoch >= 1 for s in TrialSummary.load_all(layout)) if layout.trials_dir.is_dir()
              else False, proc, "a first epoch")
        stop_group(server)
        out = _finish(proc)
        assert proc.returncode == 0, out  # trials kept training; the search finished
        assert "is unreachable;" in out and JOURNAL in out, out
        summaries = TrialSummary.load_all(layout)
        assert len(summaries) == 2 and all(s.status == COMPLETED and s.epoch == 3 for s in summaries)
        assert (layout.root / JOURNAL).is_file()
        assert SearchState.load(layout).status == "finished"

        server = _start_server(tmp_path, port)  # the store comes back (same database)
        assert main(["report", str(layout.root)]) == 0
        assert not (layout.root / JOURNAL).exists()  # everything sent
        _check_stores(layout, MlflowClient(uri))
    finally:
        stop_group(server)


# ---- the driver killed with SIGKILL, then `resume` ----------------------------------------------------
@pytest.mark.slow  # ~50 s; the main suite keeps Ctrl-C and a killed trial process
def test_driver_sigkill_then_resume_every_trial_once_everywhere(tmp_path):
    """Stricter than the e2e SIGKILL test: the CLI both times, and every store checked by
    :func:`_check_stores` (one Tune trial, one Optuna trial, one MLflow run per trial)."""
    epochs = 4
    space = _space(tmp_path, {"child.masking_mode": {"choice": ["loss", "both", "input"]}}, epochs=epochs)
    proc = _launch(tmp_path, space, "sigkill")
    layout = SearchLayout(tmp_path / "s" / "sigkill")
    _wait(lambda: layout.trials_dir.is_dir() and any(s.epoch >= 2 for s in TrialSummary.load_all(layout)),
          proc, "a trial at epoch 2")
    os.killpg(proc.pid, signal.SIGKILL)  # the driver and its local Ray: nothing shuts down cleanly
    proc.wait(timeout=30)
    before = {s.name: s for s in TrialSummary.load_all(layout)}
    assert all(s.status == "RUNNING" for s in before.values()), before
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    resumed = subprocess.run([sys.executable, "-m", "search.cli", "resume", "sigkill", "--storage",
                              str(tmp_path / "s")], cwd=tmp_path, env=env, capture_output=True, text=True,
                             timeout=400)
    assert resumed.returncode == 0, resumed.stdout[-3000:] + resumed.stderr[-3000:]
    after = [s for s in TrialSummary.load_all(layout) if s.status != "LOST"]
    assert len(after) == 3 and all(s.status == COMPLETED and s.epoch == epochs for s in after), after
    for s in after:  # a trial that had a checkpoint went on from it, not from scratch
        old = before.get(s.name)
        starts = [a["resumed_from_epoch"] for a in _attempts(layout, s.name)]
        if old is not None and old.trial_id == s.trial_id and old.epoch >= 2:
            assert starts[-1] >= 1, (s.name, starts)
    _check_stores(layout)


# ---- Ctrl-C while the outer level trains its parents ---------------------------------------------
@pytest.mark.slow  # ~2 min: two 40-epoch parents, two driver start-ups, one parent again
def test_ctrl_c_during_the_outer_level_then_resume_loses_no_parent_work(tmp_path):
    """Interrupted mid-parent, the stage leaves that parent's partial trainer state in the store;
    resume trains only what is missing, continues the partial parent from its last epoch, and
    ends with the very parent an uninterrupted run trains (same metrics), each trained once."""
    from compvae.trial import prepare_parent
    from search.run.outer import load_record
    from search.space import load_space

    proc, layout = _launch_outer(tmp_path, "outer", {"parent.beta": {"choice": [1.0, 2.0]},
                                                     "child.masking_mode": {"choice": ["loss", "both"]}},
                                 base={"parent": {"epochs": 40}})
    _wait(lambda: _partial_parent(layout), proc, "a parent part-way through training")
    proc.send_signal(signal.SIGINT)
    out = _finish(proc, timeout=120)
    assert proc.returncode == 130, out
    assert f"compvae-search resume {layout.root}" in out
    state = SearchState.load(layout)
    assert state.status == "interrupted" and load_record(layout) is None
    assert not layout.trials_dir.exists() or not any(layout.trials_dir.iterdir())  # no trial started
    partial = sorted(p.parent.name for p in layout.parents_dir.glob("*.partial/parent_trainer.pt"))
    assert partial

    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    resumed = subprocess.run([sys.executable, "-m", "search.cli", "resume", "outer", "--storage", str(tmp_path / "s")],
                             cwd=tmp_path, env=env, capture_output=True, text=True, timeout=400)
    assert resumed.returncode == 0, resumed.stdout[-3000:] + resumed.stderr[-3000:]
    state = SearchState.load(layout)
    record = load_record(layout)
    assert state.status == "finished" and record is not None
    points = record["points"]
    assert [p["values"] for p in points] == [{"parent.beta": 1.0}, {"parent.beta": 2.0}]
    assert all("error" not in p for p in points)
    stored = sorted(p.name for p in layout.parents_dir.iterdir() if not p.name.endswith(".lock"))
    assert stored == sorted(p["key"] for p in points)  # finished, and no partial left behind
    summaries = TrialSummary.load_all(layout)
    assert len(summaries) == 4 and all(s.status == COMPLETED for s in summaries)
    assert all(s.metrics["parent/reused"] == 1.0 for s in summaries)
    _check_stores(layout)
    # the parent interrupted mid-training is the one an uninterrupted run trains
    full = load_space(layout.space_file)
    for p in points:
        if f"{p['key']}.partial" in partial:
            fresh = prepare_parent(full.trial_config(p["values"]), tmp_path / "fresh")
            assert fresh["key"] == p["key"] and not fresh["reused"]
            values = {k: v for k, v in p["metrics"].items() if "seconds" not in k}  # timings differ
            assert {k: fresh["metrics"][k] for k in values} == pytest.approx(values, rel=1e-6)
            assert values["parent/recon_error"] > 0


# ---- Ctrl-C while a pinned trial trains the slow outer parent of a streamed stage --------------
@pytest.mark.slow  # ~2 min on 2 busy cores
def test_ctrl_c_during_a_streamed_outer_stage_then_resume_finishes_on_both_parents(tmp_path):
    """The pinned trials train the parents: Ctrl-C while the slow one's trial is part-way through
    it; resume restores that trial, which continues the parent from its partial state in the
    store (the restored gate finds the restarted stage, which records it), and every later trial
    reuses a stored parent."""
    from search.run.outer import load_record

    proc, layout = _launch_outer(tmp_path, "streamed", {"parent.epochs": {"choice": [1, 60]},
                                                        "child.beta": {"uniform": [1.0, 2.0]}},
                                 sampler="random", num_samples=4)
    _wait(lambda: layout.trials_dir.is_dir() and any(layout.trials_dir.glob("*/attempts.jsonl"))
          and _partial_parent(layout), proc,
          "a trial running while the slow parent is part-way through training")
    proc.send_signal(signal.SIGINT)
    out = _finish(proc, timeout=120)
    assert proc.returncode == 130, out
    assert load_record(layout) is None  # the stage did not finish
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    resumed = subprocess.run([sys.executable, "-m", "search.cli", "resume", "streamed", "--storage", str(tmp_path / "s")],
                             cwd=tmp_path, env=env, capture_output=True, text=True, timeout=400)
    assert resumed.returncode == 0, resumed.stdout[-3000:] + resumed.stderr[-3000:]
    assert SearchState.load(layout).status == "finished"
    record = load_record(layout)
    assert record is not None and record["streamed"] and all("error" not in p for p in record["points"])
    slow = next(p for p in record["points"] if p["values"]["parent.epochs"] == 60)
    assert not slow["reused"] and slow["trial"] == "trial_00001"  # continued after resume, by its trial
    starts = [a["resumed_from_epoch"] for a in _attempts(layout, "trial_00001")]
    assert len(starts) == 2, starts  # interrupted once, restored once (not replaced by a new trial)
    stored = sorted(p.name for p in layout.parents_dir.iterdir() if not p.name.endswith(".lock"))
    assert stored == sorted(p["key"] for p in record["points"])  # no partial left behind
    summaries = TrialSummary.load_all(layout)
    assert len(summaries) == 4 and all(s.status == COMPLETED for s in summaries)
    reused = {s.name: s.metrics["parent/reused"] for s in summaries}
    assert reused == {"trial_00000": 0.0, "trial_00001": 0.0, "trial_00002": 1.0, "trial_00003": 1.0}
    _check_stores(layout)


# ---- the worker training an outer parent is killed ----------------------------------------------
@pytest.mark.slow  # ~1.5 min on 2 busy cores
def test_killed_outer_parent_worker_is_retried_and_the_parent_kept(tmp_path):
    """A parent whose Ray worker dies is a transient fault, like a killed trial: the task is retried
    (search.max_failures) from the parent's partial state, not recorded as a failed parent and
    dropped from the inner search (found by the chaos soak, tests/test_cluster_soak.py)."""
    from search.run.outer import load_record

    proc, layout = _launch_outer(tmp_path, "outerkill", {"parent.beta": {"choice": [1.0, 2.0]}},
                                 base={"parent": {"epochs": 20}}, max_failures=1)
    _wait(lambda: _partial_parent(layout), proc, "a parent part-way through training")
    # the workers running search.run.outer._prepare: descendants of this driver's own local Ray
    workers = processes(proc.pid, "ray::_prepare")
    assert workers
    for pid in workers:
        os.kill(pid, signal.SIGKILL)
    out = _finish(proc)
    assert proc.returncode == 0, out
    assert "FAILED" not in out, out
    record = load_record(layout)
    assert record is not None and record["kept"] is None
    assert all("error" not in p for p in record["points"]), record
    summaries = TrialSummary.load_all(layout)
    assert len(summaries) == 2 and all(s.status == COMPLETED and s.metrics["parent/reused"] == 1.0
                                       for s in summaries)
    _check_stores(layout)


# ---- the write journal itself (fast: a dead URL, then a real SQLite store) ----------------------
def test_journal_keeps_order_and_replays_without_duplicates(tmp_path, monkeypatch):
    from search.tracking.client import MlflowTracker
    from search.tracking.journal import PENDING_PREFIX

    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    store = MlflowTracker(f"sqlite:///{tmp_path / 'mlflow.db'}")
    exp = store.ensure_experiment("j", (tmp_path / "art").as_uri())
    parent = store.start_parent(exp, "search", {})
    journal = tmp_path / JOURNAL
    down = MlflowTracker("http://127.0.0.1:9", journal=journal)  # nothing listens there
    tags = {"mlflow.parentRunId": parent, TRIAL_ID_TAG: "t1"}
    run = down.create_run(exp, "trial_00000", tags)
    assert run.startswith(PENDING_PREFIX) and down.offline_reason
    for epoch in (1, 2):
        down.log_metrics(run, {"child/mig": 0.1 * epoch}, step=epoch)
    down.set_status(run, "FINISHED")
    assert down.pending() == 4 and down.find_trial_run(exp, parent, "t1") is None
    # the same journal replayed against the store once it answers (same shape as the real URI
    # coming back), twice: the second flush has nothing left to send
    up = MlflowTracker(store.uri, journal=journal)
    assert up.flush() == 4 and up.pending() == 0 and not journal.exists()
    assert up.flush() == 0
    found = up.find_trial_run(exp, parent, "t1")
    assert found is not None and found.info.status == "FINISHED" and up.resolved[run] == found.info.run_id
    history = up.client.get_metric_history(found.info.run_id, "child/mig")
    assert [(m.step, round(m.value, 3)) for m in history] == [(1, 0.1), (2, 0.2)]
    # a replay that meets an existing run (e.g. created before the outage) reuses it
    again = MlflowTracker("http://127.0.0.1:9", journal=journal)
    again.create_run(exp, "trial_00000", tags)
    assert MlflowTracker(store.uri, journal=journal).flush() == 1
    assert len(up.trial_runs(exp, parent)) == 1
