"""Trials a killed driver finished after Tune's last snapshot of the experiment.

Tune saves its trial list every few seconds; a trial that ends between that save and a SIGKILL of
the driver is told to the study (Optuna's storage is written at once) and has its outputs, but the
resumed Tuner does not know it and would run a new trial in its place: one trial too many, and a
finished trial no store agrees on. Resume adopts it instead: it counts towards ``num_samples``,
its summary says how it ended, and its MLflow run is closed (docs/design.md, Launch and resume).
"""

from __future__ import annotations

import logging
from typing import Any

from search.analysis.results import FAILED, RUNNING, TrialSummary
from search.layout import SearchLayout
from search.tracking.client import TRIAL_ID_TAG, MlflowTracker
from search.trials import TUNE_TRIAL_ATTR

log = logging.getLogger(__name__)
#: The study trial attribute and MLflow run tag of a trial a killed driver lost (no trial ran it to its end).
ORPHANED = "orphaned"


def finished_unknown(study: Any, known: set[str]) -> dict[str, Any]:
    """The study's finished trials, by Tune trial id, that ran as a Tune trial outside ``known``
    (the trials in Tune's snapshot and those this driver created)."""
    from optuna.trial import TrialState

    out = {}
    for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE, TrialState.PRUNED, TrialState.FAIL)):
        tune_id = t.user_attrs.get(TUNE_TRIAL_ATTR)
        if tune_id and tune_id not in known and ORPHANED not in t.user_attrs:
            out[str(tune_id)] = t
    return out


def adopt_finished(layout: SearchLayout, study: Any, known: set[str]) -> list[TrialSummary]:
    """Mark every trial a killed driver finished after Tune's last snapshot as adopted, its
    summary final as the study recorded it (the driver may have died between the study's ``tell``
    and the summary's save); returns them."""
    from optuna.trial import TrialState

    unknown = finished_unknown(study, known)
    adopted = []
    for s in TrialSummary.load_all(layout):
        ot = unknown.get(s.trial_id)
        if ot is None:
            continue
        if s.status == RUNNING and ot.state == TrialState.FAIL:
            s.status, s.error = FAILED, s.error or "failed (the study's record; the driver was killed)"
        elif s.status == RUNNING:
            s.status = s.ended
        s.adopted = True
        s.save(layout)
        adopted.append(s)
    if adopted:
        log.info("adopted %d trial(s) a killed driver finished after Tune's last snapshot: %s",
                 len(adopted), ", ".join(s.name for s in adopted))
    return adopted


def close_adopted_runs(tracker: MlflowTracker, experiment_id: str, parent_run_id: str,
                       summaries: list[TrialSummary]) -> set[str]:
    """An adopted trial's MLflow run, still RUNNING when the driver died in its last callbacks,
    ends as its summary did; returns the adopted trial ids (their runs are not orphans)."""
    adopted = {s.trial_id: s for s in summaries if s.adopted}
    for run in tracker.trial_runs(experiment_id, parent_run_id) if adopted else []:
        s = adopted.get(run.data.tags.get(TRIAL_ID_TAG, ""))
        if s is not None and run.info.status == "RUNNING":
            tracker.set_tags(run.info.run_id, {"trial_status": s.status,
                                               "adopted": "finished after the killed driver's last Tune snapshot"})
            tracker.set_status(run.info.run_id, "FAILED" if s.status == FAILED else "FINISHED")
    return set(adopted)
