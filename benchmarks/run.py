"""All benchmarks in one run, and one table of their side-by-side ratios.

Each benchmark measures its two sides alternately in the same process (so machine drift hits
both alike) and prints its own details; this script calls them in turn and ends with a table:

* trainer: ``Trainer`` images/s over a bare PyTorch loop's (median of paired runs; target >= 0.95);
* metrics: fast DCI seconds over faithful DCI seconds, and the disentanglement difference;
* probe: the informativeness probe's seconds over scikit-learn's MLPClassifier's at the final
  evaluation's size, and whether every score is the same float;
* threads: the quick child's epoch with 2 torch threads over 1, and whether its weights match
  (why a trial's thread count is part of its config);
* search:  wall time of the quick search with parent reuse over without (target <= 0.55), and
  Ray Tune utilisation (trial compute s / (wall s x concurrency); overhead = 1 - utilisation).

    python benchmarks/run.py                 # full sizes: the quick search twice dominates (~20+ min, 2 cores)
    python benchmarks/run.py --fast          # trimmed sizes throughout (a few minutes)
    python benchmarks/run.py --search-args "--num-samples 4" --skip metrics

The benchmark modules are loaded from their files: ``benchmarks/search.py`` must not be
imported as ``search`` (that name is the search package).
"""

from __future__ import annotations

import argparse
import importlib.util
import shlex
import sys
import time
from pathlib import Path
from types import ModuleType

HERE = Path(__file__).resolve().parent
# Run as a script, this folder heads sys.path and would shadow the `search` package.
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != HERE]

# Arguments of each benchmark under --fast: every side still measured, on less work.
FAST = {
    "trainer": "--steps 20 --repeats 5",
    "metrics": "--num-train 3000 --num-test 1500 --faithful-n 1500 --sampling-votes 1000",
    "probe": "--sizes 1000 3000 --repeats 1",
    "threads": "--num-train 512",
    "search": "--num-samples 4 --parent-epochs 6 --child-epochs 3",
}
DEFAULT = {"trainer": "", "metrics": "--faithful-n 3000", "probe": "", "threads": "", "search": ""}


def load(name: str) -> ModuleType:
    spec = importlib.util.spec_from_file_location(f"compvae_bench_{name}", HERE / f"{name}.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--fast", action="store_true", help="trimmed sizes for every benchmark")
    p.add_argument("--skip", nargs="*", default=[], choices=list(DEFAULT), help="benchmarks not to run")
    for name in DEFAULT:
        p.add_argument(f"--{name}-args", help=f"arguments for benchmarks/{name}.py (replace the defaults)")
    args = p.parse_args(argv)

    rows: list[tuple[str, str, float, str]] = []  # (benchmark, ratio, value, target)
    seconds: dict[str, float] = {}
    for name in DEFAULT:
        if name in args.skip:
            continue
        given = getattr(args, f"{name}_args")
        bench_argv = shlex.split(given if given is not None else (FAST if args.fast else DEFAULT)[name])
        print(f"\n=== benchmarks/{name}.py {' '.join(bench_argv)}", flush=True)
        t0 = time.perf_counter()
        result = load(name).run(bench_argv)
        seconds[name] = time.perf_counter() - t0
        if name == "trainer":
            rows.append(("trainer", "Trainer / bare loop images/s", result["ratio"], ">= 0.95"))
        elif name == "metrics" and result:
            rows.append(("metrics", "fast / faithful DCI seconds", result["fast_over_faithful_seconds"], "-"))
            rows.append(("metrics", "DCI disentanglement fast - faithful", result["disentanglement_diff"], "~0"))
        elif name == "probe":
            rows.append(("probe", "probe / MLPClassifier seconds, largest size", result["ratio"], "-"))
            rows.append(("probe", "scores identical (all sizes)", result["identical"], "1 = same"))
        elif name == "threads":
            rows.append(("threads", "2 threads / 1 thread epoch speed", result["speedup"], "-"))
            rows.append(("threads", "largest weight difference, 2 vs 1", result["max_weight_difference"], "0 = same"))
        elif name == "search":
            rows.append(("search", "wall reuse / no reuse", result["ratio"], "<= 0.55"))
            rows.append(("search", "Tune utilisation, reuse", result["utilisation_reuse"], ">= 0.92"))
            rows.append(("search", "non-training share, reused trial", result["non_training_share_reuse"],
                         "<= 0.15"))
            rows.append(("search", "Tune utilisation, no reuse", result["utilisation_noreuse"], "-"))

    print("\n=== all benchmarks (each ratio measured side by side within its benchmark)")
    width = max((len(r[1]) for r in rows), default=10)
    print(f"{'benchmark':<10} {'ratio':<{width}} {'value':>9}  target    seconds")
    for bench, label, value, target in rows:
        print(f"{bench:<10} {label:<{width}} {value:>9.3f}  {target:<8} {seconds[bench]:>8.0f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
