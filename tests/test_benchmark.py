"""The scenes benchmark and what it needs: data invariants, the design check, rate-gated
informativeness, the oracle mask, parent-code conditioning, the KL warm-up and the paired
analysis of a study."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest
import torch
from scipy import stats

from compvae.child import kl_warmup_weight
from compvae.config import TrialConfig, preset
from compvae.data import get_dataset
from compvae.data.design import factor_costs
from compvae.data.scenes import (
    DIM_HALF,
    FACTOR_NAMES,
    FINE,
    OUTSIDE,
    TEXTURE_CONTRASTS,
    TEXTURE_MEAN,
    Scenes,
    texture,
)
from compvae.errors import ConfigError
from compvae.losses import beta_tcvae_loss
from compvae.masks import oracle_masks, resize_mask
from compvae.metrics import evaluate
from compvae.metrics.informativeness import active_latents, informativeness_per_factor
from compvae.models import VAE
from compvae.trial import run_trial
from search.analysis.paired import holm, paired_table


def _factors(n: int, seed: int = 0) -> np.ndarray:
    return Scenes(64).sample_factors(n, np.random.default_rng(seed))


def _vary(f: np.ndarray, names: list[str], seed: int) -> np.ndarray:
    """A copy of ``f`` with the named factors redrawn."""
    rng, d, g = np.random.default_rng(seed), Scenes(64), f.copy()
    for name in names:
        k = FACTOR_NAMES.index(name)
        g[:, k] = rng.integers(0, d.factor_sizes[k], len(f))
    return g


def test_scenes_groups_images_and_default() -> None:
    d = get_dataset("scenes", resolution=64)
    assert d.factor_groups == {"coarse": ["shape", "scale", "pos_x", "pos_y"], "fine": FINE, "outside": OUTSIDE}
    x = d.images(_factors(64))
    assert x.shape == (64, 1, 64, 64) and x.dtype == np.float32 and 0.0 <= x.min() and x.max() <= 1.0
    assert TrialConfig().data.name == "scenes"
    assert Scenes(64, channels=3).images(_factors(2)).shape == (2, 3, 64, 64)


def test_fine_factors_change_pixels_only_in_the_detail_region_and_vanish_at_32_px() -> None:
    f = _factors(200)
    g = _vary(f, FINE, seed=1)
    d64, d32 = Scenes(64), Scenes(32)
    diff = np.abs(d64.images(f) - d64.images(g)) > 1e-6
    region = d64.detail_regions(f).astype(bool)
    assert diff.any() and not (diff & ~region).any()
    assert region.sum() >= d64.silhouettes(f).sum()
    assert np.array_equal(d32.images(f), d32.images(g))  # the texture averages away below 64 px


def test_outside_factors_never_touch_the_target() -> None:
    f = _factors(200)
    g = _vary(f, OUTSIDE, seed=2)
    d = Scenes(64)
    inner = torch.nn.functional.max_pool2d(torch.from_numpy(1.0 - d.silhouettes(f)), 3, 1, 1).numpy() == 0
    diff = np.abs(d.images(f) - d.images(g)) > 1e-6
    assert diff.any() and not (diff & inner).any()


def test_design_check_fine_factors_are_visible_at_64_px_and_nothing_at_32() -> None:
    """The texture's level is worth >= 20 nats to the child; the split (which half carries it at
    full strength) 4-12 nats; none of it is visible to the 32 px parent."""
    c64, c32 = factor_costs(Scenes(64), num_bases=30), factor_costs(Scenes(32), num_bases=30)
    assert c64["texture_contrast"] >= 20.0, c64
    for name in FINE:
        assert c64[name] >= 4.0, (name, c64[name])
        assert c32[name] < 1e-4, (name, c32[name])  # float32 rounding of a flat image


def test_texture_is_a_fixed_carrier_whose_amplitude_the_fine_factors_set() -> None:
    f = _factors(1)
    f[0, FACTOR_NAMES.index("pos_x")] = f[0, FACTOR_NAMES.index("pos_y")] = 1  # centred target
    f[0, FACTOR_NAMES.index("texture_contrast")] = 2
    f[0, FACTOR_NAMES.index("texture_orientation")] = 0  # vertical split line
    f[0, FACTOR_NAMES.index("texture_side")] = 1  # the right half at full strength
    tex = texture(f, 64, 64)[0]
    sil = Scenes(64).silhouettes(f)[0, 0].astype(bool)
    dev = np.abs(tex - TEXTURE_MEAN)
    right, left = dev[:, 34:][sil[:, 34:]], dev[:, :30][sil[:, :30]]
    assert np.allclose(right, TEXTURE_CONTRASTS[2]) and np.allclose(left, DIM_HALF * TEXTURE_CONTRASTS[2])
    carrier = np.sign(tex - TEXTURE_MEAN)
    assert (carrier[::2, ::2] == carrier[0, 0]).all() and (carrier[1::2, ::2] == -carrier[0, 0]).all()
    blocks = tex.reshape(32, 2, 32, 2).mean(axis=(1, 3))
    assert np.allclose(blocks, TEXTURE_MEAN)  # every 2x2 block averages away


def test_informativeness_reads_factors_and_a_collapsed_model_scores_zero() -> None:
    rng = np.random.default_rng(0)
    f = rng.integers(0, 4, size=(3000, 3))
    codes = f + rng.normal(0, 0.05, f.shape)
    ident = informativeness_per_factor(codes[:2000], f[:2000], codes[2000:], f[2000:])
    assert np.all(ident > 0.95)
    noise = rng.normal(size=f.shape)
    rand = informativeness_per_factor(noise[:2000], f[:2000], noise[2000:], f[2000:])
    assert np.all(np.abs(rand) < 0.1)
    # the rate gate: informative codes whose latents carry no KL count for nothing
    kl = np.array([1e-4, 0.02, 0.05])
    gated = informativeness_per_factor(codes[:2000], f[:2000], codes[2000:], f[2000:], active_latents(kl))
    assert np.array_equal(gated, np.zeros(3))
    assert active_latents(np.array([0.5, 0.05, np.nan, 2.0])).tolist() == [True, False, False, True]


def test_evaluate_reports_group_informativeness_and_gates_by_active_latents() -> None:
    d = Scenes(32)

    def encode(images: np.ndarray) -> np.ndarray:
        return images.reshape(len(images), -1)[:, ::97][:, :6]  # some pixels: coarse info only

    rng = np.random.default_rng(0)
    out = evaluate(d, encode, rng, metrics=["informativeness"], num_train=400, num_test=200)
    for key in ("informativeness", "coarse_informativeness", "fine_informativeness",
                "outside_informativeness", "active_latents"):
        assert key in out
    assert out["active_latents"] == 6.0
    off = evaluate(d, encode, np.random.default_rng(0), metrics=["informativeness"], num_train=400,
                   num_test=200, active=np.zeros(6, bool))
    assert off["informativeness"] == 0.0 and off["fine_informativeness"] == 0.0


def test_oracle_mask_is_the_true_silhouette() -> None:
    d = Scenes(32)
    f = _factors(16)
    sil = torch.from_numpy(d.silhouettes(f))
    images = torch.from_numpy(d.images(f))
    assert torch.equal(oracle_masks(sil, images, threshold=0.02, blur_sigma=0.0), sil)
    up = oracle_masks(sil, images, threshold=0.02, blur_sigma=0.0, out_resolution=64)
    assert torch.equal(up, resize_mask(sil, 64))
    soft = oracle_masks(sil, images, threshold=0.02, blur_sigma=1.0, kind="soft")
    assert soft.max() <= 1.0 and (soft > 0).sum() > (sil > 0).sum()  # blurred like a parent map


def test_oracle_trial_masks_equal_the_silhouettes() -> None:
    cfg = preset("tiny").with_updates({"mask.source": "oracle", "mask.blur_sigma": 0.0,
                                       "child.masking_mode": "loss"})
    metrics = run_trial(cfg)
    assert metrics["mask/iou"] == 1.0


@pytest.mark.parametrize("updates, message", [
    ({"data": {"name": "dsprites", "path": "x.npz"}, "mask": {"source": "oracle"}}, "mask.source: oracle needs"),
    ({"parent": {"mode": "joint"}, "mask": {"source": "oracle"}}, "needs parent.mode: frozen"),
])
def test_oracle_needs_silhouettes_and_a_frozen_parent(updates: dict, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        TrialConfig.from_dict(updates)


def test_parent_code_changes_the_decoder_input_and_nothing_else() -> None:
    torch.manual_seed(0)
    plain = VAE(32, 1, 1, latent_dim=4, width=8)
    torch.manual_seed(0)
    cond = VAE(32, 1, 1, latent_dim=4, width=8, cond_dim=3)
    x = torch.rand(5, 1, 32, 32)
    # same encoder (same init, same weights), only the decoder's first layer is wider
    assert torch.equal(plain.encode(x)[0], cond.encode(x)[0])
    assert cond.decoder_dense[0].in_features == plain.decoder_dense[0].in_features + 3
    z = torch.zeros(5, 4)
    a, b = cond.decode(z, torch.zeros(5, 3)), cond.decode(z, torch.ones(5, 3))
    assert not torch.allclose(a, b)
    with pytest.raises(ValueError, match="reads a condition"):
        cond.decode(z)
    with pytest.raises(ValueError, match="takes no condition"):
        plain.decode(z, torch.zeros(5, 3))


@pytest.mark.parametrize("mode", ["frozen", "joint"])
def test_parent_code_trial_runs_in_both_parent_modes(mode: str) -> None:
    cfg = preset("tiny").with_updates({"child.parent_code": "decoder", "parent.mode": mode,
                                       "child.masking_mode": "both"})
    base = run_trial(preset("tiny").with_updates({"parent.mode": mode, "child.masking_mode": "both"}))
    metrics = run_trial(cfg)
    assert math.isfinite(metrics["child/recon_error"])
    assert metrics["child/recon_error"] != base["child/recon_error"]
    assert metrics["parent/recon_error"] == base["parent/recon_error"]  # the parent is untouched


def test_kl_warmup_ramps_the_kl_and_tc_terms() -> None:
    assert kl_warmup_weight(0, 100, 0.0) == 1.0
    assert [kl_warmup_weight(s, 100, 0.5) for s in (0, 25, 50, 99)] == [0.0, 0.5, 1.0, 1.0]
    torch.manual_seed(0)
    model = VAE(32, 1, 1, latent_dim=3, width=8)
    x = torch.rand(8, 1, 32, 32)
    out = model(x)
    zero, parts = beta_tcvae_loss(x, out, 4.0, 100, kl_weight=0.0)
    full, _ = beta_tcvae_loss(x, out, 4.0, 100)
    assert zero.item() == pytest.approx(parts["recon"].item())
    assert full.item() == pytest.approx((parts["recon"] + parts["kl"] + 3.0 * parts["tc"]).item(), rel=1e-6)


def _frame(values: dict[str, list[float]]) -> pd.DataFrame:
    rows = [{"trial": f"{arm}{i}", "arm": arm, "pair": i, "m": v}
            for arm, vs in values.items() for i, v in enumerate(vs)]
    frame = pd.DataFrame(rows)
    frame["arm"] = pd.Categorical(frame["arm"], categories=list(values), ordered=True)
    return frame


def test_paired_analysis_finds_a_known_difference_and_none_where_there_is_none() -> None:
    rng = np.random.default_rng(0)
    base = rng.normal(0.3, 0.2, 8)  # large seed-to-seed spread ...
    shifted = base + 0.1 + rng.normal(0, 0.01, 8)  # ... a small, consistent paired gain
    table = paired_table(_frame({"none": list(base), "loss": list(shifted), "same": list(base)}), "m", "none")
    loss = table.set_index("arm").loc["loss"]
    diff = shifted - base
    assert loss["pairs"] == 8
    assert loss["mean_diff"] == pytest.approx(diff.mean())
    half = stats.t.ppf(0.975, 7) * diff.std(ddof=1) / math.sqrt(8)
    assert loss["ci_half"] == pytest.approx(half)
    assert loss["ci_lo"] > 0
    assert loss["p_ttest"] == pytest.approx(stats.ttest_rel(shifted, base).pvalue)
    assert loss["p_ttest_holm"] < 0.001 and loss["p_wilcoxon_holm"] < 0.05
    same = table.set_index("arm").loc["same"]
    assert same["mean_diff"] == 0.0 and same["p_ttest"] == 1.0 and same["p_wilcoxon"] == 1.0
    # an unpaired test would miss it: the arms' spreads overlap
    assert stats.ttest_ind(shifted, base).pvalue > 0.05


def test_holm_adjustment() -> None:
    assert holm([0.01, 0.04, 0.03]) == pytest.approx([0.03, 0.06, 0.06])
    out = holm([0.2, math.nan, 0.01])
    assert out[0] == pytest.approx(0.2) and math.isnan(out[1]) and out[2] == pytest.approx(0.02)


def test_paired_arms_refuse_two_trials_of_one_arm_and_pair() -> None:
    """Two searches joined by ``report --with`` may hold the same arm and seed: the pairing
    would be ambiguous, so it is refused with the fix (a knob that tells them apart)."""
    from search.analysis.paired import arm_frame
    from search.analysis.results import TrialSummary

    def trial(name: str, mode: str, source: str) -> TrialSummary:
        return TrialSummary(trial_id=name, name=name, status="COMPLETED", epoch=1, final_epoch=1,
                            params={"child.masking_mode": mode, "train.seed": 0},
                            config={"mask": {"source": source}}, metrics={"child/fine_informativeness": 0.5})

    both = [trial("a/trial_00000", "none", "oracle"), trial("b/trial_00000", "none", "parent")]
    with pytest.raises(ConfigError, match="add the knob that tells them apart"):
        arm_frame(both, ["child.masking_mode"], "train.seed")
    frame = arm_frame(both, ["mask.source", "child.masking_mode"], "train.seed")
    assert sorted(frame["arm"].astype(str)) == ["oracle / none", "parent / none"]
