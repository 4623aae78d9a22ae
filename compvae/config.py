"""Typed trial configuration.

``TrialConfig`` is the single source of truth for what a trial runs with: the search samples
into it, MLflow logs it, export writes it as YAML and ``compvae train`` reads it back. Every
field is validated (``extra="forbid"`` catches typos) and ``to_yaml``/``from_yaml`` round-trip
exactly.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from compvae.errors import ConfigError

Resolution = Literal[32, 64, 128, 256]
MaskingMode = Literal["none", "input", "loss", "both"]
PROCEDURAL = ("scenes", "shapes")


class _Section(BaseModel):
    # allow_inf_nan=False: a NaN passes no bound check, so it would otherwise be reported as
    # exceeding one (or not at all); it is refused as NaN instead.
    model_config = ConfigDict(extra="forbid", validate_assignment=True, allow_inf_nan=False)


class DataConfig(_Section):
    name: Literal["scenes", "shapes", "dsprites", "shapes3d", "images"] = "scenes"
    path: str | None = Field(None, description="local file or folder for dsprites/shapes3d/images")
    num_train: int = Field(8192, ge=64, description="images in the (fixed) training set; TC uses this N")
    detail_resolution: Resolution = Field(
        64, description="scenes: resolution of the target's texture grid; it averages away below it")

    @model_validator(mode="after")
    def _path_needed(self) -> DataConfig:
        if self.name not in PROCEDURAL and not self.path:
            raise ValueError(f"data.path is required for dataset '{self.name}': give the local file or folder")
        return self


class VAEConfig(_Section):
    resolution: Resolution = 32
    latent_dim: int = Field(10, ge=1, le=256)
    width: int = Field(32, ge=4, le=512, description="channels of the first conv layer")
    beta: float = Field(6.0, gt=0, le=10000)
    recon: Literal["bernoulli", "gaussian"] = "bernoulli"
    tc_estimator: Literal["mss", "mws"] = "mss"
    lr: float = Field(5e-4, gt=0, le=1)
    batch_size: int = Field(64, ge=2, le=4096)
    epochs: int = Field(10, ge=0, le=100000)


class ParentConfig(VAEConfig):
    mode: Literal["frozen", "joint"] = "frozen"


class MaskConfig(_Section):
    source: Literal["parent", "oracle"] = Field(
        "parent", description="oracle: the dataset's true target silhouette (the positive control)")
    latent: int | Literal["auto"] = "auto"
    auto_by: Literal["kl", "mi"] = "mi"
    delta: float = Field(0.2, gt=0, le=20)
    delta_std: float = Field(0.0, ge=0, le=10)
    threshold: float = Field(0.005, ge=0, le=1)
    blur_sigma: float = Field(0.0, ge=0, le=16)
    kind: Literal["hard", "soft"] = "hard"
    nuisance: Literal["fixed", "randomized"] = "fixed"
    nuisance_draws: int = Field(4, ge=1, le=64)
    min_coverage: float = Field(0.002, ge=0, le=1, description="masks covering less are 'empty'")

    @model_validator(mode="after")
    def _latent_nonneg(self) -> MaskConfig:
        if isinstance(self.latent, int) and self.latent < 0:
            raise ValueError("mask.latent must be a latent index >= 0 or 'auto'")
        return self


class ChildConfig(VAEConfig):
    resolution: Resolution = 64
    beta: float = Field(4.0, gt=0, le=10000)
    lr: float = Field(5e-4, gt=0, le=1)
    epochs: int = Field(4, ge=1, le=100000, description="child epochs: the step ASHA counts")
    masking_mode: MaskingMode = "loss"
    outside_weight: float = Field(
        0.0, ge=0, le=1, description="loss weight outside the mask in loss/both modes")
    parent_code: Literal["none", "decoder"] = Field(
        "none", description="decoder: the child's decoder also reads the frozen parent's posterior mean")
    kl_warmup: float = Field(
        0.0, ge=0, le=1, description="fraction of child steps over which the KL and TC terms ramp up from 0")
    conditioning: bool = Field(False, description="pull the parent's focus latent toward the child (joint only)")
    # The conditioning ramp, as fractions of the child's total steps, so it switches on at any
    # budget; the defaults are the original's 10k/30k steps of a 40k-step run.
    conditioning_start: float = Field(0.25, ge=0, lt=1, description="fraction of child steps before the ramp")
    conditioning_ramp: float = Field(0.75, gt=0, le=1, description="fraction of child steps over which gamma rises by 1")
    conditioning_max: float = Field(0.75, gt=0, le=1, description="cap on the conditioning weight gamma")


class TrainConfig(_Section):
    seed: int = Field(0, ge=0, le=2**31 - 1)
    device: Literal["auto", "cpu", "cuda"] = "auto"
    amp: bool = False
    num_threads: int = Field(0, ge=0, le=256, description="torch CPU threads; 0 = leave torch's default")


class EvalConfig(_Section):
    num_train: int = Field(10000, ge=10)
    num_test: int = Field(5000, ge=10)
    metrics: list[Literal["mig", "dci", "sap", "modularity", "factorvae", "betavae", "informativeness",
                          "unsupervised"]] = Field(
        default_factory=lambda: ["mig", "dci", "sap", "informativeness", "unsupervised"])
    active_kl: float = Field(0.1, ge=0, description="nats a latent must carry to count as active (probes)")
    light_points: int = Field(1000, ge=10, description="points of the per-epoch evaluation that feeds ASHA")
    dci_estimator: Literal["fast", "faithful"] = "fast"
    figures: bool = True
    num_figure_images: int = Field(6, ge=1, le=64)


class TrialConfig(_Section):
    data: DataConfig = Field(default_factory=DataConfig)
    parent: ParentConfig = Field(default_factory=ParentConfig)
    mask: MaskConfig = Field(default_factory=MaskConfig)
    child: ChildConfig = Field(default_factory=ChildConfig)
    train: TrainConfig = Field(default_factory=TrainConfig)
    eval: EvalConfig = Field(default_factory=EvalConfig)

    @model_validator(mode="after")
    def _consistent(self) -> TrialConfig:
        if self.child.resolution < self.parent.resolution:
            raise ValueError(
                f"child.resolution ({self.child.resolution}) must be >= parent.resolution "
                f"({self.parent.resolution})")
        if isinstance(self.mask.latent, int) and self.mask.latent >= self.parent.latent_dim:
            raise ValueError(
                f"mask.latent ({self.mask.latent}) must be < parent.latent_dim ({self.parent.latent_dim})")
        if self.mask.source == "oracle":
            if self.data.name not in PROCEDURAL:
                raise ValueError(f"mask.source: oracle needs a dataset with true silhouettes "
                                 f"({', '.join(PROCEDURAL)}), not '{self.data.name}'; use mask.source: parent")
            if self.parent.mode != "frozen":
                raise ValueError("mask.source: oracle needs parent.mode: frozen (an oracle mask follows no parent)")
        if self.child.conditioning and self.parent.mode != "joint":
            raise ValueError("child.conditioning needs parent.mode: joint (a frozen parent cannot be pulled)")
        for section in ("parent", "child"):  # the trainer needs one full batch per epoch
            size = getattr(self, section).batch_size
            if size > self.data.num_train:
                raise ValueError(f"{section}.batch_size ({size}) must be <= data.num_train "
                                 f"({self.data.num_train}); lower the batch size or raise data.num_train")
        return self

    # ---- (de)serialisation ------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        return self.model_dump(mode="json")

    def to_yaml(self) -> str:
        return yaml.safe_dump(self.to_dict(), sort_keys=False)

    def save(self, path: str | Path) -> None:
        Path(path).write_text(self.to_yaml())

    @classmethod
    def from_dict(cls, data: Any, source: str = "config") -> TrialConfig:
        if not isinstance(data, dict):
            raise ConfigError(f"{source}: expected a mapping of sections (data, parent, mask, child, train, eval)")
        try:
            return cls.model_validate(data)
        except ValidationError as exc:
            raise ConfigError(f"{source}: {format_validation_error(exc)}") from None

    @classmethod
    def from_yaml(cls, path: str | Path) -> TrialConfig:
        return cls.from_dict(load_yaml(path), source=str(path))

    def flat(self) -> dict[str, Any]:
        """Dotted ``section.field`` -> value, e.g. for MLflow params."""
        return flatten(self.to_dict())

    def with_updates(self, dotted: dict[str, Any]) -> TrialConfig:
        """A new, validated config with dotted-key overrides applied (what a search sample is)."""
        data = self.to_dict()
        for key, value in dotted.items():
            set_dotted(data, key, value)
        return TrialConfig.from_dict(data, source="overrides")


# ---- helpers shared by the trial CLI and the search spaces ----------------------------------
class StrictLoader(yaml.SafeLoader):
    """PyYAML's safe loader, refusing duplicate keys: with the stock one a second ``params:``
    block silently replaces the first. Every YAML the project reads goes through it."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
        seen: set[Any] = set()
        for key_node, _ in node.value:
            if key_node.tag == "tag:yaml.org,2002:merge":
                continue  # `<<:` merges may override; only keys written twice are refused
            key = self.construct_object(key_node, deep=True)
            try:
                duplicate = key in seen
            except TypeError:  # an unhashable key: the stock loader reports it
                break
            if duplicate:
                raise yaml.constructor.ConstructorError(
                    None, None, f"duplicate key '{key}'", key_node.start_mark)
            seen.add(key)
        return super().construct_mapping(node, deep=deep)


