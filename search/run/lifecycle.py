"""Launch and resume searches: the checks, Ray, the MLflow parent run, the Tuner, the final table.

Ordered so a mistake costs seconds, not a cluster start (docs/design.md, Launch and resume).
"""
from __future__ import annotations

import datetime as dt
import logging
import os
import shutil
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

from compvae import __version__
from compvae.errors import SearchFailed, UserError
from compvae.paths import check_folder
from search.analysis.results import (
    COMPLETED,
    FAILED,
    LOST,
    STOPPED,
    TrialSummary,
    best_trials,
    format_table,
    trials_frame,
)
from search.layout import (
    SearchLayout,
    SearchState,
    driver_lock,
    driver_running,
    resolve_search,
    storage_root,
)
from search.run.checks import (
    check_mlflow_server,
    check_search_data,
    check_unchanged,
    normalise_mlflow_uri,
    space_fingerprint,
)
from search.run.session import quiet_tune, ray_session
from search.run.tuner import new_tuner, trainable
from search.space import NAME_RE, SearchSpace, load_space, space_from_dict
from search.tracking.client import MlflowTracker
from search.tracking.journal import JOURNAL, sync_pending
from search.tracking.parent_run import (
    log_outcome,
    log_parent_curve,
    record_outer_stage,
    start_search_run,
)

Printer = Callable[[str], None]
log = logging.getLogger(__name__)


@dataclass
class Outcome:
    layout: SearchLayout
    finished: bool
    summaries: list[TrialSummary]


# ---- entry points ----------------------------------------------------------------------------
def launch(space_path: str | Path | dict[str, Any] | SearchSpace, *, name: str | None = None,
           storage: str | Path | None = None, mlflow_uri: str | None = None, address: str | None = None,
           num_samples: int | None = None, max_concurrent: int | None = None, seed: int | None = None,
           reuse_parents: bool | None = None, settings: dict[str, Any] | None = None,
           callbacks: Sequence[Any] = (), out: Printer = print) -> Outcome:
    quiet_tune()
    space = prepare_space(space_path, num_samples=num_samples, max_concurrent=max_concurrent, seed=seed,
                          reuse_parents=reuse_parents, settings=settings)
    return _launch(space, name=name, storage=storage, mlflow_uri=mlflow_uri, address=address, out=out,
                   callbacks=callbacks)


def prepare_space(space: str | Path | dict[str, Any] | SearchSpace, *, num_samples: int | None = None,
                  max_concurrent: int | None = None, seed: int | None = None, reuse_parents: bool | None = None,
                  settings: dict[str, Any] | None = None) -> SearchSpace:
    """A space file, dict or SearchSpace with the command line's overrides, validated."""
    if isinstance(space, SearchSpace):
        loaded = space
    elif isinstance(space, dict):
        loaded = space_from_dict(space, source="space")
    else:
        loaded = load_space(space)
    if settings:
        loaded = loaded.with_settings(settings)
    return loaded.with_overrides(num_samples, max_concurrent, seed, reuse_parents)


def search_name(space: SearchSpace, name: str | None) -> str:
    """``--name``, checked, or ``<space>-<date-time>``."""
    if name is None:
        name = f"{space.name}-{dt.datetime.now():%Y%m%d-%H%M%S}"
    if not NAME_RE.match(name):
        raise UserError(f"--name {name!r}: letters, digits, '_', '-', '.' only (1-100 characters, "
                        "starting with a letter or digit)")
    return name


