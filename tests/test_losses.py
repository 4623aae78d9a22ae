"""Beta-TCVAE loss and the MWS/MSS estimators, checked against closed-form limits."""

from __future__ import annotations

import math

import pytest
import torch

from compvae.losses import (
    beta_tcvae_loss,
    gaussian_kl_per_latent,
    kl_decomposition,
    log_density_gaussian,
    mss_log_weights,
    mws_log_weights,
    reconstruction_loss,
    total_correlation,
)
from compvae.models import VAEOutput

pytestmark = pytest.mark.usefixtures("one_thread")


def _narrow_separated(batch: int, dim: int, seed: int = 0) -> tuple[torch.Tensor, ...]:
    """Posteriors so narrow and far apart that q(z_i|x_j) vanishes off the diagonal, per dim."""
    g = torch.Generator().manual_seed(seed)
    mu = torch.randn(batch, dim, generator=g) * 3.0
    logvar = torch.full((batch, dim), -20.0)
    z = mu + torch.randn(batch, dim, generator=g) * torch.exp(0.5 * logvar)
    return z, mu, logvar


def test_log_density_gaussian_matches_torch_distributions() -> None:
    x, mu, logvar = torch.randn(5, 3), torch.randn(5, 3), torch.randn(5, 3)
    ref = torch.distributions.Normal(mu, torch.exp(0.5 * logvar)).log_prob(x)
    torch.testing.assert_close(log_density_gaussian(x, mu, logvar), ref)


def test_mss_weights_are_on_the_true_diagonal() -> None:
    b, n = 6, 100
    w = mss_log_weights(b, n, dtype=torch.float64).exp()
    m = b - 1
    torch.testing.assert_close(torch.diagonal(w), torch.full((b,), 1.0 / n, dtype=torch.float64))
    # exactly one stratum element per row, never on the diagonal, never all in column 0
    strat = torch.isclose(w, torch.tensor((n - m) / (n * m), dtype=torch.float64))
    assert strat.sum(dim=1).tolist() == [1] * b
    assert not strat.diagonal().any()
    assert strat.sum(dim=0).tolist() == [1] * b
    rest = ~strat & ~torch.eye(b, dtype=torch.bool)
    torch.testing.assert_close(w[rest], torch.full((b * (b - 2),), 1.0 / m, dtype=torch.float64))
    torch.testing.assert_close(w.sum(dim=1), torch.ones(b, dtype=torch.float64))


def test_mss_weights_smallest_batch_sum_to_one() -> None:
    w = mss_log_weights(2, 10, dtype=torch.float64).exp()
    torch.testing.assert_close(w, torch.tensor([[0.1, 0.9], [0.9, 0.1]], dtype=torch.float64))


def test_mws_weights_keep_the_log_nm_constant() -> None:
    w = mws_log_weights(4, 50)
    assert torch.allclose(w, torch.full((4, 4), -math.log(200.0)))


@pytest.mark.parametrize(("batch", "dim", "n"), [(16, 5, 1000), (32, 3, 60000), (8, 10, 8)])
def test_mss_tc_is_d_minus_1_log_n_for_narrow_separated_posteriors(batch: int, dim: int, n: int) -> None:
    z, mu, logvar = _narrow_separated(batch, dim)
    tc = total_correlation(z, mu, logvar, n, estimator="mss")
    assert tc.dim() == 0
    assert tc.item() == pytest.approx((dim - 1) * math.log(n), abs=1e-3)


@pytest.mark.parametrize(("batch", "dim", "n"), [(16, 5, 1000), (32, 3, 60000)])
def test_mws_tc_is_d_minus_1_log_nb_for_narrow_separated_posteriors(batch: int, dim: int, n: int) -> None:
    z, mu, logvar = _narrow_separated(batch, dim)
    tc = total_correlation(z, mu, logvar, n, estimator="mws")
    assert tc.item() == pytest.approx((dim - 1) * math.log(n * batch), abs=1e-3)


