"""Tests for ``compvae.data``: the procedural shapes and the file-backed datasets.

File datasets are exercised on small files written in the exact official formats (same keys,
dtypes and image shapes, fewer factor levels), so no download is needed. Nothing here is timed.
"""

from __future__ import annotations

import itertools
import math
import pickle
import zipfile
from collections.abc import Callable
from pathlib import Path

import h5py
import numpy as np
import pytest
from PIL import Image

from compvae.data import GroundTruthData, get_dataset
from compvae.data._resize import read_rows, resize, row_major_strides
from compvae.data.images import ImageFiles
from compvae.data.shapes import (
    DETAIL_OFFSETS,
    DETAIL_RADII,
    ELLIPSE_AXES,
    MAX_EXTENT,
    POSITIONS,
    SAFE_RADIUS,
    SCALES,
    SQUARE_HALF_SIDE,
    TRIANGLE_INRADIUS,
    Shapes,
)
from compvae.errors import ConfigError, DataError

# ------------------------------------------------------------------------------------------------
# small files in the official formats
# ------------------------------------------------------------------------------------------------
DSPRITES_SIZES = [1, 3, 2, 4, 3, 3]
SHAPES3D_VALUES = [
    np.linspace(0.0, 0.9, 10)[[0, 5]],       # floor_hue
    np.linspace(0.0, 0.9, 10)[[2, 7]],       # wall_hue
    np.linspace(0.0, 0.9, 10)[[1, 9]],       # object_hue
    np.linspace(0.75, 1.25, 8)[[0, 7]],      # scale
    np.array([0.0, 3.0]),                    # shape
    np.linspace(-30.0, 30.0, 15)[[0, 7, 14]],  # orientation
]


def _grid(sizes: list[int]) -> np.ndarray:
    """Row-major enumeration of a factor grid, as in the official files."""
    return np.indices(sizes).reshape(len(sizes), -1).T.astype(np.int64)


def write_dsprites(path: Path, *, order: np.ndarray | None = None, compressed: bool = True,
                   **overrides: np.ndarray) -> dict[str, np.ndarray]:
    """A small dSprites npz with the official keys and dtypes; returns the arrays written."""
    classes = _grid(DSPRITES_SIZES)
    rng = np.random.default_rng(0)
    imgs = rng.integers(0, 2, size=(len(classes), 64, 64), dtype=np.uint8)  # distinct per row
    if order is not None:
        classes, imgs = classes[order], imgs[order]
    arrays: dict[str, np.ndarray] = {
        "imgs": imgs,
        "latents_classes": classes,
        "latents_values": classes.astype(np.float64) * 0.5,
        "metadata": np.array({"latents_sizes": np.array(DSPRITES_SIZES),
                              "latents_names": ("color", "shape", "scale", "orientation", "posX", "posY")},
                             dtype=object),
    }
    arrays.update(overrides)
    arrays = {k: v for k, v in arrays.items() if v is not None}
    (np.savez_compressed if compressed else np.savez)(path, **arrays)
    return arrays


def write_shapes3d(path: Path, *, order: np.ndarray | None = None, chunked: bool = False,
                   images: np.ndarray | None = None, labels: np.ndarray | None = None,
                   skip: str | None = None) -> dict[str, np.ndarray]:
    """A small 3dshapes.h5 (channels-last uint8 images, float label values)."""
    sizes = [len(v) for v in SHAPES3D_VALUES]
    classes = _grid(sizes)
    lab = np.stack([SHAPES3D_VALUES[k][classes[:, k]] for k in range(6)], axis=1)
    rng = np.random.default_rng(1)
    imgs = rng.integers(0, 256, size=(len(classes), 64, 64, 3), dtype=np.uint8)
    if order is not None:
        lab, imgs = lab[order], imgs[order]
    imgs = imgs if images is None else images
    lab = lab if labels is None else labels
    with h5py.File(path, "w") as f:
        kw = {"chunks": (5, 64, 64, 3), "compression": "gzip"} if chunked else {}
        if skip != "images":
            f.create_dataset("images", data=imgs, **kw)
        if skip != "labels":
            f.create_dataset("labels", data=lab)
    return {"images": imgs, "labels": lab}


