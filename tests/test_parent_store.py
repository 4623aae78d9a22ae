"""ParentStore: one trainer per parent across processes, waiters reuse, a crash frees the claim."""

from __future__ import annotations

import multiprocessing as mp
import os
import time
from pathlib import Path

import pytest

from compvae.config import preset
from compvae.errors import TrainingDiverged, TrialFailed
from compvae.parent_store import ParentStore, parent_key


def _claim(root: str, key: str, log_path: str, hold: float, crash: bool | str) -> None:
    """Claim ``key``; ``crash`` True dies holding the lock, "diverge" raises TrainingDiverged."""
    store = ParentStore(root, owner={"trial": f"pid{os.getpid()}"})

    def train_into(d: Path) -> None:
        with open(log_path, "a") as f:
            f.write(f"train {os.getpid()}\n")
        previous = (d / "progress").read_text() if (d / "progress").exists() else ""
        (d / "progress").write_text(previous + "x")
        time.sleep(hold)
        if crash == "diverge":
            raise TrainingDiverged("step 1: term loss is nan")
        if crash:
            os._exit(3)  # die holding the lock, mid-training
        (d / "parent.pt").write_text("weights")

    try:
        path, reused = store.get_or_train(key, train_into)
    except TrialFailed as exc:
        with open(log_path, "a") as f:
            f.write(f"failed {type(exc).__name__} {exc}\n")
        raise SystemExit(1) from None
    with open(log_path, "a") as f:
        f.write(f"{'reused' if reused else 'trained'} {path.name}\n")


def _run(*procs: mp.Process) -> None:
    for p in procs:
        p.start()
        time.sleep(0.2)
    for p in procs:
        p.join(60)


def test_concurrent_claims_train_exactly_once(tmp_path):
    ctx = mp.get_context("spawn")
    log = tmp_path / "log"
    procs = [ctx.Process(target=_claim, args=(str(tmp_path / "store"), "k1", str(log), 1.5, False))
             for _ in range(3)]
    _run(*procs)
    lines = log.read_text().splitlines()
    assert sum(line.startswith("train ") for line in lines) == 1
    assert sorted(line.split()[0] for line in lines if not line.startswith("train ")) == [
        "reused", "reused", "trained"]
    assert (tmp_path / "store" / "k1" / "parent.pt").read_text() == "weights"


def test_crash_while_training_releases_the_claim_and_partial_work_is_kept(tmp_path):
    ctx = mp.get_context("spawn")
    log = tmp_path / "log"
    crasher = ctx.Process(target=_claim, args=(str(tmp_path / "store"), "k2", str(log), 1.0, True))
    waiter = ctx.Process(target=_claim, args=(str(tmp_path / "store"), "k2", str(log), 0.0, False))
    _run(crasher, waiter)
    assert crasher.exitcode == 3 and waiter.exitcode == 0
    lines = log.read_text().splitlines()
    assert sum(line.startswith("train ") for line in lines) == 2  # the waiter took over
    assert lines[-1] == "trained k2"
    # the second claimant saw the first one's partial progress (resume, not restart)
    assert (tmp_path / "store" / "k2" / "progress").read_text() == "xx"
    assert ParentStore(tmp_path / "store").failure("k2") is None  # a death is retried, not recorded


