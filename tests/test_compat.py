"""Each private-API use in compvae.compat still works on the installed libraries."""

from __future__ import annotations

import numpy as np
import pytest

from compvae import compat


def test_tested_ranges_cover_the_installed_versions():
    import optuna
    import ray
    import sklearn

    assert compat._check("scikit-learn", sklearn.__version__, compat.SKLEARN_TESTED, "x")
    assert compat._check("optuna", optuna.__version__, compat.OPTUNA_TESTED, "x")
    assert compat._check("ray", ray.__version__, compat.RAY_TESTED, "x")


def test_outside_the_tested_range_is_one_warning():
    with pytest.warns(RuntimeWarning, match="lib 9.9.0: thing is a private API"):
        assert not compat._check("lib", "9.9.0", ((1, 0), (1, 9)), "thing")


def test_hgb_predictors_are_the_fitted_trees():
    from sklearn.ensemble import HistGradientBoostingClassifier

    rng = np.random.default_rng(0)
    x = rng.normal(size=(200, 3))
    y = (x[:, 1] > 0).astype(int)
    model = HistGradientBoostingClassifier(max_iter=5).fit(x, y)
    trees = compat.hgb_predictors(model)
    assert len(trees) == 5 and trees[0][0].nodes["feature_idx"][0] == 1
    with pytest.raises(RuntimeError, match="_predictors"):
        compat.hgb_predictors(object())


def test_optuna_storage_access(tmp_path):
    import optuna
    from optuna.trial import TrialState

    study = optuna.create_study(storage=f"sqlite:///{tmp_path / 's.db'}")
    trial = study.ask()
    assert not compat.study_trial_finished(study, trial)
    frozen = study.get_trials(deepcopy=False, states=(TrialState.RUNNING,))[0]
    compat.fail_study_trial(study, frozen, "orphaned", "why")
    (t,) = study.get_trials(deepcopy=False)
    assert t.state == TrialState.FAIL and t.user_attrs == {"orphaned": "why"}
    assert compat.study_trial_finished(study, trial)


def test_ray_token_switch_and_logger_exist():
    import importlib
    import logging

    compat.ray_enable_token_auth()  # True or False by whether a token exists: never raises
    module = importlib.import_module(compat.RAY_TOKEN_LOGGER)
    assert hasattr(module, "maybe_enable_token_auth_if_token_available")
    assert isinstance(logging.getLogger(compat.RAY_TOKEN_LOGGER), logging.Logger)


def test_tune_stop_retries():
    from ray.tune.experiment import Trial

    trial = Trial("__fake", config={}, max_failures=3, stub=True)
    compat.tune_stop_retries(trial)
    assert trial.max_failures == 0
    with pytest.raises(RuntimeError, match="max_failures"):
        compat.tune_stop_retries(object())


def test_tune_json_logger_keeps_the_drivers_file_and_restores_a_missing_one(tmp_path):
    """A retry in the same driver keeps its result.json (Tune's own restore copies storage over
    it: an older file, or a warning when storage has none); a resumed driver gets storage's."""
    import logging
    from pathlib import Path
    from types import SimpleNamespace

    import pyarrow.fs
    from ray.tune.logger import JsonLoggerCallback

    def trial(local: Path, remote: Path):
        local.mkdir(parents=True, exist_ok=True)
        remote.mkdir(parents=True, exist_ok=True)
        storage = SimpleNamespace(trial_fs_path=str(remote), storage_filesystem=pyarrow.fs.LocalFileSystem())
        return SimpleNamespace(checkpoint=True, local_path=str(local), storage=storage)

    logger = compat.tune_json_logger()
    assert isinstance(logger, JsonLoggerCallback)
    same = trial(tmp_path / "driver", tmp_path / "storage")
    (tmp_path / "driver" / "result.json").write_text('{"epoch": 1}\n{"epoch": 2}\n')
    (tmp_path / "storage" / "result.json").write_text('{"epoch": 1}\n')  # synced before epoch 2
    logger._restore_from_remote("result.json", same)
    assert (tmp_path / "driver" / "result.json").read_text() == '{"epoch": 1}\n{"epoch": 2}\n'
    JsonLoggerCallback()._restore_from_remote("result.json", same)  # what Tune alone does
    assert (tmp_path / "driver" / "result.json").read_text() == '{"epoch": 1}\n'

    resumed = trial(tmp_path / "new-driver", tmp_path / "storage")
    logger._restore_from_remote("result.json", resumed)
    assert (tmp_path / "new-driver" / "result.json").read_text() == '{"epoch": 1}\n'
    said: list[str] = []
    handler = logging.Handler(logging.WARNING)
    handler.emit = lambda record: said.append(record.getMessage())
    tune_log = logging.getLogger("ray.tune.logger.logger")  # Ray's loggers do not propagate
    tune_log.addHandler(handler)
    try:
        logger._restore_from_remote("result.json", trial(tmp_path / "d2", tmp_path / "empty"))
    finally:
        tune_log.removeHandler(handler)
    assert any("Remote file not found" in m for m in said)  # neither has it: a real loss, still said


def test_tune_resume_held_trial_reaches_the_controllers_train_call():
    """Schedulers get Tune's controller wrapped; the resume must reach the real one's call."""
    from ray.tune.execution.tune_controller import TrialRunnerWrapper, TuneController

    assert callable(TuneController._schedule_trial_train)
    calls = []

    class Controller:
        def _schedule_trial_train(self, trial):
            calls.append(trial)

    compat.tune_resume_held_trial(TrialRunnerWrapper(Controller(), trial_executor=None), "trial")
    assert calls == ["trial"]
    with pytest.raises(RuntimeError, match="_schedule_trial_train"):
        compat.tune_resume_held_trial(object(), "trial")


def test_optuna_search_state_reads_the_searchers_live_trials():
    import optuna
    from ray.tune.search.optuna import OptunaSearch

    searcher = OptunaSearch(space={"x": optuna.distributions.FloatDistribution(0.0, 1.0)},
                            metric="m", mode="max", seed=0)
    config = searcher.suggest("t1")
    trials, study, completed = compat.optuna_search_state(searcher)
    assert list(trials) == ["t1"] and 0.0 <= config["x"] <= 1.0
    assert len(study.trials) == 1 and completed == set()
    with pytest.raises(RuntimeError, match="OptunaSearch's internals changed"):
        compat.optuna_search_state(object())


def test_mlflow_context_tags_name_the_user_and_source():
    import getpass

    tags = compat.mlflow_context_tags()
    assert tags["mlflow.user"] == getpass.getuser()
    assert tags["mlflow.source.type"] == "LOCAL" and tags["mlflow.source.name"]


def test_set_study_trial_attrs_reaches_a_running_trial(tmp_path):
    import optuna

    study = optuna.create_study(storage=f"sqlite:///{tmp_path / 's.db'}")
    study.ask()
    second = study.ask()
    compat.set_study_trial_attrs(study, 1, {"trial_name": "trial_00001", "mlflow_run_id": "abc"})
    reloaded = optuna.load_study(study_name=study.study_name, storage=f"sqlite:///{tmp_path / 's.db'}")
    assert reloaded.trials[1].user_attrs == {"trial_name": "trial_00001", "mlflow_run_id": "abc"}
    assert reloaded.trials[0].user_attrs == {} and second.number == 1
