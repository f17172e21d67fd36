"""``results.md``, ``results.html`` and ``results.json`` of a reproduction: our numbers (mean ± sd over the seeds),
the paper's numbers beside them with their sources, and each of the paper's claims marked reproduced or not on
our numbers (:mod:`flowood.reproduce.aggregate` says how seeds are combined)."""

from __future__ import annotations

import html
import json
import re
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from flowood import __version__
from flowood.htmlpage import figure, page
from flowood.outputs import write_text_atomic
from flowood.reproduce.aggregate import (
    Spread,
    Verdict,
    evaluate_check,
    metric_spread,
    metric_value,
    ood_entry,
    ood_names,
    overall_status,
    short_name,
    spread,
)
from flowood.reproduce.experiments import Experiment, run_folder
from flowood.tables import Table

__all__ = ["write_results", "metric_value", "evaluate_check", "paper_table", "paper_lines", "SEED_RULE"]

Block = tuple[str, Any]  # ("p", markdown text) | ("note", text) | ("h4", text) | ("table", Table)
State = dict[str, Any]

SEED_RULE = ("numbers are the mean ± sample standard deviation (ddof = 1) over the seeds, and each seed's values "
             "are in results.json; a claim is reproduced when it holds for the means, and the seeds that satisfy it "
             "on their own numbers are counted beside the verdict (seed k compared with seed k), with a one-sided "
             "paired t-test's p-value for a claim that compares two experiments")


def _fmt(value: Spread | None, runs: int = 1) -> str:
    if value is None:
        return "–"
    return value.text() + (f" ({value.n} of {runs} seeds)" if value.n < runs else "")


def _runs(states: Mapping[str, State | Sequence[State]], name: str) -> list[State]:
    found = states.get(name, [])
    return [found] if isinstance(found, dict) else list(found)


def _stage(state: State, name: str) -> dict[str, Any]:
    return (state.get("stages") or {}).get(name) or {}


def _score_names(runs: list[State], ood: str) -> list[str]:
    names: list[str] = []
    for state in runs:
        entry = ood_entry(state, ood) or {}
        names += [s for s in entry.get("scores", {}) if s != "likelihood" and s not in names]
    return names


def _numbers_table(runs: list[State]) -> Table:
    rows: list[list[str]] = []
    n = len(runs)
    if metric_spread(runs, "test_bpd") is not None:
        rows.append(["in-distribution test", _fmt(metric_spread(runs, "test_bpd"), n), "–", "–"])
        for name in ood_names(runs):
            others = ", ".join(f"{s} {_fmt(metric_spread(runs, 'auroc', name, score=s), n)}"
                               for s in _score_names(runs, name))
            rows.append([short_name(name), _fmt(metric_spread(runs, "ood_bpd", name), n),
                         _fmt(metric_spread(runs, "auroc", name), n), others or "–"])
    return Table(["set", "bits/dim", "AUROC (likelihood)", "AUROC (other scores)"], rows)


def _settings(exp: Experiment, runs: list[State]) -> str:
    t = exp.train
    keys = ("flow", "mask", "st_type", "latent_dim", "num_scales", "num_blocks", "num_mid_channels",
            "num_coupling_layers_per_scale", "num_coupling_layers", "ood_dataset", "negative_val", "lr", "batch_size",
            "max_minutes", "max_steps", "num_epochs", "recompute_batchnorm")
    parts = [f"{k}={t[k]}" for k in keys if k in t and t[k] is not None]
    trained = [_stage(s, "train") for s in runs if _stage(s, "train")]
    if len(runs) == 1 and trained:
        parts.append(f"trained {trained[0]['steps']} steps in {trained[0]['seconds']:.0f} s")
    elif trained:
        steps = sorted(tr["steps"] for tr in trained)
        shown = f"{steps[0]}" if steps[0] == steps[-1] else f"{steps[0]} to {steps[-1]}"
        parts.append(f"{len(trained)} seeds trained, {shown} steps each, "
                     f"{sum(tr['seconds'] for tr in trained):.0f} s in all")
    embedded = [_stage(s, "embed") for s in runs if _stage(s, "embed")]
    if embedded:
        accuracy = spread({k: e.get("classifier_test_accuracy") for k, e in enumerate(embedded)})
        parts.insert(0, f"embeddings: {exp.embed.get('backbone', 'smallcnn')}, {embedded[0]['dim']} dims, "
                        f"classifier test accuracy {_fmt(accuracy)}")
    return "; ".join(parts)


def _scale_text(exp: Experiment, runs: list[State]) -> str:
    return exp.scale + (f", {len(runs)} seeds" if len(runs) > 1 else "")


