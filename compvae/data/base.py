"""The one ground-truth dataset interface used by every dataset, the trainer and every metric.

A dataset is a finite grid of discrete factors (``factor_sizes``); ``images(factors)`` returns
the observation for each factor row. Datasets without ground-truth factors (image folders,
HDF5 of images) expose a single ``index`` factor and ``has_factors = False`` so the same code
paths work and supervised metrics know to skip them.
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod

import numpy as np


class GroundTruthData(ABC):
    """Factors -> images, at a chosen resolution.

    Subclasses set ``name``, ``factor_names``, ``factor_sizes``, ``channels``, ``resolution``
    and, where meaningful, ``factor_groups`` (e.g. ``{"coarse": [...], "fine": [...]}``).
    """

    name: str
    factor_names: list[str]
    factor_sizes: list[int]
    channels: int
    resolution: int
    has_factors: bool = True
    factor_groups: dict[str, list[str]] = {}

    # ---- required -----------------------------------------------------------------------
    @abstractmethod
    def images(self, factors: np.ndarray) -> np.ndarray:
        """float32 array (n, channels, resolution, resolution) in [0, 1] for int factors (n, K)."""

    @abstractmethod
    def with_resolution(self, resolution: int) -> GroundTruthData:
        """The same dataset viewed at another resolution (the child may be larger than the parent)."""

    # ---- shared behaviour -----------------------------------------------------------------
    def __len__(self) -> int:
        return int(math.prod(self.factor_sizes))

    @property
    def num_factors(self) -> int:
        return len(self.factor_sizes)

    def sample_factors(self, n: int, rng: np.random.Generator) -> np.ndarray:
        """Uniform independent draws of every factor: int64 array (n, K)."""
        cols = [rng.integers(0, size, size=n) for size in self.factor_sizes]
        return np.stack(cols, axis=1).astype(np.int64) if cols else np.zeros((n, 0), np.int64)

    def sample(self, n: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
        factors = self.sample_factors(n, rng)
        return factors, self.images(factors)

    def group_indices(self, group: str) -> list[int]:
        """Column indices of the factors in ``group`` (``factor_groups[group]``)."""
        names = self.factor_groups[group]
        return [self.factor_names.index(n) for n in names]

    def check_factors(self, factors: np.ndarray) -> np.ndarray:
        f = np.asarray(factors)
        if f.ndim != 2 or f.shape[1] != self.num_factors:
            raise ValueError(f"{self.name}: factors must have shape (n, {self.num_factors}), got {f.shape}")
        if f.size and ((f < 0).any() or (f >= np.asarray(self.factor_sizes)).any()):
            raise ValueError(f"{self.name}: factor index out of range for sizes {self.factor_sizes}")
        return f.astype(np.int64, copy=False)

    def __repr__(self) -> str:
        return (f"{type(self).__name__}(name={self.name!r}, resolution={self.resolution}, "
                f"channels={self.channels}, factors={dict(zip(self.factor_names, self.factor_sizes, strict=True))})")