def write_image_folder(root: Path) -> list[Path]:
    """Three images of different sizes/modes (one in a subfolder), in their sorted index order."""
    rng = np.random.default_rng(2)
    (root / "sub").mkdir(parents=True)
    a = root / "a.png"
    Image.fromarray(rng.integers(0, 256, (64, 64, 3), dtype=np.uint8)).save(a)
    b = root / "b.jpg"
    Image.fromarray(rng.integers(0, 256, (50, 70, 3), dtype=np.uint8)).save(b)
    c = root / "sub" / "c.png"
    Image.fromarray(rng.integers(0, 256, (40, 40), dtype=np.uint8), mode="L").save(c)
    (root / "notes.txt").write_text("not an image")
    return [a, b, c]


def write_image_h5(path: Path, data: np.ndarray, key: str = "images") -> None:
    with h5py.File(path, "w") as f:
        f.create_dataset(key, data=data)


# ------------------------------------------------------------------------------------------------
# interface conformance, every dataset
# ------------------------------------------------------------------------------------------------
def _make_shapes(tmp: Path) -> GroundTruthData:
    return get_dataset("shapes", resolution=32)


def _make_shapes_rgb(tmp: Path) -> GroundTruthData:
    return get_dataset("shapes", resolution=64, channels=3)


def _make_dsprites(tmp: Path) -> GroundTruthData:
    write_dsprites(tmp / "dsprites.npz")
    return get_dataset("dsprites", path=str(tmp / "dsprites.npz"), resolution=64)


def _make_shapes3d(tmp: Path) -> GroundTruthData:
    write_shapes3d(tmp / "3dshapes.h5", chunked=True)
    return get_dataset("shapes3d", path=str(tmp / "3dshapes.h5"), resolution=32)


def _make_folder(tmp: Path) -> GroundTruthData:
    write_image_folder(tmp / "imgs")
    return get_dataset("images", path=str(tmp / "imgs"), resolution=32, channels=3)


def _make_h5_images(tmp: Path) -> GroundTruthData:
    write_image_h5(tmp / "faces.h5", np.random.default_rng(3).integers(0, 256, (7, 48, 48, 3), dtype=np.uint8))
    return get_dataset("images", path=str(tmp / "faces.h5"), resolution=64, channels=1)


MAKERS: dict[str, Callable[[Path], GroundTruthData]] = {
    "shapes": _make_shapes, "shapes_rgb": _make_shapes_rgb, "dsprites": _make_dsprites,
    "shapes3d": _make_shapes3d, "folder": _make_folder, "h5_images": _make_h5_images,
}


@pytest.mark.parametrize("kind", list(MAKERS))
def test_interface_conformance(kind: str, tmp_path: Path) -> None:
    data = MAKERS[kind](tmp_path)
    k = data.num_factors
    assert len(data.factor_names) == len(data.factor_sizes) == k >= 1
    assert all(isinstance(s, int) and s >= 1 for s in data.factor_sizes)
    assert len(data) == math.prod(data.factor_sizes)
    assert data.channels in (1, 3)
    for names in data.factor_groups.values():
        assert set(names) <= set(data.factor_names)
    if not data.has_factors:
        assert data.factor_names == ["index"] and data.factor_groups == {}

    f1 = data.sample_factors(20, np.random.default_rng(7))
    f2 = data.sample_factors(20, np.random.default_rng(7))
    assert f1.dtype == np.int64 and f1.shape == (20, k)
    np.testing.assert_array_equal(f1, f2)
    assert (f1 >= 0).all() and (f1 < np.asarray(data.factor_sizes)).all()

    x = data.images(f1)
    r = data.resolution
    assert x.dtype == np.float32 and x.shape == (20, data.channels, r, r)
    assert np.isfinite(x).all() and x.min() >= 0.0 and x.max() <= 1.0 and x.max() > 0.0
    np.testing.assert_array_equal(data.images(f1), x)  # deterministic

    factors, imgs = data.sample(5, np.random.default_rng(8))
    np.testing.assert_array_equal(imgs, data.images(factors))

    other = 64 if r != 64 else 32
    view = data.with_resolution(other)
    assert view.resolution == other and data.resolution == r
    assert view.factor_sizes == data.factor_sizes and view.factor_names == data.factor_names
    assert view.images(f1[:3]).shape == (3, data.channels, other, other)
    assert data.images(np.zeros((0, k), np.int64)).shape == (0, data.channels, r, r)

    with pytest.raises(ValueError):
        data.images(np.asarray([data.factor_sizes]))  # one past the last index of every factor

    # Picklable after use (open HDF5 handles and loaded arrays are dropped), e.g. for Ray workers.
    clone = pickle.loads(pickle.dumps(data))
    np.testing.assert_array_equal(clone.images(f1[:4]), x[:4])


