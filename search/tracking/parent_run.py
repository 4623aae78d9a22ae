"""The search's MLflow parent run: created by the driver before Ray starts, tagged with the settings."""

from __future__ import annotations

from compvae import __version__
from compvae.errors import UserError, first_line
from search.layout import (
    SearchLayout,
    SearchState,
)
from search.space import SearchSpace
from search.tracking.client import MlflowTracker, is_local_store, store_lock


def parent_tags(space: SearchSpace, layout: SearchLayout, address: str | None) -> dict[str, str]:
    s = space.search
    return {
        "compvae.space": space.name,
        "compvae.version": __version__,
        "compvae.search": layout.name,
        "search.dir": str(layout.root),
        "search.sampler": s.sampler,
        "search.seed": str(s.seed),
        "search.num_samples": str(space.num_trials),
        "search.max_concurrent": str(s.max_concurrent),
        "search.scheduler": ("none" if s.scheduler is None else
                             f"asha(grace_period={s.scheduler.grace_period}, "
                             f"reduction_factor={s.scheduler.reduction_factor:g}, "
                             f"metric={space.scheduler_metric()[0]})"),
        "search.resources": f"cpus={s.resources.cpus:g}, gpus={s.resources.gpus:g}",
        "search.max_failures": str(s.max_failures),
        "search.reuse_parents": str(s.reuse_parents).lower(),
        "search.objective": ", ".join(f"{o.metric} ({o.mode})" for o in space.objective),
        "search.params": ", ".join(space.params),
        "ray.address": address or "local",
    }


def start_search_run(space: SearchSpace, layout: SearchLayout, state: SearchState, address: str | None) -> None:
    artifacts = layout.mlartifacts.as_uri() if is_local_store(state.mlflow_uri) else None
    try:
        # Creating a SQLite store runs its schema migrations; two launches doing it at once on
        # one new store race (`duplicate column name`), so creation is serialised by a lock.
        with store_lock(state.mlflow_uri):
            tracker = MlflowTracker(state.mlflow_uri)
            state.mlflow_experiment_id = tracker.ensure_experiment(space.name, artifacts)
        state.mlflow_parent_run_id = tracker.start_parent(
            state.mlflow_experiment_id, layout.name, parent_tags(space, layout, address))
    except Exception as exc:  # any store problem is the user's URI/server: one line
        raise UserError(f"MLflow store {state.mlflow_uri}: {first_line(exc)}") from None
    tracker.log_artifact(state.mlflow_parent_run_id, layout.space_file)
    state.save(layout)

