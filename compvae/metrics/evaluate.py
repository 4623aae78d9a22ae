"""The one evaluation entry point: sample from a dataset, encode, score, return flat floats.

One shared train/test sample serves every metric that reads one, and each metric comes from its
:mod:`~compvae.metrics.registry` entry, so this is a loop; see docs/design.md (One evaluation).
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import Any

import numpy as np

from compvae.data.base import GroundTruthData
from compvae.metrics._utils import (
    EncodeFn,
    auto_batch_size,
    sample_codes,
)
from compvae.metrics.dci import ESTIMATORS, Estimator
from compvae.metrics.registry import REGISTRY, Context

#: Metric names accepted by ``evaluate`` (the same literals as ``EvalConfig.metrics``).
METRICS: tuple[str, ...] = tuple(REGISTRY)
DEFAULT_METRICS: tuple[str, ...] = ("mig", "dci", "sap", "informativeness", "unsupervised")
#: Metrics of the cheap per-epoch evaluation (when the full one has them; else "unsupervised").
LIGHT_METRICS: tuple[str, ...] = tuple(m.name for m in REGISTRY.values() if m.light)


def light_settings(metrics: Sequence[str], num_train: int, num_test: int, light_points: int) -> dict[str, Any]:
    """The ``evaluate`` arguments of the light evaluation of a run whose full one is ``metrics``
    at ``num_train``/``num_test``: the light metrics at ``light_points``, fast DCI."""
    n = min(light_points, num_train)
    return {"metrics": [m for m in metrics if m in LIGHT_METRICS] or ["unsupervised"], "num_train": n,
            "num_test": min(max(n // 2, 10), num_test), "dci_estimator": "fast"}


class _Flat(dict[str, float]):
    """Flat metric dict that refuses to overwrite a key (a group name clashing with a key)."""

    def put(self, key: str, value: float) -> None:
        if key in self:
            raise ValueError(f"metric key '{key}' produced twice; rename the factor group")
        self[key] = float(value)


def _group_columns(data: GroundTruthData) -> dict[str, np.ndarray]:
    if not data.has_factors:
        return {}
    return {g: np.asarray(data.group_indices(g), dtype=np.int64) for g in data.factor_groups}


def evaluate(data: GroundTruthData, encode_fn: EncodeFn, rng: np.random.Generator,
             metrics: Sequence[str] = DEFAULT_METRICS, num_train: int = 10000,
             num_test: int = 5000, dci_estimator: Estimator = "fast", batch_size: int | None = None,
             num_bins: int = 20, active: np.ndarray | None = None) -> dict[str, float]:
    """Score ``encode_fn`` (float32 images (n, C, R, R) -> codes (n, d), posterior means).

    ``metrics``: any of "mig", "dci", "sap", "modularity", "factorvae", "betavae",
    "unsupervised". On data without factors (``has_factors`` False) only "unsupervised" runs;
    the others are skipped. ``batch_size``: images per ``encode_fn`` call (default: ~64 MiB of
    images, at most 1024). Keys (plus ``_<group>`` variants of the supervised scores):
    ``mig``; ``dci_disentanglement``, ``dci_completeness``, ``dci_informativeness``,
    ``dci_informativeness_train``, ``dci_faithful`` (1.0 faithful / 0.0 fast estimator);
    ``sap``; ``modularity``, ``explicitness``, ``explicitness_train``; ``factorvae``,
    ``factorvae_train``, ``factorvae_active_dims``; ``betavae``, ``betavae_train``;
    ``gaussian_tc``, ``gaussian_wasserstein_corr``, ``codes_mutual_info``, ``active_units``;
    ``informativeness``, ``<group>_informativeness`` and ``active_latents`` (probes read only
    the latents ``active`` marks, e.g. by rate; all latents when it is None);
    ``eval_seconds`` (total) and ``eval_seconds_<part>`` (sampling and each metric).
    Undefined values (e.g. no varying factor in a group) are nan.
    """
    start = time.perf_counter()
    requested = list(dict.fromkeys(metrics))
    unknown = [m for m in requested if m not in METRICS]
    if unknown:
        raise ValueError(f"unknown metric(s) {unknown}; choose from {list(METRICS)}")
    if dci_estimator not in ESTIMATORS:
        raise ValueError(f"dci_estimator must be one of {list(ESTIMATORS)}, got {dci_estimator!r}")
    if num_train < 2 or num_test < 2:
        raise ValueError("num_train and num_test must be >= 2")
    run = [m for m in requested if data.has_factors or m == "unsupervised"]
    groups = _group_columns(data)
    chunk = auto_batch_size(data, batch_size)
    out = _Flat()

    ctx = Context(data, encode_fn, rng, num_train, num_test, dci_estimator, num_bins, active, chunk)
    tick = time.perf_counter()
    if any("train" in REGISTRY[m].needs for m in run):
        ctx.train = sample_codes(data, encode_fn, num_train, rng, chunk)
    if any("test" in REGISTRY[m].needs for m in run):
        ctx.test = sample_codes(data, encode_fn, num_test, rng, chunk)
    out.put("eval_seconds_sampling", time.perf_counter() - tick)

    for name in run:
        tick = time.perf_counter()
        entry = REGISTRY[name]
        values, result = entry.score(ctx)
        for key, value in values.items():
            out.put(key, value)
        if entry.per_group is not None:
            for g, idx in groups.items():
                for key, value in entry.per_group(ctx, result, g, idx).items():
                    out.put(key, value)
        out.put(f"eval_seconds_{name}", time.perf_counter() - tick)

    out.put("eval_seconds", time.perf_counter() - start)
    return dict(out)
