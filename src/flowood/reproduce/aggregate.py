"""An experiment's numbers over its seeds: each metric as mean ± sample standard deviation (with the value of
every seed kept), and the paper's claims checked on the means and seed by seed.

An experiment run with ``seeds=N`` has N runs; each is described by its ``status.json`` (a *state*: its stages
and their numbers). The functions here take the list of an experiment's states, in seed order.

The rule for a claim over seeds: it **holds** when it holds for the means (this experiment's mean against the
threshold, or against the mean of the experiment it is compared with); the seeds that satisfy it on their own
numbers are counted beside the verdict ("yes (2/3 seeds)"), seed k of one experiment being compared with seed k
of the other.

Example:
    >>> s = Spread({0: 1.0, 1: 2.0, 2: 3.0})
    >>> s.mean, s.sd, s.text()
    (2.0, 1.0, '2.000 ± 1.000')
    >>> Spread({0: 0.25}).text()
    '0.250'
"""

from __future__ import annotations

import statistics
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from flowood.data import parse_name
from flowood.reproduce.experiments import Check

__all__ = ["Spread", "Verdict", "spread", "metric_value", "metric_spread", "evaluate_check", "overall_status",
           "ood_names", "ood_entry", "short_name"]

State = dict[str, Any]


@dataclass(frozen=True)
class Spread:
    """One metric over seeds.

    Attributes:
        values: the value of each seed that has one (seed -> value), in seed order.
    """

    values: dict[int, float]

    @property
    def n(self) -> int:
        """How many seeds have a value."""
        return len(self.values)

    @property
    def mean(self) -> float:
        """The mean over the seeds."""
        return statistics.fmean(self.values.values())

    @property
    def sd(self) -> float | None:
        """The sample standard deviation (ddof=1) over the seeds; None for one seed."""
        return statistics.stdev(self.values.values()) if self.n > 1 else None

    def text(self, digits: int = 3) -> str:
        """``mean ± sd`` (just the value for one seed)."""
        shown = f"{self.mean:.{digits}f}"
        return shown if self.sd is None else f"{shown} ± {self.sd:.{digits}f}"

    def as_dict(self) -> dict[str, Any]:
        """For ``results.json``: mean, sd (None for one seed), n and the value of each seed."""
        return {"mean": self.mean, "sd": self.sd, "n": self.n, "values": {str(k): v for k, v in self.values.items()}}


def spread(values: Mapping[int, float | None]) -> Spread | None:
    """The :class:`Spread` of the seeds that have a value; None if none has."""
    kept = {seed: float(v) for seed, v in values.items() if v is not None}
    return Spread(kept) if kept else None


def short_name(name: str) -> str:
    """An OOD set's name as shown: an ``npz:`` file by its stem, an embedded set (``npz:.../emb-mnist.npz``, as
    the runner writes them) by the set's name (``mnist``)."""
    parsed = parse_name(name)
    if parsed.prefix != "npz":
        return name
    stem = parsed.path.stem
    return stem.removeprefix("emb-")


def _evaluated(state: State) -> dict[str, Any]:
    return (state.get("stages") or {}).get("evaluate") or {}


def ood_entry(state: State, ood: str | None) -> dict[str, Any] | None:
    """One run's evaluation of the OOD set ``ood`` (by its name, or the shown name of :func:`short_name`)."""
    found = _evaluated(state).get("ood", {})
    if ood in found:
        return found[ood]
    for key, value in found.items():  # embeddings: npz:.../emb-mnist.npz stands for mnist
        if key.endswith(f"-{ood}.npz") or short_name(key) == ood:
            return value
    return None


def metric_value(state: State, metric: str, ood: str | None = None, score: str | None = None) -> float | None:
    """``auroc`` / ``ood_bpd`` of an OOD set, or ``test_bpd``, from one run's status; None if not run.

    ``score`` picks the AUROC of another score than the likelihood (``auroc`` only).
    """
    ev = _evaluated(state)
    if not ev:
        return None
    if metric == "test_bpd":
        return float(ev["test_bpd"])
    entry = ood_entry(state, ood)
    if entry is None:
        return None
    if score is not None:
        value = entry.get("scores", {}).get(score)
        return None if value is None else float(value)
    return float(entry["auroc"] if metric == "auroc" else entry["bpd"])


def _seed(state: State, k: int) -> int:
    return int(state.get("seed", k))


def metric_spread(runs: Sequence[State], metric: str, ood: str | None = None,
                  score: str | None = None) -> Spread | None:
    """A metric (as :func:`metric_value`) over an experiment's runs; None if no run has it."""
    return spread({_seed(s, k): metric_value(s, metric, ood, score) for k, s in enumerate(runs)})


def ood_names(runs: Sequence[State]) -> list[str]:
    """The OOD sets evaluated in any run, in the order the runs list them, by their shown names (each seed's
    embeddings of MNIST, ``npz:.../seedS/emb-mnist.npz``, are one set: ``mnist``)."""
    names: list[str] = []
    for state in runs:
        for name in map(short_name, _evaluated(state).get("ood", {})):
            if name not in names:
                names.append(name)
    return names


