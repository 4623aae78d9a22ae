"""``mask.latent: auto``: the parent latent of focus for the mask."""

from __future__ import annotations

import math
from typing import Literal

import numpy as np
import torch
from torch import Tensor, nn

from compvae.errors import EmptyMaskError
from compvae.losses.beta_tcvae import gaussian_kl_per_latent
from compvae.masks.ops import DEFAULT_CHUNK, encode_means


def latent_kl(parent: nn.Module, images: Tensor | np.ndarray,
              chunk_size: int = DEFAULT_CHUNK) -> Tensor:
    """Batch-mean KL(q(z_j|x) || N(0, 1)) per latent, ``(D,)`` float32 on the CPU.

    The "active latent" rule of the method reads these: a collapsed latent has KL ~ 0.
    """
    mu, logvar = encode_means(parent, images, chunk_size)
    return gaussian_kl_per_latent(mu, logvar).cpu()


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

    from compvae.metrics._utils import discrete_mutual_info, histogram_discretize

    f = np.asarray(factors)
    if f.ndim == 1:
        f = f[:, None]
    mu, _ = encode_means(parent, images)
    codes = mu.cpu().double().numpy()
    if f.shape[0] != codes.shape[0]:
        raise ValueError(f"factors have {f.shape[0]} rows but there are {codes.shape[0]} images")
    binned = histogram_discretize(codes[:, active], 20)
    entropy = [mutual_info_score(f[:, i], f[:, i]) for i in range(f.shape[1])]  # H(v_i) = I(v_i; v_i)
    varying = [i for i in range(f.shape[1]) if entropy[i] > 0]
    info = discrete_mutual_info(binned, f)  # (active latents, factors)
    mi = np.array([max((info[a, i] / entropy[i] for i in varying), default=0.0) for a in range(len(active))])
    best = max(range(len(active)), key=lambda a: (round(float(mi[a]), 12), float(kl[active[a]])))
    return int(active[best])
