"""Search spaces: a YAML file -> a validated :class:`SearchSpace`, checked before Ray starts.

A space names the TrialConfig fields to search (dotted, e.g. ``mask.threshold``), a partial
``base`` config applied to every trial, the objective(s) and the search settings. Everything a
user can get wrong is caught here and reported as one :class:`~compvae.errors.ConfigError`
line, because once Ray is up a bad value would only surface as N identical failed trials:

* structure: unknown keys, wrong types, ``lo >= hi``, non-positive log bounds (pydantic);
* params: the name must be a real TrialConfig field, the distribution must suit the field's
  type (``uniform`` on an integer field, ``int`` on a Literal ...), and every range corner and
  every choice must validate through ``TrialConfig`` on top of ``base`` (``mask.threshold: [0, 2]``
  fails here with the field's own bound, not in trial 7).
"""

from __future__ import annotations

import difflib
import itertools
import math
import re
import types
import typing
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
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

Scalar = str | int | float | bool | None
NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,99}$")
# YAML 1.1 (PyYAML) reads `1e-3` as a string; numbers in a space are meant as numbers.
_FLOAT_RE = re.compile(r"^[-+]?(\d+\.?\d*|\.\d+)([eE][-+]?\d+)?$")


_KINDS = ("uniform", "loguniform", "int", "choice")
_ATTR = {"uniform": "uniform", "loguniform": "loguniform", "int": "int_range", "choice": "choice"}


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)  # NaN is reported as NaN


def _number(value: Any) -> Any:
    if isinstance(value, str) and _FLOAT_RE.match(value.strip()):
        return float(value)
    return value


class ParamSpec(_Strict):
    """Exactly one distribution for one dotted TrialConfig field."""

    model_config = ConfigDict(extra="forbid", populate_by_name=True, allow_inf_nan=False)

    uniform: tuple[float, float] | None = None
    loguniform: tuple[float, float] | None = None
    # `int` would shadow the builtin inside the class body: store it as int_range.
    int_range: tuple[int, int] | None = Field(None, alias="int")
    choice: list[Scalar] | None = None

    @field_validator("choice", mode="before")
    @classmethod
    def _choice_numbers(cls, v: Any) -> Any:
        if isinstance(v, list):
            return [_number(x) for x in v]
        return v

    @model_validator(mode="after")
    def _one_distribution(self) -> ParamSpec:
        given = [k for k in _KINDS if getattr(self, _ATTR[k]) is not None]
        if len(given) != 1:
            raise ValueError("give exactly one of uniform: [lo, hi], loguniform: [lo, hi], "
                             f"int: [lo, hi], choice: [...] (got {', '.join(given) or 'none'})")
        kind = given[0]
        if kind == "choice":
            values = self.choice or []
            if not values:
                raise ValueError("choice: needs at least one value")
            if len({repr(v) for v in values}) != len(values):
                raise ValueError(f"choice: values must be distinct (got {values})")
            return self
        lo, hi = getattr(self, _ATTR[kind])
        if not (math.isfinite(lo) and math.isfinite(hi)):
            raise ValueError(f"{kind}: bounds must be finite numbers (got [{lo}, {hi}])")
        if lo >= hi:
            raise ValueError(f"{kind}: lower bound {lo} must be below upper bound {hi}; "
                             "put a fixed value in base instead")
        if kind == "loguniform" and lo <= 0:
            raise ValueError(f"loguniform: lower bound must be > 0 (got {lo}); use uniform for ranges from 0")
        return self

    @property
    def kind(self) -> str:
        for k in _KINDS:
            if getattr(self, _ATTR[k]) is not None:
                return k
        raise AssertionError("validated ParamSpec without a distribution")

    def bounds(self) -> tuple[Any, Any]:
        """(lo, hi) of a range, or (first, last) of a choice."""
        if self.kind == "choice":
            assert self.choice is not None
            return self.choice[0], self.choice[-1]
        lo, hi = getattr(self, _ATTR[self.kind])
        return lo, hi

    def interior(self) -> Any:
        """A value strictly inside a range (geometric for log ranges): catches type mismatches
        that both bounds hide (``uniform: [1, 4]`` on an integer field validates at 1.0 and 4.0)."""
        lo, hi = self.bounds()
        if self.kind == "loguniform":
            return math.exp(math.log(lo) + 0.37 * (math.log(hi) - math.log(lo)))
        if self.kind == "uniform":
            return lo + 0.37 * (hi - lo)
        return lo

    def values(self) -> list[Any]:
        """Every value of a finite distribution (choice, int); what a grid enumerates."""
        if self.kind == "choice":
            return list(self.choice or [])
        if self.kind == "int":
            assert self.int_range is not None
            return list(range(self.int_range[0], self.int_range[1] + 1))
        raise ValueError(f"{self.kind} is continuous; a grid needs choice or int params")

    def to_dict(self) -> dict[str, Any]:
        return {self.kind: list(getattr(self, _ATTR[self.kind]))}


