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


def _train_refused(args: list[str], tmp_path, capsys, fragments) -> None:
    """`compvae train ARGS --out DIR` fails with one line holding every fragment, exit 2, and
    leaves no --out folder (nothing half-written)."""
    out = tmp_path / "out"
    rc = train_main(["train", *args, "--out", str(out), "--quiet"])
    line = _one_line(capsys.readouterr().err)
    assert rc == 2, line
    for frag in fragments:
        assert frag in line, line
    assert not out.exists()


def _launch_refused(space, tmp_path, capsys, fragments, prefix: str | None = None) -> None:
    """`compvae-search launch SPACE` fails with one line holding every fragment, exit 2, and
    leaves no search folder."""
    rc = search_main(["launch", str(space), "--storage", str(tmp_path / "s")])
    line = _one_line(capsys.readouterr().err)
    assert rc == 2, line
    if prefix is not None:
        assert line.startswith(prefix), line
    for frag in fragments:
        assert frag in line, line
    assert not (tmp_path / "s").exists()


@pytest.mark.parametrize("argv,fragments", [c[1:] for c in TRAIN_CASES], ids=[c[0] for c in TRAIN_CASES])
def test_compvae_train_bad_input(argv, fragments, tmp_path, capsys):
    _train_refused(argv(tmp_path), tmp_path, capsys, fragments)


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
    _launch_refused(space, tmp_path, capsys, fragments, prefix=f"error: {space}: ")


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
    _launch_refused(space, tmp_path, capsys, fragments)


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
    (["ls"], ["/s: no such folder; give the folder the searches were launched in"]),
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


# ---- classes refused before anything starts (each several members, through the real CLIs) -------
def _images_h5(tmp: Path, n: int) -> Path:
    path = tmp / "few.h5"
    with h5py.File(path, "w") as f:
        f["images"] = np.zeros((n, 64, 64), np.uint8)
    return path


TRAIN_CLASS_CASES: list[tuple[str, Callable[[Path], list[str]], list[str]]] = [
    # files that are not UTF-8 text
    ("config with a 0xff byte", lambda t: [str(_trial_yaml_bytes(t, b"child:\n  epochs: 1 \xff\n"))],
     ["trial.yaml: not UTF-8 text (byte 0xff at offset", "save it as UTF-8"]),
    ("config in UTF-16", lambda t: [str(_trial_yaml_bytes(t, "child: {epochs: 1}\n".encode("utf-16")))],
     ["trial.yaml: not UTF-8 text", "save it as UTF-8"]),
    # duplicated keys, at any depth
    ("duplicated section", lambda t: [str(_trial_yaml(t, "child:\n  epochs: 1\nchild:\n  beta: 2.0\n"))],
     ["trial.yaml: broken YAML at line 3", "duplicate key 'child'", "keep one of them"]),
    ("duplicated field", lambda t: [str(_trial_yaml(t, "mask:\n  delta: 1.0\n  delta: 2.0\n"))],
     ["duplicate key 'delta'"]),
    ("duplicated key in --set", lambda t: ["--preset", "tiny", "--set", "mask={delta: 1, delta: 2}"],
     ["--set mask={delta: 1, delta: 2}: broken YAML", "duplicate key 'delta'"]),
    # NaN / infinity say so
    ("NaN in --set", lambda t: ["--preset", "tiny", "--set", "child.beta=nan"], ["child.beta: is NaN", "finite"]),
    ("YAML .nan", lambda t: [str(_trial(t, mask={"delta": float("nan")}))], ["mask.delta: is NaN"]),
    ("infinity", lambda t: ["--preset", "tiny", "--set", "parent.lr=.inf"], ["parent.lr: is infinite"]),
    # configs that can only fail: batch sizes vs the data
    ("parent batch above num_train", lambda t: ["--preset", "tiny", "--set", "parent.batch_size=4096"],
     ["parent.batch_size (4096) must be <= data.num_train (256)", "lower the batch size"]),
    ("child batch above num_train", lambda t: [str(_trial(t, child={"epochs": 1, "batch_size": 512}))],
     ["child.batch_size (512) must be <= data.num_train (256)"]),
    ("batch above the images in the file", lambda t: ["--preset", "tiny", "--set", "data.name=images",
                                                      "--set", f"data.path={_images_h5(t, 10)}"],
     ["parent.batch_size: 32 is more than the 10 training images of", "set parent.batch_size to at most 10"]),
    # a device that is not there
    ("cuda on a CPU machine", lambda t: ["--preset", "tiny", "--set", "train.device=cuda"],
     ["device 'cuda' was requested but CUDA is not available", "set train.device"]),
]


