"""flowood reproduce: the shipped experiment configs are valid at every scale, and a smoke-scale suite runs
end to end on fixture data (embed, train, evaluate, inspect), resumes, skips what has no data, and writes
results.md / results.html with the paper's claims checked."""

from __future__ import annotations

import json
import shutil

import pytest
import yaml

from flowood.cli.main import main
from flowood.flows import ConfigError
from flowood.reproduce import load_experiments, reproduce
from flowood.reproduce.experiments import SCALES, default_config_dir
from flowood.training import load_config


@pytest.mark.parametrize("scale", SCALES)
def test_every_shipped_experiment_is_valid(scale):
    experiments = load_experiments(default_config_dir(), scale, "all")
    assert len(experiments) >= 20
    names = {e.name for e in experiments}
    for needed in ("realnvp_fashionmnist", "glow_cifar10", "cycle_mask_fashionmnist", "bottleneck_l10_fashionmnist",
                   "horizontal_mask_fashionmnist", "embeddings_fashionmnist", "negative_fashionmnist_mnist",
                   "uci_miniboone0", "uci_hepmass0"):
        assert needed in names
    for e in experiments:
        load_config(None, dict(e.train, out="x")).check()  # every training configuration is valid at this scale
        assert e.evaluate.get("ood"), e.name


def test_paper_scale_keeps_the_original_hyper_parameters():
    (exp,) = load_experiments(None, "paper", "all", only=["glow_fashionmnist"])
    assert exp.train["num_coupling_layers_per_scale"] == 16 and exp.train["num_mid_channels"] == 200
    assert exp.train["optim"] == "RMSprop" and exp.train["lr"] == 5e-5 and exp.train["num_epochs"] == 151
    (cpu,) = load_experiments(None, "cpu", "all", only=["glow_fashionmnist"])
    assert cpu.train["max_minutes"] == 4


def write_suite(folder, fixtures_dir):
    fm, mn = f"npz:{fixtures_dir}/fashionmnist-small.npz", f"npz:{fixtures_dir}/mnist-small.npz"
    tiny = {"num_blocks": 1, "num_mid_channels": 4, "batch_size": 32, "max_steps": 6, "max_test_samples": 64}
    specs = [
        {"name": "base", "title": "baseline", "paper": "claim 1", "suites": ["all", "mini"],
         "train": dict(dataset=fm, flow="RealNVP", **tiny), "evaluate": {"ood": [mn, "cifar10"], "max_samples": 64,
                                                                          "scores": ["likelihood"]},
         "inspect": {"images": [f"{fm}:test:0-3", f"{mn}:test:0-3"], "noise_samples": 2, "complexity_samples": 16,
                     "temperatures": [1.0]},
         "checks": [{"claim": "MNIST more likely", "metric": "auroc", "ood": mn, "below": 0.5}],
         "scales": {"smoke": {"train": {"max_steps": 4}}}},
        {"name": "cycle", "title": "cycle mask", "suites": ["all", "mini"],
         "train": dict(dataset=fm, flow="RealNVPCycleMask", **tiny),
         "evaluate": {"ood": [mn], "max_samples": 64, "scores": ["likelihood"]},
         "checks": [{"claim": "better than base", "metric": "auroc", "ood": mn, "better_than": "base"},
                    {"claim": "worse bpd", "metric": "test_bpd", "worse_than": "base"}]},
        {"name": "emb", "title": "embeddings", "suites": ["all"],
         "embed": {"dataset": fm, "train_classifier": True, "epochs": 1, "embedding_dim": 8},
         "train": {"dataset": fm, "flow": "MAF", "num_coupling_layers": 2, "num_hidden_units": 16, "batch_size": 32,
                   "max_steps": 5},
         "evaluate": {"ood": [mn]},
         "checks": [{"claim": "detected", "metric": "auroc", "ood": "mnist-small", "above": 0.0}]},
        {"name": "photos", "title": "needs CIFAR-10", "suites": ["all"], "train": {"dataset": "cifar10"},
         "evaluate": {"ood": ["svhn"]}},
    ]
    folder.mkdir()
    for i, spec in enumerate(specs):
        (folder / f"{i}_{spec['name']}.yaml").write_text(yaml.safe_dump(spec))


