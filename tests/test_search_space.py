"""Search spaces are validated before Ray starts: every bad input is one clear line, exit 2."""

from __future__ import annotations

import copy
from pathlib import Path

import pytest
import yaml

from compvae.errors import ConfigError
from search.cli import main
from search.space import load_space, space_from_dict

REPO = Path(__file__).resolve().parents[1]

GOOD = {
    "name": "t",
    "preset": "tiny",
    "params": {
        "child.beta": {"loguniform": [1.0, 8.0]},
        "mask.threshold": {"uniform": [0.0, 0.02]},
        "child.masking_mode": {"choice": ["loss", "both"]},
    },
    "objective": {"metric": "child/mig", "mode": "max"},
    "search": {"num_samples": 3, "max_concurrent": 2},
}


def _with(path: str, value) -> dict:
    data = copy.deepcopy(GOOD)
    cur = data
    keys = path.split("/")
    for k in keys[:-1]:
        cur = cur.setdefault(k, {})
    if value is _DELETE:
        del cur[keys[-1]]
    else:
        cur[keys[-1]] = value
    return data


_DELETE = object()

BAD = [
    # (what, data, expected fragment of the one-line message)
    ("unknown top-level field", _with("serach", {}), "serach: unknown field"),
    ("unknown search field", _with("search/num_sample", 3), "search.num_sample: unknown field"),
    ("param not a config field", _with("params/mask.thresh", {"uniform": [0, 1]}),
     "params.mask.thresh: not a TrialConfig field; did you mean mask.threshold?"),
    ("param not dotted", _with("params/beta", {"uniform": [1, 2]}), "params.beta: not a TrialConfig field"),
    ("two distributions", _with("params/child.beta", {"uniform": [1, 2], "loguniform": [1, 2]}),
     "give exactly one of"),
    ("no distribution", _with("params/child.beta", {}), "give exactly one of"),
    ("misspelt distribution", _with("params/child.beta", {"uniformm": [1, 2]}), "uniformm: unknown field"),
    ("lo above hi", _with("params/child.beta", {"uniform": [4, 1]}), "lower bound 4.0 must be below upper bound 1.0"),
    ("lo equals hi", _with("params/child.beta", {"int": [2, 2]}), "must be below upper bound"),
    ("log of zero", _with("params/mask.threshold", {"loguniform": [0, 0.1]}), "loguniform: lower bound must be > 0"),
    ("range not a pair", _with("params/child.beta", {"uniform": [1]}), "params.child.beta.uniform"),
    ("range of strings", _with("params/child.beta", {"uniform": ["a", "b"]}), "params.child.beta.uniform"),
    ("range beyond field bound", _with("params/mask.threshold", {"uniform": [0, 2]}),
     "params.mask.threshold: upper bound 2.0 is invalid: mask.threshold: Input should be less than or equal to 1"),
    ("negative blur", _with("params/mask.blur_sigma", {"uniform": [-1, 1]}),
     "params.mask.blur_sigma: lower bound -1.0 is invalid"),
    ("uniform on an int field", _with("params/child.epochs", {"uniform": [1, 4]}),
     "child.epochs is an integer field; use int: [lo, hi] or choice"),
    ("int on a literal", _with("params/child.resolution", {"int": [32, 64]}), "use choice: [...]"),
    ("uniform on a string field", _with("params/child.masking_mode", {"uniform": [0, 1]}), "use choice"),
    ("bad choice value", _with("params/child.masking_mode", {"choice": ["loss", "mixed"]}),
     "params.child.masking_mode: choice 'mixed' is invalid"),
    ("duplicate choices", _with("params/child.masking_mode", {"choice": ["loss", "loss"]}), "must be distinct"),
    ("empty choice", _with("params/child.masking_mode", {"choice": []}), "needs at least one value"),
    ("list-valued field", _with("params/eval.metrics", {"choice": ["mig", "dci"]}), "holds a list"),
    ("cross-field corner", _with("params", {"mask.latent": {"int": [2, 3]}, "parent.latent_dim": {"int": [2, 4]}}),
     "the lower corner (mask.latent=2, parent.latent_dim=2) is invalid"),
    ("no params", _with("params", {}), "s.yaml: params: give at least one field"),
    ("wrong type", _with("search/num_samples", "many"), "search.num_samples: Input should be a valid integer"),
    ("zero samples", _with("search/num_samples", 0), "search.num_samples: Input should be greater than or equal to 1"),
    ("bad mode", _with("objective", {"metric": "child/mig", "mode": "maximize"}), "objective.0.mode"),
    ("missing objective", _with("objective", _DELETE), "objective: Field required"),
    ("duplicate objectives", _with("objective", [{"metric": "a/b", "mode": "max"}, {"metric": "a/b", "mode": "min"}]),
     "metrics must be distinct"),
    ("bad sampler", _with("search/sampler", "cmaes"), "search.sampler"),
    ("bad scheduler", _with("search/scheduler", "hyperband"), "search.scheduler: expected 'asha', 'none'"),
    ("asha metric without mode", _with("search/scheduler", {"metric": "child/mig"}), "give both scheduler.metric"),
    ("bad asha order", _with("search/scheduler", {"order": "random"}),
     "search.scheduler.order: Input should be 'trial' or 'arrival' (got 'random')"),
    ("fractional gpus above one", _with("search/resources", {"gpus": 1.5}), "search.resources: gpus above 1 must be a whole number"),
    ("negative gpus", _with("search/resources", {"gpus": -1}), "search.resources.gpus"),
    ("cuda without gpus", _with("base", {"train": {"device": "cuda"}}), "train.device cuda needs search.resources.gpus > 0"),
    ("bad base", _with("base", {"mask": {"threshold": 3}}), "base: mask.threshold: Input should be less than or equal to 1"),
    ("unknown base field", _with("base", {"mask": {"thresh": 0.1}}), "mask.thresh: unknown field"),
    ("unknown preset", _with("preset", "huge"), "unknown preset 'huge'"),
    ("bad name", _with("name", "my search"), "s.yaml: name: letters, digits"),
    ("grid over continuous", _with("search/sampler", "grid"), "use choice or int for a grid"),
    ("repeats without grid", _with("search/repeats", 3), "only the grid sampler repeats"),
    # the outer level (parent knobs trained up front)
    ("outer param not searched", _with("outer", {"params": ["parent.beta"]}),
     "outer.params: parent.beta is not in params"),
    ("outer param not a parent knob", _with("outer", {"params": ["child.masking_mode"]}),
     "outer.params: child.masking_mode does not change the parent"),
    ("outer param continuous", {**_with("params/parent.beta", {"uniform": [1.0, 4.0]}),
                                "outer": {"params": ["parent.beta"]}},
     "outer.params: parent.beta is continuous"),
    ("parent knob left out of outer", {**_with("params/parent.beta", {"choice": [1.0, 4.0]}),
                                       "outer": {"params": ["parent.beta"]},
                                       "params": {**GOOD["params"], "parent.beta": {"choice": [1.0, 4.0]},
                                                  "parent.lr": {"loguniform": [1e-4, 1e-3]}}},
     "outer.params: parent.lr also change(s) the parent"),
    ("outer keep above the parents", {**_with("params/parent.beta", {"choice": [1.0, 4.0]}),
                                      "outer": {"params": ["parent.beta"], "keep": 3}},
     "outer.keep: 3 is more than the 2 outer parents"),
    ("outer keep over two knobs", {**_with("params/parent.beta", {"choice": [1.0, 4.0]}),
                                   "params": {**GOOD["params"], "parent.beta": {"choice": [1.0, 4.0]},
                                              "parent.latent_dim": {"choice": [4, 6]}},
                                   "outer": {"params": ["parent.beta", "parent.latent_dim"], "keep": 1}},
     "outer.keep: ranks the values of a single outer param"),
    ("outer keep without reuse", {**_with("params/parent.beta", {"choice": [1.0, 4.0]}),
                                  "search": {"reuse_parents": False},
                                  "outer": {"params": ["parent.beta"], "keep": 1}},
     "outer.keep: ranks parents trained once and shared, which needs search.reuse_parents: true"),
    ("outer ranked by a child metric", {**_with("params/parent.beta", {"choice": [1.0, 4.0]}),
                                        "outer": {"params": ["parent.beta"], "rank_by":
                                                  {"metric": "child/mig", "mode": "max"}}},
     "outer.rank_by: rank_by.metric must be a parent metric like parent/mig"),
    ("too many outer parents", {**_with("params/parent.beta", {"choice": [1.0, 4.0]}),
                                "params": {**GOOD["params"], "parent.epochs": {"int": [1, 40]},
                                           "parent.latent_dim": {"choice": [4, 6]}},
                                "outer": {"params": ["parent.epochs", "parent.latent_dim"]}},
     "outer.params: 80 parents to train up front (at most 64)"),
    ("more threads than CPUs", {**GOOD, "base": {"train": {"num_threads": 2}}},
     "base train.num_threads: 2 threads on 1 CPU(s) per trial; set search.resources.cpus to 2"),
    ("thread count not a number", {**GOOD, "base": {"train": {"num_threads": "abc"}}},
     "train.num_threads: Input should be a valid integer"),
    ("searched thread count", _with("params/train.num_threads", {"choice": [1, 2]}),
     "params: train.num_threads is set by search.resources.cpus"),
]


