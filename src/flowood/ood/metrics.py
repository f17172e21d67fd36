"""OOD detection metrics, with scores oriented so that higher means "more anomalous".

Conventions (stated once, used everywhere):
    * ``auroc``: probability that a random OOD input scores higher than a random
      in-distribution input (OOD is the positive class). 0.5 is chance; below 0.5 the score
      ranks OOD data as *more* typical, as the likelihood does for MNIST under a FashionMNIST flow.
    * ``aupr_out``: average precision with OOD as the positive class; ``aupr_in`` with
      in-distribution positive and the score negated. ``aupr`` in metrics.json is ``aupr_out``.
    * ``fpr95``: the fraction of OOD inputs accepted as in-distribution at the threshold that
      accepts 95% of in-distribution inputs (in-distribution positive, TPR = 95%).
    * ``detection_accuracy``: ``max_t 0.5 * (P(in <= t) + P(out > t))``.

Implemented with numpy sort-and-count (ties handled as scikit-learn does), so bootstrap
intervals are fast; the tests check every metric against scikit-learn.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import numpy as np

from flowood.errors import InputError
from flowood.options import ConfigError

__all__ = ["auroc", "aupr", "fpr_at_tpr", "detection_accuracy", "ood_metrics", "bootstrap_ci", "METRIC_NAMES"]

METRIC_NAMES = ("auroc", "aupr_in", "aupr_out", "fpr95", "detection_accuracy")


def _as_arrays(scores_in, scores_out) -> tuple[np.ndarray, np.ndarray]:
    a = np.asarray(scores_in, dtype=np.float64).ravel()
    b = np.asarray(scores_out, dtype=np.float64).ravel()
    if a.size == 0 or b.size == 0:
        raise InputError(f"need scores for both sets, got {a.size} in-distribution and {b.size} OOD")
    if not (np.isfinite(a).all() and np.isfinite(b).all()):
        raise InputError("scores contain NaN or Inf; the model produced non-finite likelihoods for some inputs")
    return a, b


def auroc(scores_in, scores_out) -> float:
    """Area under the ROC curve with OOD positive (Mann-Whitney U with ties counted as 1/2)."""
    a, b = _as_arrays(scores_in, scores_out)
    both = np.concatenate([a, b])
    order = np.argsort(both, kind="mergesort")
    ranks = np.empty_like(both)
    sorted_vals = both[order]
    # average ranks for ties
    starts = np.r_[0, np.flatnonzero(np.diff(sorted_vals)) + 1]
    ends = np.r_[starts[1:], both.size]
    avg = (starts + ends + 1) / 2.0
    ranks[order] = np.repeat(avg, ends - starts)
    rank_sum_out = ranks[a.size:].sum()
    u = rank_sum_out - b.size * (b.size + 1) / 2.0
    return float(u / (a.size * b.size))


def aupr(scores_in, scores_out, positive: str = "out") -> float:
    """Average precision (scikit-learn's definition) with ``positive`` = ``"out"`` or ``"in"``."""
    a, b = _as_arrays(scores_in, scores_out)
    if positive == "out":
        pos, neg = b, a
    elif positive == "in":
        pos, neg = -a, -b
    else:
        raise ConfigError(f"positive must be 'in' or 'out', got {positive!r}")
    scores = np.concatenate([pos, neg])
    labels = np.concatenate([np.ones(pos.size), np.zeros(neg.size)])
    order = np.argsort(-scores, kind="mergesort")
    scores, labels = scores[order], labels[order]
    last_of_group = np.r_[np.flatnonzero(np.diff(scores)), scores.size - 1]
    tp = np.cumsum(labels)[last_of_group]
    fp = (last_of_group + 1) - tp
    precision = tp / (tp + fp)
    recall = tp / pos.size
    recall_prev = np.r_[0.0, recall[:-1]]
    return float(np.sum((recall - recall_prev) * precision))


def fpr_at_tpr(scores_in, scores_out, tpr: float = 0.95) -> float:
    """Fraction of OOD inputs with a score at or below the threshold that keeps ``tpr`` of in-distribution."""
    a, b = _as_arrays(scores_in, scores_out)
    if not 0.0 < tpr <= 1.0:
        raise ConfigError(f"tpr must be in (0, 1], got {tpr}")
    threshold = np.sort(a)[max(math.ceil(tpr * a.size - 1e-9) - 1, 0)]
    return float(np.mean(b <= threshold))


def detection_accuracy(scores_in, scores_out) -> float:
    """Best balanced accuracy over all thresholds: ``max_t 0.5 * (P(in <= t) + P(out > t))``."""
    a, b = _as_arrays(scores_in, scores_out)
    thresholds = np.unique(np.concatenate([a, b, [-np.inf]]))
    tpr_in = np.searchsorted(np.sort(a), thresholds, side="right") / a.size
    tnr_out = 1.0 - np.searchsorted(np.sort(b), thresholds, side="right") / b.size
    return float(np.max(0.5 * (tpr_in + tnr_out)))


_METRICS: dict[str, Callable[[np.ndarray, np.ndarray], float]] = {
    "auroc": auroc,
    "aupr_in": lambda a, b: aupr(a, b, "in"),
    "aupr_out": lambda a, b: aupr(a, b, "out"),
    "fpr95": fpr_at_tpr,
    "detection_accuracy": detection_accuracy,
}


def bootstrap_ci(metric: str, scores_in, scores_out, num_resamples: int = 1000, level: float = 0.95,
                 seed: int = 0) -> tuple[float, float]:
    """Percentile bootstrap confidence interval of a metric, resampling both sets with replacement."""
    a, b = _as_arrays(scores_in, scores_out)
    fn = _METRICS[metric]
    rng = np.random.default_rng(seed)
    values = np.array([fn(a[rng.integers(0, a.size, a.size)], b[rng.integers(0, b.size, b.size)])
                       for _ in range(num_resamples)])
    lo, hi = np.quantile(values, [(1 - level) / 2, 1 - (1 - level) / 2])
    return float(lo), float(hi)


def ood_metrics(scores_in, scores_out, bootstrap: int = 0, seed: int = 0) -> dict[str, float | list[float]]:
    """Every metric of :data:`METRIC_NAMES`; with ``bootstrap > 0`` also ``<metric>_ci`` 95% intervals.

    Example:
        >>> m = ood_metrics([0.1, 0.2, 0.3], [0.25, 0.9])
        >>> round(m["auroc"], 4), m["fpr95"]
        (0.8333, 0.5)
    """
    a, b = _as_arrays(scores_in, scores_out)
    out: dict[str, float | list[float]] = {name: fn(a, b) for name, fn in _METRICS.items()}
    if bootstrap:
        for name in _METRICS:
            out[f"{name}_ci"] = list(bootstrap_ci(name, a, b, bootstrap, seed=seed))
    return out
