"""Per-trial summaries and the questions asked of them: best trials, Pareto front, table.

The driver's tracking callback writes ``trials/<trial>/summary.json`` on every event, so
report/export/the final table read one small file per trial instead of Tune internals, and work
on a running, interrupted or finished search alike. "Complete" means the trial reached its own
final child epoch (where ``run_trial`` adds the full evaluation); trials cut by ASHA or failed
never rank as best and never enter a Pareto front, since their numbers are not comparable.
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, field
from typing import Any

import pandas as pd

from search.layout import SearchLayout, write_json_atomic
from search.space import SearchSpace

RUNNING, COMPLETED, STOPPED, FAILED = "RUNNING", "COMPLETED", "STOPPED", "FAILED"
# Key of the result a trial sends just before raising a TrialFailed (compvae.errors): the
# driver then ends the trial FAILED without retrying it, as a retry would fail the same way.
FINAL_FAILURE = "trial_failed"
LOST = "LOST"  # started, then lost with a killed driver before Tune saved it; replaced on resume


@dataclass
class TrialSummary:
    trial_id: str
    name: str
    status: str = RUNNING  # RUNNING | COMPLETED | STOPPED (by ASHA) | FAILED | LOST
    epoch: int = 0
    final_epoch: int = 0
    params: dict[str, Any] = field(default_factory=dict)  # the sampled values only
    config: dict[str, Any] = field(default_factory=dict)  # the full TrialConfig
    metrics: dict[str, float] = field(default_factory=dict)  # last reported
    error: str | None = None
    mlflow_run_id: str | None = None
    retries: int = 0
    adopted: bool = False  # finished after a killed driver's last Tune snapshot (search/tracking/adopt.py)

    @property
    def complete(self) -> bool:
        return self.status == COMPLETED and self.epoch >= self.final_epoch

    @property
    def ended(self) -> str:
        """How a trial that returned ended: COMPLETED at its last epoch, else STOPPED (by ASHA)."""
        return COMPLETED if self.final_epoch and self.epoch >= self.final_epoch else STOPPED

    def save(self, layout: SearchLayout) -> None:
        write_json_atomic(layout.trial_dir(self.name) / "summary.json", asdict(self))

    @classmethod
    def load_all(cls, layout: SearchLayout) -> list[TrialSummary]:
        out = []
        if layout.trials_dir.is_dir():
            for path in sorted(layout.trials_dir.glob("*/summary.json")):
                out.append(cls(**json.loads(path.read_text())))
        return out


def knob_value(summary: TrialSummary, knob: str) -> Any:
    """The trial's value of a dotted TrialConfig field: its sampled value if the knob was
    searched (or added by grid repeats, like ``train.seed``), else the full config's value."""
    if knob in summary.params:
        return summary.params[knob]
    section, _, name = knob.partition(".")
    return summary.config.get(section, {}).get(name)


def finite_number(x: Any) -> bool:
    """A real, finite number (not a bool, None, NaN or a string): what a metric value may be."""
    return isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x)


def objective_values(s: TrialSummary, space: SearchSpace) -> list[float] | None:
    vals = [s.metrics.get(m) for m in space.metrics]
    return [float(v) for v in vals] if all(finite_number(v) for v in vals) else None  # type: ignore[arg-type]


def complete_trials(summaries: list[TrialSummary], space: SearchSpace) -> list[TrialSummary]:
    return [s for s in summaries if s.complete and objective_values(s, space) is not None]


def ranked(summaries: list[TrialSummary], space: SearchSpace) -> list[TrialSummary]:
    """Complete trials, best first on the first objective."""
    sign = -1.0 if space.modes[0] == "max" else 1.0
    done = complete_trials(summaries, space)
    return sorted(done, key=lambda s: sign * objective_values(s, space)[0])  # type: ignore[index]


def _dominates(a: list[float], b: list[float], modes: list[str]) -> bool:
    better_or_equal = all((x >= y) if m == "max" else (x <= y) for x, y, m in zip(a, b, modes, strict=True))
    strictly = any((x > y) if m == "max" else (x < y) for x, y, m in zip(a, b, modes, strict=True))
    return better_or_equal and strictly


def pareto_front(summaries: list[TrialSummary], space: SearchSpace) -> list[TrialSummary]:
    """Non-dominated complete trials, sorted on the first objective (best first)."""
    done = ranked(summaries, space)
    vals = {s.trial_id: objective_values(s, space) for s in done}
    return [s for s in done
            if not any(_dominates(vals[o.trial_id], vals[s.trial_id], space.modes)  # type: ignore[arg-type]
                       for o in done if o is not s)]


def best_trials(summaries: list[TrialSummary], space: SearchSpace, top: int | None = None) -> list[TrialSummary]:
    """Top-k on the objective (single) or the Pareto front (multi), complete trials only."""
    chosen = pareto_front(summaries, space) if space.multi_objective else ranked(summaries, space)
    return chosen[:top] if top else chosen


def trials_frame(summaries: list[TrialSummary], space: SearchSpace) -> pd.DataFrame:
    """One row per trial: name, status, epoch, objectives, searched params; best first."""
    order = {s.trial_id: i for i, s in enumerate(ranked(summaries, space))}
    front = {s.trial_id for s in pareto_front(summaries, space)} if space.multi_objective else set()
    rows = []
    for s in sorted(summaries, key=lambda s: (order.get(s.trial_id, len(order)), s.name)):
        row: dict[str, Any] = {"trial": s.name, "status": s.status, "epoch": f"{s.epoch}/{s.final_epoch}"}
        if space.multi_objective:
            row["pareto"] = "*" if s.trial_id in front else ""
        for m in space.metrics:
            row[m] = s.metrics.get(m, float("nan"))
        for p in space.params:
            row[p] = knob_value(s, p)
        if s.error:
            row["error"] = s.error[:60]
        rows.append(row)
    return pd.DataFrame(rows)


def format_table(frame: pd.DataFrame, max_rows: int | None = None) -> str:
    if frame.empty:
        return "(no trials)"
    shown = frame.head(max_rows) if max_rows else frame
    return shown.to_string(index=False, float_format=lambda v: f"{v:.4g}", na_rep="-")