def test_a_claimant_waiting_on_a_parent_that_diverges_fails_at_once_without_training_it(tmp_path):
    """The race a streamed search has: a trial drawn onto a parent still training in its pinned
    trial waits on the lock; when that parent diverges, the waiter must not train it again."""
    ctx = mp.get_context("spawn")
    log = tmp_path / "log"
    trainer = ctx.Process(target=_claim, args=(str(tmp_path / "store"), "k4", str(log), 1.5, "diverge"))
    waiter = ctx.Process(target=_claim, args=(str(tmp_path / "store"), "k4", str(log), 0.0, False))
    _run(trainer, waiter)
    assert trainer.exitcode == 1 and waiter.exitcode == 1
    lines = log.read_text().splitlines()
    assert [line.split()[0] for line in lines] == ["train", "failed", "failed"]  # trained once
    assert lines[1] == "failed TrainingDiverged step 1: term loss is nan"  # the trainer's own error
    record = ParentStore(tmp_path / "store").failure("k4")
    assert record["error"] == "TrainingDiverged" and record["message"] == "step 1: term loss is nan"
    assert lines[2] == (f"failed TrainingDiverged parent k4 failed in {record['trial']}: step 1: term loss is nan "
                        f"(delete {tmp_path / 'store' / 'k4.failed'} to train it again)")
    assert record["trial"] == f"pid{trainer.pid}"
    assert not ParentStore(tmp_path / "store").has("k4")


def test_a_failed_parent_fails_later_claims_until_its_marker_is_deleted(tmp_path):
    store = ParentStore(tmp_path / "store", owner={"trial": "trial_00001"})

    def diverge(d: Path) -> None:
        raise TrainingDiverged("step 3: term kl is inf")

    with pytest.raises(TrainingDiverged, match="^step 3: term kl is inf$"):
        store.get_or_train("k5", diverge)
    with pytest.raises(TrainingDiverged, match="^parent k5 failed in trial_00001: step 3: term kl is inf"):
        ParentStore(tmp_path / "store").get_or_train("k5", _never)
    (tmp_path / "store" / "k5.failed").unlink()  # what the message tells a user to do
    path, reused = store.get_or_train("k5", lambda d: None)
    assert not reused and store.has("k5") and store.failure("k5") is None


def test_a_bug_in_training_is_not_recorded_as_the_parent_failing(tmp_path):
    """Only a TrialFailed (the knobs' fault) is recorded; any other exception is a crash, which
    the search retries, so it must find the parent trainable."""
    store = ParentStore(tmp_path / "store")

    def crash(d: Path) -> None:
        raise RuntimeError("CUDA out of memory")

    with pytest.raises(RuntimeError):
        store.get_or_train("k6", crash)
    assert store.failure("k6") is None
    assert store.get_or_train("k6", lambda d: None) == (store.path("k6"), False)


def test_parent_key_ignores_mask_and_child_knobs_but_not_parent_ones():
    base = preset("quick")
    same = base.with_updates({"mask.threshold": 0.3, "mask.blur_sigma": 2.0, "child.beta": 9.0,
                              "child.masking_mode": "both", "eval.num_train": 100})
    assert parent_key(same) == parent_key(base)
    assert parent_key(base.with_updates({"parent.beta": 7.0})) != parent_key(base)
    assert parent_key(base.with_updates({"train.seed": 1})) != parent_key(base)
    assert parent_key(base.with_updates({"data.num_train": 1024})) != parent_key(base)


def test_the_done_marker_records_who_trained_the_parent_and_for_how_long(tmp_path):
    """What a streamed outer stage reads to record a parent its trial trained."""
    store = ParentStore(tmp_path / "store", owner={"trial": "trial_00003", "node": "n1"})
    assert store.marker("k3") is None
    before = time.time()
    path, reused = store.get_or_train("k3", lambda d: time.sleep(0.3))
    marker = store.marker("k3")
    assert not reused and path == store.path("k3")
    assert set(marker) == {"finished", "seconds", "trial", "node"}
    assert marker["trial"] == "trial_00003" and marker["node"] == "n1"
    assert 0.3 <= marker["seconds"] < 5.0 and before < marker["finished"] <= time.time()
    # another handle finds it finished: it trains nothing and leaves the marker as it was
    assert ParentStore(tmp_path / "store", owner={"trial": "other"}).get_or_train("k3", _never) == (path, True)
    assert store.marker("k3") == marker


def _never(d: Path) -> None:
    raise AssertionError("a stored parent was trained again")
