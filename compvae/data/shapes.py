"""Procedural shapes: one object with an inner detail on a black background, rendered on the fly.

Why this dataset exists: the project's claim is that a parent VAE at low resolution learns the
*coarse* factors (which object, how big, rotated how, where), a mask derived from the parent
isolates the object, and a child VAE at higher resolution can then learn the *fine* factors that
live inside the object. So the generator has

* coarse factors ``shape`` (square, ellipse, triangle), ``scale``, ``rotation``, ``pos_x``,
  ``pos_y`` -- large, easily seen at 32 px;
* fine factors ``detail_size``, ``detail_x``, ``detail_y``, ``detail_intensity`` of a small
  darker disc inside the object -- several pixels across at 64 px, one or two at 32 px.

Geometry is defined in frame units (the image is the unit square) and rendered analytically at
pixel centres with a one-pixel linear edge ramp (coverage = clip(0.5 - signed distance)). That
approximates the box-filtered image, so a render at 64 px area-downsampled to 32 px is close to
a render at 32 px, and resolutions 32..256 all show the same scene.

Invariants (checked exhaustively by the tests):

* the object is fully inside the frame for every factor combination (positions are spaced over
  the range left free by the largest object, the triangle's circumradius at the largest scale);
* the detail disc lies inside the inscribed disc of every shape for every scale, rotation and
  detail factor, with margin, so fine factors change pixels only inside the silhouette;
* rotations span [0, 90) degrees: unambiguous for a square (90-degree symmetry), an ellipse
  (180) and an equilateral triangle (120).

The detail offsets are relative to the object centre and scaled with the object but *not*
rotated with it: the detail's pixel position then depends only on position and scale, not on
rotation, so ``detail_x``/``detail_y`` remain separable for the child. Staying inside the object
under any rotation is guaranteed because the detail stays within the (rotation-invariant)
inscribed disc.

Rendering is vectorised numpy float32: every per-pixel quantity is a sum of a row term and a
column term (broadcast, so only a handful of full-size operations per pixel), in chunks of about
a million pixels to bound memory: about 0.4 s for 4096 images at 64 px on one core.
"""

from __future__ import annotations

import math

import numpy as np

from compvae.data._procedural import ProceduralData

SHAPE_NAMES = ("square", "ellipse", "triangle")

# Object size unit u as a fraction of the frame width, smallest to largest (ratio 1.5).
SCALES = np.linspace(0.125, 0.1875, 6)
ROTATIONS_DEG = np.arange(8) * (90.0 / 8)

# Canonical shapes in units of u (y points down, as in image rows).
SQUARE_HALF_SIDE = 0.9
ELLIPSE_AXES = (1.2, 0.85)
TRIANGLE_INRADIUS = 0.8  # equilateral, vertex up; circumradius = 2 * inradius
# Largest distance from the centre to any point of any shape, in units of u.
MAX_EXTENT = max(SQUARE_HALF_SIDE * math.sqrt(2.0), ELLIPSE_AXES[0], 2.0 * TRIANGLE_INRADIUS)
# Smallest inscribed-disc radius over shapes: the detail must stay inside it.
SAFE_RADIUS = min(SQUARE_HALF_SIDE, ELLIPSE_AXES[1], TRIANGLE_INRADIUS)

# Keep the object this far (frame units) from the border beyond its extent: more than one pixel
# at 32 px, so even the one-pixel edge ramp leaves the outermost pixels black.
BORDER = 0.035
_POS_LO = MAX_EXTENT * SCALES[-1] + BORDER
POSITIONS = np.linspace(_POS_LO, 1.0 - _POS_LO, 16)

# Inner detail, in units of u, relative to the object centre (image-aligned axes).
DETAIL_RADII = np.array([0.20, 0.27, 0.34])
DETAIL_OFFSETS = np.array([-0.22, 0.0, 0.22])
DETAIL_INTENSITIES = np.array([0.0, 0.3, 0.6])  # object is 1.0, background 0.0

OBJECT_VALUE = 1.0
# RGB variant: an orange object, so colour models get a non-grey image with all channels in use.
RGB_COLOR = np.array([1.0, 0.6, 0.2], dtype=np.float32)

FACTOR_NAMES = ["shape", "scale", "rotation", "pos_x", "pos_y",
                "detail_size", "detail_x", "detail_y", "detail_intensity"]