@pytest.mark.parametrize("what,data,fragment", BAD, ids=[b[0] for b in BAD])
def test_bad_space_is_one_clear_line(what, data, fragment):
    with pytest.raises(ConfigError) as info:
        space_from_dict(data, source="s.yaml")
    msg = str(info.value)
    assert "\n" not in msg
    assert msg.startswith("s.yaml: ")
    assert fragment in msg, msg


def test_grid_num_samples_must_match():
    data = _with("params", {"child.masking_mode": {"choice": ["loss", "both"]}, "child.epochs": {"int": [1, 2]}})
    data["search"] = {"sampler": "grid", "num_samples": 5}
    with pytest.raises(ConfigError, match="the grid has 4 points"):
        space_from_dict(data)


def test_grid_with_repeats_adds_a_seed_axis():
    data = _with("params", {"child.masking_mode": {"choice": ["loss", "both", "input"]}})
    data["base"] = {"train": {"seed": 10}}
    data["search"] = {"sampler": "grid", "repeats": 2}
    space = space_from_dict(data)
    assert space.grid_values() == {"child.masking_mode": ["loss", "both", "input"], "train.seed": [10, 11]}
    assert space.num_trials == 6


def test_outer_level_points_narrowing_and_round_trip():
    data = _with("params/parent.beta", {"choice": [1.0, 2.0, 4.0]})
    data["outer"] = {"params": ["parent.beta"], "keep": 2, "rank_by": {"metric": "parent/recon_error", "mode": "min"}}
    space = space_from_dict(data)
    assert space.outer_points() == [{"parent.beta": 1.0}, {"parent.beta": 2.0}, {"parent.beta": 4.0}]
    again = space_from_dict(yaml.safe_load(space.to_yaml()))
    assert again == space and again.outer.rank_by.mode == "min"
    narrow = space.narrowed("parent.beta", [4.0, 1.0])
    assert narrow.params["parent.beta"].values() == [4.0, 1.0] and narrow.params["child.beta"] == space.params["child.beta"]
    assert "outer" not in space_from_dict(GOOD).to_dict()  # no outer level, no key