def _trial_yaml_bytes(tmp: Path, raw: bytes) -> Path:
    path = tmp / "trial.yaml"
    path.write_bytes(raw)
    return path


@pytest.mark.parametrize("argv,fragments", [c[1:] for c in TRAIN_CLASS_CASES], ids=[c[0] for c in TRAIN_CLASS_CASES])
def test_compvae_train_refused_classes(argv, fragments, tmp_path, capsys):
    if "cuda" in " ".join(argv(tmp_path)):
        import torch

        if torch.cuda.is_available():
            pytest.skip("this machine has CUDA")
    _train_refused(argv(tmp_path), tmp_path, capsys, fragments)


def _regular_file(tmp: Path) -> Path:
    path = tmp / "a-file"
    path.write_text("not a folder\n")
    return path


# every CLI option that names a folder goes through one check (compvae.paths.check_folder)
PATH_CASES = [
    ("--out is a file", lambda t: ["--out", str(_regular_file(t))], ["--out", "a-file is a file, not a folder"]),
    ("--out under a file", lambda t: ["--out", str(_regular_file(t) / "run")],
     ["--out", "a-file is a file, so no folder can be made under it"]),
    ("--out not writable", lambda t: ["--out", "/proc/compvae-run"], ["--out /proc/compvae-run: cannot write in /proc"]),
    ("--out empty", lambda t: ["--out", ""], ["--out: empty path"]),
    ("--parent-store is a file", lambda t: ["--out", str(t / "out"), "--parent-store", str(_regular_file(t))],
     ["--parent-store", "a-file is a file, not a folder"]),
]


@pytest.mark.parametrize("argv,fragments", [c[1:] for c in PATH_CASES], ids=[c[0] for c in PATH_CASES])
def test_compvae_train_bad_paths(argv, fragments, tmp_path, capsys):
    rc = train_main(["train", "--preset", "tiny", "--quiet", *argv(tmp_path)])
    line = _one_line(capsys.readouterr().err)
    assert rc == 2, line
    for frag in fragments:
        assert frag in line, line
    assert not (tmp_path / "out").exists() and not (tmp_path / "a-file").is_dir()


def test_compvae_train_late_bad_input_leaves_no_out(tmp_path, capsys, monkeypatch):
    """Bad input found during training (here: an image that turns unreadable after the up-front
    check) removes the --out folder the run created."""
    import compvae.pipeline.trial as trial
    from compvae.errors import DataError

    def unreadable(*args, **kwargs):
        raise DataError("img_7.png: unreadable image (OSError: truncated); replace or remove the file")

    monkeypatch.setattr(trial, "load_data", unreadable)
    out = tmp_path / "out"
    rc = train_main(["train", "--preset", "tiny", "--out", str(out), "--quiet"])
    line = _one_line(capsys.readouterr().err)
    assert rc == 2 and "img_7.png: unreadable image" in line
    assert not out.exists()
    # an --out that existed keeps what it held; only what this run made goes
    out.mkdir()
    (out / "notes.txt").write_text("mine")
    assert train_main(["train", "--preset", "tiny", "--out", str(out), "--quiet"]) == 2
    assert sorted(p.name for p in out.iterdir()) == ["notes.txt"]


# argument errors: one line, exit 2, no usage block, in both CLIs
@pytest.mark.parametrize("cli,argv,fragments", [
    ("train", ["frobnicate"], ["invalid choice: 'frobnicate'", "see `compvae --help`"]),
    ("train", ["train", "--preset", "tiny"], ["the following arguments are required: --out"]),
    ("search", ["export", "x", "--out", "o", "--top", "0"], ["--top: must be at least 1, got 0",
                                                             "see `compvae-search export --help`"]),
    ("search", ["bogus"], ["invalid choice: 'bogus'"]),
    ("search", ["launch"], ["the following arguments are required: space"]),
    ("search", ["ui", "x", "--port", "70000"], ["--port: a TCP port is 1-65535, got 70000"]),
    ("search", ["launch", "s.yaml", "--num-samples", "many"], ["--num-samples: expected a whole number"]),
])
def test_argument_errors_are_one_line(cli, argv, fragments, capsys):
    with pytest.raises(SystemExit) as exc:
        (train_main if cli == "train" else search_main)(argv)
    assert exc.value.code == 2
    line = _one_line(capsys.readouterr().err)
    assert "usage:" not in line
    for frag in fragments:
        assert frag in line, line


