"""Side-by-side throughput of ``compvae.training.Trainer`` against a bare PyTorch loop.

Both sides train the same VAE architecture with the same ``beta_tcvae_loss``, on the same
in-memory uint8 data, batch size and number of steps. Runs alternate (trainer, bare, bare,
trainer, ...) after a warm-up of each, so drift on a shared, noisy machine hits both sides
alike; the reported figure is the median over adjacent (trainer, bare) pairs of the rate
ratio, with the ratio of the median rates alongside (target: trainer/bare >= 0.95).

    python benchmarks/trainer.py                      # CPU, 32 px, about a minute
    python benchmarks/trainer.py --device cuda --resolution 64 --steps 200 --amp
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from collections.abc import Callable

import torch

from compvae.losses import beta_tcvae_loss
from compvae.models import VAE
from compvae.training import Trainer, resolve_device, seed_everything


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def make_trainer(args: argparse.Namespace, data: torch.Tensor, device: torch.device) -> Callable[[], None]:
    """One Trainer epoch (= ``args.steps`` steps) per call."""
    seed_everything(0)
    model = VAE(args.resolution, args.channels, args.channels, args.latent_dim, width=args.width)
    n = data.shape[0]

    def loss_fn(batch: dict[str, torch.Tensor], step: int) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        x = batch["images"]
        return beta_tcvae_loss(x, model(x), args.beta, n)

    trainer = Trainer(model, loss_fn, {"images": data}, args.batch_size, args.lr, seed=0, device=device,
                      amp=args.amp)

    def run() -> None:
        trainer.train_epoch()  # ends with the epoch's one device sync (logs to host)

    return run


def make_bare(args: argparse.Namespace, data: torch.Tensor, device: torch.device) -> Callable[[], None]:
    """The loop one would write by hand: shuffle, index, convert, forward, loss, backward, step."""
    seed_everything(0)
    model = VAE(args.resolution, args.channels, args.channels, args.latent_dim, width=args.width).to(device)
    opt = torch.optim.Adam(model.parameters(), lr=args.lr)
    n, b = data.shape[0], args.batch_size
    use_amp = args.amp and device.type == "cuda"
    amp_dtype = torch.bfloat16 if use_amp and torch.cuda.is_bf16_supported() else torch.float16
    scaler = torch.amp.GradScaler("cuda", enabled=use_amp and amp_dtype == torch.float16)

    def run() -> None:
        model.train()
        perm = torch.randperm(n, device=device)
        for i in range(args.steps):
            x = data.index_select(0, perm[i * b:(i + 1) * b]).float().div_(255.0)
            with torch.autocast(device_type="cuda", dtype=amp_dtype, enabled=use_amp):
                loss, _ = beta_tcvae_loss(x, model(x), args.beta, n)
            opt.zero_grad(set_to_none=True)
            scaler.scale(loss).backward()
            scaler.step(opt)
            scaler.update()
        _sync(device)

    return run


def timed(run: Callable[[], None], device: torch.device) -> float:
    _sync(device)
    t0 = time.perf_counter()
    run()
    return time.perf_counter() - t0


def main(argv: list[str] | None = None) -> int:
    args, result = _run(argv)
    return 1 if result["ratio"] < args.min_ratio else 0


def run(argv: list[str] | None = None) -> dict[str, float]:
    """Run and print the benchmark; return its numbers (benchmarks/run.py tabulates them)."""
    return _run(argv)[1]


def _run(argv: list[str] | None) -> tuple[argparse.Namespace, dict[str, float]]:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--resolution", type=int, default=32, choices=[32, 64, 128, 256])
    p.add_argument("--channels", type=int, default=3)
    p.add_argument("--latent-dim", type=int, default=10)
    p.add_argument("--width", type=int, default=32)
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--steps", type=int, default=50, help="steps per timed run (one trainer epoch)")
    p.add_argument("--repeats", type=int, default=11, help="timed runs of each side")
    p.add_argument("--device", default="cpu", help="auto, cpu or cuda")
    p.add_argument("--amp", action="store_true", help="mixed precision on CUDA (both sides)")
    p.add_argument("--threads", type=int, default=1,
                   help="torch CPU threads (default 1: on a shared 2-core box more threads spin-wait); 0 = leave")
    p.add_argument("--beta", type=float, default=6.0)
    p.add_argument("--lr", type=float, default=1e-4)
    p.add_argument("--min-ratio", type=float, default=0.0, help="exit 1 if trainer/bare is below this")
    args = p.parse_args(argv)

    if args.threads > 0:
        torch.set_num_threads(args.threads)
    device = resolve_device(args.device)
    n = args.steps * args.batch_size  # one trainer epoch == args.steps full batches
    g = torch.Generator().manual_seed(0)
    data = torch.randint(0, 256, (n, args.channels, args.resolution, args.resolution), dtype=torch.uint8,
                         generator=g).to(device)

    sides = {"trainer": make_trainer(args, data, device), "bare": make_bare(args, data, device)}
    for run in sides.values():  # warm-up: allocator, kernels, Adam state
        timed(run, device)
    seconds: dict[str, list[float]] = {"trainer": [], "bare": []}
    for r in range(args.repeats):
        order = ("trainer", "bare") if r % 2 == 0 else ("bare", "trainer")
        for name in order:
            seconds[name].append(timed(sides[name], device))

    imgs = args.steps * args.batch_size
    rate = {k: imgs / statistics.median(v) for k, v in seconds.items()}
    # adjacent runs share the machine's load at that moment, so their ratio cancels most drift
    pair_ratios = [b / t for t, b in zip(seconds["trainer"], seconds["bare"], strict=True)]
    ratio_of_medians = rate["trainer"] / rate["bare"]
    ratio = statistics.median(pair_ratios)
    print(f"device={device} resolution={args.resolution} batch={args.batch_size} steps={args.steps} "
          f"repeats={args.repeats} threads={torch.get_num_threads()} amp={args.amp}")
    for k in ("trainer", "bare"):
        runs = " ".join(f"{imgs / s:.0f}" for s in seconds[k])
        print(f"{k:>8}: median {rate[k]:.1f} images/s  (runs: {runs})")
    print(f"ratio trainer/bare = {ratio:.3f} (median of paired runs; ratio of median rates "
          f"{ratio_of_medians:.3f}); target >= 0.95: {'met' if ratio >= 0.95 else 'NOT met'}")
    return args, {"ratio": ratio, "ratio_of_medians": ratio_of_medians, "trainer_images_per_s": rate["trainer"],
                  "bare_images_per_s": rate["bare"]}


if __name__ == "__main__":
    sys.exit(main())
