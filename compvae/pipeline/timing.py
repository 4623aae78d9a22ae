"""Where a trial's seconds go: wall-clock phases, written to ``timings.json`` (never metrics.json).

A trial is timed as consecutive phases, so they add up to its wall time. The child's epochs
(``child_train`` plus each epoch's ``epoch_eval``, the per-epoch evaluation that feeds ASHA,
its checkpoint and its report) are the trial's training; everything before the first epoch
(start-up, data, parent, masks) and after the last (final evaluation, figures, weights) is the
per-trial fixed cost a search pays again in every trial. ``breakdown`` gives both as flat
floats (the search's MLflow callback logs every ``timings.json`` entry as a metric):

    breakdown/<phase>_seconds     each phase
    breakdown/total_seconds       their sum: the trial's wall time from its first phase
    breakdown/child_epochs_seconds  child_train + epoch_eval + checkpoint + report
    breakdown/non_training_share  1 - child_epochs / total (the issue #16 target: <= 0.15)
    breakdown/child_train_share   child_train / total (the optimiser steps alone)
    breakdown/<phase>_cpu_seconds the CPU seconds of the trial's thread in each phase, and
    breakdown/cpu_non_training_share  the same share in CPU seconds: on a machine shared with
                                  other work, wall seconds include waiting for a core and CPU
                                  seconds do not, so shares in CPU seconds survive contention
                                  (with one torch thread, as a search's 1-CPU trials run)
    breakdown/process_imports_seconds  torch and the trial code imported by the worker process
                                  (not a phase, not in the total): only the first trial of each
                                  worker pays it, the next ones reuse the process (reuse_actors)
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterator

#: The phases in trial order (a phase not run is 0).
PHASES = ("startup", "data", "parent", "latent", "masks", "child_train", "epoch_eval", "checkpoint",
          "report", "final_eval", "figures", "outputs")
#: The phases that are the child's epochs (the training a trial exists for).
EPOCH_PHASES = ("child_train", "epoch_eval", "checkpoint", "report")
PREFIX = "breakdown/"


class PhaseTimer:
    """Accumulates wall-clock seconds per phase (``with timer.phase("data"): ...``)."""

    def __init__(self) -> None:
        self.seconds: dict[str, float] = dict.fromkeys(PHASES, 0.0)
        self.cpu_seconds: dict[str, float] = dict.fromkeys(PHASES, 0.0)
        self.process_imports = 0.0  # wall seconds, once per process (see the module docstring)

    @contextlib.contextmanager
    def phase(self, name: str) -> Iterator[None]:
        if name not in self.seconds:
            raise ValueError(f"unknown phase {name!r}; one of {PHASES}")
        t0, c0 = time.perf_counter(), time.thread_time()
        try:
            yield
        finally:
            self.seconds[name] += time.perf_counter() - t0
            self.cpu_seconds[name] += time.thread_time() - c0

    def add(self, name: str, seconds: float, cpu_seconds: float = 0.0) -> None:
        if name not in self.seconds:
            raise ValueError(f"unknown phase {name!r}; one of {PHASES}")
        self.seconds[name] += float(seconds)
        self.cpu_seconds[name] += float(cpu_seconds)

    def breakdown(self) -> dict[str, float]:
        """The flat ``breakdown/...`` entries of ``timings.json`` (see the module docstring)."""
        total = sum(self.seconds.values())
        epochs = sum(self.seconds[p] for p in EPOCH_PHASES)
        out = {f"{PREFIX}{k}_seconds": v for k, v in self.seconds.items()}
        out[f"{PREFIX}total_seconds"] = total
        out[f"{PREFIX}child_epochs_seconds"] = epochs
        out[f"{PREFIX}non_training_share"] = 1.0 - epochs / total if total > 0 else 0.0
        out[f"{PREFIX}child_train_share"] = self.seconds["child_train"] / total if total > 0 else 0.0
        cpu_total = sum(self.cpu_seconds.values())
        cpu_epochs = sum(self.cpu_seconds[p] for p in EPOCH_PHASES)
        out.update({f"{PREFIX}{k}_cpu_seconds": v for k, v in self.cpu_seconds.items()})
        out[f"{PREFIX}total_cpu_seconds"] = cpu_total
        out[f"{PREFIX}cpu_non_training_share"] = 1.0 - cpu_epochs / cpu_total if cpu_total > 0 else 0.0
        out[f"{PREFIX}process_imports_seconds"] = self.process_imports
        return out
