"""Separated Attribute Predictability (Kumar et al. 2018), disentanglement_lib's discrete variant.

For every (code, factor) pair a linear SVM, ``LinearSVC(C=0.01, class_weight="balanced")``,
predicts the factor from that single code; its *test* accuracy fills a score matrix
(codes x factors). SAP is the mean over factors of the gap between the best and the second best
code. Our factors are discrete class labels, so the classification variant is the right one.

scikit-learn now picks the primal solver for n >> features (``dual="auto"``); the optimisation
problem (squared hinge, L2, C=0.01) is the reference's, only the solver differs.
"""

from __future__ import annotations

import numpy as np
from sklearn.svm import LinearSVC

from compvae.metrics._utils import (
    as_train_test,
    nanmean,
    quiet_convergence,
    top_two_gap,
    varying_factors,
)


def sap_score_matrix(train_codes: np.ndarray, train_factors: np.ndarray, test_codes: np.ndarray,
                     test_factors: np.ndarray) -> np.ndarray:
    """Test accuracy of a 1-D linear SVM for every code j and factor k: (d, K).

    Columns of factors constant in the training set are nan (no classifier can be fitted).
    """
    xtr, ytr, xte, yte = as_train_test(train_codes, train_factors, test_codes, test_factors)
    d, k = xtr.shape[1], ytr.shape[1]
    scores = np.full((d, k), np.nan)
    with quiet_convergence():
        for i in np.flatnonzero(varying_factors(ytr)):
            for j in range(d):
                clf = LinearSVC(C=0.01, class_weight="balanced", random_state=0)
                clf.fit(xtr[:, j:j + 1], ytr[:, i])
                scores[j, i] = float(np.mean(clf.predict(xte[:, j:j + 1]) == yte[:, i]))
    return scores


def sap_from_matrix(scores: np.ndarray) -> np.ndarray:
    """Per-factor gap between the best and second best code: (K,) (nan for unfitted factors).

    With a single code the runner-up is taken as 0.
    """
    return top_two_gap(scores)


def sap_per_factor(train_codes: np.ndarray, train_factors: np.ndarray, test_codes: np.ndarray,
                   test_factors: np.ndarray) -> np.ndarray:
    """SAP gap of each factor: (K,), nan for factors constant in the training set."""
    return sap_from_matrix(sap_score_matrix(train_codes, train_factors, test_codes, test_factors))


def sap(train_codes: np.ndarray, train_factors: np.ndarray, test_codes: np.ndarray,
        test_factors: np.ndarray) -> float:
    """SAP score: mean over factors of (best - second best) single-code test accuracy."""
    return nanmean(sap_per_factor(train_codes, train_factors, test_codes, test_factors))
