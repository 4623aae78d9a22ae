"""The Beta-TCVAE objective used by both the parent and the child.

loss = recon + KL(q(z|x) || p(z)) + (beta - 1) * TC, i.e. MI + beta * TC + dim-KL: the KL is the
exact (analytic) Gaussian KL, and only the TC part needs the minibatch estimator. This keeps the
loss identical to a plain VAE at beta = 1, whatever the estimator's bias.
"""

from __future__ import annotations

from typing import Literal, Protocol

import torch
import torch.nn.functional as F

from compvae.gaussian import kl_to_standard_normal
from compvae.losses.tc import Estimator, kl_decomposition

Recon = Literal["bernoulli", "gaussian"]
RECONS: tuple[str, ...] = ("bernoulli", "gaussian")


class PosteriorOutput(Protocol):
    """What the loss reads from a model output (``compvae.models.VAEOutput`` satisfies it)."""

    @property
    def logits(self) -> torch.Tensor: ...
    @property
    def mu(self) -> torch.Tensor: ...
    @property
    def logvar(self) -> torch.Tensor: ...
    @property
    def z(self) -> torch.Tensor: ...


def gaussian_kl_per_latent(mu: torch.Tensor, logvar: torch.Tensor) -> torch.Tensor:
    """Analytic KL(N(mu, exp(logvar)) || N(0, 1)) per latent, averaged over the batch: (D,)."""
    return kl_to_standard_normal(mu, logvar).mean(dim=0)


def reconstruction_loss(target: torch.Tensor, logits: torch.Tensor, recon: Recon = "bernoulli",
                        weight: torch.Tensor | None = None) -> torch.Tensor:
    """Per-pixel negative log-likelihood, times ``weight``, summed per image, batch mean.

    - ``"bernoulli"``: binary cross-entropy with logits (targets in [0, 1]), as the original work.
    - ``"gaussian"``: squared error between ``sigmoid(logits)`` and the target, i.e. the negative
      log-likelihood of a Gaussian with fixed variance 1/2 and its constant dropped.

    ``weight`` broadcasts to ``target`` (a mask (B, 1, H, W) covers every channel); a zero weight
    removes a pixel from the loss entirely.
    """
    if target.shape != logits.shape:
        raise ValueError(f"target {tuple(target.shape)} and logits {tuple(logits.shape)} differ in shape")
    if recon == "bernoulli":
        per_pixel = F.binary_cross_entropy_with_logits(logits, target, reduction="none")
    elif recon == "gaussian":
        per_pixel = (torch.sigmoid(logits) - target).pow(2)
    else:
        raise ValueError(f"unknown reconstruction loss '{recon}'; choose one of {', '.join(RECONS)}")
    if weight is not None:
        per_pixel = per_pixel * weight.to(per_pixel.dtype)
    return per_pixel.flatten(1).sum(dim=1).mean()


def beta_tcvae_loss(target: torch.Tensor, out: PosteriorOutput, beta: float, dataset_size: int,
                    recon: Recon = "bernoulli", estimator: Estimator = "mss",
                    weight: torch.Tensor | None = None, kl_scale: torch.Tensor | None = None,
                    kl_weight: float = 1.0) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Beta-TCVAE loss and its breakdown for logging.

    Args:
        target: images the decoder should produce, (B, C, H, W) in [0, 1].
        out: the model output (logits, mu, logvar and the sampled z).
        beta: weight of the TC term (the loss adds ``(beta - 1) * TC`` to the full KL).
        dataset_size: N, the training set's size, used by the TC estimator.
        recon: ``"bernoulli"`` or ``"gaussian"`` (see :func:`reconstruction_loss`).
        estimator: ``"mss"`` or ``"mws"`` (see :mod:`compvae.losses.tc`).
        weight: per-pixel reconstruction weight broadcastable to ``target`` (e.g. a mask).
        kl_scale: (D,) factors on the per-latent analytic KL (conditioning scales latent k by
            1 - gamma_t).
        kl_weight: factor on the whole KL + TC part (a warm-up ramps it from 0 to 1).

    Returns:
        ``(loss, breakdown)``: ``loss`` is a differentiable 0-d tensor; ``breakdown`` holds
        detached float32 tensors ``loss``, ``recon``, ``kl`` (the scaled KL that entered the
        loss), ``tc``, ``mi``, ``dim_kl`` (0-d) and ``kl_per_latent`` ((D,), unscaled, so it
        measures the posterior whatever the conditioning).

    Everything is computed in float32 so that autocast (bf16/fp16) model outputs do not make the
    logsumexp-based estimates overflow.
    """
    logits, mu, logvar, z = (t.float() for t in (out.logits, out.mu, out.logvar, out.z))
    rec = reconstruction_loss(target.float(), logits, recon, weight)
    kl_per_latent = gaussian_kl_per_latent(mu, logvar)
    if kl_scale is None:
        kl = kl_per_latent.sum()
    else:
        if kl_scale.shape != kl_per_latent.shape:
            raise ValueError(
                f"kl_scale must have shape {tuple(kl_per_latent.shape)}, got {tuple(kl_scale.shape)}")
        kl = (kl_scale.to(kl_per_latent) * kl_per_latent).sum()
    parts = kl_decomposition(z, mu, logvar, dataset_size, estimator)
    loss = rec + kl_weight * (kl + (beta - 1.0) * parts.tc)
    breakdown = {
        "loss": loss.detach(),
        "recon": rec.detach(),
        "kl": kl.detach(),
        "tc": parts.tc.detach(),
        "mi": parts.mi.detach(),
        "dim_kl": parts.dim_kl.detach(),
        "kl_per_latent": kl_per_latent.detach(),
    }
    return loss, breakdown
