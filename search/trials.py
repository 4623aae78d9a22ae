"""What Tune says about a trial, as text and numbers: its label, its own metrics, its error.

Kept apart from tracking so the console and the outer stage get error text without MLflow.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ray.tune.result import AUTO_RESULT_KEYS, DEBUG_METRICS

if TYPE_CHECKING:
    from ray.tune.experiment import Trial

TUNE_TRIAL_ATTR = "tune_trial_id"  # an Optuna trial's user attribute: the Tune trial it runs as

# Keys Tune adds to every result: never logged as metrics.
TUNE_KEYS = frozenset(AUTO_RESULT_KEYS) | frozenset(DEBUG_METRICS) | {
    "done", "trial_id", "experiment_tag", "should_checkpoint", "iterations_since_restore",
    "time_since_restore", "timesteps_since_restore", "training_iteration", "episodes_total",
    "timesteps_total", "checkpoint_dir_name", "time_this_iter_s", "time_total_s", "experiment_id",
}


def trial_metrics(result: dict[str, Any]) -> dict[str, float]:
    """The trial's own numeric metrics from a Tune result (Tune's bookkeeping removed)."""
    return {k: float(v) for k, v in result.items()
            if k not in TUNE_KEYS and isinstance(v, (int, float)) and not isinstance(v, bool)}


def short_error(exc: BaseException | None) -> str:
    """'Type: first line' of the innermost cause: Ray wraps a trial's exception in
    RayTaskError/TuneError whose text is a whole traceback."""
    if exc is None:
        return "unknown error"
    seen: set[int] = set()
    while id(exc) not in seen:
        seen.add(id(exc))
        cause = getattr(exc, "cause", None) or exc.__cause__
        if not isinstance(cause, BaseException):
            break
        exc = cause
    text = str(exc).strip()
    first = text.splitlines()[0] if text else ""
    return f"{type(exc).__name__}: {first}" if first else type(exc).__name__


def trial_error(trial: Trial) -> str:
    try:
        exc = trial.get_pickled_error()
    except Exception:  # an unreadable pickle should not hide the text version
        exc = None
    if exc is not None:
        return short_error(exc)
    path = trial.error_file
    if path and Path(path).is_file():
        lines = [ln for ln in Path(path).read_text().splitlines() if ln.strip()]
        if lines:  # 'pkg.module.ErrorType: message' -> 'ErrorType: message', as short_error
            return re.sub(r"^(?:[A-Za-z_][\w]*\.)+(\w+: )", r"\1", lines[-1].strip())
    return "unknown error"


def trial_label(trial: Trial) -> str:
    """The trial's name as set by ``trial_name_creator`` (``trial_00003``)."""
    return trial.custom_trial_name or str(trial)



def final_epoch(record: dict[str, Any], default: int) -> int:
    """A trial's own last child epoch (``child.epochs`` may itself be searched), read from its Tune
    config, or from a result carrying it flat or under ``config``; ``default`` is the base's."""
    for key in ("config/child.epochs", "child.epochs"):
        if key in record:
            return int(record[key])
    config = record.get("config")
    if isinstance(config, dict) and "child.epochs" in config:
        return int(config["child.epochs"])
    return default
