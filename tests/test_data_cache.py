"""The search's shared rendered images: a trial's metrics.json is byte-identical without the
cache, with it cold (rendering and writing) and warm (reading only: the renderer is disabled)."""

from __future__ import annotations

import numpy as np
import pytest

from compvae.config import preset
from compvae.data import get_dataset
from compvae.data.shapes import Shapes
from compvae.data_cache import DataCache
from compvae.trial import prepare_parent, run_trial

# Two resolutions, an oracle input mask (silhouettes at evaluation), figures, the probes: every
# path through which a trial renders.
UPDATES = {"child.resolution": 64, "child.masking_mode": "both", "mask.source": "oracle",
           "mask.threshold": 0.1, "eval.figures": True, "eval.num_figure_images": 2,
           "eval.metrics": ["mig", "informativeness", "unsupervised"]}


def _no_render(*args, **kwargs):
    raise AssertionError("rendered although the cache holds every image set")


def test_cached_images_give_byte_identical_metrics(tmp_path, monkeypatch):
    cfg = preset("tiny").with_updates(UPDATES)
    run_trial(cfg, out_dir=tmp_path / "fresh")
    cache = DataCache(tmp_path / "data")
    run_trial(cfg, out_dir=tmp_path / "cold", data_cache=cache)
    assert cache.misses > 0  # (a few hits already: a trial draws some image sets twice)
    stored = sorted(p.name for p in (tmp_path / "data").rglob("*.npy"))
    assert stored

    for method in ("images", "silhouettes", "detail_regions"):
        if hasattr(Shapes, method):
            monkeypatch.setattr(Shapes, method, _no_render)
    warm = DataCache(tmp_path / "data")
    run_trial(cfg, out_dir=tmp_path / "warm", data_cache=warm)
    assert warm.misses == 0 and warm.hits > 0
    assert sorted(p.name for p in (tmp_path / "data").rglob("*.npy")) == stored

    fresh = (tmp_path / "fresh" / "metrics.json").read_bytes()
    assert (tmp_path / "cold" / "metrics.json").read_bytes() == fresh
    assert (tmp_path / "warm" / "metrics.json").read_bytes() == fresh


def test_a_parent_prepared_with_the_cache_scores_as_one_trained_without(tmp_path):
    cfg = preset("tiny").with_updates(UPDATES)
    plain = prepare_parent(cfg, tmp_path / "p1")
    cached = prepare_parent(cfg, tmp_path / "p2", data_cache=tmp_path / "data")
    values = {k: v for k, v in plain["metrics"].items() if "seconds" not in k}
    assert {k: v for k, v in cached["metrics"].items() if "seconds" not in k} == values


def test_keys_follow_the_dataset_the_method_and_the_exact_factors(tmp_path):
    cache = DataCache(tmp_path)
    f = get_dataset("shapes", resolution=32).sample_factors(2, np.random.default_rng(0))
    ident = {"name": "shapes", "resolution": 32}
    k = cache.key(ident, "images", f)
    assert k == cache.key(ident, "images", f.astype(np.int32))  # the values, not their dtype
    assert k != cache.key({**ident, "resolution": 64}, "images", f)
    assert k != cache.key(ident, "silhouettes", f)
    assert k != cache.key(ident, "images", np.concatenate([f, f]))


def test_a_full_cache_renders_without_writing_and_file_data_is_not_wrapped(tmp_path):
    data = get_dataset("shapes", resolution=32)
    cache = DataCache(tmp_path, max_bytes=0)
    wrapped = cache.wrap(data, {"resolution": 32})
    f = data.sample_factors(4, np.random.default_rng(0))
    np.testing.assert_array_equal(wrapped.images(f), data.images(f))
    assert not list(tmp_path.rglob("*.npy"))
    assert wrapped.with_resolution(64).images(f).shape[-1] == 64

    class FileBacked:
        name = "images"

    file_backed = FileBacked()
    assert cache.wrap(file_backed, {}) is file_backed  # type: ignore[arg-type]


@pytest.mark.parametrize("method", ["silhouettes"])
def test_optional_methods_are_cached_where_the_dataset_has_them(tmp_path, method):
    data = get_dataset("shapes", resolution=32)
    wrapped = DataCache(tmp_path).wrap(data, {"resolution": 32})
    f = data.sample_factors(3, np.random.default_rng(1))
    np.testing.assert_array_equal(getattr(wrapped, method)(f), getattr(data, method)(f))
    np.testing.assert_array_equal(getattr(wrapped, method)(f), getattr(data, method)(f))  # from disk
    assert hasattr(wrapped, "detail_regions") == hasattr(data, "detail_regions")
