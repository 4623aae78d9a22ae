"""Shared test fixtures (kept small and generic)."""

from __future__ import annotations

import socket
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture(scope="session")
def free_port() -> Callable[[], int]:
    """``free_port()`` -> a TCP port free right now on 127.0.0.1 (ray start, mlflow server, UI)."""
    return _free_port


# A search space whose trials take seconds: the `tiny` preset (256 images, 32 px, 1 parent
# epoch, 2 child epochs, MIG on 200 points, no figures), two cheap knobs.
TINY_SPACE: dict[str, Any] = {
    "name": "tiny",
    "preset": "tiny",
    "params": {
        "child.beta": {"loguniform": [1.0, 8.0]},
        "child.masking_mode": {"choice": ["loss", "both"]},
    },
    "objective": {"metric": "child/mig", "mode": "max"},
    "search": {"sampler": "tpe", "seed": 0, "num_samples": 3, "max_concurrent": 2, "max_failures": 1,
               "scheduler": {"type": "asha", "grace_period": 1, "reduction_factor": 2},
               "resources": {"cpus": 1, "gpus": 0}},
}


@pytest.fixture(scope="session")
def tiny_space() -> dict[str, Any]:
    """A fresh copy of the tiny space as a dict."""
    return yaml.safe_load(yaml.safe_dump(TINY_SPACE))


@pytest.fixture
def write_space(tmp_path: Path) -> Callable[..., Path]:
    """``write_space(**top_level_overrides, search={...})`` -> path of a tiny space YAML."""

    def write(name: str = "space.yaml", search: dict[str, Any] | None = None, **overrides: Any) -> Path:
        data = {**yaml.safe_load(yaml.safe_dump(TINY_SPACE)), **overrides}
        if search:
            data["search"] = {**data["search"], **search}
        path = tmp_path / name
        path.write_text(yaml.safe_dump(data, sort_keys=False))
        return path

    return write


@pytest.fixture
def one_thread() -> Iterator[None]:
    """Tiny tensors run fastest on one thread; on a busy 2-core machine extra threads spin-wait."""
    import torch

    old = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(old)
