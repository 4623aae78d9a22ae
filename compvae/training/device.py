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