def test_outer_level_of_a_repeated_grid_has_a_parent_per_seed():
    data = _with("params", {"parent.beta": {"choice": [1.0, 4.0]}, "child.masking_mode": {"choice": ["loss", "both"]}})
    data["base"] = {"train": {"seed": 3}}
    data["search"] = {"sampler": "grid", "repeats": 2}
    data["outer"] = {"params": ["parent.beta"]}
    space = space_from_dict(data)
    assert space.outer_points() == [{"parent.beta": b, "train.seed": s} for b in (1.0, 4.0) for s in (3, 4)]
    assert space.num_trials == 8


def test_yaml_scientific_notation_and_overrides(tmp_path):
    # PyYAML reads 1e-3 as a string: a space file still means the number.
    text = yaml.safe_dump(GOOD).replace("- 0.02", "- 2e-2") + "\n"
    text = text.replace("choice:\n    - loss\n    - both", "choice: [loss, both]")
    p = tmp_path / "s.yaml"
    p.write_text(text.replace("loguniform:\n    - 1.0", "loguniform:\n    - 1e0"))
    space = load_space(p)
    assert space.params["child.beta"].bounds() == (1.0, 8.0)
    assert space.params["mask.threshold"].bounds() == (0.0, 0.02)
    over = space.with_overrides(num_samples=7, max_concurrent=1, seed=5)
    assert (over.search.num_samples, over.search.max_concurrent, over.search.seed) == (7, 1, 5)
    again = space_from_dict(yaml.safe_load(over.to_yaml()))
    assert again == over
    cfg = over.trial_config({"child.beta": 2.5, "child.masking_mode": "both"})
    assert cfg.child.beta == 2.5 and cfg.child.masking_mode == "both" and cfg.data.num_train == 256


