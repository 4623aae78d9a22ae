"""The metric entries ``evaluate`` loops over: what each reads, how it scores, and per group.

An entry names the shared samples it reads (``train``/``test``; none: it draws its own batches),
its overall score, its per-factor-group score (``_<group>`` keys) and whether it belongs to the
cheap per-epoch (light) evaluation. Adding a metric is adding one entry.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

from compvae.data.base import GroundTruthData
from compvae.metrics._utils import EncodeFn, nanmean, varying_factors
from compvae.metrics.betavae import betavae_score
from compvae.metrics.dci import Estimator, dci, dci_from_importance
from compvae.metrics.factorvae import factorvae_score, vote_accuracy
from compvae.metrics.informativeness import informativeness_per_factor
from compvae.metrics.mig import mig_per_factor
from compvae.metrics.modularity import modularity_explicitness, modularity_from_mi
from compvae.metrics.sap import sap_per_factor
from compvae.metrics.unsupervised import (
    active_units,
    codes_mutual_info,
    gaussian_total_correlation,
    gaussian_wasserstein_correlation,
)

Sample = tuple[np.ndarray, np.ndarray]  # (codes (n, d), factors (n, K))
Values = dict[str, float]


@dataclass
class Context:
    """What one ``evaluate`` call hands every entry."""

    data: GroundTruthData
    encode_fn: EncodeFn
    rng: np.random.Generator
    num_train: int
    num_test: int
    dci_estimator: Estimator
    num_bins: int
    active: np.ndarray | None
    chunk: int
    train: Sample | None = None
    test: Sample | None = None

    @property
    def tr(self) -> Sample:
        assert self.train is not None
        return self.train

    @property
    def te(self) -> Sample:
        assert self.test is not None
        return self.test

    def seed(self) -> int:
        return int(self.rng.integers(2**31 - 1))


@dataclass(frozen=True)
class Metric:
    name: str
    needs: tuple[str, ...]  # the shared samples it reads: "train", "test"; () = its own batches
    score: Callable[[Context], tuple[Values, Any]]  # overall values, and what per_group reads
    per_group: Callable[[Context, Any, str, np.ndarray], Values] | None = None
    light: bool = False  # part of the per-epoch evaluation that feeds ASHA


def _mig(c: Context) -> tuple[Values, Any]:
    per = mig_per_factor(c.tr[0], c.tr[1], c.num_bins)
    return {"mig": nanmean(per)}, per


def _dci(c: Context) -> tuple[Values, Any]:
    res = dci(c.tr[0], c.tr[1], c.te[0], c.te[1], estimator=c.dci_estimator, random_state=c.seed())
    out = {f"dci_{k}": res[k] for k in ("disentanglement", "completeness", "informativeness", "informativeness_train")}
    out["dci_faithful"] = 1.0 if c.dci_estimator == "faithful" else 0.0
    return out, res


def _dci_group(c: Context, res: Any, g: str, idx: np.ndarray) -> Values:
    sub = dci_from_importance(res["importance"][:, idx])
    return {f"dci_disentanglement_{g}": sub["disentanglement"], f"dci_completeness_{g}": sub["completeness"],
            f"dci_informativeness_{g}": nanmean(res["test_accuracy"][idx])}


def _sap(c: Context) -> tuple[Values, Any]:
    per = sap_per_factor(c.tr[0], c.tr[1], c.te[0], c.te[1])
    return {"sap": nanmean(per)}, per


def _modularity(c: Context) -> tuple[Values, Any]:
    res = modularity_explicitness(c.tr[0], c.tr[1], c.te[0], c.te[1], c.num_bins)
    return {k: res[k] for k in ("modularity", "explicitness", "explicitness_train")}, res


def _modularity_group(c: Context, res: Any, g: str, idx: np.ndarray) -> Values:
    cols = idx[varying_factors(c.tr[1])[idx]]
    mod = modularity_from_mi(res["mutual_information"][:, cols]) if cols.size else math.nan
    return {f"modularity_{g}": mod, f"explicitness_{g}": nanmean(res["explicitness_per_factor"][idx])}


def _factorvae(c: Context) -> tuple[Values, Any]:
    res = factorvae_score(c.data, c.encode_fn, c.rng, num_train=c.num_train, num_eval=c.num_test,
                          num_variance_estimate=c.num_train, images_per_call=c.chunk)
    return {"factorvae": res["eval_accuracy"], "factorvae_train": res["train_accuracy"],
            "factorvae_active_dims": res["num_active_dims"]}, res


def _factorvae_group(c: Context, res: Any, g: str, idx: np.ndarray) -> Values:
    acc = vote_accuracy(res["eval_votes"], res["classifier"], idx) if res["num_active_dims"] else 0.0
    return {f"factorvae_{g}": acc}


def _betavae(c: Context) -> tuple[Values, Any]:
    res = betavae_score(c.data, c.encode_fn, c.rng, num_train=c.num_train, num_eval=c.num_test,
                        images_per_call=c.chunk)
    return {"betavae": res["eval_accuracy"], "betavae_train": res["train_accuracy"]}, res


def _betavae_group(c: Context, res: Any, g: str, idx: np.ndarray) -> Values:
    sel = np.isin(res["eval_labels"], idx)
    return {f"betavae_{g}": float(res["eval_correct"][sel].mean()) if sel.any() else math.nan}


def _informativeness(c: Context) -> tuple[Values, Any]:
    per = informativeness_per_factor(c.tr[0], c.tr[1], c.te[0], c.te[1], c.active, random_state=c.seed())
    n_active = float(c.tr[0].shape[1] if c.active is None else np.sum(c.active))
    return {"informativeness": nanmean(per), "active_latents": n_active}, per


def _unsupervised(c: Context) -> tuple[Values, Any]:
    codes = c.tr[0]
    return {"gaussian_tc": gaussian_total_correlation(codes),
            "gaussian_wasserstein_corr": gaussian_wasserstein_correlation(codes),
            "codes_mutual_info": codes_mutual_info(codes, c.num_bins),
            "active_units": active_units(codes)}, None


def _mean_of(prefix: str, suffix: bool = True) -> Callable[[Context, Any, str, np.ndarray], Values]:
    """Per-group score of a per-factor array: its mean over the group's factors."""
    def group(c: Context, per: Any, g: str, idx: np.ndarray) -> Values:
        return {f"{prefix}_{g}" if suffix else f"{g}_{prefix}": nanmean(per[idx])}

    return group


REGISTRY: dict[str, Metric] = {m.name: m for m in (
    Metric("mig", ("train",), _mig, _mean_of("mig"), light=True),
    Metric("dci", ("train", "test"), _dci, _dci_group),
    Metric("sap", ("train", "test"), _sap, _mean_of("sap")),
    Metric("modularity", ("train", "test"), _modularity, _modularity_group),
    Metric("factorvae", (), _factorvae, _factorvae_group),
    Metric("betavae", (), _betavae, _betavae_group),
    Metric("informativeness", ("train", "test"), _informativeness, _mean_of("informativeness", suffix=False),
           light=True),
    Metric("unsupervised", ("train",), _unsupervised),
)}
