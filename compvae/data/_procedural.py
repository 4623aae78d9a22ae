"""What the procedural datasets share: their constructor checks and bounded-memory chunking."""

from __future__ import annotations

from compvae.data._resize import check_channels, check_resolution
from compvae.data.base import GroundTruthData
from compvae.errors import ConfigError

_PIXELS_PER_CHUNK = 1 << 20


class ProceduralData(GroundTruthData):
    """A dataset rendered on the fly: no file, any resolution, images in chunks of ~1M pixels."""

    def _setup(self, name: str, resolution: int, channels: int, path: str | None,
               factor_names: list[str], factor_sizes: list[int], factor_groups: dict[str, list[str]]) -> None:
        if path is not None:
            raise ConfigError(f"{name}: the procedural dataset takes no path, got {path!r}; "
                              "leave data.path empty")
        self.name = name
        self.resolution = check_resolution(name, resolution)
        self.channels = check_channels(name, channels)
        self.factor_names = list(factor_names)
        self.factor_sizes = list(factor_sizes)
        self.factor_groups = {g: list(v) for g, v in factor_groups.items()}
        self.has_factors = True

    def _chunks(self, n: int) -> list[tuple[int, int]]:
        step = max(1, _PIXELS_PER_CHUNK // (self.resolution * self.resolution))
        return [(lo, min(lo + step, n)) for lo in range(0, n, step)]
