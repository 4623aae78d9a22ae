"""The per-trial ``summary.json`` keeper: a Tune callback that never depends on MLflow.

Report, export and resume read these files, so they are written first on every event; the
MLflow callback runs after this one and only adds the run id (:meth:`SummaryCallback.record_run`).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from ray.tune import Callback
from ray.tune.experiment import Trial

from compvae.compat import tune_stop_retries
from compvae.config import TrialConfig
from compvae.errors import ConfigError, UserError
from search.analysis.results import (
    FAILED,
    FINAL_FAILURE,
    LOST,
    RUNNING,
    TrialSummary,
)
from search.layout import SearchLayout
from search.space import SearchSpace, space_from_dict
from search.trials import trial_error, trial_label, trial_metrics


class SummaryCallback(Callback):
    """Keeps ``trials/<trial>/summary.json`` (see :mod:`search.analysis.results`) on every event."""

    def __init__(self, layout_root: str, space: dict[str, Any]) -> None:
        self.root = layout_root
        self.space_dict = space
        self._init_runtime()

    # Tune pickles callbacks into tuner.pkl: keep only the settings, rebuild the rest.
    def __getstate__(self) -> dict[str, Any]:
        return {k: self.__dict__[k] for k in ("root", "space_dict")}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        self._init_runtime()

    def _init_runtime(self) -> None:
        self._space: SearchSpace | None = None
        self._summaries: dict[str, TrialSummary] = {}

    @property
    def layout(self) -> SearchLayout:
        return SearchLayout(Path(self.root))

    @property
    def space(self) -> SearchSpace:
        if self._space is None:
            self._space = space_from_dict(self.space_dict, source="space")
        return self._space

    def config(self, trial: Trial) -> TrialConfig | None:
        try:
            return self.space.trial_config(dict(trial.config))
        except (ConfigError, UserError):
            return None

    def summary(self, trial: Trial) -> TrialSummary:
        s = self._summaries.get(trial.trial_id)
        if s is None:
            path = self.layout.trial_dir(trial_label(trial)) / "summary.json"
            saved = json.loads(path.read_text()) if path.is_file() else {}
            if saved.get("trial_id") == trial.trial_id:
                s = TrialSummary(**saved)
            else:  # new, or a same-named trial lost with a killed driver: start afresh
                cfg = self.config(trial)
                s = TrialSummary(trial_id=trial.trial_id, name=trial_label(trial),
                                 final_epoch=cfg.child.epochs if cfg else 0,
                                 params=dict(trial.config), config=cfg.to_dict() if cfg else {})
            self._summaries[trial.trial_id] = s
        return s

    def record_run(self, trial: Trial, run_id: str) -> None:
        """The trial's MLflow run id, once the tracking store has given one."""
        s = self.summary(trial)
        if s.mlflow_run_id != run_id:
            s.mlflow_run_id = run_id
            s.save(self.layout)

    # ---- Tune hooks ---------------------------------------------------------------------------
    def on_trial_start(self, iteration: int, trials: list[Trial], trial: Trial, **info: Any) -> None:
        s = self.summary(trial)
        s.status, s.error = RUNNING, None
        s.save(self.layout)

    def on_trial_result(self, iteration: int, trials: list[Trial], trial: Trial,
                        result: dict[str, Any], **info: Any) -> None:
        if FINAL_FAILURE in result:  # the trial raises next; Tune must not retry it
            tune_stop_retries(trial)
            return
        s = self.summary(trial)
        s.epoch = max(s.epoch, int(result.get("epoch", 0)))
        s.metrics = trial_metrics(result)
        s.save(self.layout)

    def on_trial_complete(self, iteration: int, trials: list[Trial], trial: Trial, **info: Any) -> None:
        s = self.summary(trial)
        if trial.last_result:
            s.epoch = max(s.epoch, int(trial.last_result.get("epoch", 0)))
        s.status = s.ended
        s.save(self.layout)

    def on_trial_recover(self, iteration: int, trials: list[Trial], trial: Trial, **info: Any) -> None:
        s = self.summary(trial)
        s.retries += 1
        s.save(self.layout)

    def on_trial_error(self, iteration: int, trials: list[Trial], trial: Trial, **info: Any) -> None:
        s = self.summary(trial)
        s.status, s.error = FAILED, trial_error(trial)
        s.save(self.layout)

    def on_experiment_end(self, trials: list[Trial], **info: Any) -> None:
        """A trial lost with a killed driver (started, never saved by Tune) is replaced on resume
        by a new trial with its own Optuna number and name: the lost one's summary says LOST
        instead of RUNNING forever, and its folder moves to ``lost_trials/``, so ``trials/``
        holds the trials Tune, the study and MLflow own (its run and Optuna trial are closed
        as orphaned)."""
        known = {t.trial_id for t in trials}
        for summary in TrialSummary.load_all(self.layout):
            if summary.status == RUNNING and summary.trial_id not in known:
                summary.status = LOST
                summary.save(self.layout)
                self.layout.set_aside_lost_trial(summary.name, summary.trial_id)
