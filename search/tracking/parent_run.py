"""The search's MLflow parent run: created by the driver before Ray starts, with the space's
description as its note, the settings as params and tags, and (at the end) the outcome as metrics."""

from __future__ import annotations

from typing import Any

from compvae import __version__
from compvae.errors import UserError, first_line
from search.analysis.results import (
    COMPLETED,
    FAILED,
    STOPPED,
    TrialSummary,
    complete_trials,
    objective_values,
)
from search.layout import (
    SearchLayout,
    SearchState,
    write_json_atomic,
)
from search.space import SearchSpace
from search.tracking.client import MlflowTracker, is_local_store, store_lock
from search.tracking.context import (
    EXPERIMENT_KIND,
    EXPERIMENT_KIND_TAG,
    NOTE_TAG,
    dataset_record,
    run_context_tags,
)


def search_settings(space: SearchSpace, address: str | None) -> dict[str, str]:
    """The search's settings, as strings: the parent run's params (and tags, as before)."""
    s = space.search
    return {
        "search.sampler": s.sampler,
        "search.seed": str(s.seed),
        "search.num_samples": str(space.num_trials),
        "search.max_concurrent": str(s.max_concurrent),
        "search.scheduler": ("none" if s.scheduler is None else
                             f"asha(grace_period={s.scheduler.grace_period}, "
                             f"reduction_factor={s.scheduler.reduction_factor:g}, order={s.scheduler.order}, "
                             f"metric={space.scheduler_metric()[0]})"),
        "search.resources": f"cpus={s.resources.cpus:g}, gpus={s.resources.gpus:g}",
        "search.max_failures": str(s.max_failures),
        "search.reuse_parents": str(s.reuse_parents).lower(),
        "search.objective": ", ".join(f"{o.metric} ({o.mode})" for o in space.objective),
        "search.params": ", ".join(space.params),
        "ray.address": address or "local",
    }


def parent_tags(space: SearchSpace, layout: SearchLayout, address: str | None) -> dict[str, str]:
    return {
        **run_context_tags(),
        "compvae.space": space.name,
        "compvae.version": __version__,
        "compvae.search": layout.name,
        "search.dir": str(layout.root),
        **search_settings(space, address),
        NOTE_TAG: space.description.strip() or f"search {layout.name} of space '{space.name}'",
    }


def start_search_run(space: SearchSpace, layout: SearchLayout, state: SearchState, address: str | None) -> None:
    artifacts = layout.mlartifacts.as_uri() if is_local_store(state.mlflow_uri) else None
    try:
        # Creating a SQLite store runs its schema migrations; two launches doing it at once on
        # one new store race (`duplicate column name`), so creation is serialised by a lock.
        with store_lock(state.mlflow_uri):
            tracker = MlflowTracker(state.mlflow_uri)
            state.mlflow_experiment_id = tracker.ensure_experiment(space.name, artifacts,
                                                                   {EXPERIMENT_KIND_TAG: EXPERIMENT_KIND})
        state.mlflow_parent_run_id = tracker.start_parent(
            state.mlflow_experiment_id, layout.name, parent_tags(space, layout, address))
    except Exception as exc:  # any store problem is the user's URI/server: one line
        raise UserError(f"MLflow store {state.mlflow_uri}: {first_line(exc)}") from None
    tracker.log_params(state.mlflow_parent_run_id, search_settings(space, address))
    tracker.log_input(state.mlflow_parent_run_id, dataset_record(space.base_config().data.model_dump(mode="json")))
    tracker.log_artifact(state.mlflow_parent_run_id, layout.space_file)
    state.save(layout)


def outcome_metrics(space: SearchSpace, summaries: list[TrialSummary]) -> dict[str, float]:
    """Trial counts and the best value of each objective over complete trials (``best/<metric>``)."""
    out = {"trials/total": float(len(summaries)),
           "trials/complete": float(sum(s.status == COMPLETED for s in summaries)),
           "trials/pruned": float(sum(s.status == STOPPED for s in summaries)),
           "trials/failed": float(sum(s.status == FAILED for s in summaries))}
    done = [v for v in (objective_values(s, space) for s in complete_trials(summaries, space)) if v]
    for i, (metric, mode) in enumerate(zip(space.metrics, space.modes, strict=True)):
        values = [v[i] for v in done]
        if values:
            out[f"best/{metric}"] = max(values) if mode == "max" else min(values)
    return out


def log_outcome(tracker: MlflowTracker, state: SearchState, space: SearchSpace,
                summaries: list[TrialSummary]) -> None:
    """The parent run's metrics, so searches sort and compare in the experiment's runs table."""
    assert state.mlflow_parent_run_id
    tracker.log_metrics(state.mlflow_parent_run_id, outcome_metrics(space, summaries),
                        step=len([s for s in summaries if s.status in (COMPLETED, STOPPED, FAILED)]))


def log_parent_curve(tracker: MlflowTracker, run_id: str, layout: SearchLayout, rec: dict[str, Any]) -> None:
    """An outer parent's training curve on the search run that trained it:
    ``parent_train/<knob:value ...>/<metric>``, step = parent epoch (a trial that reuses the
    parent logs none: it did not train it)."""
    from compvae.pipeline.state import PARENT_HISTORY
    from search.tracking.callback import log_parent_history

    if rec.get("reused") or "key" not in rec:
        return
    label = " ".join(f"{k}:{v}" for k, v in rec["values"].items())
    log_parent_history(tracker, run_id, layout.parents_dir / rec["key"] / PARENT_HISTORY, f"parent_train/{label}/")


def record_outer_stage(space: SearchSpace, layout: SearchLayout, tracker: MlflowTracker, run_id: str,
                       record: dict[str, Any]) -> None:
    """The finished outer stage: ``outer.json`` (what resume reads) and the search run's tags."""
    assert space.outer is not None
    write_json_atomic(layout.outer_file, record)
    kept = record["kept"]
    failed = [p for p in record["points"] if "error" in p]
    tracker.set_tags(run_id, {
        "outer.parents": str(len(record["points"])),
        "outer.kept": ("all" if not failed else f"all but {len(failed)} that failed") if kept is None
        else ", ".join(map(str, kept)),
        "outer.rank_by": f"{space.outer.rank_by.metric} ({space.outer.rank_by.mode})",
    })
    tracker.log_artifact(run_id, layout.outer_file)
