"""One trial: data -> parent -> mask -> child -> metrics, the orchestration only.

``run_trial`` is the single entry point of ``compvae train`` and every search trial, so a config
exported from a search retrains exactly as the search ran it. With a ``checkpoint_dir`` every
finished stage leaves its state there and a restarted trial continues where it stopped.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from compvae.config import TrialConfig
from compvae.data_cache import DataCache
from compvae.errors import EmptyMaskError
from compvae.io import atomic_write_text
from compvae.parent_store import ParentStore, parent_key, stored_metrics_path
from compvae.pipeline.data import load_data
from compvae.pipeline.evaluation import child_recon_metrics, evaluate_child
from compvae.pipeline.masking import Masker, ParentCode, check_joint_coverage
from compvae.pipeline.objectives import build_child, child_trainer
from compvae.pipeline.outputs import write_mask_figure, write_outputs, write_timings
from compvae.pipeline.parent import focus_latent, obtain_parent
from compvae.pipeline.state import (
    CHILD_METRICS,
    CHILD_TRAINER,
    FIGURES_DIR,
    HISTORY_FILE,
    LIGHT_EVAL,
    read_history,
    stream,
)
from compvae.pipeline.timing import PhaseTimer
from compvae.progress import Progress
from compvae.training import peak_memory, reset_peak_memory, resolve_device

ReportFn = Callable[[dict[str, float], int], None]


def run_trial(
    config: TrialConfig | dict[str, Any],
    report: ReportFn | None = None,
    checkpoint_dir: str | Path | None = None,
    out_dir: str | Path | None = None,
    parent_store: ParentStore | str | Path | None = None,
    progress: bool = False,
    timer: PhaseTimer | None = None,
    data_cache: DataCache | str | Path | None = None,
) -> dict[str, float]:
    """Train parent and child under ``config`` and return the final metrics.

    ``report(metrics, epoch)`` is called once per child epoch (1-based). ``parent_store``
    (a directory or :class:`ParentStore`) shares trained parents between trials. ``timer``
    (a :class:`PhaseTimer`, e.g. holding the caller's ``startup``) receives the trial's phases;
    their breakdown lands in ``out_dir/timings.json``. ``data_cache`` (a directory or
    :class:`DataCache`) shares rendered images between the trials of a search; the metrics are
    the same with it as without.
    """
    cfg = with_threads(config if isinstance(config, TrialConfig) else TrialConfig.from_dict(config))
    prog = Progress(progress)
    timer = timer if timer is not None else PhaseTimer()
    t_start = time.perf_counter()
    with timer.phase("startup"):
        ckpt = Path(checkpoint_dir) if checkpoint_dir is not None else None
        if ckpt is not None:
            ckpt.mkdir(parents=True, exist_ok=True)
        device, store = _runtime(cfg, parent_store)
        cache = _data_cache(data_cache)
    reset_peak_memory(device)

    with timer.phase("data"):
        data = load_data(cfg, device, prog, cache=cache)

    # ---- parent ---------------------------------------------------------------------------
    with timer.phase("parent"):
        parent, parent_metrics, reused = obtain_parent(cfg, data, device, ckpt, store, prog)
    with timer.phase("latent"):
        latent = focus_latent(cfg, parent, data, ckpt)
    prog.write(f"mask   latent {latent}")

    # ---- masks + child -------------------------------------------------------------------
    with timer.phase("masks"):
        masker = Masker(cfg, parent, latent, data)
        pcode = ParentCode(cfg, parent)
        child = build_child(cfg, data.child_data.channels, device)
        try:
            trainer, mask_metrics = child_trainer(cfg, data, parent, child, masker, device)
        except EmptyMaskError:
            if out_dir is not None and cfg.eval.figures:  # the figure that explains the failure
                write_mask_figure(Path(out_dir) / FIGURES_DIR, cfg, data, masker)
            raise
        if ckpt is not None and (ckpt / CHILD_TRAINER).exists():
            trainer.load(ckpt / CHILD_TRAINER)
            prog.write(f"child  resumed at epoch {trainer.epoch}")

    metrics: dict[str, float] = {}
    last = ckpt / CHILD_METRICS if ckpt is not None else None
    if last is not None and last.exists() and trainer.epoch > 0:
        metrics = json.loads(last.read_text())  # the metrics of the epoch the checkpoint holds
    base = {**parent_metrics, **mask_metrics, "parent/reused": float(reused), "mask/latent": float(latent)}
    # A frozen parent's deterministic masks (and codes) of the held-out images are the same every
    # epoch: computed once. Randomized nuisance draws from the mask generator even then, so
    # those stay per epoch (the generator's sequence is part of the trial's result).
    fixed_test_inputs = cfg.parent.mode == "frozen" and (masker.oracle or cfg.mask.nuisance == "fixed")
    test_inputs: tuple[torch.Tensor, torch.Tensor | None] | None = None
    while trainer.epoch < cfg.child.epochs:
        t_epoch = time.perf_counter()
        with timer.phase("child_train"):
            logs = trainer.train_epoch()
        epoch = trainer.epoch
        final = epoch == cfg.child.epochs
        metrics = {**base, **{f"child/train_{k}": v for k, v in logs.items()}}
        with timer.phase("final_eval" if final else "epoch_eval"):
            if test_inputs is None or not fixed_test_inputs:
                test_inputs = (masker(data.test_child, stochastic=False, factors=data.test_factors),
                               pcode(data.test_child))
            test_masks, test_cond = test_inputs
            if cfg.parent.mode == "joint":
                check_joint_coverage(cfg, masker, test_masks, epoch)
            recon, active = child_recon_metrics(cfg, data, test_masks, test_cond, trainer.model_child)
            metrics.update(recon)
            if final:
                metrics.update(evaluate_child(cfg, data, masker, trainer.model_child, active, full=True))
            else:
                # seeded per epoch, so a resumed trial reports exactly what an uninterrupted one would
                rng_light = stream(cfg.train.seed, LIGHT_EVAL, epoch)
                metrics.update(evaluate_child(cfg, data, masker, trainer.model_child, active, full=False,
                                               rng=rng_light))
        metrics["epoch"] = float(epoch)
        metrics["child/epoch_seconds"] = time.perf_counter() - t_epoch
        metrics.update(peak_memory(device))
        if ckpt is not None:
            with timer.phase("checkpoint"):
                # metrics first: a crash between the two leaves the trainer one epoch behind, so
                # the epoch is simply redone; never a trainer ahead of its metrics
                history = read_history(ckpt) + [metrics]
                atomic_write_text(ckpt / HISTORY_FILE, json.dumps(history))
                atomic_write_text(ckpt / CHILD_METRICS, json.dumps(metrics))
                trainer.save(ckpt / CHILD_TRAINER)
        prog.epoch("child", epoch, cfg.child.epochs,
                   {k.split("/")[-1]: v for k, v in metrics.items()
                    if k in ("child/train_loss", "child/recon_error", "child/masked_recon_error", "child/mig")})
        if out_dir is not None and not final:
            write_timings(Path(out_dir), metrics, timer)  # a trial stopped after this epoch keeps it
        if report is not None:
            with timer.phase("report"):
                report(dict(metrics), epoch)

    metrics["trial_seconds"] = time.perf_counter() - t_start
    if out_dir is not None:
        write_outputs(Path(out_dir), cfg, data, parent, trainer.model_child, masker, metrics, prog, timer)
    return metrics


def prepare_parent(config: TrialConfig | dict[str, Any], parent_store: ParentStore | str | Path,
                   progress: bool = False, data_cache: DataCache | str | Path | None = None) -> dict[str, Any]:
    """Train (or find) the parent ``config`` names in the store and evaluate it, without a child.

    Why: a search's outer level trains its distinct parents up front, in parallel, so no trial
    waits on another's parent and the inner search can be limited to the strongest ones. The
    parent and its metrics land exactly where a trial's :func:`run_trial` looks for them.
    Returns the store key, whether it was already there, its metrics and the seconds taken.
    """
    cfg = config if isinstance(config, TrialConfig) else TrialConfig.from_dict(config)
    t0 = time.perf_counter()
    device, store = _runtime(cfg, parent_store)
    assert store is not None
    key = parent_key(cfg)
    cached = stored_metrics_path(cfg, store.path(key))
    if store.has(key) and cached.exists():  # a resumed outer stage: no data, no model needed
        return {"key": key, "reused": True, "metrics": json.loads(cached.read_text()),
                "seconds": time.perf_counter() - t0}
    prog = Progress(progress)
    data = load_data(cfg, device, prog, with_child=False, cache=_data_cache(data_cache))
    _, metrics, reused = obtain_parent(cfg, data, device, None, store, prog)
    return {"key": key, "reused": reused, "metrics": metrics, "seconds": time.perf_counter() - t0}


def _data_cache(cache: DataCache | str | Path | None) -> DataCache | None:
    return DataCache(cache) if isinstance(cache, (str, Path)) else cache


def with_threads(cfg: TrialConfig) -> TrialConfig:
    """``cfg`` with ``train.num_threads`` 0 (torch's default) made the count torch uses here, so
    the ``config.yaml`` a run writes retrains with the threads it ran with (the numbers depend on
    them: docs/design.md, "The tail and torch threads")."""
    if cfg.train.num_threads:
        return cfg
    return cfg.with_updates({"train.num_threads": torch.get_num_threads()})


def _runtime(cfg: TrialConfig, parent_store: ParentStore | str | Path | None
             ) -> tuple[torch.device, ParentStore | None]:
    """Torch threads, the device and the parent store, set up alike for a trial and a parent."""
    if cfg.train.num_threads:
        torch.set_num_threads(cfg.train.num_threads)
    store = ParentStore(parent_store) if isinstance(parent_store, (str, Path)) else parent_store
    return resolve_device(cfg.train.device), store
