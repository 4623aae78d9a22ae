"""The driver-side single MLflow writer: one parent run per search, one nested run per trial.

Why the driver and not the trials: many trial processes writing one SQLite file hit "database is
locked", and Ray's ``MLflowLoggerCallback`` logs Tune's bookkeeping as metrics, has no parent run
and duplicates runs after a restore. The callback decides when; :mod:`.client` does the how.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from ray.tune import Callback
from ray.tune.experiment import Trial

from compvae.parent_store import parent_key
from search.analysis.results import FAILED, FINAL_FAILURE
from search.tracking.client import TRIAL_ID_TAG, MlflowTracker
from search.tracking.journal import JOURNAL
from search.tracking.summary import SummaryCallback
from search.trials import trial_error, trial_label, trial_metrics

PARENT_HASH_PARAM = "parent/hash"
PARENT_REUSED = "parent/reused"  # metric and tag: 0 = this trial trained its parent, 1 = reused


class MlflowCallback(Callback):
    """Runs after ``summaries`` (the summary keeper), so an MLflow error never skips a summary.

    A resumed search (a fresh callback) finds each trial's run by its ``tune_trial_id`` tag and
    skips epochs already logged; a failed trial's run ends FAILED with the error as a tag.
    """

    def __init__(self, summaries: SummaryCallback, mlflow_uri: str, experiment_id: str,
                 parent_run_id: str) -> None:
        self.summaries = summaries
        self.mlflow_uri = mlflow_uri
        self.experiment_id = experiment_id
        self.parent_run_id = parent_run_id
        self._init_runtime()

    # Tune pickles callbacks into tuner.pkl (with the summary keeper): keep only the settings.
    def __getstate__(self) -> dict[str, Any]:
        return {k: self.__dict__[k] for k in ("summaries", "mlflow_uri", "experiment_id", "parent_run_id")}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        self._init_runtime()

    def _init_runtime(self) -> None:
        self._tracker: MlflowTracker | None = None
        self._runs: dict[str, str] = {}
        self._last_epoch: dict[str, int] = {}

    @property
    def tracker(self) -> MlflowTracker:
        if self._tracker is None:
            self._tracker = MlflowTracker(self.mlflow_uri, journal=Path(self.summaries.root) / JOURNAL)
        return self._tracker

    def _run_id(self, trial: Trial) -> str:
        """The trial's nested run: cached, else found by its trial_id tag, else created."""
        run_id = self._runs.get(trial.trial_id)
        if run_id is not None:
            run_id = self.tracker.resolved.get(run_id, run_id)  # a placeholder sent meanwhile
            self._runs[trial.trial_id] = run_id
            return run_id
        existing = self.tracker.find_trial_run(self.experiment_id, self.parent_run_id, trial.trial_id)
        if existing is not None:
            run_id = existing.info.run_id
            self._last_epoch[trial.trial_id] = int(existing.data.metrics.get("epoch", 0))
            if existing.info.status != "RUNNING":
                self.tracker.set_status(run_id, "RUNNING")
        else:
            run_id = self._create_run(trial)
            self._last_epoch[trial.trial_id] = 0
        self._runs[trial.trial_id] = run_id
        self.summaries.record_run(trial, run_id)
        return run_id

    def _create_run(self, trial: Trial) -> str:
        cfg = self.summaries.config(trial)
        tags = {
            "mlflow.parentRunId": self.parent_run_id,
            TRIAL_ID_TAG: trial.trial_id,
            "trial_name": trial_label(trial),
            "compvae.search": self.summaries.layout.name,
            "searched_params": ",".join(self.summaries.space.params),
        }
        run_id = self.tracker.create_run(self.experiment_id, trial_label(trial), tags)
        if cfg is not None:
            self.tracker.log_params(run_id, {**cfg.flat(), PARENT_HASH_PARAM: parent_key(cfg)})
            self.tracker.log_text(run_id, cfg.to_yaml(), "config.yaml")
        else:
            self.tracker.log_params(run_id, dict(trial.config))
        return run_id

    # ---- Tune hooks ---------------------------------------------------------------------------
    def on_trial_start(self, iteration: int, trials: list[Trial], trial: Trial, **info: Any) -> None:
        self.summaries.record_run(trial, self._run_id(trial))

    def on_trial_result(self, iteration: int, trials: list[Trial], trial: Trial,
                        result: dict[str, Any], **info: Any) -> None:
        if FINAL_FAILURE in result:
            return
        metrics = trial_metrics(result)
        epoch = int(result.get("epoch", 0))
        run_id = self._run_id(trial)
        if epoch > self._last_epoch.get(trial.trial_id, 0):
            self.tracker.log_metrics(run_id, metrics, step=epoch)
            if PARENT_REUSED in metrics and self._last_epoch.get(trial.trial_id, 0) == 0:
                self.tracker.set_tags(run_id, {PARENT_REUSED: str(int(metrics[PARENT_REUSED]))})
            self._last_epoch[trial.trial_id] = epoch
        self.summaries.record_run(trial, run_id)

    def on_trial_complete(self, iteration: int, trials: list[Trial], trial: Trial, **info: Any) -> None:
        s = self.summaries.summary(trial)  # its status is set: the summary keeper ran first
        run_id = self._run_id(trial)
        out = self.summaries.layout.trial_dir(trial_label(trial))
        timings = out / "timings.json"
        if timings.is_file():
            values = {k: float(v) for k, v in json.loads(timings.read_text()).items()}
            self.tracker.log_metrics(run_id, values, step=s.epoch)
        for name in ("metrics.json", "timings.json", "attempts.jsonl"):
            self.tracker.log_artifact(run_id, out / name)
        self.tracker.log_artifact(run_id, out / "figures", "figures")
        for name in ("parent.pt", "child.pt"):
            self.tracker.log_artifact(run_id, out / name, "weights")
        self.tracker.set_tags(run_id, {"trial_status": s.status})
        self.tracker.set_status(run_id, "FINISHED")

    def on_trial_recover(self, iteration: int, trials: list[Trial], trial: Trial, **info: Any) -> None:
        s = self.summaries.summary(trial)
        self.tracker.set_tags(self._run_id(trial), {"retries": str(s.retries), "last_error": trial_error(trial)})

    def on_experiment_end(self, trials: list[Trial], **info: Any) -> None:
        """Close runs of trials Tune no longer knows: a driver killed (SIGKILL) after a trial
        started but before Tune saved its experiment state loses that trial, and the resumed
        search runs a new one in its place. The lost trial's run would stay RUNNING forever."""
        known = {t.trial_id for t in trials}
        self.tracker.close_running(self.experiment_id, self.parent_run_id, "KILLED",
                                   {"orphaned": "lost when the driver was killed; a new trial replaced it on resume"},
                                   keep=known)

    def on_trial_error(self, iteration: int, trials: list[Trial], trial: Trial, **info: Any) -> None:
        s = self.summaries.summary(trial)
        run_id = self._run_id(trial)
        self.tracker.set_tags(run_id, {"error": s.error or trial_error(trial), "trial_status": FAILED})
        self.tracker.log_artifact(run_id, self.summaries.layout.trial_dir(trial_label(trial)) / "attempts.jsonl")
        self.tracker.set_status(run_id, "FAILED")