# ------------------------------------------------------------------------------------------------
# procedural shapes
# ------------------------------------------------------------------------------------------------
BASE = np.array([2, 2, 1, 7, 8, 1, 1, 1, 0])  # triangle, mid scale, mid detail, black detail


def _vary(column: int, size: int, base: np.ndarray = BASE) -> np.ndarray:
    f = np.repeat(base[None], size, axis=0)
    f[:, column] = np.arange(size)
    return f


def test_shapes_factors_and_groups() -> None:
    d = Shapes()
    assert d.factor_names == ["shape", "scale", "rotation", "pos_x", "pos_y",
                              "detail_size", "detail_x", "detail_y", "detail_intensity"]
    assert d.factor_sizes == [3, 6, 8, 16, 16, 3, 3, 3, 3]
    assert d.factor_groups == {"coarse": ["shape", "scale", "rotation", "pos_x", "pos_y"],
                               "fine": ["detail_size", "detail_x", "detail_y", "detail_intensity"]}
    assert d.group_indices("fine") == [5, 6, 7, 8]
    assert d.resolution == 64 and d.channels == 1 and d.has_factors


def test_shapes_deterministic_and_batch_independent() -> None:
    d = Shapes(resolution=64)
    f = d.sample_factors(300, np.random.default_rng(0))
    x = d.images(f)
    np.testing.assert_array_equal(Shapes(resolution=64).images(f), x)
    # An image does not depend on which other images share its batch or chunk.
    np.testing.assert_array_equal(d.images(f[17:18]), x[17:18])
    np.testing.assert_array_equal(d.images(f[::-1])[::-1], x)
    # Chunking at 256 px (16 images per chunk) gives the same as one image at a time.
    big = d.with_resolution(256)
    np.testing.assert_array_equal(big.images(f[:20])[19], big.images(f[19:20])[0])


@pytest.mark.parametrize("resolution", [32, 64])
def test_every_shapes_factor_changes_the_image(resolution: int) -> None:
    d = Shapes(resolution=resolution)
    for col, (name, size) in enumerate(zip(d.factor_names, d.factor_sizes, strict=True)):
        x = d.images(_vary(col, size)).reshape(size, -1)
        for i, j in itertools.combinations(range(size), 2):
            assert np.abs(x[i] - x[j]).sum() > 0.5, f"{name}: values {i} and {j} give the same image"


@pytest.mark.parametrize("resolution", [32, 64])
def test_fine_factors_change_pixels_only_inside_the_silhouette(resolution: int) -> None:
    """Worst cases: every shape, scale and rotation at the four extreme positions, with the
    largest detail at each corner offset against the smallest central detail."""
    d = Shapes(resolution=resolution)
    details = [(2, i, j, 0) for i in (0, 2) for j in (0, 2)] + [(0, 1, 1, 2)]
    coarse = list(itertools.product(range(3), range(6), range(8), (0, 15), (0, 15)))
    f = np.array([c + det for c in coarse for det in details], dtype=np.int64)
    x = d.images(f).reshape(len(coarse), len(details), resolution, resolution)
    sil = d.silhouettes(f[:: len(details)])[:, 0]
    changed = (x != x[:, :1]).any(axis=1)
    assert changed.any(axis=(1, 2)).all()
    assert not (changed & (sil == 0)).any()
    # Silhouettes do not depend on the fine factors.
    np.testing.assert_array_equal(d.silhouettes(f[1:: len(details)])[:, 0], sil)


def test_detail_geometry_stays_inside_every_shape() -> None:
    """The analytic invariant behind the pixel test: the largest detail at the farthest offset
    (any rotation) lies inside the inscribed disc of every shape, with margin."""
    reach = np.abs(DETAIL_OFFSETS).max() * math.sqrt(2) + DETAIL_RADII.max()
    assert SAFE_RADIUS == min(SQUARE_HALF_SIDE, ELLIPSE_AXES[1], TRIANGLE_INRADIUS)
    assert reach <= SAFE_RADIUS - 0.14
    # The object (largest extent at the largest scale) fits inside the frame at every position.
    assert POSITIONS[0] - MAX_EXTENT * SCALES[-1] >= 1.0 / 32 and POSITIONS[-1] == pytest.approx(1 - POSITIONS[0])