class Objective(_Strict):
    metric: str = Field(min_length=1, description="a key of the trial's metrics, e.g. child/mig")
    mode: Literal["min", "max"]


class AshaSettings(_Strict):
    """ASHA over child epochs. ``metric``/``mode`` default to the (first) objective; they must
    name a metric the trial reports every epoch (``child/mig`` is, ``child/dci_*`` is not)."""

    type: Literal["asha"] = "asha"
    grace_period: int = Field(1, ge=1, description="child epochs before the first cut")
    reduction_factor: float = Field(2.0, gt=1)
    brackets: int = Field(1, ge=1, le=8)
    metric: str | None = None
    mode: Literal["min", "max"] | None = None

    @model_validator(mode="after")
    def _metric_and_mode(self) -> AshaSettings:
        if (self.metric is None) != (self.mode is None):
            raise ValueError("give both scheduler.metric and scheduler.mode, or neither "
                             "(then the first objective is used)")
        return self


class Resources(_Strict):
    cpus: float = Field(1.0, gt=0, le=1024, description="CPUs per trial (fractions allowed)")
    gpus: float = Field(0.0, ge=0, le=64, description="GPUs per trial (fractions share a GPU)")

    @model_validator(mode="after")
    def _whole_above_one(self) -> Resources:
        for name in ("cpus", "gpus"):
            v = getattr(self, name)
            if v > 1 and v != int(v):
                raise ValueError(f"{name} above 1 must be a whole number (got {v}); "
                                 "Ray only splits a single device")
        return self


class SearchSettings(_Strict):
    sampler: Literal["tpe", "random", "gp", "nsga2", "grid"] = "tpe"
    seed: int = Field(0, ge=0, le=2**31 - 1)
    num_samples: int | None = Field(
        None, ge=1, le=100000, description="trials to run; a grid defaults to its size")
    max_concurrent: int = Field(2, ge=1, le=10000)
    repeats: int = Field(1, ge=1, le=1000, description="grid only: runs per grid point, seeds base+0..")
    max_failures: int = Field(1, ge=0, le=100, description="retries of a failed trial from its checkpoint")
    reuse_parents: bool = Field(
        True, description="share trained parents between trials (compvae.parent_store); false trains "
                          "one per trial, the baseline benchmarks/search.py compares against")
    scheduler: AshaSettings | None = Field(default_factory=AshaSettings)
    resources: Resources = Field(default_factory=Resources)

    @field_validator("scheduler", mode="before")
    @classmethod
    def _scheduler_shorthand(cls, v: Any) -> Any:
        if v is None or (isinstance(v, str) and v.strip().lower() == "none"):
            return None
        if isinstance(v, str) and v.strip().lower() == "asha":
            return {}
        if isinstance(v, str):
            raise ValueError("expected 'asha', 'none' or a mapping of asha options")
        return v


MAX_OUTER_POINTS = 64


class OuterLevel(_Strict):
    """Parent knobs searched as an outer level: every distinct parent is trained up front, in
    parallel, before any trial; the inner search then samples mask and child knobs on stored
    parents (every trial reuses one). ``keep`` narrows the inner search to the strongest
    parents by ``rank_by`` (a parent metric), so trials are spent on a few strong parents."""

    params: Annotated[list[str], Field(min_length=1)]
    keep: int | None = Field(None, ge=1, description="parents passed to the inner search (one outer param)")
    rank_by: Objective = Field(default_factory=lambda: Objective(metric="parent/mig", mode="max"))

    @field_validator("params")
    @classmethod
    def _distinct(cls, v: list[str]) -> list[str]:
        if len(set(v)) != len(v):
            raise ValueError(f"names must be distinct (got {v})")
        return v

    @field_validator("rank_by")
    @classmethod
    def _parent_metric(cls, v: Objective) -> Objective:
        if not v.metric.startswith("parent/"):
            raise ValueError(f"rank_by.metric must be a parent metric like parent/mig or parent/recon_error "
                             f"(got {v.metric}): outer parents are ranked before any child trains")
        return v


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
        """The full base config as a dict: preset (if any) with ``base`` merged over it."""
        start = PRESETS[self.preset] if self.preset else {}
        return TrialConfig.from_dict(deep_merge(start, self.base), source="base").to_dict()

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


