"""Disentanglement and reconstruction metrics, matching disentanglement_lib's definitions.

Array metrics take codes float (n, d) (posterior means) and factors int (n, K); sampling
metrics take a ``GroundTruthData``, an ``encode_fn`` and a ``numpy.random.Generator``.
``evaluate`` is the single entry point the trial uses; it returns a flat ``dict[str, float]``.
"""

from compvae.metrics.betavae import betavae_score
from compvae.metrics.dci import (
    completeness_per_factor,
    dci,
    dci_from_importance,
    disentanglement_per_code,
    importance_matrix,
)
from compvae.metrics.evaluate import DEFAULT_METRICS, METRICS, evaluate
from compvae.metrics.factorvae import factorvae_score
from compvae.metrics.mig import mig, mig_per_factor
from compvae.metrics.modularity import modularity_explicitness, modularity_from_mi
from compvae.metrics.recon import (
    bce_per_image,
    masked_recon_error,
    mse_per_image,
    pixel_bce,
    pixel_mse,
)
from compvae.metrics.sap import sap, sap_per_factor, sap_score_matrix
from compvae.metrics.unsupervised import (
    active_units,
    codes_mutual_info,
    gaussian_total_correlation,
    gaussian_wasserstein_correlation,
    per_latent_kl,
)

__all__ = [
    "DEFAULT_METRICS",
    "METRICS",
    "active_units",
    "bce_per_image",
    "betavae_score",
    "codes_mutual_info",
    "completeness_per_factor",
    "dci",
    "dci_from_importance",
    "disentanglement_per_code",
    "evaluate",
    "factorvae_score",
    "gaussian_total_correlation",
    "gaussian_wasserstein_correlation",
    "importance_matrix",
    "masked_recon_error",
    "mig",
    "mig_per_factor",
    "modularity_explicitness",
    "modularity_from_mi",
    "mse_per_image",
    "per_latent_kl",
    "pixel_bce",
    "pixel_mse",
    "sap",
    "sap_per_factor",
    "sap_score_matrix",
]
