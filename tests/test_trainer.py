"""Trainer contracts: in-memory uint8 data, seeded shuffles, bit-identical resume, NaN guard."""

from __future__ import annotations

import math
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch

from compvae.errors import TrainingDiverged, UserError
from compvae.losses import beta_tcvae_loss
from compvae.models import VAE
from compvae.training import Trainer, resolve_device, seed_everything
from compvae.training import trainer as trainer_module

RES = 32


@pytest.fixture(autouse=True)
def _one_thread() -> Iterator[None]:
    """Tiny models run fastest on one thread; on a busy 2-core machine extra threads spin-wait
    and make each step ~100x slower."""
    old = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(old)


def _squares(n: int, seed: int = 0) -> torch.Tensor:
    """uint8 (n, 1, 32, 32): one bright 8x8 square at a random position per image."""
    g = torch.Generator().manual_seed(seed)
    imgs = torch.zeros(n, 1, RES, RES, dtype=torch.uint8)
    pos = torch.randint(0, RES - 8, (n, 2), generator=g)
    for i, (y, x) in enumerate(pos.tolist()):
        imgs[i, 0, y:y + 8, x:x + 8] = 255
    return imgs


def _vae_trainer(seed: int = 0, n: int = 64, batch: int = 16, lr: float = 1e-3, **kw: object) -> Trainer:
    seed_everything(seed)
    model = VAE(RES, 1, 1, latent_dim=3, width=4, hidden=16)
    data = {"images": _squares(n)}

    def loss_fn(b: dict[str, torch.Tensor], step: int) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        x = b["images"]
        return beta_tcvae_loss(x, model(x), beta=4.0, dataset_size=n)

    return Trainer(model, loss_fn, data, batch_size=batch, lr=lr, seed=seed, device="cpu", **kw)  # type: ignore[arg-type]


def _params(t: Trainer) -> list[torch.Tensor]:
    return [p.detach().clone() for p in t.model.parameters()]


def test_resume_is_bit_identical_to_straight_training(tmp_path: Path) -> None:
    straight = _vae_trainer(seed=0)
    straight_last = straight.fit(3)

    first = _vae_trainer(seed=0)
    first.fit(2)
    ckpt = tmp_path / "ckpt" / "trainer.pt"
    first.save(ckpt)
    torch.manual_seed(999)  # disturb every global RNG before resuming
    seed_everything(999)
    resumed = _vae_trainer(seed=7)  # fresh weights, other shuffle seed: all must come from the file
    resumed.load(ckpt)
    assert (resumed.epoch, resumed.step) == (2, 8)
    last = resumed.fit(3)

    assert (resumed.epoch, resumed.step) == (straight.epoch, straight.step) == (3, 12)
    for a, b in zip(_params(straight), _params(resumed), strict=True):
        assert torch.equal(a, b)
    for sa, sb in zip(straight.optimizer.state.values(), resumed.optimizer.state.values(), strict=True):
        assert torch.equal(sa["exp_avg"], sb["exp_avg"])
    assert last == straight_last  # the logged epoch means too, to the last bit
    assert all(isinstance(v, float) and math.isfinite(v) for v in last.values())


