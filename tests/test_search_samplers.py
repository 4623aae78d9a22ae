"""Optuna side without a cluster: seeded samplers, the grid, and how trials reach the study."""

from __future__ import annotations

import itertools
import json

import optuna
import pytest
from optuna.samplers import GPSampler, NSGAIISampler, RandomSampler, TPESampler

from search.run.samplers import TuneGridSampler, make_sampler, make_searcher
from search.space import space_from_dict
from search.space.distributions import distributions


def _space(tiny_space, **search):
    data = dict(tiny_space)
    data["search"] = {**data["search"], **search}
    return space_from_dict(data)


@pytest.mark.parametrize("kind,cls", [("tpe", TPESampler), ("random", RandomSampler), ("gp", GPSampler),
                                      ("nsga2", NSGAIISampler)])
def test_samplers_are_seeded(tiny_space, kind, cls):
    space = _space(tiny_space, sampler=kind, seed=7)
    dists = distributions(space)
    assert isinstance(make_sampler(space), cls)
    assert _draws(space, dists) == _draws(space, dists)
    assert _draws(space, dists) != _draws(space.with_overrides(seed=8), dists)


def _draws(space, dists) -> list[dict]:
    """Four asks of a fresh study with the space's sampler (told increasing values)."""
    study = optuna.create_study(sampler=make_sampler(space), direction="maximize")
    out = []
    for i in range(4):
        trial = study.ask(dists)
        out.append(trial.params)
        study.tell(trial, float(i))
    return out


def test_grid_covers_every_point_once_with_repeats_as_seeds(tiny_space):
    data = dict(tiny_space)
    data["params"] = {"child.masking_mode": {"choice": ["loss", "both"]}, "child.latent_dim": {"int": [3, 4]}}
    data["search"] = {"sampler": "grid", "repeats": 2}
    space = space_from_dict(data)
    assert space.num_trials == 8
    sampler = make_sampler(space)
    assert isinstance(sampler, TuneGridSampler)
    study = optuna.create_study(sampler=sampler)
    dists = distributions(space)
    asked = [study.ask(dists) for _ in range(space.num_trials)]  # concurrent asks, as under Tune
    points = {(t.params["child.masking_mode"], t.params["child.latent_dim"], t.params["train.seed"]) for t in asked}
    assert points == set(itertools.product(["loss", "both"], [3, 4], [0, 1]))
    for t in asked:  # telling the last point must not raise (stock GridSampler calls study.stop())
        study.tell(t, 1.0)
    assert all(t.state.name == "COMPLETE" for t in study.trials)


def test_searcher_prunes_asha_cut_trials_and_skips_epochs_without_objective(tiny_space, tmp_path):
    space = _space(tiny_space)
    url = f"sqlite:///{tmp_path / 'optuna.db'}"
    searcher = make_searcher(space, url, "s")
    for tid in ("a", "b", "c"):
        assert set(searcher.suggest(tid)) == set(space.params)
    searcher.on_trial_result("a", {"epoch": 1, "training_iteration": 1})  # no objective yet: ignored
    searcher.on_trial_result("a", {"epoch": 1, "training_iteration": 1, "child/mig": 0.1})
    searcher.on_trial_complete("a", {"epoch": 2, "training_iteration": 2, "child/mig": 0.3})
    searcher.on_trial_complete("b", {"epoch": 1, "training_iteration": 1, "child/mig": 0.9})  # cut at 1 of 2
    searcher.on_trial_complete("c", error=True)
    study = optuna.load_study(study_name="s", storage=url)  # durable: a new process sees it
    states = [t.state.name for t in sorted(study.trials, key=lambda t: t.number)]
    assert states == ["COMPLETE", "PRUNED", "FAIL"]
    assert study.best_value == pytest.approx(0.3)  # not the truncated 0.9
    assert study.trials[0].intermediate_values == {1: 0.1}


class _Stage:
    """The parts of an outer stage the gate reads and calls (search.run.outer.OuterStage)."""

    def __init__(self, error=None):
        self.error, self.done = error, False
        self.records: list[dict] = []
        self.polls = 0
        self.failures: list[tuple[dict, str]] = []

    @property
    def finished(self):
        return self.done or self.error is not None

    def poll(self):
        self.polls += 1

    def trial_failed(self, point, error):
        self.failures.append((point, error))
        self.records.append({"values": point, "error": error})

    def store(self, point):  # a pinned trial stored its parent and the stage took it in
        self.records.append({"values": point, "key": repr(point)})