FACTOR_SIZES = [len(SHAPE_NAMES), len(SCALES), len(ROTATIONS_DEG), len(POSITIONS), len(POSITIONS),
                len(DETAIL_RADII), len(DETAIL_OFFSETS), len(DETAIL_OFFSETS), len(DETAIL_INTENSITIES)]
COARSE = ["shape", "scale", "rotation", "pos_x", "pos_y"]
FINE = ["detail_size", "detail_x", "detail_y", "detail_intensity"]



def _clip01(a: np.ndarray) -> np.ndarray:
    """In-place clip to [0, 1]; np.maximum/np.minimum with out= avoid np.clip's temporaries."""
    np.maximum(a, 0.0, out=a)
    np.minimum(a, 1.0, out=a)
    return a


def _halfplanes_coverage(dx: np.ndarray, dy: np.ndarray, normals: np.ndarray,
                         offsets: np.ndarray) -> np.ndarray:
    """Coverage of a convex polygon given as an intersection of half-planes n.p <= h.

    dx (n, 1, R) and dy (n, R, 1) are pixel-centre coordinates relative to the object centre in
    pixels; normals (n, E, 2) are unit outward normals and offsets (n, E) the distances in pixels.
    The coverage of each half-plane is a one-pixel ramp clip(0.5 + h - n.p); the polygon's is
    their product, exact for a pixel crossed by one edge and close at corners.
    """
    cov: np.ndarray | None = None
    for e in range(normals.shape[1]):
        nx = normals[:, e, 0][:, None, None]
        ny = normals[:, e, 1][:, None, None]
        h = offsets[:, e][:, None, None]
        t = (0.5 + h - nx * dx) - ny * dy  # (n,1,R) + (n,R,1) -> one full-size op
        _clip01(t)
        if cov is None:
            cov = t
        else:
            cov *= t
    assert cov is not None
    return cov


