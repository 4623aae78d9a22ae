"""``scheduler.order: trial``: ASHA's cuts are the same whatever order the rung results arrive in.

A small event simulation drives the scheduler as Tune's controller does (slots, trials started in
creation order, per-epoch results, STOP/CONTINUE/NOOP, a held trial resumed later), with random
epoch durations; the real-Tune test at the end pins the hold and the resume on Ray itself.
"""

from __future__ import annotations

import heapq
import random

import numpy as np
import pytest
from ray.tune.experiment import Trial
from ray.tune.schedulers import ASHAScheduler, TrialScheduler

from search.run.asha import TrialOrderAsha, milestones

MAX_T, GRACE, RF = 12, 2, 2.0


class FakeTrial:
    def __init__(self, index: int) -> None:
        self.trial_id = f"t{index}"
        self.index = index
        self.status = Trial.PENDING
        self.last_result: dict = {}


class Simulation:
    """Tune's controller, reduced to what a scheduler sees: ``slots`` trials at a time."""

    def __init__(self, scheduler, rewards: list[list[float]], slots: int, seed: int) -> None:
        self.s, self.rewards, self.slots = scheduler, rewards, slots
        self.rng = random.Random(seed)
        self.trials = [FakeTrial(i) for i in range(len(rewards))]
        self.now, self.events, self.epoch = 0.0, [], {t.trial_id: 0 for t in self.trials}
        self.holds = 0

    # the two controller calls a scheduler makes
    def stop_trial(self, trial: FakeTrial) -> None:
        trial.status = Trial.TERMINATED
        self.s.on_trial_complete(self, trial, trial.last_result)
        self._fill()

    def _schedule_trial_train(self, trial: FakeTrial) -> None:
        self._next(trial)

    def _next(self, trial: FakeTrial) -> None:
        heapq.heappush(self.events, (self.now + self.rng.uniform(0.5, 1.5), trial.index))

    def _fill(self) -> None:
        running = sum(t.status == Trial.RUNNING for t in self.trials)
        for t in self.trials:
            if running >= self.slots:
                break
            if t.status == Trial.PENDING:
                t.status = Trial.RUNNING
                self.s.on_trial_add(self, t)
                self._next(t)
                running += 1

    def run(self) -> dict[int, int]:
        self._fill()
        while self.events:
            self.now, i = heapq.heappop(self.events)
            t = self.trials[i]
            if t.status != Trial.RUNNING:
                continue
            self.epoch[t.trial_id] += 1
            e = self.epoch[t.trial_id]
            t.last_result = {"epoch": e, "score": self.rewards[i][e - 1]}
            decision = self.s.on_trial_result(self, t, dict(t.last_result))
            if decision == TrialScheduler.STOP or (decision == TrialScheduler.CONTINUE and e >= MAX_T):
                self.stop_trial(t)
            elif decision == TrialScheduler.CONTINUE:
                self._next(t)
            else:
                assert decision == TrialScheduler.NOOP
                self.holds += 1
        assert all(t.status == Trial.TERMINATED for t in self.trials), "a trial was left held"
        return {t.index: self.epoch[t.trial_id] for t in self.trials}


def rewards(n: int, seed: int) -> list[list[float]]:
    rng = np.random.default_rng(seed)
    return [list(np.cumsum(rng.normal(0.05, 0.1, MAX_T))) for _ in range(n)]


def ordered() -> TrialOrderAsha:
    return TrialOrderAsha(time_attr="epoch", metric="score", mode="max", max_t=MAX_T, grace_period=GRACE,
                          reduction_factor=RF)


def tunes_asha() -> ASHAScheduler:
    return ASHAScheduler(time_attr="epoch", metric="score", mode="max", max_t=MAX_T, grace_period=GRACE,
                         reduction_factor=RF, stop_last_trials=False)


def test_rungs_are_placed_as_tunes_asha_places_them():
    assert milestones(2, 12, 2.0) == [2, 4, 8]
    assert milestones(1, 12, 3.0, bracket=1) == [3, 9]
    assert [m for m, _ in reversed(tunes_asha()._brackets[0]._rungs)] == milestones(GRACE, MAX_T, RF)


@pytest.mark.parametrize("curves", [0, 1, 2])
def test_the_same_trials_are_cut_at_the_same_epochs_whatever_order_results_arrive(curves):
    scores = rewards(8, curves)
    # one slot: results arrive in trial order, where Tune's ASHA and this one must agree
    reference = Simulation(tunes_asha(), scores, slots=1, seed=0).run()
    assert Simulation(ordered(), scores, slots=1, seed=0).run() == reference
    assert min(reference.values()) < MAX_T  # the curves make ASHA cut something
    runs = [Simulation(ordered(), scores, slots=3, seed=s) for s in range(40)]
    assert all(r.run() == reference for r in runs)
    assert sum(r.holds for r in runs) > 0  # early results did arrive and were held