def test_mss_tc_near_zero_for_a_factorised_aggregate_posterior() -> None:
    g = torch.Generator().manual_seed(1)
    b, d, s2 = 1024, 4, 0.5  # mu ~ N(0, s2) per dim, posterior var 1 - s2: q(z) = N(0, I)
    mu = torch.randn(b, d, generator=g) * math.sqrt(s2)
    logvar = torch.full((b, d), math.log(1 - s2))
    z = mu + torch.randn(b, d, generator=g) * math.sqrt(1 - s2)
    assert abs(total_correlation(z, mu, logvar, 10**6).item()) < 0.03
    # and clearly positive once two dimensions are made dependent
    mu[:, 1] = mu[:, 0]
    z = mu + torch.randn(b, d, generator=g) * math.sqrt(1 - s2)
    assert total_correlation(z, mu, logvar, 10**6).item() > 0.1


@pytest.mark.parametrize("estimator", ["mss", "mws"])
def test_decomposition_sums_to_the_monte_carlo_kl(estimator: str) -> None:
    g = torch.Generator().manual_seed(2)
    mu, logvar = torch.randn(12, 4, generator=g), torch.randn(12, 4, generator=g) * 0.5
    z = mu + torch.randn(12, 4, generator=g) * torch.exp(0.5 * logvar)
    parts = kl_decomposition(z, mu, logvar, 500, estimator)  # type: ignore[arg-type]
    mc_kl = (log_density_gaussian(z, mu, logvar) - log_density_gaussian(z, torch.zeros(1), torch.zeros(1)))
    torch.testing.assert_close(parts.mi + parts.tc + parts.dim_kl, mc_kl.sum(1).mean())
    torch.testing.assert_close(parts.tc, total_correlation(z, mu, logvar, 500, estimator))  # type: ignore[arg-type]


def test_tc_rejects_bad_sizes_and_estimators() -> None:
    z = torch.zeros(4, 2)
    with pytest.raises(ValueError, match="dataset_size"):
        total_correlation(z, z, z, 3)
    with pytest.raises(ValueError, match="at least 2"):
        total_correlation(z[:1], z[:1], z[:1], 10)
    with pytest.raises(ValueError, match="unknown TC estimator 'foo'"):
        total_correlation(z, z, z, 10, estimator="foo")  # type: ignore[arg-type]


def _fake_output(b: int = 8, c: int = 3, r: int = 4, d: int = 5, seed: int = 3) -> tuple[torch.Tensor, VAEOutput]:
    g = torch.Generator().manual_seed(seed)
    target = torch.rand(b, c, r, r, generator=g)
    mu = torch.randn(b, d, generator=g, requires_grad=True)
    logvar = (torch.randn(b, d, generator=g) * 0.3).requires_grad_()
    z = mu + torch.randn(b, d, generator=g) * torch.exp(0.5 * logvar)
    logits = torch.randn(b, c, r, r, generator=g, requires_grad=True)
    return target, VAEOutput(logits, mu, logvar, z)


@pytest.mark.parametrize("recon", ["bernoulli", "gaussian"])
@pytest.mark.parametrize("estimator", ["mss", "mws"])
def test_loss_breakdown_is_finite_and_consistent(recon: str, estimator: str) -> None:
    target, out = _fake_output()
    beta = 6.0
    loss, bd = beta_tcvae_loss(target, out, beta, 1000, recon=recon, estimator=estimator)  # type: ignore[arg-type]
    assert set(bd) == {"loss", "recon", "kl", "tc", "mi", "dim_kl", "kl_per_latent"}
    assert bd["kl_per_latent"].shape == (5,)
    for key, value in bd.items():
        assert torch.isfinite(value).all(), key
        assert not value.requires_grad, key
        assert value.dtype == torch.float32
        if key != "kl_per_latent":
            assert value.dim() == 0, key
    torch.testing.assert_close(bd["loss"], bd["recon"] + bd["kl"] + (beta - 1) * bd["tc"])
    torch.testing.assert_close(bd["kl"], bd["kl_per_latent"].sum())
    torch.testing.assert_close(loss.detach(), bd["loss"])
    loss.backward()
    assert out.logits.grad is not None and out.mu.grad is not None and out.logvar.grad is not None


