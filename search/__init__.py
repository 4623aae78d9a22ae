"""Hyperparameter search over compvae trials: Ray Tune + Optuna + ASHA, tracked in MLflow.

Modules, one job each: ``space`` (YAML spaces, validated before Ray starts), ``samplers``
(Optuna distributions and seeded samplers), ``trainable`` (the one Tune function trainable
around :func:`compvae.trial.run_trial`), ``tracking`` (the driver-side, single-writer MLflow
callback), ``layout`` (where a search keeps its state), ``driver`` (launch/resume), ``results``
(trial summaries, best trials, Pareto front), ``export``, ``report`` and ``cli``.
"""
