"""The mask recipe: where in the image latent ``k`` of a parent has a visible effect.

See docs/design.md (Masks) for the steps and why each is there.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal, overload

import numpy as np
import torch
from torch import Tensor, nn

from compvae.masks.ops import (
    DEFAULT_CHUNK,
    MaskKind,
    Nuisance,
    _as_float_images,
    _full_precision,
    _threshold,
    encode_means,
    eval_mode,
    gaussian_blur,
    resize_mask,
)


@dataclass
class MaskSteps:
    """Every intermediate of ``make_masks``, for the mask-pipeline figure and for debugging.

    Parent-resolution tensors are ``(B, C, Rp, Rp)`` (decodes, as probabilities) or
    ``(B, 1, Rp, Rp)`` (difference, blurred); ``mask`` is the final ``(B, 1, R_out, R_out)``.
    With randomized nuisance, the decodes are those of the image's own context and
    ``difference``/``blurred`` are the per-pixel maxima over all contexts (what the union of
    masks was thresholded from). The trailing fields record the settings for figure titles.
    """

    decoded_minus: Tensor
    decoded_plus: Tensor
    difference: Tensor
    blurred: Tensor
    mask: Tensor
    delta: float
    latent: int = -1
    threshold: float = float("nan")
    blur_sigma: float = 0.0
    kind: str = "hard"
    nuisance: str = "fixed"



@overload
def make_masks(parent: nn.Module, images: Tensor | np.ndarray, latent: int, delta: float,
               threshold: float, blur_sigma: float = ..., *, kind: MaskKind = ...,
               nuisance: Nuisance = ..., nuisance_draws: int = ..., delta_std: float = ...,
               out_resolution: int | None = ..., generator: torch.Generator | None = ...,
               return_steps: Literal[False] = ..., chunk_size: int = ...) -> Tensor: ...


@overload
def make_masks(parent: nn.Module, images: Tensor | np.ndarray, latent: int, delta: float,
               threshold: float, blur_sigma: float = ..., *, kind: MaskKind = ...,
               nuisance: Nuisance = ..., nuisance_draws: int = ..., delta_std: float = ...,
               out_resolution: int | None = ..., generator: torch.Generator | None = ...,
               return_steps: Literal[True], chunk_size: int = ...) -> MaskSteps: ...


def make_masks(
    parent: nn.Module,
    images: Tensor | np.ndarray,
    latent: int,
    delta: float,
    threshold: float,
    blur_sigma: float = 0.0,
    *,
    kind: MaskKind = "hard",
    nuisance: Nuisance = "fixed",
    nuisance_draws: int = 4,
    delta_std: float = 0.0,
    out_resolution: int | None = None,
    generator: torch.Generator | None = None,
    return_steps: bool = False,
    chunk_size: int = DEFAULT_CHUNK,
) -> Tensor | MaskSteps:
    """Mask of where parent latent ``latent`` changes the decoded image, per image.

    Args:
        parent: module with ``encode(x) -> (mu, logvar)`` and ``decode(z) -> logits``. Run in
            eval mode under ``no_grad`` on its own device; its previous mode is restored.
        images: ``(B, C, Rp, Rp)`` in [0, 1] at the parent's resolution (uint8 is scaled).
        latent: index ``k`` of the latent of focus.
        delta: total perturbation ``d``; decodes ``mu -/+ (d/2) e_k``.
        threshold: on the (blurred) channel-mean absolute difference of probabilities.
        blur_sigma: Gaussian blur in parent pixels; 0 disables it.
        kind: ``"hard"`` gives ``blurred > threshold`` in {0, 1}. ``"soft"`` gives a mask
            *proportional* to the blurred difference: ``blurred / max_image(blurred)`` where
            ``blurred > threshold`` and 0 elsewhere. Proportional (rather than a ramp from the
            threshold) is the README's "proportional gaussian filter": the strongest response
            in each image gets weight 1 whatever the latent's overall scale, and the threshold
            only cuts off the noise floor. It is monotone in the difference within an image.
        nuisance: ``"fixed"``: other latents at the image's own means (the original method).
            ``"randomized"``: additionally, ``nuisance_draws`` times, the other latents are
            replaced by another image's posterior mean (a random permutation of the batch's
            rows, i.e. a draw from the aggregate posterior) while latent ``k`` is perturbed
            around this image's own mean; the masks of all contexts, the image's own included,
            are combined by max (union). Why the aggregate posterior rather than the prior: a
            Beta-TCVAE's aggregate posterior does not fill N(0, I) (holes, shrunk or inactive
            latents), and decoding prior samples there renders implausible images whose
            differences would mark pixels the latent never affects on real data; permuted
            rows are always codes of real images. Including the own context means the
            randomized mask always contains the fixed one. With a batch of one image there is
            nothing to permute, so the prior ``N(0, I)`` is used for that case.
        nuisance_draws: number of resampled contexts for ``"randomized"``.
        delta_std: if > 0, ``d`` is drawn once per call as ``|N(delta, delta_std)|`` from
            ``generator`` (so a seeded generator reproduces it).
        out_resolution: the child's resolution (default: the parent's); see ``resize_mask``
            for why resizing neither erodes edges nor deletes thin lines.
        generator: ``torch.Generator`` (CPU) for ``delta_std`` and nuisance draws.
        return_steps: return a ``MaskSteps`` with every intermediate instead of the mask.
        chunk_size: images per parent call (memory bound only; results do not depend on it).

    Returns:
        float32 ``(B, 1, R_out, R_out)`` in [0, 1] on ``images``' device, or ``MaskSteps``.
    """
    if kind not in ("hard", "soft"):
        raise ValueError(f"kind must be 'hard' or 'soft', got {kind!r}")
    if nuisance not in ("fixed", "randomized"):
        raise ValueError(f"nuisance must be 'fixed' or 'randomized', got {nuisance!r}")
    if delta <= 0 or delta_std < 0 or blur_sigma < 0 or nuisance_draws < 1 or chunk_size < 1:
        raise ValueError("need delta > 0, delta_std >= 0, blur_sigma >= 0, nuisance_draws >= 1, chunk_size >= 1")
    x = _as_float_images(images)
    out_device = x.device
    batch, _, res_h, res_w = x.shape
    if res_h != res_w:
        raise ValueError(f"images must be square, got {res_h}x{res_w}")
    out_res = res_h if out_resolution is None else int(out_resolution)

    d = float(delta)
    if delta_std > 0:
        eps = torch.randn((), generator=generator).item()
        d = abs(delta + delta_std * eps)

    mu_all, _ = encode_means(parent, x, chunk_size)
    dim = mu_all.shape[1]
    if not 0 <= latent < dim:
        raise ValueError(f"latent {latent} out of range for a parent with {dim} latents")
    device = mu_all.device

    # Nuisance contexts: a list of (B, D) codes whose column `latent` is overwritten below.
    contexts: list[Tensor] = [mu_all]
    if nuisance == "randomized":
        for _ in range(nuisance_draws):
            if batch > 1:
                perm = torch.randperm(batch, generator=generator).to(device)
                contexts.append(mu_all[perm])
            else:
                contexts.append(torch.randn(batch, dim, generator=generator).to(device))

    step = torch.zeros(dim, device=device)
    step[latent] = d / 2.0
    masks_out, diffs_out, blurred_out, minus_out, plus_out = [], [], [], [], []
    with torch.no_grad(), eval_mode(parent), _full_precision(device):
        for start in range(0, batch, chunk_size):
            sl = slice(start, start + chunk_size)
            own_k = mu_all[sl, latent]
            mask_c: Tensor | None = None
            diff_c: Tensor | None = None
            blur_c: Tensor | None = None
            for ci, ctx in enumerate(contexts):
                z = ctx[sl].clone()
                z[:, latent] = own_k
                n = z.shape[0]
                probs = torch.sigmoid(parent.decode(torch.cat([z - step, z + step])).float())
                minus, plus = probs[:n], probs[n:]
                diff = (plus - minus).abs().mean(dim=1, keepdim=True)
                blurred = gaussian_blur(diff, blur_sigma)
                mask = _threshold(blurred, threshold, kind)
                if ci == 0:
                    mask_c, diff_c, blur_c = mask, diff, blurred
                    if return_steps:
                        minus_out.append(minus.to(out_device))
                        plus_out.append(plus.to(out_device))
                else:
                    assert mask_c is not None and diff_c is not None and blur_c is not None
                    mask_c = torch.maximum(mask_c, mask)
                    diff_c = torch.maximum(diff_c, diff)
                    blur_c = torch.maximum(blur_c, blurred)
            assert mask_c is not None and diff_c is not None and blur_c is not None
            masks_out.append(resize_mask(mask_c, out_res, kind).clamp_(0.0, 1.0).to(out_device))
            if return_steps:
                diffs_out.append(diff_c.to(out_device))
                blurred_out.append(blur_c.to(out_device))

    mask_all = torch.cat(masks_out).float()
    if not return_steps:
        return mask_all
    return MaskSteps(
        decoded_minus=torch.cat(minus_out), decoded_plus=torch.cat(plus_out),
        difference=torch.cat(diffs_out), blurred=torch.cat(blurred_out), mask=mask_all,
        delta=d, latent=int(latent), threshold=float(threshold), blur_sigma=float(blur_sigma),
        kind=kind, nuisance=nuisance)


# ---- coverage and emptiness -------------------------------------------------------------------
def oracle_masks(silhouettes: Tensor, images: Tensor, threshold: float, blur_sigma: float = 0.0, *,
                 kind: MaskKind = "hard", out_resolution: int | None = None,
                 return_steps: bool = False) -> Tensor | MaskSteps:
    """``mask.source: oracle``: true silhouettes (B, 1, Rp, Rp) at the parent's resolution,
    blurred and resized as a parent's map would be: the upper bound on what a mask can give the
    child. A silhouette's edge is its 0.5 level, so a hard oracle thresholds there (``threshold``
    is for parent difference maps); a soft one keeps the blurred silhouette. ``images`` fill
    the figure's decode panels."""
    sil = silhouettes.float()
    blurred = gaussian_blur(sil, blur_sigma)
    mask = (blurred >= 0.5).float() if kind == "hard" else blurred
    out = resize_mask(mask, out_resolution or sil.shape[-1], kind)
    if not return_steps:
        return out
    return MaskSteps(images.float(), images.float(), sil, blurred, out, delta=0.0, threshold=threshold,
                     blur_sigma=blur_sigma, kind=kind, nuisance="oracle")


