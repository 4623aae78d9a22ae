"""Unlabelled images: a folder of PNG/JPEG files or an HDF5 file with an ``images`` dataset.

No ground-truth factors (e.g. CelebA), so the dataset exposes one factor ``index`` of size N and
``has_factors = False``: the trainer and the unsupervised/reconstruction metrics use the same
``images(factors)`` path, while supervised metrics know to skip it.

Why it is loaded the way it is:

* images are decoded on demand, never all at start-up: CelebA has 200k JPEGs and a search starts
  many trials. Only the first image is decoded eagerly, so a wrong folder fails at construction.
* every image is centre-cropped to a square and then resized (area down, bilinear up), so
  non-square photos keep their aspect ratio and mixed sizes in one folder work.
* channels are converted the way PIL does (grey -> repeated RGB, RGB -> ITU-R 601 luma, alpha
  dropped), identically for folders and HDF5.
* HDF5 ``images`` may be (N, H, W) grey, (N, H, W, C) channels-last or (N, C, H, W)
  channels-first, uint8 (0..255) or float (0..1).
"""

from __future__ import annotations

import copy
import os
from pathlib import Path
from typing import Any

import h5py
import numpy as np
from PIL import Image

from compvae.data._resize import (
    center_crop_square,
    check_channels,
    check_resolution,
    read_rows,
    resize,
)
from compvae.data.base import GroundTruthData
from compvae.errors import DataError, first_line

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg")
_LUMA = np.array([0.299, 0.587, 0.114], dtype=np.float32)
_FIX = "give a folder of .png/.jpg images or an HDF5 file with an 'images' dataset (N, H, W[, C]) uint8"



def _convert_channels(x: np.ndarray, channels: int) -> np.ndarray:
    """(n, C, H, W) float with C in {1, 3, 4} -> (n, channels, H, W)."""
    if x.shape[1] == 4:
        x = x[:, :3]
    if x.shape[1] == channels:
        return x
    if channels == 3:
        return np.repeat(x, 3, axis=1)
    return np.einsum("nchw,c->nhw", x, _LUMA)[:, None]