def _outer_gate(tiny_space, tmp_path, sampler, root):
    from search.run import gate

    data = dict(tiny_space)
    data["params"] = {"parent.beta": {"choice": [1.0, 2.0, 4.0]}, "child.beta": {"uniform": [1.0, 2.0]}}
    data["outer"] = {"params": ["parent.beta"]}
    data["search"] = {**data["search"], "sampler": sampler, "max_concurrent": 2}
    space = space_from_dict(data)
    url = f"sqlite:///{tmp_path / 'optuna.db'}"
    return gate.ParentGate(make_searcher(space, url, "s"), 2, root, space.outer_points()), url


def _done(g, trial_id, **kwargs):
    g.on_trial_complete(trial_id, kwargs.pop("result", {"child/mig": 0.1, "epoch": 2}), **kwargs)


@pytest.mark.parametrize("sampler", ["tpe", "random"])
def test_gate_pins_the_first_trials_to_the_outer_parents_and_tells_the_stage_a_pin_failed(tiny_space, tmp_path,
                                                                                            sampler):
    """A streamed stage's parents are trained by their pinned trials: no pin waits for a parent;
    a pinned trial that fails is reported to the stage (whose record then drops that parent)."""
    from ray.tune.search import Searcher

    from search.analysis.results import FINAL_FAILURE
    from search.run import gate

    root = str(tmp_path)
    g, url = _outer_gate(tiny_space, tmp_path, sampler, root)
    try:
        gate.register(root, stage := _Stage())
        assert g.suggest("t1")["parent.beta"] == 1.0 and stage.polls == 1  # nothing trained yet: not held
        assert g.suggest("t2")["parent.beta"] == 2.0
        assert g.suggest("t3") is None  # two trials fill both slots
        polls = stage.polls
        g.on_trial_result("t1", {"child/mig": 0.1, "epoch": 1})
        assert stage.polls == polls + 1  # a pinned trial's result: its parent is stored, take it in
        stage.store({"parent.beta": 1.0})
        _done(g, "t1")
        g.on_trial_result("t2", {FINAL_FAILURE: "TrainingDiverged: loss is nan"})  # then it raises
        assert stage.failures == [({"parent.beta": 2.0}, "t2: TrainingDiverged: loss is nan")]
        g.on_trial_complete("t2", error=True)  # Tune passes no result with an error
        assert g.suggest("t3")["parent.beta"] == 4.0  # the last pin
        g.on_trial_complete("t3", error=True)  # a worker that died, its retries spent
        assert stage.failures[-1] == ({"parent.beta": 4.0}, "t3: its worker failed (see the trial's error)")
        seen = []
        for i in range(4, 9):  # the rest stays on the one parent that trained
            seen.append(g.suggest(f"t{i}")["parent.beta"])
            _done(g, f"t{i}")
        assert seen == [1.0] * 5
        assert len(stage.failures) == 3  # t2 twice (the stage keeps the first); unpinned trials report nothing
        gate.register(root, _Stage(error="outer level: every parent failed to train"))
        assert g.suggest("t99") == Searcher.FINISHED
    finally:
        gate.unregister(root)
    study = optuna.load_study(study_name="s", storage=url)
    assert [t.params["parent.beta"] for t in study.trials[:3]] == [1.0, 2.0, 4.0]  # the study recorded the pins
    assert not [t for t in study.trials if t.state == optuna.trial.TrialState.WAITING]  # no pin left over


def test_gate_holds_later_trials_off_a_parent_still_training_once_another_parent_failed(tiny_space, tmp_path):
    """With a parent failed, a later trial goes only to a parent already stored: one still training
    in its pinned trial may fail too (seen: a third trial started on it, then failed with it)."""
    from ray.tune.search import Searcher

    from search.run import gate

    root = str(tmp_path)
    g, _ = _outer_gate(tiny_space, tmp_path, "tpe", root)
    try:
        gate.register(root, stage := _Stage())
        assert [g.suggest(t)["parent.beta"] for t in ("t1", "t2")] == [1.0, 2.0]
        stage.trial_failed({"parent.beta": 1.0}, "t1: TrainingDiverged")
        g.on_trial_complete("t1", error=True)
        assert g.suggest("t3")["parent.beta"] == 4.0  # a pin trains its own parent: not held
        stage.trial_failed({"parent.beta": 4.0}, "t3: TrainingDiverged")
        g.on_trial_complete("t3", error=True)
        assert g.suggest("t4") is None and g.suggest("t4") is None  # 2.0 is still training in t2
        stage.store({"parent.beta": 2.0})
        assert g.suggest("t4")["parent.beta"] == 2.0
        stage.error = "outer level: every parent failed to train"
        assert g.suggest("t5") == Searcher.FINISHED
    finally:
        gate.unregister(root)


