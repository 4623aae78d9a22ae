"""run_trial end to end on tiny budgets: every masking mode, both parent modes, hard/soft
masks, both nuisance modes, the empty-mask path, resume and exact reproducibility."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import torch

from compvae.child import child_target_and_weight, conditioning_gamma, conditioning_kl
from compvae.cli import main as cli_main
from compvae.config import ChildConfig, TrialConfig, preset
from compvae.masks import EmptyMaskError
from compvae.training import Trainer
from compvae.trial import read_result, run_trial, split_timings


def tiny(**updates):
    return preset("tiny").with_updates(updates)


@pytest.mark.parametrize("mode", ["none", "input", "loss", "both"])
def test_every_masking_mode_trains_reports_and_evaluates(mode, tmp_path):
    reports: list[tuple[int, dict]] = []
    cfg = tiny(**{"child.masking_mode": mode, "eval.figures": True, "eval.num_figure_images": 3})
    metrics = run_trial(cfg, report=lambda m, e: reports.append((e, m)), out_dir=tmp_path)
    assert [e for e, _ in reports] == [1, 2]
    assert reports[-1][1]["epoch"] == 2.0
    for key in ("parent/recon_error", "parent/mig", "mask/coverage", "mask/iou", "child/recon_error",
                "child/masked_recon_error", "child/mig", "child/mig_fine", "parent/reused"):
        assert key in metrics, key
    assert 0.0 < metrics["mask/coverage"] <= 1.0
    assert 0.0 <= metrics["mask/iou"] <= 1.0
    assert metrics["parent/reused"] == 0.0
    weights = torch.load(tmp_path / "child.pt")
    first_conv = next(v for k, v in weights.items() if v.ndim == 4)
    assert first_conv.shape[1] == (2 if mode in ("input", "both") else 1)
    saved = json.loads((tmp_path / "metrics.json").read_text())
    assert saved["child/recon_error"] == pytest.approx(metrics["child/recon_error"])
    assert "trial_seconds" not in saved  # timings live in timings.json
    # what a restart that finds the outputs sends (search/run/trainable.py): the same result
    assert read_result(tmp_path) == metrics and "child/epoch_seconds" in metrics
    assert {p.name for p in (tmp_path / "figures").glob("*.png")} >= {
        "mask_pipeline.png", "parent_traversal.png", "child_traversal.png", "child_reconstructions.png"}



def test_timings_break_the_trial_into_phases_that_add_up(tmp_path):
    """timings.json: every phase, their sum against the trial's own clock, the training share;
    and per-epoch seconds reported with each epoch but kept out of metrics.json."""
    from compvae.pipeline.timing import PHASES

    reports: list[dict] = []
    cfg = tiny(**{"eval.figures": True, "eval.num_figure_images": 2})
    run_trial(cfg, report=lambda m, e: reports.append(m), out_dir=tmp_path, checkpoint_dir=tmp_path / "state")
    timings = json.loads((tmp_path / "timings.json").read_text())
    phases = {p: timings[f"breakdown/{p}_seconds"] for p in PHASES}
    assert all(v >= 0.0 for v in phases.values())
    for p in ("data", "parent", "masks", "child_train", "epoch_eval", "checkpoint", "report", "final_eval",
              "figures", "outputs"):
        assert phases[p] > 0.0, p
    total = timings["breakdown/total_seconds"]
    assert total == pytest.approx(sum(phases.values()))
    # the phases cover the trial: the trial's own clock (stopped before the outputs) fits inside
    assert timings["trial_seconds"] <= total <= timings["trial_seconds"] + phases["figures"] + phases["outputs"] + 0.5
    epochs = phases["child_train"] + phases["epoch_eval"] + phases["checkpoint"] + phases["report"]
    assert timings["breakdown/child_epochs_seconds"] == pytest.approx(epochs)
    assert timings["breakdown/non_training_share"] == pytest.approx(1 - epochs / total)
    cpu = {p: timings[f"breakdown/{p}_cpu_seconds"] for p in PHASES}
    assert cpu["child_train"] > 0.0 and timings["breakdown/total_cpu_seconds"] == pytest.approx(sum(cpu.values()))
    assert 0.0 < timings["breakdown/cpu_non_training_share"] < 1.0
    assert all(r["child/epoch_seconds"] > 0 for r in reports)
    saved = json.loads((tmp_path / "metrics.json").read_text())
    assert not [k for k in saved if "seconds" in k or k.startswith("resources/")]


def test_a_trial_stopped_after_an_epoch_leaves_its_breakdown(tmp_path):
    class Stop(Exception):
        pass

    def stop(metrics, epoch):
        raise Stop  # as a scheduler ending the trial at this epoch's report

    with pytest.raises(Stop):
        run_trial(tiny(), report=stop, out_dir=tmp_path)
    timings = json.loads((tmp_path / "timings.json").read_text())
    assert timings["breakdown/child_train_seconds"] > 0 and timings["breakdown/epoch_eval_seconds"] > 0
    assert timings["breakdown/final_eval_seconds"] == 0.0 and timings["child/epoch_seconds"] > 0
    assert not (tmp_path / "metrics.json").exists()

def test_loss_weight_follows_mode():
    x = torch.rand(2, 1, 4, 4)
    m = torch.zeros(2, 1, 4, 4)
    m[:, :, :2] = 1.0
    for mode, channels, weighted in [("none", 1, False), ("input", 2, False), ("loss", 1, True), ("both", 2, True)]:
        target, weight = child_target_and_weight(x, m, ChildConfig(masking_mode=mode, outside_weight=0.25))
        assert target.shape[1] == channels
        assert (weight is not None) == weighted
        if weighted:
            assert weight[:, 0, :2].eq(1.0).all() and weight[:, 0, 2:].eq(0.25).all()
            if mode == "both":
                assert weight[:, 1].eq(1.0).all()  # the mask channel itself is reconstructed unweighted


def test_soft_and_randomized_masks_differ_from_hard_fixed():
    hard = run_trial(tiny(**{"mask.threshold": 0.001}))
    soft = run_trial(tiny(**{"mask.threshold": 0.001, "mask.kind": "soft"}))
    rand = run_trial(tiny(**{"mask.threshold": 0.001, "mask.nuisance": "randomized", "mask.nuisance_draws": 3,
                            "mask.delta_std": 0.5}))
    for m in (hard, soft, rand):
        assert 0.0 < m["mask/coverage"] <= 1.0
    # a soft mask is the hard one scaled into [0, 1]: never more coverage
    assert soft["mask/coverage"] < hard["mask/coverage"]
    assert rand["mask/coverage"] != hard["mask/coverage"]


def test_empty_mask_is_detected_not_trained_on():
    with pytest.raises(EmptyMaskError, match="latent 0"):
        run_trial(tiny(**{"mask.threshold": 1.0, "mask.min_coverage": 0.01}))


def test_cli_reports_an_empty_mask_in_one_line(tmp_path, capsys):
    code = cli_main(["train", "--preset", "tiny", "--quiet", "--set", "mask.threshold=1.0",
                     "--set", "mask.min_coverage=0.01", "--out", str(tmp_path / "o")])
    assert code == 1
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "latent 0" in err and "mask.threshold" in err


def test_joint_parent_keeps_training_and_frozen_does_not(tmp_path):
    frozen_dir, joint_dir = tmp_path / "frozen", tmp_path / "joint"
    run_trial(tiny(), checkpoint_dir=frozen_dir / "ck", out_dir=frozen_dir)
    run_trial(tiny(**{"parent.mode": "joint"}), checkpoint_dir=joint_dir / "ck", out_dir=joint_dir)
    # both pretrain the same parent; only the joint one changes it while the child trains
    pre_f = torch.load(frozen_dir / "ck" / "parent.pt")
    pre_j = torch.load(joint_dir / "ck" / "parent.pt")
    end_f = torch.load(frozen_dir / "parent.pt")
    end_j = torch.load(joint_dir / "parent.pt")
    assert all(torch.equal(pre_f[k], pre_j[k]) for k in pre_f)
    assert all(torch.equal(pre_f[k], end_f[k]) for k in pre_f)
    assert any(not torch.equal(pre_j[k], end_j[k]) for k in pre_j)


def test_joint_mask_coverage_is_checked_every_epoch(monkeypatch):
    # the joint parent stops using latent 0 during epoch 2 (its decoder's weights on it are
    # zeroed): epoch 1 reports, then epoch 2's check on the held-out masks stops the trial
    real_epoch = Trainer.train_epoch

    def epoch_then_forget(self):
        logs = real_epoch(self)
        if self.epoch == 2:
            with torch.no_grad():
                self.model["parent"].decoder_dense[0].weight[:, 0] = 0.0
        return logs

    monkeypatch.setattr(Trainer, "train_epoch", epoch_then_forget)
    reports: list[int] = []
    with pytest.raises(EmptyMaskError, match=r"after joint epoch 2: mask for latent 0 covers 0% .*empty mask"):
        run_trial(tiny(**{"parent.mode": "joint", "child.epochs": 3}), report=lambda m, e: reports.append(e))
    assert reports == [1]


def test_joint_parent_keeps_its_own_learning_rate(tmp_path):
    cfg = tiny(**{"parent.mode": "joint", "parent.lr": 2e-3, "child.lr": 5e-4, "child.epochs": 1})
    run_trial(cfg, checkpoint_dir=tmp_path)
    groups = torch.load(tmp_path / "child_trainer.pt", weights_only=True)["optimizer"]["param_groups"]
    assert [g["lr"] for g in groups] == [2e-3, 5e-4]  # parent group, then child group
    assert len(groups[0]["params"]) == len(torch.load(tmp_path / "parent.pt"))  # a VAE has no buffers
    frozen = tiny(**{"child.lr": 5e-4, "child.epochs": 1})
    run_trial(frozen, checkpoint_dir=tmp_path / "frozen")
    groups = torch.load(tmp_path / "frozen" / "child_trainer.pt", weights_only=True)["optimizer"]["param_groups"]
    assert [g["lr"] for g in groups] == [5e-4]


def test_conditioning_schedule_and_kl():
    # the defaults reproduce the original's step schedule (start 10k, ramp 30k) on a 40k-step run
    assert conditioning_gamma(0, 40000) == 0.0
    assert conditioning_gamma(10000, 40000) == 0.0
    assert conditioning_gamma(25000, 40000) == pytest.approx(0.5)
    assert conditioning_gamma(10**6, 40000) == 0.75
    mu = torch.zeros(3, 2)
    lv = torch.zeros(3, 2)
    assert conditioning_kl(mu, lv, torch.zeros(3, 4), torch.zeros(3, 4), latent=1).item() == pytest.approx(0.0)
    # KL(N(1,1) || N(0,1)) = 0.5
    assert conditioning_kl(mu + 1, lv, torch.zeros(3, 4), torch.zeros(3, 4), latent=0).item() == pytest.approx(0.5)
    run_trial(tiny(**{"parent.mode": "joint", "child.conditioning": True}))


def test_conditioning_gamma_is_a_fraction_of_the_run():
    # start 0.25, ramp 0.5, cap 0.6: zero until a quarter, then linear, capped
    g = [conditioning_gamma(s, 16, 0.25, 0.5, 0.6) for s in (0, 4, 6, 8, 10, 15)]
    assert g == pytest.approx([0.0, 0.0, 0.25, 0.5, 0.6, 0.6])
    assert conditioning_gamma(0, 100, start=0.0, ramp=1.0, cap=1.0) == 0.0
    assert conditioning_gamma(50, 100, start=0.0, ramp=1.0, cap=1.0) == pytest.approx(0.5)


def test_conditioning_switches_on_at_a_cpu_budget(monkeypatch):
    # tiny: 256 images / batch 32 = 8 steps x 2 epochs; the old 10k-step start never fired here
    import compvae.pipeline.objectives as trial_module

    calls: list[tuple[int, int, float]] = []

    def spy(step, total_steps, *args):
        g = conditioning_gamma(step, total_steps, *args)
        calls.append((step, total_steps, g))
        return g

    monkeypatch.setattr(trial_module, "conditioning_gamma", spy)
    metrics = run_trial(tiny(**{"parent.mode": "joint", "child.conditioning": True}))
    assert [c[0] for c in calls] == list(range(16)) and {c[1] for c in calls} == {16}
    assert calls[0][2] == 0.0 and calls[-1][2] == 0.75  # off at first, at its cap by the end
    assert metrics["child/train_conditioning_kl"] > 0.0  # the KL term was in the loss


@pytest.mark.parametrize("delta_std", [0.5, 0.0])
def test_frozen_mask_jitter_is_redrawn_every_epoch(monkeypatch, delta_std):
    real_epoch = Trainer.train_epoch
    used: list[torch.Tensor] = []
    storage: list[int] = []

    def record(self):
        if "mask" in self.data:  # the child's trainer (not the parent's): the masks this epoch trains on
            used.append(self.data["mask"].clone())
            storage.append(self.data["mask"].data_ptr())
        return real_epoch(self)

    monkeypatch.setattr(Trainer, "train_epoch", record)
    run_trial(tiny(**{"mask.delta_std": delta_std, "mask.threshold": 0.001, "child.epochs": 3}))
    assert len(used) == 3
    per_image = [(a != b).flatten(1).any(1) for a, b in zip(used, used[1:], strict=False)]
    if delta_std > 0:  # every chunk of 32 images gets a new d each epoch: (nearly) every mask changes
        assert all(float(changed.float().mean()) > 0.9 for changed in per_image)
    else:  # no jitter: the masks are the ones computed once, untouched
        assert all(not changed.any() for changed in per_image)
        assert len(set(storage)) == 1  # not even recomputed


@pytest.mark.parametrize("updates", [
    {},
    # the masks' own random draws (delta jitter every joint step, randomized nuisance in every
    # evaluation) continue where they stopped, not from their seed
    {"parent.mode": "joint", "mask.delta_std": 0.5, "mask.nuisance": "randomized", "mask.threshold": 0.001},
    # frozen masks redrawn every epoch from the checkpointed mask generator
    {"mask.delta_std": 0.5, "mask.nuisance": "randomized", "mask.threshold": 0.001},
], ids=["frozen", "joint-random-masks", "frozen-redrawn-masks"])
def test_interrupted_trial_resumes_to_identical_metrics(tmp_path, updates):
    cfg = tiny(**{"child.epochs": 3, **updates})
    straight_reports: dict[int, dict] = {}
    straight = run_trial(cfg, report=lambda m, e: straight_reports.setdefault(e, split_timings(m)[0]))

    class Stop(Exception):
        pass

    def stop_after_first(metrics, epoch):
        if epoch == 1:
            raise Stop

    with pytest.raises(Stop):
        run_trial(cfg, report=stop_after_first, checkpoint_dir=tmp_path)
    assert (tmp_path / "child_trainer.pt").exists() and (tmp_path / "parent.pt").exists()
    reports: dict[int, dict] = {}
    resumed = run_trial(cfg, report=lambda m, e: reports.setdefault(e, split_timings(m)[0]), checkpoint_dir=tmp_path)
    assert sorted(reports) == [2, 3]
    assert reports[2] == straight_reports[2]  # what ASHA sees after a resume is what it would have seen
    values, timings = split_timings(straight)
    assert "trial_seconds" in timings
    assert split_timings(resumed)[0] == values  # bit-identical on CPU
    # a checkpoint that already holds the last epoch (crash between it and the outputs) finishes
    finished = run_trial(cfg, report=lambda m, e: pytest.fail("no epoch left to run"), checkpoint_dir=tmp_path,
                         out_dir=tmp_path / "out")
    assert split_timings(finished)[0] == values
    assert json.loads((tmp_path / "out" / "metrics.json").read_text()) == values


def test_cli_train_reproduces_its_own_config(tmp_path, capsys):
    a, b = tmp_path / "a", tmp_path / "b"
    assert cli_main(["train", "--preset", "tiny", "--quiet", "--out", str(a)]) == 0
    assert cli_main(["train", str(a / "config.yaml"), "--quiet", "--out", str(b)]) == 0
    assert json.loads((a / "metrics.json").read_text()) == json.loads((b / "metrics.json").read_text())
    assert not (a / "checkpoint").exists()
    # a finished run is never overwritten
    assert cli_main(["train", "--preset", "tiny", "--out", str(a)]) == 2
    assert "already holds a finished run" in capsys.readouterr().err


def test_a_run_records_its_thread_count_and_retrains_to_its_numbers_under_another_default(tmp_path):
    # num_threads 0 means torch's default, which OMP_NUM_THREADS sets (Ray gives each worker its
    # CPUs): the written config names the count used, so a retrain where the default differs
    # still gets the same numbers; the bare 0 config does not (the numbers depend on threads).
    import subprocess
    import sys

    cfg = preset("tiny").with_updates({"train.num_threads": 0})
    given = tmp_path / "given.yaml"
    given.write_text(cfg.to_yaml())

    def train(config: Path, out: Path, threads: int) -> dict:
        env = {**os.environ, "OMP_NUM_THREADS": str(threads)}
        subprocess.run([sys.executable, "-m", "compvae.cli", "train", str(config), "--out", str(out), "--quiet"],
                       check=True, env=env, cwd=tmp_path, timeout=300)
        return json.loads((out / "metrics.json").read_text())

    first = train(given, tmp_path / "a", 1)
    assert TrialConfig.from_yaml(tmp_path / "a" / "config.yaml").train.num_threads == 1
    assert train(tmp_path / "a" / "config.yaml", tmp_path / "b", 2) == first
    assert train(given, tmp_path / "c", 2) != first


def test_cli_bad_input_is_one_line_exit_2(tmp_path, capsys):
    bad = tmp_path / "bad.yaml"
    bad.write_text("mask:\n  blur_sigma: -2\n")
    assert cli_main(["train", str(bad), "--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "mask.blur_sigma" in err
    assert not (tmp_path / "o").exists()  # nothing half-written
    assert cli_main(["train", "--preset", "nope", "--out", str(tmp_path / "o")]) == 2
    assert "unknown preset 'nope'" in capsys.readouterr().err
    assert cli_main(["train", "--preset", "tiny", "--set", "child.masking_mode=sideways",
                     "--out", str(tmp_path / "o")]) == 2
    assert "child.masking_mode" in capsys.readouterr().err
