"""``flowood compare``: several evaluations (a pixel flow, an embedding flow with classifier-based detectors,
each over seeds) in one ranking of every detector on every OOD set they share.

Each group is one model family evaluated once per seed (``flowood evaluate`` output folders). Sets are
matched by the data set behind them, so ``mnist`` scored by a pixel flow and ``npz:.../emb-mnist.npz``
(MNIST through the classifier) are the same row. Every metric is shown as mean ± sd over the group's runs
(sd with ddof = 1), or with the bootstrap interval of a single run when it has one.
"""

from __future__ import annotations

import contextlib
import html
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from flowood import __version__
from flowood.errors import DataError
from flowood.evaluation.embeddings import embeddings_meta
from flowood.evaluation.figures import pyplot
from flowood.evaluation.metrics_file import Metrics
from flowood.htmlpage import figure, page
from flowood.ood.classifier import CLASSIFIER_DETECTORS
from flowood.outputs import open_output_folder, save_figure, write_text_atomic
from flowood.tables import Table

__all__ = ["compare", "ComparisonResult", "comparison_table", "comparison_markdown"]

COMPARED_METRICS = ("auroc", "aupr_in", "aupr_out", "fpr95")


@dataclass
class ComparisonResult:
    """What :func:`compare` produced.

    Attributes:
        summary: the contents of compare.json (``rows``, ``ood_sets``, ``groups``, ``in_distribution``).
        out: the output folder, if one was written.
    """

    summary: dict[str, Any]
    out: Path | None


def _stat(values: list[float], ci: list[float] | None) -> dict[str, Any]:
    arr = np.asarray(values, dtype=float)
    out: dict[str, Any] = {"mean": float(arr.mean()), "sd": float(arr.std(ddof=1)) if len(arr) > 1 else None,
                           "runs": len(arr)}
    if len(arr) == 1 and ci is not None:
        out["ci"] = ci
    return out


def _group_rows(label: str, runs: list[Metrics]) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """One row per score of a group (scores every run computed), metrics over runs per OOD data set; sets are keyed
    by the data set behind them."""
    scores = [s for s in runs[0].scores_computed if all(s in m.scores_computed for m in runs)]
    per_set = [{e.dataset or embeddings_meta(n).get("dataset", n): e for n, e in m.ood.items()} for m in runs]
    sets = [s for s in per_set[0] if all(s in p for p in per_set)]
    rows = []
    for score in scores:
        info = CLASSIFIER_DETECTORS.get(score)
        row: dict[str, Any] = {"detector": f"{label}: {score}", "group": label, "score": score,
                               "family": "classifier" if info else "flow",
                               "needs": info.needs if info else "the flow only (no labels, no classifier)", "ood": {}}
        for s in sets:
            entries = [p[s].scores[score] for p in per_set]
            row["ood"][s] = {m: _stat([getattr(e, m) for e in entries], entries[0].interval(m))
                             for m in COMPARED_METRICS}
        rows.append(row)
    accuracies = [m.classifier.test_accuracy for m in runs
                  if m.classifier is not None and m.classifier.test_accuracy is not None]
    group = {"runs": len(runs), "scores": scores, "ood_sets": sets, "in_distribution": runs[0].in_distribution.dataset,
             "classifier_test_accuracy": _stat(accuracies, None) if accuracies else None}
    return rows, group


def _summary(groups: dict[str, list[Metrics]]) -> dict[str, Any]:
    rows, info = [], {}
    for label, runs in groups.items():
        group_rows, info[label] = _group_rows(label, runs)
        rows += group_rows
    ind = {g["in_distribution"] for g in info.values()}
    if len(ind) != 1:
        raise DataError(f"the evaluations have different in-distribution data ({', '.join(sorted(ind))}); compare "
                        "models trained on the same data")
    shared = [s for s in next(iter(info.values()))["ood_sets"] if all(s in g["ood_sets"] for g in info.values())]
    if not shared:
        raise DataError("the evaluations share no OOD data set; evaluate them against the same sets")
    for row in rows:
        row["ood"] = {s: row["ood"][s] for s in shared}
        row["mean_auroc"] = float(np.mean([row["ood"][s]["auroc"]["mean"] for s in shared]))
    rows.sort(key=lambda r: -r["mean_auroc"])
    return {"in_distribution": ind.pop(), "ood_sets": shared, "groups": info, "rows": rows,
            "flowood_version": __version__}


def _cell(stat: dict[str, Any]) -> str:
    if stat.get("sd") is not None:
        return f"{stat['mean']:.3f} ± {stat['sd']:.3f}"
    if stat.get("ci"):
        return f"{stat['mean']:.3f} [{stat['ci'][0]:.3f}, {stat['ci'][1]:.3f}]"
    return f"{stat['mean']:.3f}"


