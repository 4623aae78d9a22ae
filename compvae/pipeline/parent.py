"""The parent: from the trial's checkpoint, the shared store (by its key) or trained here."""

from __future__ import annotations

import json
from pathlib import Path

import torch

from compvae.config import TrialConfig
from compvae.io import atomic_torch_save, atomic_write_text
from compvae.losses import beta_tcvae_loss
from compvae.masks import (
    choose_latent,
)
from compvae.models import VAE, build_vae
from compvae.parent_store import ParentStore, parent_key, stored_metrics_path
from compvae.pipeline.data import TrialData
from compvae.pipeline.evaluation import evaluate_parent
from compvae.pipeline.state import (
    LATENT_FILE,
    PARENT_HISTORY,
    PARENT_METRICS,
    PARENT_TRAINER,
    PARENT_WEIGHTS,
)
from compvae.progress import Progress
from compvae.training import Trainer, seed_everything


def parent_loss(cfg: TrialConfig, model: VAE, dataset_size: int):
    def loss_fn(batch: dict[str, torch.Tensor], step: int):
        x = batch["image"]
        out = model(x)
        loss, parts = beta_tcvae_loss(x, out, cfg.parent.beta, dataset_size, recon=cfg.parent.recon,
                                      estimator=cfg.parent.tc_estimator)
        return loss, {k: v for k, v in parts.items() if k != "kl_per_latent"}

    return loss_fn


def train_parent(cfg: TrialConfig, data: TrialData, device: torch.device, work: Path | None,
                  prog: Progress) -> VAE:
    """Train the parent for ``parent.epochs``, resuming from ``work/parent_trainer.pt``."""
    seed_everything(cfg.train.seed)
    c = data.parent_data.channels
    parent = build_vae(cfg.parent, c, c).to(device)
    trainer = Trainer(parent, parent_loss(cfg, parent, len(data.train_factors)),
                      {"image": data.parent_images}, cfg.parent.batch_size, cfg.parent.lr,
                      cfg.train.seed, device, amp=cfg.train.amp)
    state = work / PARENT_TRAINER if work is not None else None
    if state is not None and state.exists():
        trainer.load(state)
        prog.write(f"parent resumed at epoch {trainer.epoch}")
    history_file = work / PARENT_HISTORY if work is not None else None
    history = json.loads(history_file.read_text()) if history_file is not None and history_file.exists() else []
    while trainer.epoch < cfg.parent.epochs:
        logs = trainer.train_epoch()
        if history_file is not None:  # the training curve, for the tracker (before the trainer)
            history = [h for h in history if h["epoch"] < trainer.epoch] + [{"epoch": trainer.epoch, **logs}]
            atomic_write_text(history_file, json.dumps(history))
        if state is not None:
            trainer.save(state)
        prog.epoch("parent", trainer.epoch, cfg.parent.epochs,
                   {k: logs[k] for k in ("loss", "recon", "kl", "tc") if k in logs})
    return parent


def obtain_parent(cfg: TrialConfig, data: TrialData, device: torch.device, ckpt: Path | None,
                   store: ParentStore | None, prog: Progress) -> tuple[VAE, dict[str, float], bool]:
    """The trained parent and its metrics: from this trial's checkpoint, the shared store, or
    trained here (in that order). Returns (parent, metrics, reused_from_store)."""
    c = data.parent_data.channels
    reused = False
    if ckpt is not None and (ckpt / PARENT_WEIGHTS).exists():
        parent = build_vae(cfg.parent, c, c).to(device)
        parent.load_state_dict(torch.load(ckpt / PARENT_WEIGHTS, map_location=device))
        meta = json.loads((ckpt / PARENT_METRICS).read_text())
        return parent.eval(), meta["metrics"], bool(meta["reused"])
    if store is not None:
        key = parent_key(cfg)

        def train_into(directory: Path) -> None:
            model = train_parent(cfg, data, device, directory, prog)
            torch.save(model.state_dict(), directory / PARENT_WEIGHTS)

        path, reused = store.get_or_train(key, train_into, log=prog.write)
        parent = build_vae(cfg.parent, c, c).to(device)
        parent.load_state_dict(torch.load(path / PARENT_WEIGHTS, map_location=device))
        parent.eval()
        cached = stored_metrics_path(cfg, path)
        if cached.exists():
            metrics = json.loads(cached.read_text())
        else:
            metrics = evaluate_parent(cfg, data, parent)
            atomic_write_text(cached, json.dumps(metrics))
    else:
        parent = train_parent(cfg, data, device, ckpt, prog).eval()
        metrics = evaluate_parent(cfg, data, parent)
    if ckpt is not None:
        atomic_write_text(ckpt / PARENT_METRICS, json.dumps({"metrics": metrics, "reused": reused}))
        atomic_torch_save(parent.state_dict(), ckpt / PARENT_WEIGHTS)
        (ckpt / PARENT_TRAINER).unlink(missing_ok=True)
    return parent, metrics, reused


def focus_latent(cfg: TrialConfig, parent: VAE, data: TrialData, ckpt: Path | None) -> int:
    if isinstance(cfg.mask.latent, int):
        return cfg.mask.latent
    if ckpt is not None and (ckpt / LATENT_FILE).exists():
        return int(json.loads((ckpt / LATENT_FILE).read_text())["latent"])
    n = min(2048, len(data.train_factors))
    images = data.parent_images[:n].float() / 255.0
    factors = None
    if data.parent_data.has_factors:
        # the latent of focus should control the target: where a dataset names the target's
        # factors (its "coarse" group), rank latents by those, not by background or distractor
        cols = (data.parent_data.group_indices("coarse") if "coarse" in data.parent_data.factor_groups
                else list(range(data.parent_data.num_factors)))
        factors = data.train_factors[:n][:, cols]
    latent = int(choose_latent(parent, images, factors=factors, by=cfg.mask.auto_by))
    if ckpt is not None:
        atomic_write_text(ckpt / LATENT_FILE, json.dumps({"latent": latent}))
    return latent
