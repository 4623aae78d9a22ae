"""Search spaces: a YAML file -> a validated :class:`SearchSpace`, checked before Ray starts.

Everything a user can get wrong is one :class:`~compvae.errors.ConfigError` line here, because
once Ray is up a bad value would only surface as N identical failed trials.
"""

from __future__ import annotations

import itertools
import math
from pathlib import Path
from typing import Annotated, Any

import yaml
from pydantic import (
    Field,
    ValidationError,
    field_validator,
    model_validator,
)

from compvae.config import (
    PRESETS,
    TrialConfig,
    deep_merge,
    format_validation_error,
    load_yaml,
    set_dotted,
)
from compvae.errors import ConfigError
from compvae.parent_store import changes_parent
from search.space.params import (
    MAX_OUTER_POINTS,
    NAME_RE,
    Objective,
    OuterLevel,
    ParamSpec,
    SearchSettings,
    _Strict,
)
from search.space.validate import check_params


def trial_threads(cpus: float) -> int:
    """The torch threads a trial with ``cpus`` CPUs runs with (one for a fraction of a CPU).

    Why it is written into every trial's config: a trial's numbers depend on its thread count
    (docs/design.md, "The tail and torch threads"), so the count must travel with the config to
    its export and retrain, not come from whatever ``OMP_NUM_THREADS`` a Ray worker was given.
    """
    return max(1, int(cpus))