@dataclass
class Verdict:
    """A claim checked on an experiment's seeds.

    Attributes:
        verdict: ``yes`` / ``no`` on the means, or ``not run``.
        text: our numbers, as shown on the results page.
        seeds_holding: the seeds whose own numbers satisfy the claim.
        seeds_decided: the seeds whose numbers (and the compared experiment's) exist.
        seeds: how many seeds the experiment has.
        p_value: for a comparison with another experiment over two or more paired seeds (seed k with seed k), the
            one-sided paired t-test's p-value for the claimed direction; None otherwise.
    """

    verdict: str
    text: str
    seeds_holding: int = 0
    seeds_decided: int = 0
    seeds: int = 1
    p_value: float | None = None

    @property
    def shown(self) -> str:
        """The verdict as the results page shows it: with the seed count when there are several seeds, and the
        paired test's p-value for a comparison."""
        if self.seeds <= 1 or self.verdict == "not run":
            return self.verdict
        missing = self.seeds - self.seeds_decided
        return (f"{self.verdict} ({self.seeds_holding}/{self.seeds_decided} seeds"
                + (f"; {missing} not run" if missing else "")
                + (f"; paired t-test p = {self.p_value:.3g}" if self.p_value is not None else "") + ")")


def paired_p_value(mine: Sequence[float], theirs: Sequence[float], greater: bool) -> float | None:
    """The one-sided paired t-test's p-value that ``mine`` exceeds ``theirs`` (``greater``) or falls below it, pair
    by pair (scipy's ``ttest_rel``); None with fewer than two pairs or identical differences (no spread to test)."""
    from scipy.stats import ttest_rel

    differences = [a - b for a, b in zip(mine, theirs, strict=True)]
    if len(differences) < 2 or len(set(differences)) < 2:
        return None
    return float(ttest_rel(mine, theirs, alternative="greater" if greater else "less").pvalue)


def _holds(check: Check, value: float, reference: dict[str, float]) -> bool:
    """Whether ``value`` (and the compared experiments' values in ``reference``) satisfy ``check``."""
    higher_is_better = check.metric == "auroc"
    verdicts = []
    if check.below is not None:
        verdicts.append(value < check.below)
    if check.above is not None:
        verdicts.append(value > check.above)
    for other, want_better in ((check.better_than, True), (check.worse_than, False)):
        if other is not None:
            better = value > reference[other] if higher_is_better else value < reference[other]
            verdicts.append(better if want_better else not better)
    return all(verdicts)


def _compared(check: Check) -> list[str]:
    return [o for o in (check.better_than, check.worse_than) if o is not None]


def _check_text(check: Check, mine: Spread, others: dict[str, Spread | None]) -> str:
    text = f"{check.metric}" + (f" ({short_name(check.ood)})" if check.ood else "") + f" = {mine.text()}"
    if check.below is not None:
        text += f" (< {check.below}?)"
    if check.above is not None:
        text += f" (> {check.above}?)"
    for other in _compared(check):
        ref = others[other]
        text += f" vs {ref.text()} for {other}" if ref is not None else f"; {other} not run"
    return text


def _as_runs(runs: State | Sequence[State]) -> list[State]:
    return [runs] if isinstance(runs, dict) else list(runs)


def evaluate_check(check: Check, runs: State | Sequence[State],
                   all_runs: Mapping[str, State | Sequence[State]]) -> Verdict:
    """Check one claim on an experiment's runs (``all_runs``: every experiment's runs, for comparisons).

    A single status (one seed) is accepted for ``runs`` and for the values of ``all_runs`` too.
    """
    runs = _as_runs(runs)
    others = {o: _as_runs(all_runs.get(o, [])) for o in _compared(check)}
    mine = metric_spread(runs, check.metric, check.ood)
    if mine is None:
        return Verdict("not run", "–", seeds=len(runs))
    spreads = {o: metric_spread(r, check.metric, check.ood) for o, r in others.items()}
    text = _check_text(check, mine, spreads)
    if any(s is None for s in spreads.values()):
        return Verdict("not run", text, seeds=len(runs))
    on_means = _holds(check, mine.mean, {o: s.mean for o, s in spreads.items()})
    holding = decided = 0
    pairs: list[tuple[float, float]] = []
    for k, state in enumerate(runs):
        value = metric_value(state, check.metric, check.ood)
        refs = {o: metric_value(r[k], check.metric, check.ood) if k < len(r) else None for o, r in others.items()}
        if value is None or any(v is None for v in refs.values()):
            continue
        decided += 1
        holding += int(_holds(check, value, {o: float(v) for o, v in refs.items() if v is not None}))
        if len(refs) == 1:
            pairs.append((float(value), float(next(iter(refs.values())))))
    return Verdict("yes" if on_means else "no", text, holding, decided, len(runs), _comparison_p_value(check, pairs))


def _comparison_p_value(check: Check, pairs: list[tuple[float, float]]) -> float | None:
    """The paired test of a claim comparing this experiment with one other, in the claim's direction."""
    if len(_compared(check)) != 1 or not pairs:
        return None
    better = check.better_than is not None
    greater = better == (check.metric == "auroc")  # a better AUROC is higher, a better bits/dim lower
    return paired_p_value([a for a, _ in pairs], [b for _, b in pairs], greater)


def overall_status(runs: Sequence[State]) -> str:
    """An experiment's status from its seeds': theirs if they agree, ``failed`` if one failed, else the counts."""
    statuses = [s.get("status", "not run") for s in runs] or ["not run"]
    if len(set(statuses)) == 1:
        return statuses[0]
    if "failed" in statuses:
        return "failed"
    return ", ".join(f"{statuses.count(s)} {s}" for s in dict.fromkeys(statuses))
