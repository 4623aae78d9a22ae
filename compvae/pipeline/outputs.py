"""A finished trial's outputs folder: weights, figures, timings, config and metrics.json last."""

from __future__ import annotations

import json
from pathlib import Path

import torch

from compvae.child import (
    child_input,
    image_channels_of,
)
from compvae.config import TrialConfig
from compvae.io import atomic_torch_save, atomic_write_text
from compvae.models import VAE
from compvae.pipeline.data import TrialData, to_parent_resolution
from compvae.pipeline.masking import Masker, ParentCode
from compvae.pipeline.state import (
    CHILD_WEIGHTS,
    CONFIG_FILE,
    FIGURES_DIR,
    METRICS_FILE,
    PARENT_WEIGHTS,
    TIMINGS_FILE,
)
from compvae.pipeline.timing import PREFIX as BREAKDOWN_PREFIX
from compvae.pipeline.timing import PhaseTimer
from compvae.progress import Progress

TIMING_MARK = "seconds"  # e.g. trial_seconds, child/eval_seconds_mig
RESOURCE_PREFIX = "resources/"  # e.g. resources/peak_gpu_mib: measured, not computed


def is_timing(key: str) -> bool:
    """Whether a metric key is a measurement of the run (time, memory) rather than a result."""
    return TIMING_MARK in key or key.startswith(RESOURCE_PREFIX)


def split_timings(metrics: dict[str, float]) -> tuple[dict[str, float], dict[str, float]]:
    """(deterministic metrics, wall-clock timings and resources): only the former must
    reproduce exactly."""
    timings = {k: v for k, v in metrics.items() if is_timing(k)}
    return {k: v for k, v in metrics.items() if k not in timings}, timings


def write_outputs(out: Path, cfg: TrialConfig, data: TrialData, parent: VAE, child: VAE,
                   masker: Masker, metrics: dict[str, float], prog: Progress,
                   timer: PhaseTimer | None = None) -> None:
    """Weights, figures, ``timings.json`` (with ``timer``'s breakdown), config, metrics.json last."""
    timer = timer if timer is not None else PhaseTimer()
    with timer.phase("outputs"):
        out.mkdir(parents=True, exist_ok=True)
        atomic_torch_save(parent.state_dict(), out / PARENT_WEIGHTS)
        atomic_torch_save(child.state_dict(), out / CHILD_WEIGHTS)
    if cfg.eval.figures:
        with timer.phase("figures"):
            write_figures(out / FIGURES_DIR, cfg, data, parent, child, masker)
    values, _ = split_timings(metrics)
    write_timings(out, metrics, timer)
    atomic_write_text(out / CONFIG_FILE, cfg.to_yaml())
    atomic_write_text(out / METRICS_FILE, json.dumps(values, indent=2, sort_keys=True))  # last: marks done
    prog.write(f"wrote  {out}")


def read_result(out: Path) -> dict[str, float]:
    """A finished trial's result as :func:`run_trial` returned it, from its outputs: metrics.json
    and the timing entries of ``timings.json`` (not its breakdown), so a restart that finds the
    outputs sends the same keys as the attempt that wrote them."""
    out = Path(out)
    timings = json.loads((out / TIMINGS_FILE).read_text()) if (out / TIMINGS_FILE).is_file() else {}
    return {**json.loads((out / METRICS_FILE).read_text()),
            **{k: v for k, v in timings.items() if not k.startswith(BREAKDOWN_PREFIX)}}


def write_timings(out: Path, metrics: dict[str, float], timer: PhaseTimer) -> None:
    """``timings.json``: the timing entries of ``metrics`` and ``timer``'s breakdown. Written
    after every child epoch too, so a trial a scheduler stops early leaves its breakdown."""
    out.mkdir(parents=True, exist_ok=True)
    timings = {**split_timings(metrics)[1], **timer.breakdown()}
    atomic_write_text(out / TIMINGS_FILE, json.dumps(timings, indent=2, sort_keys=True))


@torch.no_grad()
def write_mask_figure(fig_dir: Path, cfg: TrialConfig, data: TrialData, masker: Masker) -> Path:
    """The mask pipeline alone: what a trial that failed on an empty mask leaves to look at."""
    from compvae import figures  # Matplotlib: imported by the trials that draw (see write_figures)

    fig_dir.mkdir(parents=True, exist_ok=True)
    n = min(cfg.eval.num_figure_images, len(data.test_child))
    x_child = data.test_child[:n]
    steps = masker(x_child, stochastic=False, return_steps=True, factors=data.test_factors[:n])
    return Path(figures.mask_pipeline_figure(steps, to_parent_resolution(x_child, cfg.parent.resolution),
                                             fig_dir / "mask_pipeline.png", n=n, overlay_images=x_child))


@torch.no_grad()
def write_figures(fig_dir: Path, cfg: TrialConfig, data: TrialData, parent: VAE, child: VAE,
                  masker: Masker) -> list[Path]:
    """A finished trial's figures. Matplotlib is imported here, not with the trial code: most
    search trials are stopped early and draw nothing, so their worker never pays its import."""
    from compvae import figures

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
    cond = ParentCode(cfg, parent)(x_child)
    shown = child if cond is None else Conditioned(child, cond[:1])
    paths.append(figures.traversal_figure(shown, x_in[:1], fig_dir / "child_traversal.png"))
    recon = torch.sigmoid(child(x_in, cond=cond).logits)
    paths.append(figures.reconstruction_figure(
        x_child, image_channels_of(recon, x_child.shape[1]), fig_dir / "child_reconstructions.png", masks=m, n=n))
    precon = torch.sigmoid(parent(data.test_parent[:n]).logits)
    paths.append(figures.reconstruction_figure(data.test_parent[:n], precon,
                                               fig_dir / "parent_reconstructions.png", n=n))
    return [Path(p) for p in paths]


class Conditioned(torch.nn.Module):
    """A parent-code child with its decoder's condition fixed to one image's, for traversals."""

    def __init__(self, child: VAE, cond: torch.Tensor) -> None:
        super().__init__()
        self.child, self.cond = child, cond

    def encode(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.child.encode(x)

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        return self.child.decode(z, self.cond.expand(z.shape[0], -1))
