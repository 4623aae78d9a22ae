"""Real searches on a local Ray instance (one per module) with real trials and real stores.

Trials use the `tiny` preset (seconds each). Each search is checked where it leaves its
traces: Tune's experiment, the Optuna study (SQLite), the MLflow store (SQLite: parent run,
nested runs, params, per-epoch metrics, artifacts), the search folder, and the CLI's output.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import optuna
import pytest
import yaml
from _services import local_ray
from mlflow.tracking import MlflowClient
from ray.tune import ExperimentAnalysis

from compvae.cli import main as compvae_main
from compvae.config import TrialConfig
from search.analysis.results import COMPLETED, FAILED, STOPPED, TrialSummary
from search.cli import main
from search.layout import SearchLayout, SearchState
from search.run.trainable import FAULT_ENV
from search.space import load_space
from search.tracking.callback import PARENT_HASH_PARAM
from search.tracking.client import TRIAL_ID_TAG

# In the search named e2e-multi (see trainable): trial_00000 (Optuna trial 0) raises once after
# its first epoch; trial_00003 after its last epoch's checkpoint, before its outputs exist. In
# e2e-single, trial_00000 (first at every rung in trial order, so never cut) raises once after its
# outputs exist, before its final result reaches the driver.
FAULT = "e2e-multi/trial_00000@1,e2e-multi/trial_00003@2,e2e-single/trial_00000@outputs"


@pytest.fixture(scope="module")
def ray_local():
    with local_ray(**{FAULT_ENV: FAULT}) as address:  # the raylet's workers inherit it
        yield address


def _client(state: SearchState) -> MlflowClient:
    return MlflowClient(state.mlflow_uri)


def _nested_runs(state: SearchState) -> list:
    return _client(state).search_runs(
        [state.mlflow_experiment_id], filter_string=f"tags.mlflow.parentRunId = '{state.mlflow_parent_run_id}'")


def _artifacts(client: MlflowClient, run_id: str, path: str | None = None) -> set[str]:
    out: set[str] = set()
    for a in client.list_artifacts(run_id, path):
        out |= _artifacts(client, run_id, a.path) if a.is_dir else {a.path}
    return out


def _attempts(layout: SearchLayout, trial: str) -> list[dict]:
    path = layout.trial_dir(trial) / "attempts.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines()] if path.is_file() else []


def _assert_runs_consistent(state: SearchState, summaries: list[TrialSummary]) -> None:
    """One nested run per trial, named after it, no duplicates, every config field as a param,
    each epoch logged once, only the trial's own metrics."""
    client = _client(state)
    runs = [r for r in _nested_runs(state) if "orphaned" not in r.data.tags]
    assert all(r.info.status == "KILLED" for r in _nested_runs(state) if "orphaned" in r.data.tags)
    assert sorted(r.data.tags[TRIAL_ID_TAG] for r in runs) == sorted(s.trial_id for s in summaries)
    by_id = {r.data.tags[TRIAL_ID_TAG]: r for r in runs}
    flat_keys = set(TrialConfig().flat()) | {PARENT_HASH_PARAM}
    for s in summaries:
        run = by_id[s.trial_id]
        assert run.info.run_name == s.name
        assert set(run.data.params) == flat_keys
        cfg = TrialConfig.from_dict(s.config)
        assert run.data.params["child.masking_mode"] == cfg.child.masking_mode
        assert float(run.data.params["child.beta"]) == pytest.approx(cfg.child.beta)
        for key in run.data.metrics:
            assert key == "epoch" or "/" in key or key.endswith("_seconds"), key
        assert not {"pid", "timestamp", "training_iteration", "time_total_s"} & set(run.data.metrics)
        if s.status == FAILED:
            assert run.info.status == "FAILED"
            assert run.data.tags["error"] == s.error
            continue
        assert run.info.status == "FINISHED"
        steps = [m.step for m in client.get_metric_history(run.info.run_id, "child/train_loss")]
        assert steps == list(range(1, s.epoch + 1)), (s.name, steps)
        arts = _artifacts(client, run.info.run_id)
        assert "config.yaml" in arts
        if s.status == COMPLETED:
            assert {"metrics.json", "weights/parent.pt", "weights/child.pt"} <= arts, arts
            assert run.data.metrics["child/mig"] == pytest.approx(s.metrics["child/mig"])


