"""A space's fields: parameter distributions, objectives and search settings (pydantic models)."""

from __future__ import annotations

import math
import re
from typing import Annotated, Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    field_validator,
    model_validator,
)

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
    # trial: each trial judged against the trials created before it (a result that comes early
    # waits for theirs), so the same space and seed cut the same trials on every run;
    # arrival: Tune's ASHA, judging each result against the rung as it stands when it arrives.
    order: Literal["trial", "arrival"] = "trial"
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


