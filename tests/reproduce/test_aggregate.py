"""Numbers over seeds (flowood.reproduce.aggregate): mean ± sample sd by hand, one seed shown as its value, and the
rule for a claim over seeds (it holds on the means; the seeds that satisfy it alone are counted, seed k against
seed k)."""

from __future__ import annotations

import math

import pytest

from flowood.reproduce.aggregate import (
    Spread,
    evaluate_check,
    metric_spread,
    overall_status,
    paired_p_value,
    short_name,
    spread,
)
from flowood.reproduce.experiments import Check


def state(seed: int, test_bpd: float, auroc: float, status: str = "done") -> dict:
    """A run's status.json as the runner writes it, with one OOD set (mnist)."""
    return {"status": status, "seed": seed, "stages": {"evaluate": {
        "test_bpd": test_bpd, "ood": {"mnist": {"auroc": auroc, "bpd": test_bpd - 1, "scores": {"waic": 1 - auroc}}}}}}


def runs(bpd: list[float], auroc: list[float]) -> list[dict]:
    return [state(k, b, a) for k, (b, a) in enumerate(zip(bpd, auroc, strict=True))]


def test_mean_and_sample_sd_by_hand():
    s = Spread({0: 1.0, 1: 2.0, 2: 4.0})
    # mean 7/3; deviations -4/3, -1/3, 5/3; squares sum to 42/9; / (n - 1) = 7/3
    assert s.mean == pytest.approx(7 / 3) and s.sd == pytest.approx(math.sqrt(7 / 3)) and s.n == 3
    assert s.text() == "2.333 ± 1.528" and s.text(1) == "2.3 ± 1.5"
    assert s.as_dict() == {"mean": pytest.approx(7 / 3), "sd": pytest.approx(math.sqrt(7 / 3)), "n": 3,
                           "values": {"0": 1.0, "1": 2.0, "2": 4.0}}
    one = Spread({5: 0.25})
    assert one.sd is None and one.text() == "0.250" and one.as_dict()["sd"] is None
    assert spread({0: None, 1: 3.0, 2: 5.0}).values == {1: 3.0, 2: 5.0}  # seeds without a value are left out
    assert spread({0: None}) is None


def test_metric_spread_reads_every_seed():
    r = runs([3.0, 4.0, 5.0], [0.2, 0.6, 0.7])
    assert metric_spread(r, "test_bpd").values == {0: 3.0, 1: 4.0, 2: 5.0}
    assert metric_spread(r, "ood_bpd", "mnist").mean == pytest.approx(3.0)
    assert metric_spread(r, "auroc", "mnist", score="waic").values == pytest.approx({0: 0.8, 1: 0.4, 2: 0.3})
    assert metric_spread(r, "auroc", "cifar10") is None
    assert metric_spread([{"status": "skipped"}], "test_bpd") is None


def test_a_claim_holds_on_the_means_and_counts_the_seeds_that_satisfy_it():
    base = runs([3.0, 4.0, 5.0], [0.2, 0.6, 0.7])  # AUROC mean 0.5, sd 0.265
    cycle = runs([5.0, 6.0, 2.5], [0.5, 0.5, 0.8])  # AUROC mean 0.6; bits/dim mean 4.5
    everything = {"base": base, "cycle": cycle}
    # below 0.5 on the mean: 0.5 is not, although seed 0 (0.2) is
    below = evaluate_check(Check("c", "auroc", "mnist", below=0.5), base, everything)
    assert (below.verdict, below.seeds_holding, below.seeds_decided, below.shown) == ("no", 1, 3, "no (1/3 seeds)")
    assert below.text == "auroc (mnist) = 0.500 ± 0.265 (< 0.5?)"
    # better than base on the means (0.6 > 0.5); seed by seed 0.5 > 0.2, 0.5 < 0.6, 0.8 > 0.7
    better = evaluate_check(Check("c", "auroc", "mnist", better_than="base"), cycle, everything)
    assert (better.verdict, better.shown) == ("yes", "yes (2/3 seeds; paired t-test p = 0.239)")
    assert better.text == "auroc (mnist) = 0.600 ± 0.173 vs 0.500 ± 0.265 for base"
    # worse bits/dim than base: 4.5 > 4.0 on the means; 5 > 3, 6 > 4, 2.5 < 5
    worse = evaluate_check(Check("c", "test_bpd", worse_than="base"), cycle, everything)
    assert worse.shown == "yes (2/3 seeds; paired t-test p = 0.385)"


