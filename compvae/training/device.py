"""Device choice and seeding: the two things every entry point does before building a model."""

from __future__ import annotations

import random

import numpy as np
import torch

from compvae.errors import UserError


def resolve_device(name: str | torch.device) -> torch.device:
    """``"auto"`` -> CUDA when available, else CPU; ``"cpu"``; ``"cuda"`` / ``"cuda:N"``.

    Asking for CUDA on a machine without it is a user error (one line, fixable in the config)
    rather than a deep PyTorch traceback at the first ``.to()``.
    """
    if isinstance(name, torch.device):
        name = str(name)
    key = name.strip().lower()
    if key == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if key == "cpu":
        return torch.device("cpu")
    if key == "cuda" or key.startswith("cuda:"):
        if not torch.cuda.is_available():
            raise UserError(
                f"device '{name}' was requested but CUDA is not available on this machine; "
                "set train.device to 'cpu' or 'auto'")
        device = torch.device(key)
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise UserError(
                f"device '{name}' does not exist: this machine has {torch.cuda.device_count()} CUDA "
                "device(s); use 'cuda' or 'auto'")
        return device
    raise UserError(f"unknown device '{name}'; use 'auto', 'cpu' or 'cuda'")


def seed_everything(seed: int) -> None:
    """Seed Python's ``random``, NumPy's global RNG and torch (CPU and every CUDA device).

    Call it before building a model so that initial weights and the reparameterisation noise
    (torch's global RNG) are reproducible; the Trainer checkpoints these states for resume.
    """
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)
    torch.cuda.manual_seed_all(seed)


#: The metric of a trial's peak GPU memory (CUDA only), in MiB.
PEAK_GPU_MEMORY = "resources/peak_gpu_mib"


def reset_peak_memory(device: torch.device) -> None:
    """Start counting the peak GPU memory of ``device`` afresh (nothing on CPU)."""
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)


def peak_memory(device: torch.device) -> dict[str, float]:
    """``{PEAK_GPU_MEMORY: MiB}``: the most memory torch's allocator held on ``device`` since
    :func:`reset_peak_memory`; empty on CPU, where there is no GPU memory to report."""
    if device.type != "cuda":
        return {}
    return {PEAK_GPU_MEMORY: torch.cuda.max_memory_allocated(device) / 2**20}
