"""flowood reproduce (flowood.reproduce.runner): a smoke-scale suite runs end to end on fixture data (embed, train,
evaluate, inspect), resumes, skips what has no data, restarts what changed, records every file it writes, and
writes results.md / results.html with the paper's claims checked."""

from __future__ import annotations

import json

import yaml

from flowood.cli.main import main
from flowood.reproduce import reproduce


def test_smoke_suite_runs_resumes_and_reports(tmp_path, mini_suite, capsys):
    configs, out = mini_suite, tmp_path / "out"
    empty_root = str(tmp_path / "no-data")
    result = reproduce("all", "smoke", out, configs, data_root=empty_root, say=print)
    assert result.statuses == {"base": "done", "cycle": "done", "emb": "done", "photos": "skipped"}
    base = json.loads((out / "base" / "status.json").read_text())
    assert base["stages"]["train"]["steps"] == 4  # the smoke override
    assert set(base["stages"]) == {"train", "evaluate", "inspect"} and "cifar10" in base["ood_missing"]
    assert (out / "base" / "inspect" / "inspect.html").exists()
    md = result.markdown.read_text()
    assert "| base | claim 1 | done |" in md and "skipped" in md and "flowood data fetch cifar10" in md
    assert "better than base" in md and ("| yes |" in md or "| no |" in md)
    html = result.html.read_text()
    assert html.count("<img") >= 2 and "The paper's claims" in html
    # a second run keeps what is done
    capsys.readouterr()
    reproduce("all", "smoke", out, configs, data_root=empty_root, say=print)
    assert capsys.readouterr().out.count("earlier; kept") == 4
    # an interrupted experiment resumes its training from the checkpoint
    status = json.loads((out / "cycle" / "status.json").read_text())
    del status["stages"]["train"], status["stages"]["evaluate"]
    status["status"] = "interrupted"
    (out / "cycle" / "status.json").write_text(json.dumps(status))
    reproduce("all", "smoke", out, configs, only=["cycle"], data_root=empty_root, say=print)
    printed = capsys.readouterr().out
    assert "cycle: resuming" in printed and "base" not in printed
    assert json.loads((out / "cycle" / "status.json").read_text())["status"] == "done"


def test_changed_config_restarts_that_experiment(tmp_path, mini_suite, capsys):
    configs, out = mini_suite, tmp_path / "out"
    reproduce("mini", "smoke", out, configs, only=["cycle"], say=print)
    path = configs / "1_cycle.yaml"
    spec = yaml.safe_load(path.read_text())
    spec["train"]["max_steps"] = 7
    path.write_text(yaml.safe_dump(spec))
    capsys.readouterr()
    reproduce("mini", "smoke", out, configs, only=["cycle"], say=print)
    assert "configuration changed" in capsys.readouterr().out
    assert json.loads((out / "cycle" / "status.json").read_text())["stages"]["train"]["steps"] == 7


def test_cli_reproduce_smoke_on_shipped_tabular_experiment(tmp_path, capsys):
    assert main(["reproduce", "--suite", "tabular", "--scale", "smoke", "--only", "tabular_breastcancer",
                 "--out", str(tmp_path / "r")]) == 0
    assert "1 done" in capsys.readouterr().out
    assert "tabular_breastcancer" in (tmp_path / "r" / "results.md").read_text()


def test_every_file_a_suite_writes_is_in_a_manifest(tmp_path, mini_suite):
    """What --overwrite (and a changed config) may remove is exactly what flowood wrote: nothing is missed."""
    from flowood.outputs import MANIFEST

    configs, out = mini_suite, tmp_path / "out"
    reproduce("mini", "smoke", out, configs, only=["cycle"], say=print)
    recorded = set()
    for manifest in out.rglob(MANIFEST):
        recorded |= {manifest.parent / f for f in json.loads(manifest.read_text())["files"]}
    written = {p for p in out.rglob("*") if p.is_file() and p.name != MANIFEST}
    assert written and written <= recorded
