"""Mask operations: encode a batch in eval mode, blur, threshold, resize without eroding edges."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Literal, Protocol

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

MaskKind = Literal["hard", "soft"]
Nuisance = Literal["fixed", "randomized"]

#: Images are pushed through the parent in chunks of this many, so a whole training set
#: (thousands of images) can be masked in one call without holding every intermediate.
DEFAULT_CHUNK = 512


class ParentLike(Protocol):
    """What a parent must offer: the ``compvae.models.VAE`` contract (decoder gives logits)."""

    def encode(self, x: Tensor) -> tuple[Tensor, Tensor]: ...

    def decode(self, z: Tensor) -> Tensor: ...


# ---- small module helpers (shared with figures) ---------------------------------------------
def module_device(module: nn.Module, fallback: torch.device | str = "cpu") -> torch.device:
    """The device of a module's first parameter or buffer (``fallback`` if it has neither).

    Parents are plain ``nn.Module`` s, which have no ``.device``; computing where they live
    lets callers hand in CPU images for a CUDA parent.
    """
    for p in module.parameters():
        return p.device
    for b in module.buffers():
        return b.device
    return torch.device(fallback)


@contextmanager
def eval_mode(module: nn.Module) -> Iterator[nn.Module]:
    """Put ``module`` in eval mode for the block and restore its previous mode afterwards.

    Masks are computed in the middle of joint training; leaving the parent in eval mode would
    silently change its training (dropout/batch norm), so the mode must be restored.
    """
    was_training = module.training
    module.eval()
    try:
        yield module
    finally:
        module.train(was_training)


def _full_precision(device: torch.device) -> torch.autocast:
    """Disable autocast for the parent's passes.

    A mask thresholds differences of a few thousandths between two decodes (the original
    default threshold is 0.005); half-precision rounding of the logits is of that order, so
    masks computed inside an AMP training step would flicker. The parent's passes are small
    next to training, so they always run in float32.
    """
    return torch.autocast(device_type=device.type, enabled=False)


def _as_float_images(images: Tensor | np.ndarray) -> Tensor:
    """Float32 ``(B, C, R, R)``; uint8 input (how the trainer stores data) is scaled to [0, 1]."""
    x = torch.as_tensor(images)
    if x.ndim != 4:
        raise ValueError(f"images must have shape (B, C, R, R), got {tuple(x.shape)}")
    if not x.is_floating_point():
        return x.float() / 255.0
    return x.float()


def encode_means(parent: nn.Module, images: Tensor | np.ndarray,
                 chunk_size: int = DEFAULT_CHUNK) -> tuple[Tensor, Tensor]:
    """Posterior ``(mu, logvar)`` for all images, on the parent's device, batched and grad-free."""
    x = _as_float_images(images)
    device = module_device(parent, x.device)
    mus, logvars = [], []
    with torch.no_grad(), eval_mode(parent), _full_precision(device):
        for start in range(0, x.shape[0], chunk_size):
            mu, logvar = parent.encode(x[start:start + chunk_size].to(device))
            mus.append(mu.float())
            logvars.append(logvar.float())
    return torch.cat(mus), torch.cat(logvars)


# ---- blur and resize ------------------------------------------------------------------------
def gaussian_kernel1d(sigma: float) -> Tensor:
    """Normalised 1-D Gaussian taps, radius ``int(3 sigma + 0.5)`` (at least 1).

    The radius rule is scipy's ``gaussian_filter(..., truncate=3.0)``, so the separable blur is
    directly comparable with it; 3 sigma keeps > 99.7 % of the mass and the kernel is
    renormalised so a constant image stays constant.
    """
    if sigma <= 0:
        raise ValueError(f"sigma must be > 0, got {sigma}")
    radius = max(1, int(3.0 * sigma + 0.5))
    x = torch.arange(-radius, radius + 1, dtype=torch.float64)
    k = torch.exp(-0.5 * (x / sigma) ** 2)
    return (k / k.sum()).float()


def gaussian_blur(x: Tensor, sigma: float) -> Tensor:
    """Separable Gaussian blur of ``(B, C, H, W)`` (each channel on its own); ``sigma=0`` = identity.

    Two 1-D convolutions cost O(r) per pixel instead of O(r^2) for the equivalent 2-D kernel,
    which matters for a 256-px child mask with a large sigma. Replicate padding (not reflect)
    works for any radius, even one larger than the image, and keeps an object that touches the
    border from being darkened there.
    """
    if sigma <= 0:
        return x
    b, c, h, w = x.shape
    k = gaussian_kernel1d(sigma).to(device=x.device, dtype=x.dtype)
    r = (k.numel() - 1) // 2
    y = x.reshape(b * c, 1, h, w)
    y = F.conv2d(F.pad(y, (r, r, 0, 0), mode="replicate"), k.view(1, 1, 1, -1))
    y = F.conv2d(F.pad(y, (0, 0, r, r), mode="replicate"), k.view(1, 1, -1, 1))
    return y.reshape(b, c, h, w)


def resize_mask(masks: Tensor, out_resolution: int, kind: MaskKind = "hard") -> Tensor:
    """Resize ``(B, 1, R, R)`` masks to ``out_resolution`` without eroding them.

    - Upsampling a hard mask: nearest neighbour. For integer factors every source pixel
      becomes an exact ``f x f`` block, so area fractions, edges and 1-px lines are preserved
      exactly (bilinear-then-truncate would turn a 1-px line into 0.75s and then into 0s).
    - Upsampling a soft mask: bilinear, with no truncation; values stay in [0, 1] (convex
      combinations) and a 1-px line keeps weight 0.75 over two pixels.
    - Downsampling (either kind): "any overlap", i.e. adaptive max pooling: an output pixel is
      as on as the most-on input pixel it covers, so thin structures survive. (The child is
      never smaller than the parent, so this only serves comparisons such as ``mask_iou``.)
    """
    if masks.ndim != 4:
        raise ValueError(f"masks must have shape (B, C, R, R), got {tuple(masks.shape)}")
    h, w = masks.shape[-2:]
    if (h, w) == (out_resolution, out_resolution):
        return masks
    if out_resolution >= h and out_resolution >= w:
        if kind == "hard":
            return F.interpolate(masks, size=(out_resolution, out_resolution), mode="nearest-exact")
        up = F.interpolate(masks, size=(out_resolution, out_resolution), mode="bilinear",
                           align_corners=False)
        return up.clamp_(0.0, 1.0)
    return F.adaptive_max_pool2d(masks, (out_resolution, out_resolution))


def _threshold(blurred: Tensor, threshold: float, kind: MaskKind) -> Tensor:
    """Hard: ``blurred > threshold`` as {0, 1}. Soft: proportional mask, see ``make_masks``."""
    if kind == "hard":
        return (blurred > threshold).float()
    peak = blurred.flatten(1).amax(dim=1).clamp_min(1e-12).view(-1, 1, 1, 1)
    return torch.where(blurred > threshold, blurred / peak, torch.zeros_like(blurred))


# ---- the mask --------------------------------------------------------------------------------
