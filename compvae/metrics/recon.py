"""Reconstruction errors, overall and split by a mask (the child is trained inside a mask).

Per-image errors are *summed* over pixels and channels, the same convention as the training
loss (``beta_tcvae_loss`` sums reconstruction over pixels), so logged values are comparable with
the loss. The masked split is a per-pixel *mean* weighted by the mask, so the inside and outside
numbers are comparable with each other whatever the mask's coverage.
"""

from __future__ import annotations

import math
from typing import Literal

import numpy as np

_EPS = 1e-7

ErrorKind = Literal["mse", "bce"]


def _pair(images: np.ndarray, recon: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    x = np.asarray(images, dtype=np.float64)
    r = np.asarray(recon, dtype=np.float64)
    if x.shape != r.shape or x.ndim < 2:
        raise ValueError(f"images and reconstructions must have the same (n, ...) shape, "
                         f"got {x.shape} and {r.shape}")
    return x, r


def pixel_bce(images: np.ndarray, recon: np.ndarray, logits: bool = False) -> np.ndarray:
    """Element-wise binary cross-entropy of targets in [0, 1] against probabilities or logits.

    With ``logits`` (the decoder's raw output) the stable form max(l, 0) - l x + log(1 + e^-|l|)
    is used; probabilities are clipped to [1e-7, 1 - 1e-7] so a saturated pixel stays finite.
    """
    x, r = _pair(images, recon)
    if logits:
        return np.maximum(r, 0.0) - r * x + np.log1p(np.exp(-np.abs(r)))
    p = np.clip(r, _EPS, 1.0 - _EPS)
    return -(x * np.log(p) + (1.0 - x) * np.log1p(-p))


def pixel_mse(images: np.ndarray, recon: np.ndarray) -> np.ndarray:
    """Element-wise squared error."""
    x, r = _pair(images, recon)
    return np.square(x - r)


def bce_per_image(images: np.ndarray, recon: np.ndarray, logits: bool = False) -> np.ndarray:
    """Binary cross-entropy summed over each image's pixels and channels: (n,) in nats."""
    e = pixel_bce(images, recon, logits)
    return e.reshape(e.shape[0], -1).sum(axis=1)


def mse_per_image(images: np.ndarray, recon: np.ndarray) -> np.ndarray:
    """Squared error summed over each image's pixels and channels: (n,)."""
    e = pixel_mse(images, recon)
    return e.reshape(e.shape[0], -1).sum(axis=1)


def masked_recon_error(images: np.ndarray, recon: np.ndarray, mask: np.ndarray,
                       kind: ErrorKind = "mse", logits: bool = False) -> dict[str, float]:
    """Mean per-pixel error inside and outside a (soft) mask, over the whole batch.

    ``images``/``recon`` (n, C, R, R); ``mask`` in [0, 1], broadcastable to them (typically
    (n, 1, R, R)). Each element's error is weighted by ``mask`` for ``inside`` and by
    ``1 - mask`` for ``outside``: inside = sum(w e) / sum(w). ``coverage`` is the mean mask
    weight. A side with no weight (empty or full mask) is nan.
    """
    if kind not in ("mse", "bce"):
        raise ValueError(f"kind must be 'mse' or 'bce', got {kind!r}")
    e = pixel_mse(images, recon) if kind == "mse" else pixel_bce(images, recon, logits)
    m = np.asarray(mask, dtype=np.float64)
    if (m < 0).any() or (m > 1).any():
        raise ValueError("mask values must lie in [0, 1]")
    try:
        w = np.broadcast_to(m, e.shape)
    except ValueError:
        raise ValueError(f"mask of shape {m.shape} does not broadcast to images {e.shape}; "
                         "resize it to the image resolution first") from None
    inside_w, outside_w = w.sum(), (1.0 - w).sum()
    return {
        "inside": float((w * e).sum() / inside_w) if inside_w > 0 else math.nan,
        "outside": float(((1.0 - w) * e).sum() / outside_w) if outside_w > 0 else math.nan,
        "coverage": float(w.mean()),
    }
