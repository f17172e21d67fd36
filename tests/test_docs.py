"""The documentation site builds in strict mode (a broken link, reference or docstring fails), and its generated
command-line reference lists every flag of every command."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def test_the_site_builds_strictly(tmp_path):
    result = subprocess.run([sys.executable, "-m", "mkdocs", "build", "--strict", "-q", "-d", str(tmp_path / "site")],
                            cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    cli = (tmp_path / "site" / "reference" / "cli" / "index.html").read_text()
    for flag in ("--batch_size", "--monitor_ood", "--overwrite", "--detector", "--fpr", "--temperatures"):
        assert flag in cli, flag
    assert (tmp_path / "site" / "reference" / "api" / "index.html").stat().st_size > 50_000


def test_the_cli_reference_has_a_help_line_for_every_flag():
    sys.path.insert(0, str(ROOT / "docs"))
    try:
        from hooks import cli_reference
    finally:
        sys.path.remove(str(ROOT / "docs"))
    rows = [line for line in cli_reference().splitlines() if line.startswith("| `--")]
    assert len(rows) > 120
    empty = [row for row in rows if row.rstrip().endswith("|  |") or row.rstrip().endswith("| |")]
    assert not empty, empty


def test_the_committed_cli_reference_is_what_the_code_generates():
    sys.path.insert(0, str(ROOT / "docs"))
    try:
        from hooks import cli_reference
    finally:
        sys.path.remove(str(ROOT / "docs"))
    committed = (ROOT / "docs" / "reference" / "cli.md").read_text()
    assert committed == cli_reference() + "\n", "docs/reference/cli.md is stale: run python docs/hooks.py"


GENERATED_AT_BUILD = {"docs/results/benchmarks.md"}


@pytest.mark.parametrize("page", ["README.md", "docs/index.md"])
def test_front_pages_link_only_to_files_that_exist(page):
    import re

    text = (ROOT / page).read_text()
    for target in re.findall(r"\]\(([^)#]+)(?:#[^)]*)?\)", text):
        if target.startswith(("http://", "https://")):
            continue
        path = (ROOT / page).parent.joinpath(target)
        assert path.exists() or str(path.relative_to(ROOT)) in GENERATED_AT_BUILD, f"{page} links to {target}"


def test_the_committed_variants_reference_is_what_the_registries_hold():
    import sys
    sys.path.insert(0, str(ROOT / "docs"))
    try:
        from hooks import variants_reference
    finally:
        sys.path.pop(0)
    committed = (ROOT / "docs" / "reference" / "variants.md").read_text()
    assert committed == variants_reference() + "\n", "docs/reference/variants.md is stale: run python docs/hooks.py"
    for name in ("resnet", "autoencoder", "cycle", "RealNVP", "mahalanobis", "npz"):
        assert f"`{name}" in committed


def test_the_readme_is_a_front_door():
    lines = (ROOT / "README.md").read_text().splitlines()
    assert len(lines) < 200
