"""benchmarks/gpu.py on a machine without a GPU: it says it needs one and exits 0."""

from __future__ import annotations

import pytest
import torch
from _benchmarks import load_benchmark


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has a GPU: the benchmark would run")
def test_without_a_gpu_it_says_so_and_does_not_fail(capsys):
    bench = load_benchmark("gpu")
    assert bench.main([]) == 0
    out = capsys.readouterr().out
    assert "needs a CUDA GPU" in out and "nothing was measured" in out


def test_its_trials_are_the_paper_preset_trimmed_only_in_size():
    import argparse

    from compvae.config import preset

    bench = load_benchmark("gpu")
    args = argparse.Namespace(num_train=4096, parent_epochs=1, child_epochs=2, full_eval=False)
    cfg, paper = bench.trial_config(args), preset("paper").to_dict()
    for section, key in (("parent", "resolution"), ("child", "resolution"), ("child", "batch_size"),
                         ("child", "width"), ("child", "masking_mode"), ("train", "amp")):
        assert cfg[section][key] == paper[section][key], (section, key)
    assert (cfg["data"]["num_train"], cfg["child"]["epochs"], cfg["train"]["device"]) == (4096, 2, "cuda")
