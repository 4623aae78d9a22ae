"""The one evaluation entry point: sample from a dataset, encode, score, return flat floats.

``evaluate`` draws one training set (``num_train`` points) and one test set (``num_test``) of
uniform factor draws through the ``GroundTruthData`` interface, renders and encodes them in
bounded-memory batches, and shares them between MIG (train), DCI/SAP/modularity (train + test)
and the unsupervised metrics (train). disentanglement_lib draws a fresh sample per metric; one
shared sample gives the same estimators at a fraction of the encoding cost, and makes the
metrics of one evaluation directly comparable. FactorVAE/BetaVAE draw their own structured
batches, using ``num_train``/``num_test`` as their training/evaluation counts (the reference
defaults are 10,000/5,000 for both, as ours).

Every supervised score is also reported per factor group (``data.factor_groups``) with a
``_<group>`` suffix: MIG/SAP/explicitness average their per-factor values over the group; DCI
takes the group's columns of the importance matrix (D and C recomputed on the sub-matrix, I the
group's mean accuracy); modularity uses the group's columns of the mutual information;
FactorVAE/BetaVAE count only votes/points whose fixed factor is in the group.
"""

from __future__ import annotations

import math
import time
from collections.abc import Sequence

import numpy as np

from compvae.data.base import GroundTruthData
from compvae.metrics._utils import (
    EncodeFn,
    auto_batch_size,
    nanmean,
    sample_codes,
    varying_factors,
)
from compvae.metrics.betavae import betavae_score
from compvae.metrics.dci import ESTIMATORS, Estimator, dci, dci_from_importance
from compvae.metrics.factorvae import factorvae_score, vote_accuracy
from compvae.metrics.informativeness import informativeness_per_factor
from compvae.metrics.mig import mig_per_factor
from compvae.metrics.modularity import modularity_explicitness, modularity_from_mi
from compvae.metrics.sap import sap_per_factor
from compvae.metrics.unsupervised import (
    active_units,
    codes_mutual_info,
    gaussian_total_correlation,
    gaussian_wasserstein_correlation,
)

#: Metric names accepted by ``evaluate`` (the same literals as ``EvalConfig.metrics``).
METRICS: tuple[str, ...] = ("mig", "dci", "sap", "modularity", "factorvae", "betavae", "informativeness",
                            "unsupervised")
DEFAULT_METRICS: tuple[str, ...] = ("mig", "dci", "sap", "informativeness", "unsupervised")
_NEEDS_TEST = ("dci", "sap", "modularity", "informativeness")
_NEEDS_TRAIN = ("mig", "dci", "sap", "modularity", "informativeness", "unsupervised")


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

    tick = time.perf_counter()
    train = test = None
    if any(m in _NEEDS_TRAIN for m in run):
        train = sample_codes(data, encode_fn, num_train, rng, chunk)
    if any(m in _NEEDS_TEST for m in run):
        test = sample_codes(data, encode_fn, num_test, rng, chunk)
    out.put("eval_seconds_sampling", time.perf_counter() - tick)

    for name in run:
        tick = time.perf_counter()
        if name == "mig":
            assert train is not None
            per = mig_per_factor(train[0], train[1], num_bins)
            out.put("mig", nanmean(per))
            for g, idx in groups.items():
                out.put(f"mig_{g}", nanmean(per[idx]))
        elif name == "dci":
            assert train is not None and test is not None
            res = dci(train[0], train[1], test[0], test[1], estimator=dci_estimator,
                      random_state=int(rng.integers(2**31 - 1)))
            for key in ("disentanglement", "completeness", "informativeness", "informativeness_train"):
                out.put(f"dci_{key}", res[key])
            out.put("dci_faithful", 1.0 if dci_estimator == "faithful" else 0.0)
            for g, idx in groups.items():
                sub = dci_from_importance(res["importance"][:, idx])
                out.put(f"dci_disentanglement_{g}", sub["disentanglement"])
                out.put(f"dci_completeness_{g}", sub["completeness"])
                out.put(f"dci_informativeness_{g}", nanmean(res["test_accuracy"][idx]))
        elif name == "sap":
            assert train is not None and test is not None
            per = sap_per_factor(train[0], train[1], test[0], test[1])
            out.put("sap", nanmean(per))
            for g, idx in groups.items():
                out.put(f"sap_{g}", nanmean(per[idx]))
        elif name == "modularity":
            assert train is not None and test is not None
            res = modularity_explicitness(train[0], train[1], test[0], test[1], num_bins)
            out.put("modularity", res["modularity"])
            out.put("explicitness", res["explicitness"])
            out.put("explicitness_train", res["explicitness_train"])
            varying = varying_factors(train[1])
            for g, idx in groups.items():
                cols = idx[varying[idx]]
                mod = modularity_from_mi(res["mutual_information"][:, cols]) if cols.size else math.nan
                out.put(f"modularity_{g}", mod)
                out.put(f"explicitness_{g}", nanmean(res["explicitness_per_factor"][idx]))
        elif name == "factorvae":
            res = factorvae_score(data, encode_fn, rng, num_train=num_train, num_eval=num_test,
                                  num_variance_estimate=num_train, images_per_call=chunk)
            out.put("factorvae", res["eval_accuracy"])
            out.put("factorvae_train", res["train_accuracy"])
            out.put("factorvae_active_dims", res["num_active_dims"])
            for g, idx in groups.items():
                acc = vote_accuracy(res["eval_votes"], res["classifier"], idx) if res["num_active_dims"] else 0.0
                out.put(f"factorvae_{g}", acc)
        elif name == "betavae":
            res = betavae_score(data, encode_fn, rng, num_train=num_train, num_eval=num_test,
                                images_per_call=chunk)
            out.put("betavae", res["eval_accuracy"])
            out.put("betavae_train", res["train_accuracy"])
            for g, idx in groups.items():
                sel = np.isin(res["eval_labels"], idx)
                out.put(f"betavae_{g}", float(res["eval_correct"][sel].mean()) if sel.any() else math.nan)
        elif name == "informativeness":
            assert train is not None and test is not None
            per = informativeness_per_factor(train[0], train[1], test[0], test[1], active,
                                             random_state=int(rng.integers(2**31 - 1)))
            out.put("informativeness", nanmean(per))
            out.put("active_latents", float(train[0].shape[1] if active is None else np.sum(active)))
            for g, idx in groups.items():
                out.put(f"{g}_informativeness", nanmean(per[idx]))
        elif name == "unsupervised":
            assert train is not None
            codes = train[0]
            out.put("gaussian_tc", gaussian_total_correlation(codes))
            out.put("gaussian_wasserstein_corr", gaussian_wasserstein_correlation(codes))
            out.put("codes_mutual_info", codes_mutual_info(codes, num_bins))
            out.put("active_units", active_units(codes))
        out.put(f"eval_seconds_{name}", time.perf_counter() - tick)

    out.put("eval_seconds", time.perf_counter() - start)
    return dict(out)
