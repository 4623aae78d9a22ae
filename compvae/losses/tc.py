"""Minibatch estimators of the total correlation and the rest of the ELBO's KL decomposition.

Chen et al. (2018) split E_x KL(q(z|x) || p(z)) into

    MI      = E[log q(z|x) - log q(z)]                 (index-code mutual information)
    TC      = E[log q(z) - sum_d log q(z_d)]           (total correlation)
    dim-KL  = E[sum_d log q(z_d) - log p(z)]           (dimension-wise KL)

where q(z) = (1/N) sum_n q(z|x_n) is the aggregate posterior over the N training images. q(z)
and q(z_d) are estimated from the batch by importance weighting the densities q(z_i|x_j):

- ``"mws"`` (minibatch weighted sampling): every x_j gets weight 1/(N M), M = batch size. The
  log(N M) constants are kept: dropping them (as several public libraries do) shifts the logged
  TC and MI by (D - 1) log(N M) and log(N M).
- ``"mss"`` (minibatch stratified sampling, B = batch size, M = B - 1): weight 1/N on the
  sample's own x (the true diagonal), (N - M)/(N M) on one stratum element per row and 1/M on
  the rest, so each row sums to 1. Public versions fill column 0 instead of the diagonal with a
  strided write; :func:`mss_log_weights` builds the matrix explicitly and is tested.

Everything is done in log space with ``logsumexp``: the densities of narrow posteriors
(logvar ~ -20) overflow float32 in linear space.
"""

from __future__ import annotations

import functools
import math
from typing import Literal, NamedTuple

import torch

Estimator = Literal["mss", "mws"]
ESTIMATORS: tuple[str, ...] = ("mss", "mws")
_LOG_2PI = math.log(2.0 * math.pi)


class TCDecomposition(NamedTuple):
    """Batch means of the three KL terms (0-d tensors), all with the same estimator.

    ``mi + tc + dim_kl`` equals the Monte-Carlo estimate E[log q(z|x) - log p(z)] exactly,
    because the estimated log q(z) and log q(z_d) cancel in the sum.
    """

    mi: torch.Tensor
    tc: torch.Tensor
    dim_kl: torch.Tensor


def log_density_gaussian(x: torch.Tensor, mu: torch.Tensor, logvar: torch.Tensor) -> torch.Tensor:
    """Elementwise log N(x; mu, exp(logvar)), broadcasting the three arguments.

    Written with ``exp(-logvar)`` rather than a division by the variance so that very narrow
    posteriors give large finite log-densities instead of inf/inf.
    """
    return -0.5 * (_LOG_2PI + logvar + (x - mu) ** 2 * torch.exp(-logvar))


