"""Malformed input through the real CLIs (``compvae train``, ``compvae-search launch/export/
report``): exit code 2, exactly one stderr line naming the field or file and how to fix it, no
traceback, and nothing half-written (no --out folder, no search folder). The README's "Bad
input" table lists the same cases.

Most cases run the CLI's ``main`` in this process (no Ray needed: everything is validated
before Ray starts). The two that need a cluster to be judged run the console script in a
subprocess, so their stderr is exactly what a user sees, Ray's own logging included.
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import h5py
import numpy as np
import pytest
import yaml

from compvae.cli import main as train_main
from search.cli import main as search_main

TINY_TRIAL = {"data": {"name": "shapes", "num_train": 256}, "child": {"epochs": 1}}


def _trial_yaml(tmp: Path, text: str) -> Path:
    path = tmp / "trial.yaml"
    path.write_text(text)
    return path


def _trial(tmp: Path, **sections: dict) -> Path:
    data = {**TINY_TRIAL, **sections}
    return _trial_yaml(tmp, yaml.safe_dump(data))



def _corrupt_npz(tmp: Path) -> Path:
    path = tmp / "dsprites.npz"
    path.write_bytes(b"PK\x03\x04 this is not really a zip archive")
    return path


def _wrong_shape_h5(tmp: Path) -> Path:
    path = tmp / "3dshapes.h5"
    with h5py.File(path, "w") as f:  # 32x32 instead of the official 64x64
        f["images"] = np.zeros((10, 32, 32, 3), np.uint8)
        f["labels"] = np.zeros((10, 6), np.float64)
    return path


def _images_wrong_shape(tmp: Path) -> Path:
    path = tmp / "images.h5"
    with h5py.File(path, "w") as f:  # a flat vector per image
        f["images"] = np.zeros((10, 64), np.uint8)
    return path


# (id, argv builder, fragments that must be in the one line: the field/file, and the fix)
TRAIN_CASES: list[tuple[str, Callable[[Path], list[str]], list[str]]] = [
    ("broken YAML", lambda t: [str(_trial_yaml(t, "child:\n  epochs: [1\n"))],
     ["trial.yaml: broken YAML at line", "fix the syntax"]),
    ("config file missing", lambda t: [str(t / "nope.yaml")], ["nope.yaml: file not found", "existing YAML"]),
    ("unknown field", lambda t: [str(_trial(t, mask={"thresh": 0.1}))],
     ["mask.thresh: unknown field", "check its spelling"]),
    ("wrong type", lambda t: [str(_trial(t, child={"epochs": "many"}))],
     ["child.epochs", "valid integer", "'many'"]),
    ("negative sigma", lambda t: [str(_trial(t, mask={"blur_sigma": -1.0}))],
     ["mask.blur_sigma", "greater than or equal to 0"]),
    ("threshold outside its range", lambda t: [str(_trial(t, mask={"threshold": 1.5}))],
     ["mask.threshold", "less than or equal to 1"]),
    ("unknown masking mode", lambda t: ["--preset", "tiny", "--set", "child.masking_mode=sideways"],
     ["child.masking_mode", "'none', 'input', 'loss' or 'both'"]),
    ("unknown preset", lambda t: ["--preset", "huge"], ["--preset: unknown preset 'huge'", "choose one of"]),
    ("--set without a value", lambda t: ["--preset", "tiny", "--set", "child.beta"],
     ["--set child.beta: expected KEY=VALUE", "--set mask.threshold=0.01"]),
    ("missing dataset file", lambda t: ["--preset", "tiny", "--set", "data.name=dsprites",
                                        "--set", f"data.path={t / 'missing.npz'}"],
     ["missing.npz: file not found", "set data.path"]),
    ("dataset without a path", lambda t: ["--preset", "tiny", "--set", "data.name=shapes3d"],
     ["data.path is required for dataset 'shapes3d'", "give the local file"]),
    ("corrupt npz", lambda t: ["--preset", "tiny", "--set", "data.name=dsprites",
                               "--set", f"data.path={_corrupt_npz(t)}"],
     ["dsprites.npz: not a readable .npz archive", "re-download it"]),
    ("images of the wrong shape (3dshapes)", lambda t: ["--preset", "tiny", "--set", "data.name=shapes3d",
                                                        "--set", f"data.path={_wrong_shape_h5(t)}"],
     ["3dshapes.h5: 'images' has shape (10, 32, 32, 3), expected (N, 64, 64, 3)", "official 3dshapes.h5"]),
    ("images of the wrong shape (images)", lambda t: ["--preset", "tiny", "--set", "data.name=images",
                                                      "--set", f"data.path={_images_wrong_shape(t)}"],
     ["images.h5: 'images' has shape (10, 64), expected (N, H, W)", "expected"]),
    ("child below parent resolution", lambda t: ["--preset", "tiny", "--set", "parent.resolution=64"],
     ["child.resolution (32) must be >= parent.resolution (64)"]),
]


def _one_line(err: str) -> str:
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert len(lines) == 1, err
    assert "Traceback" not in err
    assert lines[0].startswith("error: "), err
    return lines[0]


@pytest.mark.parametrize("argv,fragments", [c[1:] for c in TRAIN_CASES], ids=[c[0] for c in TRAIN_CASES])
def test_compvae_train_bad_input(argv, fragments, tmp_path, capsys):
    out = tmp_path / "out"
    rc = train_main(["train", *argv(tmp_path), "--out", str(out), "--quiet"])
    line = _one_line(capsys.readouterr().err)
    assert rc == 2, line
    for frag in fragments:
        assert frag in line, line
    assert not out.exists()  # nothing half-written


# ---- compvae-search ----------------------------------------------------------------------------------
SEARCH_CASES: list[tuple[str, dict, list[str]]] = [
    ("empty range", {"params": {"child.beta": {"uniform": [2.0, 2.0]}}},
     ["params.child.beta", "lower bound 2.0 must be below upper bound 2.0", "put a fixed value in base"]),
    ("lo > hi", {"params": {"child.beta": {"loguniform": [8.0, 1.0]}}},
     ["params.child.beta", "lower bound 8.0 must be below upper bound 1.0"]),
    ("negative sigma range", {"params": {"mask.blur_sigma": {"uniform": [-1.0, 1.0]}}},
     ["params.mask.blur_sigma: lower bound -1.0 is invalid", "greater than or equal to 0"]),
    ("threshold range outside [0, 1]", {"params": {"mask.threshold": {"uniform": [0.0, 2.0]}}},
     ["params.mask.threshold: upper bound 2.0 is invalid", "less than or equal to 1"]),
    ("unknown masking mode choice", {"params": {"child.masking_mode": {"choice": ["loss", "sideways"]}}},
     ["params.child.masking_mode: choice 'sideways' is invalid", "'none', 'input', 'loss' or 'both'"]),
    ("unknown sampler", {"search": {"sampler": "cmaes"}}, ["search.sampler", "'tpe', 'random', 'gp'"]),
    ("unknown space field", {"searchh": {}}, ["searchh: unknown field", "check its spelling"]),
    ("param that is not a field", {"params": {"mask.treshold": {"uniform": [0.0, 0.1]}}},
     ["params.mask.treshold: not a TrialConfig field", "did you mean mask.threshold?"]),
]


@pytest.mark.parametrize("overrides,fragments", [c[1:] for c in SEARCH_CASES], ids=[c[0] for c in SEARCH_CASES])
def test_search_launch_bad_space(overrides, fragments, write_space, tmp_path, capsys):
    data = yaml.safe_load(write_space().read_text())
    for key, value in overrides.items():
        data[key] = {**data[key], **value} if key == "search" else value
    space = tmp_path / "bad.yaml"
    space.write_text(yaml.safe_dump(data))
    rc = search_main(["launch", str(space), "--storage", str(tmp_path / "s")])
    line = _one_line(capsys.readouterr().err)
    assert rc == 2, line
    assert line.startswith(f"error: {space}: "), line
    for frag in fragments:
        assert frag in line, line
    assert not (tmp_path / "s").exists()


@pytest.mark.parametrize("what", ["broken YAML", "missing dataset file", "corrupt npz", "relative missing file"])
def test_search_launch_bad_files(what, write_space, tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    if what == "broken YAML":
        space = tmp_path / "broken.yaml"
        space.write_text("name: x\nparams: {child.beta: [1, \n")
        fragments = [f"{space}: broken YAML at line", "fix the syntax"]
    elif what == "missing dataset file":
        space = write_space(base={"data": {"name": "dsprites", "path": str(tmp_path / "gone.npz")}})
        fragments = ["gone.npz: file not found", "set data.path"]
    elif what == "corrupt npz":
        space = write_space(base={"data": {"name": "dsprites", "path": str(_corrupt_npz(tmp_path))}})
        fragments = ["dsprites.npz: not a readable .npz archive", "re-download it"]
    else:  # relative to the launch directory, as `compvae train` reads it
        space = write_space(base={"data": {"name": "shapes3d", "path": "data/3dshapes.h5"}})
        fragments = [f"{tmp_path / 'data' / '3dshapes.h5'}: file not found", "download 3dshapes.h5"]
    rc = search_main(["launch", str(space), "--storage", str(tmp_path / "s")])
    line = _one_line(capsys.readouterr().err)
    assert rc == 2, line
    for frag in fragments:
        assert frag in line, line
    assert not (tmp_path / "s").exists()


@pytest.mark.parametrize("args,fragments", [
    (["export", "nosuch", "--out", "OUT"], ["no search 'nosuch'", "give the search's folder"]),
    (["report", "nosuch"], ["no search 'nosuch'", "--storage DIR"]),
    (["resume", "nosuch"], ["no search 'nosuch'", "--storage DIR"]),
    (["launch", "SPACE", "--mlflow-uri", "http://127.0.0.1:9"],
     ["--mlflow-uri http://127.0.0.1:9: no MLflow server answers there", "mlflow server --host 127.0.0.1"]),
    (["launch", "SPACE", "--mlflow-uri", "mlruns"], ["--mlflow-uri mlruns: use sqlite:///ABS/PATH.db"]),
    (["launch", "SPACE", "--address", "127.0.0.1:1"],
     ["--address 127.0.0.1:1: cannot join a Ray cluster there", "ray start --head"]),
    (["launch", "SPACE", "--address", "no-port"], ["--address no-port: expected HOST:PORT"]),
])
def test_search_cli_bad_arguments(args, fragments, write_space, tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    space = write_space()
    argv = [str(space) if a == "SPACE" else str(tmp_path / "out") if a == "OUT" else a for a in args]
    rc = search_main([*argv, "--storage", str(tmp_path / "s")])
    line = _one_line(capsys.readouterr().err)
    assert rc == 2, line
    for frag in fragments:
        assert frag in line, line
    assert not (tmp_path / "s").exists() and not (tmp_path / "out").exists()


def test_gpu_request_on_a_cpu_only_cluster_console_script(write_space, tmp_path):
    """Needs a (local, CPU-only) Ray to judge; run as a user would, so Ray's own logging counts."""
    space = write_space(search={"resources": {"cpus": 1, "gpus": 1}})
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    proc = subprocess.run([sys.executable, "-m", "search.cli", "launch", str(space), "--storage",
                           str(tmp_path / "s")], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=180)
    line = _one_line(proc.stderr)
    assert proc.returncode == 2, proc.stderr
    assert "search.resources.gpus: each trial asks for 1 GPU but no node of the Ray cluster has that" in line
    assert "set search.resources.gpus: 0 for CPU trials" in line
    assert not (tmp_path / "s").exists()
