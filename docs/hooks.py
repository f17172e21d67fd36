"""Pages generated from the code, so they never go stale.

* ``reference/cli.md``: every command and flag of ``flowood``, from the parser (itself generated from the options'
  one definition). It is committed, so it can be read on the repository's site too; ``python docs/hooks.py``
  writes it again, and a test fails when it differs from what the code generates.
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


def on_files(files, config):
    files.append(File.generated(config, "reference/cli.md", content=cli_reference()))
    results = (ROOT / "benchmarks" / "RESULTS.md").read_text()
    results = results.replace("](compare.py)", "](benchmarks.md)")
    files.append(File.generated(config, "results/benchmarks.md", content=results))
    return files


if __name__ == "__main__":
    (ROOT / "docs" / "reference" / "cli.md").write_text(cli_reference() + "\n")
