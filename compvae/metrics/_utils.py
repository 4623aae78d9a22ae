"""Shared helpers for the metrics: input checks, histogram discretisation, discrete MI, encoding.

The discretisation and discrete mutual information follow disentanglement_lib's ``utils``
(equal-width histogram bins per code, ``sklearn.metrics.mutual_info_score`` in nats) so our
MIG/modularity numbers are comparable with published ones.
"""

from __future__ import annotations

import contextlib
import math
import warnings
from collections.abc import Callable, Iterator, Sequence

import numpy as np
from sklearn.exceptions import ConvergenceWarning
from sklearn.metrics import mutual_info_score

from compvae.data.base import GroundTruthData

EncodeFn = Callable[[np.ndarray], np.ndarray]

#: Bytes of float32 images per ``encode_fn`` call when the caller gives no batch size: bounds
#: memory at any resolution/channel count while keeping small images in large, fast batches.
_IMAGE_BYTES_PER_CALL = 64 * 2**20
_MAX_AUTO_BATCH = 1024


def as_codes(codes: np.ndarray, name: str = "codes") -> np.ndarray:
    """float64 (n, d); a non-finite code means a diverged encoder, which no metric can score."""
    c = np.asarray(codes, dtype=np.float64)
    if c.ndim != 2:
        raise ValueError(f"{name} must have shape (n, d), got {c.shape}")
    if not np.isfinite(c).all():
        raise ValueError(f"{name} contain non-finite values (nan/inf); the encoder diverged")
    return c


def as_factors(factors: np.ndarray, n: int, name: str = "factors") -> np.ndarray:
    """int64 (n, K) aligned with ``n`` codes; factors are class labels, never continuous values."""
    f = np.asarray(factors)
    if f.ndim != 2 or f.shape[0] != n:
        raise ValueError(f"{name} must have shape ({n}, K) to match the codes, got {f.shape}")
    if f.size and not np.issubdtype(f.dtype, np.integer):
        if not np.array_equal(f, np.round(f)):
            raise ValueError(f"{name} must be integer class labels")
    return f.astype(np.int64, copy=False)


