"""Disentanglement, Completeness, Informativeness (Eastwood & Williams 2018), as disentanglement_lib.

Two estimators of the importance matrix: ``faithful`` (the reference) and ``fast`` (calibrated
against it); see docs/design.md (DCI) for the formulas, the calibration and what was rejected.
"""

from __future__ import annotations

import math
from typing import Any, Literal

import numpy as np
from sklearn.ensemble import GradientBoostingClassifier, HistGradientBoostingClassifier
from threadpoolctl import threadpool_limits

from compvae.compat import hgb_predictors
from compvae.metrics._utils import as_train_test, nanmean, varying_factors

Estimator = Literal["faithful", "fast"]
ESTIMATORS: tuple[str, ...] = ("faithful", "fast")

_EPS = 1e-11

#: HGB settings with GradientBoostingClassifier's default budget (n_estimators=100,
#: learning_rate=0.1, depth 3 = at most 8 leaves). Early stopping off so the model does not
#: depend on whether n crosses HGB's 10,000-sample "auto" threshold. See the module docstring
#: for how this choice was calibrated against the faithful estimator.
FAST_PARAMS: dict[str, Any] = {
    "max_iter": 100,
    "learning_rate": 0.1,
    "max_leaf_nodes": 8,
    "early_stopping": False,
}


def _entropy(p: np.ndarray, base: int, axis: int) -> np.ndarray:
    """Entropy (log base ``base``) along ``axis`` of non-negative weights, +1e-11 smoothed.

    With ``base`` 1 there is a single outcome, whose entropy is 0 (the reference would divide
    by log 1 = 0); that case arises for factor groups with one factor.
    """
    q = p + _EPS
    q = q / q.sum(axis=axis, keepdims=True)
    h = -(q * np.log(q)).sum(axis=axis)
    return np.zeros_like(h) if base <= 1 else h / math.log(base)


def _check_importance(importance: np.ndarray) -> np.ndarray:
    r = np.asarray(importance, dtype=np.float64)
    if r.ndim != 2 or r.shape[0] == 0 or r.shape[1] == 0:
        raise ValueError(f"importance matrix must be 2-D (codes, factors) and non-empty, got {r.shape}")
    if (r < 0).any() or not np.isfinite(r).all():
        raise ValueError("importance matrix must be finite and non-negative")
    return r


def disentanglement_per_code(importance: np.ndarray) -> np.ndarray:
    """1 - H_K(P_j) for each code j: (d,). 1 = the code informs one factor only."""
    r = _check_importance(importance)
    return 1.0 - _entropy(r, base=r.shape[1], axis=1)


def completeness_per_factor(importance: np.ndarray) -> np.ndarray:
    """1 - H_J(R_k) for each factor k: (K,). 1 = the factor is captured by one code only."""
    r = _check_importance(importance)
    return 1.0 - _entropy(r, base=r.shape[0], axis=0)


def dci_from_importance(importance: np.ndarray) -> dict[str, float]:
    """D and C of an importance matrix R (codes x factors), weighted as disentanglement_lib.

    Closed forms (d codes, K factors, both > 1), exact up to the 1e-11 smoothing:
    identity (d = K) -> D = 1, C = 1; all entries equal -> D = 0, C = 0; one code informing
    every factor equally (one non-zero row) -> D = 0, C = 1; one factor spread equally over
    every code (one non-zero column) -> D = 1, C = 0; identity plus all-zero (dead) codes ->
    D = 1, C = 1.
    """
    r = _check_importance(importance)
    weights = r if r.sum() > 0 else np.ones_like(r)
    code_weight = weights.sum(axis=1) / weights.sum()
    factor_weight = weights.sum(axis=0) / weights.sum()
    return {
        "disentanglement": float(np.sum(disentanglement_per_code(r) * code_weight)),
        "completeness": float(np.sum(completeness_per_factor(r) * factor_weight)),
    }


