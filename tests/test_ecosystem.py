"""What MLflow, Optuna and Ray users expect around a search (issue 17), on real searches.

One local Ray for the module. Two tiny searches of one space share a storage folder (so one
MLflow store and one experiment): ``eco-a`` from the command line (``--set``), ``eco-b`` from the
Python API (a grid whose threshold 1.0 leaves an empty mask: one failed trial). A third, longer
one runs in a subprocess for ``ls``/``status``/``stop`` and is resumed.
"""

from __future__ import annotations

import contextlib
import getpass
import io
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import mlflow.pytorch
import optuna
import pytest
import ray
import torch
import yaml
from _services import local_ray
from mlflow.tracking import MlflowClient
from ray.tune import Callback, ExperimentAnalysis

import search
from search.analysis.results import COMPLETED, FAILED, TrialSummary
from search.cli import main
from search.layout import SearchLayout, SearchState
from search.tracking.callback import OPTUNA_NUMBER_TAG, PARENT_REUSED, TRACEBACK
from search.tracking.client import TRIAL_ID_TAG

REPO = Path(__file__).resolve().parents[1]
SPACE = "eco"
DESCRIPTION = "Tiny ecosystem check: does beta or the masking mode matter?"


@pytest.fixture(scope="module")
def ray_local():
    with local_ray() as address:
        yield address


def _space(**search: Any) -> dict[str, Any]:
    return {
        "name": SPACE, "description": DESCRIPTION, "preset": "tiny",
        "params": {"child.beta": {"loguniform": [1.0, 8.0]}, "child.masking_mode": {"choice": ["loss", "both"]}},
        "objective": {"metric": "child/mig", "mode": "max"},
        "search": {"sampler": "tpe", "seed": 0, "num_samples": 2, "max_concurrent": 2, "max_failures": 0,
                   "scheduler": "none", "resources": {"cpus": 1, "gpus": 0}, **search},
    }


