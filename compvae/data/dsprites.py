"""dSprites from the official ``dsprites_ndarray_co1sh3sc6or40x32y32_64x64.npz``.

The file is a zip of ``.npy`` members: ``imgs`` (737280 x 64 x 64 uint8 in {0, 1}),
``latents_classes`` and ``latents_values`` (737280 x 6) and a pickled ``metadata`` dict.

Why it is loaded the way it is:

* ``imgs`` is 3 GB as uint8 but binary, so it is streamed out of the zip member in blocks and
  kept bit-packed (8 pixels per byte, 377 MB); a compressed npz cannot be memory-mapped, and a
  search runs several trials per machine. Loading happens on the first ``images`` call, so
  constructing the dataset (e.g. to read factor sizes for a config) stays cheap.
* factor sizes come from ``latents_classes`` (max + 1 per column), not hard-coded, so smaller
  files in the same format (tests, subsets) work; the rows must enumerate the full grid, and a
  file in another row order is looked up through a permutation instead of returning wrong images.
* ``metadata`` is never unpickled: nothing in it is needed, and unpickling a data file can run
  arbitrary code.
"""

from __future__ import annotations

import copy
import os
import threading
import zipfile
from pathlib import Path

import numpy as np

from compvae.data._resize import check_resolution, grid_order, resize, row_major_strides
from compvae.data.base import GroundTruthData
from compvae.errors import DataError, first_line

FACTOR_NAMES = ["color", "shape", "scale", "orientation", "pos_x", "pos_y"]
NATIVE_RESOLUTION = 64
_FIX = "expected the official dsprites_ndarray_co1sh3sc6or40x32y32_64x64.npz; re-download it"
_ROWS_PER_BLOCK = 8192  # 32 MB of uint8 pixels per streamed block