def test_save_is_atomic_when_writing_fails(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    t = _vae_trainer()
    path = tmp_path / "trainer.pt"
    t.save(path)
    before = path.read_bytes()
    t.fit(1)

    def broken_save(obj: object, f: object) -> None:
        f.write(b"half a checkpoint")  # type: ignore[attr-defined]
        raise OSError("disk full")

    monkeypatch.setattr(trainer_module.torch, "save", broken_save)
    with pytest.raises(OSError, match="disk full"):
        t.save(path)
    assert path.read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == ["trainer.pt"]


def test_load_rejects_a_checkpoint_for_other_data(tmp_path: Path) -> None:
    _vae_trainer(n=64).save(tmp_path / "a.pt")
    with pytest.raises(ValueError, match="num_examples=64"):
        _vae_trainer(n=48).load(tmp_path / "a.pt")


def _two_part_trainer(lr_a: float, lr_b: float, groups: bool = True) -> tuple[Trainer, torch.nn.ModuleDict]:
    torch.manual_seed(0)
    model = torch.nn.ModuleDict({"a": torch.nn.Linear(4, 1), "b": torch.nn.Linear(4, 1)})

    def loss_fn(b: dict[str, torch.Tensor], step: int) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        x = b["x"].flatten(1)
        return (model["a"](x) + model["b"](x)).pow(2).mean(), {}

    data = {"x": torch.randint(1, 255, (8, 4), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))}
    pg = [(model["a"], lr_a), (model["b"], lr_b)] if groups else None
    return Trainer(model, loss_fn, data, batch_size=8, lr=lr_b, seed=0, device="cpu", param_groups=pg), model


def test_param_groups_train_each_part_at_its_own_lr(tmp_path: Path) -> None:
    t, model = _two_part_trainer(0.1, 0.001)
    assert [g["lr"] for g in t.optimizer.param_groups] == [0.1, 0.001]
    before = {k: p.detach().clone() for k, p in model.named_parameters()}
    t.fit(1)  # one Adam step: each weight moves by its group's lr (first step is lr * sign(grad))
    for name, p in model.named_parameters():
        step = (p.detach() - before[name]).abs()
        torch.testing.assert_close(step, torch.full_like(step, 0.1 if name.startswith("a.") else 0.001),
                                   rtol=1e-3, atol=1e-6)
    t.save(tmp_path / "t.pt")
    resumed, _ = _two_part_trainer(0.5, 0.5)
    resumed.load(tmp_path / "t.pt")  # the checkpoint's group lrs (and Adam moments) come back
    assert [g["lr"] for g in resumed.optimizer.param_groups] == [0.1, 0.001]
    with pytest.raises(ValueError, match="parameter groups"):  # one group cannot take a two-group state
        _two_part_trainer(0.1, 0.001, groups=False)[0].load(tmp_path / "t.pt")


def test_param_groups_must_cover_the_model_once() -> None:
    model = torch.nn.ModuleDict({"a": torch.nn.Linear(4, 1), "b": torch.nn.Linear(4, 1)})
    data = {"x": torch.zeros(8, 4, dtype=torch.uint8)}
    for groups in ([(model["a"], 0.1)], [(model["a"], 0.1), (model, 0.2)]):
        with pytest.raises(ValueError, match="every parameter of the model exactly once"):
            Trainer(model, lambda b, s: (torch.zeros(()), {}), data, 4, 0.1, 0, "cpu", param_groups=groups)


def _const_trainer(loss_at: dict[int, float], logs_at: dict[int, float] | None = None,
                   **kw: object) -> Trainer:
    """A linear model whose loss_fn returns chosen values at chosen steps."""
    model = torch.nn.Linear(4, 1)

    def loss_fn(b: dict[str, torch.Tensor], step: int) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        loss = model(b["x"].flatten(1)).pow(2).mean() * loss_at.get(step, 1.0)
        extra = torch.tensor((logs_at or {}).get(step, 0.5))
        return loss, {"extra": extra}

    data = {"x": torch.randint(0, 255, (40, 4), dtype=torch.uint8)}
    return Trainer(model, loss_fn, data, batch_size=4, lr=1e-2, seed=0, device="cpu", **kw)  # type: ignore[arg-type]


def test_nan_loss_raises_naming_step_and_term_before_the_update() -> None:
    t = _const_trainer({3: math.nan})
    with pytest.raises(TrainingDiverged, match=r"^step 3: term loss is nan$"):
        t.train_epoch()
    assert t.step == 3
    assert all(torch.isfinite(p).all() for p in t.model.parameters())


