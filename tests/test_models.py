"""Shape and size contracts of the conv VAE family (tiny widths keep this fast)."""

from __future__ import annotations

import pytest
import torch

from compvae.config import VAEConfig
from compvae.models import VAE, VAEOutput, build_vae, conv_widths

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.mark.parametrize("resolution", [32, 64, 128, 256])
@pytest.mark.parametrize("channels", [(1, 1), (3, 3), (4, 4), (3, 4)])
def test_shapes_per_resolution_and_channels(resolution: int, channels: tuple[int, int]) -> None:
    cin, cout = channels
    model = VAE(resolution, cin, cout, latent_dim=5, width=4, hidden=16)
    x = torch.rand(2, cin, resolution, resolution)
    mu, logvar = model.encode(x)
    assert mu.shape == logvar.shape == (2, 5)
    assert model.decode(mu).shape == (2, cout, resolution, resolution)
    out = model(x)
    assert isinstance(out, VAEOutput)
    assert out.logits.shape == (2, cout, resolution, resolution)
    assert out.z.shape == (2, 5)


def test_number_of_convs_halves_down_to_4x4() -> None:
    assert conv_widths(32, 32) == [32, 32, 64]
    assert conv_widths(64, 32) == [32, 32, 64, 64]  # the original 64 px parent
    assert conv_widths(256, 32) == [32, 32, 64, 64, 128, 128]
    assert conv_widths(256, 256) == [256, 256, 512, 512, 512, 512]  # capped
    model = VAE(128, 3, 3, 10, width=8)
    convs = [m for m in model.encoder_conv if isinstance(m, torch.nn.Conv2d)]
    deconvs = [m for m in model.decoder_conv if isinstance(m, torch.nn.ConvTranspose2d)]
    assert len(convs) == len(deconvs) == 5


def test_param_count_matches_hand_count_for_original_parent() -> None:
    model = VAE(64, 3, 3, 10)  # width 32, hidden 256
    convs = 3 * 32 * 16 + 32 + 32 * 32 * 16 + 32 + 32 * 64 * 16 + 64 + 64 * 64 * 16 + 64
    enc_dense = 1024 * 256 + 256 + 256 * 20 + 20
    dec_dense = 10 * 256 + 256 + 256 * 1024 + 1024
    deconvs = 64 * 64 * 16 + 64 + 64 * 32 * 16 + 32 + 32 * 32 * 16 + 32 + 32 * 3 * 16 + 3
    assert sum(p.numel() for p in model.parameters()) == convs + enc_dense + dec_dense + deconvs


def test_eval_mode_uses_the_mean_and_train_mode_samples() -> None:
    torch.manual_seed(0)
    model = VAE(32, 1, 1, 3, width=4, hidden=8)
    x = torch.rand(4, 1, 32, 32)
    model.eval()
    out = model(x)
    assert torch.equal(out.z, out.mu)
    assert not torch.equal(model(x, sample=True).z, out.mu)
    model.train()
    assert not torch.equal(model(x).z, model(x).mu)


def test_gradients_reach_every_parameter() -> None:
    model = VAE(32, 2, 2, 4, width=4, hidden=8)
    out = model(torch.rand(3, 2, 32, 32))
    (out.logits.mean() + out.mu.sum() + out.logvar.sum()).backward()
    assert all(p.grad is not None for p in model.parameters())


def test_build_vae_from_config() -> None:
    cfg = VAEConfig(resolution=64, latent_dim=7, width=8)
    model = build_vae(cfg, in_channels=4, out_channels=4)
    assert (model.resolution, model.latent_dim, model.width) == (64, 7, 8)
    assert model(torch.rand(1, 4, 64, 64)).logits.shape == (1, 4, 64, 64)


@pytest.mark.parametrize("resolution", [16, 48, 512])
def test_unsupported_resolution_is_a_clear_value_error(resolution: int) -> None:
    with pytest.raises(ValueError, match=f"unsupported resolution {resolution}.*32, 64, 128, 256"):
        VAE(resolution, 3, 3, 10)


def test_wrong_input_shape_is_a_clear_value_error() -> None:
    model = VAE(32, 3, 3, 4, width=4, hidden=8)
    with pytest.raises(ValueError, match=r"expected input \(B, 3, 32, 32\)"):
        model.encode(torch.rand(1, 3, 64, 64))
