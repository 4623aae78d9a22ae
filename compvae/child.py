"""The child side of the pipeline: how a masking mode turns (images, masks) into the child's
input, reconstruction target and loss weight.

Keeping this in one place means training, evaluation and figures all feed the child the same
way, so a metric computed on the child measures the model that was trained.

Modes (``child.masking_mode``):
- ``none``: baseline; the child sees and reconstructs the image alone.
- ``input``: the mask is concatenated as an extra channel; the child reconstructs image and
  mask (as the original work did), unweighted.
- ``loss``: the child sees the image alone; the reconstruction term is weighted by the mask
  (``outside_weight`` outside it).
- ``both``: mask as input channel and mask-weighted loss on the image channels; the mask
  channel itself is reconstructed with weight 1.
"""

from __future__ import annotations

import torch

from compvae.config import ChildConfig

MASK_INPUT_MODES = ("input", "both")
MASK_LOSS_MODES = ("loss", "both")


def child_channels(image_channels: int, mode: str) -> int:
    """Channels in (and out) of the child for a masking mode."""
    return image_channels + (1 if mode in MASK_INPUT_MODES else 0)


def child_input(images: torch.Tensor, masks: torch.Tensor | None, mode: str) -> torch.Tensor:
    """What the child encodes: the image, plus the mask channel in input/both modes."""
    if mode in MASK_INPUT_MODES:
        if masks is None:
            raise ValueError(f"masking_mode '{mode}' needs masks")
        return torch.cat([images, masks.to(images.dtype)], dim=1)
    return images


def child_target_and_weight(
    images: torch.Tensor, masks: torch.Tensor | None, cfg: ChildConfig
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Reconstruction target and per-pixel loss weight (None = unweighted) for the child."""
    mode = cfg.masking_mode
    target = child_input(images, masks, mode)
    if mode not in MASK_LOSS_MODES:
        return target, None
    assert masks is not None
    image_weight = masks + cfg.outside_weight * (1.0 - masks)
    image_weight = image_weight.expand(-1, images.shape[1], -1, -1)
    if mode == "both":
        return target, torch.cat([image_weight, torch.ones_like(masks)], dim=1)
    return target, image_weight


def image_channels_of(output: torch.Tensor, image_channels: int) -> torch.Tensor:
    """The image part of a child output (drops the reconstructed mask channel)."""
    return output[:, :image_channels]


def conditioning_gamma(step: int, total_steps: int, start: float = 0.25, ramp: float = 0.75,
                       cap: float = 0.75) -> float:
    """gamma = clip((step / total_steps - start) / ramp, 0, cap): how strongly the parent's focus
    latent is pulled toward the child (experiment 3 of the original work). Fractions of the
    run, not step counts, so short runs get the ramp too; defaults = the original's 10k/30k of 40k."""
    frac = step / max(total_steps, 1)
    return float(min(max((frac - start) / ramp, 0.0), cap))


def kl_warmup_weight(step: int, total_steps: int, warmup: float) -> float:
    """Weight of the KL and TC terms at ``step``: a linear ramp from 0 over the first
    ``warmup`` fraction of the child's steps, then 1. A masked loss covers few pixels, so
    without a ramp its child can collapse before the decoder learns to read z."""
    if warmup <= 0:
        return 1.0
    return float(min(1.0, step / max(1.0, warmup * total_steps)))


def conditioning_kl(
    parent_mu: torch.Tensor, parent_logvar: torch.Tensor, child_mu: torch.Tensor, child_logvar: torch.Tensor,
    latent: int,
) -> torch.Tensor:
    """mean_j KL(q_parent(z_k) || q_child(z_j)) over the batch; the child gets no gradient."""
    pm, plv = parent_mu[:, latent : latent + 1], parent_logvar[:, latent : latent + 1]
    cm, clv = child_mu.detach(), child_logvar.detach()
    kl = 0.5 * (clv - plv + (plv.exp() + (pm - cm) ** 2) / clv.exp() - 1.0)
    return kl.mean()
