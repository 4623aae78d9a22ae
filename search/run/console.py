"""Progress lines while a search runs: one short line per event, from the driver.

Ray's own reporter prints a wide table of every config key (``config/...``) each few seconds;
this prints what a person watches: trial, status, epoch, the objective(s) and the searched
params, plus a running count. Plain lines, so a CI log and a terminal read the same.
"""

from __future__ import annotations

import sys
import time
from typing import Any, TextIO

from ray.tune import Callback
from ray.tune.experiment import Trial

from search.analysis.progress import eta_seconds, format_duration
from search.analysis.results import FINAL_FAILURE
from search.trials import final_epoch, trial_error, trial_label


def _fmt(v: Any) -> str:
    if isinstance(v, float):
        return f"{v:.4g}"
    return str(v)


class ConsoleCallback(Callback):
    def __init__(self, metrics: list[str], params: list[str], total: int, base_epochs: int,
                 asha_metric: str | None = None, stream: TextIO | None = None,
                 modes: list[str] | None = None) -> None:
        self.modes = list(modes) if modes else ["max"] * len(metrics)
        self._best: dict[str, tuple[float, str]] = {}
        self.asha_metric = asha_metric
        self._asha_warned = False
        self.metrics = list(metrics)
        self.params = list(params)
        self.total = total
        self.base_epochs = base_epochs
        self._stream = stream
        self._t0 = time.monotonic()
        self._done: set[str] = set()

    def __getstate__(self) -> dict[str, Any]:
        state = dict(self.__dict__)
        state["_stream"] = None  # sys.stdout of the launching process: not picklable, not wanted
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        self._t0 = time.monotonic()

    def _print(self, text: str) -> None:
        stream = self._stream or sys.stdout
        print(f"[{time.monotonic() - self._t0:6.0f}s] {text}", file=stream, flush=True)

    def _params(self, trial: Trial) -> str:
        return " ".join(f"{p}={_fmt(trial.config[p])}" for p in self.params if p in trial.config)

    def _objectives(self, result: dict[str, Any]) -> str:
        return " ".join(f"{m}={_fmt(result[m])}" for m in self.metrics if m in result)

    def _final(self, trial: Trial) -> int:
        return final_epoch(trial.config, self.base_epochs)

    def on_trial_start(self, iteration: int, trials: list[Trial], trial: Trial, **info: Any) -> None:
        self._print(f"{trial_label(trial)} started   {self._params(trial)}")

    def on_trial_result(self, iteration: int, trials: list[Trial], trial: Trial,
                        result: dict[str, Any], **info: Any) -> None:
        if FINAL_FAILURE in result:
            return  # the trial's FAILED line follows
        epoch = int(result.get("epoch", 0))
        self._print(f"{trial_label(trial)} epoch {epoch}/{self._final(trial)}  {self._objectives(result)}")
        if (self.asha_metric and not self._asha_warned and epoch < self._final(trial)
                and self.asha_metric not in result):
            self._asha_warned = True  # ASHA skips such results: it would never cut a trial
            self._print(f"warning: ASHA's metric {self.asha_metric} is only reported at the final epoch, so "
                        "ASHA cannot stop weak trials early; set search.scheduler.metric/mode to a per-epoch "
                        "metric such as child/mig")

    def _outlook(self, trials: list[Trial]) -> str:
        """Trials done of the search, the ETA at this session's rate, the running best."""
        done = {t.trial_id for t in trials if t.status in ("TERMINATED", "ERROR")} | self._done
        elapsed = time.monotonic() - self._t0
        eta = eta_seconds(len(self._done), self.total - (len(done) - len(self._done)), elapsed)
        text = f"{len(done)}/{self.total} done, ETA {format_duration(eta) if eta is not None else '?'}"
        best = getattr(self, "_best", {})
        if best:
            text += ", best " + " ".join(f"{m}={_fmt(v)} ({n})" for m, (v, n) in best.items())
        return text

    def _update_best(self, trial: Trial, result: dict[str, Any]) -> None:
        best = self.__dict__.setdefault("_best", {})
        for m, mode in zip(self.metrics, getattr(self, "modes", None) or ["max"] * len(self.metrics), strict=True):
            v = result.get(m)
            if not isinstance(v, (int, float)) or v != v:
                continue
            if m not in best or (v > best[m][0] if mode == "max" else v < best[m][0]):
                best[m] = (float(v), trial_label(trial))

    def on_trial_complete(self, iteration: int, trials: list[Trial], trial: Trial, **info: Any) -> None:
        self._done.add(trial.trial_id)
        last = trial.last_result or {}
        epoch = int(last.get("epoch", 0))
        complete = epoch >= self._final(trial)
        how = "completed" if complete else f"stopped by ASHA at epoch {epoch}"
        if complete:
            self._update_best(trial, last)
        self._print(f"{trial_label(trial)} {how}  {self._objectives(last)}  ({self._outlook(trials)})")

    def on_trial_recover(self, iteration: int, trials: list[Trial], trial: Trial, **info: Any) -> None:
        self._print(f"{trial_label(trial)} failed, retrying from its last checkpoint: {trial_error(trial)}")

    def on_trial_error(self, iteration: int, trials: list[Trial], trial: Trial, **info: Any) -> None:
        self._done.add(trial.trial_id)
        self._print(f"{trial_label(trial)} FAILED: {trial_error(trial)}  ({self._outlook(trials)})")
