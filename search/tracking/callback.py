"""The driver-side single MLflow writer: one parent run per search, one nested run per trial.

Why the driver and not the trials: many trial processes writing one SQLite file hit "database is
locked", and Ray's ``MLflowLoggerCallback`` logs Tune's bookkeeping as metrics, has no parent run
and duplicates runs after a restore. The callback decides when; :mod:`.client` does the how.
"""

from __future__ import annotations

import json
import logging
import shutil
from pathlib import Path
from typing import Any

from ray.tune import Callback
from ray.tune.experiment import Trial

from compvae.parent_store import parent_key
from search.analysis.results import COMPLETED, FAILED, FINAL_FAILURE, TrialSummary
from search.tracking.adopt import ORPHANED, close_adopted_runs
from search.tracking.client import TRIAL_ID_TAG, MlflowTracker
from search.tracking.context import dataset_record, run_context_tags
from search.tracking.journal import JOURNAL, PENDING_PREFIX
from search.tracking.models import CHILD_MODEL, save_child_model
from search.tracking.summary import SummaryCallback
from search.trials import TUNE_TRIAL_ATTR, trial_error, trial_label, trial_metrics

PARENT_HASH_PARAM = "parent/hash"
PARENT_REUSED = "parent/reused"  # metric and tag: 0 = this trial trained its parent, 1 = reused
CONSTANT_PREFIXES = ("parent/", "mask/")  # fixed for a trial's whole child training: logged once
PARENT_HISTORY = "parent_history.json"  # compvae.pipeline.state.PARENT_HISTORY (not imported: torch)
OPTUNA_NUMBER_TAG = "optuna.trial_number"
TRACEBACK = "traceback.txt"
log = logging.getLogger(__name__)


