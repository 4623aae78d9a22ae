"""Optuna side without a cluster: seeded samplers, the grid, and how trials reach the study."""

from __future__ import annotations

import itertools

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
