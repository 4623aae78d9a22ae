"""Hyperparameter search over compvae trials: Ray Tune + Optuna + ASHA, tracked in MLflow.

Subpackages, imported one way (``cli -> run -> tracking -> analysis -> space``, all of them ->
``layout``/``trials``): ``space`` (YAML spaces, validated before Ray starts), ``run`` (Ray,
Tuner, trainable, outer stage, lifecycle), ``tracking`` (MLflow client, journal, callbacks),
``analysis`` (summaries, report, comparisons, export). See docs/architecture.md.
"""
