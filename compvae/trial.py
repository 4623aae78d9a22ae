"""One trial: data -> parent -> mask -> child -> metrics.

``run_trial`` is the single entry point used by both ``compvae train`` and every search trial,
so a config exported from a search retrains exactly as the search ran it.

Resumability: with a ``checkpoint_dir``, every finished stage leaves its state there (parent
weights and metrics, the chosen latent, the child trainer after each epoch). A trial started
again on the same directory continues where it stopped; ``report`` is called after the
epoch's state is on disk so a caller (Ray Tune) can snapshot the directory as a checkpoint.
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from compvae import figures
from compvae.child import (
    MASK_INPUT_MODES,
    child_channels,
    child_input,
    child_target_and_weight,
    conditioning_gamma,
    conditioning_kl,
    image_channels_of,
    kl_warmup_weight,
)
from compvae.config import TrialConfig
from compvae.data import GroundTruthData, dataset_options, get_dataset
from compvae.losses import beta_tcvae_loss
from compvae.masks import (
    EmptyMaskError,
    check_coverage,
    choose_latent,
    empty_fraction,
    encode_means,
    eval_mode,
    make_masks,
    mask_coverage,
    mask_iou,
    oracle_masks,
)
from compvae.metrics import evaluate, masked_recon_error, pixel_mse
from compvae.metrics.informativeness import active_latents
from compvae.metrics.unsupervised import per_latent_kl
from compvae.models import VAE, build_vae
from compvae.models.vae import VAEOutput
from compvae.parent_store import ParentStore, parent_key
from compvae.progress import Progress
from compvae.training import Trainer, resolve_device, seed_everything

ReportFn = Callable[[dict[str, float], int], None]

# Metrics of the per-epoch (light) evaluation, when the final one has them.
LIGHT_METRICS = ("mig", "informativeness")
RECON_EVAL_POINTS = 512
ENCODE_BATCH = 256


@dataclass
class TrialData:
    """Everything sampled once per trial from the dataset, on the training device."""

    parent_data: GroundTruthData
    child_data: GroundTruthData
    train_factors: np.ndarray
    parent_images: torch.Tensor  # uint8 (N, C, Rp, Rp)
    child_images: torch.Tensor  # uint8 (N, C, Rc, Rc)
    test_factors: np.ndarray
    test_parent: torch.Tensor  # float (n, C, Rp, Rp)
    test_child: torch.Tensor  # float (n, C, Rc, Rc)
    test_silhouettes: torch.Tensor | None  # float (n, 1, Rc, Rc) where the dataset has them
    test_details: torch.Tensor | None  # float (n, 1, Rc, Rc): where the fine factors change pixels


def run_trial(
    config: TrialConfig | dict[str, Any],
    report: ReportFn | None = None,
    checkpoint_dir: str | Path | None = None,
    out_dir: str | Path | None = None,
    parent_store: ParentStore | str | Path | None = None,
    progress: bool = False,
) -> dict[str, float]:
    """Train parent and child under ``config`` and return the final metrics.

    ``report(metrics, epoch)`` is called once per child epoch (1-based). ``parent_store``
    (a directory or :class:`ParentStore`) shares trained parents between trials.
    """
    cfg = config if isinstance(config, TrialConfig) else TrialConfig.from_dict(config)
    prog = Progress(progress)
    t_start = time.perf_counter()
    ckpt = Path(checkpoint_dir) if checkpoint_dir is not None else None
    if ckpt is not None:
        ckpt.mkdir(parents=True, exist_ok=True)
    device, store = _runtime(cfg, parent_store)

    data = _load_data(cfg, device, prog)

    # ---- parent ---------------------------------------------------------------------------
    parent, parent_metrics, reused = _obtain_parent(cfg, data, device, ckpt, store, prog)
    latent = _focus_latent(cfg, parent, data, ckpt)
    prog.write(f"mask   latent {latent}")

    # ---- masks + child -------------------------------------------------------------------
    masker = _Masker(cfg, parent, latent, data)
    pcode = _ParentCode(cfg, parent)
    child = _build_child(cfg, data.child_data.channels, device)
    trainer, mask_metrics = _child_trainer(cfg, data, parent, child, masker, device)
    if ckpt is not None and (ckpt / "child_trainer.pt").exists():
        trainer.load(ckpt / "child_trainer.pt")
        prog.write(f"child  resumed at epoch {trainer.epoch}")

    metrics: dict[str, float] = {}
    last = ckpt / "child_metrics.json" if ckpt is not None else None
    if last is not None and last.exists() and trainer.epoch > 0:
        metrics = json.loads(last.read_text())  # the metrics of the epoch the checkpoint holds
    base = {**parent_metrics, **mask_metrics, "parent/reused": float(reused), "mask/latent": float(latent)}
    while trainer.epoch < cfg.child.epochs:
        logs = trainer.train_epoch()
        epoch = trainer.epoch
        final = epoch == cfg.child.epochs
        metrics = {**base, **{f"child/train_{k}": v for k, v in logs.items()}}
        test_masks = masker(data.test_child, stochastic=False, factors=data.test_factors)
        if cfg.parent.mode == "joint":
            _check_joint_coverage(cfg, masker, test_masks, epoch)
        test_cond = pcode(data.test_child)
        recon, active = _child_recon_metrics(cfg, data, test_masks, test_cond, trainer.model_child)
        metrics.update(recon)
        if final:
            metrics.update(_evaluate_child(cfg, data, masker, trainer.model_child, active, full=True))
        else:
            # seeded per epoch, so a resumed trial reports exactly what an uninterrupted one would
            rng_light = np.random.default_rng([cfg.train.seed, 7, epoch])
            metrics.update(_evaluate_child(cfg, data, masker, trainer.model_child, active, full=False,
                                           rng=rng_light))
        metrics["epoch"] = float(epoch)
        if ckpt is not None:
            # metrics first: a crash between the two leaves the trainer one epoch behind, so
            # the epoch is simply redone; never a trainer ahead of its metrics
            history = _read_history(ckpt) + [metrics]
            _atomic_write(ckpt / HISTORY_FILE, json.dumps(history))
            _atomic_write(ckpt / "child_metrics.json", json.dumps(metrics))
            trainer.save(ckpt / "child_trainer.pt")
        prog.epoch("child", epoch, cfg.child.epochs,
                   {k.split("/")[-1]: v for k, v in metrics.items()
                    if k in ("child/train_loss", "child/recon_error", "child/masked_recon_error", "child/mig")})
        if report is not None:
            report(dict(metrics), epoch)

    metrics["trial_seconds"] = time.perf_counter() - t_start
    if out_dir is not None:
        _write_outputs(Path(out_dir), cfg, data, parent, trainer.model_child, masker, metrics, prog)
    return metrics


def prepare_parent(config: TrialConfig | dict[str, Any], parent_store: ParentStore | str | Path,
                   progress: bool = False) -> dict[str, Any]:
    """Train (or find) the parent ``config`` names in the store and evaluate it, without a child.

    Why: a search's outer level trains its distinct parents up front, in parallel, so no trial
    waits on another's parent and the inner search can be limited to the strongest ones. The
    parent and its metrics land exactly where a trial's :func:`run_trial` looks for them.
    Returns the store key, whether it was already there, its metrics and the seconds taken.
    """
    cfg = config if isinstance(config, TrialConfig) else TrialConfig.from_dict(config)
    t0 = time.perf_counter()
    device, store = _runtime(cfg, parent_store)
    assert store is not None
    key = parent_key(cfg)
    cached = _stored_metrics_path(cfg, store.path(key))
    if store.has(key) and cached.exists():  # a resumed outer stage: no data, no model needed
        return {"key": key, "reused": True, "metrics": json.loads(cached.read_text()),
                "seconds": time.perf_counter() - t0}
    prog = Progress(progress)
    data = _load_data(cfg, device, prog, with_child=False)
    _, metrics, reused = _obtain_parent(cfg, data, device, None, store, prog)
    return {"key": key, "reused": reused, "metrics": metrics, "seconds": time.perf_counter() - t0}


def _runtime(cfg: TrialConfig, parent_store: ParentStore | str | Path | None
             ) -> tuple[torch.device, ParentStore | None]:
    """Torch threads, the device and the parent store, set up alike for a trial and a parent."""
    if cfg.train.num_threads:
        torch.set_num_threads(cfg.train.num_threads)
    store = ParentStore(parent_store) if isinstance(parent_store, (str, Path)) else parent_store
    return resolve_device(cfg.train.device), store


HISTORY_FILE = "child_history.json"


def _read_history(ckpt: Path) -> list[dict[str, float]]:
    path = ckpt / HISTORY_FILE
    return json.loads(path.read_text()) if path.exists() else []


def epoch_history(checkpoint_dir: str | Path) -> list[dict[str, float]]:
    """Every finished child epoch's metrics held by a trial's checkpoint directory, in order
    (each has an ``epoch`` key). A search replays the ones its tracker may have missed."""
    return _read_history(Path(checkpoint_dir))


# ---- data ------------------------------------------------------------------------------------
def _load_data(cfg: TrialConfig, device: torch.device, prog: Progress, with_child: bool = True) -> TrialData:
    """Training and held-out images; ``with_child=False`` leaves the child's views at the
    parent's resolution (enough to train and evaluate a parent)."""
    parent_data = get_dataset(cfg.data.name, **dataset_options(cfg, cfg.parent.resolution))
    child_data = parent_data.with_resolution(cfg.child.resolution) if with_child else parent_data
    rng = np.random.default_rng([cfg.train.seed, 0])
    n = cfg.data.num_train
    if not parent_data.has_factors:
        n = min(n, len(parent_data))
        train_factors = rng.permutation(len(parent_data))[:n, None].astype(np.int64)
    else:
        train_factors = parent_data.sample_factors(n, rng)
    t0 = time.perf_counter()
    parent_images = _render_u8(parent_data, train_factors, device)
    child_images = (parent_images if child_data.resolution == parent_data.resolution
                    else _render_u8(child_data, train_factors, device))
    n_test = min(RECON_EVAL_POINTS, cfg.eval.num_test)
    test_rng = np.random.default_rng([cfg.train.seed, 1])
    if parent_data.has_factors:
        test_factors = parent_data.sample_factors(n_test, test_rng)
    else:
        test_factors = test_rng.integers(0, len(parent_data), size=(n_test, 1))
    test_parent = torch.from_numpy(parent_data.images(test_factors)).to(device)
    test_child = torch.from_numpy(child_data.images(test_factors)).to(device)
    sil = details = None
    if hasattr(child_data, "silhouettes"):
        sil = torch.from_numpy(child_data.silhouettes(test_factors)).to(device)
    if hasattr(child_data, "detail_regions"):
        details = torch.from_numpy(child_data.detail_regions(test_factors)).to(device)
    prog.write(f"data   {cfg.data.name}: {n} training images at {parent_data.resolution}/"
               f"{child_data.resolution} px rendered in {time.perf_counter() - t0:.1f}s")
    return TrialData(parent_data, child_data, train_factors, parent_images, child_images,
                     test_factors, test_parent, test_child, sil, details)