# ---- a single-objective search, run once for several tests ------------------------------------
@pytest.fixture(scope="module")
def single_search(ray_local, tmp_path_factory, tiny_space):
    tmp = tmp_path_factory.mktemp("single")
    space = tiny_space
    space["params"]["mask.delta"] = {"uniform": [1.0, 3.0]}
    space["search"]["num_samples"] = 4
    path = tmp / "space.yaml"
    path.write_text(yaml.safe_dump(space))
    t0 = time.monotonic()
    rc = main(["launch", str(path), "--storage", str(tmp / "searches"), "--name", "e2e-single"])
    assert rc == 0
    return SearchLayout(tmp / "searches" / "e2e-single"), time.monotonic() - t0


def test_single_objective_search_tune_optuna_mlflow(single_search, capsys):
    layout, _ = single_search
    state = SearchState.load(layout)
    space = load_space(layout.space_file)
    assert state.status == "finished"
    summaries = TrialSummary.load_all(layout)
    assert [s.name for s in summaries] == [f"trial_{i:05d}" for i in range(4)]  # Optuna trials 0..3
    assert {s.status for s in summaries} <= {COMPLETED, STOPPED}
    completed = [s for s in summaries if s.status == COMPLETED]
    assert completed and all(s.epoch == 2 and "child/mig" in s.metrics for s in completed)
    # trial_00000 died after writing its outputs: the retry found them and sent the same final
    # result the first attempt's run_trial returned (metrics.json and the timings.json entries)
    first = summaries[0]
    assert first.status == COMPLETED and first.retries == 1
    assert [a["already_finished"] for a in _attempts(layout, first.name)] == [False, True]
    out = layout.trial_dir(first.name)
    timings = json.loads((out / "timings.json").read_text())
    sent = {**json.loads((out / "metrics.json").read_text()),
            **{k: v for k, v in timings.items() if not k.startswith("breakdown/")}}
    assert {"trial_seconds", "child/epoch_seconds"} <= set(sent)

    # Tune: every trial terminated; its last reported epoch is the summary's
    analysis = ExperimentAnalysis(str(layout.tune_dir))
    assert len(analysis.trials) == 4
    assert {t.status for t in analysis.trials} == {"TERMINATED"}
    assert {t.trial_id: int(t.last_result["epoch"]) for t in analysis.trials} == {s.trial_id: s.epoch for s in summaries}
    last = next(t.last_result for t in analysis.trials if t.trial_id == first.trial_id)
    assert {k: last[k] for k in sent} == sent

    # Optuna: durable study, complete trials COMPLETE with the objective, ASHA-cut ones PRUNED
    study = optuna.load_study(study_name=state.study_name, storage=state.optuna_url)
    assert len(study.trials) == 4
    states = sorted(t.state.name for t in study.trials)
    assert states == sorted("COMPLETE" if s.status == COMPLETED else "PRUNED" for s in summaries)
    best = max(s.metrics["child/mig"] for s in completed)
    assert study.best_value == pytest.approx(best)
    sampled = sorted(round(t.params["child.beta"], 9) for t in study.trials)
    assert sampled == sorted(round(s.params["child.beta"], 9) for s in summaries)

    # MLflow: parent run with the search's tags and artifacts, nested runs consistent
    client = _client(state)
    parent = client.get_run(state.mlflow_parent_run_id)
    assert parent.info.status == "FINISHED" and parent.info.run_name == "e2e-single"
    tags = parent.data.tags
    assert tags["compvae.space"] == space.name and tags["search.sampler"] == "tpe"
    assert tags["search.num_samples"] == "4" and tags["compvae.version"]
    arts = _artifacts(client, parent.info.run_id)
    assert {"space.yaml", "report/trials.csv", "report/objective_history.png", "export/best.yaml"} <= arts, arts
    _assert_runs_consistent(state, summaries)
    run = {r.info.run_name: r for r in _nested_runs(state)}[first.name]
    assert run.data.tags["retries"] == "1" and "after the outputs" in run.data.tags["last_error"]
    history = client.get_metric_history(run.info.run_id, "child/epoch_seconds")
    assert [(m.step, m.value) for m in history][-1] == (2, sent["child/epoch_seconds"])
    assert Path(state.mlflow_uri.removeprefix("sqlite:///")).is_file()


