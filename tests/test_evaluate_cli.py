"""Evaluation and the command line, end to end on real fixture images (FashionMNIST vs MNIST)."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pytest
import torch

from flowood.checkpoints import CheckpointError, load_flow, save_flow
from flowood.cli.main import main
from flowood.evaluation import evaluate
from flowood.flows import RealNVP


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A tiny RealNVP trained for 40 steps on the FashionMNIST fixture, through the CLI."""
    from pathlib import Path
    fixtures = Path(__file__).parent / "fixtures"
    out = tmp_path_factory.mktemp("cli") / "train"
    code = main(["train", "--dataset", f"npz:{fixtures}/fashionmnist-small.npz", "--out", str(out),
                 "--num_blocks", "1", "--num_mid_channels", "8", "--batch_size", "32", "--max_steps", "40",
                 "--max_test_samples", "100", "--no_progress"])
    assert code == 0
    return out / "checkpoints" / "last.ckpt", fixtures


def test_evaluate_writes_metrics_in_the_documented_schema(trained, tmp_path):
    ckpt, fixtures = trained
    mnist = f"npz:{fixtures}/mnist-small.npz"
    code = main(["evaluate", "--checkpoint", str(ckpt), "--ood", mnist, "digits", "noise", "--out", str(tmp_path),
                 "--no_progress", "--bootstrap", "20", "--max_samples", "200"])
    assert code == 0
    m = json.loads((tmp_path / "metrics.json").read_text())
    ind = m["in_distribution"]
    assert ind["name"].endswith("fashionmnist-small.npz") and ind["n"] == 200
    for key in ("bpd_mean", "bpd_std", "source"):
        assert key in ind
    assert set(m["ood"]) == {mnist, "digits", "noise"}
    for entry in m["ood"].values():
        for key in ("bpd_mean", "auroc", "aupr", "fpr95", "aupr_in", "aupr_out", "detection_accuracy", "auroc_ci"):
            assert key in entry
        assert 0.0 <= entry["auroc"] <= 1.0
    assert m["ood"]["digits"]["original_shape"] == [1, 8, 8]  # adapted to 28x28 for scoring
    # uniform noise is far less likely than clothing, even for a barely trained flow
    assert m["ood"]["noise"]["auroc"] > 0.95
    prov = m["provenance"]
    assert len(prov["checkpoint_sha256"]) == 64 and prov["seed"] == 0
    assert (tmp_path / "loglik_hist.png").stat().st_size > 1000
    with np.load(tmp_path / "scores.npz") as s:
        assert list(s["names"])[0] == ind["name"] and s["set1"].shape == (200,)
        assert np.array_equal(s["likelihood__set1"], s["set1"])
    # every default score, per OOD set, in the schema of issue 3
    assert m["scores_computed"] == ["likelihood", "complexity", "complexity_jp2", "typicality", "latent_last_scale",
                                    "latent_early_scales"]
    for entry in m["ood"].values():
        for score in m["scores_computed"]:
            for key in ("auroc", "aupr_in", "aupr_out", "fpr95", "detection_accuracy"):
                assert 0.0 <= entry["scores"][score][key] <= 1.0
    assert m["ood"]["noise"]["scores"]["likelihood"]["auroc"] == m["ood"]["noise"]["auroc"]
    for score in m["scores_computed"]:
        assert (tmp_path / f"hist_{score}.png").exists()
    assert len(list(tmp_path.glob("roc_*.png"))) == 3 and len(list(tmp_path.glob("examples_*_most.png"))) == 4
    page = (tmp_path / "report.html").read_text()
    assert page.count("data:image/png;base64,") == 6 + 3 + 2 * 4  # histograms, ROC curves, example grids
    assert "http" not in page.replace("http-equiv", "")  # self-contained: nothing fetched from a network


def test_paper_headline_mnist_more_likely_than_fashionmnist(trained):
    """The paper's first finding, on real images: a flow trained on FashionMNIST prefers MNIST."""
    ckpt, fixtures = trained
    r = evaluate(ckpt, [f"npz:{fixtures}/mnist-small.npz"], progress=False, scores=["likelihood", "complexity"])
    entry = next(iter(r.metrics["ood"].values()))
    assert entry["bpd_mean"] < r.metrics["in_distribution"]["bpd_mean"]
    assert entry["auroc"] < 0.5
    # Serra et al.'s complexity correction separates MNIST better than the raw likelihood (issue 3)
    assert entry["scores"]["complexity"]["auroc"] > entry["scores"]["likelihood"]["auroc"] + 0.3


