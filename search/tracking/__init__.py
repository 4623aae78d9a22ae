"""MLflow tracking from the driver: :mod:`.client` (how to write), :mod:`.journal` (writes kept
while the store is away), :mod:`.callback` (when to write) and :mod:`.summary` (the per-trial
summaries, which need no MLflow). Nothing is imported here, so the summary keeper loads no MLflow."""
