"""Why a trial's torch thread count is fixed by its config: more threads, other numbers.

A search's tail leaves slots idle while its last trial runs alone (docs/design.md, "The tail
and torch threads"). Handing that trial the idle cores would shorten the tail, but only if its
numbers stay the same: a retrained export must reproduce the trial. This trains the quick
preset's child architecture for one epoch on the same scenes images with the same seed, with 1
thread and with ``--threads`` threads, alternately, and prints the speed-up and whether the
weights match bit for bit (with the largest difference when they do not).

    python benchmarks/threads.py                  # quick child, 2048 images, about a minute on 2 cores
    python benchmarks/threads.py --threads 4 --num-train 4096
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
# Run as a script, this folder heads sys.path and would shadow the `search` package.
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != HERE]


def train_once(threads: int, images, cfg) -> tuple[float, dict]:
    """One seeded epoch of the quick child with ``threads`` torch threads: (seconds, weights)."""
    import torch

    from compvae.losses import beta_tcvae_loss
    from compvae.models import VAE
    from compvae.training import Trainer, seed_everything

    torch.set_num_threads(threads)
    seed_everything(0)
    c = cfg.child
    model = VAE(c.resolution, images.shape[1], images.shape[1], c.latent_dim, width=c.width)
    n = images.shape[0]

    def loss_fn(batch, step):
        x = batch["images"]
        return beta_tcvae_loss(x, model(x), c.beta, n)

    trainer = Trainer(model, loss_fn, {"images": images}, c.batch_size, c.lr, seed=0, device="cpu")
    t0 = time.perf_counter()
    trainer.train_epoch()
    return time.perf_counter() - t0, {k: v.detach().clone() for k, v in model.state_dict().items()}


def run(argv: list[str] | None = None) -> dict[str, float]:
    """Print the comparison; return the speed-up and the largest weight difference."""
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--threads", type=int, default=2, help="the threads compared with 1")
    p.add_argument("--num-train", type=int, default=2048, help="images in the epoch")
    p.add_argument("--repeats", type=int, default=2, help="pairs of (1 thread, N threads) epochs")
    args = p.parse_args(argv)

    import numpy as np
    import torch

    from compvae.config import preset
    from compvae.data import get_dataset

    cfg = preset("quick")
    data = get_dataset("scenes", resolution=cfg.child.resolution)
    _, x = data.sample(args.num_train, np.random.default_rng(0))
    images = torch.from_numpy(np.clip(np.rint(x * 255), 0, 255).astype(np.uint8))
    print(f"quick child ({cfg.child.resolution} px, width {cfg.child.width}, batch {cfg.child.batch_size}), "
          f"one epoch of {args.num_train} scenes images, 1 thread against {args.threads}")
    seconds: dict[int, list[float]] = {1: [], args.threads: []}
    weights: dict[int, dict] = {}
    for r in range(args.repeats):
        for t in ((1, args.threads) if r % 2 == 0 else (args.threads, 1)):
            s, w = train_once(t, images, cfg)
            seconds[t].append(s)
            if t in weights:  # the same thread count twice: the run itself is deterministic
                assert all(torch.equal(w[k], weights[t][k]) for k in w), f"{t} threads: two runs differ"
            weights[t] = w
            print(f"  {t} thread{'s' if t > 1 else ' '}: {s:6.2f} s", flush=True)
    one, many = weights[1], weights[args.threads]
    same = all(torch.equal(one[k], many[k]) for k in one)
    diff = max(float((one[k].double() - many[k].double()).abs().max()) for k in one)
    speedup = statistics.median(seconds[1]) / statistics.median(seconds[args.threads])
    print(f"speed-up with {args.threads} threads: {speedup:.2f}x (median seconds)")
    print(f"weights after one epoch: {'identical' if same else 'DIFFERENT'} bit for bit "
          f"(largest difference {diff:.3g}); each thread count alone repeats exactly")
    return {"speedup": speedup, "max_weight_difference": diff, "identical": float(same)}


def main(argv: list[str] | None = None) -> int:
    run(argv)
    return 0


if __name__ == "__main__":
    sys.exit(main())
