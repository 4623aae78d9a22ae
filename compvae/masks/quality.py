"""Mask quality: coverage, empty masks (a trial's knobs failed), IoU with true silhouettes."""

from __future__ import annotations

import torch
from torch import Tensor

from compvae.errors import EmptyMaskError
from compvae.masks.ops import resize_mask


def mask_coverage(masks: Tensor) -> Tensor:
    """Per-image mean mask value ``(B,)``: the fraction of pixels a hard mask covers."""
    return masks.flatten(1).float().mean(dim=1)


def empty_fraction(masks: Tensor, min_coverage: float = 0.0) -> float:
    """Fraction of images whose mask is empty: coverage below ``min_coverage`` or exactly 0.

    A mean coverage above the floor can still hide many individual images with nothing
    masked (e.g. the object left the region the latent controls); the trial logs this.
    """
    cov = mask_coverage(masks)
    if cov.numel() == 0:
        return 0.0
    return float(((cov < min_coverage) | (cov == 0)).float().mean())


def check_coverage(masks: Tensor, min_coverage: float, latent: int) -> Tensor:
    """Raise ``EmptyMaskError`` if the batch-mean coverage is below ``min_coverage`` (or 0).

    A latent with no visible effect gives an empty mask; training a child on it is wasted
    compute and produces meaningless metrics, so it must stop the trial with an actionable
    one-line message. An all-zero mask fails even with ``min_coverage = 0``.

    Returns:
        the per-image coverage ``(B,)`` when the mask is usable.
    """
    cov = mask_coverage(masks)
    mean = float(cov.mean()) if cov.numel() else 0.0
    if mean < min_coverage or mean == 0.0:
        floor = (f"(< min_coverage {min_coverage * 100:.3g}%)" if mean < min_coverage
                 else "(an empty mask)")
        raise EmptyMaskError(
            f"mask for latent {latent} covers {mean * 100:.3g}% of pixels {floor}: the latent has no "
            "visible effect; choose another mask.latent or lower mask.threshold")
    return cov


def mask_iou(masks: Tensor, silhouettes: Tensor) -> Tensor:
    """Per-image IoU ``(B,)`` of masks and ground-truth silhouettes, both binarised at 0.5.

    Both are brought to the larger of the two resolutions first (nearest upsampling of the
    binarised masks, exact for integer factors). Two empty masks agree perfectly, so their IoU
    is defined as 1: averaging IoU over images then stays meaningful, and an empty mask where
    the silhouette is not empty still scores 0. (Emptiness itself is caught by
    ``check_coverage``.)
    """
    a = (torch.as_tensor(masks).float() >= 0.5).float()
    b = (torch.as_tensor(silhouettes).float() >= 0.5).float().to(a.device)
    if a.shape[0] != b.shape[0]:
        raise ValueError(f"batch sizes differ: {a.shape[0]} masks vs {b.shape[0]} silhouettes")
    res = max(a.shape[-1], b.shape[-1])
    a = resize_mask(a, res, "hard").amax(dim=1)
    b = resize_mask(b, res, "hard").amax(dim=1)
    inter = (a * b).flatten(1).sum(1)
    union = torch.maximum(a, b).flatten(1).sum(1)
    return torch.where(union > 0, inter / union.clamp_min(1.0), torch.ones_like(union))