def test_gate_configs_are_the_same_with_and_without_a_streamed_stage(tiny_space, tmp_path):
    """The same seed gives the same trials with a streamed stage as without reuse (no stage:
    the pins apply alike), while the sampler is random."""
    from search.run import gate

    def run(folder, staged):
        folder.mkdir()
        g, _ = _outer_gate(tiny_space, folder, "tpe", str(folder) if staged else None)
        if staged:
            gate.register(str(folder), _Stage())
        configs = []
        try:
            for step in range(6):
                configs.append(g.suggest(f"t{step}"))
                _done(g, f"t{step}")
        finally:
            gate.unregister(str(folder))
        return configs

    staged = run(tmp_path / "a", True)
    assert [c["parent.beta"] for c in staged[:3]] == [1.0, 2.0, 4.0]
    assert run(tmp_path / "b", False) == staged


def _tune_trial(trial_id: str, counter: int, root):
    """A Tune ``Trial`` built as Tune builds one after ``suggest`` (its names from
    ``trial_name``), stored in the search folder ``root``; a stub, so no Ray is started."""
    from ray.train._internal.storage import StorageContext
    from ray.tune.experiment import Trial

    from search.run.trainable import trial_name

    storage = StorageContext(storage_path=str(root), experiment_dir_name="tune")
    return Trial("trial_fn", trial_id=trial_id, experiment_tag=f"{counter}_x=1", stub=True, storage=storage,
                 trial_name_creator=trial_name, trial_dirname_creator=trial_name)


def test_trial_names_are_optuna_numbers_across_drivers(tiny_space, tmp_path):
    """``trial_00000`` is Optuna trial 0: the searcher records each number, the name follows it.
    A second driver (resume: a new searcher on the same study) names its trials by the numbers
    it gets; one the first driver asked for and lost leaves a gap, never a shared name."""
    from search.layout import SearchLayout
    from search.run.trainable import trial_name

    space = _space(tiny_space)
    url = f"sqlite:///{tmp_path / 'optuna.db'}"
    first = make_searcher(space, url, "s")
    names = {}
    for counter, tid in enumerate(("n1-a", "n1-b", "n1-lost"), start=1):  # Tune's counter is 1-based
        first.suggest(tid)
        names[tid] = _tune_trial(tid, counter, tmp_path)
    assert {tid: (t.custom_trial_name, t.custom_dirname) for tid, t in names.items()} == {
        "n1-a": ("trial_00000", "trial_00000"), "n1-b": ("trial_00001", "trial_00001"),
        "n1-lost": ("trial_00002", "trial_00002")}
    assert trial_name(names["n1-b"]) == "trial_00001"  # asked again: the same name
    study = optuna.load_study(study_name="s", storage=url)
    by_id = {t.user_attrs["tune_trial_id"]: t.number for t in study.trials}
    assert all(t.custom_trial_name == f"trial_{by_id[tid]:05d}" for tid, t in names.items())

    # the driver dies; its trial n1-lost had started (a folder), the restored searcher's counter
    # says 3 trials. The next driver's trial is Optuna trial 3: its own name, not the lost one's.
    SearchLayout(tmp_path).trial_dir("trial_00002").mkdir(parents=True)
    second = make_searcher(space, url, "s")
    second.suggest("n2-new")
    assert _tune_trial("n2-new", 3, tmp_path).custom_trial_name == "trial_00003"

    # a name that would meet an existing trial folder is made unique (the number leads it)
    SearchLayout(tmp_path).trial_dir("trial_00004").mkdir()
    second.suggest("n2-clash")
    assert _tune_trial("n2-clash", 4, tmp_path).custom_trial_name == "trial_00004_n2-clash"
    # no recorded number (another searcher): Tune's counter, also never a name already given
    assert _tune_trial("n2-plain", 9, tmp_path).custom_trial_name == "trial_00009"
    assert _tune_trial("n2-again", 1, tmp_path).custom_trial_name == "trial_00001_n2-again"


