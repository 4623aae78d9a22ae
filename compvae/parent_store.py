"""A store of trained parents shared by the trials of a search.

Most searched knobs (mask threshold, blur, delta, masking mode, child beta) leave the parent
unchanged, so each distinct parent is trained once and reused. A parent's identity is a
content hash of everything that determines its weights: the parent and data sections, the
seed, AMP, and the source of the code that trains it.

Concurrency: one lock file per parent, held with a POSIX ``lockf`` lock while it trains. A
second trial needing the same parent blocks on the lock and then finds it finished. The OS
drops the lock when its holder dies, so a crashed trainer never wedges the search; its
partial work (``<key>.partial/parent_trainer.pt``) lets the next claimant resume rather than
restart. POSIX locks also work on NFS-style shared storage that a Ray cluster would use.

A parent whose training raises :class:`~compvae.errors.TrialFailed` (it diverged: a property of
its knobs, so training it again fails the same way) leaves ``<key>.failed``. A trial that was
waiting on the lock, or that starts later, then fails at once with the recorded error instead of
spending its slot on the same divergence. A worker that dies leaves no marker: it is retried.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import shutil
import time
from collections.abc import Callable
from pathlib import Path

from compvae import __version__, errors
from compvae.config import TrialConfig
from compvae.io import atomic_write_json

_PACKAGE = Path(__file__).resolve().parent
# Source that determines a trained parent's weights (not metrics, masks or the child).
_MODEL_SOURCES = ("models", "losses", "training", "data", "trial.py", "config.py")


def _code_fingerprint() -> str:
    h = hashlib.sha256(__version__.encode())
    for name in _MODEL_SOURCES:
        p = _PACKAGE / name
        files = sorted(p.rglob("*.py")) if p.is_dir() else [p]
        for f in files:
            h.update(f.relative_to(_PACKAGE).as_posix().encode())
            h.update(f.read_bytes())
    return h.hexdigest()


# The TrialConfig sections and train fields that determine a trained parent's weights: the one
# list behind both the store key and a search space's check of which knobs change the parent.
_IDENTITY_SECTIONS = ("parent", "data")
_IDENTITY_TRAIN_FIELDS = ("seed", "amp")


def changes_parent(dotted: str) -> bool:
    """Whether a dotted TrialConfig field (``parent.beta``, ``mask.delta``) is part of a parent's
    identity, so that two values of it need two trained parents."""
    section, _, field = dotted.partition(".")
    return section in _IDENTITY_SECTIONS or (section == "train" and field in _IDENTITY_TRAIN_FIELDS)


def parent_identity(cfg: TrialConfig) -> dict:
    """Everything that determines the trained parent's weights."""
    identity: dict = {s: getattr(cfg, s).model_dump(mode="json") for s in _IDENTITY_SECTIONS}
    identity.update({f: getattr(cfg.train, f) for f in _IDENTITY_TRAIN_FIELDS})
    identity["code"] = _code_fingerprint()
    return identity


def parent_key(cfg: TrialConfig) -> str:
    blob = json.dumps(parent_identity(cfg), sort_keys=True).encode()
    return hashlib.sha256(blob).hexdigest()[:16]


def stored_metrics_path(cfg: TrialConfig, parent_dir: Path) -> Path:
    """Where a stored parent's metrics are cached: they depend on the eval settings too, so
    one file per eval section."""
    eval_key = hashlib.sha256(cfg.eval.model_dump_json().encode()).hexdigest()[:12]
    return parent_dir / f"metrics-{eval_key}.json"


def _read_record(path: Path) -> dict | None:
    """A store record (a JSON file), or None when it is not there."""
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        return None


class ParentStore:
    """Directory of finished parents: ``<root>/<key>/parent.pt`` plus a ``DONE`` marker.

    ``owner`` (e.g. the trial and Ray node training through this handle) is written into the
    marker of each parent it trains, with when it finished and its training seconds, so a
    search's driver can say who trained what without asking the process that did.
    """

    def __init__(self, root: str | Path, owner: dict | None = None) -> None:
        self.root = Path(root).expanduser().resolve()
        self.root.mkdir(parents=True, exist_ok=True)
        self.owner = dict(owner or {})

    def path(self, key: str) -> Path:
        return self.root / key

    def has(self, key: str) -> bool:
        return (self.path(key) / "DONE").exists()

    def marker(self, key: str) -> dict | None:
        """A finished parent's ``DONE`` record (``finished``, ``seconds`` and the owner's fields;
        only ``finished`` for a parent stored before they were recorded), or None."""
        return _read_record(self.path(key) / "DONE")

    def failure(self, key: str) -> dict | None:
        """The record a parent's failed training left (``error``, ``message``, ``finished`` and the
        owner's fields), or None."""
        return _read_record(self._failed_path(key))

    def _failed_path(self, key: str) -> Path:
        return self.root / f"{key}.failed"

    def _raise_if_failed(self, key: str) -> None:
        record = self.failure(key)
        if record is None:
            return
        cls = getattr(errors, str(record.get("error")), None)
        if not (isinstance(cls, type) and issubclass(cls, errors.TrialFailed)):
            cls = errors.TrialFailed
        who = f" in {record['trial']}" if record.get("trial") else ""
        raise cls(f"parent {key} failed{who}: {record.get('message', '')} "
                  f"(delete {self._failed_path(key)} to train it again)")

    def get_or_train(
        self, key: str, train_into: Callable[[Path], None], log: Callable[[str], None] = lambda s: None
    ) -> tuple[Path, bool]:
        """Return (directory of the finished parent, reused?). Trains it via
        ``train_into(partial_dir)`` if nobody has; waits if another process is training it.
        Raises the recorded :class:`~compvae.errors.TrialFailed` if its training failed before."""
        final = self.path(key)
        if self.has(key):
            log(f"parent {key} reused from {self.root}")
            return final, True
        self._raise_if_failed(key)
        lock_path = self.root / f"{key}.lock"
        with open(lock_path, "a+") as lock:
            t0 = time.perf_counter()
            try:
                fcntl.lockf(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError:
                log(f"parent {key} is being trained by another trial; waiting")
                fcntl.lockf(lock, fcntl.LOCK_EX)
                log(f"parent {key} ready after {time.perf_counter() - t0:.0f}s wait")
            try:
                if self.has(key):
                    return final, True
                self._raise_if_failed(key)  # it failed in the trial this one waited on
                partial = self.root / f"{key}.partial"
                partial.mkdir(exist_ok=True)
                log(f"parent {key} training (store {self.root})")
                started = time.perf_counter()
                try:
                    train_into(partial)
                except errors.TrialFailed as exc:  # deterministic: the next claimant would fail too
                    atomic_write_json(self._failed_path(key), {
                        "error": type(exc).__name__, "message": errors.first_line(exc),
                        "finished": time.time(), **self.owner})
                    raise
                (partial / "DONE").write_text(json.dumps({
                    "finished": time.time(), "seconds": time.perf_counter() - started, **self.owner}))
                if final.exists():  # a stale, unfinished directory from an older layout
                    shutil.rmtree(final)
                os.replace(partial, final)
                return final, False
            finally:
                fcntl.lockf(lock, fcntl.LOCK_UN)
