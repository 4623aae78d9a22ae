"""Paired comparisons of a study: every arm against a baseline, pairing trials by seed.

The arms of one seed share that seed's parent and mask, so their differences cancel the
seed-to-seed variation an unpaired test must fight (docs/benchmark.md). Per arm: the mean
per-seed difference to the baseline with its 95% CI (Student t), a paired t-test and a
Wilcoxon signed-rank test, both Holm-corrected across the arms.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from matplotlib.figure import Figure
from scipy import stats

from compvae.errors import ConfigError
from search.analysis.groups import (
    CONFIDENCE,
    check_knob,
    group_order,
    mean_ci,
    summarize,
    wide_table,
)
from search.analysis.groups import format_markdown as group_markdown
from search.analysis.results import TrialSummary, knob_value
from search.space import SearchSpace

#: The study's question: fine factors first, then what masking should and should not change.
PAIRED_METRICS: tuple[str, ...] = (
    "child/fine_informativeness",
    "child/mig_fine",
    "child/detail_recon_error",
    "child/coarse_informativeness",
    "child/outside_informativeness",
    "mask/iou",
)
ARM_SEPARATOR = " / "


def arm_frame(summaries: list[TrialSummary], knobs: list[str], pair_by: str,
              metrics: tuple[str, ...] = PAIRED_METRICS, space: SearchSpace | None = None) -> pd.DataFrame:
    """One row per complete trial: its arm (the knobs' values joined), its pair key and metrics."""
    for k in [*knobs, pair_by]:
        check_knob(k)
    rows = []
    for s in sorted(summaries, key=lambda s: s.name):
        if not s.complete:
            continue
        row: dict[str, Any] = {"trial": s.name, "arm": ARM_SEPARATOR.join(str(knob_value(s, k)) for k in knobs),
                               "pair": knob_value(s, pair_by)}
        for m in metrics:
            v = s.metrics.get(m)
            row[m] = float(v) if isinstance(v, (int, float)) and not isinstance(v, bool) else math.nan
        rows.append(row)
    frame = pd.DataFrame(rows, columns=["trial", "arm", "pair", *metrics])
    twice = frame[frame.duplicated(["arm", "pair"], keep=False)]
    if not twice.empty:
        first = twice.iloc[0]
        raise ConfigError(f"--group-by {','.join(knobs)}: arm '{first['arm']}' has {pair_by}={first['pair']} in "
                          f"trials {', '.join(twice[(twice['arm'] == first['arm']) & (twice['pair'] == first['pair'])]['trial'])}; "
                          "add the knob that tells them apart to --group-by")
    order = _arm_order(knobs, space, frame["arm"].tolist())
    frame["arm"] = pd.Categorical(frame["arm"], categories=order, ordered=True)
    return frame.sort_values(["arm", "pair"]).reset_index(drop=True)


def _arm_order(knobs: list[str], space: SearchSpace | None, present: list[str]) -> list[str]:
    per_knob = [[str(v) for v in group_order([p.split(ARM_SEPARATOR)[i] for p in present], None, k)]
                for i, k in enumerate(knobs)]
    if space is not None:  # the order the space lists its choices in
        for i, k in enumerate(knobs):
            spec = space.params.get(k)
            if spec is not None and spec.kind == "choice":
                listed = [str(v) for v in spec.values()]
                per_knob[i] = [v for v in listed if v in per_knob[i]] + [v for v in per_knob[i] if v not in listed]
    import itertools

    wanted = set(present)
    return [ARM_SEPARATOR.join(c) for c in itertools.product(*per_knob) if ARM_SEPARATOR.join(c) in wanted]


def holm(pvalues: list[float]) -> list[float]:
    """Holm's step-down adjustment (family-wise error); NaN p-values are left out and kept NaN."""
    idx = [i for i, p in enumerate(pvalues) if math.isfinite(p)]
    order = sorted(idx, key=lambda i: pvalues[i])
    out = [math.nan] * len(pvalues)
    running = 0.0
    for rank, i in enumerate(order):
        running = max(running, min(1.0, (len(order) - rank) * pvalues[i]))
        out[i] = running
    return out


def paired_table(frame: pd.DataFrame, metric: str, baseline: str,
                 confidence: float = CONFIDENCE) -> pd.DataFrame:
    """Per arm other than ``baseline``: pairs, mean difference (arm - baseline), CI, p-values."""
    arms = [a for a in frame["arm"].cat.categories if a in set(frame["arm"])]
    if baseline not in arms:
        raise ConfigError(f"--baseline {baseline}: no such arm; choose one of {', '.join(arms)}")
    base = frame[frame["arm"] == baseline].set_index("pair")[metric]
    rows = []
    for arm in arms:
        if arm == baseline:
            continue
        other = frame[frame["arm"] == arm].set_index("pair")[metric]
        joined = pd.concat([other, base], axis=1, keys=["arm", "base"], join="inner").dropna()
        diff = (joined["arm"] - joined["base"]).to_numpy()
        n, mean, sd, half = mean_ci(diff, confidence)
        t_p = w_p = math.nan
        if n >= 2 and not np.any(diff != 0):
            t_p = w_p = 1.0  # identical in every pair
        elif n >= 2:
            t_p = float(stats.ttest_rel(joined["arm"], joined["base"]).pvalue) if sd > 0 else 0.0
            w_p = float(stats.wilcoxon(diff).pvalue)
        rows.append({"arm": arm, "pairs": n, "baseline_mean": float(joined["base"].mean()) if n else math.nan,
                     "arm_mean": float(joined["arm"].mean()) if n else math.nan, "mean_diff": mean,
                     "ci_half": half, "ci_lo": mean - half, "ci_hi": mean + half,
                     "p_ttest": t_p, "p_wilcoxon": w_p})
    table = pd.DataFrame(rows, columns=["arm", "pairs", "baseline_mean", "arm_mean", "mean_diff", "ci_half",
                                        "ci_lo", "ci_hi", "p_ttest", "p_wilcoxon"])
    table["p_ttest_holm"] = holm(table["p_ttest"].tolist())
    table["p_wilcoxon_holm"] = holm(table["p_wilcoxon"].tolist())
    return table


def format_markdown(table: pd.DataFrame, metric: str, baseline: str) -> str:
    lines = [f"| arm | pairs | `{metric}` | difference to `{baseline}` (95% CI) | t-test p (Holm) "
             "| Wilcoxon p (Holm) |", "|---|---:|---:|---:|---:|---:|"]
    for _, r in table.iterrows():
        lines.append(f"| {r['arm']} | {r['pairs']} | {r['arm_mean']:.3f} | {r['mean_diff']:+.3f} "
                     f"[{r['ci_lo']:+.3f}, {r['ci_hi']:+.3f}] | {_p(r['p_ttest_holm'])} | {_p(r['p_wilcoxon_holm'])} |")
    return "\n".join(lines) + "\n"


def _p(p: float) -> str:
    return "-" if not math.isfinite(p) else f"{p:.2g}"


def paired_figure(frame: pd.DataFrame, metric: str, path: Path, title: str = "") -> Path:
    """One line per seed across the arms, so the pairing is visible, plus each arm's mean."""
    arms = [a for a in frame["arm"].cat.categories if a in set(frame["arm"])]
    fig = Figure(figsize=(max(5.0, 1.3 * len(arms)), 3.8))
    ax = fig.subplots()
    xs = {a: i for i, a in enumerate(arms)}
    for pair, sub in frame.groupby("pair", sort=True):
        sub = sub.dropna(subset=[metric])
        ax.plot([xs[a] for a in sub["arm"]], sub[metric], "-o", ms=4, lw=1, alpha=0.7, label=f"seed {pair}")
    means = frame.groupby("arm", observed=True)[metric].mean()
    ax.plot([xs[a] for a in means.index], means.to_numpy(), "D", color="k", ms=7, label="mean", zorder=5)
    ax.set_xticks(range(len(arms)), arms, rotation=20, ha="right", fontsize=8)
    ax.set_ylabel(metric)
    ax.grid(axis="y", alpha=0.3)
    ax.legend(fontsize=7, ncol=2)
    ax.set_title(title, fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    return path


@dataclass
class PairedReport:
    """What ``report --paired-by`` produced: the per-trial frame, the table per metric, files."""

    frame: pd.DataFrame
    tables: dict[str, pd.DataFrame]
    text: str
    files: list[Path]


def paired_report(summaries: list[TrialSummary], knobs: list[str], pair_by: str, out_dir: Path,
                  baseline: str | None = None, space: SearchSpace | None = None,
                  metrics: tuple[str, ...] = PAIRED_METRICS, title: str = "", tracker: Any = None,
                  parent_run_id: str | None = None) -> PairedReport:
    """Write ``paired_<metric>.{csv,md}``, ``paired_trials.csv`` and ``paired.png`` (the first
    metric) to ``out_dir``; log them to the parent run when a tracker is given."""
    frame = arm_frame(summaries, knobs, pair_by, metrics, space)
    if frame.empty:
        raise ConfigError(f"--paired-by {pair_by}: no complete trial yet; wait for the search or resume it")
    arms = [a for a in frame["arm"].cat.categories if a in set(frame["arm"])]
    base = baseline if baseline is not None else arms[0]
    out_dir.mkdir(parents=True, exist_ok=True)
    files = [out_dir / "paired_trials.csv"]
    frame.to_csv(files[0], index=False)
    tables, texts = {}, []
    for m in metrics:
        if not frame[m].notna().any():
            continue
        tables[m] = paired_table(frame, m, base)
        slug = m.replace("/", "_")
        tables[m].to_csv(out_dir / f"paired_{slug}.csv", index=False)
        md = format_markdown(tables[m], m, base)
        (out_dir / f"paired_{slug}.md").write_text(md)
        files += [out_dir / f"paired_{slug}.csv", out_dir / f"paired_{slug}.md"]
        texts.append(md)
    # the unpaired per-arm means, as context for the paired differences
    present = tuple(m for m in metrics if frame[m].notna().any())
    plain = frame.assign(arm=frame["arm"].astype(str))
    summary = summarize(plain, "arm", present)
    summary["group"] = pd.Categorical(summary["group"], categories=arms, ordered=True)
    unpaired = wide_table(summary.sort_values("group", kind="stable"), "arm")
    (out_dir / "paired_unpaired.md").write_text(group_markdown(unpaired, {}))
    files.append(out_dir / "paired_unpaired.md")
    texts.append("per arm, unpaired (mean ± 95% CI half-width):\n" + unpaired.to_string(index=False))
    first = next(iter(tables))
    files.append(paired_figure(frame, first, out_dir / "paired.png", title=title or f"{first} by arm, one line per {pair_by}"))
    if tracker is not None and parent_run_id:
        for f in files:
            tracker.log_artifact(parent_run_id, f, "report")
    return PairedReport(frame, tables, "\n".join(texts), files)