def _launch(space: SearchSpace, *, name: str | None, storage: str | Path | None, mlflow_uri: str | None,
            address: str | None, out: Printer, address_source: str = "--address",
            callbacks: Sequence[Any] = ()) -> Outcome:
    """Every check that needs no Ray (space, data, paths, MLflow URI) runs before Ray starts."""
    space = check_search_data(space)
    recorded = address or os.environ.get("RAY_ADDRESS") or None  # recorded for resume and MLflow
    name = search_name(space, name)
    root = check_folder("--storage", storage_root(storage), shown=str(storage or storage_root(None)))
    layout = SearchLayout(check_folder("--name", root / name, shown=name))
    stale = False
    if layout.state_file.exists():
        previous = SearchState.load(layout)
        if previous.status != "created" or driver_running(layout):
            raise UserError(f"search '{name}' already exists in {layout.root}; resume it with "
                            f"`compvae-search resume {layout.root}` or choose another --name")
        stale = True  # a launch that failed during start-up: no trial ran, so it starts afresh
    uri = mlflow_target(mlflow_uri, layout)
    check_mlflow_server(uri)
    with ray_session(address, space, address_source):
        if stale:
            shutil.rmtree(layout.root)
        with driver_lock(layout):
            layout.space_file.write_text(space.to_yaml())
            state = SearchState(name=name, space_name=space.name, version=__version__,
                                created=dt.datetime.now().isoformat(timespec="seconds"), mlflow_uri=uri,
                                optuna_url=layout.optuna_url, study_name=name, ray_address=recorded,
                                space_fingerprint=space_fingerprint(space), space_snapshot=space.to_dict())
            state.save(layout)
            start_search_run(space, layout, state, recorded)
            out(f"search {name}: {space.num_trials} trials of space '{space.name}' "
                f"({space.search.sampler}, {space.search.max_concurrent} at a time) in {layout.root}")
            out(f"MLflow: {uri} (experiment '{space.name}', run '{name}'); "
                f"`compvae-search ui {layout.root}` to browse")
            return _run(space, layout, state, recorded, restore=False, out=out, callbacks=callbacks)



def mlflow_target(mlflow_uri: str | None, layout: SearchLayout) -> str:
    """``--mlflow-uri``, else ``MLFLOW_TRACKING_URI`` (as MLflow itself), else the storage's store."""
    if mlflow_uri:
        return normalise_mlflow_uri(mlflow_uri)
    env = os.environ.get("MLFLOW_TRACKING_URI", "").strip()
    if env:
        return normalise_mlflow_uri(env, field="MLFLOW_TRACKING_URI")
    return layout.default_mlflow_uri


def resume(name_or_dir: str, *, storage: str | Path | None = None, address: str | None = None,
           out: Printer = print) -> Outcome:
    quiet_tune()
    layout = resolve_search(name_or_dir, storage)
    state = SearchState.load(layout)
    source = "--address" if address else "ray_address of search.json"
    if state.status == "created" and not driver_running(layout):
        # its launch failed during start-up (no trial ran): launch it again, same settings
        space = load_space(layout.space_file)
        out(f"search {layout.name} never started; launching it again")
        uri = None if state.mlflow_uri == layout.default_mlflow_uri else state.mlflow_uri
        return _launch(space, name=layout.name, storage=layout.root.parent, mlflow_uri=uri,
                       address=address or state.ray_address, out=out, address_source=source)
    with driver_lock(layout):
        state = SearchState.load(layout)
        space = load_space(layout.space_file)
        check_unchanged(layout, state, space)
        address = address or state.ray_address
        done = [s for s in TrialSummary.load_all(layout) if s.status in (COMPLETED, STOPPED, FAILED)]
        out(f"resuming search {layout.name}: {len(done)}/{space.num_trials} trials already done")
        with ray_session(address, space, source):
            return _run(space, layout, state, address, restore=True, out=out)


def _run(space: SearchSpace, layout: SearchLayout, state: SearchState, address: str | None,
         restore: bool, out: Printer, callbacks: Sequence[Any] = ()) -> Outcome:
    (layout.root / "abort.txt").unlink(missing_ok=True)
    tracker = MlflowTracker(state.mlflow_uri, journal=layout.root / JOURNAL)
    assert state.mlflow_parent_run_id
    sent, _ = sync_pending(tracker, layout)  # left over from an earlier run whose store went away
    if sent:
        out(f"MLflow: sent {sent} buffered writes to {state.mlflow_uri}")
    try:
        return _run_tuner(space, layout, state, address, restore, out, tracker, callbacks)
    finally:
        _note_pending(tracker, layout, state, out)