def _render_u8(data: GroundTruthData, factors: np.ndarray, device: torch.device,
               chunk: int = 4096) -> torch.Tensor:
    out = torch.empty((len(factors), data.channels, data.resolution, data.resolution), dtype=torch.uint8)
    for i in range(0, len(factors), chunk):
        imgs = torch.from_numpy(data.images(factors[i : i + chunk]))
        out[i : i + chunk] = (imgs * 255.0).round_().clamp_(0, 255).to(torch.uint8)
    return out.to(device)


def to_parent_resolution(images: torch.Tensor, resolution: int) -> torch.Tensor:
    """Area-downsample child-resolution images to the parent's (identity when equal).

    Masks are always computed from this view, in training and in evaluation alike, so the
    child sees the same mask for an image whichever way the image reached it.
    """
    if images.shape[-1] == resolution:
        return images
    return F.interpolate(images, size=(resolution, resolution), mode="area")


# ---- parent ----------------------------------------------------------------------------------
def _parent_loss(cfg: TrialConfig, model: VAE, dataset_size: int):
    def loss_fn(batch: dict[str, torch.Tensor], step: int):
        x = batch["image"]
        out = model(x)
        loss, parts = beta_tcvae_loss(x, out, cfg.parent.beta, dataset_size, recon=cfg.parent.recon,
                                      estimator=cfg.parent.tc_estimator)
        return loss, {k: v for k, v in parts.items() if k != "kl_per_latent"}

    return loss_fn


