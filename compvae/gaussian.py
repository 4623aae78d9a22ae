"""The Gaussian KL every part shares: losses (torch), latent choice and the metrics (numpy)."""

from __future__ import annotations

from typing import Any

import numpy as np


def kl_to_standard_normal(mu: Any, logvar: Any) -> Any:
    """Elementwise KL(N(mu, exp(logvar)) || N(0, 1)) in nats, for numpy arrays or torch tensors."""
    var = logvar.exp() if hasattr(logvar, "exp") else np.exp(logvar)
    return 0.5 * (mu**2 + var - logvar - 1.0)
