"""A small, fast, resumable training loop over an in-memory uint8 dataset.

Why not a DataLoader: the datasets of a trial fit in (GPU) memory as uint8 (200k images of
64x64x3 are 2.4 GB), so the whole set is moved to the device once and each step only does an
``index_select`` plus a uint8 -> float conversion. There are no worker processes, no per-step
host-to-device copies, and the shuffle comes from one dedicated, checkpointed generator, which
is what makes resume bit-identical on CPU.

Per-step logging does not synchronise the device: each step's loss and logged terms are packed
into one small vector and written into a device-side buffer; the buffer is reduced (and checked
for NaN/inf) every ``nan_check_every`` steps and at the end of the epoch, so there is one sync
per window instead of one per logged value per step. On CPU the check runs every step, before
the optimiser update, so a divergence leaves the weights of the last good step in place.
"""

from __future__ import annotations

import contextlib
import math
import random
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch._dynamo  # noqa: F401  (see below)
from torch import nn

from compvae.errors import TrainingDiverged
from compvae.io import atomic_torch_save
from compvae.training.device import resolve_device

LogValue = torch.Tensor | float | int
LossFn = Callable[[dict[str, torch.Tensor], int], tuple[torch.Tensor, Mapping[str, LogValue]]]
EpochCallback = Callable[[int, dict[str, float]], None]

# torch.optim imports torch._dynamo on an optimiser's first use (~2.5 s on CPU): imported with
# this module it is a process start-up cost, paid once per worker, not charged to the first
# trial's masks phase (where the child's optimiser is built) and skewing its breakdown.
CUDA_NAN_CHECK_EVERY = 50  # steps between device syncs for the NaN guard on CUDA
_CPU_WINDOW = 64  # on CPU the window only batches the accumulation; the check is per step


class _Segment:
    """Running float64 sums of the logged terms for one layout (names) of the log vector."""

    __slots__ = ("count", "names", "total")

    def __init__(self, names: tuple[str, ...], device: torch.device) -> None:
        self.names = names
        self.total = torch.zeros(len(names), dtype=torch.float64, device=device)
        self.count = 0


