"""The masking study end to end, in miniature, and the CI math it reports.

The shipped ``spaces/study-masking.yaml`` is shrunk to 2 masking modes x 2 seeds at the `tiny`
preset's budgets and run as a real grid search on a local Ray with the real MLflow store; then
``compvae-search report --group-by child.masking_mode`` must group exactly the four complete
trials, report means equal to the trials' own metrics and CI half-widths equal to the Student t
formula, and leave the figure in the report folder and in the parent MLflow run.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml
from _services import local_ray
from mlflow.tracking import MlflowClient
from scipy import stats

from compvae.errors import ConfigError
from search.analysis.groups import GROUP_METRICS, mean_ci, per_trial_frame, summarize
from search.analysis.results import COMPLETED, STOPPED, TrialSummary, trials_frame
from search.cli import main
from search.layout import SearchLayout, SearchState
from search.space import load_space, space_from_dict

REPO = Path(__file__).resolve().parents[1]
STUDY = REPO / "spaces" / "study-masking.yaml"
KNOB = "child.masking_mode"


def _t_half(values: list[float]) -> float:
    x = np.asarray(values, dtype=float)
    return float(stats.t.ppf(0.975, x.size - 1) * x.std(ddof=1) / math.sqrt(x.size))


# ---- the CI math on a hand-built table (no Ray) ---------------------------------------------
def _summary(name: str, mode: str, seed: int, mig_fine: float, status: str = COMPLETED,
             epoch: int = 2) -> TrialSummary:
    return TrialSummary(trial_id=name, name=name, status=status, epoch=epoch, final_epoch=2,
                        params={KNOB: mode, "train.seed": seed},
                        metrics={"child/mig_fine": mig_fine, "child/recon_error": 0.1 + seed / 100})


def test_ci_math_on_hand_built_trials() -> None:
    trials = [_summary("a0", "none", 0, 0.10), _summary("a1", "none", 1, 0.20), _summary("a2", "none", 2, 0.60),
              _summary("b0", "loss", 0, 0.30),
              # cut by ASHA / still running: must not enter the comparison
              _summary("c0", "loss", 1, 9.0, status=STOPPED, epoch=1),
              _summary("c1", "loss", 2, 9.0, status="RUNNING", epoch=1)]
    per_trial = per_trial_frame(trials, KNOB)
    assert sorted(per_trial["trial"]) == ["a0", "a1", "a2", "b0"]
    summary = summarize(per_trial, KNOB).set_index(["group", "metric"])
    # metrics nobody reported are skipped, not reported as NaN rows
    assert set(summary.index.get_level_values("metric")) == {"child/mig_fine", "child/recon_error"}
    none = summary.loc[("none", "child/mig_fine")]
    assert none["n"] == 3
    assert none["mean"] == pytest.approx(0.3)
    sd = math.sqrt(((0.1 - 0.3) ** 2 + (0.2 - 0.3) ** 2 + (0.6 - 0.3) ** 2) / 2)
    assert none["sd"] == pytest.approx(sd)
    assert none["ci_half"] == pytest.approx(4.302652729749464 * sd / math.sqrt(3))  # t_{0.975, 2}
    assert (none["ci_lo"], none["ci_hi"]) == pytest.approx((0.3 - none["ci_half"], 0.3 + none["ci_half"]))
    one = summary.loc[("loss", "child/mig_fine")]
    assert one["n"] == 1 and one["mean"] == pytest.approx(0.3)
    assert math.isnan(one["ci_half"]) and math.isnan(one["sd"])
    assert mean_ci([])[0] == 0 and math.isnan(mean_ci([])[1])
    assert mean_ci([1.0, float("nan"), 3.0])[:2] == (2, 2.0)


def test_group_by_must_be_a_config_field(tmp_path: Path) -> None:
    from search.analysis.groups import group_report

    with pytest.raises(ConfigError, match="did you mean child.masking_mode"):
        group_report([_summary("a0", "none", 0, 0.1)], "child.masking_mod", tmp_path)


def test_shipped_study_spaces_are_the_promised_grids() -> None:
    cpu = load_space(STUDY)
    assert cpu.search.sampler == "grid" and cpu.search.scheduler is None
    grid = cpu.grid_values()
    assert grid[KNOB] == ["none", "input", "loss", "both"] and len(grid["train.seed"]) >= 6
    assert grid["child.parent_code"] == ["none", "decoder"] and cpu.base_config().mask.source == "parent"
    assert cpu.num_trials == 8 * len(grid["train.seed"])
    assert cpu.metrics == ["child/fine_informativeness"] and cpu.base_config().data.name == "scenes"
    control = load_space(REPO / "spaces" / "control.yaml")
    assert control.base_config().mask.source == "oracle" and control.search.scheduler is None
    assert control.grid_values()[KNOB] == ["none", "input", "loss", "both"]
    assert len(control.grid_values()["train.seed"]) >= 5
    decoder = load_space(REPO / "spaces" / "control-decoder.yaml")
    assert decoder.base_config().mask.source == "oracle" and decoder.base_config().child.parent_code == "decoder"
    assert decoder.grid_values()["train.seed"] == control.grid_values()["train.seed"]
    gpu = load_space(REPO / "spaces" / "study-masking-gpu.yaml")
    assert gpu.search.sampler == "grid" and gpu.search.scheduler is None
    assert gpu.grid_values()[KNOB] == ["none", "input", "loss", "both"]
    assert gpu.search.repeats > cpu.search.repeats and 0 < gpu.search.resources.gpus < 1
    settings = load_space(REPO / "spaces" / "study-mask-settings.yaml")
    assert settings.search.sampler == "tpe" and settings.num_trials >= 30 and settings.search.scheduler is None
    assert {"mask.threshold", "mask.blur_sigma", "mask.delta", "mask.delta_std", "mask.nuisance"} <= set(settings.params)


# ---- the miniature study on real Ray + MLflow -----------------------------------------------
@pytest.fixture(scope="module")
def ray_local():
    with local_ray() as address:
        yield address


def _mini_study(tmp_path: Path) -> Path:
    """The shipped study at tiny budgets: its sampler, objective and settings, 2 modes x 2 seeds."""
    data = yaml.safe_load(STUDY.read_text())
    data.update(name="study-mini", preset="tiny", base={"eval": {"metrics": ["mig", "informativeness"]}})
    data["params"] = {KNOB: {"choice": ["none", "loss"]}}
    data["search"]["repeats"] = 2
    space_from_dict(data)  # still a valid space
    path = tmp_path / "study-mini.yaml"
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


def test_mini_study_end_to_end(ray_local: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    space_file = _mini_study(tmp_path)
    assert main(["launch", str(space_file), "--storage", str(tmp_path / "s"), "--name", "study-mini"]) == 0
    layout = SearchLayout(tmp_path / "s" / "study-mini")
    summaries = TrialSummary.load_all(layout)
    assert len(summaries) == 4 and all(s.complete for s in summaries)
    assert sorted((s.params[KNOB], s.params["train.seed"]) for s in summaries) == [
        ("loss", 0), ("loss", 1), ("none", 0), ("none", 1)]
    capsys.readouterr()

    assert main(["report", str(layout.root), "--group-by", KNOB]) == 0
    out = capsys.readouterr().out
    assert f"study-mini: by {KNOB}" in out and "95% CI" in out

    summary = pd.read_csv(layout.report_dir / "by_child_masking_mode.csv")
    assert list(dict.fromkeys(summary["group"])) == ["none", "loss"]  # the space's order
    assert set(summary["metric"]) == set(GROUP_METRICS)  # tiny trials report all five
    assert (summary["n"] == 2).all()
    # means and CIs against the trials' own numbers (objective column of the trials table too)
    objective = load_space(layout.space_file).metrics[0]
    table = trials_frame(summaries, load_space(layout.space_file))
    for _, row in summary.iterrows():
        values = [s.metrics[row["metric"]] for s in summaries if s.params[KNOB] == row["group"]]
        assert row["mean"] == pytest.approx(np.mean(values))
        assert row["ci_half"] == pytest.approx(_t_half(values), nan_ok=True)
        objective_values = [s.metrics[objective] for s in summaries if s.params[KNOB] == row["group"]]
        assert table.loc[table[KNOB] == row["group"], objective].mean() == pytest.approx(np.mean(objective_values))

    # the paired analysis of the same trials: every arm against the first, pairs by seed
    assert main(["report", str(layout.root), "--paired-by", "train.seed", "--group-by", KNOB]) == 0
    out = capsys.readouterr().out
    assert "paired by train.seed" in out and "| loss | 2 |" in out
    paired = pd.read_csv(layout.report_dir / "paired_child_mig_fine.csv")
    by = {(s.params[KNOB], s.params["train.seed"]): s.metrics["child/mig_fine"] for s in summaries}
    diffs = [by[("loss", k)] - by[("none", k)] for k in (0, 1)]
    assert paired["arm"].tolist() == ["loss"] and paired["pairs"].tolist() == [2]
    assert paired["mean_diff"][0] == pytest.approx(np.mean(diffs))
    assert (layout.report_dir / "paired.png").stat().st_size > 10_000

    # report --with: an arm run in another search of the same seeds joins the pairing
    other = yaml.safe_load(space_file.read_text())
    other.update(name="study-mini-both")
    other["params"] = {KNOB: {"choice": ["both"]}}
    other_file = tmp_path / "study-mini-both.yaml"
    other_file.write_text(yaml.safe_dump(other, sort_keys=False))
    assert main(["launch", str(other_file), "--storage", str(tmp_path / "s"), "--name", "study-mini-both"]) == 0
    joined = TrialSummary.load_all(SearchLayout(tmp_path / "s" / "study-mini-both"))
    by.update({(s.params[KNOB], s.params["train.seed"]): s.metrics["child/mig_fine"] for s in joined})
    capsys.readouterr()
    assert main(["report", "study-mini", "--storage", str(tmp_path / "s"), "--with", "study-mini-both",
                 "--paired-by", "train.seed", "--group-by", KNOB]) == 0
    paired = pd.read_csv(layout.report_dir / "paired_child_mig_fine.csv")
    assert paired["arm"].tolist() == ["loss", "both"] and paired["pairs"].tolist() == [2, 2]
    assert paired["mean_diff"][1] == pytest.approx(np.mean([by[("both", k)] - by[("none", k)] for k in (0, 1)]))
    trials = pd.read_csv(layout.report_dir / "paired_trials.csv")
    assert sorted(t for t in trials["trial"] if t.startswith("study-mini-both/")) == [
        f"study-mini-both/{s.name}" for s in sorted(joined, key=lambda s: s.name)]
    # several knobs name an arm (each checked on its own)
    assert main(["report", "study-mini", "--storage", str(tmp_path / "s"), "--with", "study-mini-both",
                 "--paired-by", "train.seed", "--group-by", f"{KNOB},child.parent_code"]) == 0
    paired = pd.read_csv(layout.report_dir / "paired_child_mig_fine.csv")
    assert paired["arm"].tolist() == ["loss / none", "both / none"]
    assert main(["report", "study-mini", "--storage", str(tmp_path / "s"), "--paired-by", "train.seed",
                 "--group-by", f"{KNOB},child.parent_cod"]) == 2
    assert "--group-by child.parent_cod: not a TrialConfig field; did you mean child.parent_code?" in (
        capsys.readouterr().err)
    capsys.readouterr()
    assert main(["report", "study-mini", "--storage", str(tmp_path / "s"), "--with", "study-mini",
                 "--paired-by", "train.seed"]) == 2
    assert "that is the search being reported" in capsys.readouterr().err
    assert main(["report", "study-mini", "--storage", str(tmp_path / "s"), "--with", "study-mini-both"]) == 2
    assert "add --paired-by" in capsys.readouterr().err

    png = layout.report_dir / "by_child_masking_mode.png"
    assert png.is_file() and png.stat().st_size > 10_000
    md = (layout.report_dir / "by_child_masking_mode.md").read_text().splitlines()
    assert sum(line.startswith("| ") for line in md) == 3  # header + one row per group
    state = SearchState.load(layout)
    client = MlflowClient(state.mlflow_uri)
    logged = {a.path for a in client.list_artifacts(state.mlflow_parent_run_id, "report")}
    assert {"report/by_child_masking_mode.png", "report/by_child_masking_mode.csv",
            "report/by_child_masking_mode.md"} <= logged
