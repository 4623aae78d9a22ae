"""compvae: masked compositional VAEs (parent Beta-TCVAE -> latent mask -> child VAE)."""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("compvae-search")
except PackageNotFoundError:  # running from a source tree that was not installed
    __version__ = "0.0.0+local"

__all__ = ["__version__"]