class Recorder(Callback):
    """An extra Tune callback given to ``search.launch``: which trials it saw end."""

    def __init__(self) -> None:
        self.ended: list[str] = []

    def on_trial_complete(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        self.ended.append(trial.custom_trial_name)

    def on_trial_error(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        self.ended.append(trial.custom_trial_name)


@pytest.fixture(scope="module")
def storage(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("eco") / "searches"


CONSOLE: dict[str, str] = {}  # what a module fixture's search printed, by search name


@pytest.fixture(scope="module")
def search_a(ray_local, storage, tmp_path_factory) -> SearchLayout:
    path = tmp_path_factory.mktemp("space") / "eco.yaml"
    path.write_text(yaml.safe_dump(_space()))
    console = io.StringIO()
    with contextlib.redirect_stdout(console):
        rc = main(["launch", str(path), "--storage", str(storage), "--name", "eco-a",
                   "--set", "search.num_samples=3", "--set", "child.epochs=3"])
    CONSOLE["eco-a"] = console.getvalue()
    assert rc == 0, CONSOLE["eco-a"]
    return SearchLayout(storage / "eco-a")


@pytest.fixture(scope="module")
def search_b(ray_local, storage, search_a) -> tuple[SearchLayout, list[TrialSummary], Recorder]:
    space = _space(sampler="grid", num_samples=None)
    space["base"] = {"mask": {"min_coverage": 0.002}}  # threshold 1.0 then leaves an empty mask
    space["params"] = {"mask.threshold": {"choice": [0.0, 1.0]}}
    recorder = Recorder()
    trials = search.launch(space, name="eco-b", storage=storage, overrides={"eval.figures": True},
                           callbacks=[recorder])
    return SearchLayout(storage / "eco-b"), trials, recorder


def _client(layout: SearchLayout) -> tuple[MlflowClient, SearchState]:
    state = SearchState.load(layout)
    return MlflowClient(state.mlflow_uri), state


def _trial_runs(layout: SearchLayout) -> dict[str, Any]:
    client, state = _client(layout)
    runs = client.search_runs([state.mlflow_experiment_id],
                              filter_string=f"tags.mlflow.parentRunId = '{state.mlflow_parent_run_id}'")
    return {r.info.run_name: r for r in runs}


def _artifacts(client: MlflowClient, run_id: str, path: str | None = None) -> set[str]:
    out: set[str] = set()
    for a in client.list_artifacts(run_id, path):
        out |= _artifacts(client, run_id, a.path) if a.is_dir else {a.path}
    return out


# ---- MLflow ------------------------------------------------------------------------------------
def test_two_searches_share_one_store_and_experiment(search_a, search_b, storage):
    layout_b, _, _ = search_b
    a, b = SearchState.load(search_a), SearchState.load(layout_b)
    assert a.mlflow_uri == b.mlflow_uri == f"sqlite:///{storage.resolve() / 'mlflow.db'}"
    assert a.mlflow_experiment_id == b.mlflow_experiment_id
    client = MlflowClient(a.mlflow_uri)
    experiment = client.get_experiment(a.mlflow_experiment_id)
    assert experiment.name == SPACE and experiment.tags["mlflow.experimentKind"] == "custom_model_development"
    parents = client.search_runs([a.mlflow_experiment_id], filter_string="tags.`compvae.search` != ''",
                                 max_results=100)
    names = {r.info.run_name for r in parents if "mlflow.parentRunId" not in r.data.tags}
    assert names == {"eco-a", "eco-b"}
    assert not (search_a.root / "mlflow.db").exists() and (storage / "mlartifacts").is_dir()


def test_runs_carry_mlflow_context_versions_and_dataset(search_a):
    client, state = _client(search_a)
    commit = subprocess.run(["git", "-C", str(REPO), "rev-parse", "HEAD"], capture_output=True, text=True).stdout.strip()
    runs = [client.get_run(state.mlflow_parent_run_id), *_trial_runs(search_a).values()]
    assert len(runs) == 4
    digests = set()
    for run in runs:
        tags = run.data.tags
        assert tags["mlflow.user"] == getpass.getuser() and tags["mlflow.source.type"] == "LOCAL"
        assert tags["mlflow.source.name"] and tags["mlflow.source.git.commit"] == commit
        assert tags["version.torch"] == torch.__version__ and tags["version.ray"] == ray.__version__
        assert tags["version.optuna"] == optuna.__version__ and tags["version.mlflow"] == mlflow.__version__
        assert tags["version.compvae-search"]
        (dataset_input,) = run.inputs.dataset_inputs
        assert dataset_input.dataset.name == "shapes" and json.loads(dataset_input.dataset.source)["name"] == "shapes"
        assert {t.key: t.value for t in dataset_input.tags}["mlflow.data.context"] == "training"
        digests.add(dataset_input.dataset.digest)
    assert len(digests) == 1  # one data config, one digest


def test_parent_run_note_settings_and_outcome(search_a):
    client, state = _client(search_a)
    parent = client.get_run(state.mlflow_parent_run_id)
    assert parent.data.tags["mlflow.note.content"] == DESCRIPTION
    params = parent.data.params
    assert params["search.sampler"] == "tpe" and params["search.num_samples"] == "3"
    assert params["search.objective"] == "child/mig (max)" and params["search.scheduler"] == "none"
    summaries = TrialSummary.load_all(search_a)
    metrics = parent.data.metrics
    assert metrics["trials/total"] == 3 and metrics["trials/complete"] == sum(s.status == COMPLETED for s in summaries)
    assert metrics["trials/failed"] == 0 and metrics["trials/pruned"] == 0
    assert metrics["best/child/mig"] == pytest.approx(max(s.metrics["child/mig"] for s in summaries))
    # the parent run sorts by it in the experiment's runs table
    (top,) = client.search_runs([state.mlflow_experiment_id], filter_string="metrics.`best/child/mig` > -1",
                                order_by=["metrics.`best/child/mig` DESC"], max_results=1)
    assert top.info.run_name in ("eco-a", "eco-b")


def test_constants_logged_once_and_parent_curve_on_its_trainer(search_a):
    client, _ = _client(search_a)
    runs = _trial_runs(search_a)
    trainers = [r for r in runs.values() if r.data.metrics[PARENT_REUSED] == 0]
    assert len(trainers) == 1  # one parent (nothing parent-side searched), trained by one trial
    for run in runs.values():
        rid = run.info.run_id
        assert [m.step for m in client.get_metric_history(rid, "child/train_loss")] == [1, 2, 3]
        constants = [k for k in run.data.metrics if k.startswith(("parent/", "mask/"))]
        assert {"parent/mig", "mask/coverage", PARENT_REUSED} <= set(constants)
        for key in constants:  # once, at the first epoch; again only if the value changed
            history = client.get_metric_history(rid, key)
            assert history[0].step == 1, key
            assert all(a.value != b.value for a, b in zip(history, history[1:], strict=False)), (key, history)
        assert len(client.get_metric_history(rid, "parent/mig")) == 1
        curve = client.get_metric_history(rid, "parent_train/loss")
        assert [m.step for m in curve] == ([1] if run in trainers else [])  # tiny: 1 parent epoch


def test_child_in_mlflow_pytorch_format_and_registered(search_a, tmp_path, capsys):
    client, state = _client(search_a)
    summaries = TrialSummary.load_all(search_a)
    best = max(summaries, key=lambda s: s.metrics["child/mig"])
    assert {"child_model/MLmodel", "weights/child.pt"} <= _artifacts(client, best.mlflow_run_id)
    mlflow.set_tracking_uri(state.mlflow_uri)
    try:
        model = mlflow.pytorch.load_model(f"runs:/{best.mlflow_run_id}/child_model")
    finally:
        mlflow.set_tracking_uri(None)
    saved = torch.load(search_a.trial_dir(best.name) / "child.pt")
    assert all(torch.equal(v, saved[k]) for k, v in model.state_dict().items())

    capsys.readouterr()  # MLflow's download progress from loading the model
    assert main(["export", str(search_a.root), "--out", str(tmp_path / "bad"), "--register", "eco/child"]) == 2
    err = capsys.readouterr().err.strip()
    assert err == "error: --register 'eco/child': an MLflow model name, non-empty and without '/' or ':'"
    assert not (tmp_path / "bad").exists()  # refused before anything was written
    assert main(["export", str(search_a.root), "--out", str(tmp_path / "x"), "--register", "eco-child"]) == 0
    assert "registered trial_" in capsys.readouterr().out
    (version,) = client.search_model_versions("name='eco-child'")
    assert version.run_id == best.mlflow_run_id and int(version.version) == 1
    assert version.source.endswith(f"{best.mlflow_run_id}/artifacts/child_model")


def test_failed_trial_run_holds_its_traceback_and_mask_figure(search_b):
    layout, _, _ = search_b
    client, _ = _client(layout)
    failed = [s for s in TrialSummary.load_all(layout) if s.status == FAILED]
    assert len(failed) == 1 and failed[0].error.startswith("EmptyMaskError")
    run = _trial_runs(layout)[failed[0].name]
    assert run.info.status == "FAILED"
    arts = _artifacts(client, run.info.run_id)
    assert TRACEBACK in arts
    assert "figures/mask_pipeline.png" in arts  # what the empty mask looked like (eval.figures is on)
    text = Path(client.download_artifacts(run.info.run_id, TRACEBACK, str(layout.root / "dl"))).read_text()
    assert 'File "' in text and "in check_coverage" in text  # the whole stack, not just the line
    assert text.rstrip().splitlines()[-1].startswith("compvae.errors.EmptyMaskError: mask for latent 0")


# ---- Optuna ------------------------------------------------------------------------------------
def test_optuna_trials_name_their_run_and_numbers_agree(search_a):
    """One number everywhere: trial_00000 is Optuna trial 0, and its folder, its MLflow run,
    its Tune trial and the console all call it that."""
    state = SearchState.load(search_a)
    study = optuna.load_study(study_name=state.study_name, storage=state.optuna_url)
    assert study.metric_names == ["child/mig"]
    runs = _trial_runs(search_a)
    summaries = {s.name: s for s in TrialSummary.load_all(search_a)}
    folders = sorted(p.name for p in search_a.trials_dir.iterdir())
    tune_names = {t.trial_id: t.custom_trial_name for t in ExperimentAnalysis(str(search_a.tune_dir)).trials}
    assert len(study.trials) == 3
    assert folders == sorted(runs) == sorted(summaries) == [f"trial_{t.number:05d}" for t in study.trials]
    for t in study.trials:
        name = t.user_attrs["trial_name"]
        assert name == f"trial_{t.number:05d}" == runs[name].info.run_name == summaries[name].name
        assert (search_a.trial_dir(name) / "metrics.json").is_file()  # the folder holds that trial's outputs
        assert tune_names[t.user_attrs["tune_trial_id"]] == name
        assert t.user_attrs["mlflow_run_id"] == summaries[name].mlflow_run_id == runs[name].info.run_id
        assert t.user_attrs["tune_trial_id"] == runs[name].data.tags[TRIAL_ID_TAG]
        assert runs[name].data.tags[OPTUNA_NUMBER_TAG] == str(t.number)
    # the README's optuna CLI line shows them
    out = subprocess.run(["optuna", "trials", "--study-name", state.study_name, "--storage", state.optuna_url,
                          "-f", "json"], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    shown = json.loads(out.stdout)
    assert len(shown) == 3 and all(summaries[f"trial_{r['number']:05d}"].mlflow_run_id in json.dumps(r)
                                   for r in shown)
    # the console's progress lines name them the same way
    for name in (f"trial_{t.number:05d}" for t in study.trials):
        assert f"{name} started " in CONSOLE["eco-a"] and f"{name} completed " in CONSOLE["eco-a"]


def test_report_draws_optunas_views_when_there_are_enough_trials(search_a, capsys):
    assert main(["report", str(search_a.root)]) == 0
    out = search_a.report_dir / "optuna"
    for view in ("optimization_history", "parallel_coordinate", "intermediate_values"):
        assert (out / f"{view}.html").stat().st_size > 1000 and (out / f"{view}.png").stat().st_size > 1000
    assert (out / "plotly.min.js").is_file() and not (out / "param_importances.png").exists()
    assert "(3 complete trials)" in (out / "optimization_history.html").read_text()  # what it rests on
    assert "(3 trials with per-epoch values)" in (out / "intermediate_values.html").read_text()
    notes = (search_a.report_dir / "notes.txt").read_text()
    assert "Optuna param_importances not drawn: 3 complete trials, it needs at least 10" in notes
    client, state = _client(search_a)
    arts = _artifacts(client, state.mlflow_parent_run_id, "report")
    assert {"report/optuna/intermediate_values.html", "report/optuna/intermediate_values.png",
            "report/optuna/plotly.min.js"} <= arts


# ---- the Python API ----------------------------------------------------------------------------
def test_python_api_launch_and_load_trials(search_b):
    layout, trials, recorder = search_b
    assert sorted(t.name for t in trials) == ["trial_00000", "trial_00001"]
    assert sorted(recorder.ended) == ["trial_00000", "trial_00001"]  # the extra callback ran
    assert {t.status for t in trials} == {COMPLETED, FAILED}
    assert all(t.config["eval"]["figures"] is True for t in trials)  # the override reached the base
    frame = search.load_trials("eco-b", storage=layout.storage)
    assert list(frame["trial"]) == ["trial_00000", "trial_00001"]
    assert set(frame["status"]) == {COMPLETED, FAILED}
    by_name = {t.name: t for t in trials}
    for _, row in frame.iterrows():
        s = by_name[row["trial"]]
        assert row["mlflow_run_id"] == s.mlflow_run_id and row["trial_id"] == s.trial_id
        assert row["config.mask.threshold"] == s.params["mask.threshold"]
        assert row["optuna_number"] == int(row["trial"][-5:])
    done = frame[frame["status"] == COMPLETED].iloc[0]
    assert done["metrics.child/mig"] == pytest.approx(by_name[done["trial"]].metrics["child/mig"])


def test_readme_python_api_example_runs_as_written(ray_local, tmp_path, monkeypatch, capsys):
    section = (REPO / "README.md").read_text().split("### From Python: launch, resume, load_trials", 1)[1]
    code = section.split("```python\n", 1)[1].split("```", 1)[0]
    monkeypatch.chdir(tmp_path)  # the example's default storage: ./searches
    exec(compile(code, "README.md", "exec"), {})
    out = capsys.readouterr().out
    assert "[('trial_00000', 'COMPLETED', " in out and "('trial_00001', 'COMPLETED', " in out
    assert "metrics.child/mig" in out and "mlflow_run_id" in out
    assert SearchState.load(SearchLayout(tmp_path / "searches" / "api-demo")).status == "finished"


# ---- commands ----------------------------------------------------------------------------------
def test_dry_run_prints_the_plan_and_starts_nothing(tmp_path, capsys):
    path = tmp_path / "eco.yaml"
    path.write_text(yaml.safe_dump(_space(num_samples=5)))
    rc = main(["launch", str(path), "--storage", str(tmp_path / "s"), "--dry-run", "--set", "child.epochs=4",
               "--set", "search.max_concurrent=1"])
    out = capsys.readouterr().out
    assert rc == 0
    assert "5 trials (tpe sampler" in out and "parents: 1 distinct" in out
    assert "1 at a time (needs 1 CPUs, 0 GPUs)" in out and "child 4 x 32px epochs" in out
    assert "rough time: ~" in out and not (tmp_path / "s").exists()
    assert main(["launch", str(path), "--dry-run", "--set", "child.beta=2"]) == 2
    err = capsys.readouterr().err.strip()
    assert err == ("error: --set child.beta: this space searches child.beta (params); set it there or "
                   "drop it from params")
    assert main(["launch", str(path), "--dry-run", "--set", "child.epochs"]) == 2
    assert "--set child.epochs: expected KEY=VALUE" in capsys.readouterr().err


@pytest.mark.parametrize("cli", ["search.cli", "compvae.cli"])
def test_version(cli):
    from compvae import __version__

    out = subprocess.run([sys.executable, "-m", cli, "--version"], capture_output=True, text=True,
                         env={**os.environ, "PYTHONPATH": str(REPO)})
    assert out.returncode == 0 and out.stdout.strip().endswith(__version__)


def test_ls_status_stop_then_resume(ray_local, search_a, storage, tmp_path, capsys):
    path = tmp_path / "eco.yaml"
    path.write_text(yaml.safe_dump(_space(num_samples=2)))
    other_store = f"sqlite:///{tmp_path / 'team' / 'mlflow.db'}"
    env = {**os.environ, "PYTHONPATH": str(REPO), "MLFLOW_TRACKING_URI": other_store, "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen([sys.executable, "-m", "search.cli", "launch", str(path), "--storage", str(storage),
                             "--name", "eco-c", "--address", ray_local, "--set", "child.epochs=12"],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env)
    layout = SearchLayout(storage / "eco-c")
    deadline = time.monotonic() + 240
    while not any(s.status == "RUNNING" and s.epoch >= 1 for s in
                  (TrialSummary.load_all(layout) if layout.trials_dir.is_dir() else [])):
        assert proc.poll() is None, proc.stdout.read() if proc.stdout else ""
        assert time.monotonic() < deadline, "no trial reached epoch 1"
        time.sleep(0.3)
    assert SearchState.load(layout).mlflow_uri == other_store  # MLFLOW_TRACKING_URI honoured

    assert main(["ls", "--storage", str(storage)]) == 0
    rows = {line.split()[0]: line.split() for line in capsys.readouterr().out.splitlines()[1:]}
    assert rows["eco-a"][1:3] == ["finished", "3/3"] and rows["eco-c"][1:3] == ["running", "0/2"]
    assert rows["eco-a"][3].startswith("child/mig=")

    assert main(["status", "eco-c", "--storage", str(storage)]) == 0
    status = capsys.readouterr().out
    assert status.startswith("search eco-c: running, 0/2 trials done (0 complete, 0 pruned, 0 failed)")
    assert "ETA after the first trial ends" in status and "best: no complete trial yet" in status
    assert "running: trial_0000" in status and "epoch " in status

    assert main(["stop", "eco-c", "--storage", str(storage)]) == 0
    stopped = capsys.readouterr().out
    assert "stopped: eco-c is interrupted; continue with `compvae-search resume" in stopped
    out, _ = proc.communicate(timeout=60)
    assert proc.returncode == 130, out
    assert main(["stop", "eco-c", "--storage", str(storage)]) == 2
    assert "search eco-c is not running (status: interrupted)" in capsys.readouterr().err
    named = {s.trial_id: s.name for s in TrialSummary.load_all(layout)}

    os.environ["MLFLOW_TRACKING_URI"] = "sqlite:///ignored-on-resume.db"  # resume keeps the search's store
    try:
        assert main(["resume", "eco-c", "--storage", str(storage)]) == 0
    finally:
        del os.environ["MLFLOW_TRACKING_URI"]
    resumed = capsys.readouterr().out
    assert "ETA" in resumed and "best child/mig=" in resumed  # the console's outlook
    assert main(["status", "eco-c", "--storage", str(storage)]) == 0
    final = capsys.readouterr().out
    assert final.startswith("search eco-c: finished, 2/2 trials done (2 complete")
    assert "best: child/mig=" in final and not Path("ignored-on-resume.db").exists()
    assert {s.status for s in TrialSummary.load_all(layout)} == {COMPLETED}
    # resume kept every trial's name, and every name is its Optuna trial's number
    after = {s.trial_id: s.name for s in TrialSummary.load_all(layout)}
    assert named and all(after[tid] == name for tid, name in named.items())
    state = SearchState.load(layout)
    study = optuna.load_study(study_name=state.study_name, storage=state.optuna_url)
    assert sorted(after.values()) == [f"trial_{t.number:05d}" for t in study.trials]
    assert all(after[t.user_attrs["tune_trial_id"]] == f"trial_{t.number:05d}" for t in study.trials)


def test_a_busy_shared_sqlite_store_is_journaled_not_fatal(tmp_path):
    """Searches of one storage share its SQLite store; a write that meets another driver's lock
    goes to the journal (replayed later), as an unreachable server's does."""
    import sqlite3

    import sqlalchemy.exc

    from search.tracking.client import unreachable

    busy = sqlalchemy.exc.OperationalError("INSERT ...", {}, sqlite3.OperationalError("database is locked"))
    assert unreachable(busy)
    assert not unreachable(sqlalchemy.exc.OperationalError("INSERT ...", {}, sqlite3.OperationalError("no such table")))


def test_launch_takes_a_file_a_dict_or_a_search_space(tmp_path):
    """The three forms ``search.launch`` accepts give the same space, overrides applied."""
    from search.run.lifecycle import prepare_space
    from search.space import load_space, space_from_dict

    data = _space(num_samples=5)
    path = tmp_path / "eco.yaml"
    path.write_text(yaml.safe_dump(data))
    overrides = {"child.epochs": 4, "search.num_samples": 3}
    spaces = [prepare_space(form, settings=overrides)
              for form in (path, str(path), data, load_space(path), space_from_dict(data))]
    assert all(s.to_dict() == spaces[0].to_dict() for s in spaces)
    assert spaces[0].num_trials == 3 and spaces[0].base_config().child.epochs == 4