class SearchSpace(_Strict):
    """A validated search space. Build it with :func:`load_space` or :func:`space_from_dict`,
    which also check the params against TrialConfig."""

    name: str
    description: str = ""
    preset: str | None = Field(None, description="TrialConfig preset under base (quick, paper, tiny)")
    base: dict[str, Any] = Field(default_factory=dict)
    params: dict[str, ParamSpec]
    objective: Annotated[list[Objective], Field(min_length=1)]
    search: SearchSettings = Field(default_factory=SearchSettings)
    outer: OuterLevel | None = None

    @field_validator("name")
    @classmethod
    def _name_ok(cls, v: str) -> str:
        if not NAME_RE.match(v):
            raise ValueError("letters, digits, '_', '-', '.' only (it names folders and MLflow runs)")
        return v

    @field_validator("preset")
    @classmethod
    def _preset_ok(cls, v: str | None) -> str | None:
        if v is not None and v not in PRESETS:
            raise ValueError(f"unknown preset '{v}'; choose one of {', '.join(PRESETS)}")
        return v

    @field_validator("objective", mode="before")
    @classmethod
    def _objective_list(cls, v: Any) -> Any:
        return [v] if isinstance(v, dict) else v

    @field_validator("params")
    @classmethod
    def _some_params(cls, v: dict[str, ParamSpec]) -> dict[str, ParamSpec]:
        if not v:
            raise ValueError("give at least one field to search")
        return v

    @model_validator(mode="after")
    def _consistent(self) -> SearchSpace:
        metrics = [o.metric for o in self.objective]
        if len(set(metrics)) != len(metrics):
            raise ValueError(f"objective: metrics must be distinct (got {metrics})")
        if "epoch" in metrics:
            raise ValueError("objective: 'epoch' is the step, not a metric")
        s = self.search
        if s.sampler == "grid":
            continuous = [k for k, p in self.params.items() if p.kind in ("uniform", "loguniform")]
            if continuous:
                raise ValueError(f"search.sampler grid: params {', '.join(continuous)} are continuous; "
                                 "use choice or int for a grid")
            if s.repeats > 1 and "train.seed" in self.params:
                raise ValueError("search.repeats: train.seed is already a param; drop one of them")
            size = self.grid_size
            if s.num_samples is not None and s.num_samples != size:
                raise ValueError(f"search.num_samples: the grid has {size} points "
                                 f"(x{s.repeats} repeats); remove num_samples or set it to {size}")
        elif s.repeats != 1:
            raise ValueError("search.repeats: only the grid sampler repeats points")
        if self.outer is not None:
            self._check_outer(self.outer)
        if "train.num_threads" in self.params:
            raise ValueError("params: train.num_threads is set by search.resources.cpus (a trial's "
                             "numbers depend on its thread count); remove it from params")
        threads = self.base.get("train", {}).get("num_threads", 0)  # a non-integer: the base check names it
        if isinstance(threads, int) and threads > trial_threads(s.resources.cpus):
            raise ValueError(f"base train.num_threads: {threads} threads on {s.resources.cpus:g} CPU(s) per "
                             f"trial; set search.resources.cpus to {threads} or drop train.num_threads")
        devices = {str(self.base.get("train", {}).get("device", ""))}
        devices |= {str(v) for v in (self.params["train.device"].choice or [])} if "train.device" in self.params else set()
        if "cuda" in devices and s.resources.gpus == 0:
            raise ValueError("train.device cuda needs search.resources.gpus > 0 (e.g. 0.25): a trial "
                             "given no GPU sees none; or use device auto/cpu")
        return self

    def _check_outer(self, outer: OuterLevel) -> None:
        for name in outer.params:
            if name not in self.params:
                raise ValueError(f"outer.params: {name} is not in params; list it there with choice or int")
            if not changes_parent(name):
                raise ValueError(f"outer.params: {name} does not change the parent; only parent.*, data.*, "
                                 "train.seed and train.amp knobs form the outer level")
            if self.params[name].kind not in ("choice", "int"):
                raise ValueError(f"outer.params: {name} is continuous; every parent is trained up front, "
                                 "so use choice or int for it")
        missing = [k for k in self.params if changes_parent(k) and k not in outer.params]
        if missing:
            raise ValueError(f"outer.params: {', '.join(missing)} also change(s) the parent; add them to "
                             "outer.params (or fix them in base)")
        n = math.prod(len(v) for v in self.outer_axes().values())
        if n > MAX_OUTER_POINTS:
            raise ValueError(f"outer.params: {n} parents to train up front (at most {MAX_OUTER_POINTS}); "
                             "use fewer values")
        if outer.keep is not None:
            if len(outer.params) != 1 or self.search.repeats > 1:
                raise ValueError("outer.keep: ranks the values of a single outer param (and no repeats); "
                                 "list one param or drop keep")
            if outer.keep > n:
                raise ValueError(f"outer.keep: {outer.keep} is more than the {n} outer parents; "
                                 f"use at most {n} or drop keep")
            if not self.search.reuse_parents:
                raise ValueError("outer.keep: ranks parents trained once and shared, which needs "
                                 "search.reuse_parents: true (drop --no-parent-reuse, or drop outer.keep)")

    # ---- derived -------------------------------------------------------------------------
    def outer_axes(self) -> dict[str, list[Any]]:
        """Outer level values per knob; grid repeats add their ``train.seed`` axis (a seed is a
        different parent). Empty without an outer level."""
        if self.outer is None:
            return {}
        axes = {k: self.params[k].values() for k in self.outer.params}
        if self.repeat_seeds():
            axes["train.seed"] = self.repeat_seeds()
        return axes

    def outer_points(self) -> list[dict[str, Any]]:
        """Every distinct parent of the outer level, as dotted updates to the base config."""
        axes = self.outer_axes()
        return [dict(zip(axes, values, strict=True)) for values in itertools.product(*axes.values())]

    def narrowed(self, name: str, values: list[Any]) -> SearchSpace:
        """This space with ``params[name]`` restricted to ``values`` (the outer parents kept)."""
        data = self.to_dict()
        data["params"][name] = {"choice": list(values)}
        if data["search"].get("num_samples") is not None and self.search.sampler == "grid":
            data["search"]["num_samples"] = None  # the narrowed grid is smaller
        return space_from_dict(data, source="narrowed space")

    @property
    def metrics(self) -> list[str]:
        return [o.metric for o in self.objective]

    @property
    def modes(self) -> list[str]:
        return [o.mode for o in self.objective]

    @property
    def multi_objective(self) -> bool:
        return len(self.objective) > 1

    def base_dict(self) -> dict[str, Any]:
        """The full base config as a dict: preset (if any) with ``base`` merged over it, and
        ``train.num_threads`` 0 (torch's default) made the trial's CPUs (:func:`trial_threads`)."""
        start = PRESETS[self.preset] if self.preset else {}
        cfg = TrialConfig.from_dict(deep_merge(start, self.base), source="base").to_dict()
        if not cfg["train"]["num_threads"]:
            cfg["train"]["num_threads"] = trial_threads(self.search.resources.cpus)
        return cfg

    def base_config(self) -> TrialConfig:
        return TrialConfig.from_dict(self.base_dict(), source="base")

    def trial_config(self, sample: dict[str, Any]) -> TrialConfig:
        """The TrialConfig a trial runs with: base plus its sampled (dotted) values."""
        return self.base_config().with_updates(sample)

    def grid_values(self) -> dict[str, list[Any]]:
        """Grid sampler points per param; repeats become a ``train.seed`` axis (base seed + r)
        so every repeat is a real replicate, logged as an ordinary TrialConfig field."""
        grid = {k: p.values() for k, p in self.params.items()}
        if self.repeat_seeds():
            grid["train.seed"] = self.repeat_seeds()
        return grid

    def repeat_seeds(self) -> list[int]:
        """The ``train.seed`` of each grid repeat (base seed + r); empty without repeats (only
        the grid sampler repeats, see the validator)."""
        if self.search.repeats == 1:
            return []
        seed0 = self.base_config().train.seed
        return [seed0 + r for r in range(self.search.repeats)]

    @property
    def grid_size(self) -> int:
        return math.prod(len(v) for v in self.grid_values().values())

    @property
    def num_trials(self) -> int:
        if self.search.sampler == "grid":
            return self.grid_size
        return self.search.num_samples or 10

    @property
    def max_epochs(self) -> int:
        """ASHA's max_t: the largest child epoch count any trial can have."""
        spec = self.params.get("child.epochs")
        if spec is None:
            return self.base_config().child.epochs
        return max(int(v) for v in (spec.values() if spec.kind in ("int", "choice") else spec.bounds()))

    def scheduler_metric(self) -> tuple[str, str]:
        asha = self.search.scheduler
        if asha is not None and asha.metric is not None and asha.mode is not None:
            return asha.metric, asha.mode
        return self.objective[0].metric, self.objective[0].mode

    def with_overrides(self, num_samples: int | None = None, max_concurrent: int | None = None,
                       seed: int | None = None, reuse_parents: bool | None = None) -> SearchSpace:
        """A copy with command-line overrides, validated again (a grid refuses num_samples)."""
        data = self.to_dict()
        if reuse_parents is not None:
            data["search"]["reuse_parents"] = reuse_parents
        if num_samples is not None:
            data["search"]["num_samples"] = num_samples
        if max_concurrent is not None:
            data["search"]["max_concurrent"] = max_concurrent
        if seed is not None:
            data["search"]["seed"] = seed
        return space_from_dict(data, source="command line")

    def with_settings(self, dotted: dict[str, Any], source: str = "--set") -> SearchSpace:
        """A copy with ``KEY=VALUE`` overrides: ``search.*`` and ``description`` set the search's
        own settings, any other key a field of the base TrialConfig (as ``compvae train --set``)."""
        data = self.to_dict()
        for key, value in dotted.items():
            if key in self.params:
                raise ConfigError(f"{source} {key}: this space searches {key} (params); set it there "
                                  "or drop it from params")
            if key.startswith("search.") or key == "description":
                target, dotted_key = data, key
            else:
                target, dotted_key = data.setdefault("base", {}), key
            set_dotted(target, dotted_key, value)
        return space_from_dict(data, source=source)

    def to_dict(self) -> dict[str, Any]:
        data = self.model_dump(mode="json", exclude_none=False)
        data["params"] = {k: p.to_dict() for k, p in self.params.items()}
        if data["search"]["scheduler"] is None:
            data["search"]["scheduler"] = "none"
        if data["preset"] is None:
            del data["preset"]
        if data["outer"] is None:
            del data["outer"]
        return data

    def to_yaml(self) -> str:
        return yaml.dump(self.to_dict(), Dumper=_FlowListDumper, sort_keys=False)


class _FlowListDumper(yaml.SafeDumper):
    """Writes short scalar lists inline (``uniform: [0.1, 2.0]``), as people write spaces."""


def _represent_list(dumper: yaml.SafeDumper, data: list[Any]) -> yaml.Node:
    flow = all(not isinstance(x, (dict, list)) for x in data)
    return dumper.represent_sequence("tag:yaml.org,2002:seq", data, flow_style=flow)


_FlowListDumper.add_representer(list, _represent_list)


# ---- loading and validation -------------------------------------------------------------------
def load_space(path: str | Path) -> SearchSpace:
    """Read and fully validate a space file; any problem is one ConfigError line."""
    return space_from_dict(load_yaml(path), source=str(path))


def space_from_dict(data: Any, source: str = "space") -> SearchSpace:
    if not isinstance(data, dict):
        raise ConfigError(f"{source}: expected a mapping with name, base, params, objective, search")
    try:
        space = SearchSpace.model_validate(data)
    except ValidationError as exc:
        raise ConfigError(f"{source}: {format_validation_error(exc)}") from None
    try:
        space.base_dict()
    except ConfigError as exc:
        raise ConfigError(f"{source}: {exc}") from None
    check_params(space, source)
    return space

