"""Value tests for compvae.metrics: sanity checks of the method plus closed forms.

Sizes are small on purpose (2-core shared machine): the faithful GBT only runs on a few hundred
points; everything else uses a few thousand at most.
"""

from __future__ import annotations

import math

import numpy as np
import pytest

from compvae.data.base import GroundTruthData
from compvae.metrics import (
    active_units,
    bce_per_image,
    betavae_score,
    codes_mutual_info,
    completeness_per_factor,
    dci,
    dci_from_importance,
    disentanglement_per_code,
    evaluate,
    factorvae_score,
    gaussian_total_correlation,
    gaussian_wasserstein_correlation,
    masked_recon_error,
    mig,
    mig_per_factor,
    modularity_explicitness,
    modularity_from_mi,
    mse_per_image,
    per_latent_kl,
    sap,
    sap_score_matrix,
)
from compvae.metrics._utils import histogram_discretize


# ---- a real tiny dataset: each factor painted as the intensity of one quadrant ---------------
class QuadrantData(GroundTruthData):
    """Four factors, each rendered as the grey level of one image quadrant (8x8, 1 channel)."""

    name = "quadrants"
    factor_names = ["a", "b", "c", "d"]
    factor_sizes = [3, 4, 5, 6]
    channels = 1
    factor_groups = {"coarse": ["a", "b"], "fine": ["c", "d"]}

    def __init__(self, resolution: int = 8) -> None:
        self.resolution = resolution

    def images(self, factors: np.ndarray) -> np.ndarray:
        f = self.check_factors(factors)
        r, h = self.resolution, self.resolution // 2
        out = np.zeros((f.shape[0], 1, r, r), np.float32)
        for k, (row, col) in enumerate([(0, 0), (0, 1), (1, 0), (1, 1)]):
            level = f[:, k] / (self.factor_sizes[k] - 1)
            out[:, 0, row * h:(row + 1) * h, col * h:(col + 1) * h] = level[:, None, None]
        return out

    def with_resolution(self, resolution: int) -> QuadrantData:
        return QuadrantData(resolution)


class UnlabelledData(GroundTruthData):
    """Image folder stand-in: one ``index`` factor, no ground truth."""

    name = "folder"
    factor_names = ["index"]
    channels = 1
    resolution = 8
    has_factors = False

    def __init__(self) -> None:
        self._images = np.random.default_rng(3).random((50, 1, 8, 8)).astype(np.float32)
        self.factor_sizes = [50]

    def images(self, factors: np.ndarray) -> np.ndarray:
        return self._images[self.check_factors(factors)[:, 0]]

    def with_resolution(self, resolution: int) -> UnlabelledData:
        return self


def quadrant_means(images: np.ndarray) -> np.ndarray:
    """Identity-like encoder for QuadrantData: the four quadrant means = the factor levels."""
    h = images.shape[-1] // 2
    return np.stack([images[:, 0, r * h:(r + 1) * h, c * h:(c + 1) * h].mean(axis=(1, 2))
                     for r, c in [(0, 0), (0, 1), (1, 0), (1, 1)]], axis=1)


def random_projection(images: np.ndarray) -> np.ndarray:
    """Entangled encoder: a fixed random linear map of the pixels to 4 codes."""
    w = np.random.default_rng(7).normal(size=(images[0].size, 4))
    return images.reshape(images.shape[0], -1) @ w


