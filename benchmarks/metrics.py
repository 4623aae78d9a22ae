"""Value and cost of every metric on dSprites-sized data, and faithful vs fast DCI side by side.

Data: five factors with dSprites' sizes (shape 3, scale 6, orientation 40, pos_x 32, pos_y 32),
10,000 train / 5,000 test points; representation: 10 codes, a noisy linear mix of the
normalised factors (5 mostly-pure codes with some leakage, 1 mixed code, 4 pure-noise codes),
so every score lands mid-range instead of at 0 or 1. The sampling metrics and ``evaluate()``
draw through a tiny ``GroundTruthData`` whose 4x4 images hold the factor levels, so the timings
are those of the metrics, not of rendering or an encoder.

    python benchmarks/metrics.py                     # everything, faithful DCI on 10,000 (~5+ min)
    python benchmarks/metrics.py --skip-faithful     # well under a minute
    python benchmarks/metrics.py --faithful-n 3000   # faithful DCI on fewer points (loaded machine)
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable
from typing import Any

import numpy as np

from compvae.data.base import GroundTruthData
from compvae.metrics import (
    active_units,
    betavae_score,
    codes_mutual_info,
    dci,
    evaluate,
    factorvae_score,
    gaussian_total_correlation,
    gaussian_wasserstein_correlation,
    mig,
    modularity_explicitness,
    sap,
)

SIZES = [3, 6, 40, 32, 32]
NAMES = ["shape", "scale", "orientation", "pos_x", "pos_y"]


def mixing() -> np.ndarray:
    """(5 factors, 10 codes): codes 0-4 follow one factor each, with leakage 0->1, 3<->4; code 5
    mixes orientation and pos_x equally; codes 6-9 carry nothing."""
    w = np.zeros((5, 10))
    w[:, :5] = np.eye(5)
    w[0, 1] = 0.2
    w[3, 4] = w[4, 3] = 0.3
    w[2, 5] = w[3, 5] = 0.5
    return w


class SyntheticSprites(GroundTruthData):
    """dSprites-sized factor grid; image = the five normalised factor levels in a 4x4 grey image."""

    name = "synthetic_sprites"
    factor_names = NAMES
    factor_sizes = SIZES
    channels = 1
    factor_groups = {"coarse": ["shape", "scale"], "fine": ["orientation", "pos_x", "pos_y"]}

    def __init__(self, resolution: int = 4) -> None:
        self.resolution = resolution

    def images(self, factors: np.ndarray) -> np.ndarray:
        f = self.check_factors(factors)
        out = np.zeros((f.shape[0], 1, self.resolution * self.resolution), np.float32)
        out[:, 0, :5] = f / (np.asarray(SIZES) - 1)
        return out.reshape(f.shape[0], 1, self.resolution, self.resolution)

    def with_resolution(self, resolution: int) -> SyntheticSprites:
        return SyntheticSprites(resolution)


def make_encoder(seed: int, noise: float = 0.05) -> Callable[[np.ndarray], np.ndarray]:
    """Codes = factor levels @ mixing + Gaussian noise (std ``noise``), like a noisy encoder."""
    w = mixing()
    rng = np.random.default_rng(seed)

    def encode(images: np.ndarray) -> np.ndarray:
        levels = images.reshape(images.shape[0], -1)[:, :5].astype(np.float64)
        return levels @ w + noise * rng.normal(size=(images.shape[0], w.shape[1]))

    return encode


def timed(fn: Callable[[], Any]) -> tuple[Any, float]:
    start = time.perf_counter()
    out = fn()
    return out, time.perf_counter() - start


def main() -> None:
    run()


def run(argv: list[str] | None = None) -> dict[str, float]:
    """Run and print the benchmark; return the faithful-vs-fast DCI numbers (for benchmarks/run.py)."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--num-train", type=int, default=10000)
    parser.add_argument("--num-test", type=int, default=5000)
    parser.add_argument("--skip-faithful", action="store_true", help="do not run the (minutes-long) faithful DCI")
    parser.add_argument("--faithful-n", type=int, default=None,
                        help="training points for the faithful DCI (test: half); default --num-train")
    parser.add_argument("--sampling-votes", type=int, default=None,
                        help="FactorVAE/BetaVAE train votes (eval: half); default --num-train")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    result: dict[str, float] = {}

    data = SyntheticSprites()
    encode = make_encoder(args.seed + 1)
    rng = np.random.default_rng(args.seed)
    ftr, fte = data.sample_factors(args.num_train, rng), data.sample_factors(args.num_test, rng)
    ztr, zte = encode(data.images(ftr)), encode(data.images(fte))
    print(f"data: factor sizes {SIZES}, {args.num_train} train / {args.num_test} test, "
          f"10 codes (noisy linear mix)\n")

    rows: list[tuple[str, str, float]] = []
    value, sec = timed(lambda: mig(ztr, ftr))
    rows.append(("mig", f"{value:.4f}", sec))
    fast, sec_fast = timed(lambda: dci(ztr, ftr, zte, fte, estimator="fast"))
    rows.append(("dci fast (D / C / I)", f"{fast['disentanglement']:.4f} / {fast['completeness']:.4f} / "
                 f"{fast['informativeness']:.4f}", sec_fast))
    value, sec = timed(lambda: sap(ztr, ftr, zte, fte))
    rows.append(("sap", f"{value:.4f}", sec))
    mod, sec = timed(lambda: modularity_explicitness(ztr, ftr, zte, fte))
    rows.append(("modularity / explicitness", f"{mod['modularity']:.4f} / {mod['explicitness']:.4f}", sec))
    unsup, sec = timed(lambda: (gaussian_total_correlation(ztr), gaussian_wasserstein_correlation(ztr),
                                codes_mutual_info(ztr), active_units(ztr)))
    rows.append(("unsupervised (tc / wass / mi / au)",
                 f"{unsup[0]:.4f} / {unsup[1]:.4f} / {unsup[2]:.4f} / {unsup[3]}", sec))
    votes = args.sampling_votes or args.num_train
    fvae, sec = timed(lambda: factorvae_score(data, encode, np.random.default_rng(args.seed + 2),
                                              num_train=votes, num_eval=votes // 2,
                                              num_variance_estimate=args.num_train))
    rows.append((f"factorvae ({votes} votes)", f"{fvae['eval_accuracy']:.4f}", sec))
    bvae, sec = timed(lambda: betavae_score(data, encode, np.random.default_rng(args.seed + 3),
                                            num_train=votes, num_eval=votes // 2))
    rows.append((f"betavae ({votes} points)", f"{bvae['eval_accuracy']:.4f}", sec))

    width = max(len(r[0]) for r in rows)
    print(f"{'metric':<{width}}  {'value':<36} seconds")
    for name, val, sec in rows:
        print(f"{name:<{width}}  {val:<36} {sec:7.2f}")

    print("\nDCI, faithful (GradientBoostingClassifier) vs fast (HistGradientBoosting, gain importance):")
    if args.skip_faithful:
        print("  faithful skipped (--skip-faithful)")
    else:
        n = args.faithful_n or args.num_train
        xtr, ytr, xte, yte = ztr[:n], ftr[:n], zte[: max(2, n // 2)], fte[: max(2, n // 2)]
        faithful, sec_faithful = timed(lambda: dci(xtr, ytr, xte, yte, estimator="faithful"))
        if n == args.num_train and xte.shape[0] == args.num_test:
            fast_n, sec_fast_n = fast, sec_fast
        else:
            fast_n, sec_fast_n = timed(lambda: dci(xtr, ytr, xte, yte, estimator="fast"))
        print(f"  n = {n} train / {xte.shape[0]} test")
        print(f"  {'':<24}{'faithful':>10}{'fast':>10}{'diff':>10}")
        for key in ("disentanglement", "completeness", "informativeness", "informativeness_train"):
            a, b = faithful[key], fast_n[key]
            print(f"  {key:<24}{a:>10.4f}{b:>10.4f}{b - a:>+10.4f}")
        rd = np.abs(faithful["importance"] - fast_n["importance"]).max()
        print(f"  max |R_faithful - R_fast| = {rd:.4f}")
        print(f"  seconds                 {sec_faithful:>10.1f}{sec_fast_n:>10.1f}"
              f"   faithful/fast = {sec_faithful / sec_fast_n:.1f}x")
        result = {"fast_over_faithful_seconds": sec_fast_n / sec_faithful,
                  "disentanglement_diff": fast_n["disentanglement"] - faithful["disentanglement"],
                  "max_importance_diff": float(rd), "faithful_n": float(n)}

    res, sec = timed(lambda: evaluate(data, make_encoder(args.seed + 4), np.random.default_rng(args.seed + 5),
                                      num_train=args.num_train, num_test=args.num_test))
    print(f"\nevaluate() with the default metric set (mig, dci fast, sap, unsupervised), groups "
          f"{list(data.factor_groups)}: {sec:.1f} s total")
    parts = {k.removeprefix("eval_seconds_"): v for k, v in res.items() if k.startswith("eval_seconds_")}
    print("  " + ", ".join(f"{k} {v:.1f} s" for k, v in parts.items()))
    shown = [k for k in res if not k.startswith("eval_seconds")]
    for i in range(0, len(shown), 4):
        print("  " + "  ".join(f"{k}={res[k]:.4f}" for k in shown[i:i + 4]))
    return result


if __name__ == "__main__":
    main()
