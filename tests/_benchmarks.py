"""The benchmark scripts as modules, for their tests, through ``benchmarks/run.py``'s own loader
(the folder is no package, and ``benchmarks/search.py`` must not be imported as ``search``)."""

from __future__ import annotations

import importlib.util
from pathlib import Path
from types import ModuleType

RUNNER = Path(__file__).resolve().parents[1] / "benchmarks" / "run.py"


def load_benchmark(name: str) -> ModuleType:
    """``benchmarks/<name>.py``, loaded from its file as ``benchmarks/run.py`` loads it."""
    spec = importlib.util.spec_from_file_location("compvae_bench_run", RUNNER)
    assert spec is not None and spec.loader is not None
    runner = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(runner)
    return runner.load(name)
