"""A trial's child in MLflow's PyTorch model format, and the model registry entry of the best one."""

from __future__ import annotations

import logging
import shutil
from pathlib import Path
from typing import Any

from compvae import __version__

CHILD_MODEL = "child_model"  # the folder in the trial's outputs and the artifact path in its run


def load_child(trial_dir: Path) -> Any:
    """The trial's child VAE with its trained weights, rebuilt from its ``config.yaml``."""
    import torch

    from compvae.config import TrialConfig
    from compvae.models.vae import build_vae

    cfg = TrialConfig.from_yaml(trial_dir / "config.yaml")
    state = torch.load(trial_dir / "child.pt", map_location="cpu")
    first_conv = next(v for v in state.values() if getattr(v, "ndim", 0) == 4)  # (out, in, k, k)
    channels = int(first_conv.shape[1])
    cond = cfg.parent.latent_dim if cfg.child.parent_code == "decoder" else 0
    model = build_vae(cfg.child, channels, channels, cond_dim=cond)
    model.load_state_dict(state)
    return model.eval()


def save_child_model(trial_dir: Path) -> Path:
    """``<trial>/child_model``: the child saved by ``mlflow.pytorch.save_model`` (loads with
    ``mlflow.pytorch.load_model``), next to the state dicts; returns the folder."""
    import mlflow.pytorch
    import torch

    dest = trial_dir / CHILD_MODEL
    shutil.rmtree(dest, ignore_errors=True)
    # pickle, not MLflow's default pt2 (a traced graph: needs an input example and drops the
    # VAE's encode/decode); explicit requirements: inferring them imports and probes the model
    quiet = logging.getLogger("mlflow.pytorch")
    level = quiet.level
    quiet.setLevel(logging.ERROR)  # "pickle can run code on load": it is our own model class
    try:
        mlflow.pytorch.save_model(load_child(trial_dir), str(dest), serialization_format="pickle",
                                  pip_requirements=[f"torch=={torch.__version__.split('+')[0]}",
                                                    f"compvae-search=={__version__}"])
    finally:
        quiet.setLevel(level)
    return dest


def register_child(client: Any, run_id: str, name: str) -> Any:
    """A new version of registered model ``name`` from the run's logged child model."""
    from mlflow.exceptions import MlflowException

    try:
        client.get_registered_model(name)
    except MlflowException:
        client.create_registered_model(name, description="compvae-search: a search's best child VAE")
    source = f"{client.get_run(run_id).info.artifact_uri}/{CHILD_MODEL}"
    return client.create_model_version(name, source, run_id=run_id)
