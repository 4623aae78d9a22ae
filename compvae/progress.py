"""Progress lines for long work (parent and child training, evaluation) on stderr.

One line per epoch with a bar, the stage's key losses and elapsed time: readable in a terminal,
in a CI log and in a Ray worker's captured output alike (no carriage-return tricks).
"""

from __future__ import annotations

import sys
import time
from typing import TextIO


class Progress:
    def __init__(self, enabled: bool = True, stream: TextIO | None = None, width: int = 20) -> None:
        self.enabled = enabled
        self.stream = stream or sys.stderr
        self.width = width
        self.t0 = time.perf_counter()

    def epoch(self, stage: str, done: int, total: int, values: dict[str, float] | None = None) -> None:
        if not self.enabled:
            return
        filled = int(self.width * done / max(total, 1))
        bar = "#" * filled + "-" * (self.width - filled)
        vals = "  ".join(f"{k} {v:.4g}" for k, v in (values or {}).items())
        self.write(f"{stage:<7}[{bar}] {done}/{total}  {vals}")

    def write(self, text: str) -> None:
        if self.enabled:
            elapsed = time.perf_counter() - self.t0
            print(f"{text}  ({elapsed:.0f}s)", file=self.stream, flush=True)