def _train_parent(cfg: TrialConfig, data: TrialData, device: torch.device, work: Path | None,
                  prog: Progress) -> VAE:
    """Train the parent for ``parent.epochs``, resuming from ``work/parent_trainer.pt``."""
    seed_everything(cfg.train.seed)
    c = data.parent_data.channels
    parent = build_vae(cfg.parent, c, c).to(device)
    trainer = Trainer(parent, _parent_loss(cfg, parent, len(data.train_factors)),
                      {"image": data.parent_images}, cfg.parent.batch_size, cfg.parent.lr,
                      cfg.train.seed, device, amp=cfg.train.amp)
    state = work / "parent_trainer.pt" if work is not None else None
    if state is not None and state.exists():
        trainer.load(state)
        prog.write(f"parent resumed at epoch {trainer.epoch}")
    while trainer.epoch < cfg.parent.epochs:
        logs = trainer.train_epoch()
        if state is not None:
            trainer.save(state)
        prog.epoch("parent", trainer.epoch, cfg.parent.epochs,
                   {k: logs[k] for k in ("loss", "recon", "kl", "tc") if k in logs})
    return parent


def _obtain_parent(cfg: TrialConfig, data: TrialData, device: torch.device, ckpt: Path | None,
                   store: ParentStore | None, prog: Progress) -> tuple[VAE, dict[str, float], bool]:
    """The trained parent and its metrics: from this trial's checkpoint, the shared store, or
    trained here (in that order). Returns (parent, metrics, reused_from_store)."""
    c = data.parent_data.channels
    reused = False
    if ckpt is not None and (ckpt / "parent.pt").exists():
        parent = build_vae(cfg.parent, c, c).to(device)
        parent.load_state_dict(torch.load(ckpt / "parent.pt", map_location=device))
        meta = json.loads((ckpt / "parent_metrics.json").read_text())
        return parent.eval(), meta["metrics"], bool(meta["reused"])
    if store is not None:
        key = parent_key(cfg)

        def train_into(directory: Path) -> None:
            model = _train_parent(cfg, data, device, directory, prog)
            torch.save(model.state_dict(), directory / "parent.pt")

        path, reused = store.get_or_train(key, train_into, log=prog.write)
        parent = build_vae(cfg.parent, c, c).to(device)
        parent.load_state_dict(torch.load(path / "parent.pt", map_location=device))
        parent.eval()
        cached = _stored_metrics_path(cfg, path)
        if cached.exists():
            metrics = json.loads(cached.read_text())
        else:
            metrics = _evaluate_parent(cfg, data, parent)
            _atomic_write(cached, json.dumps(metrics))
    else:
        parent = _train_parent(cfg, data, device, ckpt, prog).eval()
        metrics = _evaluate_parent(cfg, data, parent)
    if ckpt is not None:
        _atomic_write(ckpt / "parent_metrics.json", json.dumps({"metrics": metrics, "reused": reused}))
        _atomic_torch_save(parent.state_dict(), ckpt / "parent.pt")
        (ckpt / "parent_trainer.pt").unlink(missing_ok=True)
    return parent, metrics, reused