def config_fields() -> dict[str, Any]:
    """Dotted TrialConfig field -> its type annotation."""
    out: dict[str, Any] = {}
    for section, info in TrialConfig.model_fields.items():
        model = info.annotation
        assert isinstance(model, type) and issubclass(model, BaseModel)
        for name, finfo in model.model_fields.items():
            out[f"{section}.{name}"] = finfo.annotation
    return out


def _kinds(annotation: Any) -> set[str]:
    """Coarse value kinds a field accepts: int, float, bool, str, literal, list, none."""
    origin = typing.get_origin(annotation)
    if origin in (typing.Union, types.UnionType):
        return set().union(*(_kinds(a) for a in typing.get_args(annotation)))
    if origin is Literal:
        return {"literal"}
    if origin in (list, tuple, set, dict):
        return {"list"}
    if annotation is type(None):
        return {"none"}
    if annotation is bool:
        return {"bool"}
    if annotation is int:
        return {"int"}
    if annotation is float:
        return {"float"}
    if annotation is str:
        return {"str"}
    return {"other"}


def _check_kind(name: str, spec: ParamSpec, annotation: Any) -> str | None:
    kinds = _kinds(annotation)
    if "list" in kinds:
        return f"{name} holds a list; a search samples scalars, so fix it in base"
    if spec.kind in ("uniform", "loguniform") and "float" not in kinds:
        if "int" in kinds:
            return f"{name} is an integer field; use int: [lo, hi] or choice"
        return f"{name} takes one of a fixed set of values; use choice: [...]"
    if spec.kind == "int" and not kinds & {"int", "float"}:
        return f"{name} takes one of a fixed set of values; use choice: [...]"
    return None


def _validate_with(base: dict[str, Any], updates: dict[str, Any]) -> str | None:
    data = {k: dict(v) if isinstance(v, dict) else v for k, v in base.items()}
    for key, value in updates.items():
        set_dotted(data, key, value)
    try:
        TrialConfig.model_validate(data)
    except ValidationError as exc:
        return format_validation_error(exc)
    return None


def check_params(space: SearchSpace, source: str = "space") -> None:
    """Every param is a TrialConfig field whose sampled values validate on top of base."""
    fields = config_fields()
    base = space.base_dict()
    for name, spec in space.params.items():
        where = f"{source}: params.{name}"
        if name not in fields:
            close = difflib.get_close_matches(name, list(fields), n=1)
            hint = f"; did you mean {close[0]}?" if close else "; params are dotted TrialConfig fields like mask.threshold"
            raise ConfigError(f"{where}: not a TrialConfig field{hint}")
        problem = _check_kind(name, spec, fields[name])
        if problem:
            raise ConfigError(f"{where}: {problem}")
        if spec.kind == "choice":
            probes = [("choice", v) for v in spec.values()]
        else:
            lo, hi = spec.bounds()
            probes = [("lower bound", lo), ("upper bound", hi)]
            if spec.kind != "int":
                probes.append(("value inside the range", spec.interior()))
        for label, value in probes:
            err = _validate_with(base, {name: value})
            if err:
                raise ConfigError(f"{where}: {label} {value!r} is invalid: {err}")
    # Numeric params interact through TrialConfig's cross-field checks: try the two corners.
    numeric = {k: p for k, p in space.params.items() if p.kind != "choice"}
    if len(numeric) > 1:
        for label, idx in (("lower", 0), ("upper", 1)):
            corner = {k: p.bounds()[idx] for k, p in numeric.items()}
            err = _validate_with(base, corner)
            if err:
                shown = ", ".join(f"{k}={v}" for k, v in corner.items())
                raise ConfigError(f"{source}: params: the {label} corner ({shown}) is invalid: {err}")
    if space.search.sampler == "grid":
        grid = space.grid_values()
        for values in itertools.islice(itertools.product(*grid.values()), 10000):
            point = dict(zip(grid, values, strict=True))
            err = _validate_with(base, point)
            if err:
                raise ConfigError(f"{source}: params: grid point {point} is invalid: {err}")
