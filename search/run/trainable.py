"""The one Tune function trainable: a search trial is :func:`compvae.trial.run_trial`.

Its state lives in ``<search>/trials/<trial>/state`` and a Tune checkpoint is only an epoch marker,
so Tune never deletes state a snapshot still needs (docs/design.md, The trainable).

Each start appends a line to ``trials/<trial>/attempts.jsonl`` (time, Tune trial id, resumed-from
epoch, host, pid, Ray node id), so retries, resumes and where each attempt ran are visible.

Test hook: ``COMPVAE_SEARCH_FAULT=<search name>/<trial name>@<epoch>[,...]`` in the Ray workers'
environment makes each named trial raise once, right after that epoch's checkpoint and report, on
its first attempt only. At the last epoch that is before the outputs are written (and reported);
``@outputs`` raises after the outputs are written, before the final result is sent.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import tempfile
import time
from pathlib import Path
from typing import Any

import ray
from ray import tune

from compvae.config import TrialConfig
from compvae.errors import TrialFailed
from search.analysis.results import FINAL_FAILURE
from search.layout import SearchLayout

FAULT_ENV = "COMPVAE_SEARCH_FAULT"
FAULT_AFTER_OUTPUTS = "outputs"  # the hook's "epoch" for the window after the outputs exist
EPOCH_FILE = "tune_epoch.json"
PARENT_HISTORY = "parent_history.json"  # compvae.pipeline.state.PARENT_HISTORY


class InjectedFault(RuntimeError):
    """Raised by the test hook; a real trial never raises it."""


# The driver's trial names, filled in the process that runs the Tuner. The searcher's
# ``suggest`` (search/run/samplers.py) records each new Tune trial id's Optuna trial number here;
# Tune then builds the ``Trial`` in the same process right away, and ``Trial.__init__`` calls
# :func:`trial_name` (twice: the name and the folder name). A restored trial is not renamed:
# Tune restores its stored name.
_OPTUNA_NUMBERS: dict[str, int] = {}
_NAMES: dict[str, str] = {}  # Tune trial id -> the name given: the same on every call
_GIVEN: set[tuple[str, str]] = set()  # (experiment folder, name): one process may run several searches


def note_optuna_number(trial_id: str, number: int) -> None:
    """The Optuna trial number of a Tune trial about to be created (called by the searcher)."""
    _OPTUNA_NUMBERS[str(trial_id)] = int(number)


def _experiment(trial: Any) -> tuple[SearchLayout | None, str]:
    """The search folder a trial belongs to (Tune's ``storage_path`` is the search's root) and
    Tune's experiment folder under it; no layout for a trial without storage."""
    storage = getattr(trial, "storage", None)
    root = getattr(storage, "storage_fs_path", None)
    if not root:
        return None, ""
    layout = SearchLayout(Path(root))
    return layout, str(layout.root / str(storage.experiment_dir_name))


def _name_taken(trial: Any, name: str) -> bool:
    """Whether another trial of this search already has ``name`` in this process, or a folder of
    that name exists in the search (a previous driver's trial: never take over its outputs)."""
    layout, experiment = _experiment(trial)
    if (experiment, name) in _GIVEN:
        return True
    return layout is not None and (layout.trial_dir(name).exists() or (Path(experiment) / name).exists())


def trial_name(trial: Any) -> str:
    """Readable, stable trial names for folders, MLflow runs and the console: ``trial_00003`` is
    Optuna trial number 3 (the searcher recorded it, :func:`note_optuna_number`).

    Optuna numbers a study's trials in its durable storage, so trials created after a resume get
    new numbers; one a killed driver asked for and lost leaves a gap, never a reused name.
    Without a recorded number (another searcher) the number is the searcher's 1-based trial
    counter, the head of Tune's ``experiment_tag``.
    """
    trial_id = str(trial.trial_id)
    if trial_id in _NAMES:
        return _NAMES[trial_id]
    number = _OPTUNA_NUMBERS.pop(trial_id, None)
    if number is None:
        head = str(getattr(trial, "experiment_tag", "") or "").split("_", 1)[0]
        number = int(head) if head.isdigit() else None
    name = f"trial_{number:05d}" if number is not None else f"trial_{trial_id}"
    if _name_taken(trial, name):
        # Not expected with Optuna's numbers (a study never reuses one), but a counter name, or a
        # study recreated beside old trial folders, could meet an existing trial: never share
        # its name or folder. The trial id makes it unique; the number still leads the name.
        name = f"{name}_{trial_id}"
    _NAMES[trial_id] = name
    _GIVEN.add((_experiment(trial)[1], name))
    return name


