"""Masks from a parent VAE: where in the image does latent ``k`` have a visible effect?

:mod:`.ops` (blur, threshold, resize), :mod:`.recipe` (``make_masks``, ``oracle_masks``),
:mod:`.quality` (coverage, empty masks, IoU) and :mod:`.latent` (``mask.latent: auto``).
"""

from compvae.errors import EmptyMaskError
from compvae.masks.latent import choose_latent, latent_kl
from compvae.masks.ops import (
    DEFAULT_CHUNK,
    MaskKind,
    Nuisance,
    ParentLike,
    encode_means,
    eval_mode,
    gaussian_blur,
    gaussian_kernel1d,
    module_device,
    resize_mask,
)
from compvae.masks.quality import check_coverage, empty_fraction, mask_coverage, mask_iou
from compvae.masks.recipe import MaskSteps, make_masks, oracle_masks

__all__ = [
    "DEFAULT_CHUNK",
    "EmptyMaskError",
    "MaskKind",
    "MaskSteps",
    "Nuisance",
    "ParentLike",
    "check_coverage",
    "choose_latent",
    "empty_fraction",
    "encode_means",
    "eval_mode",
    "gaussian_blur",
    "gaussian_kernel1d",
    "latent_kl",
    "make_masks",
    "mask_coverage",
    "mask_iou",
    "module_device",
    "oracle_masks",
    "resize_mask",
]
