"""Procedural scenes: a textured target, a flat distractor behind it and a structured background.

The benchmark on which masking can matter (design and measurements: docs/benchmark.md). The
target's texture (the fine factors) is resolved at 64 px and averages away at 32 px; the distractor and the background (the outside factors) vary outside the target, so a
mask of the target removes them from what the child must model.
"""

from __future__ import annotations

import numpy as np

from compvae.data._procedural import ProceduralData
from compvae.data._resize import check_resolution
from compvae.data.shapes import (
    _SQUARE_NORMALS,
    _TRIANGLE_NORMALS,
    ELLIPSE_AXES,
    MAX_EXTENT,
    SHAPE_NAMES,
    SQUARE_HALF_SIDE,
    TRIANGLE_INRADIUS,
    _clip01,
    _ellipse_coverage,
    _halfplanes_coverage,
)

# Target: size unit u (frame widths) and centre positions that keep it inside the frame.
TARGET_SCALES = np.array([0.15, 0.17, 0.19])
_TARGET_LO = MAX_EXTENT * TARGET_SCALES[-1] + 0.03
TARGET_POSITIONS = np.linspace(_TARGET_LO, 1.0 - _TARGET_LO, 3)
# Texture inside the target, on a grid of detail pixels (1 / detail_resolution of the frame):
# a checker carrier of fixed phase whose amplitude the fine factors set per 2x2 block of detail
# pixels: its level (contrast) and which half of the target carries it (the split line through
# the target's centre, vertical or horizontal, and the side). Every 2x2 block of detail pixels
# averages to TEXTURE_MEAN, so below detail_resolution the texture vanishes.
TEXTURE_CONTRASTS = np.array([0.06, 0.27, 0.48])
TEXTURE_ORIENTATIONS = ("vertical", "horizontal")  # the split line between textured and flat halves
TEXTURE_SIDES = ("before", "after")  # left/top or right/bottom half carries the texture
TEXTURE_MEAN = 0.5
DIM_HALF = 0.5  # the other half of the target carries the texture at this fraction
# Distractor (drawn behind the target) and background.
DISTRACTOR_SCALES = np.array([0.07, 0.09])
_DISTRACTOR_LO = MAX_EXTENT * DISTRACTOR_SCALES[-1] + 0.03
DISTRACTOR_POSITIONS = np.linspace(_DISTRACTOR_LO, 1.0 - _DISTRACTOR_LO, 4)
DISTRACTOR_VALUES = np.array([0.35, 0.55, 0.75])
BACKGROUND_LEVELS = np.array([0.1, 0.18, 0.26])
BACKGROUND_GRADIENT = 0.1  # the ramp adds -/+ this much across the frame
GRADIENT_DIRECTIONS = np.array([[1.0, 0.0], [-1.0, 0.0], [0.0, 1.0], [0.0, -1.0]])
# RGB variant: a tint per channel (all channels in use, still in [0, 1]).
RGB_TINT = np.array([1.0, 0.85, 0.7], dtype=np.float32)

COARSE = ["shape", "scale", "pos_x", "pos_y"]
FINE = ["texture_contrast", "texture_orientation", "texture_side"]
OUTSIDE = ["distractor_shape", "distractor_scale", "distractor_x", "distractor_y",
           "distractor_value", "background_level", "background_gradient"]
FACTOR_NAMES = COARSE + FINE + OUTSIDE
FACTOR_SIZES = [len(SHAPE_NAMES), len(TARGET_SCALES), len(TARGET_POSITIONS), len(TARGET_POSITIONS),
                len(TEXTURE_CONTRASTS), len(TEXTURE_ORIENTATIONS), len(TEXTURE_SIDES),
                len(SHAPE_NAMES), len(DISTRACTOR_SCALES), len(DISTRACTOR_POSITIONS),
                len(DISTRACTOR_POSITIONS), len(DISTRACTOR_VALUES), len(BACKGROUND_LEVELS),
                len(GRADIENT_DIRECTIONS)]
_COL = {name: i for i, name in enumerate(FACTOR_NAMES)}


def _coverage(shape_ids: np.ndarray, u: np.ndarray, cx: np.ndarray, cy: np.ndarray,
              res: int) -> np.ndarray:
    """Anti-aliased coverage (n, R, R) of upright squares/ellipses/triangles (pixel units)."""
    centres = np.arange(res, dtype=np.float32) + 0.5
    dx = centres[None, None, :] - cx[:, None, None]
    dy = centres[None, :, None] - cy[:, None, None]
    cov = np.empty((len(u), res, res), np.float32)
    ones, zeros = np.ones(len(u), np.float32), np.zeros(len(u), np.float32)
    for shape_id, shape in enumerate(SHAPE_NAMES):
        sel = np.flatnonzero(shape_ids == shape_id)
        if sel.size == 0:
            continue
        us = u[sel]
        if shape == "ellipse":
            cov[sel] = _ellipse_coverage(dx[sel], dy[sel], ones[sel], zeros[sel],
                                         ELLIPSE_AXES[0] * us, ELLIPSE_AXES[1] * us)
            continue
        canon, dist = ((_SQUARE_NORMALS, SQUARE_HALF_SIDE) if shape == "square"
                       else (_TRIANGLE_NORMALS, TRIANGLE_INRADIUS))
        normals = np.broadcast_to(canon[None].astype(np.float32), (sel.size, *canon.shape))
        offsets = (dist * us)[:, None] * np.ones((1, canon.shape[0]), np.float32)
        cov[sel] = _halfplanes_coverage(dx[sel], dy[sel], normals, offsets)
    return cov


