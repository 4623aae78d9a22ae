"""The child and its training: the frozen and the joint objective, and the trainer that runs them."""

from __future__ import annotations

from collections.abc import Callable

import torch

from compvae.child import (
    child_channels,
    child_input,
    child_target_and_weight,
    conditioning_gamma,
    conditioning_kl,
    kl_warmup_weight,
)
from compvae.config import TrialConfig
from compvae.losses import beta_tcvae_loss
from compvae.masks import (
    check_coverage,
    empty_fraction,
)
from compvae.models import VAE, build_vae
from compvae.pipeline.data import TrialData
from compvae.pipeline.masking import ENCODE_BATCH, Masker, ParentCode, mask_quality
from compvae.pipeline.state import child_seed
from compvae.training import Trainer, seed_everything


def build_child(cfg: TrialConfig, image_channels: int, device: torch.device) -> VAE:
    seed_everything(child_seed(cfg.train.seed))
    ch = child_channels(image_channels, cfg.child.masking_mode)
    cond = cfg.parent.latent_dim if cfg.child.parent_code == "decoder" else 0
    return build_vae(cfg.child, ch, ch, cond_dim=cond).to(device)


class ChildTrainer(Trainer):
    """A Trainer that knows which of its modules is the child (joint mode trains both) and,
    given ``redraw_masks``, replaces its frozen masks before every epoch after the first."""

    model_child: VAE
    redraw_masks: Callable[[], torch.Tensor] | None = None

    def train_epoch(self) -> dict[str, float]:
        if self.redraw_masks is not None and self.epoch > 0:
            self.data["mask"] = self.redraw_masks().to(self.device)
        return super().train_epoch()


def frozen_masks_u8(cfg: TrialConfig, data: TrialData, masker: Masker) -> torch.Tensor:
    """uint8 masks of the training set, one delta draw per child.batch_size chunk (as the first
    epoch's), converted chunk by chunk so no float copy of the whole set is held."""
    b, imgs, f = cfg.child.batch_size, data.child_images, data.train_factors
    return torch.cat([(masker(imgs[i : i + b].float() / 255.0, factors=f[i : i + b]) * 255.0)
                      .round_().to(torch.uint8) for i in range(0, len(imgs), b)])


Batch = dict[str, torch.Tensor]
Parts = dict[str, torch.Tensor]


def _logged(parts: Parts) -> Parts:
    return {k: v for k, v in parts.items() if k != "kl_per_latent"}


class FrozenObjective:
    """The child's Beta-TCVAE loss on masks computed once from a frozen parent (batch ``mask``),
    and the parent's codes where the child's decoder is conditioned on them (``parent_code``)."""

    def __init__(self, cfg: TrialConfig, child: VAE, dataset_size: int, steps_total: int) -> None:
        self.cfg, self.child, self.n, self.steps_total = cfg, child, dataset_size, steps_total

    def __call__(self, batch: Batch, step: int) -> tuple[torch.Tensor, Parts]:
        c = self.cfg.child
        x, m = batch["image"], batch["mask"]
        target, weight = child_target_and_weight(x, m, c)
        out = self.child(child_input(x, m, c.masking_mode), cond=batch.get("parent_code"))
        loss, parts = beta_tcvae_loss(target, out, c.beta, self.n, recon=c.recon, estimator=c.tc_estimator,
                                      weight=weight, kl_weight=kl_warmup_weight(step, self.steps_total, c.kl_warmup))
        return loss, _logged(parts)


