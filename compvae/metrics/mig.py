"""Mutual Information Gap (Chen et al. 2018, "Isolating Sources of Disentanglement in VAEs").

Computed as disentanglement_lib's ``discrete_mig``: each code is discretised into ``num_bins``
equal-width bins, I(z_j; v_k) is the discrete mutual information, and for every factor the gap
between the most and second most informative code is normalised by H(v_k). The per-factor gaps
are what the factor-group variants (``mig_coarse``, ``mig_fine``) average over.
"""

from __future__ import annotations

import numpy as np

from compvae.metrics._utils import (
    as_codes,
    as_factors,
    discrete_entropy,
    discrete_mutual_info,
    histogram_discretize,
    nanmean,
    top_two_gap,
)


def mig_per_factor(codes: np.ndarray, factors: np.ndarray, num_bins: int = 20) -> np.ndarray:
    """Normalised gap (top1 - top2) / H(v_k) for each factor: float (K,).

    Factors with zero entropy (constant in the sample) have no defined gap and get nan; the
    caller averages over the rest. With a single code the runner-up information is taken as 0.
    """
    c = as_codes(codes)
    f = as_factors(factors, c.shape[0])
    mi = discrete_mutual_info(histogram_discretize(c, num_bins), f)
    entropy = discrete_entropy(f)
    gap = top_two_gap(mi)
    out = np.full(f.shape[1], np.nan)
    ok = entropy > 0
    out[ok] = gap[ok] / entropy[ok]
    return out


def mig(codes: np.ndarray, factors: np.ndarray, num_bins: int = 20) -> float:
    """MIG: mean over (non-constant) factors of the normalised top-two information gap.

    ``codes`` float (n, d) (posterior means), ``factors`` int (n, K). In [0, 1]; nan when no
    factor varies.
    """
    return nanmean(mig_per_factor(codes, factors, num_bins))