def factors_of(n: int, sizes: list[int], seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return np.stack([rng.integers(0, s, n) for s in sizes], axis=1)


SIZES = [3, 6, 10]


@pytest.fixture(scope="module")
def sets() -> dict[str, np.ndarray]:
    """Identity, random and constant codes for train (n=1500) and test (n=750) factors."""
    rng = np.random.default_rng(1)
    ftr, fte = factors_of(1500, SIZES, 1), factors_of(750, SIZES, 2)
    return {
        "ftr": ftr, "fte": fte,
        "id_tr": ftr.astype(float), "id_te": fte.astype(float),
        "rnd_tr": rng.normal(size=(1500, 3)), "rnd_te": rng.normal(size=(750, 3)),
        "const_tr": np.ones((1500, 3)), "const_te": np.ones((750, 3)),
    }


# ---- discretisation / MIG ---------------------------------------------------------------------
def test_histogram_discretize_matches_reference_rule() -> None:
    x = np.array([[0.0], [0.5], [0.99], [1.0], [2.0]])
    # 2 bins over [0, 2]: left edges 0 and 1; the maximum goes to the last bin.
    assert histogram_discretize(x, 2)[:, 0].tolist() == [1, 1, 1, 2, 2]
    assert np.unique(histogram_discretize(np.full((10, 1), 3.0), 20)).size == 1


def test_mig_identity_random_constant(sets: dict[str, np.ndarray]) -> None:
    assert mig(sets["id_tr"], sets["ftr"]) > 0.97
    assert mig(sets["rnd_tr"], sets["ftr"]) < 0.05
    assert mig(sets["const_tr"], sets["ftr"]) == pytest.approx(0.0, abs=1e-12)


def test_mig_duplicated_code_gives_zero_gap(sets: dict[str, np.ndarray]) -> None:
    f, z = sets["ftr"], sets["id_tr"]
    dup = np.column_stack([z[:, 0], z[:, 0], z[:, 1], z[:, 2]])
    per = mig_per_factor(dup, f)
    assert per[0] == pytest.approx(0.0, abs=1e-12)
    assert per[1] > 0.95 and per[2] > 0.95
    every_factor_twice = np.column_stack([z, z])
    assert mig(every_factor_twice, f) == pytest.approx(0.0, abs=1e-12)


def test_mig_skips_constant_factor() -> None:
    f = factors_of(800, [1, 5], 4)
    per = mig_per_factor(f.astype(float), f)
    assert math.isnan(per[0]) and per[1] > 0.95
    assert mig(f.astype(float), f) == pytest.approx(per[1])


# ---- DCI ----------------------------------------------------------------------------------------
@pytest.mark.parametrize(("matrix", "d_expected", "c_expected"), [
    (np.eye(4), 1.0, 1.0),
    (np.ones((4, 3)), 0.0, 0.0),
    (np.vstack([np.ones((1, 3)), np.zeros((3, 3))]), 0.0, 1.0),   # one code informs every factor
    (np.hstack([np.ones((4, 1)), np.zeros((4, 2))]), 1.0, 0.0),   # one factor spread over codes
    (np.vstack([np.eye(3), np.zeros((2, 3))]), 1.0, 1.0),          # dead codes do not count
    (np.zeros((3, 3)), 0.0, 0.0),                                  # nothing informative
])
def test_dci_closed_forms(matrix: np.ndarray, d_expected: float, c_expected: float) -> None:
    out = dci_from_importance(matrix)
    assert out["disentanglement"] == pytest.approx(d_expected, abs=1e-6)
    assert out["completeness"] == pytest.approx(c_expected, abs=1e-6)


def test_dci_weighting_and_partial_mixing() -> None:
    p = 0.8
    h2 = -(p * math.log2(p) + (1 - p) * math.log2(1 - p))
    # Two codes, each split p / 1-p between two factors: D = C = 1 - H2(p).
    r = np.array([[p, 1 - p], [1 - p, p]])
    out = dci_from_importance(r)
    assert out["disentanglement"] == pytest.approx(1 - h2, abs=1e-6)
    assert out["completeness"] == pytest.approx(1 - h2, abs=1e-6)
    # Completeness weights factors by their share of total importance (reference behaviour):
    # factor 0 perfectly complete with weight 3/4, factor 1 uniform over 2 codes with weight 1/4.
    r = np.array([[3.0, 0.5], [0.0, 0.5]])
    assert completeness_per_factor(r) == pytest.approx([1.0, 0.0], abs=1e-6)
    assert dci_from_importance(r)["completeness"] == pytest.approx(0.75, abs=1e-6)
    # D weights codes by row sums: code 0 (3.5 of 4) has entropy H2(3/3.5), code 1 is pure.
    q = 3.0 / 3.5
    h = -(q * math.log2(q) + (1 - q) * math.log2(1 - q))
    assert disentanglement_per_code(r) == pytest.approx([1 - h, 1.0], abs=1e-6)
    assert dci_from_importance(r)["disentanglement"] == pytest.approx(3.5 / 4 * (1 - h) + 0.5 / 4, abs=1e-6)


def test_dci_fast_identity_random_constant(sets: dict[str, np.ndarray]) -> None:
    ident = dci(sets["id_tr"], sets["ftr"], sets["id_te"], sets["fte"], estimator="fast")
    assert ident["disentanglement"] > 0.9 and ident["completeness"] > 0.9
    assert ident["informativeness"] > 0.99
    assert ident["importance"].shape == (3, 3)
    assert ident["importance"].sum(axis=0) == pytest.approx(np.ones(3))
    rnd = dci(sets["rnd_tr"], sets["ftr"], sets["rnd_te"], sets["fte"], estimator="fast")
    assert rnd["disentanglement"] < 0.25 and rnd["completeness"] < 0.25
    const = dci(sets["const_tr"], sets["ftr"], sets["const_te"], sets["fte"], estimator="fast")
    assert const["disentanglement"] == pytest.approx(0.0, abs=1e-6)
    assert const["completeness"] == pytest.approx(0.0, abs=1e-6)


def test_dci_faithful_on_tiny_data_agrees_with_fast() -> None:
    rng = np.random.default_rng(5)
    ftr, fte = factors_of(200, [2, 3], 5), factors_of(100, [2, 3], 6)

    def encode(f: np.ndarray) -> np.ndarray:
        return np.column_stack([f, 0.1 * rng.normal(size=(f.shape[0], 1))])

    faithful = dci(encode(ftr), ftr, encode(fte), fte)  # default estimator = faithful
    fast = dci(encode(ftr), ftr, encode(fte), fte, estimator="fast")
    assert faithful["disentanglement"] > 0.9 and faithful["completeness"] > 0.9
    assert faithful["informativeness"] == pytest.approx(1.0)
    assert faithful["importance"].argmax(axis=0).tolist() == [0, 1]
    assert abs(faithful["disentanglement"] - fast["disentanglement"]) < 0.1
    assert abs(faithful["completeness"] - fast["completeness"]) < 0.1


def test_dci_constant_factor_is_left_out() -> None:
    f = factors_of(300, [1, 4], 8)
    out = dci(f.astype(float), f, f.astype(float), f, estimator="fast")
    assert np.isnan(out["test_accuracy"][0]) and out["importance"][:, 0].sum() == 0
    assert out["informativeness"] == pytest.approx(1.0)


# ---- SAP / modularity / explicitness ------------------------------------------------------------
def test_sap_identity_beats_random(sets: dict[str, np.ndarray]) -> None:
    s_id = sap(sets["id_tr"], sets["ftr"], sets["id_te"], sets["fte"])
    s_rnd = sap(sets["rnd_tr"], sets["ftr"], sets["rnd_te"], sets["fte"])
    matrix = sap_score_matrix(sets["id_tr"], sets["ftr"], sets["id_te"], sets["fte"])
    assert matrix.argmax(axis=0).tolist() == [0, 1, 2]
    assert s_id > 0.25
    assert abs(s_rnd) < 0.05


def test_modularity_closed_forms() -> None:
    assert modularity_from_mi(np.eye(3)) == pytest.approx(1.0)
    # A code equally informative about 2 of 3 factors: 1 - 1 / (1 * 2) = 0.5; a dead code: 0.
    assert modularity_from_mi(np.array([[1.0, 1.0, 0.0], [0.0, 0.0, 0.0]])) == pytest.approx(0.25)
    assert math.isnan(modularity_from_mi(np.ones((3, 1))))


def test_modularity_explicitness_identity_vs_random(sets: dict[str, np.ndarray]) -> None:
    ident = modularity_explicitness(sets["id_tr"], sets["ftr"], sets["id_te"], sets["fte"])
    rnd = modularity_explicitness(sets["rnd_tr"], sets["ftr"], sets["rnd_te"], sets["fte"])
    assert ident["modularity"] > 0.95
    assert ident["explicitness"] > 0.8
    assert rnd["explicitness"] == pytest.approx(0.5, abs=0.05)
    assert ident["mutual_information"].shape == (3, 3)


# ---- sampling metrics ---------------------------------------------------------------------------
def test_factorvae_identity_and_random() -> None:
    data = QuadrantData()
    good = factorvae_score(data, quadrant_means, np.random.default_rng(0), num_train=200,
                           num_eval=100, num_variance_estimate=500)
    assert good["eval_accuracy"] == pytest.approx(1.0) and good["num_active_dims"] == 4
    assert good["classifier"].tolist() == [0, 1, 2, 3]
    bad = factorvae_score(data, random_projection, np.random.default_rng(0), num_train=200,
                          num_eval=100, num_variance_estimate=500)
    assert bad["eval_accuracy"] < 0.9


def test_factorvae_prunes_collapsed_codes() -> None:
    dead = factorvae_score(QuadrantData(), lambda x: np.zeros((x.shape[0], 3)),
                           np.random.default_rng(0), num_train=10, num_eval=10,
                           num_variance_estimate=100)
    assert dead["eval_accuracy"] == 0.0 and dead["num_active_dims"] == 0


def test_betavae_identity_high() -> None:
    res = betavae_score(QuadrantData(), quadrant_means, np.random.default_rng(0), num_train=300,
                        num_eval=150)
    assert res["eval_accuracy"] > 0.95


def test_sampling_metrics_refuse_unlabelled_data() -> None:
    with pytest.raises(ValueError, match="ground-truth factors"):
        factorvae_score(UnlabelledData(), quadrant_means, np.random.default_rng(0), num_train=5)


# ---- unsupervised -------------------------------------------------------------------------------
def test_gaussian_total_correlation_closed_form() -> None:
    rng = np.random.default_rng(0)
    independent = rng.normal(size=(20000, 4)) * np.array([1.0, 2.0, 0.5, 3.0])
    assert gaussian_total_correlation(independent) == pytest.approx(0.0, abs=2e-3)
    corr = np.array([[1.0, 0.6, 0.2], [0.6, 1.0, -0.3], [0.2, -0.3, 1.0]])
    codes = rng.multivariate_normal(np.zeros(3), corr * np.outer([1, 2, 3], [1, 2, 3]), size=20000)
    sample_corr = np.corrcoef(codes, rowvar=False)
    tc = gaussian_total_correlation(codes)
    assert tc == pytest.approx(-0.5 * np.linalg.slogdet(sample_corr)[1], rel=1e-9)
    assert tc == pytest.approx(-0.5 * np.log(np.linalg.det(corr)), abs=0.02)
    with_constant = np.column_stack([codes, np.ones(len(codes))])
    assert gaussian_total_correlation(with_constant) == pytest.approx(tc)


def test_other_unsupervised_scores() -> None:
    rng = np.random.default_rng(0)
    independent = rng.normal(size=(5000, 3))
    assert gaussian_wasserstein_correlation(independent) == pytest.approx(0.0, abs=0.01)
    x = rng.normal(size=5000)
    assert gaussian_wasserstein_correlation(np.column_stack([x, x])) > 0.5
    assert codes_mutual_info(independent) < 0.05
    assert codes_mutual_info(np.column_stack([x, x])) > 2.0


def test_active_units_counts_varying_means() -> None:
    rng = np.random.default_rng(0)
    codes = rng.normal(size=(4000, 4)) * np.array([1.0, 0.5, 0.03, 0.0])
    assert active_units(codes) == 2                      # variances 1, 0.25, 0.0009, 0
    assert active_units(codes, threshold=1e-4) == 3


def test_per_latent_kl_closed_form() -> None:
    mu = np.array([[0.0, 1.0, 0.0], [0.0, -1.0, 0.0]])
    logvar = np.array([[0.0, 0.0, math.log(2.0)], [0.0, 0.0, math.log(2.0)]])
    expected = [0.0, 0.5, 0.5 * (2.0 - 1.0 - math.log(2.0))]
    assert per_latent_kl(mu, logvar) == pytest.approx(expected)


# ---- reconstruction -----------------------------------------------------------------------------
def test_recon_per_image_and_masked_split() -> None:
    images = np.zeros((1, 1, 2, 2))
    recon = np.array([[[[1.0, 0.0], [0.5, 0.0]]]])
    assert mse_per_image(images, recon) == pytest.approx([1.25])
    mask = np.array([[[[1.0, 1.0], [0.0, 0.0]]]])
    split = masked_recon_error(images, recon, mask)
    assert split == pytest.approx({"inside": 0.5, "outside": 0.125, "coverage": 0.5})
    soft = masked_recon_error(images, recon, np.full((1, 1, 2, 2), 0.25))
    assert soft["inside"] == pytest.approx(1.25 / 4) and soft["outside"] == pytest.approx(1.25 / 4)
    assert math.isnan(masked_recon_error(images, recon, np.zeros_like(mask))["inside"])
    # BCE: target 1 against p = 0.5 costs log 2 per pixel; logits 0 are p = 0.5.
    ones = np.ones((2, 1, 2, 2))
    assert bce_per_image(ones, np.full_like(ones, 0.5)) == pytest.approx([4 * math.log(2)] * 2)
    assert bce_per_image(ones, np.zeros_like(ones), logits=True) == pytest.approx([4 * math.log(2)] * 2)
    bce_split = masked_recon_error(ones, np.full_like(ones, 0.5), np.ones((2, 1, 2, 2)), kind="bce")
    assert bce_split["inside"] == pytest.approx(math.log(2))
    with pytest.raises(ValueError, match="broadcast"):
        masked_recon_error(images, recon, np.ones((1, 1, 4, 4)))


# ---- evaluate -----------------------------------------------------------------------------------
ALL = ("mig", "dci", "sap", "modularity", "factorvae", "betavae", "unsupervised")


def test_evaluate_end_to_end_with_groups() -> None:
    data = QuadrantData()
    kwargs = {"metrics": ALL, "num_train": 600, "num_test": 300, "dci_estimator": "fast",
              "batch_size": 256}
    good = evaluate(data, quadrant_means, np.random.default_rng(0), **kwargs)
    bad = evaluate(data, random_projection, np.random.default_rng(0), **kwargs)
    for key in ("mig", "mig_coarse", "mig_fine", "dci_disentanglement", "dci_completeness",
                "dci_informativeness", "dci_informativeness_train", "dci_disentanglement_fine",
                "dci_completeness_coarse", "dci_informativeness_fine", "sap", "sap_fine",
                "modularity", "modularity_coarse", "explicitness", "explicitness_fine",
                "factorvae", "factorvae_fine", "betavae", "betavae_coarse", "gaussian_tc",
                "gaussian_wasserstein_corr", "codes_mutual_info", "active_units", "dci_faithful",
                "eval_seconds", "eval_seconds_dci"):
        assert key in good, key
    assert all(isinstance(v, float) for v in good.values())
    assert good["dci_faithful"] == 0.0
    assert good["active_units"] == 4.0
    assert good["mig"] > 0.9 and good["mig_fine"] > 0.9
    assert good["factorvae"] == pytest.approx(1.0) and good["betavae"] > 0.9
    for key in ("mig", "mig_coarse", "mig_fine", "dci_disentanglement", "dci_completeness",
                "dci_disentanglement_fine", "factorvae"):
        assert good[key] > bad[key] + 0.2, key


def test_evaluate_subset_unlabelled_and_errors() -> None:
    only = evaluate(QuadrantData(), quadrant_means, np.random.default_rng(0), metrics=["mig"],
                    num_train=300, num_test=50)
    assert {"mig", "mig_coarse", "mig_fine", "eval_seconds"} <= only.keys()
    assert not any(k.startswith("dci") for k in only)
    unl = evaluate(UnlabelledData(), lambda x: x.reshape(len(x), -1)[:, :5],
                   np.random.default_rng(0), metrics=ALL, num_train=200, num_test=50)
    assert {"gaussian_tc", "active_units", "codes_mutual_info"} <= unl.keys()
    assert not any(k.startswith(("mig", "dci", "sap", "factorvae", "betavae")) for k in unl)
    with pytest.raises(ValueError, match="unknown metric"):
        evaluate(QuadrantData(), quadrant_means, np.random.default_rng(0), metrics=["nope"])
    with pytest.raises(ValueError, match="shape"):
        evaluate(QuadrantData(), lambda x: x[:, 0, 0, :3].ravel(), np.random.default_rng(0),
                 metrics=["mig"], num_train=20, num_test=20)


def test_evaluate_is_reproducible() -> None:
    a = evaluate(QuadrantData(), random_projection, np.random.default_rng(3), metrics=["mig", "dci"],
                 num_train=300, num_test=100)
    b = evaluate(QuadrantData(), random_projection, np.random.default_rng(3), metrics=["mig", "dci"],
                 num_train=300, num_test=100)
    assert {k: v for k, v in a.items() if not k.startswith("eval_seconds")} == \
        {k: v for k, v in b.items() if not k.startswith("eval_seconds")}