def hgb_gain_importance(model: HistGradientBoostingClassifier, num_features: int) -> np.ndarray:
    """Total split gain per feature over all trees of a fitted HGB model, normalised to sum 1.

    Reads the fitted trees through :func:`compvae.compat.hgb_predictors`; zero vector when no
    tree split at all.
    """
    predictors = hgb_predictors(model)
    gain = np.zeros(num_features)
    for per_class in predictors:
        for tree in per_class:
            nodes = tree.nodes
            split = nodes[nodes["is_leaf"] == 0]
            np.add.at(gain, split["feature_idx"].astype(np.int64), np.maximum(split["gain"], 0.0))
    total = gain.sum()
    return gain / total if total > 0 else gain


def _fit_one(x: np.ndarray, y: np.ndarray, estimator: Estimator,
             random_state: int | None) -> tuple[np.ndarray, Any]:
    """Fit one factor's classifier; returns (importance (d,) summing to 1 or 0, model)."""
    if estimator == "faithful":
        gbt = GradientBoostingClassifier(random_state=random_state).fit(x, y)
        return np.abs(gbt.feature_importances_).astype(np.float64), gbt
    hgb = HistGradientBoostingClassifier(random_state=random_state, **FAST_PARAMS).fit(x, y)
    return hgb_gain_importance(hgb, x.shape[1]), hgb


def importance_matrix(train_codes: np.ndarray, train_factors: np.ndarray, test_codes: np.ndarray,
                      test_factors: np.ndarray, estimator: Estimator = "faithful",
                      random_state: int | None = 0, n_threads: int | None = 1
                      ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(R (d, K), train accuracy (K,), test accuracy (K,)) from one classifier per factor.

    Factors constant in the training set cannot be classified: their column is zero (zero
    weight in D and C) and their accuracies nan (left out of I).

    ``n_threads`` caps HGB's OpenMP threads (None: all cores); 1 by default because evaluations
    run beside training and other trials, where busy-waiting OpenMP workers slow a fit down
    (docs/design.md, DCI). The faithful estimator is single-threaded anyway.
    """
    if estimator not in ESTIMATORS:
        raise ValueError(f"dci estimator must be one of {ESTIMATORS}, got {estimator!r}")
    xtr, ytr, xte, yte = as_train_test(train_codes, train_factors, test_codes, test_factors)
    d, k = xtr.shape[1], ytr.shape[1]
    r = np.zeros((d, k))
    acc_train = np.full(k, np.nan)
    acc_test = np.full(k, np.nan)
    with threadpool_limits(limits=n_threads, user_api="openmp"):
        for i in np.flatnonzero(varying_factors(ytr)):
            r[:, i], model = _fit_one(xtr, ytr[:, i], estimator, random_state)
            acc_train[i] = float(np.mean(model.predict(xtr) == ytr[:, i]))
            acc_test[i] = float(np.mean(model.predict(xte) == yte[:, i]))
    return r, acc_train, acc_test


def dci(train_codes: np.ndarray, train_factors: np.ndarray, test_codes: np.ndarray,
        test_factors: np.ndarray, estimator: Estimator = "faithful",
        random_state: int | None = 0, n_threads: int | None = 1) -> dict[str, Any]:
    """DCI scores of codes float (n, d) against factors int (n, K).

    Returns floats ``disentanglement``, ``completeness``, ``informativeness`` (mean test
    accuracy), ``informativeness_train``, and arrays ``importance`` (d, K), ``train_accuracy``
    and ``test_accuracy`` (K,) so factor-group scores can be taken from columns without refitting.
    ``estimator`` defaults to the reference ("faithful"); see the module docstring for "fast".
    ``n_threads``: OpenMP threads for the fast estimator (see ``importance_matrix``).
    """
    r, acc_train, acc_test = importance_matrix(
        train_codes, train_factors, test_codes, test_factors, estimator, random_state, n_threads)
    out: dict[str, Any] = dict(dci_from_importance(r))
    out["informativeness"] = nanmean(acc_test)
    out["informativeness_train"] = nanmean(acc_train)
    out["importance"] = r
    out["train_accuracy"] = acc_train
    out["test_accuracy"] = acc_test
    return out