def test_smoke_suite_runs_resumes_and_reports(tmp_path, fixtures_dir, capsys):
    configs, out = tmp_path / "configs", tmp_path / "out"
    write_suite(configs, fixtures_dir)
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


def test_changed_config_restarts_that_experiment(tmp_path, fixtures_dir, capsys):
    configs, out = tmp_path / "configs", tmp_path / "out"
    write_suite(configs, fixtures_dir)
    reproduce("mini", "smoke", out, configs, only=["cycle"], say=print)
    path = configs / "1_cycle.yaml"
    spec = yaml.safe_load(path.read_text())
    spec["train"]["max_steps"] = 7
    path.write_text(yaml.safe_dump(spec))
    capsys.readouterr()
    reproduce("mini", "smoke", out, configs, only=["cycle"], say=print)
    assert "configuration changed" in capsys.readouterr().out
    assert json.loads((out / "cycle" / "status.json").read_text())["stages"]["train"]["steps"] == 7


def test_cli_reproduce_list_and_errors(tmp_path, capsys):
    assert main(["reproduce", "--list", "--suite", "inductive_bias"]) == 0
    assert "cycle_mask_fashionmnist" in capsys.readouterr().out
    assert main(["reproduce", "--suite", "inductive_bias", "--scale", "laptop"]) == 2
    assert "unknown scale 'laptop'" in capsys.readouterr().err
    assert main(["reproduce", "--suite", "baseline"]) == 2
    assert "did you mean 'baselines'" in capsys.readouterr().err
    assert main(["reproduce", "--only", "cycle_mask", "--list"]) == 2
    assert "did you mean 'cycle_mask_fashionmnist'" in capsys.readouterr().err
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "x.yaml").write_text("name: x\ntitle: t\ntrain: {}\nevaluate: {}\nchecks: [{claim: c, metric: aurco}]\n")
    with pytest.raises(ConfigError, match="did you mean 'auroc'"):
        load_experiments(bad, "cpu")


def test_cli_reproduce_smoke_on_shipped_tabular_experiment(tmp_path, capsys):
    assert main(["reproduce", "--suite", "tabular", "--scale", "smoke", "--only", "tabular_breastcancer",
                 "--out", str(tmp_path / "r")]) == 0
    assert "1 done" in capsys.readouterr().out
    assert "tabular_breastcancer" in (tmp_path / "r" / "results.md").read_text()


def test_experiment_names_cannot_leave_the_output_folder(tmp_path):
    configs = tmp_path / "configs"
    configs.mkdir()
    (configs / "x.yaml").write_text("name: ../../escaped\ntitle: t\ntrain: {dataset: digits}\nevaluate: {ood: [noise]}\n")
    with pytest.raises(ConfigError, match="must be a plain folder name"):
        reproduce("all", "smoke", tmp_path / "out" / "suite", configs, say=print)
    assert not (tmp_path / "escaped").exists() and not (tmp_path / "out").exists()


def test_every_file_a_suite_writes_is_in_a_manifest(tmp_path, fixtures_dir):
    """What --overwrite (and a changed config) may remove is exactly what flowood wrote: nothing is missed."""
    from flowood.outputs import MANIFEST

    configs, out = tmp_path / "configs", tmp_path / "out"
    write_suite(configs, fixtures_dir)
    reproduce("mini", "smoke", out, configs, only=["cycle"], say=print)
    recorded = set()
    for manifest in out.rglob(MANIFEST):
        recorded |= {manifest.parent / f for f in json.loads(manifest.read_text())["files"]}
    written = {p for p in out.rglob("*") if p.is_file() and p.name != MANIFEST}
    assert written and written <= recorded
