"""What every search must leave behind, whatever happened during it: each trial exactly once in
Tune, the Optuna study and MLflow, nothing left RUNNING. Shared by the fault and soak tests."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import optuna
import yaml
from mlflow.tracking import MlflowClient
from ray.tune import ExperimentAnalysis

from search.analysis.results import COMPLETED, FAILED, TrialSummary
from search.layout import SearchLayout, SearchState
from search.tracking.client import TRIAL_ID_TAG


def check_stores(layout: SearchLayout, client: MlflowClient | None = None) -> dict[str, Any]:
    """Every trial ends exactly once in Tune, Optuna and MLflow; the parent run is closed and no
    run is left RUNNING. Returns the nested runs by trial name."""
    state = SearchState.load(layout)
    assert state.status == "finished"
    summaries = TrialSummary.load_all(layout)
    analysis = ExperimentAnalysis(str(layout.tune_dir))
    # a trial a killed driver finished after Tune's last snapshot is adopted: Tune forgot it
    assert sorted(t.trial_id for t in analysis.trials) == sorted(s.trial_id for s in summaries if not s.adopted)
    tune_status = {t.trial_id: t.status for t in analysis.trials}
    for s in (s for s in summaries if not s.adopted):
        assert tune_status[s.trial_id] == ("ERROR" if s.status == FAILED else "TERMINATED"), (s.name, s.status)
    study = optuna.load_study(study_name=state.study_name, storage=state.optuna_url)
    assert "RUNNING" not in {t.state.name for t in study.trials}
    # a SIGKILL between Optuna's ask and Tune's snapshot orphans a study trial: closed as FAIL
    owned = [t for t in study.trials if "orphaned" not in t.user_attrs]
    assert all(t.state.name == "FAIL" for t in study.trials if "orphaned" in t.user_attrs)
    assert len(owned) == len(summaries)
    assert sorted(t.state.name for t in owned) == sorted(
        "FAIL" if s.status == FAILED else "COMPLETE" for s in summaries)
    client = client or MlflowClient(state.mlflow_uri)
    assert client.get_run(state.mlflow_parent_run_id).info.status == "FINISHED"
    runs = client.search_runs([state.mlflow_experiment_id],
                              filter_string=f"tags.mlflow.parentRunId = '{state.mlflow_parent_run_id}'")
    # the same SIGKILL can orphan the lost trial's MLflow run: closed KILLED and tagged, as above
    assert all(r.info.status == "KILLED" for r in runs if "orphaned" in r.data.tags)
    runs = [r for r in runs if "orphaned" not in r.data.tags]
    assert sorted(r.data.tags[TRIAL_ID_TAG] for r in runs) == sorted(s.trial_id for s in summaries)  # no dupes
    by_name = {r.info.run_name: r for r in runs}
    for s in summaries:
        run = by_name[s.name]
        assert run.info.status == ("FAILED" if s.status == FAILED else "FINISHED"), (s.name, run.info.status)
        assert s.mlflow_run_id == run.info.run_id
        if s.status == COMPLETED:  # each epoch logged exactly once
            steps = [m.step for m in client.get_metric_history(run.info.run_id, "child/train_loss")]
            assert steps == list(range(1, s.epoch + 1)), (s.name, steps)
    return by_name


def write_tiny_space(tmp: Path, name: str, params: dict[str, Any], extra: dict[str, Any] | None = None,
                     **search: Any) -> Path:
    """A grid space on the tiny preset (the grid fixes which trial gets which value), written to
    ``tmp/space.yaml``; ``search`` overrides the search section, ``extra`` adds top-level keys."""
    data = {
        "name": name, "preset": "tiny", **(extra or {}),
        "params": params,
        "objective": {"metric": "child/mig", "mode": "max"},
        "search": {"sampler": "grid", "max_concurrent": 2, "max_failures": 1, "scheduler": "none",
                   "resources": {"cpus": 1, "gpus": 0}, **search},
    }
    path = tmp / "space.yaml"
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path
