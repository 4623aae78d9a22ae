"""3dshapes from the official ``3dshapes.h5``.

The file holds ``images`` (480000 x 64 x 64 x 3 uint8, channels last) and ``labels``
(480000 x 6 float *values*: hues in [0, 1), scale, shape id, orientation in degrees).

Why it is loaded the way it is:

* images are read on demand from the HDF5 file (5.9 GB decompressed), never loaded whole: a
  search runs several trials per machine and the OS page cache is shared between them, a copy
  in each process is not. Unique rows are read in sorted order, chunk by chunk when the file is
  chunked (see :func:`compvae.data._resize.read_rows`).
* labels are values, so each column's sorted unique values become that factor's indices
  (sizes 10, 10, 10, 8, 4, 15 for the official file); sizes come from the file, so smaller
  files in the same format work. Values are rounded to 6 decimals first so float noise in a
  re-exported file cannot split one level into two.
* the h5py handle is opened lazily per process (h5py handles must not cross a fork) and is
  dropped when pickled.
"""

from __future__ import annotations

import copy
import os
from pathlib import Path
from typing import Any

import h5py
import numpy as np

from compvae.data._resize import check_resolution, grid_order, read_rows, resize, row_major_strides
from compvae.data.base import GroundTruthData
from compvae.errors import DataError, first_line

FACTOR_NAMES = ["floor_hue", "wall_hue", "object_hue", "scale", "shape", "orientation"]
NATIVE_RESOLUTION = 64
_FIX = "expected the official 3dshapes.h5 with 'images' (N, 64, 64, 3) uint8 and 'labels' (N, 6)"
_CHUNK_CACHE_BYTES = 32 << 20  # keeps recently decompressed chunks of a compressed file



class Shapes3D(GroundTruthData):
    """3dshapes: factors floor_hue, wall_hue, object_hue, scale, shape, orientation; RGB images.

    ``factor_values[k]`` holds the label value of each index of factor ``k``.
    """

    def __init__(self, path: str | os.PathLike[str], resolution: int = 64) -> None:
        self.name = "shapes3d"
        self.path = Path(path).expanduser()
        self.resolution = check_resolution("shapes3d", resolution)
        self.channels = 3
        self.has_factors = True
        self.factor_names = list(FACTOR_NAMES)
        self.factor_groups = {}
        labels = self._read_labels()
        columns = [np.unique(np.round(labels[:, k], 6), return_inverse=True) for k in range(labels.shape[1])]
        self.factor_values: list[np.ndarray] = [values for values, _ in columns]
        self.factor_sizes = [len(values) for values in self.factor_values]
        classes = np.stack([inverse.reshape(-1) for _, inverse in columns], axis=1)
        try:
            self._rows = grid_order(classes, self.factor_sizes)
        except ValueError as e:
            raise DataError(f"{self.path}: 'labels' do not form a full factor grid ({e}); {_FIX}") from e
        self._strides = row_major_strides(self.factor_sizes)
        self._handle: tuple[int, h5py.File] | None = None

    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()
        state["_handle"] = None
        return state

    def _read_labels(self) -> np.ndarray:
        """Validate the file's datasets and shapes; return ``labels`` as float64 (N, 6)."""
        p = self.path
        if not p.exists():
            raise DataError(f"{p}: file not found; download 3dshapes.h5 "
                            "(storage.googleapis.com/3d-shapes/3dshapes.h5) and set data.path to it")
        if not p.is_file():
            raise DataError(f"{p}: is not a file; {_FIX}")
        try:
            with h5py.File(p, "r") as f:
                for key in ("images", "labels"):
                    if not isinstance(f.get(key), h5py.Dataset):
                        raise DataError(f"{p}: dataset '{key}' missing; {_FIX}")
                images, labels_ds = f["images"], f["labels"]
                shape, dtype = tuple(images.shape), images.dtype
                side = NATIVE_RESOLUTION
                if len(shape) != 4 or shape[1:] != (side, side, 3):
                    raise DataError(f"{p}: 'images' has shape {shape}, expected (N, {side}, {side}, 3); {_FIX}")
                if dtype != np.uint8:
                    raise DataError(f"{p}: 'images' has dtype {dtype}, expected uint8; {_FIX}")
                if labels_ds.ndim != 2 or labels_ds.shape != (shape[0], len(FACTOR_NAMES)):
                    raise DataError(f"{p}: 'labels' has shape {labels_ds.shape}, expected ({shape[0]}, "
                                    f"{len(FACTOR_NAMES)}) to match 'images'; {_FIX}")
                if labels_ds.dtype.kind not in "fiu":
                    raise DataError(f"{p}: 'labels' has dtype {labels_ds.dtype}, expected float; {_FIX}")
                labels = np.asarray(labels_ds[()], dtype=np.float64)
        except DataError:
            raise
        except (OSError, ValueError, KeyError, TypeError) as e:
            raise DataError(f"{p}: not a readable HDF5 file ({type(e).__name__}: {first_line(e)}); {_FIX}") from e
        if len(labels) == 0:
            raise DataError(f"{p}: 'images' is empty; {_FIX}")
        if not np.isfinite(labels).all():
            raise DataError(f"{p}: 'labels' contains NaN or inf; {_FIX}")
        return labels

    def _images_dataset(self) -> h5py.Dataset:
        pid = os.getpid()
        if self._handle is None or self._handle[0] != pid:
            try:
                handle = h5py.File(self.path, "r", rdcc_nbytes=_CHUNK_CACHE_BYTES)
            except OSError as e:
                raise DataError(f"{self.path}: cannot reopen ({first_line(e)}); {_FIX}") from e
            self._handle = (pid, handle)
        return self._handle[1]["images"]

    def with_resolution(self, resolution: int) -> Shapes3D:
        """A view at another resolution sharing the labels (and the open file in this process)."""
        view = copy.copy(self)
        view.resolution = check_resolution("shapes3d", resolution)
        return view

    def images(self, factors: np.ndarray) -> np.ndarray:
        """float32 (n, 3, R, R) in [0, 1], channels first, for each factor row."""
        f = self.check_factors(factors)
        index = f @ self._strides
        rows = index if self._rows is None else self._rows[index]
        try:
            raw = read_rows(self._images_dataset(), rows)
        except DataError:
            raise
        except (OSError, ValueError) as e:
            raise DataError(f"{self.path}: cannot read 'images' ({type(e).__name__}: "
                            f"{first_line(e)}); the file may be corrupt; {_FIX}") from e
        x = raw.transpose(0, 3, 1, 2).astype(np.float32)
        x *= np.float32(1.0 / 255.0)
        return resize(x, self.resolution)
