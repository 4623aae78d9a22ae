"""One convolutional VAE family for every resolution the project uses (32, 64, 128, 256 px).

The parent (small images) and the child (large images, extra mask channel) must be the same
kind of model so that a gain measured on the child comes from masking, not from a different
architecture. So there is a single family, parameterised by resolution, channel counts and
latent size, following the original work's parent: convs with kernel 4, stride 2, padding 1
(each halves the side) down to 4x4, then a dense ``hidden`` layer and a dense layer to
``2 * latent_dim`` (mean and log-variance). The decoder mirrors it with transposed convs and
returns logits (apply a sigmoid for images), which keeps the Bernoulli loss numerically stable.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import torch
from torch import nn

from compvae.config import VAEConfig

SUPPORTED_RESOLUTIONS: tuple[int, ...] = (32, 64, 128, 256)
BOTTOM = 4  # side of the last feature map; every resolution is reduced to 4x4
MAX_CHANNELS = 512  # width cap so 256 px models with a wide first layer stay trainable


class VAEOutput(NamedTuple):
    """Everything a loss needs from one forward pass.

    ``z`` is returned (not resampled inside the loss) so the TC estimator sees exactly the
    samples that produced ``logits``.
    """

    logits: torch.Tensor  # (B, out_channels, R, R), pre-sigmoid
    mu: torch.Tensor  # (B, D)
    logvar: torch.Tensor  # (B, D)
    z: torch.Tensor  # (B, D)


def conv_widths(resolution: int, width: int) -> list[int]:
    """Output channels of each encoder conv: ``width``, doubling every two layers, capped.

    Doubling every two layers reproduces the original 64 px parent (32, 32, 64, 64) and keeps
    the parameter count of the larger resolutions moderate. The cap is ``MAX_CHANNELS`` (or
    ``width`` itself if that is larger) so a wide first layer never shrinks deeper down.
    """
    if resolution not in SUPPORTED_RESOLUTIONS:
        raise ValueError(
            f"unsupported resolution {resolution}; choose one of "
            f"{', '.join(str(r) for r in SUPPORTED_RESOLUTIONS)}")
    if width < 1:
        raise ValueError(f"width must be >= 1, got {width}")
    layers = int(math.log2(resolution // BOTTOM))
    cap = max(width, MAX_CHANNELS)
    return [min(width * 2 ** (i // 2), cap) for i in range(layers)]


class VAE(nn.Module):
    """Conv encoder -> diagonal Gaussian posterior -> transposed-conv decoder producing logits.

    Args:
        resolution: image side in pixels, one of ``SUPPORTED_RESOLUTIONS``.
        in_channels: channels of the encoded input (e.g. 3, or 4 with a mask channel).
        out_channels: channels of the reconstruction (may differ from ``in_channels``).
        latent_dim: number of latent dimensions D.
        width: channels of the first conv (doubled every two layers, capped).
        hidden: units of the dense layer between the 4x4 features and the latent.
        cond_dim: size of a code the decoder reads beside z (``child.parent_code: decoder``);
            the encoder never sees it.
    """

    def __init__(self, resolution: int, in_channels: int, out_channels: int, latent_dim: int,
                 width: int = 32, hidden: int = 256, cond_dim: int = 0) -> None:
        super().__init__()
        for name, value in (("in_channels", in_channels), ("out_channels", out_channels),
                            ("latent_dim", latent_dim), ("hidden", hidden)):
            if value < 1:
                raise ValueError(f"{name} must be >= 1, got {value}")
        widths = conv_widths(resolution, width)
        self.resolution = resolution
        self.in_channels = in_channels
        self.out_channels = out_channels
        self.latent_dim = latent_dim
        self.width = width
        self.hidden = hidden
        if cond_dim < 0:
            raise ValueError(f"cond_dim must be >= 0, got {cond_dim}")
        self.cond_dim = cond_dim
        self._bottom_channels = widths[-1]
        flat = widths[-1] * BOTTOM * BOTTOM

        enc: list[nn.Module] = []
        prev = in_channels
        for w in widths:
            enc += [nn.Conv2d(prev, w, kernel_size=4, stride=2, padding=1), nn.ReLU(inplace=True)]
            prev = w
        self.encoder_conv = nn.Sequential(*enc)
        self.encoder_dense = nn.Sequential(
            nn.Flatten(), nn.Linear(flat, hidden), nn.ReLU(inplace=True), nn.Linear(hidden, 2 * latent_dim))

        self.decoder_dense = nn.Sequential(
            nn.Linear(latent_dim + cond_dim, hidden), nn.ReLU(inplace=True), nn.Linear(hidden, flat),
            nn.ReLU(inplace=True))
        dec: list[nn.Module] = []
        rev = widths[::-1]
        for i, w in enumerate(rev):
            last = i == len(rev) - 1
            nxt = out_channels if last else rev[i + 1]
            dec.append(nn.ConvTranspose2d(w, nxt, kernel_size=4, stride=2, padding=1))
            if not last:
                dec.append(nn.ReLU(inplace=True))
        self.decoder_conv = nn.Sequential(*dec)

    def encode(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Posterior parameters ``(mu, logvar)``, each (B, D), for images (B, in_channels, R, R)."""
        if x.dim() != 4 or x.shape[1] != self.in_channels or x.shape[-2:] != (self.resolution,) * 2:
            raise ValueError(
                f"expected input (B, {self.in_channels}, {self.resolution}, {self.resolution}), "
                f"got {tuple(x.shape)}")
        stats = self.encoder_dense(self.encoder_conv(x))
        mu, logvar = stats.chunk(2, dim=1)
        return mu, logvar

    def decode(self, z: torch.Tensor, cond: torch.Tensor | None = None) -> torch.Tensor:
        """Logits (B, out_channels, R, R) for latents (B, D) (and the condition (B, cond_dim),
        required when ``cond_dim`` > 0); apply a sigmoid to get images."""
        if self.cond_dim:
            if cond is None or cond.shape != (z.shape[0], self.cond_dim):
                got = None if cond is None else tuple(cond.shape)
                raise ValueError(f"this decoder reads a condition ({z.shape[0]}, {self.cond_dim}), got {got}")
            z = torch.cat([z, cond.to(z.dtype)], dim=1)
        elif cond is not None:
            raise ValueError("this decoder takes no condition (cond_dim 0)")
        h = self.decoder_dense(z).view(z.shape[0], self._bottom_channels, BOTTOM, BOTTOM)
        return self.decoder_conv(h)

    @staticmethod
    def reparameterize(mu: torch.Tensor, logvar: torch.Tensor) -> torch.Tensor:
        """z = mu + sigma * eps with eps from torch's global RNG (seeded and checkpointed by the
        Trainer, so resumed training draws the same noise)."""
        return mu + torch.randn_like(mu) * torch.exp(0.5 * logvar)

    def forward(self, x: torch.Tensor, sample: bool | None = None,
                cond: torch.Tensor | None = None) -> VAEOutput:
        """Encode, draw z and decode.

        ``sample=None`` samples in training mode and uses the posterior mean in eval mode, so
        evaluation reconstructions are deterministic; pass ``sample=True`` to get posterior
        samples in eval mode too (e.g. for a validation TC estimate).
        """
        mu, logvar = self.encode(x)
        do_sample = self.training if sample is None else sample
        z = self.reparameterize(mu, logvar) if do_sample else mu
        return VAEOutput(self.decode(z, cond), mu, logvar, z)


def build_vae(cfg: VAEConfig, in_channels: int, out_channels: int, cond_dim: int = 0) -> VAE:
    """The VAE a parent/child config describes (resolution, latent size, width)."""
    return VAE(cfg.resolution, in_channels, out_channels, cfg.latent_dim, width=cfg.width, cond_dim=cond_dim)
