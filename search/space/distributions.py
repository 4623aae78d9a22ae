"""Optuna distributions of a space (the conversion the samplers and the report share)."""

from __future__ import annotations

from optuna.distributions import (
    BaseDistribution,
    CategoricalDistribution,
    FloatDistribution,
    IntDistribution,
)

from search.space.schema import SearchSpace


def distributions(space: SearchSpace) -> dict[str, BaseDistribution]:
    """Optuna distributions keyed by dotted TrialConfig field (Tune keeps the dots)."""
    out: dict[str, BaseDistribution] = {}
    for name, spec in space.params.items():
        lo, hi = spec.bounds()
        if spec.kind == "uniform":
            out[name] = FloatDistribution(float(lo), float(hi))
        elif spec.kind == "loguniform":
            out[name] = FloatDistribution(float(lo), float(hi), log=True)
        elif spec.kind == "int":
            out[name] = IntDistribution(int(lo), int(hi))
        else:
            out[name] = CategoricalDistribution(spec.values())
    if space.repeat_seeds():
        out["train.seed"] = CategoricalDistribution(space.repeat_seeds())
    return out

