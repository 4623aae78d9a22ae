"""The deployment's real components end to end: `ray start --head`, `mlflow server`, a browser.

A tiny search is launched with ``--address`` against a head node started by ``ray start`` on
127.0.0.1 and logs over HTTP to ``mlflow server`` (SQLite backend). The test then reads what a
user would read: the MLflow REST API (experiment, parent run, nested trial runs with their
params, tags and metrics) and the MLflow UI in headless Chromium, where the parent run is
listed and, expanded, its trial runs. The screenshot is kept under ``test-artifacts/ui/`` at
the repository root (CI keeps that folder as an artifact).

Chromium (Debian packages ``chromium`` and ``chromium-driver``) and selenium (the ``test``
extra) are needed for the browser test; without them it is skipped on a developer machine and
fails under CI (``CI=true``), so CI can never silently skip it. ``.ci/run`` installs them.

Clean-up stops exactly the process groups this module started; under CI it also runs
``ray stop`` (the issue's recipe). Outside CI ``ray stop`` is not run: it stops every Ray
process of the machine, including other sessions' clusters.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import tempfile
import time
import urllib.parse
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import ray
from _services import ray_head_and_mlflow_server

from compvae.config import TrialConfig
from search.analysis.results import TrialSummary
from search.cli import main
from search.layout import SearchLayout, SearchState
from search.tracking.callback import PARENT_HASH_PARAM, PARENT_REUSED
from search.tracking.client import TRIAL_ID_TAG

pytestmark = pytest.mark.slow  # ~2.5 min on 2 cores: .ci/run's slow pass

ARTIFACTS = Path(__file__).resolve().parents[1] / "test-artifacts" / "ui"
IN_CI = os.environ.get("CI", "").lower() in ("1", "true", "yes")
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
CHROMEDRIVER = shutil.which("chromedriver")
CHROME_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                "--disable-component-update", "--disable-sync", "--no-first-run", "--disable-dev-shm-usage",
                "--window-size=1600,1000"]
NUM_TRIALS = 3








def _api(base: str, path: str, body: dict[str, Any] | None = None, **query: str) -> dict[str, Any]:
    """GET (query) or POST (JSON body) one MLflow REST endpoint, as any HTTP client would."""
    url = f"{base}/api/2.0/mlflow/{path}"
    if query:
        url += "?" + urllib.parse.urlencode(query)
    data = json.dumps(body).encode() if body is not None else None
    req = urllib.request.Request(url, data=data, method="POST" if data else "GET",
                                 headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=30) as resp:
        return json.loads(resp.read())


def _kv(items: list[dict[str, Any]] | None) -> dict[str, Any]:
    return {x["key"]: x["value"] for x in items or []}


@pytest.fixture(scope="module")
def real_stack(tmp_path_factory, free_port, tiny_space) -> Iterator[tuple[SearchLayout, SearchState, str]]:
    """(search layout, its state, MLflow URL) of a finished search on a `ray start` cluster."""
    assert not ray.is_initialized()
    tmp = tmp_path_factory.mktemp("stack")
    with ray_head_and_mlflow_server(tmp, free_port(), free_port(), ray_stop=IN_CI) as (address, mlflow_url):
        space = dict(tiny_space)
        space["search"] = {**space["search"], "num_samples": NUM_TRIALS, "scheduler": "none"}
        space_file = tmp / "space.yaml"
        space_file.write_text(json.dumps(space))  # JSON is YAML
        env_address = os.environ.pop("RAY_ADDRESS", None)  # --address alone must select the cluster
        try:
            rc = main(["launch", str(space_file), "--storage", str(tmp / "s"), "--name", "ui-search",
                       "--address", address, "--mlflow-uri", mlflow_url])
        finally:
            if env_address is not None:
                os.environ["RAY_ADDRESS"] = env_address
        assert rc == 0
        layout = SearchLayout(tmp / "s" / "ui-search")
        yield layout, SearchState.load(layout), mlflow_url


def test_search_ran_on_the_ray_start_cluster(real_stack):
    layout, state, _ = real_stack
    port = state.ray_address.rsplit(":", 1)[1] if state.ray_address else "?"
    summaries = TrialSummary.load_all(layout)
    assert len(summaries) == NUM_TRIALS
    for s in summaries:
        lines = (layout.trial_dir(s.name) / "attempts.jsonl").read_text().splitlines()
        assert all(json.loads(x)["ray"].endswith(f":{port}") for x in lines), lines
    assert not (layout.storage / "mlflow.db").exists()  # everything went to the server


def test_rest_api_serves_the_parent_and_nested_runs(real_stack):
    layout, state, url = real_stack
    exp = _api(url, "experiments/get-by-name", experiment_name="tiny")["experiment"]
    assert exp["experiment_id"] == state.mlflow_experiment_id
    assert _kv(exp.get("tags"))["mlflow.experimentKind"] == "custom_model_development"

    parent = _api(url, "runs/get", run_id=state.mlflow_parent_run_id)["run"]
    assert parent["info"]["run_name"] == "ui-search" and parent["info"]["status"] == "FINISHED"
    ptags = _kv(parent["data"].get("tags"))
    assert ptags["ray.address"] == state.ray_address and ptags["search.reuse_parents"] == "true"

    found = _api(url, "runs/search", {
        "experiment_ids": [exp["experiment_id"]],
        "filter": f"tags.mlflow.parentRunId = '{state.mlflow_parent_run_id}'",
        "max_results": 100})["runs"]
    summaries = {s.trial_id: s for s in TrialSummary.load_all(layout)}
    assert sorted(_kv(r["data"]["tags"])[TRIAL_ID_TAG] for r in found) == sorted(summaries)
    reused = []
    for r in found:
        tags, params, metrics = _kv(r["data"]["tags"]), _kv(r["data"]["params"]), _kv(r["data"]["metrics"])
        s = summaries[tags[TRIAL_ID_TAG]]
        assert r["info"]["run_name"] == s.name and r["info"]["status"] == "FINISHED"
        assert set(params) == set(TrialConfig().flat()) | {PARENT_HASH_PARAM}
        assert params["child.masking_mode"] == s.config["child"]["masking_mode"]
        assert metrics["child/mig"] == pytest.approx(s.metrics["child/mig"])
        assert metrics[PARENT_REUSED] == float(tags[PARENT_REUSED])
        reused.append(tags[PARENT_REUSED])
        arts = {a["path"] for a in _api(url, "artifacts/list", run_id=r["info"]["run_id"]).get("files", [])}
        assert {"config.yaml", "metrics.json", "weights"} <= arts, arts
    assert sorted(reused) == ["0"] + ["1"] * (NUM_TRIALS - 1)  # one parent for the tiny space's knobs


def _browser() -> Any:
    """A headless Chromium under selenium, or a skip (a failure under CI) naming what is missing."""
    missing = [name for name, found in (("chromium", CHROMIUM), ("chromedriver", CHROMEDRIVER)) if not found]
    try:
        from selenium import webdriver
        from selenium.webdriver.chrome.service import Service
    except ImportError:
        missing.append("selenium (pip install -e '.[test]')")
    if missing:
        msg = f"{', '.join(missing)} not installed (apt-get install -y chromium chromium-driver)"
        if IN_CI:
            pytest.fail(f"CI must run the browser test: {msg}")
        pytest.skip(msg)
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in CHROME_FLAGS:
        options.add_argument(flag)
    options.add_argument(f"--user-data-dir={tempfile.mkdtemp(prefix='chromium-')}")
    return webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)


def _wait_text(driver: Any, texts: list[str], timeout: float = 60) -> str:
    from selenium.webdriver.common.by import By

    deadline = time.monotonic() + timeout
    while True:
        body = driver.find_element(By.TAG_NAME, "body").text
        if all(t in body for t in texts):
            return body
        if time.monotonic() > deadline:
            raise AssertionError(f"MLflow UI never showed {texts}; page text: {body[:1500]}")
        time.sleep(0.5)


def test_experiment_link_opens_on_its_runs_table(real_stack, capsys):
    """The link `compvae-search ui` prints opens the runs table (no click on "Model training":
    MLflow 3.17 picks the mode by a UI-wide switch, not the experiment's kind tag), with the
    Source and Dataset columns filled (MLflow's context tags, the logged dataset)."""
    layout, state, url = real_stack
    assert main(["ui", str(layout.root)]) == 0
    link = capsys.readouterr().out.strip().rsplit(" ", 1)[1]
    assert link == f"{url}/#/experiments/{state.mlflow_experiment_id}/runs?workflowType=machine_learning"
    driver = _browser()
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    try:
        driver.get(link)
        body = _wait_text(driver, ["ui-search", f"{NUM_TRIALS + 1} matching runs", "Dataset", "Source"])
        assert "Token Usage" not in body  # not the GenAI overview
        assert re.search(r"shapes \([0-9a-f]{12}\)", body), body[:1500]  # the Dataset column
    finally:
        driver.save_screenshot(str(ARTIFACTS / "mlflow_experiment.png"))
        (ARTIFACTS / "mlflow_experiment.txt").write_text(driver.find_element("tag name", "body").text)
        driver.quit()


def test_mlflow_ui_lists_the_parent_run_and_its_trials(real_stack):
    from selenium.webdriver.common.by import By

    layout, state, url = real_stack
    trials = sorted(s.name for s in TrialSummary.load_all(layout))
    driver = _browser()
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    shot = ARTIFACTS / "mlflow_runs.png"
    try:
        driver.get(f"{url}/#/experiments/{state.mlflow_experiment_id}/runs")
        _wait_text(driver, ["ui-search", f"{NUM_TRIALS + 1} matching runs"])
        # Nested runs start collapsed under their parent: expand it with the row's "+" button.
        link = driver.find_element(By.LINK_TEXT, "ui-search")
        row = link.find_element(By.XPATH, "ancestor::div[contains(@class,'ag-cell')][1]")
        row.find_element(By.CSS_SELECTOR, "button[data-component-id*='runnamecellrenderer']").click()
        body = _wait_text(driver, ["ui-search", *trials])
        assert link.get_attribute("href").endswith(f"/runs/{state.mlflow_parent_run_id}")
        for name in trials:
            href = driver.find_element(By.LINK_TEXT, name).get_attribute("href")
            assert f"#/experiments/{state.mlflow_experiment_id}/runs/" in href, href
    finally:
        driver.save_screenshot(str(shot))
        (ARTIFACTS / "mlflow_runs.txt").write_text(driver.find_element(By.TAG_NAME, "body").text)
        driver.quit()
    assert shot.stat().st_size > 10_000
    assert body.index("ui-search") < min(body.index(t) for t in trials)  # children listed under it