class Trainer:
    """Adam training of ``model`` with ``loss_fn`` on a dict of uint8 tensors held on ``device``.

    Args:
        model: the module being trained (moved to ``device``, put in train mode at the start of
            every epoch, all its parameters optimised; ``loss_fn`` calls it).
        loss_fn: ``loss_fn(batch, step) -> (loss, logs)``; ``batch`` maps the keys of ``data`` to
            float32 tensors in [0, 1] (uint8 entries; other dtypes are passed through as they
            are, e.g. factor indices), ``step`` is the number of optimiser steps done so far.
            ``logs`` values are tensors (any shape; one with D > 1 elements is logged as
            ``name/0`` ... ``name/{D-1}``) or numbers. A ``"loss"`` entry in ``logs`` is ignored:
            the logged ``loss`` is always the one being optimised.
        data: tensors with the same first dimension N, at least ``batch_size``.
        batch_size: images per step; the last partial batch of an epoch is dropped because the
            TC estimators assume full batches.
        lr: Adam learning rate.
        seed: seeds the shuffle generator (global RNGs are the caller's: ``seed_everything``).
        device: ``"auto"``, ``"cpu"``, ``"cuda"`` or a ``torch.device``.
        amp: mixed precision (bf16 where supported, else fp16 with a GradScaler) on CUDA; ignored
            on CPU.
        nan_check_every: steps between NaN/inf checks; default 1 on CPU (checked before the
            update) and ``CUDA_NAN_CHECK_EVERY`` on CUDA (checked after, without a sync per step).
        generators: the caller's own random generators that ``loss_fn`` or its evaluations draw
            from (e.g. the mask jitter); checkpointed with the rest, so a resumed run continues
            their streams instead of restarting them from their seeds.
        param_groups: ``[(submodule, lr), ...]`` covering every parameter of ``model`` once, for
            parts that need their own learning rate (a jointly trained parent); default: one
            group, all of ``model`` at ``lr``.

    Attributes:
        epoch: completed epochs. step: completed optimiser steps. num_examples: N, the training
        set size (the ``dataset_size`` the TC estimator needs). steps_per_epoch: N // batch_size.
    """

    def __init__(self, model: nn.Module, loss_fn: LossFn, data: Mapping[str, torch.Tensor],
                 batch_size: int, lr: float, seed: int, device: str | torch.device = "auto",
                 amp: bool = False, *, nan_check_every: int | None = None,
                 generators: Mapping[str, torch.Generator] | None = None,
                 param_groups: Sequence[tuple[nn.Module, float]] | None = None) -> None:
        self.device = resolve_device(device)
        if not data:
            raise ValueError("data is empty: give at least one tensor, e.g. {'images': ...}")
        sizes = {k: int(v.shape[0]) for k, v in data.items()}
        if len(set(sizes.values())) != 1:
            raise ValueError(f"all data tensors must have the same first dimension, got {sizes}")
        n = next(iter(sizes.values()))
        if batch_size < 1 or n < batch_size:
            raise ValueError(
                f"batch_size ({batch_size}) must be between 1 and the number of examples ({n})")
        self.data: dict[str, torch.Tensor] = {k: v.to(self.device) for k, v in data.items()}
        self.num_examples = n
        self.batch_size = batch_size
        self.steps_per_epoch = n // batch_size
        self.model = model.to(self.device)
        self.loss_fn = loss_fn
        self.lr = lr
        self.seed = seed
        self.optimizer = torch.optim.Adam(_param_groups(self.model, param_groups), lr=lr)
        self.amp = bool(amp) and self.device.type == "cuda"
        self.amp_dtype = (torch.bfloat16 if self.amp and torch.cuda.is_bf16_supported()
                          else torch.float16)
        # bf16 has fp32's exponent range, so only fp16 needs loss scaling
        self.scaler = torch.amp.GradScaler(
            "cuda", enabled=self.amp and self.amp_dtype == torch.float16)
        self.generator = torch.Generator().manual_seed(seed)
        self.generators = dict(generators or {})
        self.epoch = 0
        self.step = 0
        if nan_check_every is None:
            nan_check_every = 1 if self.device.type == "cpu" else CUDA_NAN_CHECK_EVERY
        if nan_check_every < 1:
            raise ValueError(f"nan_check_every must be >= 1, got {nan_check_every}")
        self.nan_check_every = nan_check_every
        self._window = _CPU_WINDOW if nan_check_every == 1 else nan_check_every
        self._names_cache: dict[tuple[Any, ...], tuple[str, ...]] = {}
        self._reset_epoch_logs()

    @property
    def examples_seen(self) -> int:
        """Images consumed by optimiser steps so far (step * batch_size)."""
        return self.step * self.batch_size

    # ---- one step ----------------------------------------------------------------------------
    def _batch(self, idx: torch.Tensor) -> dict[str, torch.Tensor]:
        batch = {}
        for key, value in self.data.items():
            rows = value.index_select(0, idx)
            batch[key] = rows.float().div_(255.0) if rows.dtype == torch.uint8 else rows
        return batch

    def _pack(self, loss: torch.Tensor, logs: Mapping[str, LogValue]
              ) -> tuple[tuple[str, ...], torch.Tensor, list[tuple[str, float]]]:
        """Split this step's values into one flat float32 device vector (the loss first, then
        every logged tensor that lives on the device) and host values (numbers, and CPU tensors
        on a CUDA trainer), which are accumulated on the host: copying them to the GPU every
        step would be a blocking host-to-device transfer."""
        if not isinstance(loss, torch.Tensor) or loss.numel() != 1:
            raise ValueError("loss_fn must return a scalar tensor as its loss")
        parts = [loss.detach().reshape(1)]
        keys: list[str] = []
        host: list[tuple[str, float]] = []
        for k, v in logs.items():
            if k == "loss":
                continue
            if isinstance(v, torch.Tensor) and v.device.type == self.device.type:
                parts.append(v.detach().reshape(-1))
                keys.append(k)
            else:
                vals = v.detach().reshape(-1).tolist() if isinstance(v, torch.Tensor) else [float(v)]
                host += [(k, vals[0])] if len(vals) == 1 else [(f"{k}/{i}", x) for i, x in enumerate(vals)]
        layout = (*keys, *(p.numel() for p in parts[1:]))
        names = self._names_cache.get(layout)
        if names is None:
            expanded = ["loss"]
            for k, p in zip(keys, parts[1:], strict=True):
                expanded += [k] if p.numel() == 1 else [f"{k}/{i}" for i in range(p.numel())]
            names = tuple(expanded)
            self._names_cache[layout] = names
        vec = torch.cat([p.to(dtype=torch.float32) for p in parts])
        return names, vec, host

    def _train_step(self, idx: torch.Tensor) -> None:
        batch = self._batch(idx)
        ctx = (torch.autocast(device_type="cuda", dtype=self.amp_dtype) if self.amp
               else contextlib.nullcontext())
        with ctx:
            loss, logs = self.loss_fn(batch, self.step)
        names, vec, host = self._pack(loss, logs)
        if self.nan_check_every == 1 and not bool(torch.isfinite(vec).all()):
            raise _diverged(self.step, names, vec.cpu())
        for name, value in host:  # host values cost nothing to check: always before the update
            if not math.isfinite(value):
                if self.nan_check_every > 1:  # an earlier step of the window may be the first bad
                    self._record(names, vec, self.step)
                    self._flush()
                raise TrainingDiverged(f"step {self.step}: term {name} is {value}")
        self.optimizer.zero_grad(set_to_none=True)
        self.scaler.scale(loss).backward()
        self.scaler.step(self.optimizer)
        self.scaler.update()
        self.step += 1  # the step is done; a window check below reports the step it ran as
        for name, value in host:
            self._host_sums[name] = self._host_sums.get(name, 0.0) + value
            self._host_counts[name] = self._host_counts.get(name, 0) + 1
        self._record(names, vec, self.step - 1)

    # ---- log accumulation and the NaN guard ---------------------------------------------------
    def _reset_epoch_logs(self) -> None:
        self._segments: list[_Segment] = []
        self._buf: torch.Tensor | None = None
        self._buf_names: tuple[str, ...] = ()
        self._buf_rows = 0
        self._buf_start = self.step
        self._host_sums: dict[str, float] = {}
        self._host_counts: dict[str, int] = {}

    def _record(self, names: tuple[str, ...], vec: torch.Tensor, step: int) -> None:
        """Write step ``step``'s vector into the window buffer; reduce/check when it is full."""
        if self._buf is not None and names != self._buf_names:
            self._flush()
        if self._buf is None:
            self._buf = torch.empty(self._window, len(names), dtype=torch.float32, device=self.device)
            self._buf_names = names
            self._buf_rows = 0
            self._buf_start = step
        self._buf[self._buf_rows] = vec
        self._buf_rows += 1
        if self._buf_rows == self._window:
            self._flush()

    def _flush(self) -> None:
        """Check the window for NaN/inf (one sync) and fold it into the epoch sums."""
        if self._buf is None or self._buf_rows == 0:
            self._buf = None
            return
        rows = self._buf[: self._buf_rows]
        if self.nan_check_every > 1 and not bool(torch.isfinite(rows).all()):
            host = rows.cpu()
            bad = (~torch.isfinite(host)).any(dim=1).nonzero()[0, 0].item()
            raise _diverged(self._buf_start + int(bad), self._buf_names, host[bad])
        if not self._segments or self._segments[-1].names != self._buf_names:
            self._segments.append(_Segment(self._buf_names, self.device))
        seg = self._segments[-1]
        seg.total += rows.sum(dim=0, dtype=torch.float64)
        seg.count += self._buf_rows
        self._buf = None

    def _epoch_means(self) -> dict[str, float]:
        self._flush()
        sums: dict[str, float] = {}
        counts: dict[str, int] = {}
        if self._segments:
            totals = torch.cat([s.total for s in self._segments]).tolist()  # the epoch's one sync
            pos = 0
            for seg in self._segments:
                for name in seg.names:
                    sums[name] = sums.get(name, 0.0) + totals[pos]
                    counts[name] = counts.get(name, 0) + seg.count
                    pos += 1
        for name, total in self._host_sums.items():
            sums[name] = sums.get(name, 0.0) + total
            counts[name] = counts.get(name, 0) + self._host_counts[name]
        return {name: sums[name] / counts[name] for name in sums}

    # ---- epochs --------------------------------------------------------------------------------
    def train_epoch(self) -> dict[str, float]:
        """One pass over a fresh permutation; returns the epoch means of loss and logged terms.

        Raises :class:`TrainingDiverged` naming the first step and term that was NaN or inf.
        """
        self.model.train()
        self._reset_epoch_logs()
        perm = torch.randperm(self.num_examples, generator=self.generator).to(self.device)
        b = self.batch_size
        for i in range(self.steps_per_epoch):
            self._train_step(perm[i * b:(i + 1) * b])
        logs = self._epoch_means()
        self.epoch += 1
        return logs

    def fit(self, epochs: int, on_epoch: EpochCallback | None = None) -> dict[str, float]:
        """Train until ``self.epoch == epochs`` (a total, so a resumed trainer finishes the same
        run), calling ``on_epoch(epoch, logs)`` after each epoch with the 1-based epoch number.
        Returns the last epoch's logs ({} if nothing was left to do)."""
        logs: dict[str, float] = {}
        while self.epoch < epochs:
            logs = self.train_epoch()
            if on_epoch is not None:
                on_epoch(self.epoch, logs)
        return logs

    # ---- checkpointing -------------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        """Everything that determines the rest of the run: weights, Adam and scaler states, the
        torch/CUDA/NumPy/Python RNG states, the shuffle and caller generators, epoch and step."""
        np_state = np.random.get_state()
        rng: dict[str, Any] = {
            "torch": torch.get_rng_state(),
            "numpy": {"bit_generator": np_state[0], "keys": torch.from_numpy(np_state[1].astype(np.int64)),
                      "pos": int(np_state[2]), "has_gauss": int(np_state[3]),
                      "cached_gaussian": float(np_state[4])},
            "python": random.getstate(),
        }
        if torch.cuda.is_available() and self.device.type == "cuda":
            rng["cuda"] = torch.cuda.get_rng_state_all()
        return {
            "model": self.model.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "scaler": self.scaler.state_dict(),
            "rng": rng,
            "shuffle": self.generator.get_state(),
            "generators": {name: g.get_state() for name, g in self.generators.items()},
            "epoch": self.epoch,
            "step": self.step,
            "batch_size": self.batch_size,
            "num_examples": self.num_examples,
        }

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Restore a :meth:`state_dict`; the data size and batch size must match, since the
        shuffle and the TC estimate depend on them."""
        for key, mine in (("num_examples", self.num_examples), ("batch_size", self.batch_size)):
            if state[key] != mine:
                raise ValueError(f"checkpoint has {key}={state[key]} but this trainer has {mine}")
        self.model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        if self.scaler.is_enabled() and state["scaler"]:
            self.scaler.load_state_dict(state["scaler"])
        rng = state["rng"]
        torch.set_rng_state(rng["torch"])
        npr = rng["numpy"]
        np.random.set_state((npr["bit_generator"], npr["keys"].numpy().astype(np.uint32), npr["pos"],
                             npr["has_gauss"], npr["cached_gaussian"]))
        random.setstate(_as_python_rng_state(rng["python"]))
        if "cuda" in rng and torch.cuda.is_available():
            torch.cuda.set_rng_state_all(rng["cuda"])
        self.generator.set_state(state["shuffle"])
        for name, g in self.generators.items():
            if name in state.get("generators", {}):  # checkpoints from before generators were kept lack it
                g.set_state(state["generators"][name])
        self.epoch = int(state["epoch"])
        self.step = int(state["step"])
        self._reset_epoch_logs()

    def save(self, path: str | Path) -> None:
        """Write the state atomically: a crash leaves the old checkpoint or the new one, never half."""
        atomic_torch_save(self.state_dict(), path)

    def load(self, path: str | Path) -> None:
        """Load a checkpoint written by :meth:`save` (tensors-only unpickling, CPU first)."""
        state = torch.load(Path(path), map_location="cpu", weights_only=True)
        self.load_state_dict(state)


