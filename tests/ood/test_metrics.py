"""Metrics (flowood.ood.metrics) against scikit-learn on random cases (with ties) and on hand-made cases, and
their properties (hypothesis): range, symmetry, invariance to increasing maps."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from sklearn.metrics import average_precision_score, roc_auc_score, roc_curve

from flowood.ood.metrics import aupr, auroc, bootstrap_ci, detection_accuracy, fpr_at_tpr, ood_metrics


def sk_reference(a, b):
    y = np.r_[np.zeros(a.size), np.ones(b.size)]
    s = np.r_[a, b]
    fpr, tpr, _ = roc_curve(1 - y, -s)  # in-distribution positive
    fpr95 = fpr[np.searchsorted(tpr, 0.95 - 1e-12, side="left")]
    return {
        "auroc": roc_auc_score(y, s),
        "aupr_out": average_precision_score(y, s),
        "aupr_in": average_precision_score(1 - y, -s),
        "fpr95": fpr95,
        "detection_accuracy": np.max(0.5 * (tpr + 1 - fpr)),
    }


@pytest.mark.parametrize("seed", range(8))
@pytest.mark.parametrize("ties", [False, True])
def test_against_sklearn_random(seed, ties):
    rng = np.random.default_rng(seed)
    a = rng.normal(0, 1, rng.integers(5, 300))
    b = rng.normal(rng.uniform(-1, 2), 1.5, rng.integers(5, 300))
    if ties:
        a, b = np.round(a), np.round(b)
    ours = ood_metrics(a, b)
    ref = sk_reference(a, b)
    for name, value in ref.items():
        assert ours[name] == pytest.approx(value, abs=1e-12), name


@settings(max_examples=60, deadline=None)
@given(st.lists(st.integers(-5, 5), min_size=1, max_size=40), st.lists(st.integers(-5, 5), min_size=1, max_size=40))
def test_against_sklearn_property(a, b):
    a, b = np.array(a, float), np.array(b, float)
    ours = ood_metrics(a, b)
    for name, value in sk_reference(a, b).items():
        assert ours[name] == pytest.approx(value, abs=1e-12), name


def test_hand_cases():
    # perfectly separated, OOD higher
    assert auroc([0, 1, 2], [3, 4]) == 1.0
    assert fpr_at_tpr([0, 1, 2], [3, 4]) == 0.0
    assert detection_accuracy([0, 1, 2], [3, 4]) == 1.0
    assert aupr([0, 1, 2], [3, 4]) == 1.0
    # perfectly reversed: the likelihood failure mode
    assert auroc([3, 4], [0, 1, 2]) == 0.0
    assert fpr_at_tpr([3, 4], [0, 1, 2]) == 1.0
    # identical scores: chance
    assert auroc([1, 1], [1, 1]) == 0.5
    # 1 of 6 pairs misordered
    assert auroc([0.1, 0.2, 0.3], [0.25, 0.9]) == pytest.approx(5 / 6)
    # 95% TPR on 20 in-dist scores 1..20 keeps scores <= 19: OOD scores 5 and 19.5 -> one of two accepted
    assert fpr_at_tpr(np.arange(1, 21), [5, 19.5]) == 0.5


def test_bootstrap_interval_contains_estimate_and_is_reproducible():
    rng = np.random.default_rng(0)
    a, b = rng.normal(0, 1, 200), rng.normal(1, 1, 200)
    lo, hi = bootstrap_ci("auroc", a, b, num_resamples=200, seed=1)
    assert lo < auroc(a, b) < hi and hi - lo < 0.2
    assert (lo, hi) == bootstrap_ci("auroc", a, b, num_resamples=200, seed=1)
    m = ood_metrics(a, b, bootstrap=50)
    assert len(m["fpr95_ci"]) == 2


def test_bad_scores_raise():
    with pytest.raises(ValueError, match="NaN"):
        auroc([0, np.nan], [1])
    with pytest.raises(ValueError, match="both sets"):
        auroc([], [1])
    with pytest.raises(ValueError, match="positive"):
        aupr([0], [1], positive="both")


scores = st.lists(st.floats(-1e6, 1e6, allow_nan=False), min_size=1, max_size=50)


@settings(max_examples=80, deadline=None)
@given(scores, scores)
def test_auroc_symmetry_range_and_monotone_invariance(a, b):
    a, b = np.array(a), np.array(b)
    value = auroc(a, b)
    assert 0.0 <= value <= 1.0
    assert value + auroc(b, a) == pytest.approx(1.0, abs=1e-12)
    assert auroc(4.0 * a, 4.0 * b) == pytest.approx(value, abs=1e-12)  # increasing maps exact in floats
    assert auroc(-b, -a) == pytest.approx(value, abs=1e-12)
    assert auroc(a[::-1], b[::-1]) == pytest.approx(value, abs=1e-12)  # order of samples does not matter


@settings(max_examples=60, deadline=None)
@given(scores, scores)
def test_other_metrics_stay_in_range(a, b):
    m = ood_metrics(np.array(a), np.array(b))
    for name in ("aupr_in", "aupr_out", "fpr95", "detection_accuracy"):
        assert 0.0 <= m[name] <= 1.0 and math.isfinite(m[name]), name
    assert m["detection_accuracy"] >= 0.5
    assert 0.0 <= fpr_at_tpr(np.array(a), np.array(b), tpr=0.5) <= 1.0
