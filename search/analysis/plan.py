"""``launch --dry-run``: what a search would run (trials, distinct parents, resources, a rough time),
from the space alone, without Ray."""

from __future__ import annotations

import itertools
import math

from compvae.config import TrialConfig
from compvae.parent_store import changes_parent, parent_key
from search.analysis.progress import format_duration
from search.space import SearchSpace

# Rough CPU costs on one core, from the README's quick preset (a 30-epoch parent on 4096 images at
# 32 px: ~37 s): one training image through one VAE epoch at 32 px, and what a trial spends
# besides training (process start, evaluation, figures, logging). An order of magnitude only.
SECONDS_PER_IMAGE_EPOCH_32PX = 3.0e-4
TRIAL_OVERHEAD_S = 30.0
GRID_ENUMERATION_LIMIT = 20000


def _vae_seconds(images: int, resolution: int, epochs: int) -> float:
    return images * epochs * (resolution / 32) ** 2 * SECONDS_PER_IMAGE_EPOCH_32PX


def distinct_parents(space: SearchSpace) -> tuple[int, bool]:
    """(number of parents the search trains, exact?): exact for an outer level or a grid, else an
    upper bound (one per trial when a parent knob is sampled, else one)."""
    if space.outer is not None and space.search.reuse_parents:
        return len(space.outer_points()), True
    if not space.search.reuse_parents:
        return space.num_trials, True
    if space.search.sampler == "grid" and space.grid_size <= GRID_ENUMERATION_LIMIT:
        grid = space.grid_values()
        keys = {parent_key(space.trial_config(dict(zip(grid, values, strict=True))))
                for values in itertools.product(*grid.values())}
        return len(keys), True
    sampled = [p for p in space.params if changes_parent(p)]
    return (space.num_trials, False) if sampled else (1, True)


def plan_text(space: SearchSpace, name: str) -> str:
    """The plan ``launch --dry-run`` prints (the space is already validated)."""
    s = space.search
    base: TrialConfig = space.base_config()
    parents, exact = distinct_parents(space)
    n = space.num_trials
    parent_s = _vae_seconds(base.data.num_train, base.parent.resolution, base.parent.epochs)
    child_s = _vae_seconds(base.data.num_train, base.child.resolution, base.child.epochs)
    concurrent = max(1, min(s.max_concurrent, n))
    total = (parents * parent_s + n * (child_s + TRIAL_OVERHEAD_S)) / concurrent
    asha = "" if s.scheduler is None else " (ASHA may stop weak trials early: less)"
    lines = [
        f"search {name}: space '{space.name}', {n} trials ({s.sampler} sampler, seed {s.seed})",
        f"parents: {parents if exact else f'up to {parents}'} distinct"
        + ("" if s.reuse_parents else " (search.reuse_parents: false: one per trial)"),
        f"objective: {', '.join(f'{o.metric} ({o.mode})' for o in space.objective)}",
        f"searched: {', '.join(space.params)}",
        f"resources: {s.resources.cpus:g} CPU + {s.resources.gpus:g} GPU per trial, {concurrent} at a time "
        f"(needs {concurrent * s.resources.cpus:g} CPUs, {concurrent * s.resources.gpus:g} GPUs)",
        f"rough time: ~{format_duration(math.ceil(total))} on CPU{asha} "
        f"(from {base.data.num_train} images, parent {base.parent.epochs} x {base.parent.resolution}px, "
        f"child {base.child.epochs} x {base.child.resolution}px epochs; GPUs are faster)",
        "dry run: nothing was started or written",
    ]
    return "\n".join(lines)