class JointObjective:
    """Parent and child trained together: the parent's own loss (its focus latent's KL relaxed by
    the conditioning term once it is on) plus the child's, on masks from the current parent."""

    def __init__(self, cfg: TrialConfig, parent: VAE, child: VAE, masker: Masker, use_parent_code: bool,
                 dataset_size: int, steps_total: int) -> None:
        self.cfg, self.parent, self.child, self.masker = cfg, parent, child, masker
        self.use_parent_code, self.n, self.steps_total = use_parent_code, dataset_size, steps_total

    def __call__(self, batch: Batch, step: int) -> tuple[torch.Tensor, Parts]:
        cfg, c, latent = self.cfg, self.cfg.child, self.masker.latent
        x, xp = batch["image"], batch["parent_image"]
        self.parent.train()
        pout = self.parent(xp)
        kl_scale = None
        gamma = (conditioning_gamma(step, self.steps_total, c.conditioning_start, c.conditioning_ramp,
                                    c.conditioning_max) if c.conditioning else 0.0)
        if gamma > 0:
            kl_scale = torch.ones(cfg.parent.latent_dim, device=xp.device)
            kl_scale[latent] = 1.0 - gamma
        ploss, pparts = beta_tcvae_loss(xp, pout, cfg.parent.beta, self.n, recon=cfg.parent.recon,
                                        estimator=cfg.parent.tc_estimator, kl_scale=kl_scale)
        m = self.masker(x)  # no_grad inside make_masks: the child's mask is a target, not a path
        target, weight = child_target_and_weight(x, m, c)
        pcond = pout.mu.detach() if self.use_parent_code else None
        cout = self.child(child_input(x, m, c.masking_mode), cond=pcond)
        closs, cparts = beta_tcvae_loss(target, cout, c.beta, self.n, recon=c.recon, estimator=c.tc_estimator,
                                        weight=weight, kl_weight=kl_warmup_weight(step, self.steps_total, c.kl_warmup))
        loss = ploss + closs
        logs = _logged(cparts)
        logs.update({f"parent_{k}": v for k, v in _logged(pparts).items()})
        if gamma > 0:
            cond = conditioning_kl(pout.mu, pout.logvar, cout.mu, cout.logvar, latent)
            loss = loss + gamma * cond
            logs["conditioning_kl"] = cond.detach()
        logs["mask_coverage"] = m.mean()
        return loss, logs


def child_trainer(cfg: TrialConfig, data: TrialData, parent: VAE, child: VAE, masker: Masker,
                  device: torch.device) -> tuple[ChildTrainer, dict[str, float]]:
    """The child's trainer under ``parent.mode`` (frozen or joint) and the masks' metrics."""
    n = len(data.train_factors)
    mask_metrics: dict[str, float] = {}
    # the masks' draws (delta jitter, randomized nuisance) resume with the child's checkpoint
    mask_rng = {"masks": masker.generator}
    pcode = ParentCode(cfg, parent)
    steps_total = cfg.child.epochs * (n // cfg.child.batch_size)  # Trainer drops partial batches
    if cfg.parent.mode == "frozen":
        masks = masker.batched(data.child_images.float() / 255.0, cfg.child.batch_size,
                               factors=data.train_factors)
        coverage = check_coverage(masks, cfg.mask.min_coverage, masker.latent)
        mask_metrics["mask/coverage"] = float(coverage.mean())
        mask_metrics["mask/empty_fraction"] = empty_fraction(masks, cfg.mask.min_coverage)
        mask_metrics.update(mask_quality(cfg, data, masker))
        tensors = {"image": data.child_images, "mask": (masks * 255.0).round_().to(torch.uint8)}
        del masks
        if pcode.enabled:  # the parent is frozen: its codes of the training set, once
            b = ENCODE_BATCH
            tensors["parent_code"] = torch.cat([pcode(data.child_images[i : i + b].float() / 255.0)
                                                for i in range(0, n, b)])
        trainer = ChildTrainer(child, FrozenObjective(cfg, child, n, steps_total), tensors, cfg.child.batch_size,
                               cfg.child.lr, child_seed(cfg.train.seed), device, amp=cfg.train.amp,
                               generators=mask_rng)
        if cfg.mask.delta_std > 0:
            # a fresh d every epoch, from the checkpointed mask generator (a resume continues it);
            # without jitter the masks never change, so they stay computed once
            trainer.redraw_masks = lambda: frozen_masks_u8(cfg, data, masker)
    else:
        # Joint: the parent keeps training (at its own parent.lr); masks follow the current
        # parent every step.
        probe = masker(data.test_child, stochastic=False)
        check_coverage(probe, cfg.mask.min_coverage, masker.latent)  # again after every epoch (run_trial)
        mask_metrics.update(mask_quality(cfg, data, masker))
        both = torch.nn.ModuleDict({"parent": parent, "child": child})
        objective = JointObjective(cfg, parent, child, masker, pcode.enabled, n, steps_total)
        trainer = ChildTrainer(both, objective, {"image": data.child_images, "parent_image": data.parent_images},
                               cfg.child.batch_size, cfg.child.lr, child_seed(cfg.train.seed), device,
                               amp=cfg.train.amp, generators=mask_rng,
                               param_groups=[(parent, cfg.parent.lr), (child, cfg.child.lr)])
    trainer.model_child = child
    return trainer, mask_metrics
