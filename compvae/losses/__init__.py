"""Beta-TCVAE loss and the minibatch TC/MI/dim-KL estimators (MWS and MSS)."""

from compvae.losses.beta_tcvae import (
    RECONS,
    beta_tcvae_loss,
    gaussian_kl_per_latent,
    reconstruction_loss,
)
from compvae.losses.tc import (
    ESTIMATORS,
    TCDecomposition,
    kl_decomposition,
    log_density_gaussian,
    mss_log_weights,
    mws_log_weights,
    total_correlation,
)

__all__ = [
    "ESTIMATORS",
    "RECONS",
    "TCDecomposition",
    "beta_tcvae_loss",
    "gaussian_kl_per_latent",
    "kl_decomposition",
    "log_density_gaussian",
    "mss_log_weights",
    "mws_log_weights",
    "reconstruction_loss",
    "total_correlation",
]
