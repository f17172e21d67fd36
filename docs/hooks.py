"""Pages generated from the code, so they never go stale.

* ``reference/cli.md``: every command and flag of ``flowood``, from the parser (itself generated from the options'
  one definition). It is committed, so it can be read on the repository's site too; ``python docs/hooks.py``
  writes it again, and a test fails when it differs from what the code generates.
* ``reference/variants.md``: every registered flow, st-network, mask, score, classifier detector and data prefix,
  from the registries' keys and each entry's own docstring and parameters (committed and checked the same way).
* ``results/benchmarks.md``: ``benchmarks/RESULTS.md`` (which lives beside the benchmark scripts), added to the
  site at build time by the MkDocs hook below.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from mkdocs.structure.files import File

ROOT = Path(__file__).resolve().parents[1]


def _flags(action: argparse.Action) -> str:
    names = ", ".join(f"`{s}`" for s in action.option_strings) or f"`{action.dest}`"
    if action.nargs == 0:
        return names
    metavar = action.metavar or action.dest.upper()
    metavar = f"[{metavar}]" if action.nargs == "?" else metavar  # the value may be left out
    return names + f" {metavar}" + (" ..." if action.nargs in ("+", "*") else "")


def cli_reference() -> str:
    """The CLI reference as Markdown: one section per command, one row per flag."""
    from flowood.cli.main import build_parser
    from flowood.tables import Table

    parser = build_parser()
    lines = ["# Command line", "", "Generated from `flowood --help` of every command. Flags use the options' names",
             "with underscores; the same names with dashes, and older spellings listed here, work too.", ""]
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    for name, command in sub.choices.items():
        lines += [f"## flowood {name}", "", (command.description or "").strip(), ""]
        nested = next((a for a in command._actions if isinstance(a, argparse._SubParsersAction)), None)
        parsers = [(f"flowood {name} {n}", p) for n, p in nested.choices.items()] if nested else [(None, command)]
        for title, p in parsers:
            if title:
                lines += [f"### {title}", ""]
            rows = [[_flags(action), (action.help or "").replace("%%", "%")] for action in p._actions
                    if action.help != argparse.SUPPRESS and not isinstance(action, (argparse._HelpAction,
                                                                                      argparse._SubParsersAction))]
            lines += [Table(["flag", "meaning"], rows, align="ll").markdown(), ""]
    return "\n".join(lines)


def _variant_sections() -> list[tuple[str, str, tuple[str, ...], list[tuple[str, ...]]]]:
    """(title, introduction, header, rows) of every registry."""
    from flowood.data.prefixes import PREFIXES
    from flowood.flows import FLOWS, MASKS, ST_NETWORKS
    from flowood.ood.classifier import CLASSIFIER_DETECTORS
    from flowood.ood.scores import SCORES
    from flowood.variants import declared_parameters, summary

    def code(names) -> str:
        return ", ".join(f"`{n}`" for n in names) or "none"

    return [
        ("Flows", "`flow`; `flowood.flows.register_flow` adds one.", ("flow", "what", "inputs", "options"),
         [(f"`{n}`", summary(c), c.inputs, code(c.options)) for n, c in FLOWS.items()]),
        ("st-networks", "`st_type`; `flowood.flows.register_st_net` adds one. Each network takes the options its "
         "constructor names.", ("st_type", "what", "inputs", "takes"),
         [(f"`{n}`", summary(c), getattr(c, "inputs", "images"), code(declared_parameters(c, skip=2)))
          for n, c in ST_NETWORKS.items()]),
        ("Masks", "`mask`; `flowood.flows.register_mask` adds one.", ("mask", "what", "inputs", "layout"),
         [(f"`{n}`", summary(k.build), k.inputs + (" (spatial)" if k.spatial and k.inputs == "images" else ""),
           k.layout) for n, k in MASKS.items()]),
        ("Flow scores", "`scores` of `evaluate`, `score` of `detector fit`; `flowood.ood.scores.register_score` adds "
         "one.", ("score", "what", "by default", "fixed parameters"),
         [(f"`{n}`", summary(e.cls), "yes" if e.cls.by_default else "no",
           ", ".join(f"`{k}={v!r}`" for k, v in e.params.items()) or "none") for n, e in SCORES.items()]),
        ("Classifier detectors", "`detectors` of `evaluate`, `method` of `detector fit`; "
         "`flowood.ood.classifier.register_detector` adds one.", ("detector", "what", "needs", "reference"),
         [(f"`{n}`", summary(c), c.needs, c.reference) for n, c in CLASSIFIER_DETECTORS.items()]),
        ("Data prefixes", "`PREFIX:VALUE` data names; `flowood.data.prefixes.register_prefix` adds one.",
         ("prefix", "what"), [(f"`{n}:`", summary(type(src))) for n, src in PREFIXES.items()]),
    ]


def variants_reference() -> str:
    """Every registry's entries as Markdown tables, from their keys, docstrings and declared parameters."""
    from flowood.tables import Table

    lines = ["# Variants", "", "Generated from the registries of `flowood`: each kind of variant is a name-to-class "
             "table, and a new one is a class plus one registration (see the [models guide](../guide/models.md)).",
             ""]
    for title, intro, header, rows in _variant_sections():
        table = Table(list(header), [list(r) for r in rows], align="l" * len(header))
        lines += [f"## {title}", "", intro, "", table.markdown(), ""]
    return "\n".join(lines).rstrip("\n")


def on_files(files, config):
    files.append(File.generated(config, "reference/cli.md", content=cli_reference()))
    files.append(File.generated(config, "reference/variants.md", content=variants_reference()))
    results = (ROOT / "benchmarks" / "RESULTS.md").read_text()
    results = results.replace("](compare.py)", "](benchmarks.md)")
    files.append(File.generated(config, "results/benchmarks.md", content=results))
    return files


if __name__ == "__main__":
    (ROOT / "docs" / "reference" / "cli.md").write_text(cli_reference() + "\n")
    (ROOT / "docs" / "reference" / "variants.md").write_text(variants_reference() + "\n")
