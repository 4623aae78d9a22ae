"""The informativeness probe: a one-hidden-layer ReLU MLP trained with Adam and early stopping.

It computes exactly what ``sklearn.neural_network.MLPClassifier(hidden, max_iter=300,
early_stopping=True, random_state=seed).fit(x, y).score(x_test, y_test)`` computes, the same
floats in the same order (``tests/test_probe.py`` checks equality with the installed
scikit-learn), without the estimator's per-batch and per-epoch input checks, loss bookkeeping
and scorer dispatch, which are most of its time on a probe this small (docs/design.md,
"The informativeness probe").
"""

from __future__ import annotations

import numpy as np
from scipy.special import expit
from sklearn.model_selection import train_test_split
from sklearn.preprocessing import LabelBinarizer

from compvae.metrics._utils import quiet_convergence

# MLPClassifier's defaults, the probe's definition
ALPHA = 1e-4
LEARNING_RATE = 1e-3
BETA_1, BETA_2, EPSILON = 0.9, 0.999, 1e-8
BATCH = 200
VALIDATION_FRACTION = 0.1
TOL = 1e-4
N_ITER_NO_CHANGE = 10


class _Net:
    """The two layers' weights as views into one flat buffer (coefficients, then intercepts: the
    reference's parameter order), so Adam updates all of them in one pass; the forward pass has
    a softmax output, or a logistic one for two classes."""

    def __init__(self, rs: np.random.RandomState, sizes: list[int], binary: bool) -> None:
        self.shapes = [(a, b) for a, b in zip(sizes[:-1], sizes[1:], strict=True)]
        self.theta = np.empty(sum(a * b + b for a, b in self.shapes))
        self.coefs, self.intercepts = self.views(self.theta)
        for coef, intercept, (fan_in, fan_out) in zip(self.coefs, self.intercepts, self.shapes, strict=True):
            bound = np.sqrt(6.0 / (fan_in + fan_out))  # Glorot uniform with the ReLU factor
            coef[...] = rs.uniform(-bound, bound, (fan_in, fan_out))
            intercept[...] = rs.uniform(-bound, bound, fan_out)
        self.binary = binary
        self.grad = np.empty_like(self.theta)  # the batch gradient, laid out as ``theta``
        self.grad_coefs, self.grad_intercepts = self.views(self.grad)

    def views(self, flat: np.ndarray) -> tuple[list[np.ndarray], list[np.ndarray]]:
        coefs, intercepts, at = [], [], 0
        for a, b in self.shapes:
            coefs.append(flat[at : at + a * b].reshape(a, b))
            at += a * b
        for _, b in self.shapes:
            intercepts.append(flat[at : at + b])
            at += b
        return coefs, intercepts

    def output(self, logits: np.ndarray) -> np.ndarray:
        if self.binary:
            return expit(logits, out=logits)
        shifted = logits - logits.max(axis=1)[:, np.newaxis]
        np.exp(shifted, out=logits)
        logits /= logits.sum(axis=1)[:, np.newaxis]
        return logits

    def forward(self, x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        hidden = x @ self.coefs[0]
        hidden += self.intercepts[0]
        np.maximum(hidden, 0, out=hidden)
        out = hidden @ self.coefs[1]
        out += self.intercepts[1]
        return hidden, self.output(out)

    def predict(self, x: np.ndarray) -> np.ndarray:
        """Index into the binarizer's classes of each row's predicted class."""
        prob = self.forward(x)[1]
        return (prob.ravel() > 0.5).astype(int) if self.binary else prob.argmax(axis=1)

    def gradient(self, x: np.ndarray, y: np.ndarray) -> np.ndarray:
        """Gradient of the batch's mean log-loss plus the L2 penalty, written into ``self.grad``."""
        n = x.shape[0]
        g_w0, g_w1 = self.grad_coefs
        g_b0, g_b1 = self.grad_intercepts
        hidden, prob = self.forward(x)
        delta_out = prob - y
        np.matmul(hidden.T, delta_out, out=g_w1)
        g_w1 += ALPHA * self.coefs[1]
        g_w1 /= n
        np.divide(np.sum(delta_out, axis=0), n, out=g_b1)
        delta_hidden = delta_out @ self.coefs[1].T
        np.putmask(delta_hidden, hidden == 0, 0)  # ReLU derivative
        np.matmul(x.T, delta_hidden, out=g_w0)
        g_w0 += ALPHA * self.coefs[0]
        g_w0 /= n
        np.divide(np.sum(delta_hidden, axis=0), n, out=g_b0)
        return self.grad


class _Adam:
    """Adam over one flat parameter buffer, in place, with the reference expressions' rounding."""

    def __init__(self, theta: np.ndarray) -> None:
        self.theta = theta
        self.m = np.zeros_like(theta)
        self.v = np.zeros_like(theta)
        self.t = 0

    def step(self, grad: np.ndarray) -> None:
        self.t += 1
        lr = LEARNING_RATE * np.sqrt(1 - BETA_2**self.t) / (1 - BETA_1**self.t)
        self.m *= BETA_1
        self.m += (1 - BETA_1) * grad
        self.v *= BETA_2
        self.v += (1 - BETA_2) * (grad**2)
        self.theta += -lr * self.m / (np.sqrt(self.v) + EPSILON)


def probe_accuracy(x_train: np.ndarray, y_train: np.ndarray, x_test: np.ndarray, y_test: np.ndarray,
                   hidden: int = 64, max_iter: int = 300, random_state: int = 0) -> float:
    """Test accuracy of the probe fitted on (``x_train``, ``y_train``): float64 features, class
    labels with at least two classes."""
    x_train = np.ascontiguousarray(x_train, dtype=np.float64)
    x_test = np.ascontiguousarray(x_test, dtype=np.float64)
    rs = np.random.RandomState(random_state)
    binarizer = LabelBinarizer().fit(y_train)
    classes = binarizer.classes_
    if len(classes) < 2:
        raise ValueError("the probe needs at least two classes in y_train")
    y_bin = binarizer.transform(y_train).astype(bool)
    net = _Net(rs, [x_train.shape[1], hidden, y_bin.shape[1]], binary=len(classes) == 2)
    best = net.theta.copy()
    adam = _Adam(net.theta)

    # the reference stratifies the validation split only with one output column (two classes)
    stratify = y_bin if y_bin.shape[1] == 1 else None
    x_fit, x_val, y_fit, y_val_bin = train_test_split(x_train, y_bin, random_state=rs,
                                                      test_size=VALIDATION_FRACTION, stratify=stratify)
    y_val = binarizer.inverse_transform(y_val_bin)
    y_fit = y_fit.astype(np.float64)  # what ``prob - y`` promotes the bool targets to, once
    n = x_fit.shape[0]
    order = np.arange(n, dtype=int)
    batch = min(BATCH, n)
    best_score, stale = -np.inf, 0
    for _ in range(max_iter):
        perm = np.arange(n)  # sklearn.utils.shuffle(order, random_state=rs), without its input checks
        rs.shuffle(perm)
        order = order[perm]
        for start in range(0, n, batch):  # sklearn.utils.gen_batches(n, batch), unchecked
            idx = order[start : start + batch]
            adam.step(net.gradient(x_fit[idx], y_fit[idx]))
        score = float(np.mean(classes[net.predict(x_val)] == y_val))
        stale = stale + 1 if score < best_score + TOL else 0
        if score > best_score:
            best_score = score
            best = net.theta.copy()
        if stale > N_ITER_NO_CHANGE:
            break
    net.theta[...] = best
    if not np.isfinite(net.theta).all():
        raise ValueError("the probe's weights diverged (non-finite); the codes need standardising")
    return float(np.mean(classes[net.predict(x_test)] == np.asarray(y_test)))


def reference_accuracy(x_train: np.ndarray, y_train: np.ndarray, x_test: np.ndarray, y_test: np.ndarray,
                       hidden: int = 64, max_iter: int = 300, random_state: int = 0) -> float:
    """The same score from the estimator the probe is defined by (for checks and comparisons:
    ``tests/test_probe.py``, ``benchmarks/probe.py``); imported here only when called."""
    from sklearn.neural_network import MLPClassifier

    with quiet_convergence():
        clf = MLPClassifier((hidden,), max_iter=max_iter, early_stopping=True, random_state=random_state)
        return float(clf.fit(x_train, y_train).score(x_test, y_test))
