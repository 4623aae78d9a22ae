"""benchmarks/search.py's clock: a trial's end is measured to the sub-second, not Tune's whole seconds."""

from __future__ import annotations

import os
from pathlib import Path

from _benchmarks import load_benchmark


def _touch(path: Path, when: float) -> None:
    path.write_text("{}")
    os.utime(path, (when, when))


def test_a_stopped_trial_ends_at_its_last_timings_write_not_the_whole_second_before(tmp_path):
    bench = load_benchmark("search")
    # ASHA stopped it after an epoch whose report came at 1000.8 s: Tune's timestamp says 1000
    _touch(tmp_path / "timings.json", 1000.8)
    assert abs(bench.trial_end({"timestamp": 1000}, tmp_path) - 1000.8) < 1e-6


def test_a_complete_trial_ends_at_its_metrics_file_and_a_bare_one_at_its_timestamp(tmp_path):
    bench = load_benchmark("search")
    _touch(tmp_path / "timings.json", 1000.4)
    _touch(tmp_path / "metrics.json", 1003.25)  # outputs written after the last epoch
    assert abs(bench.trial_end({"timestamp": 1000}, tmp_path) - 1003.25) < 1e-6
    assert bench.trial_end({"timestamp": 1000}, tmp_path / "none") == 1000.0
    # a file older than the timestamp (a trial resumed after its outputs existed) does not pull it back
    assert bench.trial_end({"timestamp": 1010}, tmp_path) == 1010.0


def test_the_in_order_ceiling_is_the_schedule_tune_would_run_with_no_overhead():
    bench = load_benchmark("search")
    # three equal trials on two slots: the third runs alone, half the span idle on one slot
    assert bench.in_order_ceiling([10.0, 10.0, 10.0], 2) == (0.75, 10.0)
    # a long first trial beside two short ones: both slots busy to the end
    assert bench.in_order_ceiling([10.0, 5.0, 5.0], 2) == (1.0, 0.0)
    # the last trial starts when the second ends and runs on past the first's end
    util, tail = bench.in_order_ceiling([10.0, 6.0, 8.0], 2)
    assert (round(util, 4), tail) == (round(24 / 28, 4), 4.0)
