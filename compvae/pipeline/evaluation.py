"""Evaluation of parent and child: reconstruction on held-out images, the light per-epoch metrics
and the final ones."""

from __future__ import annotations

import numpy as np
import torch

from compvae.child import (
    MASK_INPUT_MODES,
    child_input,
    image_channels_of,
)
from compvae.config import TrialConfig
from compvae.masks import (
    encode_means,
    eval_mode,
)
from compvae.metrics import evaluate, masked_recon_error, pixel_mse
from compvae.metrics.evaluate import light_settings
from compvae.metrics.informativeness import active_latents
from compvae.metrics.unsupervised import per_latent_kl
from compvae.models import VAE
from compvae.models.vae import VAEOutput
from compvae.pipeline.data import TrialData
from compvae.pipeline.masking import ENCODE_BATCH, Masker
from compvae.pipeline.state import CHILD_EVAL, PARENT_EVAL, stream


def child_codes_fn(cfg: TrialConfig, masker: Masker, child: VAE, device: torch.device):
    mode = cfg.child.masking_mode

    @torch.no_grad()
    def encode(images: np.ndarray, factors: np.ndarray | None = None) -> np.ndarray:
        codes = []
        with eval_mode(child):
            for i in range(0, len(images), ENCODE_BATCH):
                x = torch.from_numpy(np.ascontiguousarray(images[i : i + ENCODE_BATCH])).to(device)
                f = None if factors is None else factors[i : i + ENCODE_BATCH]
                m = masker(x, stochastic=False, factors=f) if mode in MASK_INPUT_MODES else None
                mu, _ = child.encode(child_input(x, m, mode))
                codes.append(mu.float().cpu().numpy())
        return np.concatenate(codes)

    encode.wants_factors = masker.oracle and mode in MASK_INPUT_MODES  # type: ignore[attr-defined]
    return encode


def parent_codes_fn(parent: VAE):
    def encode(images: np.ndarray) -> np.ndarray:
        return encode_means(parent, np.ascontiguousarray(images), ENCODE_BATCH)[0].cpu().numpy()

    return encode


def prefixed(prefix: str, values: dict[str, float]) -> dict[str, float]:
    return {f"{prefix}{k}": float(v) for k, v in values.items()}


def active_from(cfg: TrialConfig, out: VAEOutput) -> np.ndarray:
    """Latents carrying more than ``eval.active_kl`` nats on the held-out images (the probes' gate)."""
    kl = per_latent_kl(out.mu.float().cpu().numpy(), out.logvar.float().cpu().numpy())
    return active_latents(kl, cfg.eval.active_kl)


def evaluate_parent(cfg: TrialConfig, data: TrialData, parent: VAE) -> dict[str, float]:
    rng = stream(cfg.train.seed, PARENT_EVAL)
    with torch.no_grad(), eval_mode(parent):
        pout = parent(data.test_parent)
    recon = torch.sigmoid(pout.logits)
    out = prefixed("parent/", evaluate(data.parent_data, parent_codes_fn(parent), rng,
                                        metrics=cfg.eval.metrics, num_train=cfg.eval.num_train,
                                        num_test=cfg.eval.num_test, dci_estimator=cfg.eval.dci_estimator,
                                        active=active_from(cfg, pout)))
    out["parent/recon_error"] = float(pixel_mse(data.test_parent.cpu().numpy(), recon.cpu().numpy()).mean())
    return out


def evaluate_child(cfg: TrialConfig, data: TrialData, masker: Masker, child: VAE, active: np.ndarray,
                    full: bool, rng: np.random.Generator | None = None) -> dict[str, float]:
    """The final evaluation (``eval`` sizes and metrics) or the cheap per-epoch one that feeds
    ASHA (:func:`compvae.metrics.evaluate.light_settings`)."""
    device = next(child.parameters()).device
    encode = child_codes_fn(cfg, masker, child, device)
    if full:
        rng = stream(cfg.train.seed, CHILD_EVAL)
        return prefixed("child/", evaluate(data.child_data, encode, rng, metrics=cfg.eval.metrics,
                                            num_train=cfg.eval.num_train, num_test=cfg.eval.num_test,
                                            dci_estimator=cfg.eval.dci_estimator, active=active))
    assert rng is not None
    light = light_settings(cfg.eval.metrics, cfg.eval.num_train, cfg.eval.num_test, cfg.eval.light_points)
    return prefixed("child/", evaluate(data.child_data, encode, rng, active=active, **light))


@torch.no_grad()
def child_recon_metrics(cfg: TrialConfig, data: TrialData, test_masks: torch.Tensor,
                         test_cond: torch.Tensor | None, child: VAE) -> tuple[dict[str, float], np.ndarray]:
    """Child reconstruction error on held-out images (``test_masks``: their deterministic
    masks): overall, inside and outside the mask and inside the true fine-detail region; and
    which latents are active there."""
    x = data.test_child
    m = test_masks
    with eval_mode(child):
        out = child(child_input(x, m, cfg.child.masking_mode), cond=test_cond)
    recon = torch.sigmoid(image_channels_of(out.logits, x.shape[1]))
    x_np, recon_np, m_np = x.cpu().numpy(), recon.cpu().numpy(), m.cpu().numpy()
    split = masked_recon_error(x_np, recon_np, m_np)
    metrics = {"child/recon_error": float(pixel_mse(x_np, recon_np).mean()),
               "child/masked_recon_error": split["inside"],
               "child/outside_recon_error": split["outside"]}
    if data.test_details is not None:
        metrics["child/detail_recon_error"] = masked_recon_error(
            x_np, recon_np, data.test_details.cpu().numpy())["inside"]
    return metrics, active_from(cfg, out)
