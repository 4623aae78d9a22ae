"""Validation probes: every param is a TrialConfig field whose sampled values validate on base.

Structure is pydantic's job (:mod:`search.space.params`); here each range corner and choice is
validated through ``TrialConfig`` so ``mask.threshold: [0, 2]`` fails with the field's own bound.
"""

from __future__ import annotations

import difflib
import itertools
import types
import typing
from typing import TYPE_CHECKING, Any, Literal

from pydantic import BaseModel, ValidationError

from compvae.config import TrialConfig, format_validation_error, set_dotted
from compvae.errors import ConfigError
from search.space.params import ParamSpec

if TYPE_CHECKING:
    from search.space.schema import SearchSpace


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
