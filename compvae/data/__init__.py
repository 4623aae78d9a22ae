"""Datasets with ground-truth factors, all behind :class:`GroundTruthData`."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from compvae.data.base import GroundTruthData
from compvae.errors import ConfigError, DataError


def get_dataset(name: str, **options: Any) -> GroundTruthData:
    """Build a dataset by name: ``scenes`` (procedural, default), ``shapes`` (procedural), ``dsprites``, ``shapes3d``, ``images``.

    File-backed datasets take ``path``; every dataset takes ``resolution``.
    """
    if name == "shapes":
        from compvae.data.shapes import Shapes

        return Shapes(**options)
    if name == "scenes":
        from compvae.data.scenes import Scenes

        return Scenes(**options)
    if name == "dsprites":
        from compvae.data.dsprites import DSprites

        return DSprites(**options)
    if name == "shapes3d":
        from compvae.data.shapes3d import Shapes3D

        return Shapes3D(**options)
    if name == "images":
        from compvae.data.images import ImageFiles

        return ImageFiles(**options)
    raise ConfigError(f"data.name: unknown dataset '{name}'; choose scenes, shapes, dsprites, shapes3d or images")


def dataset_options(cfg: Any, resolution: int) -> dict[str, Any]:
    """Constructor options for ``cfg.data`` (a DataConfig's owner) at ``resolution``."""
    options: dict[str, Any] = {"resolution": resolution}
    if cfg.data.path:
        options["path"] = str(Path(cfg.data.path).expanduser().resolve())
    if cfg.data.name == "scenes":
        options["detail_resolution"] = cfg.data.detail_resolution
    return options


def check_data(name: str, path: str | None, resolution: int, num_train: int | None = None,
               batch_sizes: dict[str, int] | None = None) -> None:
    """Open a dataset once (constructors read only headers and labels) so that a missing,
    corrupt or wrongly shaped file, or one too small for a batch, is one
    :class:`~compvae.errors.DataError` line *before* an output folder, a Ray cluster or a
    search's worth of identical failed trials exist."""
    options: dict[str, Any] = {"resolution": resolution}
    if path:
        options["path"] = str(Path(path).expanduser().resolve())
    data = get_dataset(name, **options)
    if data.has_factors or num_train is None:
        return  # factor datasets sample num_train images (with replacement): any size serves
    n = min(num_train, len(data))  # a plain image collection trains on at most all its images
    for field, size in (batch_sizes or {}).items():
        if size > n:
            raise DataError(f"{field}: {size} is more than the {n} training images of {options['path']}; "
                            f"set {field} to at most {n}")


def check_trial_data(cfg: Any) -> None:
    """:func:`check_data` for one ``TrialConfig``: its dataset, resolution and batch sizes."""
    check_data(cfg.data.name, cfg.data.path, cfg.parent.resolution, cfg.data.num_train,
               {"parent.batch_size": cfg.parent.batch_size, "child.batch_size": cfg.child.batch_size})


__all__ = ["GroundTruthData", "check_data", "check_trial_data", "dataset_options", "get_dataset"]
