"""Child training throughput of a paper-preset trial on one GPU: alone, and 4 trials sharing it.

A search on a GPU machine gives each trial a fraction of the GPU (``search.resources.gpus:
0.25`` puts 4 trials on one device). Whether that pays depends on how much one trial leaves
the GPU idle (data movement, evaluation, Python between kernels): this measures it. One
paper-preset trial (parent 64 px, child 256 px, batch 32, AMP) runs alone as a Ray task with
``num_gpus=1``, then 4 run at once with ``num_gpus=0.25`` each; each trial's child images per
second are its child epochs' images over its ``breakdown/child_train_seconds`` (timings.json)
and its peak GPU memory is ``resources/peak_gpu_mib``. Printed: images/s alone, per trial and
in aggregate when shared, the aggregate ratio (4 shared / 1 alone; > 1 means sharing adds
throughput) and peak memory per trial.

The trials are the paper preset with a smaller training set and fewer epochs (printed; the
model, resolution, batch size and AMP are the preset's), so a run takes minutes, not hours;
the per-epoch and final evaluations run at light sizes (``--full-eval`` keeps the preset's).

Without a CUDA GPU it says so and exits 0: nothing is measured, nothing fails.

    python benchmarks/gpu.py                       # 4096 images, 1 parent + 2 child epochs
    python benchmarks/gpu.py --num-train 16384 --child-epochs 3 --shared 4
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
_HERE = Path(__file__).resolve().parent
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != _HERE]  # see benchmarks/search.py

NEEDS_GPU = ("benchmarks/gpu.py needs a CUDA GPU: torch.cuda.is_available() is False on this machine, "
             "so nothing was measured (run it where `nvidia-smi` lists a GPU and torch has CUDA)")


def trial_config(args: argparse.Namespace) -> dict[str, Any]:
    from compvae.config import preset

    updates: dict[str, Any] = {"data.num_train": args.num_train, "parent.epochs": args.parent_epochs,
                               "child.epochs": args.child_epochs, "train.device": "cuda",
                               "eval.figures": False}
    if not args.full_eval:
        updates.update({"eval.num_train": 1000, "eval.num_test": 500, "eval.light_points": 500})
    return preset("paper").with_updates(updates).to_dict()


def one_trial(config: dict[str, Any], out: str, store: str) -> dict[str, float]:
    """Ray task body: one trial; its child images/s and peak GPU memory from its timings."""
    import json

    from compvae.config import TrialConfig
    from compvae.trial import run_trial

    cfg = TrialConfig.from_dict(config)
    run_trial(cfg, out_dir=out, parent_store=store)
    timings = json.loads((Path(out) / "timings.json").read_text())
    n = (cfg.data.num_train // cfg.child.batch_size) * cfg.child.batch_size  # the trainer drops partial batches
    return {"images_per_s": cfg.child.epochs * n / timings["breakdown/child_train_seconds"],
            "peak_gpu_mib": float(timings.get("resources/peak_gpu_mib", float("nan"))),
            "trial_seconds": float(timings["breakdown/total_seconds"])}


def run(argv: list[str] | None = None) -> dict[str, float] | None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--num-train", type=int, default=4096, help="training images (the preset has 50,000)")
    p.add_argument("--parent-epochs", type=int, default=1)
    p.add_argument("--child-epochs", type=int, default=2)
    p.add_argument("--shared", type=int, default=4, help="trials sharing the GPU (each gets 1/shared of it)")
    p.add_argument("--full-eval", action="store_true", help="keep the preset's evaluation sizes")
    args = p.parse_args(argv)

    import torch

    if not torch.cuda.is_available():
        print(NEEDS_GPU)
        return None

    import ray

    config = trial_config(args)
    print(f"GPU: {torch.cuda.get_device_name(0)}; paper preset with data.num_train {args.num_train}, "
          f"parent {args.parent_epochs} / child {args.child_epochs} epochs, "
          f"{'preset' if args.full_eval else 'light'} evaluation sizes")
    with tempfile.TemporaryDirectory(prefix="bench-gpu-") as tmp:
        store = str(Path(tmp) / "parents")
        # the Ray workers import this tree's compvae, not whatever an installed copy points at
        os.environ["PYTHONPATH"] = os.pathsep.join([str(ROOT), *filter(None, [os.environ.get("PYTHONPATH")])])
        ray.init(address="local", num_gpus=1, num_cpus=max(args.shared, os.cpu_count() or 1),
                 include_dashboard=False, log_to_driver=False, logging_level="WARNING")
        try:
            from compvae.trial import prepare_parent

            prepare = ray.remote(num_gpus=1)(prepare_parent)
            ray.get(prepare.remote(config, store))  # one parent, trained once, outside the timings
            alone_task = ray.remote(num_gpus=1)(one_trial)
            t0 = time.perf_counter()
            alone = ray.get(alone_task.remote(config, str(Path(tmp) / "alone"), store))
            alone_wall = time.perf_counter() - t0
            shared_task = ray.remote(num_gpus=1.0 / args.shared)(one_trial)
            t0 = time.perf_counter()
            shared = ray.get([shared_task.remote(config, str(Path(tmp) / f"shared{i}"), store)
                              for i in range(args.shared)])
            shared_wall = time.perf_counter() - t0
        finally:
            ray.shutdown()
    aggregate = sum(r["images_per_s"] for r in shared)
    ratio = aggregate / alone["images_per_s"]
    print(f"  alone:      {alone['images_per_s']:8.1f} child images/s, peak GPU memory "
          f"{alone['peak_gpu_mib']:.0f} MiB, trial {alone['trial_seconds']:.0f} s (wall {alone_wall:.0f} s)")
    print(f"  {args.shared} shared (gpus: {1 / args.shared:g} each): "
          + ", ".join(f"{r['images_per_s']:.1f}" for r in shared)
          + f" images/s per trial, aggregate {aggregate:.1f}; peak GPU memory per trial "
          + ", ".join(f"{r['peak_gpu_mib']:.0f}" for r in shared) + f" MiB (wall {shared_wall:.0f} s)")
    print(f"  aggregate ratio {args.shared} shared / alone = {ratio:.2f} "
          f"({'sharing adds throughput' if ratio > 1 else 'sharing adds nothing'}); "
          f"median peak memory {statistics.median(r['peak_gpu_mib'] for r in shared):.0f} MiB per trial")
    return {"alone_images_per_s": alone["images_per_s"], "aggregate_images_per_s": aggregate, "ratio": ratio,
            "peak_gpu_mib": max(r["peak_gpu_mib"] for r in [alone, *shared])}


def main(argv: list[str] | None = None) -> int:
    run(argv)
    return 0


if __name__ == "__main__":
    sys.exit(main())