def test_nan_logged_term_raises_naming_it() -> None:
    t = _const_trainer({}, {2: math.inf})
    with pytest.raises(TrainingDiverged, match=r"^step 2: term extra is inf$"):
        t.fit(1)


def test_windowed_guard_names_the_first_bad_step() -> None:
    """The sync-free (CUDA-style) path: checked every 4 steps, still reports step 5 exactly."""
    t = _const_trainer({6: math.nan}, {5: -math.inf}, nan_check_every=4)
    with pytest.raises(TrainingDiverged, match=r"^step 5: term extra is -inf$"):
        t.train_epoch()
    assert t.step == 8  # detected at the end of the window, not per step


def test_host_values_are_checked_at_once_but_earlier_device_steps_win() -> None:
    model = torch.nn.Linear(1, 1)

    def make(bad_device_step: int | None) -> Trainer:
        def loss_fn(b: dict[str, torch.Tensor], step: int) -> tuple[torch.Tensor, dict[str, object]]:
            dev = torch.tensor(math.nan if step == bad_device_step else 0.0)
            return model(b["x"]).mean(), {"dev": dev, "gamma": math.nan if step == 2 else 0.1}

        return Trainer(model, loss_fn, {"x": torch.zeros(40, 1, dtype=torch.uint8)}, 4, 1e-3, seed=0,  # type: ignore[arg-type]
                       device="cpu", nan_check_every=8)

    t = make(None)
    with pytest.raises(TrainingDiverged, match=r"^step 2: term gamma is nan$"):
        t.train_epoch()
    assert t.step == 2  # raised before the update, without waiting for the window
    with pytest.raises(TrainingDiverged, match=r"^step 1: term dev is nan$"):
        make(1).train_epoch()


def test_windowed_guard_checks_at_epoch_end() -> None:
    t = _const_trainer({9: math.nan}, nan_check_every=50)  # 10 steps per epoch < window
    with pytest.raises(TrainingDiverged, match=r"^step 9: term loss is nan$"):
        t.train_epoch()


def test_huge_learning_rate_diverges_with_a_clear_error() -> None:
    t = _vae_trainer(lr=1e30)
    with pytest.raises(TrainingDiverged, match=r"^step \d+: term \S+ is (nan|inf|-inf)$"):
        t.fit(5)


def test_loss_decreases_on_a_tiny_dataset() -> None:
    t = _vae_trainer(n=256, batch=32, lr=5e-3)
    seen: list[tuple[int, float]] = []
    t.fit(8, on_epoch=lambda epoch, logs: seen.append((epoch, logs["loss"])))
    assert [e for e, _ in seen] == list(range(1, 9))
    assert seen[-1][1] < 0.7 * seen[0][1]


def test_fit_counts_total_epochs_and_logs_vector_terms() -> None:
    t = _vae_trainer()
    logs = t.fit(1)
    assert {"loss", "recon", "kl", "tc", "mi", "dim_kl"} <= set(logs)
    assert {f"kl_per_latent/{i}" for i in range(3)} <= set(logs)
    assert sum(logs[f"kl_per_latent/{i}"] for i in range(3)) == pytest.approx(logs["kl"], rel=1e-5)
    assert t.fit(1) == {} and t.epoch == 1  # already there: nothing to do
    assert t.num_examples == 64 and t.examples_seen == 64


def test_epoch_logs_are_exact_means() -> None:
    model = torch.nn.Linear(1, 1)
    values = iter(range(100))

    def loss_fn(b: dict[str, torch.Tensor], step: int) -> tuple[torch.Tensor, dict[str, float]]:
        return model(b["x"]).sum() * 0.0, {"v": float(next(values)), "s": step}

    t = Trainer(model, loss_fn, {"x": torch.zeros(70, 1, dtype=torch.uint8)}, batch_size=16, lr=0.1,
                seed=0, device="cpu")
    assert t.train_epoch() == {"loss": 0.0, "v": 1.5, "s": 1.5}  # 4 full batches, last 6 dropped
    assert t.train_epoch()["s"] == 5.5