def test_objects_stay_inside_the_frame() -> None:
    d = Shapes(resolution=64)
    f = np.array([(s, 5, r, x, y, 1, 1, 1, 0) for s, r, x, y in
                  itertools.product(range(3), range(8), (0, 15), (0, 15))])
    x = d.images(f)[:, 0]
    border = np.concatenate([x[:, 0], x[:, -1], x[:, :, 0], x[:, :, -1]], axis=1)
    assert border.max() == 0.0
    # ...while the extreme positions bring the widest objects near the border (they move over
    # the frame, not just its centre).
    cols = (x > 0.5).any(axis=1)
    assert cols[f[:, 3] == 0].argmax(axis=1).min() <= 4
    assert cols[f[:, 3] == 15][:, ::-1].argmax(axis=1).min() <= 4


def test_detail_visible_at_64_and_small_at_32() -> None:
    f = np.array([[s, 0, 0, 7, 8, 0, 1, 1, 0] for s in range(3)])  # smallest object, smallest detail
    dark = {}
    for r in (32, 64):
        d = Shapes(resolution=r)
        x, sil = d.images(f)[:, 0], d.silhouettes(f)[:, 0]
        dark[r] = ((x < 0.5) & (sil == 1)).sum(axis=(1, 2))
    assert (dark[64] >= 5).all(), dark  # a disc several pixels across at 64 px
    assert (dark[32] <= 4).all(), dark  # one or two pixels at 32 px
    # Moving the smallest detail by one step moves it by more than a pixel at 64 px.
    d = Shapes(resolution=64)
    x = d.images(np.array([[0, 0, 0, 7, 8, 0, i, 1, 0] for i in (0, 1)]))[:, 0]
    assert (np.abs(x[0] - x[1]) > 0.5).sum() >= 4


@pytest.mark.parametrize("resolution", [32, 64, 128])
def test_silhouettes_match_the_object(resolution: int) -> None:
    d = Shapes(resolution=resolution)
    f = np.array([c + (7, 8, 1, 1, 1, 2) for c in itertools.product(range(3), range(6), range(8))])
    sil = d.silhouettes(f)
    assert sil.dtype == np.float32 and sil.shape == (len(f), 1, resolution, resolution)
    assert set(np.unique(sil)) <= {0.0, 1.0}
    x = d.images(f)
    assert (x[sil == 0] < 0.5).all()             # outside the mask: background or thin edge
    assert (x[sil == 1] >= 0.6 * 0.5).all()      # inside: object (>= half covered), detail 0.6
    u = SCALES[f[:, 1]] * resolution
    area = np.select([f[:, 0] == 0, f[:, 0] == 1, f[:, 0] == 2],
                     [(2 * SQUARE_HALF_SIDE * u) ** 2, math.pi * ELLIPSE_AXES[0] * ELLIPSE_AXES[1] * u**2,
                      3 * math.sqrt(3) * TRIANGLE_INRADIUS**2 * u**2])
    np.testing.assert_allclose(sil.sum(axis=(1, 2, 3)), area, rtol=0.1)
    # The image's total coverage is the analytic area too (antialiasing conserves area).
    no_detail = d.images(np.concatenate([f[:, :8], np.full((len(f), 1), 2)], axis=1))
    detail_area = math.pi * (DETAIL_RADII[1] * u) ** 2 * (1 - 0.6)
    np.testing.assert_allclose(no_detail.sum(axis=(1, 2, 3)), area - detail_area, rtol=0.03)


def test_rendering_is_consistent_across_resolutions() -> None:
    """Antialiasing: a 64 px render area-downsampled to 32 px is close to a 32 px render."""
    d64 = Shapes(resolution=64)
    f = d64.sample_factors(500, np.random.default_rng(4))
    down = resize(d64.images(f), 32)
    direct = d64.with_resolution(32).images(f)
    diff = np.abs(down - direct)
    assert diff.mean() < 0.002
    assert diff.max() < 0.15
    up = resize(d64.with_resolution(128).images(f[:50]), 64)
    assert np.abs(up - d64.images(f[:50])).max() < 0.15


