"""Design check for a procedural dataset: what each factor is worth to a reconstruction.

The cost of not knowing a factor is the Bernoulli KL, summed over pixels, between the image and
its factor-marginal (the mean image over that factor's levels, every other factor fixed): the
nats a decoder loses if its code carries nothing about the factor. docs/benchmark.md explains
why the fine factors must be worth tens of nats at the child's resolution.
"""

from __future__ import annotations

import numpy as np

from compvae.data.base import GroundTruthData

_EPS = 1e-6


def bernoulli_kl(x: np.ndarray, p: np.ndarray) -> np.ndarray:
    """Per-pixel KL(Bern(x) || Bern(p)) in nats, for images x and probabilities p in [0, 1]."""
    x = np.clip(x, _EPS, 1 - _EPS)
    p = np.clip(p, _EPS, 1 - _EPS)
    return x * np.log(x / p) + (1 - x) * np.log((1 - x) / (1 - p))


def factor_costs(data: GroundTruthData, num_bases: int = 200, seed: int = 0) -> dict[str, float]:
    """Mean over ``num_bases`` random scenes of each factor's reconstruction cost (nats)."""
    rng = np.random.default_rng(seed)
    bases = data.sample_factors(num_bases, rng)
    out: dict[str, float] = {}
    for k, name in enumerate(data.factor_names):
        size = data.factor_sizes[k]
        grid = np.repeat(bases[:, None, :], size, axis=1)
        grid[:, :, k] = np.arange(size)[None, :]
        imgs = data.images(grid.reshape(-1, data.num_factors))
        imgs = imgs.reshape(num_bases, size, *imgs.shape[1:])
        marginal = imgs.mean(axis=1, keepdims=True)
        out[name] = float(bernoulli_kl(imgs, marginal).sum(axis=(2, 3, 4)).mean())
    return out


def cost_table(data: GroundTruthData, resolutions: tuple[int, ...], num_bases: int = 200,
               seed: int = 0) -> list[dict[str, object]]:
    """One row per factor: its group, level count and cost at each resolution."""
    groups = {n: g for g, names in data.factor_groups.items() for n in names}
    costs = {r: factor_costs(data.with_resolution(r), num_bases, seed) for r in resolutions}
    return [{"factor": name, "group": groups.get(name, ""), "levels": size,
             **{f"nats@{r}": costs[r][name] for r in resolutions}}
            for name, size in zip(data.factor_names, data.factor_sizes, strict=True)]