def test_bernoulli_recon_is_bce_summed_over_pixels_averaged_over_batch() -> None:
    target, out = _fake_output()
    expected = torch.nn.functional.binary_cross_entropy_with_logits(out.logits, target, reduction="sum") / 8
    torch.testing.assert_close(reconstruction_loss(target, out.logits), expected)
    gauss = ((torch.sigmoid(out.logits) - target) ** 2).sum() / 8
    torch.testing.assert_close(reconstruction_loss(target, out.logits, "gaussian"), gauss)


def test_recon_weighting_mask_broadcasts_and_zero_weight_gives_zero() -> None:
    target, out = _fake_output()
    zero = torch.zeros(8, 1, 4, 4)
    for recon in ("bernoulli", "gaussian"):
        _, bd = beta_tcvae_loss(target, out, 4.0, 100, recon=recon, weight=zero)  # type: ignore[arg-type]
        assert bd["recon"].item() == 0.0
    mask = torch.zeros(8, 1, 4, 4)
    mask[:, :, :2] = 1.0
    half = reconstruction_loss(target, out.logits, weight=mask)
    top = reconstruction_loss(target[:, :, :2], out.logits[:, :, :2])
    torch.testing.assert_close(half, top)
    per_channel = torch.ones(8, 3, 4, 4)
    per_channel[:, 2] = 0.0
    torch.testing.assert_close(reconstruction_loss(target, out.logits, weight=per_channel),
                               reconstruction_loss(target[:, :2], out.logits[:, :2]))


def test_kl_scale_scales_per_latent_kl() -> None:
    target, out = _fake_output()
    scale = torch.tensor([1.0, 0.25, 1.0, 0.0, 1.0])
    _, plain = beta_tcvae_loss(target, out, 2.0, 100)
    _, scaled = beta_tcvae_loss(target, out, 2.0, 100, kl_scale=scale)
    torch.testing.assert_close(scaled["kl_per_latent"], plain["kl_per_latent"])
    torch.testing.assert_close(scaled["kl"], (scale * plain["kl_per_latent"]).sum())
    torch.testing.assert_close(scaled["loss"] - plain["loss"], scaled["kl"] - plain["kl"])
    with pytest.raises(ValueError, match="kl_scale"):
        beta_tcvae_loss(target, out, 2.0, 100, kl_scale=torch.ones(3))


def test_analytic_kl_and_beta_one_is_plain_vae() -> None:
    target, out = _fake_output()
    ref = torch.distributions.kl_divergence(
        torch.distributions.Normal(out.mu, torch.exp(0.5 * out.logvar)), torch.distributions.Normal(0.0, 1.0))
    torch.testing.assert_close(gaussian_kl_per_latent(out.mu, out.logvar), ref.mean(0))
    loss, bd = beta_tcvae_loss(target, out, 1.0, 100)
    torch.testing.assert_close(loss.detach(), bd["recon"] + bd["kl"])


def test_half_precision_outputs_are_computed_in_float32() -> None:
    target, out = _fake_output()
    half = VAEOutput(*(t.detach().bfloat16() for t in out))
    loss, bd = beta_tcvae_loss(target, half, 10.0, 100)
    assert loss.dtype == torch.float32 and torch.isfinite(loss)


def test_bad_recon_and_shape_mismatch_raise() -> None:
    target, out = _fake_output()
    with pytest.raises(ValueError, match="unknown reconstruction loss 'l1'"):
        beta_tcvae_loss(target, out, 2.0, 100, recon="l1")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="differ in shape"):
        beta_tcvae_loss(target[:, :2], out, 2.0, 100)
