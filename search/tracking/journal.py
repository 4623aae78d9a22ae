"""The offline journal: MLflow writes kept, in order, in the search folder while the store is away.

JSON lines, one write each; :meth:`MlflowTracker.flush <search.tracking.client.MlflowTracker.flush>`
replays them, and :func:`sync_pending` points trial summaries at the runs created meanwhile.
"""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from compvae.io import atomic_write_text
from search.analysis.results import TrialSummary
from search.layout import SearchLayout, SearchState

if TYPE_CHECKING:
    from search.tracking.client import MlflowTracker

# Writes buffered while the MLflow store is unreachable, in the search folder.
JOURNAL = "mlflow_pending.jsonl"
PENDING_PREFIX = "pending-"
log = logging.getLogger(__name__)


class Journal:
    """The journal file: append, read back, keep the unsent rest, clear."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def pending(self) -> int:
        """Writes waiting in the journal."""
        if not self.path.is_file():
            return 0
        return sum(1 for line in self.path.read_text().splitlines() if line.strip())

    def has_pending(self) -> bool:
        """Cheap check for the write path (a stat, not a read of the whole journal)."""
        try:
            return self.path.stat().st_size > 0
        except FileNotFoundError:
            return False

    def append(self, op: str, args: dict[str, Any]) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.path, "a") as fh:
            fh.write(json.dumps({"op": op, "args": args, "time": time.time()}) + "\n")
            fh.flush()

    def entries(self) -> list[dict[str, Any]]:
        if not self.path.is_file():
            return []
        return [json.loads(line) for line in self.path.read_text().splitlines() if line.strip()]

    def keep(self, rest: list[dict[str, Any]]) -> None:
        """Replace the journal by the writes still unsent."""
        atomic_write_text(self.path, "".join(json.dumps(e) + "\n" for e in rest))

    def clear(self) -> None:
        self.path.unlink(missing_ok=True)


def sync_pending(tracker: MlflowTracker, layout: SearchLayout) -> tuple[int, int]:
    """Send buffered MLflow writes if the store is back; point trial summaries that still hold a
    placeholder run id at the real run. Returns (writes sent, writes still pending)."""
    try:
        sent = tracker.flush()
    except Exception as exc:  # the store answers but fails otherwise: keep the journal for later
        log.warning("could not send buffered MLflow writes: %s", exc)
        sent = 0
    pending = tracker.pending()
    stale = [x for x in TrialSummary.load_all(layout) if (x.mlflow_run_id or "").startswith(PENDING_PREFIX)]
    if stale and not pending:
        state = SearchState.load(layout)
        for summary in stale:
            real = tracker.resolved.get(summary.mlflow_run_id or "")
            if real is None and state.mlflow_experiment_id and state.mlflow_parent_run_id:
                run = tracker.find_trial_run(state.mlflow_experiment_id, state.mlflow_parent_run_id,
                                             summary.trial_id)
                real = run.info.run_id if run is not None else None
            if real is not None:
                summary.mlflow_run_id = real
                summary.save(layout)
    return sent, pending

