"""Every figure writes a readable PNG of the size its grid implies, for gray, RGB and
image+mask models."""

from __future__ import annotations

from pathlib import Path

import matplotlib.image as mpimg
import numpy as np
import pytest
import torch
from torch import Tensor, nn

from compvae.figures import (
    DPI,
    figure_size,
    image_channels_for,
    mask_pipeline_figure,
    reconstruction_figure,
    traversal_figure,
)
from compvae.masks import make_masks

RES = 16
LATENT = 4


class TinyModel(nn.Module):
    """A small deterministic VAE-like module: linear encoder and decoder, ``out_channels`` out."""

    def __init__(self, in_channels: int, out_channels: int, seed: int = 0) -> None:
        super().__init__()
        torch.manual_seed(seed)
        self.enc = nn.Linear(in_channels * RES * RES, 2 * LATENT)
        self.dec = nn.Linear(LATENT, out_channels * RES * RES)
        self.out_channels = out_channels

    def encode(self, x: Tensor) -> tuple[Tensor, Tensor]:
        h = self.enc(x.flatten(1))
        return h[:, :LATENT], h[:, LATENT:]

    def decode(self, z: Tensor) -> Tensor:
        return 4.0 * self.dec(z).view(-1, self.out_channels, RES, RES)


class ConstantChannels(nn.Module):
    """Decoder with fixed per-channel logits: tells which channels a figure actually draws."""

    def __init__(self, logits: list[float]) -> None:
        super().__init__()
        self.register_buffer("logits", torch.tensor(logits).view(1, -1, 1, 1))

    def encode(self, x: Tensor) -> tuple[Tensor, Tensor]:
        return torch.zeros(x.shape[0], LATENT), torch.zeros(x.shape[0], LATENT)

    def decode(self, z: Tensor) -> Tensor:
        return self.logits.expand(z.shape[0], -1, RES, RES) + 0.0 * z.sum()


def images(channels: int, n: int = 5, res: int = RES) -> Tensor:
    g = torch.Generator().manual_seed(channels)
    return torch.rand(n, channels, res, res, generator=g)


def read_png(path: Path, rows: int, cols: int) -> np.ndarray:
    """Read the PNG back and check it is non-empty and exactly the grid's size."""
    assert path.is_file() and path.stat().st_size > 1000
    arr = mpimg.imread(path)
    w, h = figure_size(rows, cols)
    assert arr.shape[:2] == (round(h * DPI), round(w * DPI)), (arr.shape, rows, cols)
    assert float(arr[..., :3].std()) > 0.05  # something was drawn
    return arr


def test_image_channels_rule() -> None:
    assert [image_channels_for(c) for c in (1, 2, 3, 4, 6)] == [1, 1, 3, 3, 3]
    # the size ratio follows the grid: wider with more columns, taller with more rows
    w1, h1 = figure_size(2, 4)
    w2, h2 = figure_size(4, 4)
    assert w1 == w2 and h2 > h1


@pytest.mark.parametrize("channels", [1, 3])
def test_mask_pipeline_figure(tmp_path: Path, channels: int) -> None:
    model = TinyModel(channels, channels)
    x = images(channels)
    steps = make_masks(model, x, 1, 1.0, 0.02, blur_sigma=1.0, out_resolution=2 * RES, return_steps=True)
    assert float(steps.mask.mean()) > 0
    path = mask_pipeline_figure(steps, x, tmp_path / "sub" / "pipeline.png", n=3,
                                overlay_images=images(channels, res=2 * RES))
    assert path == tmp_path / "sub" / "pipeline.png"
    read_png(path, 3, 7)
    # without child-resolution overlay images, more rows than images: clipped to the batch
    read_png(mask_pipeline_figure(steps, x, tmp_path / "p2.png", n=10), 5, 7)


@pytest.mark.parametrize(("in_c", "out_c"), [(1, 1), (3, 3), (1, 2), (3, 4)])
def test_traversal_figure_from_images(tmp_path: Path, in_c: int, out_c: int) -> None:
    model = TinyModel(in_c, out_c)
    model.train()
    path = traversal_figure(model, images(in_c), tmp_path / "trav.png", latents=[0, 2, 3], steps=7,
                            kl_per_latent=torch.tensor([0.5, 0.1, 2.0, 0.0]))
    read_png(path, 3, 7)
    assert model.training  # mode restored


