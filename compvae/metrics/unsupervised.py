"""Metrics that need no ground-truth factors, so they also run on unlabelled image folders.

* Gaussian total correlation of the mean codes (disentanglement_lib's unsupervised metrics):
  the KL between N(0, Sigma) and N(0, diag Sigma), Sigma the covariance of the posterior means,
  = 0.5 (sum log diag Sigma - log det Sigma) = -0.5 log det(correlation matrix).
* Gaussian Wasserstein correlation (same source), normalised by the trace of Sigma.
* Mean pairwise discrete mutual information between codes (same source, 20-bin histograms).
* Active units (Burda et al. 2016): codes whose posterior mean varies, Var_x(E[z|x]) > 0.01.
* Per-latent KL(q(z_j|x) || N(0, 1)) averaged over points, from (mu, logvar).
"""

from __future__ import annotations

import math

import numpy as np

from compvae.gaussian import kl_to_standard_normal
from compvae.metrics._utils import as_codes, discrete_mutual_info, histogram_discretize


def _varying(codes: np.ndarray) -> np.ndarray:
    """Codes with non-zero sample variance. An exactly constant code is independent of every
    other code, so it adds nothing to a total correlation, but its zero variance would turn the
    log-determinants into -inf - -inf = nan; dropping it keeps the value finite and correct."""
    return codes[:, codes.var(axis=0) > 0]


def gaussian_total_correlation(codes: np.ndarray) -> float:
    """Total correlation (nats) of a Gaussian fitted to the codes (n, d): 0 = uncorrelated.

    Singular covariance (a code exactly a linear function of others) gives +inf, the true value.
    """
    c = _varying(as_codes(codes))
    if c.shape[1] < 2 or c.shape[0] < 2:
        return 0.0
    cov = np.atleast_2d(np.cov(c, rowvar=False))
    sign, logdet = np.linalg.slogdet(cov)
    if sign <= 0:
        return math.inf
    return float(0.5 * (np.sum(np.log(np.diag(cov))) - logdet))


def gaussian_wasserstein_correlation(codes: np.ndarray, normalize: bool = True) -> float:
    """Squared 2-Wasserstein distance between N(0, Sigma) and N(0, diag Sigma) of the codes.

    ``normalize`` divides by trace(Sigma) (the reference's ``_norm`` variant), so the value does
    not scale with the code magnitudes. 0 for uncorrelated codes.
    """
    c = as_codes(codes)
    if c.shape[0] < 2:
        return 0.0
    cov = np.atleast_2d(np.cov(c, rowvar=False))
    # tr sqrtm(Sigma D), D = diag(Sigma), as the reference; Sigma D is similar to the symmetric
    # PSD D^1/2 Sigma D^1/2, so the trace of its root is the sum of root eigenvalues of that,
    # which stays exact when Sigma is singular (where sqrtm warns and loses accuracy).
    half = np.sqrt(np.diag(cov))
    eig = np.linalg.eigvalsh(half[:, None] * cov * half[None, :])
    value = float(2.0 * np.trace(cov) - 2.0 * np.sqrt(np.clip(eig, 0.0, None)).sum())
    if normalize:
        trace = float(np.trace(cov))
        return value / trace if trace > 0 else 0.0
    return value


def codes_mutual_info(codes: np.ndarray, num_bins: int = 20) -> float:
    """Mean discrete mutual information (nats) over ordered pairs of distinct codes."""
    c = as_codes(codes)
    d = c.shape[1]
    if d < 2:
        return 0.0
    disc = histogram_discretize(c, num_bins)
    m = discrete_mutual_info(disc, disc)
    np.fill_diagonal(m, 0.0)
    return float(m.sum() / (d * d - d))


def active_units(codes: np.ndarray, threshold: float = 0.01) -> int:
    """Number of codes whose posterior mean varies across inputs: Var(codes[:, j]) > threshold."""
    c = as_codes(codes)
    if c.shape[0] < 2:
        return 0
    return int(np.sum(c.var(axis=0, ddof=1) > threshold))


def per_latent_kl(mu: np.ndarray, logvar: np.ndarray) -> np.ndarray:
    """Mean over points of KL(N(mu, exp(logvar)) || N(0, 1)) for each latent: (d,) in nats.

    Tells which latents carry information (the mask's latent choice and collapse checks).
    """
    m = as_codes(mu, "mu")
    lv = as_codes(logvar, "logvar")
    if m.shape != lv.shape:
        raise ValueError(f"mu and logvar must have the same shape, got {m.shape} and {lv.shape}")
    return kl_to_standard_normal(m, lv).mean(axis=0)
