"""Masks against a parent whose decoder we can compute by hand.

``BlobParent.decode`` draws a Gaussian blob whose x position is ``z[0]`` and whose brightness
is ``z[1]``; every other latent is ignored. ``encode`` inverts that (intensity centroid and
peak), so images rendered from known codes give back those codes and the mask of every latent
has a known ground truth.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from scipy.ndimage import gaussian_filter
from torch import Tensor, nn

from compvae.masks import (
    EmptyMaskError,
    MaskSteps,
    check_coverage,
    choose_latent,
    empty_fraction,
    gaussian_blur,
    gaussian_kernel1d,
    latent_kl,
    make_masks,
    mask_coverage,
    mask_iou,
    resize_mask,
)

RES = 32
SCALE = 4.0  # pixels per unit of z[0]
SIGMA = 2.0  # blob width in pixels
CENTER = (RES - 1) / 2.0
EPS = 1e-6


def amplitude(z1: Tensor) -> Tensor:
    """Peak brightness from z[1]: 0.3 + 0.6 sigmoid(z1) (so it stays inside (0, 1))."""
    return 0.3 + 0.6 * torch.sigmoid(z1)


def render_np(z0: float, z1: float, res: int = RES) -> np.ndarray:
    """Reference renderer in float64 numpy: what the decoder should output as probabilities."""
    yy, xx = np.mgrid[0:res, 0:res].astype(np.float64)
    cx = CENTER + SCALE * z0
    p = (0.3 + 0.6 / (1.0 + np.exp(-z1))) * np.exp(-((xx - cx) ** 2 + (yy - CENTER) ** 2) / (2 * SIGMA**2))
    return np.clip(p, EPS, 1 - EPS)


class BlobParent(nn.Module):
    """Deterministic stand-in for a trained parent VAE (1 or 3 channels, ``latent_dim`` codes)."""

    def __init__(self, latent_dim: int = 4, channels: int = 1, logvar: list[float] | None = None) -> None:
        super().__init__()
        lv = torch.tensor(logvar if logvar is not None else [-4.6, -4.6] + [0.0] * (latent_dim - 2))
        self.register_buffer("logvar", lv.float())
        self.latent_dim = latent_dim
        self.channels = channels
        yy, xx = torch.meshgrid(torch.arange(RES).float(), torch.arange(RES).float(), indexing="ij")
        self.register_buffer("xx", xx)
        self.register_buffer("yy", yy)
        self.modes_seen: list[bool] = []

    def decode(self, z: Tensor) -> Tensor:
        self.modes_seen.append(self.training)
        cx = CENTER + SCALE * z[:, 0].view(-1, 1, 1)
        amp = amplitude(z[:, 1]).view(-1, 1, 1)
        p = amp * torch.exp(-((self.xx - cx) ** 2 + (self.yy - CENTER) ** 2) / (2 * SIGMA**2))
        p = p.clamp(EPS, 1 - EPS)
        logits = torch.log(p) - torch.log1p(-p)
        return logits.unsqueeze(1).expand(-1, self.channels, -1, -1)

    def encode(self, x: Tensor) -> tuple[Tensor, Tensor]:
        g = x.mean(dim=1)
        mass = g.flatten(1).sum(1)
        cx = (g * self.xx).flatten(1).sum(1) / mass
        unit = torch.exp(-((self.xx - cx.view(-1, 1, 1)) ** 2 + (self.yy - CENTER) ** 2) / (2 * SIGMA**2))
        amp = (mass / unit.flatten(1).sum(1)).clamp(0.3 + 1e-4, 0.9 - 1e-4)
        mu = torch.zeros(x.shape[0], self.latent_dim)
        mu[:, 0] = (cx - CENTER) / SCALE
        mu[:, 1] = torch.logit((amp - 0.3) / 0.6)
        return mu, self.logvar.expand(x.shape[0], -1)


def blob_images(parent: BlobParent, z0: list[float], z1: list[float]) -> Tensor:
    z = torch.zeros(len(z0), parent.latent_dim)
    z[:, 0] = torch.tensor(z0)
    z[:, 1] = torch.tensor(z1)
    with torch.no_grad():
        return torch.sigmoid(parent.decode(z))


@pytest.fixture()
def parent() -> BlobParent:
    return BlobParent()


@pytest.fixture()
def images(parent: BlobParent) -> Tensor:
    return blob_images(parent, [-1.5, -0.5, 0.0, 0.5, 1.0, 1.5], [-1.0, 0.5, 1.5, 0.0, -0.5, 1.0])


def disk(z0: float, radius: float) -> np.ndarray:
    yy, xx = np.mgrid[0:RES, 0:RES].astype(np.float64)
    return ((xx - (CENTER + SCALE * z0)) ** 2 + (yy - CENTER) ** 2 <= radius**2).astype(np.float32)


# ---- the test parent itself -----------------------------------------------------------------
def test_blob_parent_encode_inverts_decode(parent: BlobParent, images: Tensor) -> None:
    mu, _ = parent.encode(images)
    np.testing.assert_allclose(mu[:, 0].numpy(), [-1.5, -0.5, 0.0, 0.5, 1.0, 1.5], atol=1e-3)
    np.testing.assert_allclose(mu[:, 1].numpy(), [-1.0, 0.5, 1.5, 0.0, -0.5, 1.0], atol=1e-3)


# ---- ground truth ------------------------------------------------------------------------------
def test_hard_mask_of_position_latent_matches_hand_computed_difference(parent: BlobParent,
                                                                       images: Tensor) -> None:
    delta, thr = 0.5, 0.02
    masks = make_masks(parent, images, 0, delta, thr)
    assert masks.shape == (6, 1, RES, RES) and masks.dtype == torch.float32
    mu, _ = parent.encode(images)
    for i in range(6):
        z0, z1 = float(mu[i, 0]), float(mu[i, 1])
        expected = np.abs(render_np(z0 + delta / 2, z1) - render_np(z0 - delta / 2, z1)) > thr
        got = masks[i, 0].numpy() > 0.5
        assert (got != expected).sum() <= 2, f"image {i}: {(got != expected).sum()} pixels differ"
        assert got.sum() > 20


def stadium(z0: float, half_shift: float, radius: float) -> np.ndarray:
    """Pixels within ``radius`` of the segment the blob centre sweeps, ``z0 -/+ half_shift``."""
    yy, xx = np.mgrid[0:RES, 0:RES].astype(np.float64)
    c = CENTER + SCALE * z0
    dx = np.maximum(np.abs(xx - c) - SCALE * half_shift, 0.0)
    return (dx**2 + (yy - CENTER) ** 2 <= radius**2).astype(np.float32)


def test_blurred_mask_covers_the_blob_region(parent: BlobParent, images: Tensor) -> None:
    masks = make_masks(parent, images, 0, 0.5, 0.01, blur_sigma=1.0)
    mu, _ = parent.encode(images)
    for i in range(6):
        m = masks[i, 0].numpy()
        z0 = float(mu[i, 0])
        region = stadium(z0, 0.25, 3 * SIGMA)
        inter = (m * region).sum()
        assert inter / np.maximum(m, region).sum() > 0.75  # IoU with the blob's swept region
        assert (m >= stadium(z0, 0.25, 2 * SIGMA)).all()  # the blob's core: fully covered
        assert (m <= stadium(z0, 0.25, 4.5 * SIGMA)).all()  # nothing outside the blob


def test_blur_fills_the_zero_column_of_a_translation(parent: BlobParent) -> None:
    # blob centred exactly on pixel column 16: decodes shifted -/+ 1 px agree on that column
    img = blob_images(parent, [0.125], [1.0])
    cx, cy = 16, round(CENTER)
    sharp = make_masks(parent, img, 0, 0.5, 0.01)
    assert (sharp[0, 0, :, cx] == 0).all() and sharp[0, 0, cy, cx - 1] == 1
    blurred = make_masks(parent, img, 0, 0.5, 0.01, blur_sigma=1.0)
    assert (blurred[0, 0, cy - 3:cy + 4, cx] == 1).all()
    assert (blurred >= sharp).all()


def test_brightness_latent_mask_is_a_solid_disk(parent: BlobParent, images: Tensor) -> None:
    masks = make_masks(parent, images, 1, 0.5, 0.01)
    mu, _ = parent.encode(images)
    # brightness changes every blob pixel in proportion to the blob: a disk, no hole
    for i in range(6):
        z0, z1 = float(mu[i, 0]), float(mu[i, 1])
        expected = np.abs(render_np(z0, z1 + 0.25) - render_np(z0, z1 - 0.25)) > 0.01
        assert (masks[i, 0].numpy().astype(bool) != expected).sum() <= 2
    cx = [round(CENTER + SCALE * float(m)) for m in mu[:, 0]]
    assert all(masks[i, 0, round(CENTER), cx[i]] == 1.0 for i in range(6))


def test_ignored_latent_gives_empty_mask_and_check_coverage_raises(parent: BlobParent,
                                                                   images: Tensor) -> None:
    masks = make_masks(parent, images, 2, 0.5, 0.0, blur_sigma=1.0)
    assert float(masks.abs().max()) == 0.0
    assert empty_fraction(masks) == 1.0
    with pytest.raises(EmptyMaskError) as info:
        check_coverage(masks, 0.002, latent=2)
    msg = str(info.value)
    assert "\n" not in msg
    assert msg.startswith("mask for latent 2 covers 0% of pixels (< min_coverage 0.2%)")
    assert "choose another mask.latent or lower mask.threshold" in msg
    with pytest.raises(EmptyMaskError, match="an empty mask"):
        check_coverage(masks, 0.0, latent=2)  # all-zero fails even with no floor


def test_check_coverage_passes_and_returns_per_image_coverage(parent: BlobParent, images: Tensor) -> None:
    masks = make_masks(parent, images, 0, 0.5, 0.02)
    cov = check_coverage(masks, 0.002, latent=0)
    assert cov.shape == (6,)
    torch.testing.assert_close(cov, masks.flatten(1).mean(1))
    assert empty_fraction(masks) == 0.0
    # message formatting for a non-zero coverage below the floor
    sparse = torch.zeros(2, 1, 100, 100)
    sparse[0, 0, 0, 0] = 1.0  # 0.01% of one image, 0.005% on average
    with pytest.raises(EmptyMaskError, match=r"covers 0\.005% of pixels \(< min_coverage 0\.2%\)"):
        check_coverage(sparse, 0.002, latent=3)
    assert empty_fraction(sparse, 0.002) == 1.0 and empty_fraction(sparse) == 0.5


def test_mask_coverage_and_iou_values() -> None:
    a = torch.zeros(3, 1, 4, 4)
    b = torch.zeros(3, 1, 4, 4)
    a[0, 0, :2] = 1  # 8 pixels
    b[0, 0, 1:3] = 1  # 8 pixels, overlap 4 -> IoU 4/12
    a[1, 0, 0, 0] = 1  # vs empty -> 0
    # image 2: both empty -> defined as 1
    torch.testing.assert_close(mask_coverage(a), torch.tensor([0.5, 1 / 16, 0.0]))
    torch.testing.assert_close(mask_iou(a, b), torch.tensor([1 / 3, 0.0, 1.0]))
    # different resolutions: a 2x2 silhouette block at 8 px equals the 1x1 pixel at 4 px
    sil = torch.zeros(1, 1, 8, 8)
    sil[0, 0, 2:4, 2:4] = 1
    m = torch.zeros(1, 1, 4, 4)
    m[0, 0, 1, 1] = 1
    assert float(mask_iou(m, sil)[0]) == 1.0


# ---- hard / soft ------------------------------------------------------------------------------
def test_hard_masks_are_binary_and_soft_masks_proportional(parent: BlobParent, images: Tensor) -> None:
    hard = make_masks(parent, images, 0, 0.5, 0.01, blur_sigma=1.0)
    assert set(torch.unique(hard).tolist()) == {0.0, 1.0}
    steps = make_masks(parent, images, 0, 0.5, 0.01, blur_sigma=1.0, kind="soft", return_steps=True)
    soft, blurred = steps.mask, steps.blurred
    assert float(soft.min()) >= 0.0 and float(soft.max()) <= 1.0
    assert torch.allclose(soft.flatten(1).amax(1), torch.ones(6))  # the peak gets weight 1
    assert ((soft > 0) == (hard > 0)).all()  # same support as the hard mask
    for i in range(6):  # monotone (non-decreasing) in the blurred difference within an image
        order = torch.argsort(blurred[i].flatten())
        vals = soft[i].flatten()[order]
        assert (vals[1:] >= vals[:-1] - 1e-7).all()
    above = blurred > 0.01
    torch.testing.assert_close(soft[above], (blurred / blurred.flatten(1).amax(1).view(-1, 1, 1, 1))[above])


def test_steps_contents(parent: BlobParent, images: Tensor) -> None:
    steps = make_masks(parent, images, 0, 0.5, 0.02, out_resolution=64, return_steps=True)
    assert isinstance(steps, MaskSteps)
    assert steps.decoded_minus.shape == (6, 1, RES, RES) and steps.decoded_plus.shape == (6, 1, RES, RES)
    assert steps.difference.shape == (6, 1, RES, RES) and steps.blurred.shape == (6, 1, RES, RES)
    assert steps.mask.shape == (6, 1, 64, 64)
    assert steps.delta == 0.5 and steps.latent == 0 and steps.threshold == 0.02
    torch.testing.assert_close(steps.difference, (steps.decoded_plus - steps.decoded_minus).abs())
    torch.testing.assert_close(steps.blurred, steps.difference)  # sigma 0 = no blur
    # the minus decode is the blob shifted left: its centroid is delta/2 * SCALE px left of mu's
    mu, _ = parent.encode(images)
    mu_minus, _ = parent.encode(steps.decoded_minus)
    torch.testing.assert_close(mu_minus[:, 0], mu[:, 0] - 0.25, atol=1e-3, rtol=0)


def test_eval_mode_used_and_restored(parent: BlobParent, images: Tensor) -> None:
    parent.train()
    parent.modes_seen.clear()
    make_masks(parent, images, 0, 0.5, 0.02)
    assert parent.modes_seen and not any(parent.modes_seen)
    assert parent.training
    parent.eval()
    make_masks(parent, images, 0, 0.5, 0.02)
    assert not parent.training


def test_chunking_does_not_change_the_result(parent: BlobParent, images: Tensor) -> None:
    a = make_masks(parent, images, 0, 0.5, 0.02, blur_sigma=1.0, kind="soft")
    b = make_masks(parent, images, 0, 0.5, 0.02, blur_sigma=1.0, kind="soft", chunk_size=4)
    torch.testing.assert_close(a, b)


def test_channels_are_averaged(images: Tensor) -> None:
    rgb = BlobParent(channels=3)
    rgb_images = images.expand(-1, 3, -1, -1)
    gray = make_masks(BlobParent(), images, 0, 0.5, 0.02, kind="soft")
    torch.testing.assert_close(make_masks(rgb, rgb_images, 0, 0.5, 0.02, kind="soft"), gray)


# ---- blur --------------------------------------------------------------------------------------
@pytest.mark.parametrize("sigma", [0.7, 1.0, 2.5])
def test_separable_blur_equals_2d_gaussian_in_the_interior(sigma: float) -> None:
    rng = np.random.default_rng(0)
    x = rng.random((2, 1, 40, 40))
    got = gaussian_blur(torch.from_numpy(x).float(), sigma).numpy()
    k = gaussian_kernel1d(sigma)
    r = (k.numel() - 1) // 2
    for i in range(2):
        ref = gaussian_filter(x[i, 0], sigma, truncate=3.0)
        np.testing.assert_allclose(got[i, 0, r:-r, r:-r], ref[r:-r, r:-r], atol=1e-5)
        # and a direct (non-separable) 2-D conv with the outer-product kernel
        k2 = torch.outer(k, k).view(1, 1, 2 * r + 1, 2 * r + 1)
        direct = F.conv2d(torch.from_numpy(x[i:i + 1]).float(), k2)[0, 0].numpy()
        np.testing.assert_allclose(got[i, 0, r:-r, r:-r], direct, atol=1e-5)
    assert abs(float(k.sum()) - 1.0) < 1e-6
    # a constant image stays constant, borders included (replicate padding)
    torch.testing.assert_close(gaussian_blur(torch.full((1, 1, 9, 9), 0.3), 5.0), torch.full((1, 1, 9, 9), 0.3))


def test_blur_spreads_the_mask(parent: BlobParent, images: Tensor) -> None:
    cov = [float(mask_coverage(make_masks(parent, images, 1, 0.5, 0.005, blur_sigma=s)).mean())
           for s in (0.0, 1.0, 2.0, 3.0)]
    assert cov[0] < cov[1] < cov[2] < cov[3], cov


# ---- resize ------------------------------------------------------------------------------------
def test_resize_keeps_a_one_pixel_line_where_bilinear_truncate_deletes_it() -> None:
    line = torch.zeros(1, 1, 32, 32)
    line[0, 0, :, 13] = 1.0
    up = resize_mask(line, 64, "hard")
    assert up.shape == (1, 1, 64, 64)
    assert (up[0, 0, :, 26:28] == 1).all() and up.sum() == 2 * 64  # exact 2-px line
    soft = resize_mask(line, 64, "soft")
    assert (soft[0, 0, :, 26:28] == 0.75).all()  # kept, no truncation
    # the original: bilinear then truncation to int -> the line vanishes
    original = torch.floor(F.interpolate(line, size=(64, 64), mode="bilinear", align_corners=False))
    assert original.sum() == 0
    # and it erodes a filled square's border
    sq = torch.zeros(1, 1, 32, 32)
    sq[0, 0, 8:24, 8:24] = 1
    eroded = torch.floor(F.interpolate(sq, size=(64, 64), mode="bilinear", align_corners=False))
    assert eroded.sum() < resize_mask(sq, 64, "hard").sum() == 4 * sq.sum()


def test_hard_upsampling_preserves_area_exactly() -> None:
    g = torch.Generator().manual_seed(0)
    m = (torch.rand(4, 1, 32, 32, generator=g) > 0.7).float()
    for res in (64, 128, 256):
        up = resize_mask(m, res, "hard")
        f = res // 32
        torch.testing.assert_close(mask_coverage(up), mask_coverage(m))
        torch.testing.assert_close(up, m.repeat_interleave(f, 2).repeat_interleave(f, 3))
    assert set(torch.unique(resize_mask(m, 48, "hard")).tolist()) == {0.0, 1.0}


def test_downsampling_is_any_overlap() -> None:
    line = torch.zeros(1, 1, 64, 64)
    line[0, 0, :, 9] = 1.0
    down = resize_mask(line, 32, "hard")
    assert (down[0, 0, :, 4] == 1).all() and down.sum() == 32


def test_make_masks_resizes_to_child_resolution(parent: BlobParent, images: Tensor) -> None:
    small = make_masks(parent, images, 0, 0.5, 0.02)
    big = make_masks(parent, images, 0, 0.5, 0.02, out_resolution=128)
    assert big.shape == (6, 1, 128, 128)
    torch.testing.assert_close(mask_coverage(big), mask_coverage(small))
    soft = make_masks(parent, images, 0, 0.5, 0.02, kind="soft", out_resolution=64)
    assert soft.shape == (6, 1, 64, 64) and float(soft.min()) >= 0 and float(soft.max()) <= 1


# ---- randomisation -----------------------------------------------------------------------------
def test_delta_std_is_reproducible_with_a_generator(parent: BlobParent, images: Tensor) -> None:
    def run(seed: int) -> MaskSteps:
        return make_masks(parent, images, 0, 0.5, 0.02, delta_std=0.2,
                          generator=torch.Generator().manual_seed(seed), return_steps=True)

    a, b, c = run(1), run(1), run(2)
    assert a.delta == b.delta and a.delta > 0
    torch.testing.assert_close(a.mask, b.mask)
    assert a.delta != c.delta
    expected = abs(0.5 + 0.2 * torch.randn((), generator=torch.Generator().manual_seed(1)).item())
    assert a.delta == pytest.approx(expected)
    assert run(3).delta != 0.5


def test_randomized_nuisance_contains_fixed_and_is_reproducible(parent: BlobParent, images: Tensor) -> None:
    fixed = make_masks(parent, images, 0, 0.5, 0.02)

    def rand(seed: int, kind: str = "hard") -> Tensor:
        return make_masks(parent, images, 0, 0.5, 0.02, kind=kind, nuisance="randomized",  # type: ignore[arg-type]
                          nuisance_draws=4, generator=torch.Generator().manual_seed(seed))

    r = rand(0)
    assert (r >= fixed).all()  # union over contexts includes the image's own context
    assert float(mask_coverage(r).mean()) > float(mask_coverage(fixed).mean())
    torch.testing.assert_close(r, rand(0))
    assert set(torch.unique(r).tolist()) <= {0.0, 1.0}
    # the dimmest blob (z1 = -1) gets a bigger mask in brighter contexts, while its x position
    # (latent 0's own value) is kept: the union is still centred on its own blob
    dim = int(torch.argmin(images.flatten(1).amax(1)))
    assert float(mask_coverage(r)[dim]) > float(mask_coverage(fixed)[dim])
    soft = rand(0, "soft")
    assert float(soft.min()) >= 0 and float(soft.max()) <= 1
    # a single image has no batch to permute: prior contexts, still reproducible and a superset
    one = images[:1]
    a = make_masks(parent, one, 0, 0.5, 0.02, nuisance="randomized", generator=torch.Generator().manual_seed(5))
    b = make_masks(parent, one, 0, 0.5, 0.02, nuisance="randomized", generator=torch.Generator().manual_seed(5))
    torch.testing.assert_close(a, b)
    assert (a >= fixed[:1]).all()


def test_randomized_ignored_latent_is_still_empty(parent: BlobParent, images: Tensor) -> None:
    m = make_masks(parent, images, 3, 0.5, 0.0, nuisance="randomized", generator=torch.Generator().manual_seed(0))
    assert float(m.max()) == 0.0


def test_bad_arguments(parent: BlobParent, images: Tensor) -> None:
    with pytest.raises(ValueError, match="out of range"):
        make_masks(parent, images, 4, 0.5, 0.02)
    with pytest.raises(ValueError, match="kind"):
        make_masks(parent, images, 0, 0.5, 0.02, kind="fuzzy")  # type: ignore[call-overload]
    with pytest.raises(ValueError):
        make_masks(parent, images, 0, 0.0, 0.02)
    with pytest.raises(ValueError, match="shape"):
        make_masks(parent, images[0], 0, 0.5, 0.02)


# ---- choosing the latent ---------------------------------------------------------------------
def test_latent_kl_matches_closed_form(parent: BlobParent, images: Tensor) -> None:
    kl = latent_kl(parent, images)
    mu, logvar = parent.encode(images)
    expected = (0.5 * (mu**2 + logvar.exp() - logvar - 1)).mean(0)
    torch.testing.assert_close(kl, expected)
    assert kl.shape == (4,) and float(kl[2]) == 0.0 and float(kl[3]) == 0.0


def test_choose_latent_by_kl(parent: BlobParent, images: Tensor) -> None:
    assert choose_latent(parent, images, by="kl", kl_per_latent=torch.tensor([0.1, 3.0, 0.2, 2.0])) == 1
    assert choose_latent(parent, images, by="kl", kl_per_latent=np.array([2.5, 0.0, 0.0, 0.0])) == 0
    # computed KL: latents 2 and 3 are at the prior (KL 0) and never chosen
    assert choose_latent(parent, images, by="kl") in (0, 1)
    # mi without factors falls back to KL
    kl = [0.1, 3.0, 0.2, 2.0]
    assert choose_latent(parent, images, by="mi", kl_per_latent=kl) == 1
    with pytest.raises(EmptyMaskError, match="no active latent"):
        choose_latent(parent, images, by="kl", kl_per_latent=torch.zeros(4))


def test_choose_latent_by_mi_picks_the_latent_that_encodes_a_factor() -> None:
    # latent 3 carries the most KL (a tiny posterior variance) but its mean is constant and the
    # decoder ignores it: KL picks it, MI does not.
    p = BlobParent(logvar=[-4.6, -4.6, 0.0, -12.0])
    rng = np.random.default_rng(0)
    factors = np.stack([rng.integers(0, 8, 400), rng.integers(0, 3, 400)], axis=1)
    z0 = (factors[:, 0] - 3.5) / 2.0  # 8 x positions in [-1.75, 1.75]
    z1 = factors[:, 1] - 1.0  # 3 brightness levels
    imgs = blob_images(p, z0.tolist(), z1.tolist())
    kl = latent_kl(p, imgs)
    assert int(torch.argmax(kl)) == 3
    assert choose_latent(p, imgs, by="kl") == 3
    # x and brightness are both fully encoded (normalised MI 1 each): latent 0's larger KL wins
    assert choose_latent(p, imgs, factors=factors, by="mi") == 0
    assert choose_latent(p, imgs, factors=factors[:, 1:], by="mi") == 1  # only brightness labelled
    # active rule: with latent 3's KL far above, latents 0 and 1 are inactive at fraction 0.9
    assert choose_latent(p, imgs, factors=factors, by="mi", active_fraction=0.9) == 3


class CodeParent(nn.Module):
    """A parent whose "images" are its codes: ``(N, 1, 1, D)`` in, posterior means ``x`` out."""

    def encode(self, x: Tensor) -> tuple[Tensor, Tensor]:
        mu = x.flatten(1)
        return mu, torch.full_like(mu, -4.6)

    def decode(self, z: Tensor) -> Tensor:
        return z.view(z.shape[0], 1, 1, -1)


def test_choose_latent_by_mi_normalises_by_factor_entropy() -> None:
    from sklearn.metrics import mutual_info_score

    # factors: a 16-level position and a 2-level switch, balanced (32 copies of the full grid).
    # latent 0 knows position only to a quarter (4 of 16 levels), latent 1 knows the switch
    # exactly, latent 2 is noise.
    pos, switch = (g.ravel() for g in np.meshgrid(np.arange(16), np.arange(2), indexing="ij"))
    pos, switch = np.tile(pos, 32), np.tile(switch, 32)
    noise = np.random.default_rng(0).normal(size=pos.size)
    codes = np.stack([pos // 4, switch, noise], axis=1).astype(np.float32)
    factors = np.stack([pos, switch], axis=1)
    # raw MI (the old rule) prefers latent 0: log 4 nats > log 2 nats
    assert mutual_info_score(pos, pos // 4) == pytest.approx(np.log(4))
    assert mutual_info_score(switch, switch) == pytest.approx(np.log(2))
    # normalised: latent 0 explains half of H(position) (log 4 / log 16), latent 1 all of H(switch)
    images = torch.from_numpy(codes).view(-1, 1, 1, 3)
    assert choose_latent(CodeParent(), images, factors=factors, by="mi") == 1
    assert choose_latent(CodeParent(), images, by="kl") == 0  # the most KL: not what MI picks
    # a constant factor (zero entropy) is skipped rather than divided by
    constant = np.concatenate([factors, np.zeros((pos.size, 1), dtype=np.int64)], axis=1)
    assert choose_latent(CodeParent(), images, factors=constant, by="mi") == 1


# ---- a real (untrained) VAE: shapes, device, dtype -------------------------------------------
def test_real_vae_shapes_and_device() -> None:
    models = pytest.importorskip("compvae.models")
    torch.manual_seed(0)
    vae = models.VAE(resolution=32, in_channels=3, out_channels=3, latent_dim=6, width=8, hidden=32)
    vae.train()
    x = torch.rand(5, 3, 32, 32)
    steps = make_masks(vae, x, 2, 2.0, 0.0, blur_sigma=1.0, out_resolution=64, return_steps=True)
    assert steps.mask.shape == (5, 1, 64, 64) and steps.mask.dtype == torch.float32
    assert steps.decoded_minus.shape == (5, 3, 32, 32)
    assert steps.mask.device == x.device
    assert vae.training  # mode restored
    soft = make_masks(vae, x, 2, 2.0, 0.001, kind="soft", nuisance="randomized", nuisance_draws=2,
                      delta_std=0.5, out_resolution=64, generator=torch.Generator().manual_seed(0))
    assert soft.shape == (5, 1, 64, 64) and 0.0 <= float(soft.min()) <= float(soft.max()) <= 1.0
    assert latent_kl(vae, x).shape == (6,)
    # inside an AMP step the VAE's own outputs change, the masks do not (parent runs in fp32)
    vae.eval()
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        low = vae.decode(vae.encode(x)[0]).float()
        amp_mask = make_masks(vae, x, 2, 2.0, 0.001, kind="soft")
    with torch.no_grad():
        assert not torch.equal(low, vae.decode(vae.encode(x)[0]))
    torch.testing.assert_close(amp_mask, make_masks(vae, x, 2, 2.0, 0.001, kind="soft"))
    assert 0 <= choose_latent(vae, x, factors=np.arange(5)[:, None], by="mi") < 6
    if torch.cuda.is_available():
        vae.cuda()
        m = make_masks(vae, x, 2, 2.0, 0.0, out_resolution=64)
        assert m.device == x.device and m.shape == (5, 1, 64, 64)


def test_masks_ignore_an_enclosing_autocast(parent: BlobParent, images: Tensor) -> None:
    # an AMP training step (joint mode) calls make_masks inside autocast: masks stay float32-exact
    ref = make_masks(parent, images, 0, 0.5, 0.02, kind="soft")
    with torch.autocast("cpu", dtype=torch.bfloat16):
        got = make_masks(parent, images, 0, 0.5, 0.02, kind="soft")
    assert got.dtype == torch.float32
    torch.testing.assert_close(got, ref)
