"""A search against an existing cluster (`ray start --head` on 127.0.0.1) logging over HTTP to
`mlflow server`: the deployment shape of a real cluster, on one machine.

The module starts its own head node and MLflow server and stops exactly those processes
(their process groups) afterwards. ``ray stop`` is not used: it stops every Ray process of the
machine, including other sessions' local instances.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import ray
from _services import ray_head_and_mlflow_server
from mlflow.tracking import MlflowClient

from compvae.config import TrialConfig
from search.analysis.results import COMPLETED, TrialSummary
from search.cli import main
from search.layout import SearchLayout, SearchState
from search.tracking.callback import PARENT_HASH_PARAM
from search.tracking.client import TRIAL_ID_TAG


@pytest.fixture(scope="module")
def services(tmp_path_factory, free_port):
    """(ray address, mlflow URI): a head node and an MLflow server, started side by side."""
    assert not ray.is_initialized()
    tmp = tmp_path_factory.mktemp("services")
    with ray_head_and_mlflow_server(tmp, free_port(), free_port()) as services:
        yield services


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
    assert not (layout.storage / "mlflow.db").exists()  # everything went to the server

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
