"""The paper's experiments (flowood.reproduce.experiments): the shipped configs are valid at every scale, the paper
scale keeps the original hyper-parameters, and bad suites, scales, names and checks are refused clearly."""

from __future__ import annotations

import pytest

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


def test_experiment_names_cannot_leave_the_output_folder(tmp_path):
    configs = tmp_path / "configs"
    configs.mkdir()
    (configs / "x.yaml").write_text("name: ../../escaped\ntitle: t\ntrain: {dataset: digits}\n"
                                    "evaluate: {ood: [noise]}\n")
    with pytest.raises(ConfigError, match="must be a plain folder name"):
        reproduce("all", "smoke", tmp_path / "out" / "suite", configs, say=print)
    assert not (tmp_path / "escaped").exists() and not (tmp_path / "out").exists()
