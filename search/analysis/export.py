"""Export the best configs of a search as YAML that ``compvae train`` accepts.

Single objective: the top-k complete trials (``--top``, default 1). Multi-objective: every
complete trial on the Pareto front (``--top`` keeps the first k by the first objective).
"Complete" = ran to its own final child epoch (see :mod:`search.analysis.results`): an ASHA-cut trial's
truncated numbers cannot be compared with a finished one's.

The YAML is the trial's own ``config.yaml`` as written by ``run_trial`` when present (the
exact config the trial ran), else the driver's reconstruction (base + sample), validated either
way, with a comment header naming the search, the trial and its objective values; the trial's
metrics go beside it as ``<same name>.metrics.json``.
"""

from __future__ import annotations

import csv
import json
import re
from pathlib import Path
from typing import Any

from compvae.config import TrialConfig
from compvae.errors import UserError
from compvae.paths import check_folder
from search.analysis.results import TrialSummary, best_trials
from search.layout import SearchLayout, SearchState, driver_running
from search.space import SearchSpace


def _config_of(layout: SearchLayout, s: TrialSummary) -> TrialConfig:
    path = layout.trial_dir(s.name) / "config.yaml"
    if path.is_file():
        return TrialConfig.from_yaml(path)
    return TrialConfig.from_dict(s.config, source=f"trial {s.name}")


_EXPORT_FILE = re.compile(r"^((rank|pareto)\d+_.+\.(yaml|metrics\.json)|best\.yaml|index\.csv)$")


def _clear_earlier_export(out: Path) -> None:
    """An earlier export's files in ``out`` are removed, so it holds this export only (a stale
    ``rank02`` beside a new ``rank01`` would read as one ranking); other files refuse."""
    if not out.is_dir():
        return
    entries = list(out.iterdir())
    foreign = [p.name for p in entries if not (p.is_file() and _EXPORT_FILE.match(p.name))]
    if foreign:
        raise UserError(f"--out {out}: holds files that are not an export ({', '.join(sorted(foreign)[:3])}); "
                        "choose an empty or new folder")
    for p in entries:
        p.unlink()


def export_best(layout: SearchLayout, space: SearchSpace, out_dir: str | Path, top: int | None = None,
                tracker: Any = None, state: SearchState | None = None) -> list[Path]:
    """Write the chosen configs (+ metrics) to ``out_dir``; returns the YAML paths."""
    summaries = TrialSummary.load_all(layout)
    if top is not None and top < 1:
        raise UserError(f"--top {top}: must be at least 1")
    chosen = best_trials(summaries, space, top if (top or space.multi_objective) else 1)
    if not chosen:
        # RUNNING in a summary means "running" only while a driver runs the search
        stopped = not driver_running(layout)
        label = {"RUNNING": "unfinished (search stopped; resume it)" if stopped else "running"}
        counts = {st: sum(s.status == st for s in summaries) for st in {s.status for s in summaries}}
        shown = ", ".join(f"{v} {label.get(k, k.lower())}" for k, v in sorted(counts.items()))
        raise UserError(f"search {layout.name}: no trial has finished its full budget "
                        f"({shown or 'no trials'}); nothing to export")
    out = check_folder("--out", out_dir)
    _clear_earlier_export(out)
    out.mkdir(parents=True, exist_ok=True)
    kind = "pareto" if space.multi_objective else "rank"
    written: list[Path] = []
    rows = []
    for i, s in enumerate(chosen, start=1):
        cfg = _config_of(layout, s)
        objectives = {m: s.metrics.get(m) for m in space.metrics}
        stem = f"{kind}{i:02d}_{s.name}"
        header = (f"# search {layout.name}, {s.name} ({kind} {i}): "
                  + ", ".join(f"{m}={v:.6g}" for m, v in objectives.items() if v is not None)
                  + f"\n# retrain: compvae train {stem}.yaml --out DIR\n")
        path = out / f"{stem}.yaml"
        path.write_text(header + cfg.to_yaml())
        (out / f"{stem}.metrics.json").write_text(json.dumps(
            {"search": layout.name, "trial": s.name, "trial_id": s.trial_id, "objectives": objectives,
             "params": s.params, "metrics": s.metrics, "mlflow_run_id": s.mlflow_run_id},
            indent=2, sort_keys=True))
        written.append(path)
        rows.append({"file": path.name, "trial": s.name, **objectives, **s.params})
    if not space.multi_objective:
        (out / "best.yaml").write_text(written[0].read_text())
    with open(out / "index.csv", "w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    if tracker is not None and state is not None and state.mlflow_parent_run_id:
        tracker.log_artifact(state.mlflow_parent_run_id, out, "export")
    return written
