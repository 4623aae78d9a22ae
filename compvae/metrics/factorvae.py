"""FactorVAE disentanglement score (Kim & Mnih 2018), with disentanglement_lib's defaults.

1. Global variance of each code over ``num_variance_estimate`` random points; codes with
   std < ``prune_threshold`` (0.05) are collapsed and never vote.
2. A vote: pick a factor k, draw ``batch_size`` (64) points sharing k's value, encode, and take
   the active code with the smallest variance divided by its global variance.
3. The classifier maps each code to the factor it got most votes for (majority vote) on
   ``num_train`` votes; the score is its accuracy on ``num_eval`` fresh votes.

Factors with a single value (nothing to fix) are never chosen, matching the reference datasets,
which drop them. Votes are drawn many at a time so ``encode_fn`` sees large batches.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from compvae.data.base import GroundTruthData
from compvae.metrics._utils import EncodeFn, as_codes, auto_batch_size, encode_factors


def _require_factors(data: GroundTruthData, metric: str) -> np.ndarray:
    """Indices of factors that can be fixed; refuses unlabelled data (metric not applicable)."""
    if not data.has_factors:
        raise ValueError(f"{metric} needs ground-truth factors; dataset '{data.name}' has none")
    usable = np.flatnonzero(np.asarray(data.factor_sizes) > 1)
    if usable.size == 0:
        raise ValueError(f"{metric}: dataset '{data.name}' has no factor with more than one value")
    return usable


def fixed_factor_batches(data: GroundTruthData, factor_index: np.ndarray, batch_size: int,
                         rng: np.random.Generator) -> np.ndarray:
    """Factors (m * batch_size, K): batch i shares the value of factor ``factor_index[i]``."""
    m = factor_index.shape[0]
    factors = data.sample_factors(m * batch_size, rng).reshape(m, batch_size, -1)
    rows = np.arange(m)
    factors[rows, :, factor_index] = factors[rows, 0, factor_index][:, None]
    return factors.reshape(m * batch_size, -1)


def _votes(data: GroundTruthData, encode_fn: EncodeFn, rng: np.random.Generator, num_points: int,
           batch_size: int, usable: np.ndarray, global_var: np.ndarray, active: np.ndarray,
           images_per_call: int) -> np.ndarray:
    """Vote counts (K, d): row = fixed factor, column = code with least normalised variance."""
    votes = np.zeros((data.num_factors, global_var.shape[0]), dtype=np.int64)
    active_idx = np.flatnonzero(active)
    per_call = max(1, images_per_call // batch_size)
    done = 0
    while done < num_points:
        m = min(per_call, num_points - done)
        k = usable[rng.integers(0, usable.size, size=m)]
        factors = fixed_factor_batches(data, k, batch_size, rng)
        codes = as_codes(encode_factors(data, encode_fn, factors, images_per_call))
        local_var = codes.reshape(m, batch_size, -1).var(axis=1, ddof=1)
        ratio = local_var[:, active_idx] / global_var[active_idx]
        winner = active_idx[np.argmin(ratio, axis=1)]
        np.add.at(votes, (k, winner), 1)
        done += m
    return votes


def vote_accuracy(votes: np.ndarray, classifier: np.ndarray, factors: np.ndarray | None = None) -> float:
    """Share of votes whose code the majority classifier maps back to the fixed factor.

    ``factors``: restrict to votes whose fixed factor is in this index list (factor groups);
    nan when there are no such votes.
    """
    rows = np.arange(votes.shape[0]) if factors is None else np.asarray(factors, dtype=np.int64)
    sub = votes[rows]
    total = sub.sum()
    if total == 0:
        return float("nan")
    correct = sum(int(votes[r, classifier == r].sum()) for r in rows)
    return correct / float(total)


def factorvae_score(data: GroundTruthData, encode_fn: EncodeFn, rng: np.random.Generator,
                    batch_size: int = 64, num_train: int = 10000, num_eval: int = 5000,
                    num_variance_estimate: int = 10000, prune_threshold: float = 0.05,
                    images_per_call: int | None = None) -> dict[str, Any]:
    """FactorVAE score of ``encode_fn`` on ``data`` (which must have factors).

    Returns ``eval_accuracy`` (the score), ``train_accuracy``, ``num_active_dims`` and, for
    factor-group scores, ``classifier`` (d,) (factor index per code), ``train_votes`` and
    ``eval_votes`` (K, d). With no active code both accuracies are 0, as the reference.
    """
    usable = _require_factors(data, "FactorVAE score")
    if batch_size < 2:
        raise ValueError("FactorVAE score needs batch_size >= 2 to estimate a variance")
    chunk = auto_batch_size(data, images_per_call)
    probe = data.sample_factors(num_variance_estimate, rng)
    global_var = as_codes(encode_factors(data, encode_fn, probe, chunk)).var(axis=0, ddof=1)
    active = np.sqrt(global_var) >= prune_threshold
    d = global_var.shape[0]
    if not active.any():
        empty = np.zeros((data.num_factors, d), dtype=np.int64)
        return {"eval_accuracy": 0.0, "train_accuracy": 0.0, "num_active_dims": 0,
                "classifier": np.zeros(d, dtype=np.int64), "train_votes": empty, "eval_votes": empty}
    train_votes = _votes(data, encode_fn, rng, num_train, batch_size, usable, global_var, active, chunk)
    classifier = np.argmax(train_votes, axis=0)
    eval_votes = _votes(data, encode_fn, rng, num_eval, batch_size, usable, global_var, active, chunk)
    return {
        "eval_accuracy": vote_accuracy(eval_votes, classifier),
        "train_accuracy": vote_accuracy(train_votes, classifier),
        "num_active_dims": int(active.sum()),
        "classifier": classifier,
        "train_votes": train_votes,
        "eval_votes": eval_votes,
    }
