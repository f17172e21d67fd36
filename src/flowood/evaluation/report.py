"""``report.html``: one self-contained page (images embedded) with every table and figure of an evaluation."""

from __future__ import annotations

import html
from pathlib import Path
from typing import Any

from flowood.evaluation.metrics_file import Benchmark, Metrics
from flowood.htmlpage import figure, page
from flowood.outputs import write_text_atomic
from flowood.tables import Cell, Table

__all__ = ["write_report", "ranking_rows", "benchmark_rows", "score_aurocs", "likelihood_rows"]


def ranking_rows(metrics: Metrics) -> Table:
    """Every score and detector ranked by mean AUROC, with its family and what it needs."""
    rows = [[str(i), r.detector, r.family, r.needs, f"{r.mean_auroc:.3f}"] for i, r in enumerate(metrics.ranking, 1)]
    return Table(["rank", "detector", "family", "needs", "mean AUROC"], rows, align="rlllr")


def benchmark_rows(benchmark: Benchmark) -> Table:
    """AUROC (%) of every score averaged over the near-OOD and far-OOD sets, and the published rows."""
    rows = [[f"flowood {score}", *(f"{100 * groups[g].auroc:.2f}" if g in groups else "–" for g in ("near", "far"))]
            for score, groups in benchmark.scores.items()]
    rows += [[f"{r.method} (published)", f"{r.near:.2f}", f"{r.far:.2f}"] for r in benchmark.leaderboard.rows or []]
    return Table(["detector", "near-OOD", "far-OOD"], rows)


def score_aurocs(metrics: Metrics) -> Table:
    """AUROC of every score on every OOD set, the best of each set marked ``best``, those below 0.5 ``bad``."""
    names = metrics.scores_computed
    rows = []
    for name, entry in metrics.ood.items():
        aurocs = {s: entry.scores[s].auroc for s in names if s in entry.scores}
        best = max(aurocs, key=aurocs.__getitem__) if aurocs else None
        cells: list[str | Cell] = [f"{name} ({entry.n})"]
        for s in names:
            if s not in aurocs:
                cells.append("–")
                continue
            cells.append(Cell(f"{aurocs[s]:.3f}", "best" if s == best else ("bad" if aurocs[s] < 0.5 else "")))
        rows.append(cells)
    return Table(["OOD set (n)", *names], rows)


def likelihood_rows(metrics: Metrics) -> Table:
    """Bits/dim of every set and the likelihood's metrics against each OOD set."""
    ind = metrics.in_distribution
    rows = [[f"{ind.name} (in-dist, test)", str(ind.n), f"{ind.bpd_mean:.3f} ± {ind.bpd_std:.3f}", *["–"] * 5]]
    rows += [[name, str(m.n), f"{m.bpd_mean:.3f} ± {m.bpd_std:.3f}", f"{m.auroc:.3f}", f"{m.aupr_in:.3f}",
              f"{m.aupr_out:.3f}", f"{m.fpr95:.3f}", f"{m.detection_accuracy:.3f}"] for name, m in metrics.ood.items()]
    return Table(["set", "n", "bits/dim mean ± sd", "AUROC", "AUPR in", "AUPR out", "FPR@95%TPR", "detection acc."],
                 rows)


def _ranking(metrics: Metrics) -> list[str]:
    """The ranking with the classifier's description (when classifier-based detectors were computed beside the
    flow's scores)."""
    clf = metrics.classifier
    if clf is None or not any(r.family == "classifier" for r in metrics.ranking):
        return []
    acc = "–" if clf.test_accuracy is None else f"{clf.test_accuracy:.3f}"
    return ["<h2>Flow scores and classifier-based detectors, ranked</h2>",
            f"<p class='note'>Classifier-based detectors are computed with pytorch-ood from the features the flow "
            f"models and the classifier's last layer ({html.escape(clf.head)}, {clf.num_classes} classes, "
            f"in-distribution test accuracy {acc}).</p>", ranking_rows(metrics).html()]


def _benchmark(metrics: Metrics) -> list[str]:
    """OpenOOD's near/far columns for every score, beside the published rows flowood records."""
    b = metrics.benchmark
    if b is None:
        return []
    e = html.escape
    parts = [f"<h2>{e(b.title)}</h2>",
             f"<p class='note'>AUROC (%) averaged over the near-OOD sets ({e(', '.join(b.near) or '–')}) and the "
             f"far-OOD sets ({e(', '.join(b.far) or '–')}). Source of the protocol: {e(b.source)}.</p>",
             benchmark_rows(b).html()]
    if b.leaderboard.note:
        parts.append(f"<p class='note'>Published rows: {e(b.leaderboard.note)}.</p>")
    return parts


def write_report(metrics: Metrics, figures: dict[str, Any], path: Path) -> Path:
    """Write the evaluation page.

    Args:
        metrics: the evaluation's metrics.
        figures: ``{"histograms": {score: png}, "roc": {ood: png}, "examples": {set: (most_png, least_png)}}``.
        path: where to write ``report.html``.
    """
    ind, prov = metrics.in_distribution, metrics.provenance
    e = html.escape
    parts = [f"<h1>OOD evaluation of a {e(str(prov.flow))} trained on {e(ind.name)}</h1>",
             f"<p class='note'>checkpoint {e(prov.checkpoint)} "
             f"(sha256 {e((prov.checkpoint_sha256 or '–')[:12])}…), "
             f"flowood {e(prov.flowood_version)}, torch {e(prov.torch_version)}, device {e(prov.device)}, "
             f"seed {prov.seed}. Scores: higher = more anomalous; OOD is the positive class; AUROC 0.5 is chance, "
             "below 0.5 the score prefers the OOD set.</p>",
             "<h2>AUROC of every score</h2>", score_aurocs(metrics).html()]
    parts += _ranking(metrics)
    parts += _benchmark(metrics)
    parts += ["<h2>Likelihood (bits/dim)</h2>", likelihood_rows(metrics).html()]
    parts.append("<h2>Score distributions</h2>")
    parts += [figure(png, score) for score, png in figures["histograms"].items()]
    parts.append("<h2>ROC curves</h2>")
    parts += [figure(png, f"ROC {name}") for name, png in figures["roc"].items()]
    parts.append("<h2>Most and least in-distribution inputs of each set (by likelihood)</h2>")
    for name, (most, least) in figures["examples"].items():
        parts.append(f"<h3>{e(name)}</h3>" + figure(most, f"{name}: highest likelihood")
                     + figure(least, f"{name}: lowest likelihood"))
    write_text_atomic(path, page(f"flowood evaluation: {ind.name}", parts))
    return path