def mss_log_weights(batch_size: int, dataset_size: int, *, device: torch.device | str | None = None,
                    dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """Log importance weights (B, B) of minibatch stratified sampling; row i weighs q(z_i|x_j).

    With M = B - 1: W[i, i] = 1/N (the sample's own x, on the true diagonal), W[i, (i+1) mod B]
    = (N - M)/(N M) (the stratum element standing for the images outside the batch), and 1/M
    everywhere else. Each row sums to 1: 1/N + (N - M)/(N M) + (M - 1)/M = 1.
    """
    _check_sizes(batch_size, dataset_size)
    n, m = float(dataset_size), float(batch_size - 1)
    w = torch.full((batch_size, batch_size), 1.0 / m, dtype=torch.float64)
    rows = torch.arange(batch_size)
    w[rows, (rows + 1) % batch_size] = (n - m) / (n * m)
    w[rows, rows] = 1.0 / n
    return w.log().to(device=device, dtype=dtype)


def mws_log_weights(batch_size: int, dataset_size: int, *, device: torch.device | str | None = None,
                    dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """Log importance weights (B, B) of minibatch weighted sampling: log(1/(N M)), M = B.

    The rows sum to 1/N in probability space, not 1: MWS is the plain 1/(N M) estimator of
    Chen et al., whose constant is kept so the logged TC has the right offset.
    """
    _check_sizes(batch_size, dataset_size)
    value = -math.log(float(dataset_size) * float(batch_size))
    return torch.full((batch_size, batch_size), value, device=device, dtype=dtype)


def _check_sizes(batch_size: int, dataset_size: int) -> None:
    if batch_size < 2:
        raise ValueError(f"TC estimation needs a batch of at least 2 samples, got {batch_size}")
    if dataset_size < batch_size:
        raise ValueError(
            f"dataset_size ({dataset_size}) must be >= the batch size ({batch_size}): "
            "pass the training set's size N, not a smaller number")


@functools.lru_cache(maxsize=32)
def _log_weights(estimator: str, batch_size: int, dataset_size: int, device: torch.device,
                 dtype: torch.dtype) -> torch.Tensor:
    """Cached weight matrix: rebuilding it each step would cost a host-to-device copy on GPU.

    Callers only read it (out-of-place adds), so sharing one tensor is safe.
    """
    if estimator == "mss":
        return mss_log_weights(batch_size, dataset_size, device=device, dtype=dtype)
    if estimator == "mws":
        return mws_log_weights(batch_size, dataset_size, device=device, dtype=dtype)
    raise ValueError(f"unknown TC estimator '{estimator}'; choose one of {', '.join(ESTIMATORS)}")


def _log_q_terms(z: torch.Tensor, mu: torch.Tensor, logvar: torch.Tensor, dataset_size: int,
                 estimator: str) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-sample estimates (B,) of log q(z_i) and sum_d log q(z_id)."""
    if z.dim() != 2 or z.shape != mu.shape or z.shape != logvar.shape:
        raise ValueError(
            f"z, mu and logvar must all be (B, D); got {tuple(z.shape)}, {tuple(mu.shape)}, "
            f"{tuple(logvar.shape)}")
    batch = z.shape[0]
    # mat[i, j, d] = log q(z_id | x_j)
    mat = log_density_gaussian(z.unsqueeze(1), mu.unsqueeze(0), logvar.unsqueeze(0))
    logw = _log_weights(estimator, batch, dataset_size, z.device, z.dtype)
    log_qz = torch.logsumexp(mat.sum(dim=2) + logw, dim=1)
    log_prod_qzd = torch.logsumexp(mat + logw.unsqueeze(2), dim=1).sum(dim=1)
    return log_qz, log_prod_qzd


def total_correlation(z: torch.Tensor, mu: torch.Tensor, logvar: torch.Tensor, dataset_size: int,
                      estimator: Estimator = "mss") -> torch.Tensor:
    """Batch-mean TC estimate, a 0-d tensor (differentiable in z, mu and logvar).

    Args:
        z: posterior samples (B, D), one per batch image.
        mu, logvar: the batch's posterior parameters (B, D).
        dataset_size: N, the size of the training set (never the batch size).
        estimator: ``"mss"`` or ``"mws"`` (see the module docstring).
    """
    log_qz, log_prod_qzd = _log_q_terms(z, mu, logvar, dataset_size, estimator)
    return (log_qz - log_prod_qzd).mean()


def kl_decomposition(z: torch.Tensor, mu: torch.Tensor, logvar: torch.Tensor, dataset_size: int,
                     estimator: Estimator = "mss") -> TCDecomposition:
    """MI, TC and dimension-wise KL (batch means) from one set of density evaluations."""
    log_qz, log_prod_qzd = _log_q_terms(z, mu, logvar, dataset_size, estimator)
    log_qz_x = log_density_gaussian(z, mu, logvar).sum(dim=1)
    log_pz = log_density_gaussian(z, torch.zeros_like(z), torch.zeros_like(z)).sum(dim=1)
    return TCDecomposition(
        mi=(log_qz_x - log_qz).mean(),
        tc=(log_qz - log_prod_qzd).mean(),
        dim_kl=(log_prod_qzd - log_pz).mean(),
    )
