"""Parent reuse across the trials of a real search (local Ray, real trials, real stores).

A search whose params are only mask and child knobs needs exactly one parent: the first trial
trains it into ``<search>/parents`` and every other trial, concurrent or later, loads it. That
is checked where it is recorded: the trials' ``parent/reused`` metric, the parent store's
folders, the MLflow tag ``parent/reused`` and param ``parent/hash``. The same space with
``--no-parent-reuse`` trains a parent in every trial and leaves no store behind. An exported
config then retrains from scratch with ``compvae train``, or reuses the search's parent with
``--parent-store``.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import optuna
import pytest
import yaml
from _services import local_ray
from mlflow.tracking import MlflowClient

from compvae.cli import main as compvae_main
from compvae.config import TrialConfig
from compvae.parent_store import parent_key
from search.analysis.results import FAILED, TrialSummary
from search.cli import main
from search.layout import SearchLayout, SearchState
from search.run.outer import load_record
from search.tracking.callback import PARENT_HASH_PARAM, PARENT_REUSED

NUM_TRIALS = 4


@pytest.fixture(scope="module")
def ray_local():
    with local_ray() as address:
        yield address


def _mask_and_child_space(tmp: Path, tiny_space: dict[str, Any]) -> Path:
    """The tiny space searching mask and child knobs only; no ASHA, so every trial runs out."""
    space = dict(tiny_space)
    space["params"] = {
        "mask.delta": {"uniform": [1.0, 3.0]},
        "mask.blur_sigma": {"uniform": [0.0, 1.0]},
        "child.beta": {"loguniform": [1.0, 8.0]},
        "child.masking_mode": {"choice": ["loss", "both", "input"]},
    }
    space["search"] = {**space["search"], "num_samples": NUM_TRIALS, "max_concurrent": 2, "scheduler": "none"}
    path = tmp / "space.yaml"
    path.write_text(yaml.safe_dump(space))
    return path


def _search(tmp: Path, space: Path, name: str, *extra: str) -> tuple[SearchLayout, list[TrialSummary]]:
    assert main(["launch", str(space), "--storage", str(tmp / "s"), "--name", name, *extra]) == 0
    layout = SearchLayout(tmp / "s" / name)
    summaries = TrialSummary.load_all(layout)
    assert len(summaries) == NUM_TRIALS
    assert all(s.status != FAILED for s in summaries), [s.error for s in summaries]
    return layout, summaries


def _runs(layout: SearchLayout) -> list[Any]:
    state = SearchState.load(layout)
    return MlflowClient(state.mlflow_uri).search_runs(
        [state.mlflow_experiment_id], filter_string=f"tags.mlflow.parentRunId = '{state.mlflow_parent_run_id}'")


@pytest.fixture(scope="module")
def reuse_search(ray_local, tmp_path_factory, tiny_space):
    tmp = tmp_path_factory.mktemp("reuse")
    return _search(tmp, _mask_and_child_space(tmp, tiny_space), "reuse-on")


def test_a_search_over_mask_and_child_knobs_trains_exactly_one_parent(reuse_search):
    layout, summaries = reuse_search
    configs = [TrialConfig.from_dict(s.config) for s in summaries]
    assert len({(c.mask.delta, c.child.beta) for c in configs}) == NUM_TRIALS  # trials really differ
    keys = {parent_key(c) for c in configs}
    assert len(keys) == 1
    key = keys.pop()

    # metrics: one trial trained the parent (0), every other one reused it (1)
    reused = sorted(s.metrics[PARENT_REUSED] for s in summaries)
    assert reused == [0.0] + [1.0] * (NUM_TRIALS - 1), reused

    # the store: exactly one finished parent, named by its key, and no unfinished leftovers
    entries = sorted(p.name for p in layout.parents_dir.iterdir() if not p.name.endswith(".lock"))
    assert entries == [key], entries
    assert (layout.parents_dir / key / "DONE").is_file() and (layout.parents_dir / key / "parent.pt").is_file()

    # all trials report the same parent metrics (the reusing ones read the cached evaluation)
    assert len({s.metrics["parent/mig"] for s in summaries}) == 1

    # a worker process imports torch and the trial code once: its first trial records the
    # seconds (outside its phases), the trials it runs next find the modules loaded
    by_pid: dict[int, list[tuple[float, float]]] = {}
    for s in summaries:
        first = json.loads((layout.trial_dir(s.name) / "attempts.jsonl").read_text().splitlines()[0])
        imports = json.loads((layout.trial_dir(s.name) / "timings.json").read_text())["breakdown/process_imports_seconds"]
        by_pid.setdefault(first["pid"], []).append((first["time"], imports))
    assert len(by_pid) < NUM_TRIALS  # workers were reused
    for runs_of_worker in by_pid.values():
        runs_of_worker.sort()
        assert runs_of_worker[0][1] > 0.5 and all(i < 0.1 for _, i in runs_of_worker[1:]), runs_of_worker

    # MLflow: the tag mirrors the metric, the param names the shared parent
    runs = _runs(layout)
    assert len(runs) == NUM_TRIALS
    assert sorted(r.data.tags[PARENT_REUSED] for r in runs) == ["0"] + ["1"] * (NUM_TRIALS - 1)
    assert {r.data.params[PARENT_HASH_PARAM] for r in runs} == {key}
    for r in runs:
        assert r.data.metrics[PARENT_REUSED] == float(r.data.tags[PARENT_REUSED])
    parent = MlflowClient(SearchState.load(layout).mlflow_uri).get_run(SearchState.load(layout).mlflow_parent_run_id)
    assert parent.data.tags["search.reuse_parents"] == "true"



def test_reused_workers_and_the_data_cache_give_the_metrics_of_a_trial_run_alone(reuse_search, tmp_path):
    """Trials share worker processes (Tune's reuse_actors) and rendered images (<search>/data):
    each trial's metrics.json is byte-identical to its config run alone in this process, with
    no cache, and a parent from the store only where the trial reused one."""
    from compvae.trial import run_trial

    layout, summaries = reuse_search
    pids = [json.loads(line)["pid"] for s in summaries
            for line in (layout.trial_dir(s.name) / "attempts.jsonl").read_text().splitlines()]
    assert len(set(pids)) < len(pids), pids  # 4 trials, 2 slots: a worker ran more than one
    assert list(layout.data_dir.rglob("*.npy"))
    for s in summaries:
        cfg = TrialConfig.from_dict(s.config)
        store = layout.parents_dir if s.metrics[PARENT_REUSED] == 1.0 else None
        run_trial(cfg, out_dir=tmp_path / s.name, parent_store=store)
        expected = (layout.trial_dir(s.name) / "metrics.json").read_bytes()
        assert (tmp_path / s.name / "metrics.json").read_bytes() == expected, s.name
    # the store's cached parent evaluation against one computed afresh (a trial training its own)
    reused = next(s for s in summaries if s.metrics[PARENT_REUSED] == 1.0)
    run_trial(TrialConfig.from_dict(reused.config), out_dir=tmp_path / "own-parent")
    fresh = json.loads((tmp_path / "own-parent" / "metrics.json").read_text())
    cached = json.loads((layout.trial_dir(reused.name) / "metrics.json").read_text())
    assert fresh.pop(PARENT_REUSED) == 0.0 and cached.pop(PARENT_REUSED) == 1.0
    assert fresh == cached

@pytest.mark.slow
def test_without_reuse_every_trial_trains_its_parent(ray_local, tmp_path, tiny_space):
    layout, summaries = _search(tmp_path, _mask_and_child_space(tmp_path, tiny_space), "reuse-off",
                                "--no-parent-reuse")
    assert [s.metrics[PARENT_REUSED] for s in summaries] == [0.0] * NUM_TRIALS
    assert not layout.parents_dir.exists()
    assert yaml.safe_load(layout.space_file.read_text())["search"]["reuse_parents"] is False
    runs = _runs(layout)
    assert sorted(r.data.tags[PARENT_REUSED] for r in runs) == ["0"] * NUM_TRIALS
    assert len({r.data.params[PARENT_HASH_PARAM] for r in runs}) == 1  # same parent, trained 4 times


def test_exported_config_trains_its_parent_or_takes_the_search_store(reuse_search, tmp_path):
    layout, _ = reuse_search
    assert main(["export", str(layout.root), "--out", str(tmp_path / "export")]) == 0
    best = tmp_path / "export" / "best.yaml"
    assert compvae_main(["train", str(best), "--out", str(tmp_path / "scratch"), "--quiet"]) == 0
    scratch = json.loads((tmp_path / "scratch" / "metrics.json").read_text())
    assert scratch[PARENT_REUSED] == 0.0
    assert compvae_main(["train", str(best), "--out", str(tmp_path / "stored"), "--quiet",
                         "--parent-store", str(layout.parents_dir)]) == 0
    stored = json.loads((tmp_path / "stored" / "metrics.json").read_text())
    assert stored[PARENT_REUSED] == 1.0
    # same seed, same code: the stored parent is the one a fresh run trains
    assert stored["parent/mig"] == pytest.approx(scratch["parent/mig"])
    assert stored["child/mig"] == pytest.approx(scratch["child/mig"])


# ---- the outer level: parents trained up front, the inner search on the strongest ----------
OUTER_BETAS = [1.0, 2.0, 4.0]


@pytest.fixture(scope="module")
def outer_search(ray_local, tmp_path_factory, tiny_space):
    tmp = tmp_path_factory.mktemp("outer")
    path = _mask_and_child_space(tmp, tiny_space)
    space = yaml.safe_load(path.read_text())
    space["params"]["parent.beta"] = {"choice": OUTER_BETAS}
    space["outer"] = {"params": ["parent.beta"], "keep": 2}
    path.write_text(yaml.safe_dump(space))
    return _search(tmp, path, "outer")


def test_outer_level_trains_each_parent_once_up_front_and_searches_the_best(outer_search):
    layout, summaries = outer_search
    record = json.loads(layout.outer_file.read_text())
    assert [p["values"] for p in record["points"]] == [{"parent.beta": b} for b in OUTER_BETAS]
    assert all(not p["reused"] and "error" not in p for p in record["points"])
    # the store holds exactly the three outer parents, each under the key its trials compute
    entries = sorted(p.name for p in layout.parents_dir.iterdir() if not p.name.endswith(".lock"))
    assert entries == sorted(p["key"] for p in record["points"])
    # kept: the two best by parent/mig, in the space's order
    by_mig = sorted(record["points"], key=lambda p: p["metrics"]["parent/mig"], reverse=True)
    best_two = {p["values"]["parent.beta"] for p in by_mig[:2]}
    assert record["kept"] == [b for b in OUTER_BETAS if b in best_two]
    assert load_record(layout) == record  # resume reads it instead of training again

    # every trial reused a kept parent and reports that parent's metrics
    metrics_of = {p["values"]["parent.beta"]: p["metrics"] for p in record["points"]}
    for s in summaries:
        cfg = TrialConfig.from_dict(s.config)
        assert cfg.parent.beta in record["kept"]
        assert s.metrics[PARENT_REUSED] == 1.0
        assert s.metrics["parent/mig"] == pytest.approx(metrics_of[cfg.parent.beta]["parent/mig"])
        assert parent_key(cfg) == next(p["key"] for p in record["points"] if p["values"]["parent.beta"] == cfg.parent.beta)

    # MLflow: the search run says what the outer level did and keeps its record
    state = SearchState.load(layout)
    client = MlflowClient(state.mlflow_uri)
    tags = client.get_run(state.mlflow_parent_run_id).data.tags
    assert tags["outer.parents"] == "3"
    assert tags["outer.kept"] == ", ".join(map(str, record["kept"]))
    assert tags["outer.rank_by"] == "parent/mig (max)"
    assert "outer.json" in [a.path for a in client.list_artifacts(state.mlflow_parent_run_id)]


def test_outer_level_again_finds_every_parent_in_the_store(outer_search):
    """A resumed or repeated outer stage trains nothing: what a crash mid-stage relies on."""
    from search.run.outer import pretrain_parents
    from search.space import load_space

    layout, _ = outer_search
    lines: list[str] = []
    again = pretrain_parents(load_space(layout.space_file), layout, lines.append)
    first = json.loads(layout.outer_file.read_text())
    assert [p["reused"] for p in again["points"]] == [True] * len(OUTER_BETAS)
    assert [p["metrics"] for p in again["points"]] == [p["metrics"] for p in first["points"]]
    assert again["kept"] == first["kept"]
    assert sum("found in the store" in line for line in lines) == len(OUTER_BETAS)


def _records(*entries: tuple[float, float | None]) -> list[dict[str, Any]]:
    return [{"values": {"parent.beta": b}, **({"metrics": {"parent/mig": m}} if m is not None else {"error": "NaN"})}
            for b, m in entries]


def test_outer_keep_ranks_by_the_parent_metric_and_drops_failed_parents(tiny_space):
    from compvae.errors import UserError
    from search.run.outer import _keep
    from search.space import space_from_dict

    space = dict(tiny_space)
    space["params"] = {"parent.beta": {"choice": [1.0, 2.0, 4.0]}, "child.beta": {"uniform": [1.0, 2.0]}}
    space["outer"] = {"params": ["parent.beta"]}
    plain = space_from_dict(space)
    assert _keep(plain, _records((1.0, 0.1), (2.0, 0.3), (4.0, 0.2))) is None  # nothing to narrow
    assert _keep(plain, _records((1.0, 0.1), (2.0, None), (4.0, 0.2))) == [1.0, 4.0]
    space["outer"] = {"params": ["parent.beta"], "keep": 1, "rank_by": {"metric": "parent/mig", "mode": "min"}}
    assert _keep(space_from_dict(space), _records((1.0, 0.1), (2.0, 0.3), (4.0, 0.05))) == [4.0]
    space["outer"]["rank_by"]["mode"] = "max"
    assert _keep(space_from_dict(space), _records((1.0, 0.1), (2.0, 0.3), (4.0, 0.05))) == [2.0]
    with pytest.raises(UserError, match="every parent failed to train"):
        _keep(plain, _records((1.0, None), (2.0, None), (4.0, None)))


def _streamed_space(tmp: Path, tiny_space: dict[str, Any], knob: str, values: list[Any],
                    num_samples: int = NUM_TRIALS) -> Path:
    """A random-sampler space whose outer level is ``knob`` (streamed: pinned trials train the
    parents), 2 trials at a time, no ASHA; written to ``tmp/space.yaml``."""
    space = dict(tiny_space)
    space["params"] = {knob: {"choice": values}, "child.beta": {"uniform": [1.0, 2.0]}}
    space["outer"] = {"params": [knob]}
    space["search"] = {**space["search"], "sampler": "random", "num_samples": num_samples, "max_concurrent": 2,
                       "scheduler": "none"}
    path = tmp / "space.yaml"
    path.write_text(yaml.safe_dump(space))
    return path


# ---- a streamed outer stage: each parent trained by its pinned first trial ------------------------
def test_streamed_outer_stage_has_each_parent_trained_by_its_pinned_trial(ray_local, tmp_path, tiny_space):
    """Without ``keep`` no Ray task trains a parent: the first two trials (pinned to the parents in
    order) start at once and each trains its own through the store, which the stage watches and
    records (who trained it, where, how long); each parent's curve is on the search run and every
    later trial reuses a stored parent."""
    path = _streamed_space(tmp_path, tiny_space, "parent.epochs", [1, 40])
    layout, summaries = _search(tmp_path, path, "streamed")
    record = load_record(layout)
    assert record is not None and record["streamed"] is True and record["kept"] is None
    by_epochs = {p["values"]["parent.epochs"]: p for p in record["points"]}
    assert all("error" not in p and not p["reused"] for p in by_epochs.values())
    assert by_epochs[1]["trial"] == "trial_00000" and by_epochs[40]["trial"] == "trial_00001"
    import ray

    assert all(p["node"] == ray.get_runtime_context().get_node_id() for p in by_epochs.values())
    assert by_epochs[40]["seconds"] > by_epochs[1]["seconds"] > 0
    slow_done = by_epochs[40]["finished_at"]
    assert by_epochs[1]["finished_at"] < slow_done

    # when the gate gave each trial its config: Optuna's ask. Both pins at once: none waits for a parent
    state = SearchState.load(layout)
    study = optuna.load_study(study_name=state.study_name, storage=state.optuna_url)
    asked = {t.number: t for t in study.trials}
    assert asked[0].params["parent.epochs"] == 1 and asked[1].params["parent.epochs"] == 40  # pinned in order
    assert asked[1].datetime_start.timestamp() < by_epochs[1]["finished_at"]
    by_name = {s.name: s for s in summaries}
    assert TrialConfig.from_dict(by_name["trial_00001"].config).parent.epochs == 40
    reused = {name: s.metrics[PARENT_REUSED] for name, s in by_name.items()}
    assert reused == {"trial_00000": 0.0, "trial_00001": 0.0, "trial_00002": 1.0, "trial_00003": 1.0}
    client = MlflowClient(state.mlflow_uri)
    for epochs in (1, 40):
        curve = client.get_metric_history(state.mlflow_parent_run_id, f"parent_train/parent.epochs:{epochs}/loss")
        assert sorted(m.step for m in curve) == list(range(1, epochs + 1))
    tags = client.get_run(state.mlflow_parent_run_id).data.tags
    assert tags["outer.parents"] == "2" and tags["outer.kept"] == "all"


def test_streamed_parent_that_fails_in_its_pinned_trial_is_dropped_and_the_rest_goes_on(ray_local, tmp_path,
                                                                                         tiny_space):
    """A parent that diverges in its pinned trial fails that trial (not retried) and is recorded as
    the stage's failed parent, with the trial's error; the later trials stay on the one that trained."""
    path = _streamed_space(tmp_path, tiny_space, "parent.lr", [0.001, 1.0])
    assert main(["launch", str(path), "--storage", str(tmp_path / "s"), "--name", "onefails"]) == 0
    layout = SearchLayout(tmp_path / "s" / "onefails")
    record = load_record(layout)
    assert record is not None
    by_lr = {p["values"]["parent.lr"]: p for p in record["points"]}
    assert "error" not in by_lr[0.001] and by_lr[0.001]["trial"] == "trial_00000"
    assert by_lr[1.0]["error"] == "trial_00001: TrainingDiverged: step 1: term loss is nan"
    summaries = {s.name: s for s in TrialSummary.load_all(layout)}
    assert summaries["trial_00001"].status == FAILED and summaries["trial_00001"].retries == 0
    later = [s for name, s in summaries.items() if name not in ("trial_00000", "trial_00001")]
    assert len(later) == NUM_TRIALS - 2
    assert all(s.status != FAILED and TrialConfig.from_dict(s.config).parent.lr == 0.001 for s in later)
    state = SearchState.load(layout)
    tags = MlflowClient(state.mlflow_uri).get_run(state.mlflow_parent_run_id).data.tags
    assert tags["outer.kept"] == "all but 1 that failed"


def test_streamed_stage_whose_every_parent_fails_ends_the_search_with_one_line(ray_local, tmp_path, tiny_space,
                                                                              capsys):
    path = _streamed_space(tmp_path, tiny_space, "parent.lr", [0.5, 1.0])
    assert main(["launch", str(path), "--storage", str(tmp_path / "s"), "--name", "allfail"]) == 2
    err = capsys.readouterr().err
    assert "outer level: every parent failed to train (first: parent.lr=0.5: trial_00000: TrainingDiverged" in err
    layout = SearchLayout(tmp_path / "s" / "allfail")
    assert SearchState.load(layout).status == "failed"
    assert len(TrialSummary.load_all(layout)) == 2  # the two pinned trials; no trial on a failed parent


def test_streamed_stage_with_fewer_trials_than_parents_trains_the_rest_as_tasks(ray_local, tmp_path, tiny_space):
    """One trial, two outer parents: the pinned trial trains the first; the second, which no trial
    needed, is trained by the stage at the end (a Ray task), so ``outer.json`` covers both."""
    path = _streamed_space(tmp_path, tiny_space, "parent.beta", [1.0, 2.0], num_samples=1)
    assert main(["launch", str(path), "--storage", str(tmp_path / "s"), "--name", "fewer"]) == 0
    layout = SearchLayout(tmp_path / "s" / "fewer")
    record = load_record(layout)
    assert record is not None and record["streamed"] is True
    first, second = record["points"]
    assert first["values"] == {"parent.beta": 1.0} and first["trial"] == "trial_00000"
    assert second["values"] == {"parent.beta": 2.0} and "trial" not in second and "error" not in second
    assert not first["reused"] and not second["reused"]
    stored = {p.name for p in layout.parents_dir.iterdir() if (p / "DONE").is_file()}
    assert stored == {first["key"], second["key"]}
    assert "parent/mig" in second["metrics"]