def test_shapes_rgb_is_a_coloured_copy_of_grey() -> None:
    f = Shapes().sample_factors(10, np.random.default_rng(5))
    grey, rgb = Shapes(channels=1).images(f), Shapes(channels=3).images(f)
    assert rgb.shape == (10, 3, 64, 64)
    np.testing.assert_allclose(rgb[:, :1], grey, atol=1e-6)  # red channel at full strength
    assert (rgb[:, 2] < rgb[:, 0] + 1e-6).all() and rgb[:, 2].max() > 0
    np.testing.assert_array_equal(Shapes(channels=3).silhouettes(f), Shapes(channels=1).silhouettes(f))


@pytest.mark.parametrize("options", [
    {"resolution": 16}, {"resolution": 257}, {"resolution": 64.0}, {"resolution": True},
    {"channels": 2}, {"path": "/data/shapes.npz"},
])
def test_shapes_bad_options_raise_config_error(options: dict[str, object]) -> None:
    with pytest.raises(ConfigError) as err:
        get_dataset("shapes", **options)
    assert "\n" not in str(err.value) and "shapes" in str(err.value)


def test_shapes_with_resolution_keeps_factors() -> None:
    d = Shapes(resolution=48, channels=3)
    v = d.with_resolution(200)
    assert isinstance(v, Shapes) and v.resolution == 200 and v.channels == 3
    assert v.factor_sizes == d.factor_sizes and v.factor_groups == d.factor_groups


def test_get_dataset_unknown_name() -> None:
    with pytest.raises(ConfigError):
        get_dataset("mnist")


# ------------------------------------------------------------------------------------------------
# dSprites
# ------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("compressed", [True, False])
def test_dsprites_lookup_by_factor_index(tmp_path: Path, compressed: bool) -> None:
    path = tmp_path / "dsprites.npz"
    arrays = write_dsprites(path, compressed=compressed)
    d = get_dataset("dsprites", path=path)
    assert d.factor_names == ["color", "shape", "scale", "orientation", "pos_x", "pos_y"]
    assert d.factor_sizes == DSPRITES_SIZES and d.channels == 1 and d.resolution == 64
    f = d.sample_factors(40, np.random.default_rng(0))
    x = d.images(f)
    np.testing.assert_array_equal(x[:, 0], arrays["imgs"][f @ row_major_strides(DSPRITES_SIZES)])
    # The metadata in the file stays loadable the official way (we never unpickle it ourselves).
    meta = np.load(path, allow_pickle=True, encoding="latin1")["metadata"][()]
    assert list(meta["latents_sizes"]) == DSPRITES_SIZES


def test_dsprites_resolution_views_share_images(tmp_path: Path) -> None:
    path = tmp_path / "dsprites.npz"
    arrays = write_dsprites(path)
    d = get_dataset("dsprites", path=path, resolution=32)
    f = _grid(DSPRITES_SIZES)[::7]
    x32 = d.images(f)
    raw = arrays["imgs"][::7].astype(np.float32)
    np.testing.assert_allclose(x32[:, 0], raw.reshape(-1, 32, 2, 32, 2).mean(axis=(2, 4)), atol=1e-6)
    v = d.with_resolution(64)
    assert v._store is d._store and v._store._packed is not None  # loaded once, shared
    np.testing.assert_array_equal(v.images(f)[:, 0], raw)
    assert d.with_resolution(128).images(f[:2]).shape == (2, 1, 128, 128)


def test_dsprites_rows_in_another_order(tmp_path: Path) -> None:
    n = math.prod(DSPRITES_SIZES)
    order = np.random.default_rng(3).permutation(n)
    path = tmp_path / "shuffled.npz"
    arrays = write_dsprites(path, order=order)
    d = get_dataset("dsprites", path=path)
    f = _grid(DSPRITES_SIZES)
    x = d.images(f)[:, 0]
    for i in (0, 5, 100, n - 1):  # grid index i -> the file row whose classes are f[i]
        row = int(np.flatnonzero((arrays["latents_classes"] == f[i]).all(axis=1))[0])
        np.testing.assert_array_equal(x[i], arrays["imgs"][row])