@pytest.mark.parametrize("name", ["quick", "paper"])
def test_shipped_spaces_are_valid(name):
    space = load_space(REPO / "spaces" / f"{name}.yaml")
    assert space.name == name
    for p in ("parent.beta", "child.beta", "mask.threshold", "mask.blur_sigma", "mask.delta", "child.masking_mode"):
        assert p in space.params
    if name == "paper":
        assert 0 < space.search.resources.gpus < 1
        assert space.num_trials >= 100
    else:
        assert space.search.resources.gpus == 0
        assert space.base_config().data.name == "scenes"


@pytest.mark.parametrize("args,fragment", [
    (["launch", "missing.yaml"], "missing.yaml: file not found"),
    (["launch", "BAD"], "params.mask.threshold: upper bound 2.0 is invalid"),
    (["launch", "BROKEN"], "broken YAML at line"),
    (["launch", "GRID", "--num-samples", "5"], "the grid has 2 points"),
    (["export", "nosuchsearch", "--out", "x"], "no search 'nosuchsearch'"),
    (["resume", "nosuchsearch"], "no search 'nosuchsearch'"),
    (["report", "nosuchsearch"], "no search 'nosuchsearch'"),
])
def test_cli_errors_are_one_line_exit_2(args, fragment, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "BAD").write_text(yaml.safe_dump(_with("params/mask.threshold", {"uniform": [0, 2]})))
    (tmp_path / "BROKEN").write_text("name: x\nparams: [unclosed\n")
    grid = _with("params", {"child.masking_mode": {"choice": ["loss", "both"]}})
    grid["search"] = {"sampler": "grid"}
    (tmp_path / "GRID").write_text(yaml.safe_dump(grid))
    assert main(args) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and err.startswith("error: "), err
    assert fragment in err, err
    assert not (tmp_path / "searches").exists()  # nothing is created before the space is valid


def test_cli_rejects_non_positive_counts(capsys):
    with pytest.raises(SystemExit) as info:
        main(["launch", "x.yaml", "--num-samples", "0"])
    assert info.value.code == 2
    assert "must be at least 1" in capsys.readouterr().err


@pytest.mark.parametrize("preset,cpus,threads", [("quick", 1, 1), ("quick", 0.5, 1), ("paper", 4, 4),
                                                 ("tiny", 2, 1)])
def test_every_trial_config_names_the_threads_it_runs_with(preset, cpus, threads):
    # a preset's 0 (torch's default) becomes the trial's CPUs; tiny's explicit 1 stays. The
    # export and a retrain read this config, so they run with the trial's thread count.
    data = {**GOOD, "preset": preset, "search": {**GOOD["search"], "resources": {"cpus": cpus}}}
    space = space_from_dict(data)
    assert space.base_dict()["train"]["num_threads"] == threads
    assert space.trial_config({"child.beta": 2.0}).train.num_threads == threads
