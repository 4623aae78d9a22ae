"""Every use of a library's private API, each behind one named function with a version check.

When a library changes one of these, the failure is one clear line naming the function and the
version, not an AttributeError deep in a search; tests in ``tests/test_compat.py`` pin each.
Imports are local so that importing this module loads none of the libraries.
"""

from __future__ import annotations

import warnings
from typing import Any

_WARNED: set[tuple[str, str]] = set()

# Release lines each function was written against (the major.minor versions tested).
SKLEARN_TESTED = ((1, 4), (1, 99))
OPTUNA_TESTED = ((5, 0), (5, 99))
RAY_TESTED = ((2, 60), (2, 60))
MLFLOW_TESTED = ((3, 17), (3, 17))


def _version(text: str) -> tuple[int, int]:
    parts = [int("".join(c for c in p if c.isdigit()) or 0) for p in text.split(".")[:2]]
    return (parts + [0, 0])[0], (parts + [0, 0])[1]


def _check(library: str, version: str, tested: tuple[tuple[int, int], tuple[int, int]], what: str) -> bool:
    """Whether ``version`` is in the tested range; once per use outside it, a warning that names it
    (the use itself still fails with a clear line if the private API is gone)."""
    lo, hi = tested
    if lo <= _version(version) <= hi:
        return True
    if (library, what) not in _WARNED:
        _WARNED.add((library, what))
        warnings.warn(f"{library} {version}: {what} is a private API, tested on "
                      f"{lo[0]}.{lo[1]}-{hi[0]}.{hi[1]}; see compvae/compat.py", RuntimeWarning, stacklevel=3)
    return False


def hgb_predictors(model: Any) -> list[list[Any]]:
    """The fitted trees of a HistGradientBoostingClassifier (``model._predictors``): one list of
    per-class tree predictors (each with a ``nodes`` record array) per boosting iteration."""
    import sklearn

    _check("scikit-learn", sklearn.__version__, SKLEARN_TESTED, "HistGradientBoosting._predictors")
    predictors = getattr(model, "_predictors", None)
    if predictors is None:
        raise RuntimeError(
            f"scikit-learn {sklearn.__version__}: HistGradientBoostingClassifier no longer exposes "
            "its fitted trees (_predictors); use dci estimator 'faithful'")
    return predictors


def fail_study_trial(study: Any, trial: Any, attr: str, text: str) -> None:
    """Mark one RUNNING Optuna trial FAIL with a user attribute, outside ``ask``/``tell`` (Optuna has
    no public call for a trial whose owner is gone): ``study._storage`` and ``trial._trial_id``."""
    import optuna
    from optuna.trial import TrialState

    _check("optuna", optuna.__version__, OPTUNA_TESTED, "Study._storage")
    storage, trial_id = study._storage, trial._trial_id
    storage.set_trial_user_attr(trial_id, attr, text)
    storage.set_trial_state_values(trial_id, TrialState.FAIL)


def set_study_trial_attrs(study: Any, number: int, attrs: dict[str, Any]) -> None:
    """User attributes on a study's trial given by number, from outside its ``Trial`` object (the
    searcher owns that): ``study._storage`` and ``study._study_id``."""
    import optuna

    _check("optuna", optuna.__version__, OPTUNA_TESTED, "Study._storage")
    storage = study._storage
    trial_id = storage.get_trial_id_from_study_id_trial_number(study._study_id, number)
    for key, value in attrs.items():
        storage.set_trial_user_attr(trial_id, key, value)


def study_trial_finished(study: Any, trial: Any) -> bool:
    """Whether the study's stored copy of an Optuna trial is finished (a live ``Trial`` object does
    not know when another tell closed it): ``study._storage`` and ``trial._trial_id``."""
    import optuna

    _check("optuna", optuna.__version__, OPTUNA_TESTED, "Study._storage")
    return bool(study._storage.get_trial(trial._trial_id).state.is_finished())


RAY_TOKEN_LOGGER = "ray._private.authentication.authentication_token_setup"