def _dsprites_bad(tmp: Path, case: str) -> Path:
    path = tmp / f"{case}.npz"
    classes = _grid(DSPRITES_SIZES)
    if case == "missing":
        return path
    if case == "garbage":
        path.write_bytes(b"this is not a zip archive" * 10)
    elif case == "truncated_zip":
        write_dsprites(path)
        path.write_bytes(path.read_bytes()[:1000])
    elif case == "no_imgs":
        write_dsprites(path, imgs=None)
    elif case == "no_classes":
        write_dsprites(path, latents_classes=None)
    elif case == "wrong_image_shape":
        write_dsprites(path, imgs=np.zeros((len(classes), 32, 32), np.uint8))
    elif case == "wrong_dtype":
        write_dsprites(path, imgs=np.zeros((len(classes), 64, 64), np.float32))
    elif case == "length_mismatch":
        write_dsprites(path, imgs=np.zeros((len(classes) - 1, 64, 64), np.uint8))
    elif case == "not_a_grid":
        dup = classes.copy()
        dup[1] = dup[0]
        write_dsprites(path, latents_classes=dup)
    elif case == "classes_shape":
        write_dsprites(path, latents_classes=classes[:, :5])
    elif case == "directory":
        path.mkdir()
    return path


@pytest.mark.parametrize("case", ["missing", "garbage", "truncated_zip", "no_imgs", "no_classes",
                                  "wrong_image_shape", "wrong_dtype", "length_mismatch",
                                  "not_a_grid", "classes_shape", "directory"])
def test_dsprites_bad_files_raise_data_error(tmp_path: Path, case: str) -> None:
    path = _dsprites_bad(tmp_path, case)
    with pytest.raises(DataError) as err:
        get_dataset("dsprites", path=str(path)).images(np.zeros((1, 6), np.int64))
    msg = str(err.value)
    assert str(path) in msg and "\n" not in msg and "dsprites" in msg.lower()


def test_dsprites_non_binary_images_raise_on_load(tmp_path: Path) -> None:
    path = tmp_path / "grey.npz"
    write_dsprites(path, imgs=np.full((math.prod(DSPRITES_SIZES), 64, 64), 255, np.uint8))
    d = get_dataset("dsprites", path=path)  # construction stays cheap: images load lazily
    with pytest.raises(DataError, match="other than 0/1") as err:
        d.images(np.zeros((1, 6), np.int64))
    assert str(path) in str(err.value)


def test_dsprites_member_names_match_official_layout(tmp_path: Path) -> None:
    path = tmp_path / "dsprites.npz"
    write_dsprites(path)
    with zipfile.ZipFile(path) as zf:
        assert set(zf.namelist()) == {"imgs.npy", "latents_classes.npy", "latents_values.npy", "metadata.npy"}


# ------------------------------------------------------------------------------------------------
# 3dshapes
# ------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("chunked", [False, True])
def test_shapes3d_lookup_by_factor_index(tmp_path: Path, chunked: bool) -> None:
    path = tmp_path / "3dshapes.h5"
    arrays = write_shapes3d(path, chunked=chunked)
    d = get_dataset("shapes3d", path=path)
    sizes = [len(v) for v in SHAPES3D_VALUES]
    assert d.factor_names == ["floor_hue", "wall_hue", "object_hue", "scale", "shape", "orientation"]
    assert d.factor_sizes == sizes and d.channels == 3
    for k in range(6):
        np.testing.assert_allclose(d.factor_values[k], SHAPES3D_VALUES[k])
    f = d.sample_factors(30, np.random.default_rng(0))
    f[1] = f[0]  # repeated rows are fine
    x = d.images(f)
    expect = arrays["images"][f @ row_major_strides(sizes)].transpose(0, 3, 1, 2) / 255.0
    np.testing.assert_allclose(x, expect, atol=1e-6)
    x32 = d.with_resolution(32).images(f)
    np.testing.assert_allclose(x32, expect.reshape(30, 3, 32, 2, 32, 2).mean(axis=(3, 5)), atol=1e-5)


def test_shapes3d_rows_in_another_order(tmp_path: Path) -> None:
    sizes = [len(v) for v in SHAPES3D_VALUES]
    order = np.random.default_rng(5).permutation(math.prod(sizes))
    path = tmp_path / "3dshapes.h5"
    arrays = write_shapes3d(path, order=order)
    d = get_dataset("shapes3d", path=path)
    f = _grid(sizes)[[0, 3, 50, 95]]
    want = np.stack([SHAPES3D_VALUES[k][f[:, k]] for k in range(6)], axis=1)
    rows = [int(np.flatnonzero(np.isclose(arrays["labels"], w).all(axis=1))[0]) for w in want]
    np.testing.assert_allclose(d.images(f) * 255, arrays["images"][rows].transpose(0, 3, 1, 2), atol=1e-3)