def parse_yaml(text: str, source: str) -> Any:
    """YAML text -> data with :class:`StrictLoader`; a problem is one ConfigError naming ``source``."""
    try:
        return yaml.load(text, Loader=StrictLoader)  # noqa: S506 - a SafeLoader subclass
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        problem = getattr(exc, "problem", None) or "invalid syntax"
        fix = "keep one of them" if problem.startswith("duplicate key") else "fix the syntax"
        raise ConfigError(f"{source}: broken YAML{where}: {problem}; {fix}") from None


def read_text_file(path: str | Path, what: str = "YAML") -> str:
    """A user's text file as str: missing, unreadable or non-UTF-8 files are one ConfigError."""
    p = Path(path)
    if not p.is_file():
        raise ConfigError(f"{p}: file not found; give the path of an existing {what} file")
    try:
        raw = p.read_bytes()
    except OSError as exc:
        raise ConfigError(f"{p}: cannot read it ({exc.strerror or exc}); check its permissions") from None
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ConfigError(f"{p}: not UTF-8 text (byte 0x{raw[exc.start]:02x} at offset {exc.start}); "
                          f"save it as UTF-8 {what}") from None


def load_yaml(path: str | Path) -> Any:
    return parse_yaml(read_text_file(path), str(path))


def format_validation_error(exc: ValidationError) -> str:
    """First pydantic error as 'field.path: message (got value)'."""
    errors = exc.errors()
    # a NaN in a union field (a choice value) fails every member: its NaN error says what is wrong
    err = next((e for e in errors if e["type"] == "finite_number"), errors[0])
    parts = [str(x) for x in err["loc"] if not (isinstance(x, str) and "[" in x)]
    if err["type"] == "finite_number" and len(errors) > 1 and parts and parts[-1] == "float":
        parts = parts[:-1]  # the union member's tag
    loc = ".".join(parts)
    msg = err["msg"].removeprefix("Value error, ")
    if err["type"] == "extra_forbidden":
        return f"{loc}: unknown field; remove it or check its spelling"
    got = err.get("input")
    if err["type"] == "finite_number":
        what = "NaN" if str(got).strip().lower().lstrip("+-.") == "nan" else "infinite"
        return f"{loc}: is {what} (got {got!r}); give a finite number"
    got_s = "" if isinstance(got, dict) or got is None else f" (got {got!r})"
    return f"{loc}: {msg}{got_s}" if loc else f"{msg}{got_s}"


