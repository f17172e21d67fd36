"""``report.html``: one self-contained page (images embedded) with every table and figure of an evaluation."""

from __future__ import annotations

import html
from pathlib import Path
from typing import Any

from flowood.htmlpage import figure, page
from flowood.outputs import write_text_atomic

__all__ = ["write_report"]

def _ranking(metrics: dict[str, Any]) -> list[str]:
    """Every score and detector ranked by mean AUROC, with its family and what it needs (when classifier-based
    detectors were computed beside the flow's scores)."""
    ranking = metrics.get("ranking") or []
    if not any(r["family"] == "classifier" for r in ranking):
        return []
    e = html.escape
    clf = metrics.get("classifier") or {}
    acc = clf.get("test_accuracy")
    parts = ["<h2>Flow scores and classifier-based detectors, ranked</h2>",
             f"<p class='note'>Classifier-based detectors are computed with pytorch-ood from the features the flow "
             f"models and the classifier's last layer ({e(str(clf.get('head', '–')))}, {clf.get('num_classes', '–')} "
             f"classes, in-distribution test accuracy {'–' if acc is None else f'{acc:.3f}'}).</p>",
             "<table><tr><th>rank</th><th>detector</th><th>family</th><th>needs</th><th>mean AUROC</th></tr>"]
    for i, r in enumerate(ranking, 1):
        parts.append(f"<tr><td>{i}</td><td>{e(r['detector'])}</td><td>{r['family']}</td><td>{e(r['needs'])}</td>"
                     f"<td>{r['mean_auroc']:.3f}</td></tr>")
    parts.append("</table>")
    return parts


def _benchmark(metrics: dict[str, Any]) -> list[str]:
    """OpenOOD's near/far columns for every score, beside the published rows flowood records."""
    b = metrics.get("benchmark")
    if not b:
        return []
    e = html.escape
    parts = [f"<h2>{e(b['title'])}</h2>",
             f"<p class='note'>AUROC (%) averaged over the near-OOD sets ({e(', '.join(b['near']) or '–')}) and the "
             f"far-OOD sets ({e(', '.join(b['far']) or '–')}). Source of the protocol: {e(b['source'])}.</p>",
             "<table><tr><th>detector</th><th>near-OOD</th><th>far-OOD</th></tr>"]
    for score, groups in b["scores"].items():
        cells = "".join(f"<td>{100 * groups[g]['auroc']:.2f}</td>" if g in groups else "<td>–</td>"
                        for g in ("near", "far"))
        parts.append(f"<tr><td>flowood {e(score)}</td>{cells}</tr>")
    for r in b["leaderboard"].get("rows", []):
        parts.append(f"<tr><td>{e(r['method'])} (published)</td><td>{r['near']:.2f}</td><td>{r['far']:.2f}</td></tr>")
    parts.append("</table>")
    if b["leaderboard"].get("note"):
        parts.append(f"<p class='note'>Published rows: {e(b['leaderboard']['note'])}.</p>")
    return parts


def write_report(metrics: dict[str, Any], figures: dict[str, Any], path: Path) -> Path:
    """Write the evaluation page.

    Args:
        metrics: the contents of metrics.json.
        figures: ``{"histograms": {score: png}, "roc": {ood: png}, "examples": {set: (most_png, least_png)}}``.
        path: where to write ``report.html``.
    """
    ind = metrics["in_distribution"]
    prov = metrics["provenance"]
    score_names = metrics["scores_computed"]
    e = html.escape
    parts = [f"<h1>OOD evaluation of a {e(str(prov['flow']))} trained on {e(ind['name'])}</h1>",
             f"<p class='note'>checkpoint {e(prov['checkpoint'])} "
             f"(sha256 {e((prov['checkpoint_sha256'] or '–')[:12])}…), "
             f"flowood {e(prov['flowood_version'])}, torch {e(prov['torch_version'])}, device {e(prov['device'])}, "
             f"seed {prov['seed']}. Scores: higher = more anomalous; OOD is the positive class; AUROC 0.5 is chance, "
             "below 0.5 the score prefers the OOD set.</p>",
             "<h2>AUROC of every score</h2><table><tr><th>OOD set (n)</th>"]
    parts += [f"<th>{e(s)}</th>" for s in score_names]
    parts.append("</tr>")
    for name, entry in metrics["ood"].items():
        aurocs = {s: entry["scores"][s]["auroc"] for s in score_names if s in entry["scores"]}
        best = max(aurocs, key=aurocs.get) if aurocs else None
        cells = []
        for s in score_names:
            if s not in aurocs:
                cells.append("<td>–</td>")
                continue
            cls = "best" if s == best else ("bad" if aurocs[s] < 0.5 else "")
            cells.append(f"<td class='{cls}'>{aurocs[s]:.3f}</td>")
        parts.append(f"<tr><td>{e(name)} ({entry['n']})</td>{''.join(cells)}</tr>")
    parts.append("</table>")
    parts += _ranking(metrics)
    parts += _benchmark(metrics)
    parts.append("<h2>Likelihood (bits/dim)</h2><table><tr><th>set</th><th>n</th><th>bits/dim mean ± sd</th>"
                 "<th>AUROC</th><th>AUPR in</th><th>AUPR out</th><th>FPR@95%TPR</th><th>detection acc.</th></tr>")
    parts.append(f"<tr><td>{e(ind['name'])} (in-dist, test)</td><td>{ind['n']}</td>"
                 f"<td>{ind['bpd_mean']:.3f} ± {ind['bpd_std']:.3f}</td>" + "<td>–</td>" * 5 + "</tr>")
    for name, m in metrics["ood"].items():
        parts.append(f"<tr><td>{e(name)}</td><td>{m['n']}</td><td>{m['bpd_mean']:.3f} ± {m['bpd_std']:.3f}</td>"
                     f"<td>{m['auroc']:.3f}</td><td>{m['aupr_in']:.3f}</td><td>{m['aupr_out']:.3f}</td>"
                     f"<td>{m['fpr95']:.3f}</td><td>{m['detection_accuracy']:.3f}</td></tr>")
    parts.append("</table><h2>Score distributions</h2>")
    parts += [figure(png, score) for score, png in figures["histograms"].items()]
    parts.append("<h2>ROC curves</h2>")
    parts += [figure(png, f"ROC {name}") for name, png in figures["roc"].items()]
    parts.append("<h2>Most and least in-distribution inputs of each set (by likelihood)</h2>")
    for name, (most, least) in figures["examples"].items():
        parts.append(f"<h3>{e(name)}</h3>" + figure(most, f"{name}: highest likelihood")
                     + figure(least, f"{name}: lowest likelihood"))
    write_text_atomic(path, page(f"flowood evaluation: {ind['name']}", parts))
    return path