def test_evaluation_is_deterministic(trained):
    ckpt, fixtures = trained
    a = evaluate(ckpt, ["noise"], progress=False, max_samples=50)
    b = evaluate(ckpt, ["noise"], progress=False, max_samples=50)
    for score, per_set in a.score_values.items():
        for name in per_set:
            assert np.array_equal(per_set[name], b.score_values[score][name]), score
    c = evaluate(ckpt, ["noise"], progress=False, max_samples=50, seed=1, scores=["likelihood"])
    assert not np.array_equal(a.scores["noise"], c.scores["noise"])


def test_bad_checkpoints_give_clear_errors(tmp_path, trained):
    ckpt, _ = trained
    raw = ckpt.read_bytes()
    (tmp_path / "trunc.ckpt").write_bytes(raw[: len(raw) // 2])
    with pytest.raises(CheckpointError, match="corrupt or truncated"):
        load_flow(tmp_path / "trunc.ckpt")
    torch.save({"weights": torch.zeros(3)}, tmp_path / "foreign.ckpt")
    with pytest.raises(CheckpointError, match="not a flowood checkpoint"):
        load_flow(tmp_path / "foreign.ckpt")
    with pytest.raises(CheckpointError, match="does not exist"):
        load_flow(tmp_path / "missing.ckpt")
    assert main(["evaluate", "--checkpoint", str(tmp_path / "trunc.ckpt"), "--ood", "noise", "--out",
                 str(tmp_path / "e")]) == 2


def test_save_flow_roundtrip_and_wrong_shape_data(tmp_path):
    flow = RealNVP((1, 8, 8), num_blocks=1, num_mid_channels=4)
    flow.log_prob(torch.rand(4, 1, 8, 8))
    path = save_flow(flow, tmp_path / "f.pt", {"dataset": "digits"})
    loaded = load_flow(path)
    x = torch.rand(3, 1, 8, 8)
    assert torch.allclose(loaded.flow.log_prob(x, noise="center"), flow.eval().log_prob(x, noise="center"))
    np.savez(tmp_path / "vec.npz", embeddings=np.random.randn(10, 5).astype(np.float32))
    with pytest.raises(ValueError, match="vectors cannot be adapted"):
        evaluate(loaded, [f"npz:{tmp_path}/vec.npz"], progress=False, scores=["likelihood"])
    r = evaluate(loaded, ["noise"], progress=False, scores=["likelihood"])  # in-distribution set from the checkpoint: digits
    assert r.metrics["in_distribution"]["name"] == "digits"


def test_cli_errors_are_one_line(tmp_path, capsys):
    assert main(["train", "--flow", "RealNVPP", "--dataset", "npz:/nonexistent.npz", "--out", str(tmp_path / "x")]) == 2
    assert "did you mean 'RealNVP'" in capsys.readouterr().err
    assert main(["train", "--dataset", "cifar-1O", "--out", str(tmp_path / "y")]) == 2
    assert "did you mean 'cifar10'" in capsys.readouterr().err
    assert main(["data", "fetch", "cifar1O"]) == 2
    assert main([]) == 2


def test_cli_data_list(capsys, tmp_path):
    assert main(["data", "list", "--data-root", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "digits" in out and "flowood data fetch kmnist" in out


def test_console_script_runs():
    result = subprocess.run([sys.executable, "-m", "flowood.cli.main", "--version"], capture_output=True, text=True)
    assert result.returncode == 0 and result.stdout.strip()


@pytest.mark.slow
def test_ddp_two_processes_on_cpu(tmp_path, fixtures_dir):
    """2-process DDP (gloo) through Lightning, with Glow's ActNorm initialised identically on both ranks."""
    out = tmp_path / "ddp"
    env = dict(os.environ, PYTHONWARNINGS="ignore")
    cmd = [sys.executable, "-m", "flowood.cli.main", "train", "--dataset", f"npz:{fixtures_dir}/fashionmnist-small.npz",
           "--out", str(out), "--flow", "Glow", "--num_coupling_layers_per_scale", "2", "--num_blocks", "1",
           "--num_mid_channels", "8", "--batch_size", "16", "--max_steps", "4", "--max_test_samples", "64",
           "--devices", "2", "--accelerator", "cpu", "--strategy", "ddp", "--no_progress"]
    result = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "test bits/dim" in result.stdout
    summary = json.loads((out / "train_summary.json").read_text())
    assert summary["steps"] == 4
    loaded = load_flow(out / "checkpoints" / "last.ckpt")
    assert bool(loaded.flow.steps[1].initialized)
