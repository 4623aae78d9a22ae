"""The Python API: ``from search import launch, resume, load_trials``.

Light to import (Ray, MLflow and torch load on first call), typed, and the same code path as the
command line: a launch from Python is a search ``compvae-search`` can resume, report and export.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import pandas as pd

    from search.analysis.results import TrialSummary
    from search.space import SearchSpace


def launch(space: str | Path | dict[str, Any] | SearchSpace, *, name: str | None = None,
           storage: str | Path | None = None, overrides: dict[str, Any] | None = None,
           callbacks: Sequence[Any] = (), mlflow_uri: str | None = None, address: str | None = None,
           out: Callable[[str], None] = print) -> list[TrialSummary]:
    """Run a search to its end and return its trials (one :class:`TrialSummary` each).

    ``space``: a YAML file, a dict of the same shape, or a :class:`SearchSpace`. ``overrides``:
    dotted ``KEY: VALUE`` as ``launch --set`` (``search.*`` for settings, else a base config field).
    ``callbacks``: extra Ray Tune callbacks, run after the search's own (picklable, for resume).
    """
    from search.run.lifecycle import launch as _launch

    return _launch(space, name=name, storage=storage, mlflow_uri=mlflow_uri, address=address,
                   settings=overrides, callbacks=callbacks, out=out).summaries


def resume(name_or_dir: str | Path, *, storage: str | Path | None = None, address: str | None = None,
           out: Callable[[str], None] = print) -> list[TrialSummary]:
    """Continue an interrupted search (given by folder, or name under ``storage``); its trials."""
    from search.run.lifecycle import resume as _resume

    return _resume(str(name_or_dir), storage=storage, address=address, out=out).summaries


def load_trials(name_or_dir: str | Path, storage: str | Path | None = None) -> pd.DataFrame:
    """Every trial of a search as a DataFrame: ``trial``, ``status``, ``epoch``, ``trial_id``,
    ``mlflow_run_id``, ``optuna_number``, ``error``, ``config.<field>`` and ``metrics.<key>``."""
    import optuna
    import pandas as pd

    from compvae.config import flatten
    from search.analysis.results import TrialSummary
    from search.layout import SearchState, resolve_search
    from search.trials import TUNE_TRIAL_ATTR

    layout = resolve_search(str(name_or_dir), storage)
    state = SearchState.load(layout)
    numbers: dict[str, int] = {}
    if (layout.root / "optuna.db").is_file():
        try:
            study = optuna.load_study(study_name=state.study_name, storage=state.optuna_url)
            numbers = {str(t.user_attrs[TUNE_TRIAL_ATTR]): t.number for t in study.get_trials(deepcopy=False)
                       if TUNE_TRIAL_ATTR in t.user_attrs}
        except KeyError:  # no study yet (the search never sampled)
            numbers = {}
    rows = []
    for s in TrialSummary.load_all(layout):
        rows.append({"trial": s.name, "status": s.status, "epoch": s.epoch, "final_epoch": s.final_epoch,
                     "trial_id": s.trial_id, "mlflow_run_id": s.mlflow_run_id,
                     "optuna_number": numbers.get(s.trial_id), "retries": s.retries, "error": s.error,
                     **{f"config.{k}": v for k, v in flatten(s.config).items()},
                     **{f"metrics.{k}": v for k, v in s.metrics.items()}})
    return pd.DataFrame(rows)