def test_traversal_figure_from_means_infers_channels(tmp_path: Path) -> None:
    model = TinyModel(3, 4)  # RGB + mask output, given only means
    path = traversal_figure(model, torch.zeros(2, LATENT), tmp_path / "t.png")
    read_png(path, LATENT, 9)
    path = traversal_figure(model, np.zeros(LATENT, dtype=np.float32), tmp_path / "t1.png", steps=3)
    read_png(path, LATENT, 3)
    with pytest.raises(ValueError, match="out of range"):
        traversal_figure(model, torch.zeros(LATENT), tmp_path / "bad.png", latents=[LATENT])


def test_traversal_draws_the_image_channel_not_the_mask(tmp_path: Path) -> None:
    # 2-channel output: channel 0 is the image, channel 1 the mask. Dark image + white mask
    # must give a darker figure than white image + dark mask.
    dark = traversal_figure(ConstantChannels([-8.0, 8.0]), torch.zeros(LATENT), tmp_path / "d.png")
    light = traversal_figure(ConstantChannels([8.0, -8.0]), torch.zeros(LATENT), tmp_path / "l.png")
    a, b = read_png(dark, LATENT, 9), read_png(light, LATENT, 9)
    assert float(a[..., :3].mean()) < float(b[..., :3].mean()) - 0.2


@pytest.mark.parametrize("channels", [1, 3])
def test_reconstruction_figure(tmp_path: Path, channels: int) -> None:
    x = images(channels, n=6)
    rec = x.flip(0)
    masks = (images(1, n=6, res=2 * RES) > 0.5).float()
    read_png(reconstruction_figure(x, rec, tmp_path / "r.png", masks=masks, n=4), 3, 4)
    read_png(reconstruction_figure(x.numpy(), rec.numpy(), tmp_path / "r2.png"), 2, 6)


def test_reconstruction_figure_with_mask_channel_and_logits(tmp_path: Path) -> None:
    x = images(1, n=4)
    logits = torch.cat([torch.full((4, 1, RES, RES), -8.0), torch.full((4, 1, RES, RES), 8.0)], 1)
    dark = read_png(reconstruction_figure(x, logits, tmp_path / "a.png", from_logits=True), 2, 4)
    light = read_png(reconstruction_figure(x, -logits, tmp_path / "b.png", from_logits=True), 2, 4)
    assert float(dark[..., :3].mean()) < float(light[..., :3].mean())


def test_no_pyplot_figures_leak(tmp_path: Path) -> None:
    import matplotlib.pyplot as plt

    before = len(plt.get_fignums())
    x = images(1)
    reconstruction_figure(x, x, tmp_path / "r.png")
    traversal_figure(TinyModel(1, 1), x, tmp_path / "t.png")
    assert len(plt.get_fignums()) == before


def test_uint8_images_are_scaled_not_clipped(tmp_path: Path) -> None:
    x = images(1, n=3)
    as_float = read_png(reconstruction_figure(x, x, tmp_path / "f.png"), 2, 3)
    x8 = (x * 255).round().to(torch.uint8)
    as_uint8 = read_png(reconstruction_figure(x8, x8.numpy(), tmp_path / "u.png"), 2, 3)
    assert float(np.abs(as_float - as_uint8).max()) < 0.05


def test_the_trial_code_leaves_matplotlib_to_the_trials_that_draw() -> None:
    """A search worker imports the trial code before its first trial; most trials are stopped
    early and draw nothing, so Matplotlib (~0.5 s of a worker's start on 2 cores) waits for
    the first figure. Checked in a fresh interpreter: this test process has it loaded."""
    import subprocess
    import sys

    code = ("import sys, compvae.trial, search.run.trainable\n"
            "print(sorted(m for m in sys.modules if m.split('.')[0] == 'matplotlib'))\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"
