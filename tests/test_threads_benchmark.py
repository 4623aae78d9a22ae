"""benchmarks/threads.py: the evidence that a trial's torch thread count belongs in its config."""

from __future__ import annotations

import torch
from _benchmarks import load_benchmark


def test_it_compares_the_same_seeded_epoch_and_reports_the_weights_difference(capsys):
    bench = load_benchmark("threads")
    threads = torch.get_num_threads()
    try:
        result = bench.run(["--num-train", "128", "--repeats", "2"])
    finally:
        torch.set_num_threads(threads)
    out = capsys.readouterr().out
    assert result["speedup"] > 0
    # identical exactly when the largest difference is zero; the run asserts that each thread
    # count repeated gives the same weights (else it raises), so a difference is the threads'
    assert result["identical"] == float(result["max_weight_difference"] == 0.0)
    assert ("identical bit for bit" in out) == bool(result["identical"])
    assert out.count("thread") >= 5


def test_one_seeded_epoch_repeats_exactly_with_the_same_threads():
    bench = load_benchmark("threads")
    import numpy as np

    from compvae.config import preset

    cfg = preset("quick")
    images = torch.from_numpy(np.random.default_rng(0).integers(0, 256, (64, 1, 64, 64), dtype=np.uint8))
    threads = torch.get_num_threads()
    try:
        _, a = bench.train_once(1, images, cfg)
        _, b = bench.train_once(1, images, cfg)
    finally:
        torch.set_num_threads(threads)
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert any(not torch.equal(a[k], torch.zeros_like(a[k])) for k in a)
