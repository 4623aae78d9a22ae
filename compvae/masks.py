"""Masks from a parent VAE: where in the image does latent ``k`` have a visible effect?

The child VAE is trained (or fed) only on the region a parent latent controls, so the mask
has to be faithful to what the parent decodes. The recipe (``docs/architecture.md``, Masks;
``method.md``, Mask) per image ``x`` at the parent's resolution:

1. encode ``x`` and take the posterior mean ``mu`` (deterministic: the mask must not flicker
   with posterior noise);
2. decode ``mu - (d/2) e_k`` and ``mu + (d/2) e_k`` and take the per-pixel absolute
   difference of the two images, averaged over channels;
3. optionally blur it with a Gaussian (``blur_sigma``), which turns a thin edge response into
   a solid region and fills the zero-crossing that a pure translation leaves in the middle of
   an object;
4. threshold it: a hard {0, 1} mask, or a soft mask proportional to the blurred difference;
5. resize it to the child's resolution *without* eroding edges or deleting thin lines (the
   original research code used bilinear resize then truncation, which removes about 2 px of
   border and every 1-px line: that is the bug this module avoids).

Variants: ``delta_std > 0`` draws ``d`` per call as ``|N(delta, delta_std)|`` (the original's
``randomize_mask_step``); ``nuisance="randomized"`` re-renders latent ``k``'s perturbation in
other contexts (other latents resampled) and takes the union, so the mask covers what ``k``
controls across contexts rather than only in this one image.

Helpers: ``mask_coverage``/``empty_fraction``/``check_coverage`` detect masks that are empty
(a latent with no visible effect must stop the trial with a clear ``EmptyMaskError``, not
silently train a child on nothing), ``mask_iou`` compares masks with ground-truth
silhouettes, and ``choose_latent``/``latent_kl`` implement ``mask.latent: auto``.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Literal, Protocol, overload

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from compvae.errors import TrialFailed

__all__ = [
    "EmptyMaskError",
    "MaskSteps",
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
    "resize_mask",
]

MaskKind = Literal["hard", "soft"]
Nuisance = Literal["fixed", "randomized"]

#: Images are pushed through the parent in chunks of this many, so a whole training set
#: (thousands of images) can be masked in one call without holding every intermediate.
DEFAULT_CHUNK = 512


class ParentLike(Protocol):
    """What a parent must offer: the ``compvae.models.VAE`` contract (decoder gives logits)."""

    def encode(self, x: Tensor) -> tuple[Tensor, Tensor]: ...

    def decode(self, z: Tensor) -> Tensor: ...


class EmptyMaskError(TrialFailed):
    """The mask of the chosen latent (almost) never fires.

    Not a ``UserError``: like ``TrainingDiverged`` it is a property of the trial's knobs (the
    latent, delta, threshold, or a parent that collapsed), so a search records the trial as
    failed with this one-line message and carries on instead of training a child on nothing.
    """


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


# ---- choosing the latent ----------------------------------------------------------------------
def latent_kl(parent: nn.Module, images: Tensor | np.ndarray,
              chunk_size: int = DEFAULT_CHUNK) -> Tensor:
    """Batch-mean KL(q(z_j|x) || N(0, 1)) per latent, ``(D,)`` float32 on the CPU.

    The "active latent" rule of the method reads these: a collapsed latent has KL ~ 0.
    """
    mu, logvar = encode_means(parent, images, chunk_size)
    kl = 0.5 * (mu.pow(2) + logvar.exp() - logvar - 1.0)
    return kl.mean(dim=0).cpu()


def _discretize(codes: np.ndarray, bins: int = 20) -> np.ndarray:
    """Equal-width binning per code column, as disentanglement_lib's MIG does (``np.digitize``
    against the histogram's left edges)."""
    out = np.zeros(codes.shape, dtype=np.int64)
    for j in range(codes.shape[1]):
        edges = np.histogram(codes[:, j], bins)[1][:-1]
        out[:, j] = np.digitize(codes[:, j], edges)
    return out


def choose_latent(
    parent: nn.Module,
    images: Tensor | np.ndarray,
    factors: np.ndarray | None = None,
    by: Literal["kl", "mi"] = "mi",
    kl_per_latent: Tensor | np.ndarray | None = None,
    active_fraction: float = 1.0 / 3.0,
) -> int:
    """``mask.latent: auto``: the latent of focus for the mask.

    Active latents are those whose batch-mean KL exceeds ``active_fraction`` of the largest
    (the method's sketched rule: collapsed latents give empty masks). Among them:

    - ``by="kl"``: the one with the largest KL;
    - ``by="mi"`` with ``factors`` (int ``(N, K)``, aligned with ``images``): the one with the
      highest normalised mutual information I(z_j; v_k) / H(v_k) with any single factor
      (posterior means in 20 equal-width bins, as MIG does). Normalising compares the fraction
      of each factor explained, so a 16-level factor known in part does not beat a 2-level one
      known fully; constant factors (H = 0) are skipped. KL breaks ties. MI guards against a
      latent that carries KL but that the decoder ignores or that encodes no factor. Without
      factors (unlabelled data) it falls back to KL.

    ``kl_per_latent`` (e.g. the trainer's logged ``kl_per_latent``) skips recomputing KL.
    Raises ``EmptyMaskError`` if every latent has zero KL (a fully collapsed parent).
    """
    if by not in ("kl", "mi"):
        raise ValueError(f"by must be 'kl' or 'mi', got {by!r}")
    if kl_per_latent is None:
        kl = latent_kl(parent, images).double().numpy()
    else:
        kl = torch.as_tensor(kl_per_latent).detach().double().cpu().numpy().reshape(-1)
    top = float(np.max(kl)) if kl.size else 0.0
    if not math.isfinite(top) or top <= 0:
        raise EmptyMaskError(
            "no active latent: every parent latent has zero KL (posterior collapse); train the "
            "parent longer or lower parent.beta")
    active = np.flatnonzero(kl > active_fraction * top)
    if by == "kl" or factors is None:
        return int(active[np.argmax(kl[active])])

    from sklearn.metrics import mutual_info_score

    f = np.asarray(factors)
    if f.ndim == 1:
        f = f[:, None]
    mu, _ = encode_means(parent, images)
    codes = mu.cpu().double().numpy()
    if f.shape[0] != codes.shape[0]:
        raise ValueError(f"factors have {f.shape[0]} rows but there are {codes.shape[0]} images")
    binned = _discretize(codes[:, active])
    entropy = [mutual_info_score(f[:, i], f[:, i]) for i in range(f.shape[1])]  # H(v_i) = I(v_i; v_i)
    varying = [i for i in range(f.shape[1]) if entropy[i] > 0]
    mi = np.array([max((mutual_info_score(f[:, i], binned[:, a]) / entropy[i] for i in varying), default=0.0)
                   for a in range(len(active))])
    best = max(range(len(active)), key=lambda a: (round(float(mi[a]), 12), float(kl[active[a]])))
    return int(active[best])