def test_a_lost_trials_folder_moves_aside_when_the_resumed_search_ends(tiny_space, tmp_path):
    """A trial a killed driver lost (started, never in Tune's snapshot) keeps its number as a gap:
    at the end of the resumed search its RUNNING summary says LOST and its folder moves to
    ``lost_trials/``, so ``trials/`` holds only the trials Tune knows."""
    from types import SimpleNamespace

    from search.analysis.results import LOST, TrialSummary
    from search.layout import SearchLayout
    from search.tracking.summary import SummaryCallback

    layout = SearchLayout(tmp_path)
    TrialSummary(trial_id="kept", name="trial_00000", status="COMPLETED", epoch=2).save(layout)
    TrialSummary(trial_id="lost", name="trial_00001", epoch=1).save(layout)
    TrialSummary(trial_id="new", name="trial_00002", epoch=1).save(layout)  # running in this driver
    SummaryCallback(str(tmp_path), tiny_space).on_experiment_end(
        [SimpleNamespace(trial_id="kept"), SimpleNamespace(trial_id="new")])
    assert [(s.name, s.status) for s in TrialSummary.load_all(layout)] == [
        ("trial_00000", "COMPLETED"), ("trial_00002", "RUNNING")]
    moved = tmp_path / "lost_trials" / "trial_00001-lost" / "summary.json"
    assert TrialSummary(**json.loads(moved.read_text())).status == LOST


def test_gate_adopts_trials_a_killed_driver_finished_after_tunes_last_snapshot(tiny_space, tmp_path):
    """Tune's snapshot knows t1; t2 and t3 finished before the driver died (told to the study; t3's
    summary not yet saved final). The resumed gate counts both towards num_samples instead of
    letting Tune replace them, and their summaries end as the study recorded them."""
    from ray.tune.search import Searcher

    from search.analysis.results import COMPLETED, RUNNING, TrialSummary
    from search.layout import SearchLayout
    from search.run import gate

    layout = SearchLayout(tmp_path / "search")
    url = f"sqlite:///{tmp_path / 'optuna.db'}"
    space = _space(tiny_space)

    def new_gate():
        return gate.ParentGate(make_searcher(space, url, "s"), 2, search=str(layout.root), num_samples=4)

    first = new_gate()
    assert first.suggest("t1") is not None
    snapshot, searcher_file = first.get_state(), tmp_path / "searcher.pkl"
    first.searcher.save(str(searcher_file))  # Tune's last snapshot: t1 only
    for i, tid in enumerate(("t2", "t3"), start=1):
        assert first.suggest(tid) is not None
        TrialSummary(trial_id=tid, name=f"trial_{i:05d}", status=COMPLETED if tid == "t2" else RUNNING,
                     epoch=2, final_epoch=2).save(layout)
        first.on_trial_complete(tid, {"child/mig": 0.2, "epoch": 2})  # the study's tell; then SIGKILL
        if tid == "t2":
            first.on_trial_complete("t1", {"child/mig": 0.1, "epoch": 2})

    resumed = new_gate()  # what Tuner.restore rebuilds: the pickled gate, then the snapshot's state
    resumed.set_state(snapshot)
    resumed.searcher.restore(str(searcher_file))
    assert resumed.suggest("t4") is not None  # t1 (restarted by Tune) + t2, t3 adopted + t4 = 4
    assert resumed.suggest("t5") == Searcher.FINISHED
    by_id = {s.trial_id: s for s in TrialSummary.load_all(layout)}
    assert by_id["t2"].adopted and by_id["t3"].adopted
    assert by_id["t3"].status == COMPLETED  # the study told it COMPLETE at its last epoch



def test_a_gate_pickled_before_the_adoption_fields_still_suggests(tiny_space, tmp_path):
    """Tune's tuner.pkl of a search launched by an older release holds a gate without ``search``,
    ``num_samples`` and ``_adopted``: resuming it must suggest as before (no adoption)."""
    import pickle

    from search.run import gate

    g = gate.ParentGate(make_searcher(_space(tiny_space), f"sqlite:///{tmp_path / 'optuna.db'}", "s"), 2)
    for name in ("search", "num_samples", "_adopted"):
        del g.__dict__[name]
    old = pickle.loads(pickle.dumps(g))
    assert set(old.suggest("t1")) == set(_space(tiny_space).params)
