"""Hyperparameter search over compvae trials: Ray Tune + Optuna + ASHA, tracked in MLflow.

Python API (see :mod:`search.api`): ``launch(space, overrides=..., callbacks=...)`` runs a search
and returns its trials, ``resume(name)`` continues one, ``load_trials(name)`` is a DataFrame.

Subpackages, imported one way (``cli -> run -> tracking -> analysis -> space``, all of them ->
``layout``/``trials``): ``space`` (YAML spaces, validated before Ray starts), ``run`` (Ray,
Tuner, trainable, outer stage, lifecycle), ``tracking`` (MLflow client, journal, callbacks),
``analysis`` (summaries, report, comparisons, export). See docs/architecture.md.
"""

from search.api import launch, load_trials, resume

__all__ = ["launch", "load_trials", "resume"]