def test_read_rows_matches_fancy_indexing(tmp_path: Path) -> None:
    data = np.arange(37 * 4, dtype=np.int32).reshape(37, 4)
    with h5py.File(tmp_path / "r.h5", "w") as f:
        f.create_dataset("a", data=data, chunks=(5, 4), compression="gzip")
        f.create_dataset("b", data=data)
    rows = np.array([36, 0, 7, 7, 12, 5, 4, 30])
    with h5py.File(tmp_path / "r.h5", "r") as f:
        np.testing.assert_array_equal(read_rows(f["a"], rows), data[rows])
        np.testing.assert_array_equal(read_rows(f["b"], rows), data[rows])


def _shapes3d_bad(tmp: Path, case: str) -> Path:
    path = tmp / f"{case}.h5"
    n = math.prod(len(v) for v in SHAPES3D_VALUES)
    if case == "missing":
        return path
    if case == "garbage":
        path.write_bytes(b"\x89HDF-not-really" * 100)
    elif case in ("no_images", "no_labels"):
        write_shapes3d(path, skip=case.removeprefix("no_"))
    elif case == "wrong_image_shape":
        write_shapes3d(path, images=np.zeros((n, 64, 64), np.uint8))
    elif case == "channels_first":
        write_shapes3d(path, images=np.zeros((n, 3, 64, 64), np.uint8))
    elif case == "float_images":
        write_shapes3d(path, images=np.zeros((n, 64, 64, 3), np.float32))
    elif case == "wrong_labels_shape":
        write_shapes3d(path, labels=np.zeros((n, 5)))
    elif case == "length_mismatch":
        write_shapes3d(path, images=np.zeros((n - 1, 64, 64, 3), np.uint8))
    elif case == "not_a_grid":
        labels = write_shapes3d(tmp / "ok.h5")["labels"].copy()
        labels[1] = labels[0]
        write_shapes3d(path, labels=labels)
    return path


@pytest.mark.parametrize("case", ["missing", "garbage", "no_images", "no_labels", "wrong_image_shape",
                                  "channels_first", "float_images", "wrong_labels_shape",
                                  "length_mismatch", "not_a_grid"])
def test_shapes3d_bad_files_raise_data_error(tmp_path: Path, case: str) -> None:
    path = _shapes3d_bad(tmp_path, case)
    with pytest.raises(DataError) as err:
        get_dataset("shapes3d", path=str(path))
    msg = str(err.value)
    assert str(path) in msg and "\n" not in msg and "3dshapes.h5" in msg
    if case == "no_labels":
        assert "dataset 'labels' missing" in msg


# ------------------------------------------------------------------------------------------------
# image folders and HDF5 images
# ------------------------------------------------------------------------------------------------
def test_image_folder(tmp_path: Path) -> None:
    files = write_image_folder(tmp_path / "imgs")
    d = ImageFiles(tmp_path / "imgs", resolution=32, channels=3)
    assert d.files == files and len(d) == 3 and not d.has_factors and d.factor_groups == {}
    x = d.images(np.array([[0], [1], [2], [0]]))
    assert x.shape == (4, 3, 32, 32)
    np.testing.assert_array_equal(x[0], x[3])
    a = np.asarray(Image.open(files[0]), dtype=np.float32).transpose(2, 0, 1) / 255
    np.testing.assert_allclose(x[0], a.reshape(3, 32, 2, 32, 2).mean(axis=(2, 4)), atol=1e-5)
    np.testing.assert_allclose(x[2, 0], x[2, 1])  # a grey image repeated into RGB
    grey = ImageFiles(tmp_path / "imgs", resolution=64, channels=1).images(np.array([[2], [1]]))
    c = np.asarray(Image.open(files[2]), dtype=np.float32) / 255
    np.testing.assert_allclose(grey[0, 0], resize(c[None, None], 64)[0, 0], atol=1e-5)
    assert grey.shape == (2, 1, 64, 64)