def paper_table(exp: Experiment, runs: Sequence[State]) -> Table | None:
    """The paper vs flowood table of an experiment (None when it records no paper number): each number with its
    source, flowood's mean ± sd over ``runs`` (the experiment's runs, one per seed) and the scale it ran at."""
    if not exp.paper_numbers:
        return None
    runs = list(runs)
    rows = []
    for number in exp.paper_numbers:
        ours = metric_spread(runs, number.metric, number.ood) if number.metric is not None else None
        source = (number.source or "source not given") + (f" ({number.note})" if number.note else "")
        if number.metric is None:
            flowood = "– (not a metric flowood reports)"
        elif ours is None:
            flowood = "– (not evaluated)"
        else:
            flowood = _fmt(ours, len(runs))
        rows.append([number.describe(), f"{number.value:g}", source, flowood, _scale_text(exp, runs)])
    return Table(["number", "the paper's", "source", "flowood", "flowood's scale"], rows)


def paper_lines(exp: Experiment) -> list[str]:
    """What the page says beside (or instead of) the paper vs flowood table."""
    if not exp.paper_numbers:
        return ["No number recorded: " + (exp.paper_numbers_note.strip() or
                                          "this experiment's configuration gives none of the paper's numbers.")]
    return [f"On the paper's numbers: {exp.paper_numbers_note.strip()}"] if exp.paper_numbers_note else []


def _status_line(exp: Experiment, runs: list[State]) -> str:
    status = overall_status(runs)
    seeds = f" (seeds {', '.join(str(s.get('seed')) for s in runs)})" if len(runs) > 1 else ""
    reasons = [(s.get("seed"), s["reason"]) for s in runs if s.get("reason")]
    if len(runs) == 1:
        why = f": {reasons[0][1]}" if reasons else ""
    else:
        why = "".join(f"; seed {seed}: {reason}" for seed, reason in reasons)
    return f"Paper: {exp.paper or '–'}. Status: **{status}**{seeds}{why}."


def _r2_line(runs: list[State]) -> str | None:
    per_seed = [(s.get("seed", k), _stage(s, "inspect").get("mean_r2") or {}) for k, s in enumerate(runs)]
    labels = list(dict.fromkeys(label for _, r2 in per_seed for label in r2))
    if not labels:
        return None
    shown = [f"{label} {_fmt(spread({seed: r2.get(label) for seed, r2 in per_seed}))}" for label in labels]
    return "Mean R² of the couplings' -t as a prediction of the masked pixels: " + ", ".join(shown) + "."


def _section(exp: Experiment, runs: list[State]) -> list[Block]:
    """One experiment's section, as blocks rendered to Markdown and HTML alike."""
    blocks: list[Block] = [("p", _status_line(exp, runs)),
                           ("note", f"Settings at this scale: {_settings(exp, runs)}.")]
    numbers = _numbers_table(runs)
    if numbers.rows:
        blocks.append(("table", numbers))
    blocks.append(("h4", "The paper vs flowood"))
    table = paper_table(exp, runs)
    if table is not None:
        blocks.append(("table", table))
    blocks += [("note", line) for line in paper_lines(exp)]
    r2 = _r2_line(runs)
    if r2:
        blocks.append(("note", r2))
    missing = dict.fromkeys(why for s in runs for why in (s.get("ood_missing") or {}).values())
    if missing:
        blocks.append(("note", "Not evaluated (data not available here): " + "; ".join(missing) + "."))
    if exp.notes:
        blocks.append(("note", exp.notes.strip()))
    return blocks


def _md(exp: Experiment, blocks: list[Block]) -> str:
    lines = [f"### {exp.title} (`{exp.name}`)", ""]
    for kind, value in blocks:
        if kind == "table":
            lines += [value.markdown(), ""]
        elif kind == "h4":
            lines += [f"#### {value}", ""]
        else:
            lines += [value, ""]
    return "\n".join(lines)


def _inline_html(text: str) -> str:
    return re.sub(r"\*\*(.+?)\*\*", r"<b>\1</b>", html.escape(text))


def _figures(exp: Experiment, runs: list[State], out: Path) -> list[str]:
    """The first run's figures (with several seeds, the caption names its seed)."""
    if not runs:
        return []
    seed = runs[0].get("seed", 0)
    folder = run_folder(out, exp, seed, len(runs))
    which = f" (seed {seed})" if len(runs) > 1 else ""
    return [figure(folder / rel, f"{exp.name}{which}: {caption}")
            for rel, caption in (("eval/loglik_hist.png", "log-likelihood histograms"),
                                 ("inspect/coupling_prediction_r2.png", "coupling prediction R²"),
                                 ("inspect/samples.png", "samples"))
            if (folder / rel).exists()]


def _html(exp: Experiment, blocks: list[Block], runs: list[State], out: Path) -> str:
    body = [f"<h3>{html.escape(exp.title)} ({html.escape(exp.name)})</h3>"]
    for kind, value in blocks:
        if kind == "table":
            body.append(value.html())
        elif kind == "h4":
            body.append(f"<h4>{html.escape(value)}</h4>")
        else:
            body.append(f"<p{' class=note' if kind == 'note' else ''}>{_inline_html(value)}</p>")
    return "\n".join(body + _figures(exp, runs, out))