def test_export_then_compvae_train(single_search, tmp_path, capsys):
    layout, _ = single_search
    space = load_space(layout.space_file)
    summaries = TrialSummary.load_all(layout)
    best = max((s for s in summaries if s.status == COMPLETED), key=lambda s: s.metrics["child/mig"])
    out = tmp_path / "exported"
    assert main(["export", str(layout.root), "--out", str(out), "--top", "2"]) == 0
    files = sorted(p.name for p in out.glob("rank*.yaml"))
    assert files[0] == f"rank01_{best.name}.yaml"
    assert len(files) == min(2, sum(s.status == COMPLETED for s in summaries))
    exported = TrialConfig.from_yaml(out / "best.yaml")
    assert exported == TrialConfig.from_yaml(layout.trial_dir(best.name) / "config.yaml")
    assert exported == space.trial_config(best.params)
    metrics = json.loads((out / f"rank01_{best.name}.metrics.json").read_text())
    assert metrics["objectives"]["child/mig"] == pytest.approx(best.metrics["child/mig"])
    # the exported YAML is what `compvae train` takes
    assert compvae_main(["train", str(out / "best.yaml"), "--out", str(tmp_path / "retrained"), "--quiet"]) == 0
    retrained = json.loads((tmp_path / "retrained" / "metrics.json").read_text())
    assert "child/mig" in retrained and retrained["epoch"] == 2
    assert TrialConfig.from_yaml(tmp_path / "retrained" / "config.yaml") == exported


def test_report_writes_and_logs_figures(single_search, capsys):
    layout, _ = single_search
    assert main(["report", str(layout.root)]) == 0
    out = capsys.readouterr().out
    assert "trial_00000" in out and "child/mig" in out
    for name in ("trials.csv", "trials.txt", "objective_history.png", "parallel_coordinates.png"):
        assert (layout.report_dir / name).stat().st_size > 0
    state = SearchState.load(layout)
    arts = _artifacts(_client(state), state.mlflow_parent_run_id, "report")
    assert "report/parallel_coordinates.png" in arts


def test_ui_serves_the_search_store(single_search, free_port):
    layout, _ = single_search
    port = free_port()
    proc = subprocess.Popen([sys.executable, "-m", "search.cli", "ui", str(layout.root), "--port", str(port)],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        deadline = time.monotonic() + 90
        while True:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=2) as r:
                    assert r.status == 200
                    break
            except OSError:
                assert proc.poll() is None, proc.stdout.read().decode() if proc.stdout else ""
                assert time.monotonic() < deadline, "MLflow UI did not come up"
                time.sleep(0.5)
        state = SearchState.load(layout)
        url = f"http://127.0.0.1:{port}/api/2.0/mlflow/runs/get?run_id={state.mlflow_parent_run_id}"
        with urllib.request.urlopen(url, timeout=10) as r:
            assert json.loads(r.read())["run"]["info"]["run_name"] == "e2e-single"
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(timeout=30)


# ---- multi-objective grid: failures, retry from checkpoint, Pareto export ----------------------
def test_multi_objective_grid_failures_and_retry(ray_local, write_space, tmp_path, capsys):
    space = write_space(
        name="multi",
        base={"mask": {"min_coverage": 0.002}},  # threshold 1.0 then leaves an empty mask: a failure
        params={"mask.threshold": {"choice": [0.0, 1.0]}, "child.masking_mode": {"choice": ["loss", "both"]}},
        objective=[{"metric": "child/mig", "mode": "max"}, {"metric": "child/recon_error", "mode": "min"}],
        search={"sampler": "grid", "num_samples": None, "scheduler": "none", "max_failures": 1},
    )
    assert main(["launch", str(space), "--storage", str(tmp_path / "s"), "--name", "e2e-multi"]) == 0
    out = capsys.readouterr().out
    assert "Pareto front" in out and "FAILED: EmptyMaskError" in out
    layout = SearchLayout(tmp_path / "s" / "e2e-multi")
    state = SearchState.load(layout)
    summaries = {s.name: s for s in TrialSummary.load_all(layout)}
    assert len(summaries) == 4
    grid = {(s.params["mask.threshold"], s.params["child.masking_mode"]) for s in summaries.values()}
    assert grid == {(0.0, "loss"), (0.0, "both"), (1.0, "loss"), (1.0, "both")}
    for s in summaries.values():
        if s.params["mask.threshold"] == 1.0:
            assert s.status == FAILED and s.error.startswith("EmptyMaskError: mask for latent")
            assert len(_attempts(layout, s.name)) == 1  # an empty mask is a TrialFailed: not retried
        else:
            assert s.status == COMPLETED
    # the injected fault: trial_00000 failed after epoch 1 and resumed from that checkpoint
    first = summaries["trial_00000"]
    assert first.status == COMPLETED and first.retries == 1
    assert [a["resumed_from_epoch"] for a in _attempts(layout, "trial_00000")] == [0, 1]
    # trial_00003 died between its last epoch's checkpoint and its outputs: the retry trains no
    # epoch, writes the outputs and still ends COMPLETED with its final result
    last = summaries["trial_00003"]
    assert last.status == COMPLETED and last.retries == 1 and last.epoch == 2
    assert [a["resumed_from_epoch"] for a in _attempts(layout, "trial_00003")] == [0, 2]
    saved = json.loads((layout.trial_dir("trial_00003") / "metrics.json").read_text())
    assert saved["epoch"] == 2 and last.metrics["child/mig"] == saved["child/mig"]

    study = optuna.load_study(study_name=state.study_name, storage=state.optuna_url)
    assert len(study.directions) == 2
    assert sorted(t.state.name for t in study.trials) == ["COMPLETE", "COMPLETE", "FAIL", "FAIL"]
    _assert_runs_consistent(state, list(summaries.values()))
    run = {r.info.run_name: r for r in _nested_runs(state)}["trial_00000"]
    assert run.data.tags["retries"] == "1" and "injected fault" in run.data.tags["last_error"]

    export = tmp_path / "pareto"
    assert main(["export", "e2e-multi", "--storage", str(tmp_path / "s"), "--out", str(export)]) == 0
    front = sorted(export.glob("pareto*.yaml"))
    assert 1 <= len(front) <= 2
    for f in front:
        TrialConfig.from_yaml(f)
    assert (layout.report_dir / "pareto_front.png").is_file()


