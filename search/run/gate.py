"""The search's concurrency limit, and the outer parents pinned to its first trials.

With an outer level (no ``keep``, any sampler but the grid) the first trials cover the outer
parents, one each in the space's order (Optuna's ``enqueue_trial`` with the outer knobs only;
the sampler draws the rest), so every parent gets a child and the configs a seed gives never
depend on timing, with or without parent reuse. With a streamed stage
(``search.run.outer.streamed``) each pinned trial trains its parent itself, through the store;
the gate polls the stage on every suggestion and result so it takes in each stored parent, and
tells it when a pinned trial failed. After the pins the sampler chooses freely, or stays on the
parents that trained when some failed (docs/design.md, The outer stage).
"""

from __future__ import annotations

from typing import Any

from ray.tune.search import ConcurrencyLimiter, Searcher

from compvae.compat import optuna_search_state
from search.analysis.results import FINAL_FAILURE
from search.layout import SearchLayout
from search.run.trainable import trial_name_of

#: The live outer stage of each search this driver runs, by search folder. The gate holds only
#: the folder (it is pickled with the Tuner); the stage, with its store handle and any Ray task
#: handles, stays here.
_LIVE: dict[str, Any] = {}


def register(root: str, stage: Any) -> None:
    _LIVE[root] = stage


def unregister(root: str) -> None:
    _LIVE.pop(root, None)


class ParentGate(ConcurrencyLimiter):
    """``max_concurrent`` trials at a time; the first trials pinned to ``points`` in order; with
    ``root`` (a streamed stage) each pinned trial's failure reported to the stage."""

    # Defaults for a gate pickled (in Tune's tuner.pkl) before these fields existed: it resumes.
    search: str | None = None
    num_samples: int | None = None
    _adopted: int | None = None
    pin_of: dict[str, dict[str, Any]] | None = None

    def __init__(self, searcher: Searcher, max_concurrent: int, root: str | None = None,
                 points: list[dict[str, Any]] | None = None, search: str | None = None,
                 num_samples: int | None = None) -> None:
        super().__init__(searcher, max_concurrent=max_concurrent)
        self.root = root
        self.search = search  # the search folder: where trials a killed driver finished are adopted
        self.num_samples = num_samples
        self._adopted: int | None = None  # counted by each driver: never restored from a snapshot
        self.points = list(points or [])
        self.next_pin = 0  # index into points of the next trial's pin
        self.pinned: dict[str, int] = {}  # trials per outer point (its repr), pins and later ones
        self.pin_of: dict[str, dict[str, Any]] = {}  # Tune trial id -> the outer point it was pinned to
        self._record: dict[str, Any] | None = None  # the finished stage's, once read

    def set_state(self, state: dict[str, Any]) -> None:
        super().set_state(state)
        self._adopted = None

    def _finished(self) -> bool:
        """Whether Tune's trials (its snapshot's and this driver's) and the adopted ones reach
        ``num_samples``: Tune counts only the first, so it would replace an adopted trial."""
        if self.num_samples is None or self.search is None:
            return False
        ot_trials, study, _ = optuna_search_state(self.searcher)
        if self._adopted is None:  # the first suggestion after a (re)start: Tune's snapshot is restored
            from search.tracking.adopt import adopt_finished

            self._adopted = len(adopt_finished(SearchLayout(self.search), study, set(ot_trials)))
        return len(ot_trials) + self._adopted >= self.num_samples

    def suggest(self, trial_id: str) -> dict[str, Any] | None:
        if self._finished():
            return Searcher.FINISHED
        if not self.points:
            return super().suggest(trial_id)
        stage = self._stage()
        if stage is not None and stage.error is not None:
            return Searcher.FINISHED  # the driver raises the stage's error after the Tuner
        if len(self.live_trials) >= self.max_concurrent:
            return None
        failed = self._failed(stage)
        while self.next_pin < len(self.points) and repr(self.points[self.next_pin]) in failed:
            self.next_pin += 1  # a parent that failed to train gets no trial
        in_order = self.next_pin < len(self.points)
        if in_order:
            point: dict[str, Any] | None = self.points[self.next_pin]
        elif failed:  # the rest of the search stays on the parents that trained
            ok = [p for p in self.points if repr(p) not in failed]
            if stage is not None:  # not on one still training in its pinned trial: it may fail too
                stored = {repr(r["values"]) for r in stage.records if "key" in r}
                ok = [p for p in ok if repr(p) in stored]
            if not ok:
                return None  # asked again on Tune's next step: by then one is stored, or all failed
            point = min(ok, key=lambda p: (self.pinned.get(repr(p), 0), ok.index(p)))
        else:
            point = None  # the sampler chooses (a parent still training: the trial waits for it)
        if point is not None:
            _, study, _ = optuna_search_state(self.searcher)
            study.enqueue_trial(point)  # only the outer knobs: the sampler draws every other param
        config = super().suggest(trial_id)
        if config not in (None, Searcher.FINISHED):
            chosen = point if point is not None else {k: config.get(k) for k in self.points[0]}
            self.pinned[repr(chosen)] = self.pinned.get(repr(chosen), 0) + 1
            if in_order:
                if self.pin_of is None:  # a gate pickled before pins were recorded
                    self.pin_of = {}
                self.pin_of[trial_id] = dict(chosen)
            self.next_pin += in_order
        return config

    def _stage(self) -> Any:
        """This search's live outer stage, polled (it takes in the parents trials stored)."""
        stage = _LIVE.get(self.root) if self.root else None
        if stage is not None and not stage.finished:
            stage.poll()
        return stage

    def on_trial_result(self, trial_id: str, result: dict[str, Any]) -> None:
        super().on_trial_result(trial_id, result)
        point = (self.pin_of or {}).get(trial_id)
        if point is None:
            return
        stage = self._stage()  # a pinned trial reports only once its parent is stored: take it in
        if FINAL_FAILURE in result and stage is not None and not stage.finished:
            # the trial raises next, and is not retried (search.tracking.summary): its error is the parent's
            stage.trial_failed(point, f"{trial_name_of(trial_id)}: {result[FINAL_FAILURE]}")

    def on_trial_complete(self, trial_id: str, result: dict[str, Any] | None = None, error: bool = False) -> None:
        super().on_trial_complete(trial_id, result=result, error=error)
        point = (self.pin_of or {}).get(trial_id)
        stage = self._stage() if point is not None else None
        if error and stage is not None and not stage.finished:  # its worker died, retries spent
            stage.trial_failed(point, f"{trial_name_of(trial_id)}: its worker failed (see the trial's error)")

    def _failed(self, stage: Any) -> set[str]:
        """The outer points whose parent failed to train (as far as the stage knows)."""
        if stage is not None:
            return {repr(r["values"]) for r in stage.records if "error" in r}
        if self.root is None:
            return set()  # parents trained by the trials themselves (no reuse)
        if self._record is None:
            from search.run.outer import load_record

            self._record = load_record(SearchLayout(self.root))
        record = self._record or {"points": []}
        return {repr(p["values"]) for p in record["points"] if "error" in p}