def _note_pending(tracker: MlflowTracker, layout: SearchLayout, state: SearchState, out: Printer) -> None:
    """The one line a user needs when the MLflow store went away: results are safe locally."""
    _, pending = sync_pending(tracker, layout)
    if pending:
        out(f"MLflow: {state.mlflow_uri} is unreachable; {pending} writes are kept in {layout.root / JOURNAL} "
            f"(trial results are safe in {layout.trials_dir}); `compvae-search report {layout.root}` "
            "sends them once the store is back")


def _run_tuner(space: SearchSpace, layout: SearchLayout, state: SearchState, address: str | None,
               restore: bool, out: Printer, tracker: MlflowTracker, callbacks: Sequence[Any] = ()) -> Outcome:
    from ray import tune

    from search.run import gate
    from search.run.outer import streamed

    assert state.mlflow_parent_run_id
    try:
        tracker.set_status(state.mlflow_parent_run_id, "RUNNING")
        state.status = "running"
        state.history.append({"event": "resume" if restore else "launch",
                              "time": dt.datetime.now().isoformat(timespec="seconds"), "address": address})
        state.save(layout)
        space, stage = _outer_level(space, layout, state, tracker, out)
        try:
            if restore and tune.Tuner.can_restore(str(layout.tune_dir)):
                tuner = tune.Tuner.restore(str(layout.tune_dir), trainable=trainable(space, layout),
                                           resume_unfinished=True, resume_errored=False, restart_errored=False)
            else:  # a fresh search, or one stopped before Tune saved anything: the study goes on
                tuner = new_tuner(space, layout, state, callbacks, gate_outer=streamed(space))
            tuner.fit()
            if stage is not None and stage.error is not None:
                raise UserError(stage.error)  # every parent failed in its pinned trial: the gate ended the search
            if stage is not None and not stage.finished:
                if _all_trials_done(space, layout):
                    stage.drain()  # parents no trial needed (fewer trials than parents) finish too
                else:
                    stage.cancel()  # stopped: a resume continues them from their partial state
        except BaseException:
            if stage is not None:
                stage.cancel()
            raise
        finally:
            gate.unregister(str(layout.root))
    except KeyboardInterrupt:
        _mark(tracker, layout, state, "interrupted", "KILLED")
        out(f"interrupted; continue with `compvae-search resume {layout.root}`")
        raise
    except UserError:
        _mark(tracker, layout, state, "failed", "FAILED")
        raise
    abort = layout.root / "abort.txt"
    if abort.is_file():
        _mark(tracker, layout, state, "failed", "FAILED")
        raise UserError(abort.read_text().strip())
    summaries = [s for s in TrialSummary.load_all(layout) if s.status != LOST]
    if not _all_trials_done(space, layout):
        _mark(tracker, layout, state, "interrupted", "KILLED")
        out(f"interrupted: {sum(s.status != 'RUNNING' for s in summaries)}/{space.num_trials} trials done; "
            f"continue with `compvae-search resume {layout.root}`")
        return Outcome(layout, False, summaries)
    finish(space, layout, state, summaries, out)
    return Outcome(layout, True, summaries)


def _all_trials_done(space: SearchSpace, layout: SearchLayout) -> bool:
    summaries = [s for s in TrialSummary.load_all(layout) if s.status != LOST]
    return (len(summaries) >= space.num_trials
            and all(s.status in (COMPLETED, STOPPED, FAILED) for s in summaries))


def _outer_level(space: SearchSpace, layout: SearchLayout, state: SearchState, tracker: MlflowTracker,
                 out: Printer) -> tuple[SearchSpace, Any]:
    """Start the space's outer stage (once per search) and return the space the Tuner runs, with
    the stage when it is streamed (trials start on each parent once trained; the Tuner's gate
    polls it), else None: the stage ran to its end here. Without reuse (the benchmark's
    baseline) trials train their own parents as ever."""
    from search.run import gate
    from search.run.outer import OuterStage, effective_space, load_record, streamed

    if space.outer is None or not space.search.reuse_parents:
        return space, None
    record = load_record(layout)
    if record is not None:
        return effective_space(space, record), None
    assert state.mlflow_parent_run_id
    run_id = state.mlflow_parent_run_id

    stage = OuterStage(space, layout, out, on_parent=partial(log_parent_curve, tracker, run_id, layout),
                       streamed=streamed(space), on_done=partial(record_outer_stage, space, layout, tracker, run_id))
    if stage.streamed:
        stage.poll()  # takes in the parents an earlier driver's trials stored
        gate.register(str(layout.root), stage)
        return space, stage
    return effective_space(space, stage.drain()), None


