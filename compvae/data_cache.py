"""Rendered images shared by the trials of a search: each procedural image set rendered once.

Every trial of a search with the same data settings and seed renders the same images: its
training set, its held-out images, the evaluation sets its final and per-epoch evaluations
draw (their factors come from the trial's seeded streams, so they do not depend on the knobs
a search varies) and the oracle silhouettes. :class:`CachedData` wraps a procedural dataset so
each ``images`` / ``silhouettes`` / ``detail_regions`` call is looked up by a content key (the
dataset's identity, the code that renders it, the method and the exact factor array) in a
folder the trials share (``<search>/data/``, on the same storage as the parent store, so every
node reads it) and rendered and written only on a miss. Stored arrays are the renderer's own
float32 output (``np.save``/``np.load`` round-trip exactly), so a trial computes the same
metrics with the cache, cold or warm, as without it (``tests/test_data_cache.py``).

Concurrency: a writer renders into a temporary file and ``os.replace``s it into place, so a
reader sees a whole file or none; two trials missing the same key at once both render it and
the second rename simply replaces an identical file. ``max_bytes`` bounds what a cache writes
(large presets, e.g. 256 px RGB, render past it rather than fill the disk).
"""

from __future__ import annotations

import functools
import hashlib
import json
import os
import tempfile
from pathlib import Path
from typing import Any

import numpy as np

from compvae.data.base import GroundTruthData

_PACKAGE = Path(__file__).resolve().parent
#: The methods whose output is cached (all are pure functions of the factors).
CACHED_METHODS = ("images", "silhouettes", "detail_regions")
#: Datasets rendered from code alone (a file-backed dataset reads its file: nothing to save).
CACHEABLE = ("scenes", "shapes")
DEFAULT_MAX_BYTES = 4 * 2**30


@functools.lru_cache(maxsize=1)
def _render_code_fingerprint() -> str:
    """A hash of the dataset code: an edited renderer never reads another version's images."""
    h = hashlib.sha256()
    for f in sorted((_PACKAGE / "data").rglob("*.py")):
        h.update(f.relative_to(_PACKAGE).as_posix().encode())
        h.update(f.read_bytes())
    return h.hexdigest()


class DataCache:
    """A folder of rendered arrays keyed by content (see the module docstring)."""

    def __init__(self, root: str | Path, max_bytes: int = DEFAULT_MAX_BYTES) -> None:
        self.root = Path(root).expanduser().resolve()
        self.root.mkdir(parents=True, exist_ok=True)
        self.max_bytes = int(max_bytes)
        self._used: int | None = None
        self.hits = 0
        self.misses = 0

    def wrap(self, data: GroundTruthData, options: dict[str, Any]) -> GroundTruthData:
        """``data`` with its rendering cached, or ``data`` itself when it is not procedural.
        ``options``: the constructor options it was built from (its identity with its name)."""
        if data.name not in CACHEABLE:
            return data
        return CachedData(data, self, {"name": data.name, **options})

    # ---- storage ---------------------------------------------------------------------------
    def key(self, identity: dict[str, Any], method: str, factors: np.ndarray) -> str:
        f = np.ascontiguousarray(np.asarray(factors).astype(np.int64, copy=False))
        h = hashlib.sha256(json.dumps({**identity, "method": method, "code": _render_code_fingerprint()},
                                      sort_keys=True).encode())
        h.update(repr(f.shape).encode())
        h.update(f.tobytes())
        return h.hexdigest()

    def path(self, key: str) -> Path:
        return self.root / key[:2] / f"{key}.npy"

    def load(self, key: str) -> np.ndarray | None:
        p = self.path(key)
        try:
            out = np.load(p, allow_pickle=False)
        except (FileNotFoundError, ValueError, OSError):  # missing, or a torn file from elsewhere
            return None
        self.hits += 1
        return out

    def save(self, key: str, array: np.ndarray) -> None:
        if self._used is None:
            self._used = sum(_size(f) for f in self.root.rglob("*.npy"))
        if self._used + array.nbytes > self.max_bytes:
            return
        p = self.path(key)
        p.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=p.parent, prefix=".tmp-", suffix=".part")  # never matches *.npy
        try:
            with os.fdopen(fd, "wb") as fh:
                np.save(fh, array, allow_pickle=False)
            os.replace(tmp, p)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
        self._used += array.nbytes

    def fetch(self, identity: dict[str, Any], method: str, factors: np.ndarray, compute: Any) -> np.ndarray:
        key = self.key(identity, method, factors)
        cached = self.load(key)
        if cached is not None:
            return cached
        self.misses += 1
        out = compute(factors)
        self.save(key, np.asarray(out))
        return out


def _size(path: Path) -> int:
    try:
        return path.stat().st_size
    except FileNotFoundError:  # replaced or removed by another trial meanwhile
        return 0


class CachedData(GroundTruthData):
    """A procedural dataset whose rendered arrays come from a :class:`DataCache`; everything
    else (factors, groups, sampling) is the wrapped dataset's."""

    def __init__(self, inner: GroundTruthData, cache: DataCache, identity: dict[str, Any]) -> None:
        self._inner, self._cache, self._identity = inner, cache, identity
        self.name, self.factor_names, self.factor_sizes = inner.name, inner.factor_names, inner.factor_sizes
        self.channels, self.resolution, self.has_factors = inner.channels, inner.resolution, inner.has_factors
        self.factor_groups = inner.factor_groups

    @property
    def inner(self) -> GroundTruthData:
        return self._inner

    def images(self, factors: np.ndarray) -> np.ndarray:
        return self._cache.fetch(self._identity, "images", factors, self._inner.images)

    def with_resolution(self, resolution: int) -> GroundTruthData:
        return CachedData(self._inner.with_resolution(resolution), self._cache,
                          {**self._identity, "resolution": resolution})

    def sample_factors(self, n: int, rng: np.random.Generator) -> np.ndarray:
        return self._inner.sample_factors(n, rng)

    def __getattr__(self, name: str) -> Any:
        if name.startswith("_"):
            raise AttributeError(name)
        attr = getattr(self._inner, name)  # AttributeError when the dataset has no such method
        if name in CACHED_METHODS:
            return functools.partial(self._cache.fetch, self._identity, name, compute=attr)
        return attr

    def __repr__(self) -> str:
        return f"CachedData({self._inner!r})"
