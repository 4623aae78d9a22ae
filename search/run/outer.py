"""A space's outer level: train every distinct parent as Ray tasks, and search on them.

So no trial waits on another's parent and the inner search can keep the best; without ``keep``
the stage is streamed: each parent is trained by its pinned first trial (``search.run.gate``) and
the stage watches the store, so no process is started for a parent alone. Resumable through
the store and ``outer.json`` (docs/design.md, The outer stage); a parent whose worker
dies is retried up to ``search.max_failures`` times from its partial state.
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Callable
from typing import Any

from compvae.errors import UserError
from search.analysis.results import finite_number
from search.layout import SearchLayout
from search.space import SearchSpace
from search.trials import short_error

Printer = Callable[[str], None]


def _label(point: dict[str, Any]) -> str:
    return ", ".join(f"{k}={v}" for k, v in point.items())


def _prepare(config: dict[str, Any], store: str, data: str | None = None) -> dict[str, Any]:
    """Ray task body: one parent trained (or found) and evaluated in the store, with the Ray
    node it ran on (which node trained what is otherwise lost with the task)."""
    import ray

    from compvae.trial import prepare_parent
    from search.run.trainable import hide_unassigned_gpus

    hide_unassigned_gpus()
    return {**prepare_parent(config, store, data_cache=data), "node": ray.get_runtime_context().get_node_id()}


def pins_outer(space: SearchSpace) -> bool:
    """Whether the first trials are pinned to the outer parents, one each (search.run.gate): not
    with ``keep`` (the inner search then runs on the kept parents only) nor with the grid
    sampler (its points are fixed by trial number and cover every parent anyway)."""
    return space.outer is not None and space.outer.keep is None and space.search.sampler != "grid"


def streamed(space: SearchSpace) -> bool:
    """Whether the pinned first trials train the outer parents themselves, the stage only
    watching the store: with pinned parents and reuse (``keep`` needs every parent ranked first)."""
    return pins_outer(space) and space.search.reuse_parents


class OuterStage:
    """The outer parents, polled by the driver: Ray tasks, ``max_concurrent`` at a time, or
    (``streamed``) trained by the search's pinned first trials and read from the store.

    ``poll`` submits what the free slots allow and collects what finished; the blocking stage
    (:func:`pretrain_parents`) polls until the end. A streamed one submits nothing: the
    search's :class:`ParentGate` polls it, and each parent is taken in once its trial has
    stored and evaluated it (or failed: :meth:`trial_failed`); the parents no trial trained
    (fewer trials than parents) are trained as tasks by :meth:`drain`. Why: a Ray task and
    then a trial's worker, one after the other, each start a process and import torch (seconds
    a slot stands idle, issue #16). ``on_parent`` is called with each finished point's record
    (the driver logs its curve to MLflow), and ``on_done`` with the stage's record once every
    parent is done (``outer.json``).
    """

    def __init__(self, space: SearchSpace, layout: SearchLayout, out: Printer,
                 on_parent: Callable[[dict[str, Any]], None] | None = None, streamed: bool = False,
                 on_done: Callable[[dict[str, Any]], None] | None = None) -> None:
        import ray

        assert space.outer is not None
        self.space, self.layout, self.out = space, layout, out
        self.on_parent, self.on_done = on_parent, on_done
        self.streamed = streamed
        self.points = space.outer_points()
        res = space.search.resources
        # A worker that dies (killed, OOM, node lost) is retried like a trial, up to max_failures,
        # and resumes the parent's partial state; an exception the parent raises is not retried.
        self._task = ray.remote(num_cpus=res.cpus, num_gpus=res.gpus, max_retries=space.search.max_failures,
                                retry_exceptions=False)(_prepare)
        self.limit = max(1, space.search.max_concurrent)
        self.records: list[dict[str, Any]] = [{"values": p} for p in self.points]
        self.pending: dict[Any, int] = {}
        self.queue = [] if streamed else list(range(len(self.points)))
        self.t0, self.t0_wall = time.perf_counter(), time.time()
        self.record: dict[str, Any] | None = None  # set once every parent is done
        self.error: str | None = None  # set when the stage cannot go on (every parent failed)
        if streamed:  # where each parent's trial stores it (the keys the trials compute)
            from compvae.parent_store import ParentStore, parent_key, stored_metrics_path

            self._store = ParentStore(layout.parents_dir)
            configs = [space.trial_config(p) for p in self.points]
            self._keys = [parent_key(c) for c in configs]
            self._metric_files = [stored_metrics_path(c, self._store.path(k)) for c, k in zip(configs, self._keys,
                                                                                               strict=True)]
        how = ("each trained by its first trial" if streamed else "trained up front")
        out(f"outer level: {len(self.points)} parents ({', '.join(space.outer_axes())}), {how}, "
            f"{min(self.limit, len(self.points))} at a time")

    @property
    def finished(self) -> bool:
        return self.record is not None or self.error is not None

    def _open(self, i: int) -> bool:
        """Whether point ``i`` has no outcome yet and no task in flight (queued, or left to a trial)."""
        rec = self.records[i]
        return "key" not in rec and "error" not in rec and i not in self.pending.values()

    def poll(self, free: int = 0, block: bool = False) -> None:
        """Take in the parents trials stored (streamed), start queued parents on up to ``free``
        slots, then take in every finished one (with ``block``, wait for at least one)."""
        import ray

        if self.streamed:
            self._watch()
        while self.queue and len(self.pending) < min(free, self.limit):
            i = self.queue.pop(0)
            config = self.space.trial_config(self.points[i]).to_dict()
            self.pending[self._task.remote(config, str(self.layout.parents_dir), str(self.layout.data_dir))] = i
        if not self.pending:
            self._maybe_finish()
            return
        ready, _ = ray.wait(list(self.pending), num_returns=1 if block else len(self.pending),
                            timeout=None if block else 0)
        for ref in ready:
            self._take(ref)
        self._maybe_finish()

    def _watch(self) -> None:
        """Take in each parent a trial has stored and evaluated (its marker and metrics file)."""
        for i in range(len(self.points)):
            if not self._open(i) or not self._metric_files[i].is_file():
                continue
            marker = self._store.marker(self._keys[i])
            if marker is None:
                continue
            self.records[i].update({
                "key": self._keys[i], "metrics": json.loads(self._metric_files[i].read_text()),
                "seconds": float(marker.get("seconds", 0.0)), "finished_at": float(marker["finished"]),
                # trained before this stage started: by an earlier driver of the search, or another search
                "reused": float(marker["finished"]) < self.t0_wall,
                **{k: marker[k] for k in ("trial", "node") if k in marker}})
            self._announce(i)

    def trial_failed(self, point: dict[str, Any], error: str) -> None:
        """The pinned trial training ``point``'s parent ended in error (after its retries): the
        parent failed, unless the store has it (the trial failed later, in its child)."""
        if point not in self.points or self.finished:
            return
        i = self.points.index(point)
        self._watch()
        if not self._open(i) or self._store.has(self._keys[i]):
            return
        self.records[i].update(error=error, finished_at=time.time())
        self.out(f"  parent ({_label(point)}) FAILED: {error}")
        self._maybe_finish()

    def _take(self, ref: Any) -> None:
        import ray

        i = self.pending.pop(ref)
        rec = self.records[i]
        rec["finished_at"] = time.time()  # when trials could start on it (the benchmark's timeline)
        try:
            rec.update(ray.get(ref))
        except ray.exceptions.RayError as exc:  # the task's own error, or its worker died
            rec["error"] = short_error(exc)
            self.out(f"  parent ({_label(self.points[i])}) FAILED: {rec['error']}")
            return
        self._announce(i)

    def _announce(self, i: int) -> None:
        rec = self.records[i]
        done = sum("key" in r or "error" in r for r in self.records)
        how = "found in the store" if rec["reused"] else f"trained in {rec['seconds']:.0f}s"
        if "trial" in rec and not rec["reused"]:
            how += f" by {rec['trial']}"
        assert self.space.outer is not None
        metric = self.space.outer.rank_by.metric
        shown = rec["metrics"].get(metric)
        score = f", {metric} {shown:.4g}" if isinstance(shown, float) else ""
        self.out(f"  parent {done}/{len(self.points)} ({_label(self.points[i])}): {how}{score}")
        if self.on_parent is not None:
            self.on_parent(rec)

    def _maybe_finish(self) -> None:
        if self.finished or self.pending or any(map(self._open, range(len(self.points)))):  # queued ones are open
            return
        try:
            kept = _streamed_keep(self.records) if self.streamed else _keep(self.space, self.records)
        except UserError as exc:
            self.error = str(exc)
            return
        self.record = {"points": self.records, "kept": kept, "seconds": time.perf_counter() - self.t0,
                       "streamed": self.streamed}
        assert self.space.outer is not None
        self.out(f"outer level done in {self.record['seconds']:.0f}s" +
                 (f"; inner search on {self.space.outer.params[0]} in {kept}" if kept is not None else ""))
        if self.on_done is not None:
            self.on_done(self.record)

    def cancel(self) -> None:
        """Stop the parents in flight (Ctrl-C): the store's lock dies with the worker and the
        partial state stays, so a resumed stage continues them."""
        import ray

        for ref in self.pending:
            ray.cancel(ref, force=True)
        self.pending.clear()

    def drain(self) -> dict[str, Any]:
        """Wait for every parent; the stage's record (raises UserError when none trained).
        A streamed stage first queues, as tasks, the parents no trial trained."""
        if self.streamed and not self.finished:
            self._watch()
            self.queue = [i for i in range(len(self.points)) if self._open(i)]
        try:
            while not self.finished:
                self.poll(self.limit, block=True)
        except KeyboardInterrupt:
            self.cancel()
            raise
        if self.error is not None:
            raise UserError(self.error)
        assert self.record is not None
        return self.record


def pretrain_parents(space: SearchSpace, layout: SearchLayout, out: Printer,
                     on_parent: Callable[[dict[str, Any]], None] | None = None) -> dict[str, Any]:
    """Train the outer level's parents; return the record the driver writes to ``outer.json``.

    The record: ``points`` (one per parent: its knob values, store key, metrics, seconds,
    whether it was already stored, the Ray node it ran on, or its error), and ``kept`` (the
    values of the single outer param passed to the inner search, or None when the inner search
    keeps the space as is).
    """
    return OuterStage(space, layout, out, on_parent).drain()


def _streamed_keep(records: list[dict[str, Any]]) -> None:
    """A streamed stage narrows nothing: its gate keeps trials on the parents that trained."""
    if not any("error" not in r for r in records):
        first = records[0]
        raise UserError(f"outer level: every parent failed to train (first: {_label(first['values'])}: "
                        f"{first['error']}); fix the space's base or its outer values")
    return None


def _keep(space: SearchSpace, records: list[dict[str, Any]]) -> list[Any] | None:
    """The single outer param's values for the inner search: the best ``keep`` (ties: the
    space's order), without failed parents. None leaves the space as it is."""
    assert space.outer is not None
    ok = [r for r in records if "error" not in r]
    if not ok:
        first = records[0]
        raise UserError(f"outer level: every parent failed to train (first: {_label(first['values'])}: "
                        f"{first['error']}); fix the space's base or its outer values")
    failed = [r for r in records if "error" in r]
    outer = space.outer
    if outer.keep is None and not failed:
        return None
    if len(space.outer_axes()) != 1:  # keep needs one axis (validated): here a failure with several
        r = failed[0]
        raise UserError(f"outer level: parent {_label(r['values'])} failed to train ({r['error']}); with several "
                        "outer knobs it cannot be left out of the inner search: drop that value and launch again")
    metric, sign = outer.rank_by.metric, (1.0 if outer.rank_by.mode == "max" else -1.0)

    def score(r: dict[str, Any]) -> float:
        v = r["metrics"].get(metric)
        return sign * float(v) if finite_number(v) else -math.inf

    if outer.keep is not None and not any(metric in r["metrics"] for r in ok):
        raise UserError(f"outer.rank_by.metric: no parent reports {metric}; parent metrics are "
                        f"{', '.join(sorted(ok[0]['metrics']))}")
    ranked = sorted(ok, key=score, reverse=True)  # stable: ties keep the space's order
    chosen = ranked[: outer.keep] if outer.keep is not None else ranked
    name = outer.params[0]
    order = [r["values"][name] for r in records]
    kept = {repr(r["values"][name]) for r in chosen}
    return [v for v in order if repr(v) in kept]


def load_record(layout: SearchLayout) -> dict[str, Any] | None:
    """The finished outer stage's record, or None when the search has not finished one."""
    path = layout.outer_file
    return json.loads(path.read_text()) if path.is_file() else None


def effective_space(space: SearchSpace, record: dict[str, Any] | None) -> SearchSpace:
    """The space the Tuner searches: narrowed to the kept outer values, if any."""
    if space.outer is None or record is None or record.get("kept") is None:
        return space
    return space.narrowed(space.outer.params[0], record["kept"])