def _stored_metrics_path(cfg: TrialConfig, parent_dir: Path) -> Path:
    """Where a stored parent's metrics are cached: they depend on the eval settings too, so
    one file per eval section."""
    eval_key = hashlib.sha256(cfg.eval.model_dump_json().encode()).hexdigest()[:12]
    return parent_dir / f"metrics-{eval_key}.json"


def _focus_latent(cfg: TrialConfig, parent: VAE, data: TrialData, ckpt: Path | None) -> int:
    if isinstance(cfg.mask.latent, int):
        return cfg.mask.latent
    if ckpt is not None and (ckpt / "latent.json").exists():
        return int(json.loads((ckpt / "latent.json").read_text())["latent"])
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
        _atomic_write(ckpt / "latent.json", json.dumps({"latent": latent}))
    return latent


# ---- masks -----------------------------------------------------------------------------------
class _Masker:
    """Masks for child-resolution images from the (current) parent, with the trial's settings;
    ``mask.source: oracle`` takes the dataset's true silhouettes of the images' ``factors``."""

    def __init__(self, cfg: TrialConfig, parent: VAE, latent: int, data: TrialData) -> None:
        self.cfg, self.parent, self.latent = cfg, parent, latent
        self.parent_data = data.parent_data
        self.oracle = cfg.mask.source == "oracle"
        self.generator = torch.Generator(device="cpu").manual_seed(cfg.train.seed + 12345)

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


