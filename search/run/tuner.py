"""The Tune ``Tuner`` of a search: trainable with resources, ASHA or FIFO, searcher and callbacks."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from search.layout import (
    SearchLayout,
    SearchState,
)
from search.space import SearchSpace


def trainable(space: SearchSpace, layout: SearchLayout) -> Any:
    from ray import tune

    from search.run.trainable import trial_fn

    resources = {"cpu": space.search.resources.cpus, "gpu": space.search.resources.gpus}
    return tune.with_resources(
        tune.with_parameters(trial_fn, base=space.base_dict(), root=str(layout.root),
                             reuse_parents=space.search.reuse_parents), resources)


def _scheduler(space: SearchSpace) -> Any:
    from ray.tune.schedulers import ASHAScheduler, FIFOScheduler

    asha = space.search.scheduler
    if asha is None:
        return FIFOScheduler()
    metric, mode = space.scheduler_metric()
    max_t = space.max_epochs
    rungs = {"time_attr": "epoch", "metric": metric, "mode": mode, "max_t": max_t,
             "grace_period": min(asha.grace_period, max_t), "reduction_factor": asha.reduction_factor,
             "brackets": asha.brackets}
    if asha.order == "trial":
        from search.run.asha import TrialOrderAsha

        return TrialOrderAsha(**rungs, seed=space.search.seed)
    # stop_last_trials=False: a trial at its last epoch must run on to write its outputs.
    return ASHAScheduler(**rungs, stop_last_trials=False)


def new_tuner(space: SearchSpace, layout: SearchLayout, state: SearchState, extra_callbacks: Sequence[Any] = (),
              gate_outer: bool = False) -> Any:
    """The search's Tuner; ``extra_callbacks`` (Tune callbacks) run after the search's own.
    ``gate_outer``: the outer stage is streamed, so a pinned trial waits for its parent."""
    from ray import tune

    from compvae.compat import tune_json_logger
    from search.run.console import ConsoleCallback
    from search.run.gate import ParentGate
    from search.run.guard import ObjectiveGuard
    from search.run.outer import pins_outer
    from search.run.samplers import make_searcher
    from search.run.trainable import trial_name
    from search.tracking.callback import MlflowCallback
    from search.tracking.summary import SummaryCallback

    assert state.mlflow_experiment_id and state.mlflow_parent_run_id
    base_epochs = space.base_config().child.epochs
    summaries = SummaryCallback(str(layout.root), space.to_dict())
    tracking = MlflowCallback(summaries, state.mlflow_uri, state.mlflow_experiment_id, state.mlflow_parent_run_id,
                              state.optuna_url, state.study_name)
    asha_metric = space.scheduler_metric()[0] if space.search.scheduler is not None else None
    console = ConsoleCallback(space.metrics, list(space.params), space.num_trials, base_epochs, asha_metric,
                              modes=space.modes)
    return tune.Tuner(
        trainable(space, layout),
        tune_config=tune.TuneConfig(
            # the gate is Tune's concurrency limiter too, so max_concurrent_trials stays unset
            search_alg=ParentGate(make_searcher(space, state.optuna_url, state.study_name),
                                  space.search.max_concurrent, str(layout.root) if gate_outer else None,
                                  space.outer_points() if pins_outer(space) else None,
                                  search=str(layout.root), num_samples=space.num_trials),
            scheduler=_scheduler(space),
            num_samples=space.num_trials,
            # A finished or stopped trial's worker runs the next trial: no new process, no second
            # import of torch and the trial code per trial (seconds each, issue #16). A trial
            # leaves no state in its process that the next one reads: run_trial seeds every
            # stream it draws from (tests/test_parent_reuse.py checks a reused worker's metrics).
            reuse_actors=True,
            trial_name_creator=trial_name,
            trial_dirname_creator=trial_name,
        ),
        run_config=tune.RunConfig(
            name=layout.tune_dir.name,
            storage_path=str(layout.root),
            callbacks=[summaries, tracking, console, tune_json_logger(), *extra_callbacks],
            stop=ObjectiveGuard(str(layout.root), space.metrics, base_epochs),
            failure_config=tune.FailureConfig(max_failures=space.search.max_failures),
            checkpoint_config=tune.CheckpointConfig(num_to_keep=None),  # epoch markers: see trainable.py
            verbose=0,
        ),
    )

