"""``flowood compare``: several evaluations (a pixel flow, an embedding flow with classifier-based detectors,
each over seeds) in one ranking of every detector on every OOD set they share.

Each group is one model family evaluated once per seed (``flowood evaluate`` output folders). Sets are
matched by the data set behind them, so ``mnist`` scored by a pixel flow and ``npz:.../emb-mnist.npz``
(MNIST through the classifier) are the same row. Every metric is shown as mean ± sd over the group's runs
(sd with ddof = 1), or with the bootstrap interval of a single run when it has one.
"""

from __future__ import annotations

import contextlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from flowood import __version__
from flowood.errors import DataError
from flowood.evaluation.embeddings import embeddings_meta
from flowood.ood.classifier import CLASSIFIER_DETECTORS
from flowood.outputs import open_output_folder, write_text_atomic

__all__ = ["compare", "ComparisonResult", "load_evaluation", "comparison_table", "comparison_markdown"]

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


def load_evaluation(path: str | Path) -> dict[str, Any]:
    """The metrics.json of an evaluation folder (or the file itself)."""
    path = Path(path).expanduser()
    file = path / "metrics.json" if path.is_dir() else path
    if not file.is_file():
        raise DataError(f"{path} holds no metrics.json: pass folders written by `flowood evaluate`")
    try:
        metrics = json.loads(file.read_text())
    except json.JSONDecodeError as err:
        raise DataError(f"{file} is not valid JSON ({err}); evaluate again") from err
    if "ood" not in metrics or "in_distribution" not in metrics:
        raise DataError(f"{file} is not a flowood evaluation (no 'ood' or 'in_distribution')")
    return metrics


def _dataset(name: str, info: dict[str, Any]) -> str:
    """The data set behind a scored set: itself, or the images an embeddings file was computed from."""
    return info.get("dataset") or embeddings_meta(name).get("dataset", name)


def _stat(values: list[float], ci: list[float] | None) -> dict[str, Any]:
    arr = np.asarray(values, dtype=float)
    out: dict[str, Any] = {"mean": float(arr.mean()), "sd": float(arr.std(ddof=1)) if len(arr) > 1 else None,
                           "runs": len(arr)}
    if len(arr) == 1 and ci is not None:
        out["ci"] = ci
    return out


def _group_rows(label: str, runs: list[dict[str, Any]]) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """One row per score of a group (scores every run computed), metrics over runs per OOD data set."""
    scores = [s for s in runs[0]["scores_computed"] if all(s in m["scores_computed"] for m in runs)]
    per_set: list[dict[str, dict[str, Any]]] = [
        {_dataset(n, e): e for n, e in m["ood"].items()} for m in runs]
    sets = [s for s in per_set[0] if all(s in p for p in per_set)]
    rows = []
    for score in scores:
        info = CLASSIFIER_DETECTORS.get(score)
        row: dict[str, Any] = {"detector": f"{label}: {score}", "group": label, "score": score,
                               "family": "classifier" if info else "flow",
                               "needs": info.needs if info else "the flow only (no labels, no classifier)", "ood": {}}
        for s in sets:
            entries = [p[s]["scores"][score] for p in per_set]
            row["ood"][s] = {m: _stat([e[m] for e in entries], entries[0].get(f"{m}_ci")) for m in COMPARED_METRICS}
        rows.append(row)
    accuracies = [m["classifier"]["test_accuracy"] for m in runs
                  if m.get("classifier", {}).get("test_accuracy") is not None]
    group = {"runs": len(runs), "scores": scores, "ood_sets": sets,
             "in_distribution": _dataset(runs[0]["in_distribution"]["name"], runs[0]["in_distribution"]),
             "classifier_test_accuracy": _stat(accuracies, None) if accuracies else None}
    return rows, group


def _summary(groups: dict[str, list[dict[str, Any]]]) -> dict[str, Any]:
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


def comparison_table(summary: dict[str, Any], metric: str = "auroc") -> tuple[list[str], list[list[str]]]:
    """Every detector (ranked by mean AUROC) against every shared OOD set, for one metric: ``(head, rows)``."""
    sets = summary["ood_sets"]
    rows = [[str(i), r["detector"], r["family"], r["needs"], *(_cell(r["ood"][s][metric]) for s in sets)]
            for i, r in enumerate(summary["rows"], 1)]
    return ["rank", "detector", "family", "needs", *sets], rows


def _groups_table(summary: dict[str, Any]) -> tuple[list[str], list[list[str]]]:
    rows = [[label, str(g["runs"]), _cell(g["classifier_test_accuracy"]) if g["classifier_test_accuracy"] else "–"]
            for label, g in summary["groups"].items()]
    return ["group", "runs", "classifier test accuracy"], rows


def _markdown_table(head: list[str], rows: list[list[str]], text: tuple[int, ...]) -> str:
    """Markdown with the ``text`` columns left-aligned, the others (numbers) right-aligned."""
    rule = "|" + "".join("---|" if i in text else "---:|" for i in range(len(head)))
    return "\n".join(["| " + " | ".join(head) + " |", rule] + ["| " + " | ".join(r) + " |" for r in rows])


def comparison_markdown(summary: dict[str, Any], metric: str = "auroc") -> str:
    """:func:`comparison_table` as Markdown."""
    return _markdown_table(*comparison_table(summary, metric), text=(1, 2, 3))


def _groups_markdown(summary: dict[str, Any]) -> str:
    return _markdown_table(*_groups_table(summary), text=(0,))


def _markdown(summary: dict[str, Any]) -> str:
    parts = [f"# Detectors compared on {summary['in_distribution']} (in-distribution)", "",
             "Scores are oriented so that higher means more anomalous; OOD is the positive class. Each cell is the "
             "mean ± sd over a group's runs (seeds).", "", _groups_markdown(summary)]
    titles = {"auroc": "AUROC (higher is better)", "aupr_in": "AUPR, in-distribution positive",
              "aupr_out": "AUPR, OOD positive", "fpr95": "FPR at 95% TPR (lower is better)"}
    for metric in COMPARED_METRICS:
        parts += ["", f"## {titles[metric]}", "", comparison_markdown(summary, metric)]
    return "\n".join(parts) + "\n"


def _figure(summary: dict[str, Any], path: Path) -> Path:
    """Grouped horizontal bars: AUROC (mean, sd as error bars) of every detector on every shared OOD set."""
    from flowood.evaluation.figures import _pyplot
    from flowood.outputs import save_figure

    plt = _pyplot()
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
    import html

    from flowood.htmlpage import figure, html_table, page

    e = html.escape
    parts = [f"<h1>Detectors compared on {e(summary['in_distribution'])}</h1>",
             "<p class='note'>Higher scores mean more anomalous; OOD is the positive class; mean ± sd over each "
             "group's runs.</p>", html_table(*_groups_table(summary)), figure(figure_path, "AUROC of every detector")]
    for metric, title in (("auroc", "AUROC"), ("fpr95", "FPR at 95% TPR"), ("aupr_in", "AUPR in"),
                          ("aupr_out", "AUPR out")):
        parts += [f"<h2>{title}</h2>", html_table(*comparison_table(summary, metric))]
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
    loaded = {label: [load_evaluation(p) for p in runs] for label, runs in groups.items()}
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