class _ParentCode:
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


def _mask_quality(cfg: TrialConfig, data: TrialData, masker: _Masker) -> dict[str, float]:
    """Coverage (and IoU with the true silhouettes, where known) on the held-out images."""
    masks = masker(data.test_child, stochastic=False, factors=data.test_factors)
    out = {"mask/test_coverage": float(mask_coverage(masks).mean())}
    if data.test_silhouettes is not None:
        out["mask/iou"] = float(mask_iou(masks, data.test_silhouettes).mean())
    return out


# ---- child -----------------------------------------------------------------------------------
def _build_child(cfg: TrialConfig, image_channels: int, device: torch.device) -> VAE:
    seed_everything(cfg.train.seed + 1)
    ch = child_channels(image_channels, cfg.child.masking_mode)
    cond = cfg.parent.latent_dim if cfg.child.parent_code == "decoder" else 0
    return build_vae(cfg.child, ch, ch, cond_dim=cond).to(device)


class _ChildTrainer(Trainer):
    """A Trainer that knows which of its modules is the child (joint mode trains both) and,
    given ``redraw_masks``, replaces its frozen masks before every epoch after the first."""

    model_child: VAE
    redraw_masks: Callable[[], torch.Tensor] | None = None

    def train_epoch(self) -> dict[str, float]:
        if self.redraw_masks is not None and self.epoch > 0:
            self.data["mask"] = self.redraw_masks().to(self.device)
        return super().train_epoch()


def _frozen_masks_u8(cfg: TrialConfig, data: TrialData, masker: _Masker) -> torch.Tensor:
    """uint8 masks of the training set, one delta draw per child.batch_size chunk (as the first
    epoch's), converted chunk by chunk so no float copy of the whole set is held."""
    b, imgs, f = cfg.child.batch_size, data.child_images, data.train_factors
    return torch.cat([(masker(imgs[i : i + b].float() / 255.0, factors=f[i : i + b]) * 255.0)
                      .round_().to(torch.uint8) for i in range(0, len(imgs), b)])


