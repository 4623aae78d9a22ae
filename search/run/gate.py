"""The search's concurrency limit, and the gate that starts trials on outer parents already trained.

With a streamed outer stage (``search.run.outer.streamed``) the Tuner starts with the stage:
the gate polls it on every suggestion, starts no trial while no parent is ready, and pins each
trial's outer knobs to a trained parent (Optuna's ``enqueue_trial`` with those values only; the
sampler draws the rest), the least used one first. Parents and trials share the
``max_concurrent`` slots, parents first. Once every parent is trained the gate lets the sampler
choose freely, or keeps it on the parents that trained when some failed (docs/design.md, The
outer stage).
"""

from __future__ import annotations

from typing import Any

from ray.tune.search import ConcurrencyLimiter, Searcher

from compvae.compat import optuna_search_state
from search.layout import SearchLayout

#: The live outer stage of each search this driver runs, by search folder. The gate holds only
#: the folder (it is pickled with the Tuner); the stage, with its Ray task handles, stays here.
_LIVE: dict[str, Any] = {}


def register(root: str, stage: Any) -> None:
    _LIVE[root] = stage


def unregister(root: str) -> None:
    _LIVE.pop(root, None)


class ParentGate(ConcurrencyLimiter):
    """``max_concurrent`` trials at a time; with ``root``, trials only on trained outer parents."""

    def __init__(self, searcher: Searcher, max_concurrent: int, root: str | None = None) -> None:
        super().__init__(searcher, max_concurrent=max_concurrent)
        self.root = root
        self.pinned: dict[str, int] = {}  # trials pinned per outer point (its repr)
        self._free: bool | None = None  # cached once no constraint can come back

    def suggest(self, trial_id: str) -> dict[str, Any] | None:
        if self.root is None or self._free:
            return super().suggest(trial_id)
        stage = _LIVE.get(self.root)
        if stage is not None and not stage.finished:
            stage.poll(self.max_concurrent - len(self.live_trials))
        if stage is not None and stage.error is not None:
            return Searcher.FINISHED  # the driver raises the stage's error after the Tuner
        allowed = self._allowed(stage)
        if allowed is None:
            return super().suggest(trial_id)
        parents_running = stage.in_flight if stage is not None else 0
        if not allowed or len(self.live_trials) + parents_running >= self.max_concurrent:
            return None
        point = min(allowed, key=lambda p: (self.pinned.get(repr(p), 0), allowed.index(p)))
        _, study, _ = optuna_search_state(self.searcher)
        study.enqueue_trial(point)  # only the outer knobs: the sampler draws every other param
        config = super().suggest(trial_id)
        if config not in (None, Searcher.FINISHED):
            self.pinned[repr(point)] = self.pinned.get(repr(point), 0) + 1
        return config

    def _allowed(self, stage: Any) -> list[dict[str, Any]] | None:
        """The outer points a trial may use now, or None when the sampler is free."""
        if stage is not None and not stage.finished:
            return stage.ready()
        if stage is not None:
            record = stage.record
        else:
            from search.run.outer import load_record

            record = load_record(SearchLayout(self.root))
        if record is None or not any("error" in p for p in record["points"]):
            self._free = record is not None
            return None
        return [p["values"] for p in record["points"] if "error" not in p]
