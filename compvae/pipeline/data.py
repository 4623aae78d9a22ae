"""What a trial samples and renders once: training and held-out images on the device."""

from __future__ import annotations

import time
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from compvae.config import TrialConfig
from compvae.data import GroundTruthData, dataset_options, get_dataset
from compvae.data_cache import DataCache
from compvae.pipeline.state import TEST_SAMPLE, TRAIN_SAMPLE, stream
from compvae.progress import Progress

RECON_EVAL_POINTS = 512


@dataclass
class TrialData:
    """Everything sampled once per trial from the dataset, on the training device."""

    parent_data: GroundTruthData
    child_data: GroundTruthData
    train_factors: np.ndarray
    parent_images: torch.Tensor  # uint8 (N, C, Rp, Rp)
    child_images: torch.Tensor  # uint8 (N, C, Rc, Rc)
    test_factors: np.ndarray
    test_parent: torch.Tensor  # float (n, C, Rp, Rp)
    test_child: torch.Tensor  # float (n, C, Rc, Rc)
    test_silhouettes: torch.Tensor | None  # float (n, 1, Rc, Rc) where the dataset has them
    test_details: torch.Tensor | None  # float (n, 1, Rc, Rc): where the fine factors change pixels


def load_data(cfg: TrialConfig, device: torch.device, prog: Progress, with_child: bool = True,
              cache: DataCache | None = None) -> TrialData:
    """Training and held-out images; ``with_child=False`` leaves the child's views at the
    parent's resolution (enough to train and evaluate a parent). With ``cache`` (a search's
    shared :class:`~compvae.data_cache.DataCache`) every image set the trial renders, here and
    in its evaluations, is rendered once per search and read back by the other trials."""
    options = dataset_options(cfg, cfg.parent.resolution)
    parent_data = get_dataset(cfg.data.name, **options)
    if cache is not None:
        parent_data = cache.wrap(parent_data, options)
    child_data = parent_data.with_resolution(cfg.child.resolution) if with_child else parent_data
    rng = stream(cfg.train.seed, TRAIN_SAMPLE)
    n = cfg.data.num_train
    if not parent_data.has_factors:
        n = min(n, len(parent_data))
        train_factors = rng.permutation(len(parent_data))[:n, None].astype(np.int64)
    else:
        train_factors = parent_data.sample_factors(n, rng)
    t0 = time.perf_counter()
    parent_images = _render_u8(parent_data, train_factors, device)
    child_images = (parent_images if child_data.resolution == parent_data.resolution
                    else _render_u8(child_data, train_factors, device))
    n_test = min(RECON_EVAL_POINTS, cfg.eval.num_test)
    test_rng = stream(cfg.train.seed, TEST_SAMPLE)
    if parent_data.has_factors:
        test_factors = parent_data.sample_factors(n_test, test_rng)
    else:
        test_factors = test_rng.integers(0, len(parent_data), size=(n_test, 1))
    test_parent = torch.from_numpy(parent_data.images(test_factors)).to(device)
    test_child = torch.from_numpy(child_data.images(test_factors)).to(device)
    sil = details = None
    if hasattr(child_data, "silhouettes"):
        sil = torch.from_numpy(child_data.silhouettes(test_factors)).to(device)
    if hasattr(child_data, "detail_regions"):
        details = torch.from_numpy(child_data.detail_regions(test_factors)).to(device)
    how = "rendered" if cache is None else f"rendered or read from {cache.root}"
    prog.write(f"data   {cfg.data.name}: {n} training images at {parent_data.resolution}/"
               f"{child_data.resolution} px {how} in {time.perf_counter() - t0:.1f}s")
    return TrialData(parent_data, child_data, train_factors, parent_images, child_images,
                     test_factors, test_parent, test_child, sil, details)


def _render_u8(data: GroundTruthData, factors: np.ndarray, device: torch.device,
               chunk: int = 4096) -> torch.Tensor:
    out = torch.empty((len(factors), data.channels, data.resolution, data.resolution), dtype=torch.uint8)
    for i in range(0, len(factors), chunk):
        imgs = torch.from_numpy(data.images(factors[i : i + chunk]))
        out[i : i + chunk] = (imgs * 255.0).round_().clamp_(0, 255).to(torch.uint8)
    return out.to(device)


def to_parent_resolution(images: torch.Tensor, resolution: int) -> torch.Tensor:
    """Area-downsample child-resolution images to the parent's (identity when equal).

    Masks are always computed from this view, in training and in evaluation alike, so the
    child sees the same mask for an image whichever way the image reached it.
    """
    if images.shape[-1] == resolution:
        return images
    return F.interpolate(images, size=(resolution, resolution), mode="area")