def test_tunes_asha_cuts_by_arrival_order_on_the_same_curves():
    """The problem the ordered scheduler removes: the same curves, other epoch timings, other cuts."""
    scores = rewards(8, 0)
    outcomes = {tuple(sorted(Simulation(tunes_asha(), scores, slots=3, seed=s).run().items())) for s in range(40)}
    assert len(outcomes) > 1


def test_a_held_trial_is_released_when_the_earlier_trial_fails():
    s, sim = ordered(), Simulation(ordered(), [[0.0] * MAX_T] * 2, slots=2, seed=0)
    sim.s = s
    a, b = sim.trials
    for t in (a, b):
        t.status = Trial.RUNNING
        s.on_trial_add(sim, t)
    b.last_result = {"epoch": 2, "score": 1.0}
    assert s.on_trial_result(sim, b, b.last_result) == TrialScheduler.NOOP  # a may still reach epoch 2
    a.status = Trial.ERROR
    s.on_trial_error(sim, a)
    assert sim.events and sim.events[0][1] == b.index  # b was sent its next train()


def test_no_hold_on_an_earlier_trial_that_is_not_running():
    """A pending or restarting earlier trial may need the held trial's slot: judge at once."""
    s, sim = ordered(), Simulation(ordered(), [[0.0] * MAX_T] * 2, slots=2, seed=0)
    a, b = sim.trials
    for t in (a, b):
        s.on_trial_add(sim, t)
    b.status = Trial.RUNNING  # a stays PENDING
    assert s.on_trial_result(sim, b, {"epoch": 2, "score": 1.0}) == TrialScheduler.CONTINUE


def test_a_later_trials_result_never_sets_an_earlier_trials_cut_off():
    s, sim = ordered(), Simulation(ordered(), [[0.0] * MAX_T] * 3, slots=3, seed=0)
    a, b, c = sim.trials
    for t in (a, b, c):
        s.on_trial_add(sim, t)
    c.status, b.status = Trial.RUNNING, Trial.PENDING  # b pending: c is judged at once
    a.status = Trial.TERMINATED
    s.on_trial_complete(sim, a, {"epoch": 1, "score": 0.0})  # a ended before the rung
    assert s.on_trial_result(sim, c, {"epoch": 2, "score": 5.0}) == TrialScheduler.CONTINUE
    b.status = Trial.RUNNING
    # b comes after c but was created before it: c's 5.0 is not in b's rung
    assert s.on_trial_result(sim, b, {"epoch": 2, "score": 1.0}) == TrialScheduler.CONTINUE


def _real_tune_epochs(scheduler, storage) -> dict[bool, int]:
    from ray import tune
    from ray.tune.logger import JsonLoggerCallback

    def timed(config: dict) -> None:  # defined here so that Ray pickles it by value
        """Trial 0 is slow and scores low, trial 1 fast and high: trial 1 reaches every rung first."""
        import time

        for epoch in range(1, 4):
            time.sleep(0.05 if config["fast"] else 0.8)
            tune.report({"epoch": epoch, "score": 1.0 if config["fast"] else 0.0})

    tuner = tune.Tuner(
        timed,
        param_space={"fast": tune.grid_search([False, True])},  # trial 0 slow
        tune_config=tune.TuneConfig(scheduler=scheduler, max_concurrent_trials=2, reuse_actors=True),
        run_config=tune.RunConfig(storage_path=str(storage), verbose=0, callbacks=[JsonLoggerCallback()]),
    )
    return {r.config["fast"]: int(r.metrics["epoch"]) for r in tuner.fit()}


def test_on_real_tune_a_held_trial_is_resumed_and_the_earlier_trial_judged_first(tmp_path):
    from _services import local_ray

    def asha(cls, **kw):
        return cls(time_attr="epoch", metric="score", mode="max", max_t=3, grace_period=1, reduction_factor=2, **kw)

    with local_ray():
        # arrival order: trial 1's epoch-1 result comes first and sets the cut-off trial 0 misses
        assert _real_tune_epochs(asha(ASHAScheduler, stop_last_trials=False), tmp_path / "a") == {False: 1, True: 3}
        # trial order: trial 1 waits at each rung for trial 0, which is judged against no one
        assert _real_tune_epochs(asha(TrialOrderAsha), tmp_path / "b") == {False: 3, True: 3}


@pytest.mark.parametrize("order, cls", [(None, TrialOrderAsha), ("trial", TrialOrderAsha), ("arrival", ASHAScheduler)])
def test_the_spaces_order_picks_the_scheduler(tiny_space, order, cls):
    from search.run.tuner import _scheduler
    from search.space import space_from_dict

    asha = {"type": "asha", "grace_period": 1, "reduction_factor": 2, **({"order": order} if order else {})}
    space = space_from_dict({**tiny_space, "search": {**tiny_space["search"], "scheduler": asha}}, source="t")
    assert type(_scheduler(space)) is cls