# ---- resume after Ctrl-C (driver in a subprocess on this module's Ray) -------------------------
def _summaries_when(layout: SearchLayout, cond, proc: subprocess.Popen, timeout: float = 240):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise AssertionError(f"driver exited early ({proc.returncode}): {proc.stdout.read()}")
        summaries = TrialSummary.load_all(layout) if layout.trials_dir.is_dir() else []
        if cond(summaries):
            return summaries
        time.sleep(0.2)
    raise AssertionError("search did not reach the expected state")


def _interrupt_and_resume(ray_local, write_space, tmp_path, sig: int, name: str):
    epochs = 8  # enough child epochs that a trial is caught between checkpoints
    space = write_space(base={"child": {"epochs": epochs}}, search={"num_samples": 4, "scheduler": "none"})
    storage = tmp_path / "s"
    layout = SearchLayout(storage / name)
    proc = subprocess.Popen(
        [sys.executable, "-m", "search.cli", "launch", str(space), "--storage", str(storage), "--name", name,
         "--address", ray_local], cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    # interrupt once one trial has finished while another has a checkpoint but is not done
    _summaries_when(layout, lambda ss: any(s.status == COMPLETED for s in ss)
                    and any(s.status == "RUNNING" and 1 <= s.epoch < epochs for s in ss), proc)
    proc.send_signal(sig)
    out, _ = proc.communicate(timeout=120)
    before = {s.name: s for s in TrialSummary.load_all(layout)}
    finished_before = {n for n, s in before.items() if s.status == COMPLETED}
    assert finished_before and len(finished_before) < 4, before
    assert any(s.status == "RUNNING" and s.epoch >= 1 for s in before.values()), before
    if sig == signal.SIGINT:
        assert proc.returncode == 130, out
        assert f"compvae-search resume {layout.root}" in out
        assert SearchState.load(layout).status == "interrupted"
        stopped = SearchState.load(layout)  # the driver closed every run it left unfinished
        assert _client(stopped).get_run(stopped.mlflow_parent_run_id).info.status == "KILLED"
        assert "RUNNING" not in {r.info.status for r in _nested_runs(stopped)}, _nested_runs(stopped)
    study_name, optuna_url = SearchState.load(layout).study_name, SearchState.load(layout).optuna_url
    asked_before = {t.number for t in optuna.load_study(study_name=study_name, storage=optuna_url).trials}

    assert main(["resume", name, "--storage", str(storage)]) == 0
    state = SearchState.load(layout)
    assert state.status == "finished"
    assert [h["event"] for h in state.history] == ["launch", "resume"]
    after = {s.name: s for s in TrialSummary.load_all(layout)}
    assert len(after) == 4 and all(s.status == COMPLETED and s.epoch == epochs for s in after.values())
    # Names are Optuna numbers: kept by resume, and the trials the resumed driver created got the
    # study's next numbers (a trial a SIGKILLed driver lost leaves a gap: its folder went to
    # lost_trials/, its Optuna trial is FAIL "orphaned")
    study = optuna.load_study(study_name=state.study_name, storage=state.optuna_url)
    owner = {t.user_attrs["tune_trial_id"]: t for t in study.trials if "orphaned" not in t.user_attrs}
    for n, s in after.items():
        assert n == f"trial_{owner[s.trial_id].number:05d}" == owner[s.trial_id].user_attrs["trial_name"]
    by_id = {s.trial_id: n for n, s in after.items()}
    assert all(by_id.get(s.trial_id, n) == n for n, s in before.items())  # a surviving trial keeps its name
    new = [t for t in study.trials if t.number not in asked_before and "orphaned" not in t.user_attrs]
    if len(asked_before) < 4:  # the resumed driver sampled the rest itself
        assert new, (asked_before, [t.number for t in study.trials])
    assert not {f"trial_{t.number:05d}" for t in new} & set(before)  # never a name the first driver gave
    if sig == signal.SIGINT:  # a clean stop loses nothing: no gaps
        assert sorted(after) == [f"trial_{i:05d}" for i in range(4)]
    for n in finished_before:  # finished trials are not rerun (at most found finished and skipped:
        # a killed driver can die before Tune saved that the trial had completed)
        assert [a for a in _attempts(layout, n) if not a["already_finished"]] == _attempts(layout, n)[:1]
    for n, s in before.items():  # unfinished ones restart from their last checkpoint
        if n not in finished_before and s.epoch >= 1 and n in after and after[n].trial_id == s.trial_id:
            resumed = _attempts(layout, n)[-1]["resumed_from_epoch"]
            # A trial resumes from its own persisted state (search/trainable.py), which is
            # written before the epoch's result reaches the driver: it can be one epoch past
            # what the driver saw (that epoch is then re-reported), never behind the driver's
            # last epoch by more than Tune's unsaved step on a clean stop.
            if sig == signal.SIGINT:
                assert max(1, s.epoch - 1) <= resumed <= s.epoch + 1, (n, s.epoch, _attempts(layout, n))
            else:
                assert s.epoch <= resumed <= s.epoch + 1, (n, s.epoch, _attempts(layout, n))
    complete = [t for t in study.trials if t.state.name == "COMPLETE"]
    assert len(complete) == 4
    if sig == signal.SIGINT:
        assert sorted(t.number for t in study.trials) == [0, 1, 2, 3]
    assert _client(state).get_run(state.mlflow_parent_run_id).info.status == "FINISHED"
    _assert_runs_consistent(state, list(after.values()))  # no duplicate runs, no duplicate epochs


def test_resume_after_ctrl_c(ray_local, write_space, tmp_path):
    _interrupt_and_resume(ray_local, write_space, tmp_path, signal.SIGINT, "e2e-ctrlc")


@pytest.mark.slow
def test_resume_after_killed_driver(ray_local, write_space, tmp_path):
    _interrupt_and_resume(ray_local, write_space, tmp_path, signal.SIGKILL, "e2e-killed")


# ---- early, clear failures ----------------------------------------------------------------------
def test_gpu_request_on_cpu_cluster_fails_early(ray_local, write_space, tmp_path, capsys):
    space = write_space(search={"resources": {"cpus": 1, "gpus": 0.5}})
    t0 = time.monotonic()
    assert main(["launch", str(space), "--storage", str(tmp_path / "s")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: search.resources.gpus: each trial asks for 0.5 GPU") and "\n" not in err
    assert time.monotonic() - t0 < 30
    assert not (tmp_path / "s").exists()


def test_unknown_objective_metric_stops_the_search(ray_local, write_space, tmp_path, capsys):
    space = write_space(objective={"metric": "child/migg", "mode": "max"},
                        search={"num_samples": 4, "scheduler": "none"})
    assert main(["launch", str(space), "--storage", str(tmp_path / "s"), "--name", "e2e-typo"]) == 2
    err = capsys.readouterr().err.strip()
    assert "objective: metric child/migg is not reported by the trials" in err and "child/mig," in err
    layout = SearchLayout(tmp_path / "s" / "e2e-typo")
    assert SearchState.load(layout).status == "failed"
    assert len(TrialSummary.load_all(layout)) < 4  # stopped at the first finished trial
