"""Training loop (in-memory uint8 data, seeded, resumable, NaN-guarded) and device/seed helpers."""

from compvae.training.device import resolve_device, seed_everything
from compvae.training.trainer import CUDA_NAN_CHECK_EVERY, EpochCallback, LossFn, Trainer

__all__ = ["CUDA_NAN_CHECK_EVERY", "EpochCallback", "LossFn", "Trainer", "resolve_device", "seed_everything"]