def texture(f: np.ndarray, res: int, detail_resolution: int) -> np.ndarray:
    """The target's texture (n, R, R): exact on the detail grid at or above its resolution,
    the flat mean below it (the area average of any 2x2 block)."""
    n = len(f)
    if res < detail_resolution:
        return np.full((n, res, res), TEXTURE_MEAN, np.float32)
    cell = np.arange(res) * detail_resolution // res  # detail pixel of each pixel row/column
    carrier = 2.0 * ((cell[:, None] + cell[None, :]) % 2) - 1.0  # checker, fixed phase
    # the amplitude is constant on each 2x2 block of detail pixels: decide it at the block centre
    block = (2 * (cell // 2) + 1) / detail_resolution  # frame coordinate of each block's centre
    cx = TARGET_POSITIONS[f[:, _COL["pos_x"]]][:, None, None]
    cy = TARGET_POSITIONS[f[:, _COL["pos_y"]]][:, None, None]
    vertical = (f[:, _COL["texture_orientation"]] == 0)[:, None, None]
    after = (f[:, _COL["texture_side"]] == 1)[:, None, None]
    beyond = np.where(vertical, block[None, None, :] >= cx, block[None, :, None] >= cy)
    contrast = TEXTURE_CONTRASTS[f[:, _COL["texture_contrast"]]][:, None, None]
    amplitude = np.where(beyond == after, contrast, DIM_HALF * contrast)
    return (TEXTURE_MEAN + amplitude * carrier[None]).astype(np.float32)


class Scenes(ProceduralData):
    """Textured target + flat distractor + background ramp; factor groups coarse, fine, outside.

    Edges get a one-pixel ramp at every resolution; the texture is defined on a grid of
    ``detail_resolution`` and is flat below it, as an area-averaging camera would see it.
    """

    def __init__(self, resolution: int = 64, channels: int = 1, path: str | None = None,
                 detail_resolution: int = 64) -> None:
        self._setup("scenes", resolution, channels, path, FACTOR_NAMES, FACTOR_SIZES,
                    {"coarse": COARSE, "fine": FINE, "outside": OUTSIDE})
        self.detail_resolution = check_resolution("scenes detail", detail_resolution)

    def with_resolution(self, resolution: int) -> Scenes:
        return Scenes(resolution=resolution, channels=self.channels,
                      detail_resolution=self.detail_resolution)

    def images(self, factors: np.ndarray) -> np.ndarray:
        """float32 (n, channels, R, R) in [0, 1]."""
        f = self.check_factors(factors)
        out = np.empty((len(f), self.channels, self.resolution, self.resolution), np.float32)
        for lo, hi in self._chunks(len(f)):
            grey = self._render(f[lo:hi])
            out[lo:hi] = grey[:, None] if self.channels == 1 else grey[:, None] * RGB_TINT[None, :, None, None]
        return out

    def silhouettes(self, factors: np.ndarray) -> np.ndarray:
        """float32 (n, 1, R, R) in {0, 1}: pixels at least half covered by the target."""
        f = self.check_factors(factors)
        out = np.empty((len(f), 1, self.resolution, self.resolution), np.float32)
        for lo, hi in self._chunks(len(f)):
            out[lo:hi, 0] = self._target_coverage(f[lo:hi]) >= 0.5
        return out

    def detail_regions(self, factors: np.ndarray) -> np.ndarray:
        """float32 (n, 1, R, R) in {0, 1}: every pixel the fine factors can change (the texture
        fills the target, so its silhouette plus the anti-aliased rim)."""
        f = self.check_factors(factors)
        out = np.empty((len(f), 1, self.resolution, self.resolution), np.float32)
        for lo, hi in self._chunks(len(f)):
            out[lo:hi, 0] = self._target_coverage(f[lo:hi]) > 0
        return out

    # ---- rendering -------------------------------------------------------------------------
    def _target_coverage(self, f: np.ndarray) -> np.ndarray:
        res = self.resolution
        u = (TARGET_SCALES[f[:, _COL["scale"]]] * res).astype(np.float32)
        cx = (TARGET_POSITIONS[f[:, _COL["pos_x"]]] * res).astype(np.float32)
        cy = (TARGET_POSITIONS[f[:, _COL["pos_y"]]] * res).astype(np.float32)
        return _coverage(f[:, _COL["shape"]], u, cx, cy, res)

    def _render(self, f: np.ndarray) -> np.ndarray:
        res = self.resolution
        coords = (np.arange(res, dtype=np.float32) + 0.5) / res  # frame units
        # background: a level plus a linear ramp along one of four directions
        direction = GRADIENT_DIRECTIONS[f[:, _COL["background_gradient"]]].astype(np.float32)
        level = BACKGROUND_LEVELS[f[:, _COL["background_level"]]].astype(np.float32)
        img = (level[:, None, None]
               + 2.0 * BACKGROUND_GRADIENT * direction[:, 0, None, None] * (coords[None, None, :] - 0.5)
               + 2.0 * BACKGROUND_GRADIENT * direction[:, 1, None, None] * (coords[None, :, None] - 0.5))
        # distractor: flat, behind the target
        du = (DISTRACTOR_SCALES[f[:, _COL["distractor_scale"]]] * res).astype(np.float32)
        dcx = (DISTRACTOR_POSITIONS[f[:, _COL["distractor_x"]]] * res).astype(np.float32)
        dcy = (DISTRACTOR_POSITIONS[f[:, _COL["distractor_y"]]] * res).astype(np.float32)
        dcov = _coverage(f[:, _COL["distractor_shape"]], du, dcx, dcy, res)
        dval = DISTRACTOR_VALUES[f[:, _COL["distractor_value"]]].astype(np.float32)[:, None, None]
        img += dcov * (dval - img)
        # target: its texture, edges anti-aliased
        tcov = self._target_coverage(f)
        tex = texture(f, res, self.detail_resolution)
        img += tcov * (tex - img)
        return _clip01(img)
