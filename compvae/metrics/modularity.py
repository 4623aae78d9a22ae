"""Modularity and explicitness (Ridgeway & Zemel 2018), as disentanglement_lib computes them.

* Modularity: from the discretised mutual information m (codes x factors, 20 equal-width bins
  as MIG), per code 1 - (sum_k m_jk^2 - max_k m_jk^2) / (max_k m_jk^2 (K - 1)); codes with no
  information score 0; averaged over codes.
* Explicitness: per factor a one-vs-rest logistic regression on all codes (standardised with the
  training mean/std), scored by the macro-averaged one-vs-rest ROC AUC on the test set.

The reference ran ``LogisticRegression()`` under the scikit-learn of 2019, whose defaults were
one-vs-rest with the liblinear solver; current scikit-learn defaults to a multinomial lbfgs
model, so we spell out ``OneVsRestClassifier(LogisticRegression(solver="liblinear"))`` to keep
the reference's model. The AUC is averaged over the classes that have both positives and
negatives in the scored set (the reference crashes when a class is missing from the test set).
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import roc_auc_score
from sklearn.multiclass import OneVsRestClassifier

from compvae.metrics._utils import (
    as_codes,
    as_factors,
    as_train_test,
    discrete_mutual_info,
    histogram_discretize,
    nanmean,
    quiet_convergence,
    varying_factors,
)


def modularity_from_mi(mutual_information: np.ndarray) -> float:
    """Modularity of a mutual-information matrix (codes x factors).

    Needs >= 2 factors (with one factor every code is trivially modular): nan otherwise.
    Factor columns the caller wants ignored (constant factors) must be removed beforehand.
    """
    m = np.asarray(mutual_information, dtype=np.float64)
    if m.ndim != 2 or m.shape[0] == 0:
        raise ValueError(f"mutual information must be (codes, factors), got {m.shape}")
    if m.shape[1] < 2:
        return math.nan
    sq = np.square(m)
    top = sq.max(axis=1)
    rest = sq.sum(axis=1) - top
    score = np.zeros(m.shape[0])
    ok = top > 0
    score[ok] = 1.0 - rest[ok] / (top[ok] * (m.shape[1] - 1))
    return float(score.mean())


def _ovr_auc(y: np.ndarray, proba: np.ndarray, classes: np.ndarray) -> float:
    """Macro one-vs-rest ROC AUC over the classes with both positives and negatives in ``y``."""
    aucs = []
    for c_idx, c in enumerate(classes):
        pos = y == c
        if pos.any() and not pos.all():
            aucs.append(roc_auc_score(pos, proba[:, c_idx]))
    return float(np.mean(aucs)) if aucs else math.nan


def explicitness_per_factor(train_codes: np.ndarray, train_factors: np.ndarray,
                            test_codes: np.ndarray, test_factors: np.ndarray
                            ) -> tuple[np.ndarray, np.ndarray]:
    """(train AUC (K,), test AUC (K,)) of a one-vs-rest logistic regression per factor.

    Codes are standardised with the training statistics (constant codes get std 1 instead of
    dividing by zero). Factors constant in the training set are nan.
    """
    xtr, ytr, xte, yte = as_train_test(train_codes, train_factors, test_codes, test_factors)
    mean = xtr.mean(axis=0)
    std = xtr.std(axis=0)
    std[std == 0] = 1.0
    xtr_n, xte_n = (xtr - mean) / std, (xte - mean) / std
    k = ytr.shape[1]
    auc_train, auc_test = np.full(k, np.nan), np.full(k, np.nan)
    with quiet_convergence():
        for i in np.flatnonzero(varying_factors(ytr)):
            clf = OneVsRestClassifier(LogisticRegression(solver="liblinear")).fit(xtr_n, ytr[:, i])
            auc_train[i] = _ovr_auc(ytr[:, i], clf.predict_proba(xtr_n), clf.classes_)
            auc_test[i] = _ovr_auc(yte[:, i], clf.predict_proba(xte_n), clf.classes_)
    return auc_train, auc_test


def modularity_explicitness(train_codes: np.ndarray, train_factors: np.ndarray,
                            test_codes: np.ndarray, test_factors: np.ndarray,
                            num_bins: int = 20) -> dict[str, Any]:
    """Modularity (on the training codes) and explicitness (test and train AUC).

    Returns floats ``modularity``, ``explicitness``, ``explicitness_train`` and arrays
    ``mutual_information`` (d, K), ``explicitness_per_factor`` and
    ``explicitness_train_per_factor`` (K,) for factor-group scores. Constant factors are left
    out of the modularity (their all-zero MI column would otherwise count as a factor).
    """
    xtr = as_codes(train_codes, "train_codes")
    ytr = as_factors(train_factors, xtr.shape[0], "train_factors")
    mi = discrete_mutual_info(histogram_discretize(xtr, num_bins), ytr)
    auc_train, auc_test = explicitness_per_factor(xtr, ytr, test_codes, test_factors)
    return {
        "modularity": modularity_from_mi(mi[:, varying_factors(ytr)]),
        "explicitness": nanmean(auc_test),
        "explicitness_train": nanmean(auc_train),
        "mutual_information": mi,
        "explicitness_per_factor": auc_test,
        "explicitness_train_per_factor": auc_train,
    }
