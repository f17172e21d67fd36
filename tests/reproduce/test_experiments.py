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
    assert cpu.train["max_steps"] == 600 and cpu.train["max_minutes"] == 15  # fixed steps: repeatable seeds


def test_long_scale_is_the_cpu_scale_trained_longer(tmp_path):
    """``long`` applies an experiment's own entry on top of its cpu entry, key by key; without one it is cpu."""
    chosen = ["bottleneck_l10_fashionmnist", "bottleneck_l50_fashionmnist", "bottleneck_l100_fashionmnist",
              "realnvp_fashionmnist"]
    cpu = {e.name: e for e in load_experiments(None, "cpu", "all", only=chosen)}
    long = {e.name: e for e in load_experiments(None, "long", "all", only=chosen)}
    for name in chosen[:3]:  # the l-sweep: 3000 steps, everything else as at cpu
        assert long[name].train == dict(cpu[name].train, max_steps=3000, max_minutes=120)
        assert long[name].evaluate == cpu[name].evaluate and long[name].inspect == cpu[name].inspect
        assert long[name].scale == "long"
    assert long["realnvp_fashionmnist"].train == cpu["realnvp_fashionmnist"].train
    configs = tmp_path / "c"
    configs.mkdir()
    (configs / "x.yaml").write_text("name: x\ntitle: t\ntrain: {dataset: digits, lr: 0.1}\nevaluate: {ood: [noise]}\n"
                                    "scales: {cpu: {train: {lr: 0.01, max_steps: 5}}, long: {train: {max_steps: 50}},"
                                    " smoke: {train: {max_steps: 1}}}\n")
    (exp,) = load_experiments(configs, "long")
    assert exp.train == {"dataset": "digits", "lr": 0.01, "max_steps": 50}
    (configs / "x.yaml").write_text("name: x\ntitle: t\ntrain: {dataset: digits}\nevaluate: {ood: [noise]}\n"
                                    "scales: {long: {training: {max_steps: 50}}}\n")
    with pytest.raises(ConfigError, match="scales.long may override train, evaluate, embed, inspect; got 'training'"):
        load_experiments(configs, "cpu")  # a mistake in any scale's entry is refused, whichever scale runs


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
        reproduce(tmp_path / "out" / "suite", suite="all", scale="smoke", configs=configs, say=print)
    assert not (tmp_path / "escaped").exists() and not (tmp_path / "out").exists()


def write_experiment(folder, paper_numbers: str, extra: str = "") -> None:
    folder.mkdir(exist_ok=True)
    (folder / "x.yaml").write_text("name: x\ntitle: t\ntrain: {dataset: digits}\nevaluate: {ood: [noise]}\n"
                                   f"paper_numbers: {paper_numbers}\n{extra}")


def test_paper_numbers_list_form_carries_each_source(tmp_path):
    from flowood.reproduce.experiments import PaperNumber

    write_experiment(tmp_path / "c", "[{metric: test_bpd, value: 3.14, source: \"a notebook\"}, "
                                     "{metric: auroc, ood: mnist, value: 0.1, source: \"Table 9\", note: \"mean\"}]",
                     "paper_numbers_note: only two\n")
    (exp,) = load_experiments(tmp_path / "c", "smoke")
    assert exp.paper_numbers == [PaperNumber("test_bpd", 3.14, "a notebook"),
                                 PaperNumber("auroc", 0.1, "Table 9", ood="mnist", note="mean")]
    assert exp.paper_numbers_note == "only two" and exp.scale == "smoke"
    assert [n.describe() for n in exp.paper_numbers] == ["test bits/dim", "AUROC (mnist)"]


def test_paper_numbers_older_mapping_form_is_still_read(tmp_path):
    from flowood.reproduce.experiments import PaperNumber

    write_experiment(tmp_path / "c", "{test_bpd: 3.49, \"auroc:mnist\": 0.2, \"test bits/dim (literature)\": 3.35}")
    (exp,) = load_experiments(tmp_path / "c", "cpu")
    assert exp.paper_numbers == [PaperNumber("test_bpd", 3.49), PaperNumber("auroc", 0.2, ood="mnist"),
                                 PaperNumber(None, 3.35, label="test bits/dim (literature)")]
    assert exp.paper_numbers[2].describe() == "test bits/dim (literature)" and exp.paper_numbers_note == ""
    write_experiment(tmp_path / "e", "{}")
    assert load_experiments(tmp_path / "e", "cpu")[0].paper_numbers == []


@pytest.mark.parametrize("entry, message", [
    ("{metric: test_bpd, value: 3.1}", "needs 'source'"),
    ("{metric: aurco, ood: mnist, value: 0.1, source: s}", "did you mean 'auroc'"),
    ("{metric: auroc, value: 0.1, source: s}", "auroc needs the OOD set as 'ood'"),
    ("{metric: test_bpd, ood: mnist, value: 3.1, source: s}", "drop 'ood'"),
    ("{metric: test_bpd, value: high, source: s}", "must be a number"),
    ("{metric: test_bpd, value: 3.1, source: s, sorce: t}", "did you mean 'source'"),
])
def test_paper_numbers_mistakes_are_named(tmp_path, entry, message):
    write_experiment(tmp_path / "c", f"[{entry}]")
    with pytest.raises(ConfigError, match=message):
        load_experiments(tmp_path / "c", "cpu")


def test_every_shipped_experiment_gives_its_paper_numbers_sources_or_says_why_it_has_none():
    for exp in load_experiments(default_config_dir(), "paper", "all"):
        assert exp.paper_numbers or exp.paper_numbers_note, exp.name
        for number in exp.paper_numbers:
            assert number.metric is not None and number.source, (exp.name, number)