def trial_name_of(trial_id: str) -> str:
    """The name this driver gave a Tune trial (its id when it gave none)."""
    return _NAMES.get(str(trial_id), str(trial_id))


def _fault_point(search: str, name: str) -> int | str | None:
    """The test hook's fault point for this trial: an epoch, :data:`FAULT_AFTER_OUTPUTS` or none."""
    for spec in os.environ.get(FAULT_ENV, "").split(","):
        target, _, epoch = spec.strip().rpartition("@")
        if target == f"{search}/{name}":
            return epoch if epoch == FAULT_AFTER_OUTPUTS else int(epoch)
    return None


def _set_aside_lost_trial(layout: SearchLayout, out_dir: Path, trial_id: str) -> None:
    """A folder of this trial's name that holds another trial's attempts (a name met again,
    which :func:`trial_name` avoids but a counter name could not): never resume another trial's
    state; move it to ``lost_trials/`` instead."""
    attempts = out_dir / "attempts.jsonl"
    if not attempts.is_file():
        return
    ids = {json.loads(line).get("trial_id") for line in attempts.read_text().splitlines() if line.strip()}
    if ids and trial_id not in ids:
        layout.set_aside_lost_trial(out_dir.name, sorted(str(i) for i in ids)[0])


def hide_unassigned_gpus() -> None:
    """In a Ray worker given no GPU, hide the node's GPUs. Ray leaves CUDA_VISIBLE_DEVICES alone
    then: without this a ``train.device: auto`` trial (or outer parent) would still find and
    share the node's GPUs unaccounted."""
    if not ray.get_gpu_ids():
        os.environ["CUDA_VISIBLE_DEVICES"] = ""