def _ellipse_coverage(dx: np.ndarray, dy: np.ndarray, cos: np.ndarray, sin: np.ndarray,
                      a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Coverage of rotated ellipses via the first-order signed distance f / |grad f|.

    f = x'^2/a^2 + y'^2/b^2 - 1 in the ellipse's frame, written as P dx^2 + Q dx dy + S dy^2 - 1
    so that only the cross term needs a full-size product. f/|grad f| is the exact distance to
    first order near the boundary, which is all a one-pixel ramp needs.
    """
    c, s = cos[:, None, None], sin[:, None, None]
    ia2, ib2 = 1.0 / (a * a)[:, None, None], 1.0 / (b * b)[:, None, None]
    p = c * c * ia2 + s * s * ib2
    q = 2.0 * c * s * (ia2 - ib2)
    r = s * s * ia2 + c * c * ib2
    f = (q * dx) * dy
    f += p * dx * dx
    f += r * dy * dy - 1.0
    gx = (2.0 * p * dx) + q * dy
    gy = (q * dx) + 2.0 * r * dy
    gx *= gx
    gy *= gy
    gx += gy
    np.sqrt(gx, out=gx)
    np.maximum(gx, 1e-12, out=gx)
    f /= gx
    np.subtract(0.5, f, out=f)
    return _clip01(f)


def _unit_normals(angles_deg: list[float]) -> np.ndarray:
    rad = np.deg2rad(np.asarray(angles_deg, dtype=np.float64))
    return np.stack([np.cos(rad), np.sin(rad)], axis=1)


# Canonical outward normals (E, 2) and offsets (E,) in units of u.
_SQUARE_NORMALS = _unit_normals([0.0, 90.0, 180.0, 270.0])
_TRIANGLE_NORMALS = _unit_normals([90.0, 210.0, 330.0])  # y down: 90 deg is the bottom edge


class Shapes(ProceduralData):
    """One square/ellipse/triangle with a darker inner disc; 5 coarse and 4 fine factors.

    ``channels=1`` gives a white object on black; ``channels=3`` an orange one. ``path`` is
    accepted only as ``None`` so callers can pass ``path=cfg.data.path`` uniformly.
    """

    def __init__(self, resolution: int = 64, channels: int = 1, path: str | None = None) -> None:
        self._setup("shapes", resolution, channels, path, FACTOR_NAMES, FACTOR_SIZES,
                    {"coarse": COARSE, "fine": FINE})

    def with_resolution(self, resolution: int) -> Shapes:
        """Same factors rendered at another resolution (the geometry is resolution-free)."""
        return Shapes(resolution=resolution, channels=self.channels)

    def images(self, factors: np.ndarray) -> np.ndarray:
        """float32 (n, channels, R, R) in [0, 1]: the rendered objects with their details."""
        f = self.check_factors(factors)
        out = np.empty((len(f), self.channels, self.resolution, self.resolution), np.float32)
        for lo, hi in self._chunks(len(f)):
            grey, _ = self._render(f[lo:hi], with_detail=True)
            if self.channels == 1:
                out[lo:hi, 0] = grey
            else:
                out[lo:hi] = grey[:, None] * RGB_COLOR[None, :, None, None]
        return out

    def silhouettes(self, factors: np.ndarray) -> np.ndarray:
        """float32 (n, 1, R, R) in {0, 1}: pixels whose object coverage is at least one half.

        The detail is part of the object (it is painted inside it), so it is inside the mask.
        """
        f = self.check_factors(factors)
        out = np.empty((len(f), 1, self.resolution, self.resolution), np.float32)
        for lo, hi in self._chunks(len(f)):
            _, cov = self._render(f[lo:hi], with_detail=False)
            out[lo:hi, 0] = cov >= 0.5
        return out

    # ---- rendering -------------------------------------------------------------------------
    def _render(self, f: np.ndarray, with_detail: bool) -> tuple[np.ndarray, np.ndarray]:
        """(grey image, object coverage), both float32 (n, R, R), for validated factors f."""
        n, res = len(f), self.resolution
        centres = (np.arange(res, dtype=np.float32) + 0.5)
        u = (SCALES[f[:, 1]] * res).astype(np.float32)            # size unit in pixels
        cx = (POSITIONS[f[:, 3]] * res).astype(np.float32)
        cy = (POSITIONS[f[:, 4]] * res).astype(np.float32)
        dx = centres[None, None, :] - cx[:, None, None]           # (n, 1, R)
        dy = centres[None, :, None] - cy[:, None, None]           # (n, R, 1)
        theta = np.deg2rad(ROTATIONS_DEG[f[:, 2]])
        cos, sin = np.cos(theta).astype(np.float32), np.sin(theta).astype(np.float32)

        cov = np.empty((n, res, res), np.float32)
        for shape_id in range(len(SHAPE_NAMES)):
            sel = np.flatnonzero(f[:, 0] == shape_id)
            if sel.size == 0:
                continue
            c, s, us = cos[sel], sin[sel], u[sel]
            if SHAPE_NAMES[shape_id] == "ellipse":
                cov[sel] = _ellipse_coverage(dx[sel], dy[sel], c, s,
                                             ELLIPSE_AXES[0] * us, ELLIPSE_AXES[1] * us)
                continue
            if SHAPE_NAMES[shape_id] == "square":
                canon, dist = _SQUARE_NORMALS, SQUARE_HALF_SIDE
            else:
                canon, dist = _TRIANGLE_NORMALS, TRIANGLE_INRADIUS
            # Rotate the canonical normals by theta: n' = (c nx - s ny, s nx + c ny).
            nx = c[:, None] * canon[None, :, 0] - s[:, None] * canon[None, :, 1]
            ny = s[:, None] * canon[None, :, 0] + c[:, None] * canon[None, :, 1]
            normals = np.stack([nx, ny], axis=2).astype(np.float32)
            offsets = (dist * us)[:, None] * np.ones((1, canon.shape[0]), np.float32)
            cov[sel] = _halfplanes_coverage(dx[sel], dy[sel], normals, offsets)
        if not with_detail:
            return cov, cov

        # Detail disc: coverage ramp clip(r + 0.5 - distance), painted as a darker value.
        ddx = dx - (DETAIL_OFFSETS[f[:, 6]] * u)[:, None, None].astype(np.float32)
        ddy = dy - (DETAIL_OFFSETS[f[:, 7]] * u)[:, None, None].astype(np.float32)
        det = ddx * ddx + ddy * ddy
        np.sqrt(det, out=det)
        radius = (DETAIL_RADII[f[:, 5]] * u + 0.5).astype(np.float32)[:, None, None]
        np.subtract(radius, det, out=det)
        _clip01(det)
        darken = (OBJECT_VALUE - DETAIL_INTENSITIES[f[:, 8]]).astype(np.float32)[:, None, None]
        det *= darken
        np.subtract(OBJECT_VALUE, det, out=det)
        det *= cov
        return det, cov
