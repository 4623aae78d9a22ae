"""Seeded Optuna samplers and the Tune searcher, a subclass of Ray's ``OptunaSearch`` that skips
epochs without the objective and tells ASHA-cut trials PRUNED (why: docs/design.md).
"""

from __future__ import annotations

import warnings
from typing import Any

import optuna
from optuna.trial import TrialState
from ray.tune.search.optuna import OptunaSearch

from compvae.compat import optuna_search_state, study_trial_finished
from search.run.trainable import note_optuna_number
from search.space import SearchSpace
from search.space.distributions import distributions
from search.trials import TUNE_TRIAL_ATTR, final_epoch


class TuneGridSampler(optuna.samplers.GridSampler):
    """Optuna's GridSampler without ``study.stop()`` in ``after_trial``.

    Under Tune the number of trials is ``num_samples`` (= the grid size), and ``stop()`` is only
    legal inside ``study.optimize``: in ask/tell it raises after the last grid point is told.
    The first ``len(grid)`` trials get grid points by trial number, so concurrent asks never
    duplicate a point.
    """

    def after_trial(self, study: Any, trial: Any, state: Any, values: Any) -> None:
        return None


def make_sampler(space: SearchSpace) -> optuna.samplers.BaseSampler:
    """The space's sampler, always seeded (OptunaSearch ignores its own seed when given one)."""
    seed = space.search.seed
    kind = space.search.sampler
    if kind == "tpe":
        return optuna.samplers.TPESampler(seed=seed)
    if kind == "random":
        return optuna.samplers.RandomSampler(seed=seed)
    if kind == "gp":
        return optuna.samplers.GPSampler(seed=seed)
    if kind == "nsga2":
        return optuna.samplers.NSGAIISampler(seed=seed)
    if kind == "grid":
        return TuneGridSampler(space.grid_values(), seed=seed)
    raise ValueError(f"unknown sampler {kind!r}")


class CompvaeOptunaSearch(OptunaSearch):
    """OptunaSearch that skips epochs without the objective and tells ASHA-cut trials PRUNED."""

    def __init__(self, *args: Any, final_epochs: int, metric_names: list[str] | None = None,
                 **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._final_epochs = final_epochs
        self._metric_names = metric_names

    def suggest(self, trial_id: str) -> dict[str, Any] | None:
        """Ray's suggestion, its Optuna trial tagged with the Tune trial id (the MLflow callback
        finds it by that to add the trial name and run id) and its number recorded for the trial's
        name (``trial_00003`` is Optuna trial 3, :func:`search.run.trainable.trial_name`); the
        study's metric names set once."""
        config = super().suggest(trial_id)
        ot_trials, ot_study, _ = optuna_search_state(self)
        if trial_id in ot_trials:
            ot_trials[trial_id].set_user_attr(TUNE_TRIAL_ATTR, trial_id)
            note_optuna_number(trial_id, ot_trials[trial_id].number)
            names = getattr(self, "_metric_names", None)
            if names and ot_study.metric_names != names:
                with warnings.catch_warnings():  # "experimental" since Optuna 3.2, still so in 5
                    warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
                    ot_study.set_metric_names(names)
        return config

    def _trial_final_epochs(self, result: dict[str, Any]) -> int:
        return final_epoch(result, self._final_epochs)

    def on_trial_result(self, trial_id: str, result: dict[str, Any]) -> None:
        """Intermediate values keyed by child epoch (not Tune's iteration counter, which
        restarts with a restored trial), each epoch once: a resumed trial re-reports epochs."""
        if not isinstance(self.metric, str) or self.metric not in result:
            return
        ot_trials, ot_study, completed = optuna_search_state(self)
        if trial_id in completed or trial_id not in ot_trials:
            return
        reported = self.__dict__.setdefault("_reported_epoch", {})
        epoch = int(result.get("epoch", 0))
        if epoch <= reported.get(trial_id, 0):
            return
        ot_trial = ot_trials[trial_id]
        # A trial restarted after a killed driver may re-send results of a trial the study
        # already closed (told before the kill); its values are in the study already.
        if study_trial_finished(ot_study, ot_trial):
            return
        ot_trial.report(float(result[self.metric]), epoch)
        reported[trial_id] = epoch

    def on_trial_complete(self, trial_id: str, result: dict[str, Any] | None = None,
                          error: bool = False) -> None:
        ot_trials, ot_study, completed = optuna_search_state(self)
        if (result and not error and trial_id not in completed and trial_id in ot_trials
                and float(result.get("epoch", 0)) < self._trial_final_epochs(result)):
            try:
                ot_study.tell(ot_trials[trial_id], state=TrialState.PRUNED)
            except Exception as exc:  # Optuna refuses a second tell: warn and keep going
                optuna.logging.get_logger(__name__).warning(str(exc))
            completed.add(trial_id)
            return
        super().on_trial_complete(trial_id, result=result, error=error)


def make_searcher(space: SearchSpace, storage_url: str, study_name: str) -> CompvaeOptunaSearch:
    """The seeded, durable Optuna searcher for ``space``.

    ``storage_url`` is an absolute ``sqlite:///`` URL: a relative one would follow the trial's
    (or the user's) working directory.
    """
    storage = optuna.storages.RDBStorage(url=storage_url)
    metric: str | list[str] = space.metrics if space.multi_objective else space.metrics[0]
    mode: str | list[str] = space.modes if space.multi_objective else space.modes[0]
    return CompvaeOptunaSearch(
        distributions(space),
        metric=metric,
        mode=mode,
        sampler=make_sampler(space),
        study_name=study_name,
        storage=storage,
        final_epochs=space.base_config().child.epochs,
        metric_names=space.metrics,
    )