def ray_enable_token_auth() -> bool:
    """Turn Ray's token authentication on in this process if a token is available (Ray caches its
    config at import, so the env var alone is too late): ``ray._private.authentication``.
    Returns False where this Ray has no such switch, so the caller falls back to the env var."""
    import ray

    _check("ray", ray.__version__, RAY_TESTED, "ray._private.authentication")
    try:
        from ray._private.authentication import authentication_token_setup as auth

        return bool(auth.maybe_enable_token_auth_if_token_available(warn_if_disabled=False))
    except (ImportError, AttributeError):
        return False


def tune_stop_retries(trial: Any) -> None:
    """No more retries for a running Tune trial (its failure is its knobs'): Tune has no public call
    for this, so the runtime attribute ``Trial.max_failures`` is set, as Tune reads it on error."""
    import ray

    _check("ray", ray.__version__, RAY_TESTED, "Trial.max_failures")
    if not hasattr(trial, "max_failures"):
        raise RuntimeError(f"ray {ray.__version__}: Tune's Trial has no max_failures attribute; "
                           "check compvae/compat.py for this release")
    trial.max_failures = 0


def tune_json_logger() -> Any:
    """Tune's JSON logger (``result.json``, which Tune's own tools read), restoring a restarted
    trial's file from storage only when this driver has none. Tune's ``_restore_from_remote``
    copies storage over the driver's file on every restart: on a retry in the same driver that
    copy is older than the file (results since the last sync lost) or absent (a warning)."""
    from pathlib import Path

    import ray
    from ray.tune.logger import JsonLoggerCallback

    _check("ray", ray.__version__, RAY_TESTED, "LoggerCallback._restore_from_remote")
    if not callable(getattr(JsonLoggerCallback, "_restore_from_remote", None)):
        raise RuntimeError(f"ray {ray.__version__}: Tune's JsonLoggerCallback has no _restore_from_remote; "
                           "check compvae/compat.py for this release")

    class DriverFirstJsonLogger(JsonLoggerCallback):
        def _restore_from_remote(self, file_name: str, trial: Any) -> None:
            if not Path(trial.local_path, file_name).is_file():  # a resumed driver: storage has it
                super()._restore_from_remote(file_name, trial)

    return DriverFirstJsonLogger()


def tune_resume_held_trial(controller: Any, trial: Any) -> None:
    """Send the next ``train()`` to a trial its scheduler answered ``NOOP`` (held, no future in
    flight): Tune has no public call for it, so the wrapped controller's ``_tune_controller`` and
    its ``_schedule_trial_train`` are used, as Tune's own CONTINUE does."""
    import ray

    _check("ray", ray.__version__, RAY_TESTED, "TuneController._schedule_trial_train")
    real = getattr(controller, "_tune_controller", controller)
    schedule = getattr(real, "_schedule_trial_train", None)
    if schedule is None:
        raise RuntimeError(f"ray {ray.__version__}: Tune's controller has no _schedule_trial_train; "
                           "check compvae/compat.py for this release")
    schedule(trial)


def optuna_search_state(searcher: Any) -> tuple[dict[str, Any], Any, set[str]]:
    """Ray's OptunaSearch keeps its live Optuna trials, study and finished trial ids private
    (``_ot_trials``, ``_ot_study``, ``_completed_trials``); a subclass reporting per-epoch values
    and telling cut trials PRUNED must read them."""
    import ray

    _check("ray", ray.__version__, RAY_TESTED, "OptunaSearch._ot_trials")
    try:
        return searcher._ot_trials, searcher._ot_study, searcher._completed_trials
    except AttributeError as exc:
        raise RuntimeError(f"ray {ray.__version__}: OptunaSearch's internals changed ({exc}); "
                           "check compvae/compat.py for this release") from None


def mlflow_context_tags() -> dict[str, str]:
    """MLflow's own run-context tags (user, source name and type, git commit) as its fluent API
    sets them; the explicit client does not, so they come from ``resolve_tags`` (private)."""
    import mlflow

    _check("mlflow", mlflow.__version__, MLFLOW_TESTED, "mlflow.tracking.context.registry.resolve_tags")
    try:
        from mlflow.tracking.context.registry import resolve_tags
    except ImportError as exc:
        raise RuntimeError(f"mlflow {mlflow.__version__}: resolve_tags moved ({exc}); "
                           "check compvae/compat.py for this release") from None
    return {k: str(v) for k, v in resolve_tags().items()}
