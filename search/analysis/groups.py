"""Grouped comparisons of a search: per value of one knob, mean and 95% CI of chosen metrics.

Only complete trials enter, with Student's t intervals (docs/design.md, Grouped comparisons).
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
from search.analysis.results import TrialSummary, finite_number, knob_value
from search.space import SearchSpace, config_fields

# The study's question in metrics: fine-factor disentanglement, overall disentanglement, the
# reconstruction cost (whole image and inside the mask) and whether the mask found the object.
GROUP_METRICS: tuple[str, ...] = (
    "child/mig_fine",
    "child/mig",
    "child/recon_error",
    "child/masked_recon_error",
    "mask/iou",
)
CONFIDENCE = 0.95


def check_knob(knob: str) -> None:
    """A group-by knob must be a dotted TrialConfig field; a typo is one line, exit code 2."""
    fields = config_fields()
    if knob not in fields:
        import difflib

        close = difflib.get_close_matches(knob, list(fields), n=1)
        hint = f"; did you mean {close[0]}?" if close else "; give a dotted TrialConfig field like child.masking_mode"
        raise ConfigError(f"--group-by {knob}: not a TrialConfig field{hint}")


def per_trial_frame(summaries: list[TrialSummary], knob: str,
                    metrics: tuple[str, ...] = GROUP_METRICS) -> pd.DataFrame:
    """One row per complete trial: trial name, the knob's value, train.seed and each metric
    (NaN where a trial did not report it). Incomplete trials are left out (see module doc)."""
    rows = []
    for s in sorted(summaries, key=lambda s: s.name):
        if not s.complete:
            continue
        row: dict[str, Any] = {"trial": s.name, knob: knob_value(s, knob),
                               "train.seed": knob_value(s, "train.seed")}
        for m in metrics:
            v = s.metrics.get(m)
            row[m] = float(v) if finite_number(v) else float("nan")  # type: ignore[arg-type]
        rows.append(row)
    return pd.DataFrame(rows, columns=["trial", knob, "train.seed", *metrics])


def mean_ci(values: Any, confidence: float = CONFIDENCE) -> tuple[int, float, float, float]:
    """(n, mean, sd, CI half-width) of the finite values, Student t with n-1 degrees of freedom.
    n=0 -> all NaN; n=1 -> the value as mean, NaN sd and half-width (no spread to estimate)."""
    x = np.asarray(values, dtype=float)
    x = x[np.isfinite(x)]
    n = int(x.size)
    if n == 0:
        return 0, float("nan"), float("nan"), float("nan")
    mean = float(x.mean())
    if n == 1:
        return 1, mean, float("nan"), float("nan")
    sd = float(x.std(ddof=1))
    half = float(stats.t.ppf(0.5 + confidence / 2, n - 1) * sd / math.sqrt(n))
    return n, mean, sd, half


def group_order(values: list[Any], space: SearchSpace | None, knob: str) -> list[Any]:
    """Groups in the order the space lists them (a choice's order is the author's), else sorted."""
    present = list(dict.fromkeys(values))
    spec = space.params.get(knob) if space is not None else None
    if spec is not None and spec.kind in ("choice", "int"):
        listed = [v for v in spec.values() if v in present]
        return listed + [v for v in present if v not in listed]
    try:
        return sorted(present)
    except TypeError:
        return sorted(present, key=str)


def summarize(per_trial: pd.DataFrame, knob: str, metrics: tuple[str, ...] = GROUP_METRICS,
              space: SearchSpace | None = None, confidence: float = CONFIDENCE) -> pd.DataFrame:
    """Tidy summary: one row per (group, metric) with n, mean, sd, ci_half, ci_lo, ci_hi.
    Metrics no trial reported are skipped, so a space without e.g. DCI still reports."""
    present = [m for m in metrics if m in per_trial and per_trial[m].notna().any()]
    rows = []
    for g in group_order(per_trial[knob].tolist(), space, knob):
        sub = per_trial[per_trial[knob] == g]
        for m in present:
            n, mean, sd, half = mean_ci(sub[m].to_numpy(), confidence)
            rows.append({"group": g, "metric": m, "n": n, "mean": mean, "sd": sd, "ci_half": half,
                         "ci_lo": mean - half, "ci_hi": mean + half})
    return pd.DataFrame(rows, columns=["group", "metric", "n", "mean", "sd", "ci_half", "ci_lo", "ci_hi"])


def anova_pvalues(per_trial: pd.DataFrame, knob: str, metrics: tuple[str, ...] = GROUP_METRICS) -> dict[str, float]:
    """One-way ANOVA p-value per metric across the groups (NaN where fewer than two groups have
    two or more values): the single number that says whether any group differs at all, so
    overlapping CIs are not over- or under-read."""
    out: dict[str, float] = {}
    for m in metrics:
        if m not in per_trial or not per_trial[m].notna().any():
            continue
        samples = [g[m].dropna().to_numpy() for _, g in per_trial.groupby(knob, sort=False)]
        samples = [s for s in samples if s.size >= 2]
        if len(samples) < 2 or all(np.ptp(s) == 0 for s in samples):
            out[m] = float("nan")
            continue
        out[m] = float(stats.f_oneway(*samples).pvalue)
    return out


def _cell(row: pd.Series) -> str:
    if not math.isfinite(row["mean"]):
        return "-"
    if not math.isfinite(row["ci_half"]):
        return f"{row['mean']:.4g}"
    return f"{row['mean']:.4g} ± {row['ci_half']:.2g}"


def wide_table(summary: pd.DataFrame, knob: str) -> pd.DataFrame:
    """Printable table: one row per group, ``n`` trials, and 'mean ± 95% CI half-width' per metric."""
    metrics = list(dict.fromkeys(summary["metric"]))
    rows = []
    for g in dict.fromkeys(summary["group"]):
        sub = summary[summary["group"] == g].set_index("metric")
        row: dict[str, Any] = {knob: g, "n": int(sub["n"].max())}
        for m in metrics:
            row[m] = _cell(sub.loc[m])
        rows.append(row)
    return pd.DataFrame(rows, columns=[knob, "n", *metrics])


def format_text(wide: pd.DataFrame, pvalues: dict[str, float]) -> str:
    lines = [wide.to_string(index=False)]
    if pvalues:
        ps = "  ".join(f"{m} {p:.3g}" if math.isfinite(p) else f"{m} -" for m, p in pvalues.items())
        lines.append(f"one-way ANOVA p across groups: {ps}")
    lines.append("cells: mean ± half-width of the 95% CI (Student t, n-1 dof); complete trials only")
    return "\n".join(lines)


def format_markdown(wide: pd.DataFrame, pvalues: dict[str, float]) -> str:
    """A GitHub markdown table (no tabulate dependency) plus the ANOVA line."""
    cols = [str(c) for c in wide.columns]
    lines = ["| " + " | ".join(f"`{c}`" if "/" in c or "." in c else c for c in cols) + " |",
             "|" + "|".join("---" if i == 0 else "---:" for i in range(len(cols))) + "|"]
    for _, r in wide.iterrows():
        lines.append("| " + " | ".join(str(r[c]) for c in wide.columns) + " |")
    if pvalues:
        ps = ", ".join(f"`{m}` {p:.3g}" if math.isfinite(p) else f"`{m}` -" for m, p in pvalues.items())
        lines.append("")
        lines.append(f"One-way ANOVA p-value across groups: {ps}.")
    return "\n".join(lines) + "\n"


def group_figure(per_trial: pd.DataFrame, summary: pd.DataFrame, knob: str, path: Path,
                 title: str = "") -> Path:
    """One panel per metric: groups on x, a box per group, every trial as a jittered point, and
    the mean with its 95% CI as a red bar, so both the spread and the uncertainty are visible."""
    metrics = list(dict.fromkeys(summary["metric"]))
    groups = list(dict.fromkeys(summary["group"]))
    ncol = min(len(metrics), 3)
    nrow = math.ceil(len(metrics) / ncol)
    fig = Figure(figsize=(4.2 * ncol, 3.4 * nrow))
    axes = fig.subplots(nrow, ncol, squeeze=False)
    rng = np.random.default_rng(0)  # fixed jitter: the same search draws the same figure
    for ax, m in zip(axes.flat, metrics, strict=False):
        data = [per_trial.loc[per_trial[knob] == g, m].dropna().to_numpy() for g in groups]
        xs = np.arange(len(groups))
        ax.boxplot([d if d.size else [np.nan] for d in data], positions=xs, widths=0.5,
                   showfliers=False, patch_artist=True,
                   boxprops={"facecolor": "0.92", "edgecolor": "0.5"},
                   medianprops={"color": "0.4"}, whiskerprops={"color": "0.5"}, capprops={"color": "0.5"})
        for x, d in zip(xs, data, strict=True):
            ax.scatter(x + rng.uniform(-0.12, 0.12, d.size) - 0.12, d, s=16, color="C0", alpha=0.8, zorder=3)
        sub = summary[summary["metric"] == m].set_index("group")
        means = [sub.loc[g, "mean"] for g in groups]
        halves = [sub.loc[g, "ci_half"] if math.isfinite(sub.loc[g, "ci_half"]) else 0.0 for g in groups]
        ax.errorbar(xs + 0.18, means, yerr=halves, fmt="D", color="C3", ms=5, capsize=4, zorder=4,
                    label="mean ± 95% CI")
        ax.set_xticks(xs, [str(g) for g in groups])
        ax.set_xlabel(knob)
        ax.set_title(m, fontsize=10)
        ax.grid(axis="y", alpha=0.3)
    for ax in list(axes.flat)[len(metrics):]:
        ax.set_visible(False)
    axes.flat[0].legend(fontsize=7, loc="best")
    n_text = ", ".join(f"{g}: n={int(summary.loc[summary['group'] == g, 'n'].max())}" for g in groups)
    fig.suptitle(f"{title}  ({n_text})".strip(), fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    return path


@dataclass
class GroupReport:
    """What ``report --group-by`` produced: the tables, the printable text and the files."""

    per_trial: pd.DataFrame
    summary: pd.DataFrame
    wide: pd.DataFrame
    pvalues: dict[str, float]
    text: str
    files: list[Path]


def _slug(knob: str) -> str:
    return knob.replace(".", "_").replace("/", "_")


def group_report(summaries: list[TrialSummary], knob: str, out_dir: Path, space: SearchSpace | None = None,
                 metrics: tuple[str, ...] = GROUP_METRICS, title: str = "", tracker: Any = None,
                 parent_run_id: str | None = None) -> GroupReport:
    """Group complete trials by ``knob``, write ``by_<knob>.{csv,md,txt,png}`` and the per-trial
    values to ``out_dir``, and log them under ``report/`` of the parent run when a tracker (the
    report's :class:`~search.tracking.client.MlflowTracker`) and run id are given."""
    check_knob(knob)
    per_trial = per_trial_frame(summaries, knob, metrics)
    if per_trial.empty:
        raise ConfigError(f"--group-by {knob}: no complete trial yet; wait for the search or resume it")
    summary = summarize(per_trial, knob, metrics, space)
    wide = wide_table(summary, knob)
    pvalues = anova_pvalues(per_trial, knob, tuple(dict.fromkeys(summary["metric"])))
    text = format_text(wide, pvalues)
    out_dir.mkdir(parents=True, exist_ok=True)
    stem = f"by_{_slug(knob)}"
    files = [out_dir / f"{stem}.csv", out_dir / f"{stem}_trials.csv", out_dir / f"{stem}.md", out_dir / f"{stem}.txt"]
    summary.to_csv(files[0], index=False)
    per_trial.to_csv(files[1], index=False)
    files[2].write_text(format_markdown(wide, pvalues))
    files[3].write_text(text + "\n")
    files.append(group_figure(per_trial, summary, knob, out_dir / f"{stem}.png", title=title))
    if tracker is not None and parent_run_id:
        for f in files:
            tracker.log_artifact(parent_run_id, f, "report")
    return GroupReport(per_trial, summary, wide, pvalues, text, files)