class _PackedImages:
    """Lazily loaded, bit-packed ``imgs``; shared by every resolution view of one file."""

    def __init__(self, path: Path, count: int) -> None:
        self.path = path
        self.count = count
        self._packed: np.ndarray | None = None
        self._lock = threading.Lock()

    def __getstate__(self) -> dict[str, object]:
        # Do not ship 377 MB (or a lock) through pickle; the receiver reloads on demand.
        return {"path": self.path, "count": self.count}

    def __setstate__(self, state: dict[str, object]) -> None:
        self.__init__(state["path"], state["count"])  # type: ignore[misc, arg-type]

    def get(self, rows: np.ndarray) -> np.ndarray:
        """uint8 (n, 64, 64) in {0, 1} for file rows ``rows``."""
        with self._lock:
            if self._packed is None:
                self._packed = self._load()
        return np.unpackbits(self._packed[rows], axis=-1, count=NATIVE_RESOLUTION)

    def _load(self) -> np.ndarray:
        side = NATIVE_RESOLUTION
        packed = np.empty((self.count, side, side // 8), dtype=np.uint8)
        row_bytes = side * side
        try:
            with zipfile.ZipFile(self.path) as zf, zf.open("imgs.npy") as fp:
                _read_npy_header(fp)
                for lo in range(0, self.count, _ROWS_PER_BLOCK):
                    hi = min(lo + _ROWS_PER_BLOCK, self.count)
                    buf = fp.read((hi - lo) * row_bytes)
                    if len(buf) != (hi - lo) * row_bytes:
                        raise DataError(f"{self.path}: 'imgs' is truncated at row {lo}; {_FIX}")
                    block = np.frombuffer(buf, dtype=np.uint8).reshape(hi - lo, side, side)
                    if block.max(initial=0) > 1:
                        raise DataError(f"{self.path}: 'imgs' has values other than 0/1 "
                                        f"(max {int(block.max())} near row {lo}); {_FIX}")
                    packed[lo:hi] = np.packbits(block, axis=-1)
        except DataError:
            raise
        except (OSError, zipfile.BadZipFile, EOFError, ValueError) as e:
            raise DataError(f"{self.path}: cannot read 'imgs' ({type(e).__name__}: "
                            f"{first_line(e)}); {_FIX}") from e
        return packed



def _read_npy_header(fp: object) -> tuple[tuple[int, ...], bool, np.dtype]:
    """(shape, fortran_order, dtype) of an open ``.npy`` stream, leaving it at the first byte of data."""
    version = np.lib.format.read_magic(fp)  # type: ignore[arg-type]
    if version == (1, 0):
        return np.lib.format.read_array_header_1_0(fp)  # type: ignore[arg-type]
    return np.lib.format.read_array_header_2_0(fp)  # type: ignore[arg-type]


class DSprites(GroundTruthData):
    """dSprites: factors color, shape, scale, orientation, pos_x, pos_y (sizes 1,3,6,40,32,32).

    Images are 1-channel, binary at 64 px; other resolutions are area-downsampled (or bilinearly
    upsampled) on the fly. ``with_resolution`` views share the loaded images.
    """

    def __init__(self, path: str | os.PathLike[str], resolution: int = 64) -> None:
        self.name = "dsprites"
        self.path = Path(path).expanduser()
        self.resolution = check_resolution("dsprites", resolution)
        self.channels = 1
        self.has_factors = True
        self.factor_names = list(FACTOR_NAMES)
        self.factor_groups = {}
        classes = self._read_index()
        self.factor_sizes = [int(m) + 1 for m in classes.max(axis=0)]
        try:
            self._rows = grid_order(classes, self.factor_sizes)
        except ValueError as e:
            raise DataError(f"{self.path}: 'latents_classes' is not a full factor grid ({e}); {_FIX}") from e
        self._strides = row_major_strides(self.factor_sizes)
        self._store = _PackedImages(self.path, len(classes))

    def _read_index(self) -> np.ndarray:
        """Validate the archive's members and shapes; return ``latents_classes`` (N, 6)."""
        p = self.path
        if not p.exists():
            raise DataError(f"{p}: file not found; download dsprites_ndarray_co1sh3sc6or40x32y32_64x64.npz "
                            "(github.com/google-deepmind/dsprites-dataset) and set data.path to it")
        if not p.is_file():
            raise DataError(f"{p}: is not a file; {_FIX}")
        try:
            with zipfile.ZipFile(p) as zf:
                members = set(zf.namelist())
                missing = [k for k in ("imgs", "latents_classes") if f"{k}.npy" not in members]
                if missing:
                    raise DataError(f"{p}: key(s) {', '.join(repr(k) for k in missing)} missing; {_FIX}")
                with zf.open("imgs.npy") as fp:
                    shape, fortran, dtype = _read_npy_header(fp)
            with np.load(p, allow_pickle=False) as npz:
                classes = np.asarray(npz["latents_classes"])
        except DataError:
            raise
        except (OSError, zipfile.BadZipFile, EOFError, ValueError, KeyError) as e:
            raise DataError(f"{p}: not a readable .npz archive ({type(e).__name__}: {first_line(e)}); {_FIX}") from e
        side = NATIVE_RESOLUTION
        if len(shape) != 3 or tuple(shape[1:]) != (side, side):
            raise DataError(f"{p}: 'imgs' has shape {tuple(shape)}, expected (N, {side}, {side}); {_FIX}")
        if np.dtype(dtype).itemsize != 1 or np.dtype(dtype).kind not in "ub":
            raise DataError(f"{p}: 'imgs' has dtype {dtype}, expected uint8; {_FIX}")
        if fortran:
            raise DataError(f"{p}: 'imgs' is stored in Fortran order; re-save it C-ordered "
                            "(np.savez_compressed(..., imgs=np.ascontiguousarray(imgs)))")
        if classes.ndim != 2 or classes.shape[1] != len(FACTOR_NAMES) or classes.shape[0] != shape[0]:
            raise DataError(f"{p}: 'latents_classes' has shape {classes.shape}, expected ({shape[0]}, "
                            f"{len(FACTOR_NAMES)}) to match 'imgs'; {_FIX}")
        if classes.dtype.kind not in "iu" or (classes.size and classes.min() < 0):
            raise DataError(f"{p}: 'latents_classes' must hold non-negative integer indices, got "
                            f"dtype {classes.dtype}; {_FIX}")
        if classes.shape[0] == 0:
            raise DataError(f"{p}: 'imgs' is empty; {_FIX}")
        return classes

    def with_resolution(self, resolution: int) -> DSprites:
        """A view at another resolution sharing the (lazily) loaded images."""
        view = copy.copy(self)
        view.resolution = check_resolution("dsprites", resolution)
        return view

    def images(self, factors: np.ndarray) -> np.ndarray:
        """float32 (n, 1, R, R) in [0, 1]: the file's image for each factor row."""
        f = self.check_factors(factors)
        index = f @ self._strides
        rows = index if self._rows is None else self._rows[index]
        binary = self._store.get(rows)
        return resize(binary[:, None].astype(np.float32), self.resolution)