def test_uint8_data_stays_on_device_and_batches_are_float() -> None:
    imgs = _squares(70)
    labels = torch.arange(70)
    seen: list[torch.Tensor] = []
    model = torch.nn.Linear(1, 1)

    def loss_fn(b: dict[str, torch.Tensor], step: int) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        x = b["images"]
        assert x.dtype == torch.float32 and x.shape == (16, 1, RES, RES)
        assert 0.0 <= x.min() and x.max() <= 1.0
        assert b["labels"].dtype == torch.int64
        torch.testing.assert_close(x, imgs[b["labels"]].float() / 255)  # rows stay paired
        seen.append(b["labels"])
        return model(x.mean().reshape(1, 1)).sum(), {}

    t = Trainer(model, loss_fn, {"images": imgs, "labels": labels}, 16, 1e-3, seed=3, device="cpu")
    ptr = t.data["images"].data_ptr()
    t.fit(2)
    assert t.data["images"].dtype == torch.uint8 and t.data["images"].device.type == "cpu"
    assert t.data["images"].data_ptr() == ptr  # moved once, never copied per step
    assert len(seen) == 8  # 70 // 16 = 4 full batches per epoch
    epoch1 = torch.cat(seen[:4])
    assert epoch1.unique().numel() == 64  # a permutation: no repeats within an epoch
    assert not torch.equal(torch.cat(seen[:4]), torch.cat(seen[4:]))  # reshuffled each epoch


def test_shuffle_depends_only_on_the_trainer_seed() -> None:
    def order(seed: int) -> list[int]:
        got: list[int] = []
        model = torch.nn.Linear(1, 1)

        def loss_fn(b: dict[str, torch.Tensor], step: int) -> tuple[torch.Tensor, dict[str, float]]:
            got.extend(b["i"].tolist())
            return model(torch.ones(1, 1)).sum(), {}

        torch.manual_seed(seed + 100)  # global RNG must not matter
        Trainer(model, loss_fn, {"i": torch.arange(20)}, 5, 1e-3, seed=seed, device="cpu").train_epoch()
        return got

    assert order(1) == order(1)
    assert order(1) != order(2)


def test_bad_data_is_rejected() -> None:
    model = torch.nn.Linear(1, 1)
    with pytest.raises(ValueError, match="same first dimension"):
        Trainer(model, lambda b, s: (torch.zeros(()), {}),
                {"a": torch.zeros(4, dtype=torch.uint8), "b": torch.zeros(5, dtype=torch.uint8)}, 2, 1e-3, 0, "cpu")
    with pytest.raises(ValueError, match="batch_size"):
        Trainer(model, lambda b, s: (torch.zeros(()), {}), {"a": torch.zeros(4, dtype=torch.uint8)}, 8, 1e-3, 0, "cpu")


def test_amp_is_a_no_op_on_cpu() -> None:
    t = _vae_trainer(amp=True)
    assert not t.amp and not t.scaler.is_enabled()
    assert math.isfinite(t.fit(1)["loss"])


def test_resolve_device() -> None:
    assert resolve_device("cpu") == torch.device("cpu")
    assert resolve_device("auto").type == ("cuda" if torch.cuda.is_available() else "cpu")
    with pytest.raises(UserError, match="unknown device 'tpu'"):
        resolve_device("tpu")
    if not torch.cuda.is_available():
        with pytest.raises(UserError, match="'cuda' was requested but CUDA is not available") as err:
            resolve_device("cuda")
        assert "\n" not in str(err.value)


def test_seed_everything_makes_init_reproducible() -> None:
    import random

    import numpy as np

    seed_everything(5)
    a = (random.random(), np.random.rand(), torch.rand(3))
    seed_everything(5)
    b = (random.random(), np.random.rand(), torch.rand(3))
    assert a[0] == b[0] and a[1] == b[1] and torch.equal(a[2], b[2])
