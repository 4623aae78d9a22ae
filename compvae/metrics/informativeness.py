"""Informativeness: how well a probe reads each factor from the *active* latents.

Posterior means of collapsed latents still vary a little, and a standardising probe can read
a factor from that residue; gating by rate (a latent counts only if its mean KL exceeds a small
threshold) makes a collapsed model score exactly 0. Scores are chance-normalised:
(accuracy - chance) / (1 - chance), so 0 is guessing the most frequent class and 1 is perfect.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
from sklearn.preprocessing import StandardScaler

from compvae.metrics._utils import as_train_test, varying_factors
from compvae.metrics.probe import probe_accuracy

#: Mean KL (nats) a latent must carry to count as active.
DEFAULT_ACTIVE_KL = 0.1


def active_latents(kl_per_latent: np.ndarray, threshold: float = DEFAULT_ACTIVE_KL) -> np.ndarray:
    """Bool (d,): latents whose mean KL to the prior exceeds ``threshold`` nats."""
    kl = np.asarray(kl_per_latent, dtype=np.float64).reshape(-1)
    return np.isfinite(kl) & (kl > threshold)


def informativeness_per_factor(train_codes: np.ndarray, train_factors: np.ndarray,
                               test_codes: np.ndarray, test_factors: np.ndarray,
                               active: np.ndarray | None = None,
                               random_state: int = 0,
                               probe: Callable[..., float] = probe_accuracy) -> np.ndarray:
    """(K,) chance-normalised test accuracy of an MLP probe per factor; nan for a constant factor.

    ``active`` (bool (d,)) selects the codes the probe may read; with none active every factor
    scores 0. Chance is the test frequency of the most common training class. ``probe`` fits
    and scores one factor (as :func:`~compvae.metrics.probe.probe_accuracy`); another one is for
    comparisons (``benchmarks/probe.py``).
    """
    xtr, ytr, xte, yte = as_train_test(train_codes, train_factors, test_codes, test_factors)
    keep = np.ones(xtr.shape[1], bool) if active is None else np.asarray(active, bool).reshape(-1)
    if keep.shape[0] != xtr.shape[1]:
        raise ValueError(f"active has {keep.shape[0]} entries for {xtr.shape[1]} codes")
    varying = varying_factors(ytr)
    out = np.full(ytr.shape[1], np.nan)
    if keep.any():
        scaler = StandardScaler().fit(xtr[:, keep])
        ztr, zte = scaler.transform(xtr[:, keep]), scaler.transform(xte[:, keep])
    for k in np.flatnonzero(varying):
        values, counts = np.unique(ytr[:, k], return_counts=True)
        chance = float(np.mean(yte[:, k] == values[np.argmax(counts)]))
        if not keep.any() or chance >= 1.0:
            out[k] = 0.0
            continue
        acc = probe(ztr, ytr[:, k], zte, yte[:, k], hidden=64, max_iter=300, random_state=random_state)
        out[k] = (acc - chance) / (1.0 - chance)
    return out