def comparison_table(summary: dict[str, Any], metric: str = "auroc") -> Table:
    """Every detector (ranked by mean AUROC) against every shared OOD set, for one metric."""
    sets = summary["ood_sets"]
    rows = [[str(i), r["detector"], r["family"], r["needs"], *(_cell(r["ood"][s][metric]) for s in sets)]
            for i, r in enumerate(summary["rows"], 1)]
    return Table(["rank", "detector", "family", "needs", *sets], rows, align="rlll" + "r" * len(sets))


def _groups_table(summary: dict[str, Any]) -> Table:
    rows = [[label, str(g["runs"]), _cell(g["classifier_test_accuracy"]) if g["classifier_test_accuracy"] else "–"]
            for label, g in summary["groups"].items()]
    return Table(["group", "runs", "classifier test accuracy"], rows)


def comparison_markdown(summary: dict[str, Any], metric: str = "auroc") -> str:
    """:func:`comparison_table` as Markdown."""
    return comparison_table(summary, metric).markdown()


def _markdown(summary: dict[str, Any]) -> str:
    parts = [f"# Detectors compared on {summary['in_distribution']} (in-distribution)", "",
             "Scores are oriented so that higher means more anomalous; OOD is the positive class. Each cell is the "
             "mean ± sd over a group's runs (seeds).", "", _groups_table(summary).markdown()]
    titles = {"auroc": "AUROC (higher is better)", "aupr_in": "AUPR, in-distribution positive",
              "aupr_out": "AUPR, OOD positive", "fpr95": "FPR at 95% TPR (lower is better)"}
    for metric in COMPARED_METRICS:
        parts += ["", f"## {titles[metric]}", "", comparison_markdown(summary, metric)]
    return "\n".join(parts) + "\n"


def _figure(summary: dict[str, Any], path: Path) -> Path:
    """Grouped horizontal bars: AUROC (mean, sd as error bars) of every detector on every shared OOD set."""
    plt = pyplot()
    rows, sets = summary["rows"], summary["ood_sets"]
    fig, ax = plt.subplots(figsize=(8, 0.3 * len(rows) * len(sets) + 1.5))
    height = 0.8 / len(sets)
    for j, s in enumerate(sets):
        means = [r["ood"][s]["auroc"]["mean"] for r in rows]
        sds = [r["ood"][s]["auroc"]["sd"] or 0.0 for r in rows]
        ax.barh(np.arange(len(rows)) + j * height, means, height, xerr=sds, label=s)
    ax.set_yticks(np.arange(len(rows)) + 0.4 - height / 2, [r["detector"] for r in rows])
    ax.invert_yaxis()
    ax.axvline(0.5, color="grey", lw=0.8, ls="--")
    ax.set_xlim(0, 1)
    ax.set_xlabel("AUROC (OOD positive; 0.5 = chance)")
    ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1.0), title="OOD set")
    fig.tight_layout()
    save_figure(fig, path, dpi=110)
    plt.close(fig)
    return path


def _report(summary: dict[str, Any], figure_path: Path, path: Path) -> None:
    parts = [f"<h1>Detectors compared on {html.escape(summary['in_distribution'])}</h1>",
             "<p class='note'>Higher scores mean more anomalous; OOD is the positive class; mean ± sd over each "
             "group's runs.</p>", _groups_table(summary).html(), figure(figure_path, "AUROC of every detector")]
    for metric, title in (("auroc", "AUROC"), ("fpr95", "FPR at 95% TPR"), ("aupr_in", "AUPR in"),
                          ("aupr_out", "AUPR out")):
        parts += [f"<h2>{title}</h2>", comparison_table(summary, metric).html()]
    write_text_atomic(path, page(f"flowood compare: {summary['in_distribution']}", parts))


def compare(groups: dict[str, list[str | Path]], out: str | Path | None = None, *, overwrite: bool = False
            ) -> ComparisonResult:
    """Rank every detector of several evaluations on the OOD sets they share.

    Args:
        groups: label -> evaluation folders (one per seed), e.g. ``{"pixel flow": [...], "embeddings": [...]}``.
        out: folder for compare.json, compare.md, auroc.png and report.html (None: write nothing).
        overwrite: replace an earlier comparison in ``out``.

    Returns:
        :class:`ComparisonResult`.

    Raises:
        DataError: a folder without an evaluation, different in-distribution data, or no shared OOD set.
    """
    if not groups or any(not runs for runs in groups.values()):
        raise DataError("give every group at least one evaluation folder")
    loaded = {label: [Metrics.from_json(p) for p in runs] for label, runs in groups.items()}
    summary = _summary(loaded)
    summary["inputs"] = {label: [str(p) for p in runs] for label, runs in groups.items()}
    inputs = [p for runs in groups.values() for p in runs]
    folder = open_output_folder(out, "compare", inputs, overwrite=overwrite) if out is not None else None
    with folder or contextlib.nullcontext():
        if folder is not None:
            write_text_atomic(folder.path / "compare.json", json.dumps(summary, indent=2))
            write_text_atomic(folder.path / "compare.md", _markdown(summary))
            _report(summary, _figure(summary, folder.path / "auroc.png"), folder.path / "report.html")
    return ComparisonResult(summary, folder.path if folder is not None else None)