SPACE_TEXT_CASES = [
    ("space with a 0xff byte", None, b"name: x\xff\n", ["not UTF-8 text (byte 0xff", "save it as UTF-8"]),
    ("two params blocks", "params", None, ["duplicate key 'params'", "keep one of them"]),
    ("two search blocks", "search", None, ["duplicate key 'search'"]),
]


@pytest.mark.parametrize("dup,raw,fragments", [c[1:] for c in SPACE_TEXT_CASES], ids=[c[0] for c in SPACE_TEXT_CASES])
def test_search_launch_refuses_unreadable_space_text(dup, raw, fragments, write_space, tmp_path, capsys):
    space = write_space()
    if raw is not None:
        space.write_bytes(raw)
    else:
        text = space.read_text()
        block = yaml.safe_dump({dup: yaml.safe_load(text)[dup]}, sort_keys=False)
        space.write_text(text + block)  # the same block twice: the first used to be dropped
    _launch_refused(space, tmp_path, capsys, fragments, prefix=f"error: {space}: ")


@pytest.mark.parametrize("overrides,fragments", [
    ({"base": {"parent": {"batch_size": 4096}}}, ["parent.batch_size (4096) must be <= data.num_train (256)"]),
    ({"params": {"child.batch_size": {"choice": [32, 1024]}}},
     ["params.child.batch_size: choice 1024 is invalid", "child.batch_size (1024) must be <= data.num_train"]),
    ({"params": {"child.beta": {"choice": [1.0, float("nan")]}}}, ["params.child.beta", "is NaN"]),
    ({"search": {"resources": {"cpus": float("nan"), "gpus": 0}}}, ["search.resources.cpus: is NaN"]),
])
def test_search_launch_refuses_what_can_only_fail(overrides, fragments, write_space, tmp_path, capsys):
    data = yaml.safe_load(write_space().read_text())
    for key, value in overrides.items():
        data[key] = {**data.get(key, {}), **value}
    space = tmp_path / "bad.yaml"
    space.write_text(yaml.safe_dump(data))
    _launch_refused(space, tmp_path, capsys, fragments)


def test_search_launch_refuses_a_batch_above_the_images_in_the_file(write_space, tmp_path, capsys):
    space = write_space(base={"data": {"name": "images", "path": str(_images_h5(tmp_path, 20))}})
    rc = search_main(["launch", str(space), "--storage", str(tmp_path / "s")])
    line = _one_line(capsys.readouterr().err)
    assert rc == 2 and "parent.batch_size: 32 is more than the 20 training images" in line, line
    assert not (tmp_path / "s").exists()


