"""benchmarks/search.py end to end on a small space: both sides run, the same trials and epochs,
reuse trains only the outer parents, and the issue #16 targets and the floor are printed."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

pytestmark = pytest.mark.slow  # two searches on a fresh local Ray: ~1-2 min on 2 cores
ROOT = Path(__file__).resolve().parents[1]


def test_search_benchmark_runs_both_sides_and_prints_the_targets(tmp_path):
    space = {
        "name": "bench", "preset": "tiny",
        "params": {"parent.beta": {"choice": [1.0, 2.0]}, "child.beta": {"uniform": [1.0, 4.0]}},
        "outer": {"params": ["parent.beta"]},
        "objective": {"metric": "child/mig", "mode": "max"},
        "search": {"sampler": "tpe", "seed": 0, "num_samples": 4, "max_concurrent": 2, "scheduler": "none",
                   "resources": {"cpus": 1, "gpus": 0}},
    }
    path = tmp_path / "space.yaml"
    path.write_text(yaml.safe_dump(space, sort_keys=False))
    done = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "search.py"), "--space", str(path),
                           "--num-cpus", "2", "--no-warmup", "--keep", str(tmp_path / "work")],
                          cwd=tmp_path, capture_output=True, text=True, timeout=600)
    out = done.stdout + done.stderr
    assert done.returncode == 0, out[-4000:]
    runs = dict(re.findall(r"run 0 +(reuse|noreuse): .*?(\d+ trials / \d+ child epochs, parents trained \d+)", out))
    assert runs["reuse"] == "4 trials / 8 child epochs, parents trained 2", out[-4000:]
    assert runs["noreuse"] == "4 trials / 8 child epochs, parents trained 4", out[-4000:]
    values = dict(re.findall(r"^  (\S.*?) +(\d+\.\d{3})  (?:target|the floor)", out, flags=re.M))
    assert set(values) == {"utilisation with reuse", "non-training share of a reused trial",
                           "wall-time ratio reuse/no-reuse", "ratio at equal utilisation (compute s)"}, out[-3000:]
    assert 0.0 < float(values["utilisation with reuse"]) <= 1.05
    # no scheduling of the same trials beats them run back to back in order with no overhead
    ceiling = float(re.search(r"^  utilisation ceiling with reuse +(\d+\.\d{3})  the trials", out, flags=re.M)[1])
    assert float(values["utilisation with reuse"]) <= ceiling + 0.001 <= 1.001, out[-3000:]
    # nor does it beat them with each slot's measured start and each trial's waits in report kept
    best = float(re.search(r"^  utilisation reachable with reuse +(\d+\.\d{3})  the same", out, flags=re.M)[1])
    assert float(values["utilisation with reuse"]) <= best + 0.001 <= ceiling + 0.002, out[-3000:]
    # the ratios are those of the table's wall and compute columns (printed to 0.1 s)
    table = {side: (float(w), float(c)) for side, w, c in
             re.findall(r"^ +(reuse|no reuse) +(\d+\.\d) +(\d+\.\d) ", out, flags=re.M)}
    (wall_r, comp_r), (wall_n, comp_n) = table["reuse"], table["no reuse"]
    for printed, num, den in ((values["wall-time ratio reuse/no-reuse"], wall_r, wall_n),
                              (values["ratio at equal utilisation (compute s)"], comp_r, comp_n)):
        low, high = (num - 0.05) / (den + 0.05), (num + 0.05) / (den - 0.05)
        assert low <= float(printed) <= high, (printed, num, den)
    assert "timeline:" in out and "where a trial's seconds go" in out