def _param_groups(model: nn.Module, groups: Sequence[tuple[nn.Module, float]] | None
                  ) -> list[dict[str, Any]]:
    """Adam's parameter groups; each of ``model``'s parameters must be in exactly one, so none
    is silently left untrained or stepped twice."""
    if groups is None:
        return [{"params": list(model.parameters())}]
    out = [{"params": list(module.parameters()), "lr": float(lr)} for module, lr in groups]
    given = [id(p) for g in out for p in g["params"]]
    if len(given) != len(set(given)) or set(given) != {id(p) for p in model.parameters()}:
        raise ValueError("param_groups must hold every parameter of the model exactly once")
    return out


def _as_python_rng_state(state: Any) -> tuple[Any, ...]:
    """``random.setstate`` needs tuples; a round trip through some serialisers gives lists."""
    version, internal, gauss = state
    return (int(version), tuple(int(x) for x in internal), gauss)


def _diverged(step: int, names: tuple[str, ...], values: torch.Tensor) -> TrainingDiverged:
    """``TrainingDiverged("step S: term T is nan")`` for the first non-finite term of a step."""
    for name, value in zip(names, values.tolist(), strict=True):
        if not math.isfinite(value):
            return TrainingDiverged(f"step {step}: term {name} is {value}")
    return TrainingDiverged(f"step {step}: a logged term is not finite")