@pytest.mark.parametrize("args,fragments", [
    (["launch", "SPACE", "--storage", "FILE"], ["--storage", "a-file is a file, not a folder"]),
    (["launch", "SPACE", "--storage", "FILE/sub"], ["--storage", "a-file is a file, so no folder can be made"]),
    (["launch", "SPACE", "--storage", "/proc/searches"], ["--storage /proc/searches: cannot write in /proc"]),
    (["launch", "SPACE", "--storage", "S", "--name", ""], ["--name '': letters, digits"]),
    (["launch", "SPACE", "--storage", "S", "--name", "a/b"], ["--name 'a/b': letters, digits"]),
    (["launch", "SPACE", "--storage", "S", "--mlflow-uri", "sqlite:///FILE/mlflow.db"],
     ["--mlflow-uri sqlite:///", "a-file is a file, not a folder"]),
    (["launch", "SPACE", "--storage", "S", "--mlflow-uri", "sqlite:////proc/x/mlflow.db"],
     ["--mlflow-uri sqlite:////proc/x/mlflow.db: cannot write in /proc"]),
    (["launch", "SPACE", "--storage", "S", "--mlflow-uri", "postgresql://u@127.0.0.1/db"],
     ["--mlflow-uri postgresql://u@127.0.0.1/db: cannot use this database URI", "install its Python driver"]),
    (["launch", "SPACE", "--storage", "S", "--mlflow-uri", "mysql://u@127.0.0.1/db"],
     ["--mlflow-uri mysql://u@127.0.0.1/db: cannot use this database URI"]),
    (["export", "nosuch", "--out", "FILE", "--storage", "S"], ["--out", "a-file is a file, not a folder"]),
])
def test_search_cli_bad_paths(args, fragments, write_space, tmp_path, capsys, monkeypatch):
    """No traceback after Ray started: every path is checked before (Ray is not imported-and-
    started in this process, so a check that came after it would start one)."""
    import ray

    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    space = write_space()
    file = _regular_file(tmp_path)
    sub = {"SPACE": str(space), "S": str(tmp_path / "s")}
    argv = [sub.get(a, a.replace("FILE", str(file))) for a in args]
    rc = search_main(argv)
    line = _one_line(capsys.readouterr().err)
    assert rc == 2, line
    for frag in fragments:
        assert frag in line, line
    assert not (tmp_path / "s").exists() and not ray.is_initialized()


def test_unreachable_ray_address_from_the_environment_names_the_variable(write_space, tmp_path, capsys,
                                                                         monkeypatch):
    monkeypatch.setenv("RAY_ADDRESS", "127.0.0.1:1")
    rc = search_main(["launch", str(write_space()), "--storage", str(tmp_path / "s")])
    line = _one_line(capsys.readouterr().err)
    assert rc == 2
    assert "RAY_ADDRESS 127.0.0.1:1: cannot join a Ray cluster there" in line and "unset RAY_ADDRESS" in line
    assert "--address" not in line
    assert not (tmp_path / "s").exists()


# ---- a search folder written by hand (no Ray): resume, report, ui -------------------------------------
def _fake_search(tmp: Path, write_space, status: str = "interrupted") -> Path:
    from search.layout import SearchLayout, SearchState
    from search.run.checks import space_fingerprint
    from search.space import load_space

    space = load_space(write_space())
    layout = SearchLayout(tmp / "s" / "old")
    layout.root.mkdir(parents=True)
    layout.space_file.write_text(space.to_yaml())
    SearchState(name="old", space_name=space.name, version="0", created="2026-01-01T00:00:00",
                mlflow_uri=layout.default_mlflow_uri, optuna_url=layout.optuna_url, study_name="old",
                status=status, space_fingerprint=space_fingerprint(space),
                space_snapshot=space.to_dict()).save(layout)
    return layout.root


@pytest.mark.parametrize("edit,changed", [
    (lambda d: d["search"].update(num_samples=7), "search.num_samples"),
    (lambda d: d["params"].update({"mask.delta": {"uniform": [0.5, 2.0]}}), "params.mask.delta.uniform"),
    (lambda d: d.setdefault("base", {}).update(child={"beta": 3.0}), "base.child.beta"),
])
def test_resume_refuses_an_edited_space(edit, changed, write_space, tmp_path, capsys):
    root = _fake_search(tmp_path, write_space)
    data = yaml.safe_load((root / "space.yaml").read_text())
    edit(data)
    (root / "space.yaml").write_text(yaml.safe_dump(data))
    rc = search_main(["resume", str(root)])
    line = _one_line(capsys.readouterr().err)
    assert rc == 2
    assert f"{root / 'space.yaml'}: edited since the search was launched ({changed}" in line, line
    assert "undo the edit to resume" in line


@pytest.mark.parametrize("knob,fragments", [
    ("mask.treshold", ["--group-by mask.treshold: not a TrialConfig field", "did you mean mask.threshold?"]),
    ("child.masking_mode", ["--group-by child.masking_mode: no complete trial yet"]),
])
def test_report_checks_group_by_before_writing_anything(knob, fragments, write_space, tmp_path, capsys):
    root = _fake_search(tmp_path, write_space)
    before = sorted(p.name for p in root.iterdir())
    rc = search_main(["report", str(root), "--group-by", knob])
    line = _one_line(capsys.readouterr().err)
    assert rc == 2
    for frag in fragments:
        assert frag in line, line
    assert sorted(p.name for p in root.iterdir()) == before  # no report/, no mlflow.db


