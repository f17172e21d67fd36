"""``results.md`` and ``results.html`` of a reproduction: our numbers, the paper's where it gives them,
and each of the paper's claims marked reproduced or not on our numbers."""

from __future__ import annotations

import html
import time
from pathlib import Path
from typing import Any

from flowood import __version__
from flowood.htmlpage import figure, page
from flowood.outputs import write_text_atomic
from flowood.reproduce.experiments import Check, Experiment

__all__ = ["write_results", "metric_value", "evaluate_check"]

Table = tuple[list[str], list[list[str]]]


def _ood_entry(state: dict[str, Any], ood: str | None) -> dict[str, Any] | None:
    found = (state.get("stages", {}).get("evaluate") or {}).get("ood", {})
    if ood in found:
        return found[ood]
    for key, value in found.items():  # embeddings: npz:.../emb-mnist.npz stands for mnist
        if key.endswith(f"-{ood}.npz"):
            return value
    return None


def metric_value(state: dict[str, Any], metric: str, ood: str | None = None) -> float | None:
    """``auroc`` / ``ood_bpd`` of an OOD set, or ``test_bpd``, from an experiment's status; None if not run."""
    ev = state.get("stages", {}).get("evaluate")
    if not ev:
        return None
    if metric == "test_bpd":
        return float(ev["test_bpd"])
    entry = _ood_entry(state, ood)
    if entry is None:
        return None
    return float(entry["auroc"] if metric == "auroc" else entry["bpd"])


def evaluate_check(check: Check, state: dict[str, Any], states: dict[str, dict[str, Any]]) -> tuple[str, str]:
    """``(verdict, our numbers)``; verdict is ``yes``, ``no`` or ``not run``."""
    value = metric_value(state, check.metric, check.ood)
    label = f"{check.metric}" + (f" ({check.ood})" if check.ood else "")
    if value is None:
        return "not run", "–"
    text = f"{label} = {value:.3f}"
    higher_is_better = check.metric == "auroc"
    verdicts = []
    if check.below is not None:
        verdicts.append(value < check.below)
        text += f" (< {check.below}?)"
    if check.above is not None:
        verdicts.append(value > check.above)
        text += f" (> {check.above}?)"
    for other, want_better in ((check.better_than, True), (check.worse_than, False)):
        if other is None:
            continue
        ref = metric_value(states.get(other, {}), check.metric, check.ood)
        if ref is None:
            return "not run", text + f"; {other} not run"
        better = value > ref if higher_is_better else value < ref
        verdicts.append(better if want_better else not better)
        text += f" vs {ref:.3f} for {other}"
    return ("yes" if all(verdicts) else "no"), text


def _md_table(table: Table) -> str:
    head, rows = table
    rule = "|" + "|".join("---" if i == 0 else "---:" for i in range(len(head))) + "|"
    lines = ["| " + " | ".join(head) + " |", rule]
    lines += ["| " + " | ".join(r) + " |" for r in rows]
    return "\n".join(lines)


def _html_table(table: Table) -> str:
    head, rows = table
    out = "<table><tr>" + "".join(f"<th>{html.escape(h)}</th>" for h in head) + "</tr>"
    for r in rows:
        out += "<tr>" + "".join(f"<td>{html.escape(c)}</td>" for c in r) + "</tr>"
    return out + "</table>"


def _fmt(value: Any, digits: int = 3) -> str:
    return "–" if value is None else f"{float(value):.{digits}f}"


def _short(name: str) -> str:
    return Path(name[4:]).stem.split("-", 1)[-1] if name.startswith("npz:") else name


def _settings(exp: Experiment, state: dict[str, Any]) -> str:
    t = exp.train
    keys = ("flow", "mask", "st_type", "latent_dim", "num_scales", "num_blocks", "num_mid_channels",
            "num_coupling_layers_per_scale", "num_coupling_layers", "ood_dataset", "lr", "batch_size",
            "max_minutes", "max_steps", "num_epochs")
    parts = [f"{k}={t[k]}" for k in keys if k in t and t[k] is not None]
    tr = state.get("stages", {}).get("train")
    if tr:
        parts.append(f"trained {tr['steps']} steps in {tr['seconds']:.0f} s")
    emb = state.get("stages", {}).get("embed")
    if emb:
        parts.insert(0, f"embeddings: {exp.embed.get('backbone', 'smallcnn')}, {emb['dim']} dims, classifier "
                        f"test accuracy {_fmt(emb['classifier_test_accuracy'])}")
    return "; ".join(parts)


def _numbers_table(ev: dict[str, Any]) -> Table:
    numbers: Table = (["set", "bits/dim", "AUROC (likelihood)", "AUROC (other scores)"], [])
    if ev:
        numbers[1].append(["in-distribution test", _fmt(ev["test_bpd"]), "–", "–"])
        for name, v in ev["ood"].items():
            others = ", ".join(f"{s} {_fmt(a)}" for s, a in v.get("scores", {}).items() if s != "likelihood")
            numbers[1].append([_short(name), _fmt(v["bpd"]), _fmt(v["auroc"]), others or "–"])
    return numbers


