"""Conv VAE family shared by the parent and the child (see :mod:`compvae.models.vae`)."""

from compvae.models.vae import SUPPORTED_RESOLUTIONS, VAE, VAEOutput, build_vae, conv_widths

__all__ = ["SUPPORTED_RESOLUTIONS", "VAE", "VAEOutput", "build_vae", "conv_widths"]
