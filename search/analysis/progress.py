"""Where a search stands, from its folder alone (works while it runs): ``ls`` and ``status``."""

from __future__ import annotations

import datetime as dt
import time
from dataclasses import dataclass, field
from pathlib import Path

from search.analysis.results import COMPLETED, FAILED, RUNNING, STOPPED, TrialSummary, best_trials
from search.layout import STATE_FILE, SearchLayout, SearchState, driver_running, storage_root
from search.space import SearchSpace, load_space

DONE = (COMPLETED, STOPPED, FAILED)


def format_duration(seconds: float) -> str:
    """``42s``, ``3m05s``, ``2h07m``: short, for progress lines."""
    s = int(round(max(seconds, 0.0)))
    if s < 60:
        return f"{s}s"
    if s < 3600:
        return f"{s // 60}m{s % 60:02d}s"
    return f"{s // 3600}h{(s % 3600) // 60:02d}m"


def eta_seconds(done: int, total: int, elapsed: float) -> float | None:
    """Remaining time at this session's rate (trials done in it per second); None before the first."""
    if done <= 0 or elapsed <= 0:
        return None
    return max(total - done, 0) * elapsed / done


@dataclass
class Progress:
    """A search's state as ``ls`` and ``status`` print it."""

    name: str
    status: str  # search.json's status; "running" only while a driver holds the search
    total: int
    done: int
    complete: int
    pruned: int
    failed: int
    started: str
    elapsed: float  # seconds since the current (or last) launch/resume
    eta: float | None
    best: dict[str, float] = field(default_factory=dict)
    best_trial: str | None = None
    running: list[str] = field(default_factory=list)  # "trial_00003 epoch 2/8"
    first_error: str | None = None


def _session_start(state: SearchState) -> float:
    starts = [h for h in state.history if h.get("event") in ("launch", "resume")]
    text = starts[-1]["time"] if starts else state.created
    return dt.datetime.fromisoformat(text).timestamp()


def progress(layout: SearchLayout, state: SearchState | None = None, space: SearchSpace | None = None) -> Progress:
    """Where the search stands now; "running" only while a driver holds its lock."""
    state = state or SearchState.load(layout)
    space = space or load_space(layout.space_file)
    summaries = TrialSummary.load_all(layout)
    live = driver_running(layout)
    status = state.status if live or state.status != "running" else "interrupted"
    start = _session_start(state)
    now = time.time()
    finished = [s for s in summaries if s.status in DONE]
    if live:
        elapsed = now - start
    else:  # stopped: up to its last written summary
        mtimes = [(layout.trial_dir(s.name) / "summary.json").stat().st_mtime for s in finished]
        elapsed = max([start, *mtimes]) - start
    this_session = sum((layout.trial_dir(s.name) / "summary.json").stat().st_mtime >= start for s in finished)
    best = best_trials(summaries, space, 1)
    failures = [s for s in summaries if s.status == FAILED]
    return Progress(
        name=layout.name, status=status, total=space.num_trials, done=len(finished),
        complete=sum(s.status == COMPLETED for s in summaries), pruned=sum(s.status == STOPPED for s in summaries),
        failed=len(failures), started=state.created, elapsed=elapsed,
        eta=eta_seconds(this_session, space.num_trials - (len(finished) - this_session), elapsed) if live else None,
        best={m: float(best[0].metrics[m]) for m in space.metrics} if best else {},
        best_trial=best[0].name if best else None,
        running=[f"{s.name} epoch {s.epoch}/{s.final_epoch}" for s in summaries if s.status == RUNNING and live],
        first_error=f"{failures[0].name}: {failures[0].error}" if failures else None)


def status_text(p: Progress) -> str:
    lines = [f"search {p.name}: {p.status}, {p.done}/{p.total} trials done "
             f"({p.complete} complete, {p.pruned} pruned, {p.failed} failed)",
             f"started {p.started}, elapsed {format_duration(p.elapsed)}"
             + ("" if p.status != "running" else
                f", ETA {format_duration(p.eta)}" if p.eta is not None else ", ETA after the first trial ends")]
    if p.best:
        lines.append("best: " + ", ".join(f"{m}={v:.4g}" for m, v in p.best.items()) + f" ({p.best_trial})")
    else:
        lines.append("best: no complete trial yet")
    if p.running:
        lines.append("running: " + ", ".join(p.running))
    if p.first_error:
        lines.append(f"failures: {p.failed}, first: {p.first_error}")
    return "\n".join(lines)


def searches_in(storage: str | Path | None) -> list[SearchLayout]:
    """Every search folder directly under the storage folder, by name."""
    root = storage_root(storage)
    if not root.is_dir():
        return []
    return [SearchLayout(p) for p in sorted(root.iterdir()) if (p / STATE_FILE).is_file()]