def _section_lines(exp: Experiment, state: dict[str, Any], numbers: Table) -> list[str]:
    """One experiment's Markdown section; its first six lines are the heading, status and settings."""
    status = state.get("status", "not run")
    lines = [f"### {exp.title} (`{exp.name}`)", "", f"Paper: {exp.paper or '–'}. Status: **{status}**"
             + (f": {state['reason']}" if state.get("reason") else "") + ".", "",
             f"Settings at this scale: {_settings(exp, state)}.", ""]
    if numbers[1]:
        lines += [_md_table(numbers), ""]
    if exp.paper_numbers:
        lines += ["The paper's numbers: " + ", ".join(f"{k} {v}" for k, v in exp.paper_numbers.items()) + ".", ""]
    r2 = (state.get("stages", {}).get("inspect") or {}).get("mean_r2")
    if r2:
        lines += ["Mean R² of the couplings' -t as a prediction of the masked pixels: "
                  + ", ".join(f"{k} {v:.3f}" for k, v in r2.items()) + ".", ""]
    if state.get("ood_missing"):
        lines += ["Not evaluated (data not available here): " + "; ".join(state["ood_missing"].values()) + ".", ""]
    if exp.notes:
        lines += [exp.notes.strip(), ""]
    return lines


def _section_html(exp: Experiment, state: dict[str, Any], numbers: Table, lines: list[str], out: Path) -> str:
    status = state.get("status", "not run")
    body = [f"<h3>{html.escape(exp.title)} ({html.escape(exp.name)})</h3>",
            f"<p>Paper: {html.escape(exp.paper or '–')}. Status: <b>{html.escape(status)}</b>"
            + (f": {html.escape(state['reason'])}" if state.get("reason") else "") + ".</p>",
            f"<p class='note'>Settings at this scale: {html.escape(_settings(exp, state))}.</p>"]
    if numbers[1]:
        body.append(_html_table(numbers))
    body += [f"<p class='note'>{html.escape(line)}</p>" for line in lines[6:] if line and not line.startswith("|")]
    for rel, caption in (("eval/loglik_hist.png", "log-likelihood histograms"),
                         ("inspect/coupling_prediction_r2.png", "coupling prediction R²"),
                         ("inspect/samples.png", "samples")):
        path = out / exp.name / rel
        if path.exists():
            body.append(figure(path, f"{exp.name}: {caption}"))
    return "\n".join(body)


def write_results(out: Path, experiments: list[Experiment], states: dict[str, dict[str, Any]],
                  run: dict[str, Any], seconds: float) -> tuple[Path, Path]:
    """Write ``OUT/results.md`` and ``OUT/results.html`` from the experiments' statuses."""
    summary_rows, claim_rows = [], []
    sections_md, sections_html = [], []
    for exp in experiments:
        state = states.get(exp.name, {})
        ev = state.get("stages", {}).get("evaluate") or {}
        aurocs = ", ".join(f"{_short(k)} {_fmt(v['auroc'])}" for k, v in ev.get("ood", {}).items()) or "–"
        verdicts = [evaluate_check(c, state, states) for c in exp.checks]
        yes = sum(v == "yes" for v, _ in verdicts)
        decided = sum(v in ("yes", "no") for v, _ in verdicts)
        summary_rows.append([exp.name, exp.paper or "–", state.get("status", "not run"), _fmt(ev.get("test_bpd")),
                             aurocs, f"{yes}/{decided}" if exp.checks else "–"])
        claim_rows += [[exp.name, check.claim, text, verdict]
                       for check, (verdict, text) in zip(exp.checks, verdicts, strict=True)]
        numbers = _numbers_table(ev)
        lines = _section_lines(exp, state, numbers)
        sections_md.append("\n".join(lines))
        sections_html.append(_section_html(exp, state, numbers, lines, out))
    summary: Table = (["experiment", "paper", "status", "test bits/dim", "AUROC (likelihood)", "claims reproduced"],
                      summary_rows)
    claims: Table = (["experiment", "the paper's claim", "our numbers", "reproduced"], claim_rows)
    title = f"Reproducing \"Why Normalizing Flows Fail to Detect Out-of-Distribution Data\": suite {run['suite']}, " \
            f"scale {run['scale']}"
    header = [f"Command: `{run['command']}`", "", f"Machine: {run['machine']}", "",
              f"flowood {__version__}; written {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}; "
              f"this invocation ran {seconds / 60:.1f} min (stages finished in earlier invocations are kept).", ""]
    md = "\n".join([f"# {title}", "", *header, "## Summary", "", _md_table(summary), "", "## The paper's claims",
                    "", _md_table(claims) if claim_rows else "(no checks)", "", "## Experiments", "",
                    *sections_md])
    md_path, html_path = out / "results.md", out / "results.html"
    write_text_atomic(md_path, md + "\n")
    doc = page(title, [f"<h1>{html.escape(title)}</h1>",
                       *(f"<p class='note'>{html.escape(h.replace('`', ''))}</p>" for h in header if h),
                       "<h2>Summary</h2>", _html_table(summary), "<h2>The paper's claims</h2>",
                       _html_table(claims), "<h2>Experiments</h2>", *sections_html])
    write_text_atomic(html_path, doc)
    return md_path, html_path
