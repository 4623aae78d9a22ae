"""The trial's masks and parent codes of child images, and the masks' quality metrics."""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from compvae.config import TrialConfig
from compvae.masks import (
    EmptyMaskError,
    check_coverage,
    encode_means,
    make_masks,
    mask_coverage,
    mask_iou,
    oracle_masks,
)
from compvae.models import VAE
from compvae.pipeline.data import TrialData, to_parent_resolution
from compvae.pipeline.state import mask_seed

ENCODE_BATCH = 256


class Masker:
    """Masks for child-resolution images from the (current) parent, with the trial's settings;
    ``mask.source: oracle`` takes the dataset's true silhouettes of the images' ``factors``."""

    def __init__(self, cfg: TrialConfig, parent: VAE, latent: int, data: TrialData) -> None:
        self.cfg, self.parent, self.latent = cfg, parent, latent
        self.parent_data = data.parent_data
        self.oracle = cfg.mask.source == "oracle"
        self.generator = torch.Generator(device="cpu").manual_seed(mask_seed(cfg.train.seed))

    def __call__(self, child_images: torch.Tensor, stochastic: bool = True,
                 return_steps: bool = False, factors: np.ndarray | None = None) -> Any:
        m = self.cfg.mask
        parent_images = to_parent_resolution(child_images, self.cfg.parent.resolution)
        if self.oracle:
            if factors is None:
                raise ValueError("mask.source: oracle needs the images' factors")
            silhouettes = torch.from_numpy(self.parent_data.silhouettes(factors)).to(child_images.device)
            return oracle_masks(silhouettes, parent_images, m.threshold, m.blur_sigma, kind=m.kind,
                                out_resolution=self.cfg.child.resolution, return_steps=return_steps)
        return make_masks(
            self.parent, parent_images, self.latent, m.delta, m.threshold, m.blur_sigma,
            kind=m.kind, nuisance=m.nuisance, nuisance_draws=m.nuisance_draws,
            delta_std=m.delta_std if stochastic else 0.0, out_resolution=self.cfg.child.resolution,
            generator=self.generator, return_steps=return_steps)

    def batched(self, child_images: torch.Tensor, batch: int, stochastic: bool = True,
                factors: np.ndarray | None = None) -> torch.Tensor:
        return torch.cat([self(child_images[i : i + batch], stochastic,
                               factors=None if factors is None else factors[i : i + batch])
                          for i in range(0, len(child_images), batch)])


class ParentCode:
    """``child.parent_code: decoder``: the frozen parent's posterior means of child images, the
    condition the child's decoder reads (no gradient reaches the parent)."""

    def __init__(self, cfg: TrialConfig, parent: VAE) -> None:
        self.parent, self.resolution = parent, cfg.parent.resolution
        self.enabled = cfg.child.parent_code == "decoder"

    def __call__(self, child_images: torch.Tensor) -> torch.Tensor | None:
        if not self.enabled:
            return None
        x = to_parent_resolution(child_images, self.resolution)
        return encode_means(self.parent, x, ENCODE_BATCH)[0].to(child_images.device)


def mask_quality(cfg: TrialConfig, data: TrialData, masker: Masker) -> dict[str, float]:
    """Coverage (and IoU with the true silhouettes, where known) on the held-out images."""
    masks = masker(data.test_child, stochastic=False, factors=data.test_factors)
    out = {"mask/test_coverage": float(mask_coverage(masks).mean())}
    if data.test_silhouettes is not None:
        out["mask/iou"] = float(mask_iou(masks, data.test_silhouettes).mean())
    return out


def check_joint_coverage(cfg: TrialConfig, masker: Masker, test_masks: torch.Tensor, epoch: int) -> None:
    """A jointly trained parent can stop using its focus latent mid-run: stop the trial then, as
    an empty mask at the start does, instead of training the child on nothing."""
    try:
        check_coverage(test_masks, cfg.mask.min_coverage, masker.latent)
    except EmptyMaskError as exc:
        raise EmptyMaskError(f"after joint epoch {epoch}: {exc}") from None
