"""What MLflow users expect on every run: MLflow's context tags, package versions, the dataset."""

from __future__ import annotations

import functools
import hashlib
import json
import subprocess
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any

from compvae import __version__

GIT_COMMIT_TAG = "mlflow.source.git.commit"
VERSION_PACKAGES = ("torch", "ray", "optuna", "mlflow")
NOTE_TAG = "mlflow.note.content"
EXPERIMENT_KIND_TAG = "mlflow.experimentKind"
EXPERIMENT_KIND = "custom_model_development"  # the experiment's kind, for MLflow's UI and API
# MLflow 3.17's UI picks GenAI or model-training pages by a UI-wide workflow type (the sidebar's
# switch; remembered by the browser), not by the tag: a link carrying it opens on the runs table.
ML_WORKFLOW_QUERY = "workflowType=machine_learning"


def _package_version(name: str) -> str:
    try:
        return version(name)
    except PackageNotFoundError:
        return "not installed"


def _git_commit(where: Path) -> str | None:
    """The checkout's HEAD where the code lives (MLflow only looks beside the main script)."""
    try:
        out = subprocess.run(["git", "-C", str(where), "rev-parse", "HEAD"], capture_output=True, text=True,
                             timeout=10, check=False)
    except (OSError, subprocess.SubprocessError):
        return None
    commit = out.stdout.strip()
    return commit if out.returncode == 0 and len(commit) == 40 else None


@functools.cache
def run_context_tags() -> dict[str, str]:
    """MLflow's context tags (user, source, git commit) and the versions of the stack, per run."""
    from compvae.compat import mlflow_context_tags

    tags = mlflow_context_tags()
    if GIT_COMMIT_TAG not in tags:
        commit = _git_commit(Path(__file__).resolve().parent)
        if commit:
            tags[GIT_COMMIT_TAG] = commit
    tags.update({f"version.{p}": _package_version(p) for p in VERSION_PACKAGES})
    tags["version.compvae-search"] = __version__
    return tags


def dataset_record(data: dict[str, Any], context: str = "training") -> dict[str, str]:
    """A run input for ``mlflow.log_input``-style logging: the dataset's name, a digest of its
    config section (same data, same digest) and the section itself as the source."""
    source = json.dumps(data, sort_keys=True, default=str)
    return {"name": str(data.get("name", "data")), "digest": hashlib.sha256(source.encode()).hexdigest()[:12],
            "source_type": "compvae-config", "source": source, "context": context}


def experiment_url(base: str, experiment_id: str) -> str:
    """The experiment's runs table in the MLflow UI at ``base``, in model-training mode."""
    return f"{base.rstrip('/')}/#/experiments/{experiment_id}/runs?{ML_WORKFLOW_QUERY}"