def _metrics_json(runs: list[State]) -> dict[str, Any]:
    def as_dict(value: Spread | None) -> dict[str, Any] | None:
        return None if value is None else value.as_dict()

    ood = {}
    for name in ood_names(runs):
        ood[short_name(name)] = {
            "auroc": as_dict(metric_spread(runs, "auroc", name)), "bpd": as_dict(metric_spread(runs, "ood_bpd", name)),
            "scores": {s: as_dict(metric_spread(runs, "auroc", name, score=s)) for s in _score_names(runs, name)}}
    return {"test_bpd": as_dict(metric_spread(runs, "test_bpd")), "ood": ood}


def _experiment_json(exp: Experiment, runs: list[State], verdicts: list[Verdict]) -> dict[str, Any]:
    numbers = []
    for number in exp.paper_numbers:
        ours = metric_spread(runs, number.metric, number.ood) if number.metric is not None else None
        numbers.append({"metric": number.metric, "ood": number.ood, "label": number.describe(), "value": number.value,
                        "source": number.source, "note": number.note, "flowood": ours.as_dict() if ours else None})
    return {"title": exp.title, "paper": exp.paper, "scale": exp.scale, "status": overall_status(runs),
            "seeds": {str(s.get("seed", k)): s.get("status", "not run") for k, s in enumerate(runs)},
            "metrics": _metrics_json(runs),
            "checks": [{"claim": c.claim, "verdict": v.verdict, "numbers": v.text, "seeds_holding": v.seeds_holding,
                        "seeds_decided": v.seeds_decided, "seeds": v.seeds, "paired_p_value": v.p_value}
                       for c, v in zip(exp.checks, verdicts, strict=True)],
            "paper_numbers": numbers, "paper_numbers_note": exp.paper_numbers_note}


def _header(run: dict[str, Any], seconds: float) -> list[str]:
    header = [f"Command: `{run['command']}`", "", f"Machine: {run['machine']}", "",
              f"flowood {__version__}; written {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}; "
              f"this invocation ran {seconds / 60:.1f} min (stages finished in earlier invocations are kept).", ""]
    if run.get("seeds", 1) > 1:
        header += [f"Seeds: {run['seeds']} per experiment; {SEED_RULE}.", ""]
    return header


def write_results(out: Path, experiments: list[Experiment], states: Mapping[str, State | Sequence[State]],
                  run: dict[str, Any], seconds: float) -> tuple[Path, Path, Path]:
    """Write ``OUT/results.md``, ``OUT/results.html`` and ``OUT/results.json`` from the runs' statuses.

    ``states`` maps each experiment to its runs' statuses, one per seed in seed order (a single status is read
    as one seed). Returns the three paths.
    """
    summary_rows, claim_rows, sections_md, sections_html = [], [], [], []
    machine: dict[str, Any] = {"run": run, "seed_rule": SEED_RULE, "experiments": {}}
    all_runs = {e.name: _runs(states, e.name) for e in experiments}
    for exp in experiments:
        runs = all_runs[exp.name]
        aurocs = ", ".join(f"{short_name(k)} {_fmt(metric_spread(runs, 'auroc', k), len(runs))}"
                           for k in ood_names(runs)) or "–"
        verdicts = [evaluate_check(c, runs, all_runs) for c in exp.checks]
        yes = sum(v.verdict == "yes" for v in verdicts)
        decided = sum(v.verdict in ("yes", "no") for v in verdicts)
        summary_rows.append([exp.name, exp.paper or "–", overall_status(runs),
                             _fmt(metric_spread(runs, "test_bpd"), len(runs)), aurocs,
                             f"{yes}/{decided}" if exp.checks else "–"])
        claim_rows += [[exp.name, check.claim, v.text, v.shown] for check, v in zip(exp.checks, verdicts, strict=True)]
        blocks = _section(exp, runs)
        sections_md.append(_md(exp, blocks))
        sections_html.append(_html(exp, blocks, runs, out))
        machine["experiments"][exp.name] = _experiment_json(exp, runs, verdicts)
    summary = Table(["experiment", "paper", "status", "test bits/dim", "AUROC (likelihood)", "claims reproduced"],
                    summary_rows)
    claims = Table(["experiment", "the paper's claim", "our numbers", "reproduced"], claim_rows)
    title = f"Reproducing \"Why Normalizing Flows Fail to Detect Out-of-Distribution Data\": suite {run['suite']}, " \
            f"scale {run['scale']}"
    header = _header(run, seconds)
    md = "\n".join([f"# {title}", "", *header, "## Summary", "", summary.markdown(), "", "## The paper's claims",
                    "", claims.markdown() if claim_rows else "(no checks)", "", "## Experiments", "",
                    *sections_md])
    md_path, html_path, json_path = out / "results.md", out / "results.html", out / "results.json"
    write_text_atomic(md_path, md + "\n")
    doc = page(title, [f"<h1>{html.escape(title)}</h1>",
                       *(f"<p class='note'>{html.escape(h.replace('`', ''))}</p>" for h in header if h),
                       "<h2>Summary</h2>", summary.html(), "<h2>The paper's claims</h2>",
                       claims.html(), "<h2>Experiments</h2>", *sections_html])
    write_text_atomic(html_path, doc)
    write_text_atomic(json_path, json.dumps(machine, indent=1, default=str) + "\n")
    return md_path, html_path, json_path
