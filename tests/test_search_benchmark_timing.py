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


def test_the_reachable_utilisation_keeps_only_the_slots_start_and_the_waits_in_report():
    bench = load_benchmark("search")
    # slots free from their first trials' starts (2 s and 3 s after the launch); trial 1 waits 1 s
    # in report: a 2-12, b 3-14, c on a 12-22
    assert bench.in_order_ends([10.0, 11.0, 10.0], 2, [3.0, 2.0]) == [12.0, 14.0, 22.0]
    assert bench.reachable([10.0, 10.0, 10.0], [0.0, 1.0, 0.0], [2.0, 3.0, 12.5], 2) == 30.0 / 44.0
    # an outer stage's parents count as compute, as in the measured utilisation
    assert bench.reachable([10.0, 10.0, 10.0], [0.0, 1.0, 0.0], [2.0, 3.0, 12.5], 2, 4.0) == 34.0 / 44.0
    # nothing lost at the start and no waits: the ceiling itself
    ceiling, _ = bench.in_order_ceiling([10.0, 6.0, 8.0], 2)
    assert bench.reachable([10.0, 6.0, 8.0], [0.0] * 3, [0.0, 0.0, 6.0], 2) == ceiling


def test_the_timeline_splits_idle_slots_into_between_trials_and_the_tail():
    bench = load_benchmark("search")
    # two slots: a 0-10 and b 1-6 side by side, c 7-12 starts a second after b ended; a ends at
    # 10, so c runs alone from 10 to 12 (the tail); the driver started at -2 and ended at 13
    line = bench.timeline(-2.0, 13.0, [(0.0, 10.0), (1.0, 6.0), (7.0, 12.0)], None, 2)
    assert line["before work s"] == 2.0 and line["first trial at s"] == 2.0
    assert line["trials span s"] == 12.0 and line["after last trial s"] == 1.0
    assert line["idle slot-s in span"] == 24.0 - 20.0  # 0-1 and 6-7 on b's slot, 10-12 on a's
    assert (line["tail s"], line["idle slot-s in tail"]) == (2.0, 2.0)
    line["waiting in report slot-s"] = 0.5
    budget = bench.slot_budget(15.0, 19.5, 0.0, line, 2)
    assert budget == {"compute": 19.5, "before first trial": 4.0, "held in report": 0.5,
                      "idle between trials": 2.0, "idle in tail": 2.0, "after last trial": 2.0,
                      "unaccounted": 0.0}


def test_with_fewer_trials_than_slots_the_whole_span_is_tail_as_in_the_ceiling():
    bench = load_benchmark("search")
    line = bench.timeline(0.0, 10.0, [(1.0, 9.0)], None, 2)
    assert (line["tail s"], line["idle slot-s in tail"]) == (8.0, 8.0)
    assert bench.in_order_ceiling([8.0], 2) == (0.5, 8.0)