def flatten(d: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict):
            out.update(flatten(v, key + "."))
        else:
            out[key] = v
    return out


def set_dotted(data: dict[str, Any], key: str, value: Any) -> None:
    parts = key.split(".")
    cur = data
    for p in parts[:-1]:
        cur = cur.setdefault(p, {})
        if not isinstance(cur, dict):
            raise ConfigError(f"{key}: '{p}' is not a section")
    cur[parts[-1]] = value


def deep_merge(base: dict[str, Any], override: dict[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for k, v in override.items():
        out[k] = deep_merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


# ---- presets ------------------------------------------------------------------------------
PRESETS: dict[str, dict[str, Any]] = {
    # CPU, 2 cores: a whole trial in about a minute on the `scenes` benchmark (docs/benchmark.md).
    # The parent trains 30 epochs (a search trains each distinct parent once, compvae.parent_store).
    # The child: beta 1 (plain KL; TC unweighted), 12 epochs of batch 32 at lr 1.5e-3 (at 2e-3 some
    # seeds collapse; at 8 epochs the unmasked child has not yet reached the texture) and a KL
    # warm-up over its first quarter, because a loss-masked child sees few pixels. The final evaluation
    # uses 10,000 / 5,000 points (MIG per group on 10k, probes on the active latents).
    "quick": {
        "data": {"name": "scenes", "num_train": 4096},
        "parent": {"resolution": 32, "latent_dim": 8, "width": 16, "beta": 4.0, "epochs": 30, "batch_size": 64,
                   "lr": 2e-3},
        "mask": {"latent": "auto", "delta": 1.0, "threshold": 0.02, "blur_sigma": 1.0},
        "child": {"resolution": 64, "latent_dim": 8, "width": 16, "beta": 1.0, "epochs": 12, "batch_size": 32,
                  "lr": 1.5e-3, "kl_warmup": 0.25, "masking_mode": "loss"},
        "train": {"seed": 0, "device": "auto"},
        "eval": {"num_train": 10000, "num_test": 5000, "metrics": ["mig", "informativeness", "unsupervised"],
                 "num_figure_images": 6},
    },
    # Smoke tests and CI: a whole trial in seconds (numbers are not meaningful).
    "tiny": {
        "data": {"name": "shapes", "num_train": 256},
        "parent": {"resolution": 32, "latent_dim": 4, "width": 8, "epochs": 1, "batch_size": 32, "lr": 1e-3},
        "mask": {"latent": 0, "delta": 2.0, "threshold": 0.0, "blur_sigma": 0.0, "min_coverage": 0.0},
        "child": {"resolution": 32, "latent_dim": 4, "width": 8, "epochs": 2, "batch_size": 32, "lr": 1e-3},
        "train": {"seed": 0, "device": "cpu", "num_threads": 1},
        "eval": {"num_train": 200, "num_test": 100, "metrics": ["mig"], "figures": False},
    },
    # GPU: the original work's scale (parent 64 px, child 256 px, batch 32).
    "paper": {
        "data": {"name": "scenes", "num_train": 50000, "detail_resolution": 256},
        "parent": {"resolution": 64, "latent_dim": 10, "beta": 25.0, "epochs": 16, "batch_size": 32, "lr": 5e-4},
        "mask": {"latent": "auto", "delta": 0.2, "delta_std": 0.05, "threshold": 0.005, "blur_sigma": 1.0},
        "child": {"resolution": 256, "latent_dim": 10, "beta": 500.0, "epochs": 16, "batch_size": 32, "lr": 1e-4,
                  "masking_mode": "both"},
        "train": {"seed": 0, "device": "auto", "amp": True},
        "eval": {"num_train": 10000, "num_test": 5000,
                 "metrics": ["mig", "dci", "sap", "factorvae", "unsupervised"]},
    },
}


def preset(name: str) -> TrialConfig:
    if name not in PRESETS:
        raise ConfigError(f"--preset: unknown preset '{name}'; choose one of {', '.join(PRESETS)}")
    return TrialConfig.from_dict(PRESETS[name], source=f"preset {name}")