class MlflowCallback(Callback):
    """Runs after ``summaries`` (the summary keeper), so an MLflow error never skips a summary.

    A resumed search (a fresh callback) finds each trial's run by its ``tune_trial_id`` tag and
    skips epochs already logged; a failed trial's run ends FAILED with the error as a tag.
    """

    _SETTINGS = ("summaries", "mlflow_uri", "experiment_id", "parent_run_id", "optuna_url", "study_name")

    def __init__(self, summaries: SummaryCallback, mlflow_uri: str, experiment_id: str,
                 parent_run_id: str, optuna_url: str | None = None, study_name: str | None = None) -> None:
        self.summaries = summaries
        self.mlflow_uri = mlflow_uri
        self.experiment_id = experiment_id
        self.parent_run_id = parent_run_id
        self.optuna_url = optuna_url
        self.study_name = study_name
        self._init_runtime()

    # Tune pickles callbacks into tuner.pkl (with the summary keeper): keep only the settings.
    def __getstate__(self) -> dict[str, Any]:
        return {k: self.__dict__.get(k) for k in self._SETTINGS}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update({k: None for k in self._SETTINGS})
        self.__dict__.update(state)
        self._init_runtime()

    def _init_runtime(self) -> None:
        self._tracker: MlflowTracker | None = None
        self._runs: dict[str, str] = {}
        self._last_epoch: dict[str, int] = {}
        self._constants: dict[str, dict[str, float]] = {}  # parent/*, mask/* values logged per trial
        self._linked: set[str] = set()  # trials whose Optuna trial names their run
        self._study: Any = None  # loaded once: a load per trial start was on every trial's handover

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
            self._constants[trial.trial_id] = {k: v for k, v in existing.data.metrics.items()
                                               if k.startswith(CONSTANT_PREFIXES)}
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
            **run_context_tags(),
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
            self.tracker.log_input(run_id, dataset_record(cfg.data.model_dump(mode="json")))
        else:
            self.tracker.log_params(run_id, dict(trial.config))
        return run_id

    # ---- Tune hooks ---------------------------------------------------------------------------
    def _link_optuna(self, trial: Trial, run_id: str) -> None:
        """The trial's Optuna trial names its Tune trial and MLflow run; the run its Optuna number."""
        if trial.trial_id in self._linked or not self.optuna_url or run_id.startswith(PENDING_PREFIX):
            return
        import optuna

        from compvae.compat import set_study_trial_attrs

        try:
            if self._study is None:
                self._study = optuna.load_study(study_name=self.study_name, storage=self.optuna_url)
            study = self._study
            match = [t for t in study.get_trials(deepcopy=False)
                     if t.user_attrs.get(TUNE_TRIAL_ATTR) == trial.trial_id]
            if not match:
                return
            set_study_trial_attrs(study, match[0].number, {"trial_name": trial_label(trial), "mlflow_run_id": run_id})
            self.tracker.set_tags(run_id, {OPTUNA_NUMBER_TAG: str(match[0].number)})
            self._linked.add(trial.trial_id)
        except Exception as exc:  # cross-links only: never stop a search over them
            log.warning("could not link %s to its Optuna trial: %s", trial_label(trial), exc)

    def on_trial_start(self, iteration: int, trials: list[Trial], trial: Trial, **info: Any) -> None:
        run_id = self._run_id(trial)
        self.summaries.record_run(trial, run_id)
        self._link_optuna(trial, run_id)

    def _changed_constants(self, trial_id: str, metrics: dict[str, float]) -> dict[str, float]:
        """Per-epoch metrics, less the parent/* and mask/* values already logged unchanged."""
        seen = self._constants.setdefault(trial_id, {})
        out = {}
        for k, v in metrics.items():
            if k.startswith(CONSTANT_PREFIXES):
                if seen.get(k) == v:
                    continue
                seen[k] = v
            out[k] = v
        return out

    def on_trial_result(self, iteration: int, trials: list[Trial], trial: Trial,
                        result: dict[str, Any], **info: Any) -> None:
        if FINAL_FAILURE in result:
            return
        metrics = trial_metrics(result)
        epoch = int(result.get("epoch", 0))
        run_id = self._run_id(trial)
        if epoch > self._last_epoch.get(trial.trial_id, 0):
            self.tracker.log_metrics(run_id, self._changed_constants(trial.trial_id, metrics), step=epoch)
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
            self.tracker.log_metrics(run_id, self._changed_constants(trial.trial_id, values), step=s.epoch)
        for name in ("metrics.json", "timings.json", "attempts.jsonl"):
            self.tracker.log_artifact(run_id, out / name)
        self.tracker.log_artifact(run_id, out / "figures", "figures")
        for name in ("parent.pt", "child.pt"):
            self.tracker.log_artifact(run_id, out / name, "weights")
        self._log_parent_curve(run_id, trial, s.metrics)
        if s.status == COMPLETED and (out / "child.pt").is_file():
            try:
                self.tracker.log_artifact(run_id, save_child_model(out), CHILD_MODEL)
            except Exception as exc:  # the state dicts are logged already; the model format is extra
                log.warning("could not save %s's child as an MLflow model: %s", trial_label(trial), exc)
        self._link_optuna(trial, run_id)
        self.tracker.set_tags(run_id, {"trial_status": s.status})
        self.tracker.set_status(run_id, "FINISHED")

    def _log_parent_curve(self, run_id: str, trial: Trial, metrics: dict[str, float]) -> None:
        """The parent's training curve (``parent_train/*``, step = parent epoch), on the trial
        that trained it: the trial's own copy, else the shared store's when it was not reused."""
        out = self.summaries.layout.trial_dir(trial_label(trial))
        path = out / PARENT_HISTORY
        if not path.is_file() and metrics.get(PARENT_REUSED) == 0.0:
            cfg = self.summaries.config(trial)
            if cfg is not None:
                path = self.summaries.layout.parents_dir / parent_key(cfg) / PARENT_HISTORY
        log_parent_history(self.tracker, run_id, path, "parent_train/")

    def on_trial_recover(self, iteration: int, trials: list[Trial], trial: Trial, **info: Any) -> None:
        s = self.summaries.summary(trial)
        self.tracker.set_tags(self._run_id(trial), {"retries": str(s.retries), "last_error": trial_error(trial)})

    def on_experiment_end(self, trials: list[Trial], **info: Any) -> None:
        """Close runs of trials Tune no longer knows: a driver killed (SIGKILL) after a trial
        started but before Tune saved its experiment state loses that trial, and the resumed
        search runs a new one in its place. The lost trial's run would stay RUNNING forever.
        A trial it finished before dying is adopted instead (search/tracking/adopt.py): its run ends
        as the trial did."""
        known = {t.trial_id for t in trials} | close_adopted_runs(
            self.tracker, self.experiment_id, self.parent_run_id, TrialSummary.load_all(self.summaries.layout))
        self.tracker.close_running(self.experiment_id, self.parent_run_id, "KILLED",
                                   {ORPHANED: "lost when the driver was killed; a new trial replaced it on resume"},
                                   keep=known)

    def on_trial_error(self, iteration: int, trials: list[Trial], trial: Trial, **info: Any) -> None:
        s = self.summaries.summary(trial)
        run_id = self._run_id(trial)
        self.tracker.set_tags(run_id, {"error": s.error or trial_error(trial), "trial_status": FAILED})
        out = self.summaries.layout.trial_dir(trial_label(trial))
        self.tracker.log_artifact(run_id, out / "attempts.jsonl")
        if trial.error_file and Path(trial.error_file).is_file():  # Tune's copy of the traceback
            out.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(trial.error_file, out / TRACEBACK)
            self.tracker.log_artifact(run_id, out / TRACEBACK)
        self.tracker.log_artifact(run_id, out / "figures", "figures")  # an empty mask leaves its figure
        self.tracker.set_status(run_id, "FAILED")


def log_parent_history(tracker: Any, run_id: str, path: Path, prefix: str) -> None:
    """A parent's training curve (its ``parent_history.json``, if any) as ``<prefix><metric>``
    metrics, step = parent epoch: the one writer for a trial's parent and an outer parent."""
    if not path.is_file():
        return
    for row in json.loads(path.read_text()):
        tracker.log_metrics(run_id, {f"{prefix}{k}": float(v) for k, v in row.items() if k != "epoch"},
                            step=int(row["epoch"]))