class ImageFiles(GroundTruthData):
    """Images without factors; ``images([[i], [j]])`` returns images ``i`` and ``j``.

    ``files`` lists the image paths in index order (sorted relative paths) for a folder.
    """

    def __init__(self, path: str | os.PathLike[str], resolution: int = 64, channels: int = 3) -> None:
        self.name = "images"
        self.path = Path(path).expanduser()
        self.resolution = check_resolution("images", resolution)
        self.channels = check_channels("images", channels)
        self.has_factors = False
        self.factor_groups = {}
        self.files: list[Path] = []
        self._h5_layout: str | None = None  # "nhw", "nhwc" or "nchw" for HDF5 files
        self._handle: tuple[int, h5py.File] | None = None
        p = self.path
        if not p.exists():
            raise DataError(f"{p}: not found; {_FIX}")
        if p.is_dir():
            self.files = sorted((f for f in p.rglob("*") if f.suffix.lower() in IMAGE_SUFFIXES and f.is_file()),
                                key=lambda f: f.relative_to(p).as_posix())
            if not self.files:
                raise DataError(f"{p}: no .png/.jpg/.jpeg images found in the folder; {_FIX}")
            count = len(self.files)
            self._decode_file(self.files[0])  # fail now, not mid-training, on an unreadable folder
        elif h5py.is_hdf5(p):
            count = self._inspect_hdf5()
        else:
            raise DataError(f"{p}: neither a folder nor an HDF5 file; {_FIX}")
        self.factor_names = ["index"]
        self.factor_sizes = [count]

    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()
        state["_handle"] = None
        return state

    # ---- HDF5 ----------------------------------------------------------------------------------
    def _inspect_hdf5(self) -> int:
        p = self.path
        try:
            with h5py.File(p, "r") as f:
                ds = f.get("images")
                if not isinstance(ds, h5py.Dataset):
                    raise DataError(f"{p}: dataset 'images' missing; {_FIX}")
                shape, dtype = tuple(ds.shape), ds.dtype
        except DataError:
            raise
        except (OSError, ValueError, KeyError, TypeError) as e:
            raise DataError(f"{p}: not a readable HDF5 file ({type(e).__name__}: {first_line(e)}); {_FIX}") from e
        if len(shape) == 3:
            layout = "nhw"
        elif len(shape) == 4 and shape[3] in (1, 3, 4):
            layout = "nhwc"
        elif len(shape) == 4 and shape[1] in (1, 3):
            layout = "nchw"
        else:
            raise DataError(f"{p}: 'images' has shape {shape}, expected (N, H, W), (N, H, W, C) or "
                            f"(N, C, H, W) with C in 1, 3, 4; {_FIX}")
        if dtype != np.uint8 and dtype.kind != "f":
            raise DataError(f"{p}: 'images' has dtype {dtype}, expected uint8 (0..255) or float (0..1); {_FIX}")
        if shape[0] == 0 or min(shape[1:]) == 0:
            raise DataError(f"{p}: 'images' is empty (shape {shape}); {_FIX}")
        self._h5_layout = layout
        return int(shape[0])

    def _h5_images(self, rows: np.ndarray) -> np.ndarray:
        pid = os.getpid()
        try:
            if self._handle is None or self._handle[0] != pid:
                self._handle = (pid, h5py.File(self.path, "r"))
            ds = self._handle[1]["images"]
            raw = read_rows(ds, rows)
        except (OSError, ValueError, KeyError) as e:
            raise DataError(f"{self.path}: cannot read 'images' ({type(e).__name__}: {first_line(e)}); "
                            "the file may be corrupt") from e
        x = raw.astype(np.float32)
        if raw.dtype == np.uint8:
            x *= np.float32(1.0 / 255.0)
        else:
            np.clip(x, 0.0, 1.0, out=x)
        if self._h5_layout == "nhw":
            x = x[:, None]
        elif self._h5_layout == "nhwc":
            x = x.transpose(0, 3, 1, 2)
        if x.shape[2] != x.shape[3]:
            x = center_crop_square(x.transpose(2, 3, 0, 1)).transpose(2, 3, 0, 1)
        return resize(_convert_channels(x, self.channels), self.resolution)

    # ---- folder ------------------------------------------------------------------------------
    def _decode_file(self, file: Path) -> np.ndarray:
        """float32 (channels, H, H) in [0, 1]: one decoded, centre-cropped image."""
        try:
            with Image.open(file) as im:
                rgb = np.asarray(im.convert("RGB" if self.channels == 3 else "L"))
        except (OSError, ValueError, Image.DecompressionBombError) as e:
            raise DataError(f"{file}: unreadable image ({type(e).__name__}: {first_line(e)}); "
                            "remove or replace the file") from e
        square = center_crop_square(rgb)
        if square.ndim == 2:
            square = square[:, :, None]
        return square.transpose(2, 0, 1).astype(np.float32) * np.float32(1.0 / 255.0)

    def _folder_images(self, rows: np.ndarray) -> np.ndarray:
        out = np.empty((len(rows), self.channels, self.resolution, self.resolution), np.float32)
        decoded = [self._decode_file(self.files[int(r)]) for r in rows]
        # Resize images of equal size together: one interpolate call per size, not per image.
        sides = np.array([d.shape[-1] for d in decoded], dtype=np.int64)
        for side in np.unique(sides):
            sel = np.flatnonzero(sides == side)
            out[sel] = resize(np.stack([decoded[i] for i in sel]), self.resolution)
        return out

    # ---- interface -----------------------------------------------------------------------------
    def with_resolution(self, resolution: int) -> ImageFiles:
        """A view at another resolution sharing the file list (and open HDF5 handle)."""
        view = copy.copy(self)
        view.resolution = check_resolution("images", resolution)
        return view

    def images(self, factors: np.ndarray) -> np.ndarray:
        """float32 (n, channels, R, R) in [0, 1] for index rows (n, 1)."""
        rows = self.check_factors(factors)[:, 0]
        if len(rows) == 0:
            return np.zeros((0, self.channels, self.resolution, self.resolution), np.float32)
        if self.files:
            return self._folder_images(rows)
        return self._h5_images(rows)
