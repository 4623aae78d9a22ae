"""Helpers shared by the dataset modules: resolution checks, resizing and HDF5 row reads.

Kept in one private module so every dataset validates ``resolution`` with the same one-line
error, resizes with the same filters (area when shrinking, bilinear when enlarging, so that a
64 px file viewed at 32 px is the pixel-area average the parent would have seen from a real
32 px camera) and reads HDF5 rows without loading multi-gigabyte files into memory.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from compvae.errors import ConfigError

MIN_RESOLUTION = 32
MAX_RESOLUTION = 256


def check_resolution(name: str, resolution: object) -> int:
    """Validate a requested resolution; the models support 32..256 px, so anything else is a config error."""
    if (isinstance(resolution, bool) or not isinstance(resolution, int | np.integer)
            or not MIN_RESOLUTION <= int(resolution) <= MAX_RESOLUTION):
        raise ConfigError(f"{name}: resolution must be an integer in {MIN_RESOLUTION}..{MAX_RESOLUTION}, "
                          f"got {resolution!r}")
    return int(resolution)


def check_channels(name: str, channels: object) -> int:
    """Validate a channel count: grey (1) or RGB (3) are the only layouts the models and figures use."""
    if isinstance(channels, bool) or channels not in (1, 3):
        raise ConfigError(f"{name}: channels must be 1 or 3, got {channels!r}")
    return int(channels)  # type: ignore[call-overload]


def resize(images: np.ndarray, resolution: int) -> np.ndarray:
    """Resize float images (n, C, H, W) in [0, 1] to (n, C, R, R).

    Area interpolation when shrinking averages exactly the source pixels that cover a target
    pixel (no aliasing); bilinear when enlarging avoids blocky nearest-neighbour artefacts.
    Returns a C-contiguous float32 array; the input is returned unchanged when already at size.
    """
    x = np.ascontiguousarray(images, dtype=np.float32)
    if x.shape[-2:] == (resolution, resolution):
        return x
    if x.shape[0] == 0:
        return np.zeros((0, x.shape[1], resolution, resolution), np.float32)
    t = torch.from_numpy(x)
    if resolution <= min(x.shape[-2:]):
        out = F.interpolate(t, size=(resolution, resolution), mode="area")
    else:
        out = F.interpolate(t, size=(resolution, resolution), mode="bilinear", align_corners=False)
    return np.ascontiguousarray(out.clamp_(0.0, 1.0).numpy(), dtype=np.float32)


def center_crop_square(image: np.ndarray) -> np.ndarray:
    """Central square crop of an (H, W, ...) array, so non-square photos (e.g. CelebA 178x218)
    are resized without distorting the aspect ratio."""
    h, w = image.shape[:2]
    side = min(h, w)
    top, left = (h - side) // 2, (w - side) // 2
    return image[top:top + side, left:left + side]


def read_rows(dataset: Any, rows: np.ndarray) -> np.ndarray:
    """Rows ``rows`` (any order, repeats allowed) of an h5py dataset, without reading the rest.

    h5py fancy indexing is slow and needs sorted unique indices, and a compressed chunked
    dataset decompresses a whole chunk per access. So unique rows are read in sorted order,
    one row at a time for contiguous data and one chunk at a time (each needed chunk read
    once) for chunked data, then scattered back into the requested order.
    """
    rows = np.asarray(rows, dtype=np.int64)
    uniq, inverse = np.unique(rows, return_inverse=True)
    out = np.empty((len(uniq),) + tuple(dataset.shape[1:]), dtype=dataset.dtype)
    chunk_rows = int(dataset.chunks[0]) if dataset.chunks else 1
    if len(uniq) == 0:
        return out
    if chunk_rows <= 1:
        for j, r in enumerate(uniq):
            out[j] = dataset[int(r)]
    else:
        blocks = uniq // chunk_rows
        starts = np.flatnonzero(np.r_[True, blocks[1:] != blocks[:-1]])
        ends = np.r_[starts[1:], len(uniq)]
        for s, e in zip(starts, ends, strict=True):
            first = int(blocks[s]) * chunk_rows
            last = int(uniq[e - 1]) + 1
            block = dataset[first:last]
            out[s:e] = block[uniq[s:e] - first]
    return out[inverse]


def row_major_strides(sizes: list[int]) -> np.ndarray:
    """Strides of the row-major (last factor fastest) index over a factor grid, as in
    disentanglement_lib's ``StateSpaceAtomIndex``: index = factors @ strides."""
    strides = np.ones(len(sizes), dtype=np.int64)
    for k in range(len(sizes) - 2, -1, -1):
        strides[k] = strides[k + 1] * sizes[k + 1]
    return strides


def grid_order(classes: np.ndarray, sizes: list[int]) -> np.ndarray | None:
    """Map row-major factor indices to file rows, for files whose rows enumerate a factor grid.

    Returns ``None`` when row ``i`` already holds grid index ``i`` (the official files), else the
    permutation ``rows[grid_index]``. Raises ``ValueError`` (the caller adds the file name) when
    the rows are not exactly one image per factor combination, because lookups would then
    silently return the wrong image.
    """
    n = len(classes)
    if n != int(np.prod(sizes, dtype=np.int64)):
        raise ValueError(f"{n} rows but the factor sizes {sizes} span {int(np.prod(sizes))} combinations")
    index = classes.astype(np.int64, copy=False) @ row_major_strides(sizes)
    if np.array_equal(index, np.arange(n, dtype=np.int64)):
        return None
    counts = np.bincount(index, minlength=n)
    if (counts != 1).any():
        raise ValueError(f"{int((counts == 0).sum())} factor combinations are missing and others repeated")
    rows = np.empty(n, dtype=np.int64)
    rows[index] = np.arange(n, dtype=np.int64)
    return rows
