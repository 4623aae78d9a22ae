"""The informativeness probe computes exactly what scikit-learn's MLPClassifier computes.

``compvae.metrics.probe`` re-implements the probe's fit without the estimator's per-batch
overhead; these tests pin that every score is the same float as the installed
scikit-learn's, over the paths the fit takes (two classes: logistic output and a stratified
validation split; more: softmax and a plain split; early stopping and the iteration cap).
"""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.preprocessing import StandardScaler

from compvae.metrics.informativeness import informativeness_per_factor
from compvae.metrics.probe import probe_accuracy, reference_accuracy


def _task(n: int, d: int, classes: int, seed: int, skew: float = 0.0, signal: float = 0.6):
    rng = np.random.default_rng(seed)
    y = rng.integers(0, classes, n)
    y = np.where(rng.random(n) < skew, 0, y)  # skew: that share of points forced to class 0
    x = rng.normal(size=(n, d)) + signal * y[:, None] * rng.normal(size=d)
    yt = rng.integers(0, classes, n // 2)
    xt = rng.normal(size=(n // 2, d)) + signal * yt[:, None] * rng.normal(size=d)
    return x, y, xt, yt


CASES = [  # n, d, classes, seed, skew
    (1000, 8, 2, 0, 0.0),    # two classes: logistic output, stratified split
    (1000, 8, 2, 1, 0.7),    # two classes, imbalanced
    (1000, 8, 5, 2, 0.0),    # softmax output, unstratified split
    (937, 3, 10, 3, 0.5),    # a last batch shorter than 200, imbalanced
    (150, 5, 3, 4, 0.0),     # fewer points than one batch
    (2000, 1, 4, 5, 0.0),    # one feature
    (600, 6, 40, 6, 0.0),    # many classes, some absent from the validation split
]


@pytest.mark.parametrize("n,d,classes,seed,skew", CASES)
def test_score_equals_sklearn(n: int, d: int, classes: int, seed: int, skew: float) -> None:
    x, y, xt, yt = _task(n, d, classes, seed, skew)
    for random_state in (0, 7):
        assert probe_accuracy(x, y, xt, yt, random_state=random_state) == reference_accuracy(x, y, xt, yt, random_state=random_state)


def test_iteration_cap_equals_sklearn() -> None:
    """Stopped by ``max_iter`` before early stopping: the best validation weights, as sklearn."""
    x, y, xt, yt = _task(800, 4, 3, 8, signal=0.3)
    for cap in (1, 3):
        assert probe_accuracy(x, y, xt, yt, max_iter=cap, random_state=2) == reference_accuracy(x, y, xt, yt, max_iter=cap, random_state=2)


def test_labels_and_test_classes_as_sklearn() -> None:
    """Arbitrary label values, and test labels the training set never had."""
    x, y, xt, yt = _task(700, 5, 4, 9)
    y, yt = y * 3 - 5, yt * 3 - 5
    yt[:20] = 100
    assert probe_accuracy(x, y, xt, yt, random_state=1) == reference_accuracy(x, y, xt, yt, random_state=1)


def test_refuses_what_sklearn_refuses() -> None:
    """A class with one member cannot be stratified (two classes), and one class is no task."""
    x, y, xt, yt = _task(300, 4, 2, 10)
    y[:] = 0
    y[0] = 1
    with pytest.raises(ValueError):
        reference_accuracy(x, y, xt, yt, random_state=0)
    with pytest.raises(ValueError):
        probe_accuracy(x, y, xt, yt)
    with pytest.raises(ValueError, match="two classes"):
        probe_accuracy(x, np.zeros_like(y), xt, yt)


def test_informativeness_equals_the_sklearn_probe() -> None:
    """The metric's per-factor scores are those of sklearn's probe on the standardised active codes."""
    rng = np.random.default_rng(11)
    n, d = 1200, 6
    factors = np.stack([rng.integers(0, 4, n), rng.integers(0, 2, n), rng.integers(0, 6, n), np.zeros(n, int)], 1)
    codes = rng.normal(size=(n, d))
    codes[:, 0] += factors[:, 0]
    codes[:, 1] += 0.5 * factors[:, 2]
    active = np.array([True, True, False, True, True, False])
    tr, te = slice(0, 800), slice(800, n)
    got = informativeness_per_factor(codes[tr], factors[tr], codes[te], factors[te], active, random_state=3)
    scaler = StandardScaler().fit(codes[tr][:, active])
    ztr, zte = scaler.transform(codes[tr][:, active]), scaler.transform(codes[te][:, active])
    want = []
    for k in range(3):
        values, counts = np.unique(factors[tr, k], return_counts=True)
        chance = float(np.mean(factors[te, k] == values[np.argmax(counts)]))
        acc = reference_accuracy(ztr, factors[tr, k], zte, factors[te, k], random_state=3)
        want.append((acc - chance) / (1 - chance))
    assert got[:3].tolist() == want
    assert np.isnan(got[3])  # a constant factor
    assert got[0] > 0.2 and got[2] > 0.05  # the factors the codes carry are read


def test_benchmark_compares_both_probes_on_the_same_codes(capsys) -> None:
    """benchmarks/probe.py times both sides on the scenes factors and finds every score identical."""
    from _benchmarks import load_benchmark

    result = load_benchmark("probe").run(["--sizes", "300", "--repeats", "1"])
    out = capsys.readouterr().out
    assert result["identical_300"] == 1.0 and result["identical"] == 1.0
    assert result["ratio"] == result["ours_seconds_300"] / result["sklearn_seconds_300"]
    assert result["sklearn_seconds_300"] > 0 and result["ours_seconds_300"] > 0
    assert "scores identical" in out and "14 scenes factors" in out
