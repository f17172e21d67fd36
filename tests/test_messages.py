"""The library speaks Python, the command line speaks flags: no message raised, warned or printed by the
library names a command-line flag (the CLI turns the parameters named in backticks into flags)."""

from __future__ import annotations

import ast
import re
from pathlib import Path

SRC = Path(__file__).resolve().parents[1] / "src" / "flowood"
FLAG = re.compile(r"(?<![\w-])--[a-z][a-z_-]+")


def _message_strings(tree: ast.AST) -> list[tuple[int, str]]:
    """String pieces of every ``raise X(...)``, ``warnings.warn(...)``, ``print(...)`` and ``*.print(...)`` call."""
    found = []
    for node in ast.walk(tree):
        call = node.exc if isinstance(node, ast.Raise) else node if isinstance(node, ast.Call) else None
        if not isinstance(call, ast.Call):
            continue
        name = call.func.attr if isinstance(call.func, ast.Attribute) else getattr(call.func, "id", "")
        if isinstance(node, ast.Call) and name not in ("warn", "print"):
            continue
        for arg in [*call.args, *(k.value for k in call.keywords)]:
            for piece in ast.walk(arg):
                if isinstance(piece, ast.Constant) and isinstance(piece.value, str):
                    found.append((piece.lineno, piece.value))
    return found


def test_no_library_message_names_a_command_line_flag():
    offenders = []
    for path in sorted(SRC.rglob("*.py")):
        if "cli" in path.relative_to(SRC).parts:
            continue
        for line, text in _message_strings(ast.parse(path.read_text())):
            if FLAG.search(text):
                offenders.append(f"{path.relative_to(SRC)}:{line}: {text!r}")
    assert not offenders, "library messages naming flags:\n" + "\n".join(offenders)


def test_the_check_finds_a_flag_in_a_message():
    tree = ast.parse('raise ValueError(f"pass --overwrite to replace {x}")\nprint("use `overwrite=True`")')
    assert [text for _, text in _message_strings(tree) if FLAG.search(text)] == ["pass --overwrite to replace "]