def as_train_test(train_codes: np.ndarray, train_factors: np.ndarray, test_codes: np.ndarray,
                  test_factors: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """(train codes, train factors, test codes, test factors) checked as above and against each
    other: a predictor fitted on the training split must read the same codes and factors."""
    xtr = as_codes(train_codes, "train_codes")
    ytr = as_factors(train_factors, xtr.shape[0], "train_factors")
    xte = as_codes(test_codes, "test_codes")
    yte = as_factors(test_factors, xte.shape[0], "test_factors")
    if xtr.shape[1] != xte.shape[1] or ytr.shape[1] != yte.shape[1]:
        raise ValueError("train and test sets must have the same number of codes and factors")
    return xtr, ytr, xte, yte


def top_two_gap(matrix: np.ndarray) -> np.ndarray:
    """Per column (factor) of a (codes, factors) matrix, its largest entry minus the runner-up:
    the gap MIG and SAP both score. With a single code the runner-up is taken as 0."""
    m = np.asarray(matrix, dtype=np.float64)
    ranked = np.sort(m, axis=0)[::-1]
    second = ranked[1] if ranked.shape[0] > 1 else np.zeros(m.shape[1])
    return ranked[0] - second


def histogram_discretize(codes: np.ndarray, num_bins: int = 20) -> np.ndarray:
    """Per code, ``num_bins`` equal-width bins over its observed range -> bin labels 1..num_bins.

    Same rule as disentanglement_lib's histogram discretizer: the bin index is found with the
    left edges only, so the maximum lands in the last bin and a constant code in a single bin.
    """
    c = as_codes(codes)
    if num_bins < 1:
        raise ValueError(f"num_bins must be >= 1, got {num_bins}")
    out = np.empty(c.shape, dtype=np.int64)
    for j in range(c.shape[1]):
        left_edges = np.histogram_bin_edges(c[:, j], bins=num_bins)[:-1]
        out[:, j] = np.digitize(c[:, j], left_edges)
    return out


def discrete_mutual_info(discrete_codes: np.ndarray, factors: np.ndarray) -> np.ndarray:
    """I(z_j; v_k) in nats for every discretised code j and factor k: (d, K)."""
    d, k = discrete_codes.shape[1], factors.shape[1]
    m = np.zeros((d, k))
    for j in range(d):
        for i in range(k):
            m[j, i] = mutual_info_score(factors[:, i], discrete_codes[:, j])
    return m


def discrete_entropy(factors: np.ndarray) -> np.ndarray:
    """H(v_k) in nats of each factor's empirical distribution: (K,). Equals I(v_k; v_k)."""
    h = np.zeros(factors.shape[1])
    for i in range(factors.shape[1]):
        _, counts = np.unique(factors[:, i], return_counts=True)
        p = counts / counts.sum()
        h[i] = float(-(p * np.log(p)).sum())
    return h


def varying_factors(factors: np.ndarray) -> np.ndarray:
    """Bool (K,): factors taking >= 2 values in ``factors`` (the training set).

    A factor that never varies (e.g. a size-1 colour factor) carries no information, and the
    classifiers behind DCI/SAP/explicitness cannot even be fitted on one class, so every
    supervised metric leaves such factors out instead of crashing (disentanglement_lib simply
    never has them: its datasets drop constant factors).
    """
    if factors.shape[0] == 0:
        return np.zeros(factors.shape[1], dtype=bool)
    return factors.max(axis=0) > factors.min(axis=0)


def nanmean(values: np.ndarray | Sequence[float]) -> float:
    """Mean over the defined (non-nan) entries; nan, without a warning, when there are none."""
    v = np.asarray(values, dtype=np.float64)
    v = v[~np.isnan(v)]
    return float(v.mean()) if v.size else math.nan


@contextlib.contextmanager
def quiet_convergence() -> Iterator[None]:
    """Silence sklearn's ConvergenceWarning: the reference defaults (e.g. LinearSVC C=0.01,
    logistic regression with 100 iterations on unscaled codes) are part of the metric's
    definition, so a not-fully-converged fit is the metric value, not an error to report."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        yield


def auto_batch_size(data: GroundTruthData, batch_size: int | None) -> int:
    """Images per ``encode_fn`` call: the caller's choice, else ~64 MiB of float32 images."""
    if batch_size is not None:
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        return int(batch_size)
    per_image = 4 * max(1, data.channels) * data.resolution * data.resolution
    return int(max(1, min(_MAX_AUTO_BATCH, _IMAGE_BYTES_PER_CALL // per_image)))


def encode_factors(data: GroundTruthData, encode_fn: EncodeFn, factors: np.ndarray,
                   batch_size: int) -> np.ndarray:
    """Render ``factors`` through the dataset and encode them in chunks (bounded memory).

    An ``encode_fn`` with ``wants_factors = True`` is called as ``encode_fn(images, factors)``
    (an oracle-masked child needs the true silhouettes). Returns float64 codes (n, d).
    """
    wants_factors = bool(getattr(encode_fn, "wants_factors", False))
    n = factors.shape[0]
    chunks: list[np.ndarray] = []
    for start in range(0, n, batch_size):
        f = factors[start:start + batch_size]
        images = np.asarray(data.images(f), dtype=np.float32)
        codes = np.asarray(encode_fn(images, f) if wants_factors else encode_fn(images))
        if codes.ndim != 2 or codes.shape[0] != f.shape[0]:
            raise ValueError(
                f"encode_fn must return codes of shape ({f.shape[0]}, d) for {f.shape[0]} images, "
                f"got {codes.shape}")
        chunks.append(codes.astype(np.float64, copy=False))
    if not chunks:
        raise ValueError("no points to encode")
    return np.concatenate(chunks, axis=0)


def sample_codes(data: GroundTruthData, encode_fn: EncodeFn, n: int, rng: np.random.Generator,
                 batch_size: int) -> tuple[np.ndarray, np.ndarray]:
    """``n`` uniform factor draws and their codes: (codes float64 (n, d), factors int64 (n, K))."""
    factors = data.sample_factors(n, rng)
    return as_codes(encode_factors(data, encode_fn, factors, batch_size)), factors
