"""The report of a search: trials table and figures, in ``<search>/report`` and in MLflow.

Figures (matplotlib object API: importing this never changes the backend):

* ``pareto_front.png`` (multi-objective: the first two objectives, front highlighted) or
  ``objective_history.png`` (single: each complete trial's objective and the best so far);
* ``param_importances.png``: Optuna's fANOVA importances, computed on an in-memory study of
  the *complete* trials only, so ASHA-cut trials do not bias them;
* ``parallel_coordinates.png``: one line per complete trial across the searched params (each
  axis spans the searched range, log for loguniform, category index for choice) and the
  objective(s) (observed range).

A figure that cannot be drawn yet (one complete trial, no variation) is skipped with a note in
``report/notes.txt`` rather than failing the report.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import optuna
from matplotlib import colormaps
from matplotlib.figure import Figure

from search.analysis.results import (
    TrialSummary,
    complete_trials,
    format_table,
    objective_values,
    pareto_front,
    trials_frame,
)
from search.layout import SearchLayout, SearchState
from search.space import SearchSpace
from search.space.distributions import distributions


def _position(space: SearchSpace, param: str, value: Any) -> float:
    """Where ``value`` sits in the param's searched range, 0..1 (log scale for loguniform,
    category index for choice): axes then show the range searched, not just the range hit."""
    spec = space.params[param]
    if spec.kind == "choice":
        values = spec.values()
        return values.index(value) / max(len(values) - 1, 1) if value in values else float("nan")
    lo, hi = (float(b) for b in spec.bounds())
    v = float(value)
    if spec.kind == "loguniform":
        lo, hi, v = math.log(lo), math.log(hi), math.log(v)
    return (v - lo) / (hi - lo)


def objective_history(space: SearchSpace, done: list[TrialSummary], path: Path) -> Path:
    metric, mode = space.metrics[0], space.modes[0]
    order = sorted(done, key=lambda s: s.name)
    ys = [objective_values(s, space)[0] for s in order]  # type: ignore[index]
    best, run = [], None
    for y in ys:
        run = y if run is None else (max(run, y) if mode == "max" else min(run, y))
        best.append(run)
    fig = Figure(figsize=(6, 3.5))
    ax = fig.subplots()
    ax.plot(range(len(ys)), ys, "o", label=metric)
    ax.step(range(len(ys)), best, where="post", label=f"best so far ({mode})")
    ax.set_xticks(range(len(ys)), [s.name.removeprefix("trial_") for s in order], rotation=60, fontsize=7)
    ax.set_xlabel("complete trial")
    ax.set_ylabel(metric)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    return path


def pareto_figure(space: SearchSpace, done: list[TrialSummary], path: Path) -> Path:
    mx, my = space.metrics[0], space.metrics[1]
    front = pareto_front(done, space)
    fig = Figure(figsize=(5, 4))
    ax = fig.subplots()
    ax.scatter([s.metrics[mx] for s in done], [s.metrics[my] for s in done], c="0.6", label="complete trials")
    fx = sorted(front, key=lambda s: s.metrics[mx])
    ax.plot([s.metrics[mx] for s in fx], [s.metrics[my] for s in fx], "o-", c="C3", label="Pareto front")
    for s in fx:
        ax.annotate(s.name.removeprefix("trial_"), (s.metrics[mx], s.metrics[my]), fontsize=7)
    ax.set_xlabel(f"{mx} ({space.modes[0]})")
    ax.set_ylabel(f"{my} ({space.modes[1]})")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    return path


def importances(space: SearchSpace, done: list[TrialSummary]) -> dict[str, float]:
    """fANOVA importances of the searched params for the first objective."""
    dists = distributions(space)
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.create_study(directions=["maximize" if m == "max" else "minimize" for m in space.modes])
    for s in done:
        params = {k: s.params[k] for k in dists if k in s.params}
        study.add_trial(optuna.trial.create_trial(
            params=params, distributions={k: dists[k] for k in params}, values=objective_values(s, space)))
    evaluator = optuna.importance.FanovaImportanceEvaluator(seed=0)
    target = (lambda t: t.values[0]) if space.multi_objective else None
    return optuna.importance.get_param_importances(study, evaluator=evaluator, target=target)


#: Fewer complete trials than this and fANOVA importances are noise: they are not drawn.
MIN_IMPORTANCE_TRIALS = 10


def importance_figure(values: dict[str, float], metric: str, path: Path, num_trials: int = 0) -> Path:
    names = list(values)[::-1]
    fig = Figure(figsize=(5, 0.4 * len(names) + 1.2))
    ax = fig.subplots()
    ax.barh(names, [values[n] for n in names])
    ax.set_xlabel(f"importance for {metric} (fANOVA)")
    if num_trials:
        ax.set_title(f"from {num_trials} complete trials", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    return path


def objective_vs_params_figure(space: SearchSpace, done: list[TrialSummary], path: Path) -> Path:
    """One panel per searched param: each complete trial's objective against its value."""
    params, metric = list(space.params), space.metrics[0]
    ncol = min(3, len(params))
    nrow = math.ceil(len(params) / ncol)
    fig = Figure(figsize=(4 * ncol, 3 * nrow))
    axes = fig.subplots(nrow, ncol, squeeze=False)
    ys = [float(s.metrics[metric]) for s in done]
    for ax, p in zip(axes.flat, params, strict=False):
        spec = space.params[p]
        if spec.kind == "choice":
            values = [str(v) for v in spec.values()]
            xs = [values.index(str(s.params[p])) if str(s.params[p]) in values else math.nan for s in done]
            ax.set_xticks(range(len(values)), values, fontsize=8)
        else:
            xs = [float(s.params[p]) for s in done]
            if spec.kind == "loguniform":
                ax.set_xscale("log")
        ax.scatter(xs, ys, s=18, alpha=0.8)
        ax.set_xlabel(p, fontsize=9)
        ax.set_ylabel(metric, fontsize=8)
        ax.grid(alpha=0.3)
    for ax in list(axes.flat)[len(params):]:
        ax.set_visible(False)
    fig.suptitle(f"{metric} against each searched knob ({len(done)} complete trials)", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    return path


def parallel_figure(space: SearchSpace, done: list[TrialSummary], path: Path) -> Path:
    axes = list(space.params) + space.metrics
    cols = [[_position(space, a, s.params[a]) for s in done] for a in space.params]
    for m in space.metrics:  # objectives: observed range
        raw = [float(s.metrics[m]) for s in done]
        lo, hi = min(raw), max(raw)
        cols.append([(v - lo) / (hi - lo) if hi > lo else 0.5 for v in raw])
    color_key = [float(s.metrics[space.metrics[0]]) for s in done]
    lo, hi = min(color_key), max(color_key)
    cmap = colormaps["viridis"]
    fig = Figure(figsize=(1.3 * len(axes) + 2, 4))
    ax = fig.subplots()
    for i in range(len(done)):
        c = cmap((color_key[i] - lo) / (hi - lo) if hi > lo else 0.5)
        ax.plot(range(len(axes)), [col[i] for col in cols], "-o", color=c, alpha=0.8, ms=3)
    labels = []
    for a in axes:
        spec = space.params.get(a)
        if spec is None:
            vals = [float(s.metrics[a]) for s in done]
            labels.append(f"{a}\n{min(vals):.3g}..{max(vals):.3g}")
        elif spec.kind == "choice":
            labels.append(a + "\n" + "/".join(map(str, spec.values())))
        else:
            lo_b, hi_b = spec.bounds()
            labels.append(f"{a}\n{lo_b:g}..{hi_b:g}" + (" (log)" if spec.kind == "loguniform" else ""))
    ax.set_xticks(range(len(axes)), labels, rotation=20, fontsize=7)
    ax.set_yticks([0, 1], ["low", "high"])
    ax.set_title(f"complete trials, colour = {space.metrics[0]}", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    return path


def build_report(layout: SearchLayout, space: SearchSpace, state: SearchState | None = None,
                 tracker: Any = None, out_dir: Path | None = None) -> list[Path]:
    """Write the table and figures; log them to the parent run when a tracker is given."""
    out = out_dir or layout.report_dir
    out.mkdir(parents=True, exist_ok=True)
    summaries = TrialSummary.load_all(layout)
    frame = trials_frame(summaries, space)
    files = [out / "trials.csv", out / "trials.txt"]
    frame.to_csv(files[0], index=False)
    files[1].write_text(format_table(frame) + "\n")
    done = complete_trials(summaries, space)
    notes = []
    if not done:
        notes.append("no complete trial yet: no figures")
    else:
        if space.multi_objective:
            files.append(pareto_figure(space, done, out / "pareto_front.png"))
        else:
            files.append(objective_history(space, done, out / "objective_history.png"))
        files.append(parallel_figure(space, done, out / "parallel_coordinates.png"))
        files.append(objective_vs_params_figure(space, done, out / "objective_vs_params.png"))
        if len(done) < MIN_IMPORTANCE_TRIALS:
            notes.append(f"param importances skipped: {len(done)} complete trials, fewer than the "
                         f"{MIN_IMPORTANCE_TRIALS} they need to mean anything")
        else:
            try:
                values = importances(space, done)
                files.append(importance_figure(values, space.metrics[0], out / "param_importances.png",
                                               num_trials=len(done)))
                table = out / "param_importances.csv"
                table.write_text("param,importance,complete_trials\n" + "".join(
                    f"{k},{v:.6g},{len(done)}\n" for k, v in values.items()))
                files.append(table)
            except (RuntimeError, ValueError) as exc:
                notes.append(f"param importances skipped: {exc}")
    if state is not None:
        from search.analysis.optuna_views import optuna_views

        views, view_notes = optuna_views(state, space, out)
        files += views
        notes += view_notes
    notes_file = out / "notes.txt"
    if notes:
        notes_file.write_text("\n".join(notes) + "\n")
        files.append(notes_file)
    else:
        notes_file.unlink(missing_ok=True)
    if tracker is not None and state is not None and state.mlflow_parent_run_id:
        for f in files:
            artifact_dir = "report" if f.parent == out else f"report/{f.parent.name}"
            tracker.log_artifact(state.mlflow_parent_run_id, f, artifact_dir)
    return files
