"""A trial's checkpoint folder (its file names) and its named random streams.

Every stream is seeded from ``train.seed`` and a fixed id, so a resumed trial draws exactly
what an uninterrupted one would; the ids are the values the code has always used.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

# ---- the checkpoint folder -------------------------------------------------------------------
PARENT_WEIGHTS = "parent.pt"
PARENT_METRICS = "parent_metrics.json"
PARENT_TRAINER = "parent_trainer.pt"
PARENT_HISTORY = "parent_history.json"  # per-epoch training logs, beside the trainer (also in the store)
LATENT_FILE = "latent.json"
CHILD_TRAINER = "child_trainer.pt"
CHILD_METRICS = "child_metrics.json"
HISTORY_FILE = "child_history.json"

# ---- the outputs folder (metrics.json last: it marks a finished trial) -------------------------
CHILD_WEIGHTS = "child.pt"
TIMINGS_FILE = "timings.json"
CONFIG_FILE = "config.yaml"
METRICS_FILE = "metrics.json"
FIGURES_DIR = "figures"

# ---- random streams: numpy generators ``[seed, id, *more]`` ----------------------------------
TRAIN_SAMPLE = 0  # the training set's factors
TEST_SAMPLE = 1  # the held-out images' factors
PARENT_EVAL = 2  # the parent's final evaluation
CHILD_EVAL = 3  # the child's final evaluation
LIGHT_EVAL = 7  # the child's per-epoch evaluation, with the epoch as a third entry

# torch seeds, offsets from train.seed: the parent uses train.seed itself
CHILD_OFFSET = 1  # the child's weights and its trainer's batch order
MASK_OFFSET = 12345  # the masks' draws (delta jitter, randomized nuisance)


def stream(seed: int, stream_id: int, *more: int) -> np.random.Generator:
    """The numpy generator of one named stream of a trial."""
    return np.random.default_rng([seed, stream_id, *more])


def child_seed(seed: int) -> int:
    return seed + CHILD_OFFSET


def mask_seed(seed: int) -> int:
    return seed + MASK_OFFSET


def read_history(ckpt: Path) -> list[dict[str, float]]:
    path = ckpt / HISTORY_FILE
    return json.loads(path.read_text()) if path.exists() else []


def epoch_history(checkpoint_dir: str | Path) -> list[dict[str, float]]:
    """Every finished child epoch's metrics held by a trial's checkpoint directory, in order
    (each has an ``epoch`` key). A search replays the ones its tracker may have missed."""
    return read_history(Path(checkpoint_dir))
