"""A space's outer level: train every distinct parent up front, then search on the strongest.

So no trial waits on another's parent and the inner search can keep the best; resumable through
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


def pretrain_parents(space: SearchSpace, layout: SearchLayout, out: Printer) -> dict[str, Any]:
    """Train the outer level's parents; return the record the driver writes to ``outer.json``.

    The record: ``points`` (one per parent: its knob values, store key, metrics, seconds,
    whether it was already stored, the Ray node it ran on, or its error), and ``kept`` (the
    values of the single outer param passed to the inner search, or None when the inner search
    keeps the space as is).
    """
    import ray

    assert space.outer is not None
    points = space.outer_points()
    res = space.search.resources
    # A worker that dies (killed, OOM, node lost) is retried like a trial, up to max_failures,
    # and resumes the parent's partial state; an exception the parent raises is not retried.
    task = ray.remote(num_cpus=res.cpus, num_gpus=res.gpus, max_retries=space.search.max_failures,
                      retry_exceptions=False)(_prepare)
    store = str(layout.parents_dir)
    limit = max(1, space.search.max_concurrent)
    out(f"outer level: {len(points)} parents ({', '.join(space.outer_axes())}) trained up front, "
        f"{min(limit, len(points))} at a time")
    t0 = time.perf_counter()
    records: list[dict[str, Any]] = [{"values": p} for p in points]
    pending: dict[Any, int] = {}
    queue = list(range(len(points)))
    try:
        while queue or pending:
            while queue and len(pending) < limit:
                i = queue.pop(0)
                config = space.trial_config(points[i]).to_dict()
                pending[task.remote(config, store, str(layout.data_dir))] = i
            ready, _ = ray.wait(list(pending), num_returns=1)
            for ref in ready:
                i = pending.pop(ref)
                rec = records[i]
                try:
                    rec.update(ray.get(ref))
                except ray.exceptions.RayError as exc:  # the task's own error, or its worker died
                    rec["error"] = short_error(exc)
                    out(f"  parent ({_label(points[i])}) FAILED: {rec['error']}")
                else:
                    how = "found in the store" if rec["reused"] else f"trained in {rec['seconds']:.0f}s"
                    metric = space.outer.rank_by.metric
                    shown = rec["metrics"].get(metric)
                    score = f", {metric} {shown:.4g}" if isinstance(shown, float) else ""
                    out(f"  parent {len(points) - len(queue) - len(pending)}/{len(points)} "
                        f"({_label(points[i])}): {how}{score}")
    except KeyboardInterrupt:
        for ref in pending:
            ray.cancel(ref, force=True)  # the store's lock dies with the worker; partial state stays
        raise
    record = {"points": records, "kept": _keep(space, records), "seconds": time.perf_counter() - t0}
    out(f"outer level done in {record['seconds']:.0f}s" +
        (f"; inner search on {space.outer.params[0]} in {record['kept']}" if record["kept"] is not None else ""))
    return record


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