def trial_fn(config: dict[str, Any], base: dict[str, Any], root: str, reuse_parents: bool = True) -> None:
    """Run one trial: base config + this trial's sample, reporting every child epoch.

    ``reuse_parents`` (``search.reuse_parents``) shares trained parents through
    ``<search>/parents`` and rendered images through ``<search>/data``; off, every trial
    computes everything itself (the benchmark's baseline).
    """
    t_imports = time.perf_counter()
    from compvae.parent_store import ParentStore
    from compvae.pipeline.timing import PhaseTimer
    from compvae.trial import (  # torch and friends: import in the worker only
        epoch_history,
        read_result,
        run_trial,
    )

    imports = time.perf_counter() - t_imports  # 0 in a reused worker: the modules are loaded
    t_start, c_start = time.perf_counter(), time.thread_time()  # the breakdown's startup: folders, resume checks

    hide_unassigned_gpus()
    layout = SearchLayout(Path(root))
    name = tune.get_context().get_trial_name()
    cfg = TrialConfig.from_dict(base, source="base").with_updates(dict(config))
    out_dir = layout.trial_dir(name)
    _set_aside_lost_trial(layout, out_dir, tune.get_context().get_trial_id())
    out_dir.mkdir(parents=True, exist_ok=True)

    state = out_dir / "state"
    state.mkdir(exist_ok=True)
    marker = Path(tempfile.mkdtemp(prefix=f"compvae-{name}-"))
    # Where this attempt resumes: the epoch the persistent state holds (it may be one past the
    # last Tune marker, or the only record if the driver died before Tune saved any).
    saved_metrics = state / "child_metrics.json"
    # Finished already: the driver died after the trial's outputs (metrics.json is written
    # last) but before Tune saved the experiment state. Nothing to redo: send the final result
    # again, read from the outputs (the same keys run_trial returned), so Tune's results hold it.
    finished = (out_dir / "metrics.json").is_file()
    resumed_from = 0
    if finished:
        resumed_from = cfg.child.epochs  # its state was dropped once the outputs existed
    elif (state / "child_trainer.pt").is_file() and saved_metrics.is_file():
        resumed_from = int(json.loads(saved_metrics.read_text()).get("epoch", 0))
    first_attempt = not (out_dir / "attempts.jsonl").exists()
    with open(out_dir / "attempts.jsonl", "a") as fh:
        fh.write(json.dumps({"time": time.time(), "trial_id": tune.get_context().get_trial_id(),
                             "resumed_from_epoch": resumed_from, "already_finished": finished,
                             "host": socket.gethostname(), "pid": os.getpid(),
                             "ray": ray.get_runtime_context().gcs_address,
                             "node": ray.get_runtime_context().get_node_id()}) + "\n")

    def send(metrics: dict[str, float], epoch: int) -> None:
        (marker / EPOCH_FILE).write_text(json.dumps({"epoch": epoch}))
        tune.report({**metrics, "epoch": epoch}, checkpoint=tune.Checkpoint.from_directory(str(marker)))

    if finished:
        try:
            send(read_result(out_dir), cfg.child.epochs)
        finally:
            shutil.rmtree(marker, ignore_errors=True)
        return
    fault_at = _fault_point(layout.name, name) if first_attempt else None
    # Epochs the state holds beyond Tune's last marker were reported by an attempt whose driver
    # may have died before logging them: report them again (the tracker skips epochs it has).
    marker_epoch = 0
    checkpoint = tune.get_checkpoint()
    if checkpoint is not None:
        with checkpoint.as_directory() as saved:
            if (Path(saved) / EPOCH_FILE).is_file():
                marker_epoch = int(json.loads((Path(saved) / EPOCH_FILE).read_text())["epoch"])
    for past in epoch_history(state):
        epoch = int(past["epoch"])
        if marker_epoch < epoch <= resumed_from and epoch < cfg.child.epochs:
            send(past, epoch)

    def report(metrics: dict[str, float], epoch: int) -> None:
        if epoch < cfg.child.epochs:  # the last epoch's result is run_trial's, sent below
            send(metrics, epoch)
        if fault_at is not None and epoch == fault_at:
            raise InjectedFault(f"injected fault after epoch {epoch} ({FAULT_ENV})")

    try:
        try:
            # a parent trained here says so in its store marker: the search's outer stage records it
            store = ParentStore(layout.parents_dir, owner={
                "trial": name, "node": ray.get_runtime_context().get_node_id()}) if reuse_parents else None
            timer = PhaseTimer()
            timer.process_imports = imports
            timer.add("startup", time.perf_counter() - t_start, time.thread_time() - c_start)
            result = run_trial(cfg, report=report, checkpoint_dir=state, out_dir=out_dir, parent_store=store,
                               progress=False, timer=timer, data_cache=layout.data_dir if reuse_parents else None)
        except TrialFailed as exc:
            # Caused by the knobs (empty mask, divergence): tell the driver before raising, so
            # Tune ends the trial FAILED instead of retrying it into the same failure.
            tune.report({FINAL_FAILURE: f"{type(exc).__name__}: {exc}"})
            raise
        # The outputs hold the weights; the resumable state is no longer needed once they exist
        # (a parent trained here leaves its training curve, which the tracker logs).
        if (state / PARENT_HISTORY).is_file():
            shutil.copyfile(state / PARENT_HISTORY, out_dir / PARENT_HISTORY)
        shutil.rmtree(state, ignore_errors=True)
        if fault_at == FAULT_AFTER_OUTPUTS:
            raise InjectedFault(f"injected fault after the outputs ({FAULT_ENV})")
        # The last epoch is reported only now, after run_trial wrote metrics.json, figures and
        # weights: Tune may stop a trial on any result (an ASHA rung can fall on the last epoch),
        # which would otherwise kill it mid-write; and a restore after the outputs exist finds
        # the trial `already_finished`. It is run_trial's result, not a report: an attempt that
        # resumes from a checkpoint of the last epoch (its predecessor died writing the outputs)
        # trains no epoch and so reports none, yet must end with its final result.
        send(result, cfg.child.epochs)
    finally:
        shutil.rmtree(marker, ignore_errors=True)
