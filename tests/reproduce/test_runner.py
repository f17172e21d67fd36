"""flowood reproduce (flowood.reproduce.runner): a smoke-scale suite runs end to end on fixture data (embed, train,
evaluate, inspect), resumes, skips what has no data, restarts what changed, records every file it writes, and
writes results.md / results.html with the paper's claims checked."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from flowood.cli.main import main
from flowood.flows import ConfigError
from flowood.reproduce import reproduce
from flowood.reproduce.runner import default_out


def test_smoke_suite_runs_resumes_and_reports(tmp_path, mini_suite, capsys):
    configs, out = mini_suite, tmp_path / "out"
    empty_root = str(tmp_path / "no-data")
    result = reproduce(out, suite="all", scale="smoke", configs=configs, data_root=empty_root, say=print)
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
    reproduce(out, suite="all", scale="smoke", configs=configs, data_root=empty_root, say=print)
    assert capsys.readouterr().out.count("earlier; kept") == 4
    # an interrupted experiment resumes its training from the checkpoint
    status = json.loads((out / "cycle" / "status.json").read_text())
    del status["stages"]["train"], status["stages"]["evaluate"]
    status["status"] = "interrupted"
    (out / "cycle" / "status.json").write_text(json.dumps(status))
    reproduce(out, suite="all", scale="smoke", configs=configs, only=["cycle"], data_root=empty_root, say=print)
    printed = capsys.readouterr().out
    assert "cycle: resuming" in printed and "base" not in printed
    assert json.loads((out / "cycle" / "status.json").read_text())["status"] == "done"


def test_changed_config_restarts_that_experiment(tmp_path, mini_suite, capsys):
    configs, out = mini_suite, tmp_path / "out"
    reproduce(out, suite="mini", scale="smoke", configs=configs, only=["cycle"], say=print)
    path = configs / "1_cycle.yaml"
    spec = yaml.safe_load(path.read_text())
    spec["train"]["max_steps"] = 7
    path.write_text(yaml.safe_dump(spec))
    capsys.readouterr()
    reproduce(out, suite="mini", scale="smoke", configs=configs, only=["cycle"], say=print)
    assert "configuration changed" in capsys.readouterr().out
    assert json.loads((out / "cycle" / "status.json").read_text())["stages"]["train"]["steps"] == 7


def test_cli_reproduce_smoke_on_shipped_tabular_experiment(tmp_path, capsys):
    assert main(["reproduce", "--suite", "tabular", "--scale", "smoke", "--only", "tabular_breastcancer",
                 "--out", str(tmp_path / "r")]) == 0
    assert "1 done" in capsys.readouterr().out
    assert "tabular_breastcancer" in (tmp_path / "r" / "results.md").read_text()


@pytest.mark.parametrize("seeds", [1, 2])
def test_every_file_a_suite_writes_is_in_a_manifest(tmp_path, mini_suite, seeds):
    """What --overwrite (and a changed config) may remove is exactly what flowood wrote: nothing is missed, with
    one seed (OUT/NAME) or several (OUT/NAME/seedS, each trained with its own seed)."""
    from flowood.outputs import MANIFEST

    configs, out = mini_suite, tmp_path / "out"
    result = reproduce(out, suite="mini", scale="smoke", configs=configs, only=["cycle"], seeds=seeds, say=print)
    assert result.statuses == {"cycle": "done"}
    recorded = set()
    for manifest in out.rglob(MANIFEST):
        recorded |= {manifest.parent / f for f in json.loads(manifest.read_text())["files"]}
    written = {p for p in out.rglob("*") if p.is_file() and p.name != MANIFEST}
    assert written and written <= recorded and out / "results.json" in written
    if seeds > 1:
        trained = [yaml.safe_load((out / "cycle" / f"seed{s}" / "train" / "config.yaml").read_text())["seed"]
                   for s in (0, 1)]
        numbers = [json.loads((out / "cycle" / f"seed{s}" / "status.json").read_text())["stages"]["evaluate"]
                   for s in (0, 1)]
        assert trained == [0, 1] and numbers[0]["test_bpd"] != numbers[1]["test_bpd"]


# -- several seeds (the training and evaluation stages replaced by fakes that record their seeds) --------------------
AUROC = {"base": [0.2, 0.6, 0.7, 0.3], "cycle": [0.5, 0.5, 0.8, 0.4]}
BPD = {"base": [3.0, 4.0, 5.0, 4.0], "cycle": [5.0, 6.0, 2.5, 4.0]}


@pytest.fixture
def fake_stages(monkeypatch):
    """Train, evaluate and inspect stages that record (experiment, stage, seed, folder) and give the numbers of
    AUROC and BPD by seed."""
    from flowood.reproduce import runner

    calls = []

    def train(run, values):
        if "train" in run.done:  # as the real stages: what is done is kept
            return run.folder / "train" / "last.ckpt"
        calls.append((run.exp.name, "train", values.get("seed", 0), run.folder))
        run.done["train"] = {"test_bpd": 0.0, "steps": 1, "seconds": 0.0}
        run.save()
        return run.folder / "train" / "last.ckpt"

    def evaluate(run, checkpoint, ood):
        if "evaluate" in run.done:
            return
        seed = run.exp.evaluate.get("seed", 0)
        calls.append((run.exp.name, "evaluate", seed, run.folder))
        name = run.exp.name
        run.done["evaluate"] = {"test_bpd": BPD[name][seed], "seconds": 0.0, "ood": {
            o: {"auroc": AUROC[name][seed], "bpd": 1.0, "scores": {"likelihood": AUROC[name][seed]}} for o in ood}}
        run.save()

    monkeypatch.setattr(runner, "_train_stage", train)
    monkeypatch.setattr(runner, "_evaluate_stage", evaluate)
    monkeypatch.setattr(runner, "_inspect_stage", lambda run, checkpoint: None)
    return calls


def test_seeds_run_each_experiment_with_distinct_seeds_in_their_own_folders(tmp_path, mini_suite, fake_stages):
    out = tmp_path / "out"
    result = reproduce(out, suite="mini", scale="smoke", configs=mini_suite, seeds=3, say=print)
    assert result.statuses == {"base": "done", "cycle": "done"}
    assert result.seed_statuses == {name: {0: "done", 1: "done", 2: "done"} for name in ("base", "cycle")}
    for name in ("base", "cycle"):
        trained = [(seed, folder) for n, stage, seed, folder in fake_stages if n == name and stage == "train"]
        evaluated = [seed for n, stage, seed, _ in fake_stages if n == name and stage == "evaluate"]
        assert trained == [(s, out.resolve() / name / f"seed{s}") for s in (0, 1, 2)] and evaluated == [0, 1, 2]
        for s in (0, 1, 2):
            status = json.loads((out / name / f"seed{s}" / "status.json").read_text())
            assert status["seed"] == s and status["status"] == "done"
        assert not (out / name / "status.json").exists()
    # the results: mean ± sd over the seeds, the claims on the means with the seeds counted
    md = result.markdown.read_text()
    assert "Seeds: 3 per experiment" in md and "sample standard deviation" in md
    assert "| base | claim 1 | done | 4.000 ± 1.000 | mnist-small 0.500 ± 0.265" in md
    assert "| base | MNIST more likely | auroc (mnist-small) = 0.500 ± 0.265 (< 0.5?) | no (1/3 seeds) |" in md
    assert "| yes (2/3 seeds; paired t-test p = 0.239) |" in md  # cycle better than base: 0.6 > 0.5
    assert "Status: **done** (seeds 0, 1, 2)" in md
    data = json.loads(result.results_json.read_text())
    base = data["experiments"]["base"]
    assert base["seeds"] == {"0": "done", "1": "done", "2": "done"}
    auroc = base["metrics"]["ood"]["mnist-small"]["auroc"]
    assert auroc["values"] == {"0": 0.2, "1": 0.6, "2": 0.7} and auroc["mean"] == pytest.approx(0.5)
    assert auroc["sd"] == pytest.approx(0.07 ** 0.5) and auroc["n"] == 3
    assert base["metrics"]["test_bpd"]["sd"] == pytest.approx(1.0)
    assert base["checks"][0] | {"numbers": None} == {"claim": "MNIST more likely", "verdict": "no", "numbers": None,
                                                    "seeds_holding": 1, "seeds_decided": 3, "seeds": 3,
                                                    "paired_p_value": None}
    html = result.html.read_text()
    assert "0.500 ± 0.265" in html and "no (1/3 seeds)" in html and "<b>done</b> (seeds 0, 1, 2)" in html


def test_seeds_resume_per_seed_and_more_seeds_run_only_the_new_ones(tmp_path, mini_suite, fake_stages, capsys):
    out = tmp_path / "out"
    reproduce(out, suite="mini", scale="smoke", configs=mini_suite, only=["cycle"], seeds=2, say=print)
    assert len(fake_stages) == 4
    fake_stages.clear()
    capsys.readouterr()
    reproduce(out, suite="mini", scale="smoke", configs=mini_suite, only=["cycle"], seeds=2, say=print)
    assert fake_stages == []
    printed = capsys.readouterr().out
    assert "cycle (seed 0): done earlier; kept" in printed and "cycle (seed 1): done earlier; kept" in printed
    # one seed interrupted: only it runs again
    status_path = out / "cycle" / "seed1" / "status.json"
    status = json.loads(status_path.read_text())
    del status["stages"]["evaluate"]
    status["status"] = "interrupted"
    status_path.write_text(json.dumps(status))
    result = reproduce(out, suite="mini", scale="smoke", configs=mini_suite, only=["cycle"], seeds=3, say=print)
    assert [(stage, seed) for _, stage, seed, _ in fake_stages] == [("evaluate", 1), ("train", 2), ("evaluate", 2)]
    assert result.seed_statuses == {"cycle": {0: "done", 1: "done", 2: "done"}}
    assert "Seeds: 3 per experiment" in result.markdown.read_text()


def test_seeds_shift_the_seed_of_every_stage_from_the_experiments_own(tmp_path):
    from flowood.reproduce.experiments import Experiment
    from flowood.reproduce.runner import run_seeds, seeded

    exp = Experiment("x", "t", "", ["all"], train={"dataset": "d", "seed": 7}, evaluate={"ood": ["n"]},
                     inspect=None, embed={"dataset": "d", "seed": 2}, checks=[])
    assert run_seeds(exp, 3) == [7, 8, 9]
    assert seeded(exp, 0) is exp  # the first run is the experiment as written
    two = seeded(exp, 2)
    assert (two.train["seed"], two.evaluate["seed"], two.embed["seed"], two.inspect) == (9, 2, 4, None)
    assert exp.train["seed"] == 7 and "seed" not in exp.evaluate


def test_cli_seeds_flag(tmp_path, monkeypatch, capsys):
    import flowood.reproduce
    from flowood.cli.flags import given_options
    from flowood.cli.main import build_parser
    from flowood.options import from_mapping
    from flowood.reproduce import ReproduceOptions

    parsed = build_parser().parse_args(["reproduce", "--seeds", "3"])
    assert from_mapping(ReproduceOptions, given_options(parsed, ReproduceOptions)).seeds == 3
    assert ReproduceOptions().seeds == 1
    seen = {}

    def fake(out=None, options=None, **kwargs):
        seen.update(out=out, options=options)
        raise SystemExit(0)
    monkeypatch.setattr(flowood.reproduce, "reproduce", fake)
    with pytest.raises(SystemExit):
        main(["reproduce", "--seeds", "4", "--out", str(tmp_path / "r")])
    assert seen["options"].seeds == 4 and seen["out"] == str(tmp_path / "r")
    with pytest.raises(SystemExit):
        main(["reproduce", "--suite", "mini", "--scale", "smoke"])
    assert seen["out"] is None  # the library's default folder: the same for the command line and Python
    assert default_out(seen["options"]) == Path("runs/reproduce/mini-smoke")
    assert main(["reproduce", "--seeds", "0", "--out", str(tmp_path / "r")]) == 2
    assert "seeds must be at least 1" in capsys.readouterr().err
    with pytest.raises(ConfigError, match="seeds must be at least 1"):
        reproduce(tmp_path / "r2", suite="all", scale="smoke", seeds=0)


def test_only_what_a_run_computes_restarts_it(tmp_path, mini_suite, fake_stages, capsys):
    out, path = tmp_path / "out", mini_suite / "1_cycle.yaml"
    reproduce(out, suite="mini", scale="smoke", configs=mini_suite, only=["cycle"], say=print)
    spec = yaml.safe_load(path.read_text())
    spec.update(title="renamed", paper_numbers=[{"metric": "test_bpd", "value": 3.0, "source": "s"}],
                paper_numbers_note="n")
    path.write_text(yaml.safe_dump(spec))
    fake_stages.clear()
    reproduce(out, suite="mini", scale="smoke", configs=mini_suite, only=["cycle"], say=print)
    assert fake_stages == [] and "| test bits/dim | 3 | s | 5.000 | smoke |" in (out / "results.md").read_text()
    # a status written by an earlier flowood (no run fingerprint) is started again
    status = json.loads((out / "cycle" / "status.json").read_text())
    status["spec"] = status.pop("run_spec")
    (out / "cycle" / "status.json").write_text(json.dumps(status))
    capsys.readouterr()
    reproduce(out, suite="mini", scale="smoke", configs=mini_suite, only=["cycle"], say=print)
    printed = capsys.readouterr().out
    assert "cycle: its status was recorded by an earlier version of flowood; starting it again" in printed
    assert [stage for _, stage, _, _ in fake_stages] == ["train", "evaluate"]
