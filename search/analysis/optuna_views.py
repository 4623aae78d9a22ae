"""Optuna's own views of the study (history, parallel coordinates, per-trial learning curves, the
natural view of ASHA, and importances), as HTML (plotly) and PNG (matplotlib), in ``report/optuna``.

A view that needs more trials than the study has is not drawn; ``notes`` says how many it had.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import optuna
from optuna.trial import TrialState

from search.layout import SearchState
from search.space import SearchSpace

MIN_TRIALS = {"optimization_history": 1, "parallel_coordinate": 2, "intermediate_values": 1,
              "param_importances": 10}  # complete trials (intermediate: trials with per-epoch values)


def _draw(name: str, kwargs: dict[str, Any], out: Path, basis: str) -> list[Path]:
    """One view as HTML and PNG, its title saying what it rests on (``basis``: "3 complete trials")."""
    import matplotlib.pyplot as plt
    import optuna.visualization as vis
    import optuna.visualization.matplotlib as vis_mpl

    html, png = out / f"{name}.html", out / f"{name}.png"
    figure = getattr(vis, f"plot_{name}")(**kwargs)
    figure.update_layout(title_text=f"{figure.layout.title.text or name} ({basis})")
    figure.write_html(str(html), include_plotlyjs="directory")  # plotly.min.js beside it: works offline
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the matplotlib backend is "experimental" in Optuna
        ax = getattr(vis_mpl, f"plot_{name}")(**kwargs)
    first = ax if hasattr(ax, "figure") else ax.flat[0]
    first.set_title(f"{first.get_title() or name} ({basis})")
    fig = first.figure
    fig.set_size_inches(8, 5)
    fig.tight_layout()
    fig.savefig(png, dpi=90)
    plt.close(fig)
    return [html, png]


def optuna_views(state: SearchState, space: SearchSpace, out_dir: Path) -> tuple[list[Path], list[str]]:
    """Draw every view the study has enough trials for; returns (files, notes)."""
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    try:
        study = optuna.load_study(study_name=state.study_name, storage=state.optuna_url)
    except KeyError:
        return [], ["Optuna views skipped: the study has no trials yet"]
    trials = study.get_trials(deepcopy=False)
    complete = sum(t.state == TrialState.COMPLETE for t in trials)
    curves = sum(bool(t.intermediate_values) for t in trials)
    target: Callable[[Any], float] | None = (lambda t: t.values[0]) if space.multi_objective else None
    first = {"target": target, "target_name": space.metrics[0]} if target else {"target_name": space.metrics[0]}
    views = {"optimization_history": (complete, first), "parallel_coordinate": (complete, first),
             "intermediate_values": (curves, {}), "param_importances": (complete, first)}
    out = out_dir / "optuna"
    out.mkdir(parents=True, exist_ok=True)
    files: list[Path] = []
    notes: list[str] = []
    for name, (have, kwargs) in views.items():
        need = MIN_TRIALS[name]
        what = "trials with per-epoch values" if name == "intermediate_values" else "complete trials"
        if have < need:
            notes.append(f"Optuna {name} not drawn: {have} {what}, it needs at least {need}")
            for stale in (out / f"{name}.html", out / f"{name}.png"):
                stale.unlink(missing_ok=True)
            continue
        try:
            files += _draw(name, {"study": study, **kwargs}, out, f"{have} {what}")
            if out / "plotly.min.js" not in files and (out / "plotly.min.js").is_file():
                files.append(out / "plotly.min.js")
        except (ValueError, RuntimeError, ImportError) as exc:
            notes.append(f"Optuna {name} not drawn: {exc}")
    return files, notes
