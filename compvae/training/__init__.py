"""Training loop (in-memory uint8 data, seeded, resumable, NaN-guarded) and device/seed helpers."""

from compvae.training.device import (
    PEAK_GPU_MEMORY,
    peak_memory,
    reset_peak_memory,
    resolve_device,
    seed_everything,
)
from compvae.training.trainer import CUDA_NAN_CHECK_EVERY, EpochCallback, LossFn, Trainer

__all__ = ["CUDA_NAN_CHECK_EVERY", "PEAK_GPU_MEMORY", "EpochCallback", "LossFn", "Trainer", "peak_memory",
           "reset_peak_memory", "resolve_device", "seed_everything"]