def test_ui_refuses_a_port_in_use(write_space, tmp_path, capsys):
    import socket

    root = _fake_search(tmp_path, write_space)
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        rc = search_main(["ui", str(root), "--port", str(port)])
    line = _one_line(capsys.readouterr().err)
    assert rc == 2 and f"--port {port}: cannot listen on 127.0.0.1:{port}" in line, line


def _with_trials(root: Path, *statuses: str) -> None:
    from search.analysis.results import TrialSummary
    from search.layout import SearchLayout
    from search.space import load_space

    layout = SearchLayout(root)
    space = load_space(layout.space_file)
    for i, status in enumerate(statuses, start=1):
        sample = {"child.beta": 2.0, "child.masking_mode": "loss"}
        TrialSummary(trial_id=f"t{i}", name=f"trial_{i - 1:05d}", status=status, epoch=2 if status == "COMPLETED" else 1,
                     final_epoch=2, params=sample, config=space.trial_config(sample).to_dict(),
                     metrics={"child/mig": 0.1 * i}).save(layout)


def test_export_leaves_only_the_new_export(write_space, tmp_path, capsys):
    root = _fake_search(tmp_path, write_space)
    _with_trials(root, "COMPLETED", "COMPLETED")
    out = tmp_path / "exp"
    assert search_main(["export", str(root), "--out", str(out), "--top", "2"]) == 0
    assert search_main(["export", str(root), "--out", str(out), "--top", "1"]) == 0
    names = sorted(p.name for p in out.iterdir())
    assert names == ["best.yaml", "index.csv", "rank01_trial_00001.metrics.json", "rank01_trial_00001.yaml"], names
    (out / "notes.txt").write_text("mine")  # not an export's file: refused, nothing removed
    capsys.readouterr()
    assert search_main(["export", str(root), "--out", str(out)]) == 2
    line = _one_line(capsys.readouterr().err)
    assert "holds files that are not an export (notes.txt)" in line and (out / "best.yaml").is_file()


def test_export_of_a_stopped_search_does_not_call_its_trials_running(write_space, tmp_path, capsys):
    root = _fake_search(tmp_path, write_space)
    _with_trials(root, "RUNNING", "RUNNING")
    rc = search_main(["export", str(root), "--out", str(tmp_path / "exp")])
    line = _one_line(capsys.readouterr().err)
    assert rc == 2 and "2 unfinished (search stopped; resume it)" in line and "running" not in line, line
    assert not (tmp_path / "exp").exists()


@pytest.mark.parametrize("extra,fragments", [
    (["--set", "child.epoks=3"], ["--set: base: child.epoks: unknown field; remove it or check its spelling"]),
    (["--set", "child.beta=2"], ["--set child.beta: this space searches child.beta (params)"]),
    (["--set", "search.num_samples"], ["--set search.num_samples: expected KEY=VALUE"]),
    (["--set", "child.epochs=4", "--dry-run", "--set", "search.max_concurrent=0"],
     ["--set: search.max_concurrent: Input should be greater than or equal to 1"]),
])
def test_launch_set_is_checked_before_anything_starts(extra, fragments, write_space, tmp_path, capsys):
    rc = search_main(["launch", str(write_space()), "--storage", str(tmp_path / "s"), *extra])
    line = _one_line(capsys.readouterr().err)
    assert rc == 2, line
    for frag in fragments:
        assert frag in line, line
    assert not (tmp_path / "s").exists()


def test_stop_and_register_refuse_with_one_line(write_space, tmp_path, capsys):
    root = _fake_search(tmp_path, write_space)
    assert search_main(["stop", str(root)]) == 2
    assert _one_line(capsys.readouterr().err) == ("error: search old is not running (status: interrupted); "
                                                  "nothing to stop")
    out = tmp_path / "export"
    assert search_main(["export", str(root), "--out", str(out), "--register", "a:b"]) == 2
    assert "--register 'a:b': an MLflow model name" in _one_line(capsys.readouterr().err)
    assert search_main(["status", "nosuch", "--storage", str(tmp_path / "s")]) == 2
    assert "no search 'nosuch'" in _one_line(capsys.readouterr().err)
    assert not out.exists()