def _child_trainer(cfg: TrialConfig, data: TrialData, parent: VAE, child: VAE, masker: _Masker,
                   device: torch.device) -> tuple[_ChildTrainer, dict[str, float]]:
    n = len(data.train_factors)
    mode = cfg.child.masking_mode
    mask_metrics: dict[str, float] = {}
    # the masks' draws (delta jitter, randomized nuisance) resume with the child's checkpoint
    mask_rng = {"masks": masker.generator}
    pcode = _ParentCode(cfg, parent)
    steps_total = cfg.child.epochs * (n // cfg.child.batch_size)  # Trainer drops partial batches

    def warmup(step: int) -> float:
        return kl_warmup_weight(step, steps_total, cfg.child.kl_warmup)

    if cfg.parent.mode == "frozen":
        masks = masker.batched(data.child_images.float() / 255.0, cfg.child.batch_size,
                               factors=data.train_factors)
        coverage = check_coverage(masks, cfg.mask.min_coverage, masker.latent)
        mask_metrics["mask/coverage"] = float(coverage.mean())
        mask_metrics["mask/empty_fraction"] = empty_fraction(masks, cfg.mask.min_coverage)
        mask_metrics.update(_mask_quality(cfg, data, masker))
        tensors = {"image": data.child_images, "mask": (masks * 255.0).round_().to(torch.uint8)}
        del masks
        if pcode.enabled:  # the parent is frozen: its codes of the training set, once
            b = ENCODE_BATCH
            tensors["parent_code"] = torch.cat([pcode(data.child_images[i : i + b].float() / 255.0)
                                                for i in range(0, n, b)])

        def loss_fn(batch: dict[str, torch.Tensor], step: int):
            x, m = batch["image"], batch["mask"]
            target, weight = child_target_and_weight(x, m, cfg.child)
            out = child(child_input(x, m, mode), cond=batch.get("parent_code"))
            loss, parts = beta_tcvae_loss(target, out, cfg.child.beta, n, recon=cfg.child.recon,
                                          estimator=cfg.child.tc_estimator, weight=weight,
                                          kl_weight=warmup(step))
            return loss, {k: v for k, v in parts.items() if k != "kl_per_latent"}

        trainer = _ChildTrainer(child, loss_fn, tensors, cfg.child.batch_size, cfg.child.lr,
                                cfg.train.seed + 1, device, amp=cfg.train.amp, generators=mask_rng)
        if cfg.mask.delta_std > 0:
            # a fresh d every epoch, from the checkpointed mask generator (a resume continues it);
            # without jitter the masks never change, so they stay computed once
            trainer.redraw_masks = lambda: _frozen_masks_u8(cfg, data, masker)
    else:
        # Joint: the parent keeps training (at its own parent.lr); masks follow the current
        # parent every step.
        probe = masker(data.test_child, stochastic=False)
        check_coverage(probe, cfg.mask.min_coverage, masker.latent)  # again after every epoch (run_trial)
        mask_metrics.update(_mask_quality(cfg, data, masker))
        both = torch.nn.ModuleDict({"parent": parent, "child": child})
        latent = masker.latent
        c = cfg.child
        total_steps = steps_total

        def loss_fn(batch: dict[str, torch.Tensor], step: int):
            x, xp = batch["image"], batch["parent_image"]
            parent.train()
            pout = parent(xp)
            kl_scale = None
            gamma = (conditioning_gamma(step, total_steps, c.conditioning_start, c.conditioning_ramp,
                                        c.conditioning_max) if c.conditioning else 0.0)
            if gamma > 0:
                kl_scale = torch.ones(cfg.parent.latent_dim, device=xp.device)
                kl_scale[latent] = 1.0 - gamma
            ploss, pparts = beta_tcvae_loss(xp, pout, cfg.parent.beta, n, recon=cfg.parent.recon,
                                            estimator=cfg.parent.tc_estimator, kl_scale=kl_scale)
            m = masker(x)  # no_grad inside make_masks: the child's mask is a target, not a path
            target, weight = child_target_and_weight(x, m, cfg.child)
            pcond = pout.mu.detach() if pcode.enabled else None
            cout = child(child_input(x, m, mode), cond=pcond)
            closs, cparts = beta_tcvae_loss(target, cout, cfg.child.beta, n, recon=cfg.child.recon,
                                            estimator=cfg.child.tc_estimator, weight=weight,
                                            kl_weight=warmup(step))
            loss = ploss + closs
            logs = {k: v for k, v in cparts.items() if k != "kl_per_latent"}
            logs.update({f"parent_{k}": v for k, v in pparts.items() if k != "kl_per_latent"})
            if gamma > 0:
                cond = conditioning_kl(pout.mu, pout.logvar, cout.mu, cout.logvar, latent)
                loss = loss + gamma * cond
                logs["conditioning_kl"] = cond.detach()
            logs["mask_coverage"] = m.mean()
            return loss, logs

        trainer = _ChildTrainer(both, loss_fn, {"image": data.child_images, "parent_image": data.parent_images},
                                cfg.child.batch_size, cfg.child.lr, cfg.train.seed + 1, device,
                                amp=cfg.train.amp, generators=mask_rng,
                                param_groups=[(parent, cfg.parent.lr), (child, cfg.child.lr)])
    trainer.model_child = child
    return trainer, mask_metrics


def _child_codes_fn(cfg: TrialConfig, masker: _Masker, child: VAE, device: torch.device):
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


def _parent_codes_fn(parent: VAE):
    def encode(images: np.ndarray) -> np.ndarray:
        return encode_means(parent, np.ascontiguousarray(images), ENCODE_BATCH)[0].cpu().numpy()

    return encode


def _prefixed(prefix: str, values: dict[str, float]) -> dict[str, float]:
    return {f"{prefix}{k}": float(v) for k, v in values.items()}


def _active(cfg: TrialConfig, out: VAEOutput) -> np.ndarray:
    """Latents carrying more than ``eval.active_kl`` nats on the held-out images (the probes' gate)."""
    kl = per_latent_kl(out.mu.float().cpu().numpy(), out.logvar.float().cpu().numpy())
    return active_latents(kl, cfg.eval.active_kl)


def _evaluate_parent(cfg: TrialConfig, data: TrialData, parent: VAE) -> dict[str, float]:
    rng = np.random.default_rng([cfg.train.seed, 2])
    with torch.no_grad(), eval_mode(parent):
        pout = parent(data.test_parent)
    recon = torch.sigmoid(pout.logits)
    out = _prefixed("parent/", evaluate(data.parent_data, _parent_codes_fn(parent), rng,
                                        metrics=cfg.eval.metrics, num_train=cfg.eval.num_train,
                                        num_test=cfg.eval.num_test, dci_estimator=cfg.eval.dci_estimator,
                                        active=_active(cfg, pout)))
    out["parent/recon_error"] = float(pixel_mse(data.test_parent.cpu().numpy(), recon.cpu().numpy()).mean())
    return out


def _evaluate_child(cfg: TrialConfig, data: TrialData, masker: _Masker, child: VAE, active: np.ndarray,
                    full: bool, rng: np.random.Generator | None = None) -> dict[str, float]:
    """The final evaluation (``eval`` sizes and metrics) or the cheap per-epoch one that feeds
    ASHA (``eval.light_points``, MIG and informativeness only)."""
    device = next(child.parameters()).device
    encode = _child_codes_fn(cfg, masker, child, device)
    if full:
        rng = np.random.default_rng([cfg.train.seed, 3])
        return _prefixed("child/", evaluate(data.child_data, encode, rng, metrics=cfg.eval.metrics,
                                            num_train=cfg.eval.num_train, num_test=cfg.eval.num_test,
                                            dci_estimator=cfg.eval.dci_estimator, active=active))
    assert rng is not None
    n = min(cfg.eval.light_points, cfg.eval.num_train)
    light = [m for m in cfg.eval.metrics if m in LIGHT_METRICS] or ["unsupervised"]
    return _prefixed("child/", evaluate(data.child_data, encode, rng, metrics=light, num_train=n,
                                        num_test=min(max(n // 2, 10), cfg.eval.num_test),
                                        dci_estimator="fast", active=active))


def _check_joint_coverage(cfg: TrialConfig, masker: _Masker, test_masks: torch.Tensor, epoch: int) -> None:
    """A jointly trained parent can stop using its focus latent mid-run: stop the trial then, as
    an empty mask at the start does, instead of training the child on nothing."""
    try:
        check_coverage(test_masks, cfg.mask.min_coverage, masker.latent)
    except EmptyMaskError as exc:
        raise EmptyMaskError(f"after joint epoch {epoch}: {exc}") from None


@torch.no_grad()
def _child_recon_metrics(cfg: TrialConfig, data: TrialData, test_masks: torch.Tensor,
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
    return metrics, _active(cfg, out)


# ---- outputs -----------------------------------------------------------------------------------
TIMING_MARK = "seconds"  # e.g. trial_seconds, child/eval_seconds_mig


def split_timings(metrics: dict[str, float]) -> tuple[dict[str, float], dict[str, float]]:
    """(deterministic metrics, wall-clock timings): only the former must reproduce exactly."""
    timings = {k: v for k, v in metrics.items() if TIMING_MARK in k}
    return {k: v for k, v in metrics.items() if k not in timings}, timings


def _write_outputs(out: Path, cfg: TrialConfig, data: TrialData, parent: VAE, child: VAE,
                   masker: _Masker, metrics: dict[str, float], prog: Progress) -> None:
    out.mkdir(parents=True, exist_ok=True)
    _atomic_torch_save(parent.state_dict(), out / "parent.pt")
    _atomic_torch_save(child.state_dict(), out / "child.pt")
    if cfg.eval.figures:
        write_figures(out / "figures", cfg, data, parent, child, masker)
    values, timings = split_timings(metrics)
    _atomic_write(out / "timings.json", json.dumps(timings, indent=2, sort_keys=True))
    _atomic_write(out / "config.yaml", cfg.to_yaml())
    _atomic_write(out / "metrics.json", json.dumps(values, indent=2, sort_keys=True))  # last: marks done
    prog.write(f"wrote  {out}")


@torch.no_grad()
def write_figures(fig_dir: Path, cfg: TrialConfig, data: TrialData, parent: VAE, child: VAE,
                  masker: _Masker) -> list[Path]:
    fig_dir.mkdir(parents=True, exist_ok=True)
    n = min(cfg.eval.num_figure_images, len(data.test_child))
    x_child = data.test_child[:n]
    steps = masker(x_child, stochastic=False, return_steps=True, factors=data.test_factors[:n])
    paths = [figures.mask_pipeline_figure(steps, to_parent_resolution(x_child, cfg.parent.resolution),
                                          fig_dir / "mask_pipeline.png", n=n, overlay_images=x_child)]
    paths.append(figures.traversal_figure(parent, data.test_parent[:1], fig_dir / "parent_traversal.png"))
    child.eval()
    m = steps.mask
    x_in = child_input(x_child, m, cfg.child.masking_mode)
    cond = _ParentCode(cfg, parent)(x_child)
    shown = child if cond is None else _Conditioned(child, cond[:1])
    paths.append(figures.traversal_figure(shown, x_in[:1], fig_dir / "child_traversal.png"))
    recon = torch.sigmoid(child(x_in, cond=cond).logits)
    paths.append(figures.reconstruction_figure(
        x_child, image_channels_of(recon, x_child.shape[1]), fig_dir / "child_reconstructions.png", masks=m, n=n))
    precon = torch.sigmoid(parent(data.test_parent[:n]).logits)
    paths.append(figures.reconstruction_figure(data.test_parent[:n], precon,
                                               fig_dir / "parent_reconstructions.png", n=n))
    return [Path(p) for p in paths]


class _Conditioned(torch.nn.Module):
    """A parent-code child with its decoder's condition fixed to one image's, for traversals."""

    def __init__(self, child: VAE, cond: torch.Tensor) -> None:
        super().__init__()
        self.child, self.cond = child, cond

    def encode(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.child.encode(x)

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        return self.child.decode(z, self.cond.expand(z.shape[0], -1))


def _atomic_write(path: Path, text: str) -> None:
    tmp = path.with_name(f"{path.name}.{os.getpid()}.tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def _atomic_torch_save(obj: Any, path: Path) -> None:
    tmp = path.with_name(f"{path.name}.{os.getpid()}.tmp")
    torch.save(obj, tmp)
    os.replace(tmp, path)