def test_seeds_not_run_are_not_counted_and_one_seed_shows_a_plain_verdict():
    base = runs([3.0, 4.0, 5.0], [0.2, 0.6, 0.7])
    partial = runs([3.0, 4.0], [0.1, 0.3]) + [{"status": "failed", "seed": 2}]
    v = evaluate_check(Check("c", "auroc", "mnist", better_than="base"), partial, {"base": base})
    assert v.verdict == "no" and v.shown == "no (0/2 seeds; 1 not run; paired t-test p = 0.852)"
    one = evaluate_check(Check("c", "auroc", "mnist", above=0.1), state(0, 3.0, 0.2), {})  # a single status
    assert (one.verdict, one.shown, one.text) == ("yes", "yes", "auroc (mnist) = 0.200 (> 0.1?)")
    missing = evaluate_check(Check("c", "auroc", "mnist", better_than="other"), base, {})
    assert missing.verdict == "not run" and "other not run" in missing.text
    assert evaluate_check(Check("c", "test_bpd", below=9), [{"status": "skipped"}], {}).verdict == "not run"


def test_overall_status_and_short_names():
    assert overall_status([{"status": "done"}] * 3) == "done"
    assert overall_status([{"status": "done"}, {"status": "failed"}]) == "failed"
    assert overall_status([{"status": "done"}, {"status": "not run"}, {"status": "done"}]) == "2 done, 1 not run"
    assert short_name("npz:/x/base/seed1/emb-mnist.npz") == "mnist"
    assert short_name("npz:/fixtures/mnist-small.npz") == "mnist-small" and short_name("svhn") == "svhn"


def test_each_seeds_embeddings_of_a_set_are_one_set():
    from flowood.reproduce.aggregate import ood_names

    seeds = [{"status": "done", "seed": k, "stages": {"evaluate": {"test_bpd": -1.0, "ood": {
        f"npz:/r/emb/seed{k}/emb-mnist.npz": {"auroc": 0.9 + k / 100, "bpd": 1.0, "scores": {"knn": 0.8}},
        "npz:/data/mine.npz": {"auroc": 0.5, "bpd": 1.0, "scores": {}}}}}} for k in range(3)]
    assert ood_names(seeds) == ["mnist", "mine"]
    assert metric_spread(seeds, "auroc", "mnist").values == {0: 0.90, 1: 0.91, 2: 0.92}
    assert metric_spread(seeds, "auroc", "mnist", score="knn").n == 3
    assert metric_spread(seeds, "auroc", "mine").n == 3


def _t_cdf_two_dof(t: float) -> float:
    """Student's t distribution's CDF with 2 degrees of freedom, in closed form: 1/2 + t / (2 sqrt(2 + t^2))."""
    return 0.5 + t / (2 * math.sqrt(2 + t * t))


def test_the_paired_test_of_a_comparison_by_hand():
    # differences 0.3, -0.1, 0.1: mean 0.1, sd 0.2, t = 0.1 / (0.2 / sqrt 3) with 2 degrees of freedom
    t = 0.1 / (0.2 / math.sqrt(3))
    assert paired_p_value([0.5, 0.5, 0.8], [0.2, 0.6, 0.7], greater=True) == pytest.approx(1 - _t_cdf_two_dof(t))
    assert paired_p_value([0.5, 0.5, 0.8], [0.2, 0.6, 0.7], greater=False) == pytest.approx(_t_cdf_two_dof(t))
    # two pairs: 1 degree of freedom, the Cauchy distribution: differences -0.1, -0.3 give t = -2
    assert paired_p_value([0.1, 0.3], [0.2, 0.6], greater=True) == pytest.approx(0.5 - math.atan(-2) / math.pi)
    assert paired_p_value([0.5], [0.2], greater=True) is None  # one pair: nothing to test
    assert paired_p_value([0.5, 0.6], [0.4, 0.5], greater=True) is None  # identical differences: no spread


def test_a_lower_bits_per_dim_is_the_better_direction_and_thresholds_get_no_test():
    base = runs([3.0, 4.0, 5.0], [0.2, 0.6, 0.7])
    lower = runs([2.0, 3.5, 4.0], [0.2, 0.6, 0.7])  # differences -1, -0.5, -1: better bits/dim in every seed
    v = evaluate_check(Check("c", "test_bpd", better_than="base"), lower, {"base": base})
    assert v.p_value == pytest.approx(paired_p_value([2.0, 3.5, 4.0], [3.0, 4.0, 5.0], greater=False))
    assert v.p_value < 0.05 and v.shown.startswith("yes (3/3 seeds; paired t-test p = ")
    assert evaluate_check(Check("c", "auroc", "mnist", above=0.1), base, {}).p_value is None