def _mark(tracker: MlflowTracker, layout: SearchLayout, state: SearchState, status: str, run_status: str) -> None:
    state.status = status
    state.save(layout)
    try:
        assert state.mlflow_parent_run_id and state.mlflow_experiment_id
        log_outcome(tracker, state, load_space(layout.space_file), TrialSummary.load_all(layout))
        # Trials in flight when the driver stopped get no Tune end event: close their runs too,
        # so nothing is left RUNNING in MLflow. Resume finds them by trial id and reopens them.
        tracker.close_running(state.mlflow_experiment_id, state.mlflow_parent_run_id, run_status,
                              {"trial_status": f"interrupted (search {status})"})
        tracker.set_status(state.mlflow_parent_run_id, run_status)
    except Exception as exc:  # never mask the original problem with a tracking one
        log.warning("could not mark the MLflow runs %s: %s", run_status, exc)


def _close_orphaned_study_trials(state: SearchState) -> None:
    """A driver killed (SIGKILL) between Optuna's ``ask`` and Tune's next experiment snapshot
    leaves a study trial that no Tune trial owns; resume samples a new one in its place. Once the
    search is finished every live trial has been told, so any study trial still RUNNING is such
    an orphan: mark it FAIL (Optuna cannot delete trials) so the study has none left RUNNING."""
    import optuna
    from optuna.trial import TrialState

    from compvae.compat import fail_study_trial
    from search.tracking.adopt import ORPHANED

    try:
        study = optuna.load_study(study_name=state.study_name, storage=state.optuna_url)
        for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
            fail_study_trial(study, t, ORPHANED, "lost when the driver was killed")
    except Exception as exc:  # bookkeeping only: never fail a finished search over it
        log.warning("could not close orphaned Optuna trials: %s", exc)


def finish(space: SearchSpace, layout: SearchLayout, state: SearchState, summaries: list[TrialSummary],
           out: Printer) -> None:
    """End of a search: table, report and export into the search folder and the parent run."""
    from search.analysis.export import export_best
    from search.analysis.report import build_report

    tracker = MlflowTracker(state.mlflow_uri, journal=layout.root / JOURNAL)
    assert state.mlflow_parent_run_id
    _close_orphaned_study_trials(state)
    build_report(layout, space, state, tracker=tracker)
    best = best_trials(summaries, space)
    if best:
        export_best(layout, space, layout.export_dir, tracker=tracker, state=state)
    failed = sum(s.status == FAILED for s in summaries)
    stopped = sum(s.status == STOPPED for s in summaries)
    if not any(s.status == COMPLETED for s in summaries):
        errors = [s for s in summaries if s.status == FAILED and s.error]
        first = f"; first error: {errors[0].name}: {errors[0].error}" if errors else ""
        _mark(tracker, layout, state, "failed", "FAILED")
        raise SearchFailed(f"search {layout.name}: no trial completed ({failed} failed, {stopped} stopped by "
                           f"ASHA){first}; fix the space and launch a new search (report: {layout.report_dir})")
    out(f"\nsearch {layout.name} finished: {len(summaries)} trials, {len(summaries) - failed - stopped} complete, "
        f"{stopped} stopped by ASHA, {failed} failed")
    title = "Pareto front" if space.multi_objective else "best trials"
    frame = trials_frame([s for s in summaries if s in best], space) if best else trials_frame(summaries, space)
    out(f"{title} ({', '.join(f'{o.metric} {o.mode}' for o in space.objective)}):")
    out(format_table(frame, max_rows=10))
    out(f"report: {layout.report_dir}   configs: {layout.export_dir}   MLflow: {state.mlflow_uri}")
    state.status = "finished"
    state.save(layout)
    log_outcome(tracker, state, space, summaries)
    tracker.set_status(state.mlflow_parent_run_id, "FINISHED")
