"""Design check of a procedural dataset: each factor's reconstruction cost per resolution.

The cost is the Bernoulli KL (nats, summed over pixels) between an image and its
factor-marginal (compvae.data.design.factor_costs): what a decoder loses by knowing nothing of
the factor. The scenes benchmark wants every fine factor >= 20 nats at the child's resolution
and a small fraction of that at the parent's (docs/benchmark.md).

    python benchmarks/scenes_design.py                         # scenes at 32 and 64 px
    python benchmarks/scenes_design.py --data shapes --resolutions 32 64 128
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != HERE]

from compvae.data import get_dataset  # noqa: E402
from compvae.data.design import cost_table  # noqa: E402


def run(argv: list[str] | None = None) -> list[dict[str, object]]:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", default="scenes", choices=["scenes", "shapes"])
    ap.add_argument("--resolutions", type=int, nargs="+", default=[32, 64])
    ap.add_argument("--bases", type=int, default=200, help="random scenes averaged over")
    args = ap.parse_args(argv)
    t0 = time.perf_counter()
    rows = cost_table(get_dataset(args.data, resolution=args.resolutions[0]), tuple(args.resolutions),
                      num_bases=args.bases)
    res = args.resolutions
    print(f"{'factor':22s} {'group':8s} {'levels':>6s} " + " ".join(f"{'nats@' + str(r):>9s}" for r in res)
          + (f" {'ratio':>6s}" if len(res) > 1 else ""))
    for r in rows:
        costs = [float(r[f"nats@{x}"]) for x in res]  # type: ignore[arg-type]
        ratio = f" {costs[0] / costs[-1]:6.3f}" if len(res) > 1 and costs[-1] > 0 else ""
        print(f"{r['factor']!s:22s} {r['group']!s:8s} {r['levels']!s:>6s} "
              + " ".join(f"{c:9.1f}" for c in costs) + ratio)
    print(f"({args.bases} random scenes per factor; ratio = first / last resolution; "
          f"{time.perf_counter() - t0:.1f} s)")
    return rows


if __name__ == "__main__":
    run()
