"""A stopper that ends the search at the first trial whose final epoch lacks an objective metric."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ray.tune.stopper import Stopper

from search.trials import final_epoch, trial_metrics


class ObjectiveGuard(Stopper):
    """Ends the search when a trial reaches its final epoch without an objective metric.

    Names of metrics are only known once a trial reports, so a typo in ``objective`` (or an
    evaluation metric missing from ``eval.metrics``) is caught at the first completed trial
    instead of after the whole budget. The message goes to ``abort.txt`` for the driver to
    raise as a UserError (the stopper object itself is pickled away by Tune on resume).
    """

    def __init__(self, layout_root: str, metrics: list[str], base_epochs: int) -> None:
        self.root = layout_root
        self.metrics = list(metrics)
        self.base_epochs = base_epochs
        self._abort = False

    def __call__(self, trial_id: str, result: dict[str, Any]) -> bool:
        final = final_epoch(result, self.base_epochs)
        if float(result.get("epoch", 0)) < final:
            return False
        missing = [m for m in self.metrics if m not in result]
        if not missing:
            return False
        known = sorted(trial_metrics(result))
        msg = (f"objective: metric {', '.join(missing)} is not reported by the trials "
               f"(they report {', '.join(known)}); fix objective.metric or eval.metrics in the space")
        (Path(self.root) / "abort.txt").write_text(msg)
        self._abort = True
        return True

    def stop_all(self) -> bool:
        return self._abort
