"""BetaVAE disentanglement score (Higgins et al. 2017), disentanglement_lib's sklearn variant.

A training point: pick a factor k, draw ``batch_size`` (64) pairs of factor vectors that share
k's value (everything else independent), encode both sides and take the mean absolute code
difference over the batch, a (d,) feature whose smallest entries should point at k. A logistic
regression predicts k from the feature; the score is its accuracy on ``num_eval`` fresh points.

The reference's ``LogisticRegression()`` ran under 2019 scikit-learn defaults: one-vs-rest,
liblinear solver, C=1, unscaled features. Current defaults differ (multinomial lbfgs), so we
spell out that model. Factors with a single value are never chosen (nothing distinguishes them).
"""

from __future__ import annotations

from typing import Any

import numpy as np
from sklearn.linear_model import LogisticRegression
from sklearn.multiclass import OneVsRestClassifier

from compvae.data.base import GroundTruthData
from compvae.metrics._utils import (
    EncodeFn,
    as_codes,
    auto_batch_size,
    encode_factors,
    quiet_convergence,
)
from compvae.metrics.factorvae import _require_factors


def _points(data: GroundTruthData, encode_fn: EncodeFn, rng: np.random.Generator, num_points: int,
            batch_size: int, usable: np.ndarray, images_per_call: int) -> tuple[np.ndarray, np.ndarray]:
    """(features (num_points, d), labels (num_points,)) of mean |z1 - z2| over pair batches."""
    per_call = max(1, images_per_call // (2 * batch_size))
    feats: list[np.ndarray] = []
    labels: list[np.ndarray] = []
    done = 0
    while done < num_points:
        m = min(per_call, num_points - done)
        k = usable[rng.integers(0, usable.size, size=m)]
        f1 = data.sample_factors(m * batch_size, rng).reshape(m, batch_size, -1)
        f2 = data.sample_factors(m * batch_size, rng).reshape(m, batch_size, -1)
        rows = np.arange(m)
        f2[rows, :, k] = f1[rows, :, k]
        both = np.concatenate([f1.reshape(m * batch_size, -1), f2.reshape(m * batch_size, -1)])
        codes = as_codes(encode_factors(data, encode_fn, both, images_per_call))
        z1 = codes[: m * batch_size].reshape(m, batch_size, -1)
        z2 = codes[m * batch_size:].reshape(m, batch_size, -1)
        feats.append(np.abs(z1 - z2).mean(axis=1))
        labels.append(k)
        done += m
    return np.concatenate(feats), np.concatenate(labels)


def betavae_score(data: GroundTruthData, encode_fn: EncodeFn, rng: np.random.Generator,
                  batch_size: int = 64, num_train: int = 10000, num_eval: int = 5000,
                  images_per_call: int | None = None) -> dict[str, Any]:
    """BetaVAE score of ``encode_fn`` on ``data`` (which must have factors).

    Returns ``eval_accuracy`` (the score), ``train_accuracy`` and, for factor-group scores,
    ``eval_labels`` and ``eval_correct`` (num_eval,) (fixed factor, whether it was predicted).
    """
    usable = _require_factors(data, "BetaVAE score")
    chunk = auto_batch_size(data, images_per_call)
    x_train, y_train = _points(data, encode_fn, rng, num_train, batch_size, usable, chunk)
    x_eval, y_eval = _points(data, encode_fn, rng, num_eval, batch_size, usable, chunk)
    if np.unique(y_train).size < 2:
        # A single usable factor: every point has the same label, the classifier is exact.
        train_pred, eval_pred = y_train.copy(), np.full_like(y_eval, y_train[0])
    else:
        with quiet_convergence():
            model = OneVsRestClassifier(LogisticRegression(solver="liblinear")).fit(x_train, y_train)
        train_pred, eval_pred = model.predict(x_train), model.predict(x_eval)
    correct = eval_pred == y_eval
    return {
        "eval_accuracy": float(correct.mean()),
        "train_accuracy": float(np.mean(train_pred == y_train)),
        "eval_labels": y_eval,
        "eval_correct": correct,
    }