@pytest.mark.parametrize("layout", ["nhwc", "nchw", "nhw", "float"])
def test_image_hdf5_layouts(tmp_path: Path, layout: str) -> None:
    rng = np.random.default_rng(6)
    rgb = rng.integers(0, 256, (5, 64, 64, 3), dtype=np.uint8)
    stored = {"nhwc": rgb, "nchw": rgb.transpose(0, 3, 1, 2), "nhw": rgb[..., 0],
              "float": rgb.astype(np.float32) / 255}[layout]
    write_image_h5(tmp_path / "x.h5", stored)
    d = get_dataset("images", path=tmp_path / "x.h5", resolution=32, channels=3)
    assert d.factor_sizes == [5] and d.factor_names == ["index"]
    x = d.images(np.array([[4], [1]]))
    src = rgb[[4, 1]].transpose(0, 3, 1, 2).astype(np.float32) / 255
    if layout == "nhw":
        src = np.repeat(src[:, :1], 3, axis=1)
    np.testing.assert_allclose(x, src.reshape(2, 3, 32, 2, 32, 2).mean(axis=(3, 5)), atol=1e-5)
    luma = get_dataset("images", path=tmp_path / "x.h5", resolution=64, channels=1).images(np.array([[0]]))
    if layout != "nhw":
        want = np.einsum("chw,c->hw", rgb[0].transpose(2, 0, 1) / 255, [0.299, 0.587, 0.114])
        np.testing.assert_allclose(luma[0, 0], want, atol=1e-5)


def test_non_square_hdf5_images_are_centre_cropped(tmp_path: Path) -> None:
    data = np.zeros((2, 40, 64, 3), np.uint8)
    data[:, :, 12:52] = 255  # the central 40x40 square is white, the side bands black
    write_image_h5(tmp_path / "wide.h5", data)
    x = get_dataset("images", path=tmp_path / "wide.h5", resolution=32).images(np.array([[0]]))
    np.testing.assert_allclose(x, 1.0)


def _images_bad(tmp: Path, case: str) -> tuple[Path, Path, bool]:
    """(path given, path the message must name, whether the error comes from images())."""
    if case == "missing":
        return tmp / "nowhere", tmp / "nowhere", False
    if case == "empty_folder":
        (tmp / "empty").mkdir()
        (tmp / "empty" / "readme.txt").write_text("x")
        return tmp / "empty", tmp / "empty", False
    if case == "corrupt_first":
        (tmp / "f").mkdir()
        (tmp / "f" / "a.png").write_bytes(b"garbage" * 10)
        return tmp / "f", tmp / "f" / "a.png", False
    if case == "corrupt_later":
        write_image_folder(tmp / "g")
        (tmp / "g" / "z.jpg").write_bytes(b"\xff\xd8garbage")
        return tmp / "g", tmp / "g" / "z.jpg", True
    if case == "not_images":
        (tmp / "x.txt").write_text("hello")
        return tmp / "x.txt", tmp / "x.txt", False
    if case == "h5_no_images":
        write_image_h5(tmp / "y.h5", np.zeros((3, 8, 8), np.uint8), key="pixels")
        return tmp / "y.h5", tmp / "y.h5", False
    if case == "h5_wrong_shape":
        write_image_h5(tmp / "y.h5", np.zeros((3, 64), np.uint8))
        return tmp / "y.h5", tmp / "y.h5", False
    if case == "h5_wrong_dtype":
        write_image_h5(tmp / "y.h5", np.zeros((3, 8, 8), np.int64))
        return tmp / "y.h5", tmp / "y.h5", False
    raise AssertionError(case)


@pytest.mark.parametrize("case", ["missing", "empty_folder", "corrupt_first", "corrupt_later",
                                  "not_images", "h5_no_images", "h5_wrong_shape", "h5_wrong_dtype"])
def test_images_bad_inputs_raise_data_error(tmp_path: Path, case: str) -> None:
    path, named, lazy = _images_bad(tmp_path, case)
    with pytest.raises(DataError) as err:
        d = get_dataset("images", path=str(path), resolution=32)
        assert lazy, "expected the error at construction"
        d.images(np.arange(len(d))[:, None])
    msg = str(err.value)
    assert str(named) in msg and "\n" not in msg


@pytest.mark.parametrize("name", ["dsprites", "shapes3d", "images"])
def test_file_datasets_validate_resolution(tmp_path: Path, name: str) -> None:
    with pytest.raises(ConfigError, match="resolution"):
        get_dataset(name, path=str(tmp_path / "x"), resolution=8)
