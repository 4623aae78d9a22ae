"""ASHA whose cuts do not depend on the order results arrive (``scheduler.order: trial``).

Tune's ASHA judges each rung result against the rung as it stands when the result arrives, so two
trials reaching a rung a second apart are cut or kept by which came first: the same space and seed
stop different trials from run to run. Here a trial is judged against the rung results of the
trials created before it only, and a result that arrives before those of earlier trials still
running is held (Tune's NOOP: the trial waits in its ``report``) until they arrive. Every decision
is then the one ASHA makes when results arrive in trial order. Rationale: docs/design.md.
"""

from __future__ import annotations

import math
import warnings
from typing import Any

import numpy as np
from ray.tune.experiment import Trial
from ray.tune.schedulers import FIFOScheduler, TrialScheduler

from compvae.compat import tune_resume_held_trial


def milestones(grace_period: int, max_t: int, reduction_factor: float, bracket: int = 0) -> list[float]:
    """A bracket's rungs, ascending, exactly as Tune's ASHA places them."""
    count = int(np.log(max_t / grace_period) / np.log(reduction_factor) - bracket + 1)
    return [grace_period * reduction_factor ** (k + bracket) for k in range(count)]


class TrialOrderAsha(FIFOScheduler):
    """Asynchronous successive halving, each trial judged against the trials created before it."""

    def __init__(self, *, time_attr: str, metric: str, mode: str, max_t: int, grace_period: int,
                 reduction_factor: float, brackets: int = 1, seed: int = 0) -> None:
        super().__init__()
        if mode not in ("min", "max"):
            raise ValueError(f"mode must be 'min' or 'max', not {mode!r}")
        self._time_attr, self._metric, self._mode = time_attr, metric, mode
        self._sign = 1.0 if mode == "max" else -1.0
        self._rf, self._max_t = float(reduction_factor), max_t
        self._rungs = [milestones(grace_period, max_t, reduction_factor, s) for s in range(brackets)]
        self._seed = seed
        self._order: dict[str, int] = {}  # trial id -> creation index
        self._bracket: dict[str, int] = {}
        self._recorded: dict[tuple[int, float], dict[str, float]] = {}  # (bracket, rung) -> id -> reward
        self._ended: set[str] = set()  # trials that report no more
        self._held: dict[str, tuple[float, float]] = {}  # id -> (rung, reward) awaiting earlier trials
        self._trials: dict[str, Trial] = {}
        self._releasing = False
        self.num_stopped = 0

    # -- Tune's scheduler interface --------------------------------------------------------------
    def set_search_properties(self, metric: str | None, mode: str | None, **spec: Any) -> bool:
        return True  # metric and mode are the space's, given above

    def on_trial_add(self, tune_controller: Any, trial: Trial) -> None:
        tid = trial.trial_id
        self._trials[tid] = trial
        if tid in self._order:
            return
        self._order[tid] = len(self._order)
        # Tune draws a bracket from numpy's global stream; here the draw is the trial's own
        sizes = np.array([len(r) for r in self._rungs], dtype=float)
        probs = np.exp(sizes - sizes.max())
        rng = np.random.default_rng([self._seed, self._order[tid]])
        self._bracket[tid] = int(rng.choice(len(self._rungs), p=probs / probs.sum()))

    def on_trial_result(self, tune_controller: Any, trial: Trial, result: dict[str, Any]) -> str:
        tid = trial.trial_id
        if self._time_attr not in result or self._metric not in result:
            return TrialScheduler.CONTINUE
        t = float(result[self._time_attr])
        rung = self._rung_of(tid, t)
        if rung is None:
            return TrialScheduler.CONTINUE
        reward = self._sign * float(result[self._metric])
        if t < self._max_t and self._holdable(tid, rung):
            self._held[tid] = (rung, reward)
            return TrialScheduler.NOOP
        action = self._judge(tid, rung, reward)
        self._release(tune_controller)
        return action

    def on_trial_complete(self, tune_controller: Any, trial: Trial, result: dict[str, Any]) -> None:
        tid = trial.trial_id
        if result and self._time_attr in result and self._metric in result:
            rung = self._rung_of(tid, float(result[self._time_attr]))
            if rung is not None:  # a rung it passed without a result there (as Tune's ASHA records)
                self._record(tid, rung, self._sign * float(result[self._metric]))
        self._end(tune_controller, tid)

    def on_trial_error(self, tune_controller: Any, trial: Trial) -> None:
        self._end(tune_controller, trial.trial_id)

    def on_trial_remove(self, tune_controller: Any, trial: Trial) -> None:
        self._end(tune_controller, trial.trial_id)

    def debug_string(self) -> str:
        return f"TrialOrderAsha: {self.num_stopped} stopped, {len(self._held)} held"

    # -- the rule --------------------------------------------------------------------------------
    def _rung_of(self, tid: str, t: float) -> float | None:
        """The highest rung at or below ``t`` the trial has no result at yet, else None."""
        b = self._bracket.get(tid, 0)
        passed = [m for m in self._rungs[b] if m <= t]
        if not passed or tid in self._recorded.get((b, passed[-1]), {}):
            return None
        return passed[-1]

    def _blockers(self, tid: str, rung: float) -> list[str]:
        """Earlier trials of the bracket that may still bring a result to ``rung``."""
        b, me = self._bracket.get(tid, 0), self._order.get(tid, math.inf)
        recorded = self._recorded.get((b, rung), {})
        return [j for j, k in self._order.items()
                if k < me and self._bracket[j] == b and j not in self._ended and j not in recorded]

    def _holdable(self, tid: str, rung: float) -> bool:
        """Wait for earlier trials only while every one of them is running: a pending, paused
        or restarting one may need this trial's slot, so waiting on it could wait for ever."""
        blockers = self._blockers(tid, rung)
        return bool(blockers) and all(self._trials[j].status == Trial.RUNNING for j in blockers)

    def _judge(self, tid: str, rung: float, reward: float) -> str:
        b, me = self._bracket.get(tid, 0), self._order.get(tid, math.inf)
        earlier = [r for j, r in self._recorded.get((b, rung), {}).items() if self._order.get(j, math.inf) < me]
        self._record(tid, rung, reward)
        if not earlier:
            return TrialScheduler.CONTINUE
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)  # every earlier reward NaN: no cut-off
            cutoff = float(np.nanpercentile(earlier, (1 - 1 / self._rf) * 100))
        if reward < cutoff:  # False for a NaN reward or cut-off, as in Tune's ASHA
            self.num_stopped += 1
            return TrialScheduler.STOP
        return TrialScheduler.CONTINUE

    def _record(self, tid: str, rung: float, reward: float) -> None:
        self._recorded.setdefault((self._bracket.get(tid, 0), rung), {})[tid] = reward

    def _end(self, tune_controller: Any, tid: str) -> None:
        """The trial reports no more (completed, stopped, failed or removed), held or not."""
        self._held.pop(tid, None)
        self._ended.add(tid)
        self._release(tune_controller)

    def _release(self, tune_controller: Any) -> None:
        """Judge, in trial order, every held trial whose earlier trials are now all in."""
        if self._releasing:
            return  # a stop below calls back into on_trial_complete
        self._releasing = True
        try:
            # one at a time, earliest first: each judgement records a result that may free the next
            while tid := next((j for j in sorted(self._held, key=self._order.__getitem__)
                               if not self._holdable(j, self._held[j][0])), None):
                rung, reward = self._held.pop(tid)
                if self._judge(tid, rung, reward) == TrialScheduler.STOP:
                    tune_controller.stop_trial(self._trials[tid])
                    self._ended.add(tid)
                else:
                    tune_resume_held_trial(tune_controller, self._trials[tid])
        finally:
            self._releasing = False
