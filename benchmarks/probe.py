"""The informativeness probe: scikit-learn's MLPClassifier against compvae.metrics.probe, side by side.

Both sides compute ``informativeness_per_factor`` on the same codes, one thread, alternating
(sklearn, ours, ours, sklearn, ...) so drift on a shared machine hits both alike: the 14
factors of the ``scenes`` benchmark (2-4 classes each, so both the two-class and the softmax
paths), 8 codes that read some factors through noise, at the per-epoch evaluation's size
(1,000 / 500 points) and the final one's (10,000 / 5,000). Prints the median seconds of each
side, their ratio, and whether every per-factor score is the same float (it must be: the
probe re-computes sklearn's fit; docs/design.md, "The informativeness probe").

    python benchmarks/probe.py                 # about a minute on one core
    python benchmarks/probe.py --repeats 1 --sizes 1000
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
# Run as a script, this folder heads sys.path and would shadow the `search` package.
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != HERE]

import numpy as np  # noqa: E402
from threadpoolctl import threadpool_limits  # noqa: E402

from compvae.data import get_dataset  # noqa: E402
from compvae.metrics.informativeness import informativeness_per_factor  # noqa: E402
from compvae.metrics.probe import probe_accuracy, reference_accuracy  # noqa: E402

PROBES = {"sklearn": reference_accuracy, "ours": probe_accuracy}


def codes_of(factors: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """8 codes: four read one factor each through noise, two mix two factors, two are noise."""
    z = rng.normal(size=(factors.shape[0], 8))
    for code, k in enumerate((0, 2, 5, 9)):
        z[:, code] += factors[:, k]
    z[:, 4] += 0.5 * (factors[:, 1] + factors[:, 4])
    z[:, 5] += 0.5 * (factors[:, 3] - factors[:, 12])
    return z


def run(argv: list[str] | None = None) -> dict[str, float]:
    """Print the comparison; return per size the seconds of each side and whether its scores match,
    plus ``ratio`` (ours / sklearn seconds at the largest size) and ``identical`` (at every size)."""
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--sizes", type=int, nargs="+", default=[1000, 10000],
                   help="training points per comparison (test: half)")
    p.add_argument("--repeats", type=int, default=2, help="pairs of (sklearn, ours) per size")
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)

    data = get_dataset("scenes", resolution=32)
    rng = np.random.default_rng(args.seed)
    print(f"informativeness_per_factor on {len(data.factor_sizes)} scenes factors (classes "
          f"{list(data.factor_sizes)}), 8 codes, one thread; sklearn's MLPClassifier against "
          f"compvae.metrics.probe, alternating, {args.repeats} pair(s) per size")
    result: dict[str, float] = {}
    with threadpool_limits(limits=1):
        for n in args.sizes:
            ftr, fte = data.sample_factors(n, rng), data.sample_factors(max(n // 2, 2), rng)
            ztr, zte = codes_of(ftr, rng), codes_of(fte, rng)
            seconds: dict[str, list[float]] = {"sklearn": [], "ours": []}
            scores: dict[str, np.ndarray] = {}
            for r in range(args.repeats):
                for side in (("sklearn", "ours") if r % 2 == 0 else ("ours", "sklearn")):
                    t0 = time.perf_counter()
                    per = informativeness_per_factor(ztr, ftr, zte, fte, random_state=args.seed, probe=PROBES[side])
                    seconds[side].append(time.perf_counter() - t0)
                    scores[side] = per
            same = bool(np.array_equal(scores["sklearn"], scores["ours"], equal_nan=True))
            a, b = statistics.median(seconds["sklearn"]), statistics.median(seconds["ours"])
            print(f"  {n:>6} / {max(n // 2, 2):<6} sklearn {a:6.2f} s   ours {b:6.2f} s   ours/sklearn {b / a:.2f}"
                  f"   scores {'identical' if same else 'DIFFER'} (mean {np.nanmean(scores['ours']):.4f})",
                  flush=True)
            result[f"sklearn_seconds_{n}"], result[f"ours_seconds_{n}"] = a, b
            result[f"identical_{n}"] = float(same)
    largest = max(args.sizes)
    result["ratio"] = result[f"ours_seconds_{largest}"] / result[f"sklearn_seconds_{largest}"]
    result["identical"] = float(all(result[f"identical_{n}"] for n in args.sizes))
    return result


def main() -> None:
    result = run()
    if not result["identical"]:
        sys.exit("the probe's scores differ from scikit-learn's")


if __name__ == "__main__":
    main()
