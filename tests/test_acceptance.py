"""The science works on the quick preset: a 32 px parent trained for about a minute on
`shapes` reconstructs the objects with several active latents, and the mask of the latent
that encodes position covers the object far better than chance."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from compvae.config import preset
from compvae.data import get_dataset
from compvae.masks import make_masks, mask_iou
from compvae.metrics._utils import discrete_mutual_info, histogram_discretize
from compvae.models import build_vae
from compvae.trial import run_trial

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def quick_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("quick")
    # the mask pipeline's calibration data: one object on black (scenes' broad parent masks are
    # what the study measures, docs/benchmark.md)
    cfg = preset("quick").with_updates({"train.device": "cpu", "data.name": "shapes"})
    metrics = run_trial(cfg, out_dir=out)
    return cfg, metrics, out


def test_parent_reconstructs_with_several_active_latents(quick_run):
    cfg, metrics, out = quick_run
    data = get_dataset(cfg.data.name, resolution=32)
    images = data.sample(512, np.random.default_rng(5))[1]
    # predicting the mean image is the trivial baseline a collapsed parent would reach
    baseline = float(((images - images.mean(axis=0)) ** 2).mean())
    assert metrics["parent/recon_error"] < 0.5 * baseline
    assert metrics["parent/active_units"] >= 3
    assert (out / "figures" / "parent_traversal.png").stat().st_size > 10_000


def test_position_latent_mask_covers_the_object(quick_run):
    cfg, metrics, out = quick_run
    torch.manual_seed(0)
    parent = build_vae(cfg.parent, 1, 1)
    parent.load_state_dict(torch.load(out / "parent.pt"))
    parent.eval()
    data = get_dataset(cfg.data.name, resolution=32)
    factors, images = data.sample(1000, np.random.default_rng(6))
    with torch.no_grad():
        mu = parent.encode(torch.from_numpy(images))[0].numpy()
    pos = [data.factor_names.index("pos_x"), data.factor_names.index("pos_y")]
    mi = discrete_mutual_info(histogram_discretize(mu, 20), factors[:, pos])  # (codes, 2)
    latent = int(mi.max(axis=1).argmax())
    assert mi.max() > 0.5  # some latent really encodes position

    child_data = data.with_resolution(cfg.child.resolution)
    test_factors = factors[:200]
    masks = make_masks(parent, torch.from_numpy(images[:200]), latent, cfg.mask.delta, cfg.mask.threshold,
                       cfg.mask.blur_sigma, out_resolution=cfg.child.resolution)
    sil = torch.from_numpy(child_data.silhouettes(test_factors))
    iou = mask_iou(masks, sil)
    # chance: each mask scored against another image's object. Objects cluster near the centre,
    # so this baseline is far above zero; the paired difference is what shows localisation.
    perm = torch.randperm(200, generator=torch.Generator().manual_seed(0))
    perm = torch.where(perm == torch.arange(200), (perm + 1) % 200, perm)
    chance = mask_iou(masks, sil[perm])
    assert iou.mean().item() > 0.25
    assert (iou - chance).mean().item() > 0.08
    assert (iou > chance).float().mean().item() > 0.7
    assert 0.01 < metrics["mask/coverage"] < 0.6
