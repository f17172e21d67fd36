"""Evaluation (flowood.evaluation.evaluate) end to end on real fixture images (FashionMNIST vs MNIST): the metrics
file's schema, the paper's findings, determinism, ensembles and background models, bf16 st-networks, and tabular
flows on real classes."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from builders import tiny_checkpoint, tiny_realnvp

from flowood.checkpoints import save_flow
from flowood.cli.main import main
from flowood.evaluation import Metrics, evaluate


def test_evaluate_writes_metrics_in_the_documented_schema(trained_checkpoint, mnist_npz, tmp_path):
    ckpt, mnist = trained_checkpoint, mnist_npz
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
    # the file round-trips through its typed schema exactly, text included
    typed = Metrics.from_json(tmp_path)
    assert typed.to_dict() == m and typed.to_json() == (tmp_path / "metrics.json").read_text()
    assert Metrics.from_json(m) == typed and typed.ood["noise"].auroc_ci == m["ood"]["noise"]["auroc_ci"]
    assert (tmp_path / "loglik_hist.png").stat().st_size > 1000
    with np.load(tmp_path / "scores.npz") as s:
        assert next(iter(s["names"])) == ind["name"] and s["set1"].shape == (200,)
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


def test_paper_headline_mnist_more_likely_than_fashionmnist(trained_checkpoint, mnist_npz):
    """The paper's first finding, on real images: a flow trained on FashionMNIST prefers MNIST."""
    ckpt = trained_checkpoint
    r = evaluate(ckpt, [mnist_npz], progress=False, scores=["likelihood", "complexity"])
    entry = next(iter(r.metrics.ood.values()))
    assert entry.bpd_mean < r.metrics.in_distribution.bpd_mean
    assert entry.auroc < 0.5
    # Serra et al.'s complexity correction separates MNIST better than the raw likelihood (issue 3)
    assert entry.scores["complexity"].auroc > entry.scores["likelihood"].auroc + 0.3


def test_evaluation_is_deterministic(trained_checkpoint):
    ckpt = trained_checkpoint
    a = evaluate(ckpt, ["noise"], progress=False, max_samples=50)
    b = evaluate(ckpt, ["noise"], progress=False, max_samples=50)
    for score, per_set in a.score_values.items():
        for name in per_set:
            assert np.array_equal(per_set[name], b.score_values[score][name]), score
    c = evaluate(ckpt, ["noise"], progress=False, max_samples=50, seed=1, scores=["likelihood"])
    assert not np.array_equal(a.scores["noise"], c.scores["noise"])


def test_evaluate_with_ensemble_and_background_checkpoints(tmp_path, fashionmnist_npz):
    paths = []
    for seed in range(3):
        torch.manual_seed(seed)
        paths.append(tiny_checkpoint(tmp_path / f"f{seed}.pt", fashionmnist_npz, init_batch=8, input_shape=(1, 28, 28)))
    r = evaluate(paths[0], ["noise"], scores=["likelihood", "likelihood_ratio"], ensemble=paths[1:],
                 background=paths[2], max_samples=40, progress=False)
    assert r.metrics.scores_computed == ["likelihood", "likelihood_ratio", "waic"]
    entry = r.metrics.ood["noise"].scores
    assert 0.0 <= entry["waic"].auroc <= 1.0 and 0.0 <= entry["likelihood_ratio"].auroc <= 1.0
    assert r.metrics.provenance.background == str(paths[2]) and len(r.metrics.provenance.ensemble) == 2
    with pytest.raises(ValueError, match="ensemble"):
        evaluate(paths[0], ["noise"], scores=["waic"], progress=False)
    with pytest.raises(ValueError, match="did you mean 'typicality'"):
        evaluate(paths[0], ["noise"], scores=["typicallity"], progress=False)


def test_evaluate_with_bf16_st_networks_records_it_and_agrees(tmp_path, fashionmnist_npz, mnist_npz):
    flow = tiny_realnvp((1, 28, 28), num_mid_channels=8)
    flow.log_prob(torch.randint(0, 256, (16, 1, 28, 28), dtype=torch.uint8))
    path = save_flow(flow, tmp_path / "f.pt", {"dataset": fashionmnist_npz})
    ood = [mnist_npz]
    full = evaluate(path, ood, scores=["likelihood"], max_samples=64, progress=False)
    mixed = evaluate(path, ood, out=tmp_path / "eval", scores=["likelihood"], max_samples=64, precision="bf16",
                     progress=False)
    assert mixed.metrics.provenance.precision == "bf16"
    name = next(iter(mixed.metrics.ood))
    assert mixed.metrics.ood[name].auroc == pytest.approx(full.metrics.ood[name].auroc, abs=0.05)
    with pytest.raises(ValueError, match="fp32, bf16 or fp16"):
        evaluate(path, ood, precision="half", progress=False)


@pytest.mark.parametrize("flow", ["RealNVPTabular", "MAF"])
def test_tabular_flow_detects_the_other_class(tmp_path, flow):
    """The paper's Appendix K on real data: a flow trained on benign tumours flags malignant ones."""
    from flowood.evaluation import evaluate
    from flowood.training import load_config, train

    cfg = load_config(None, dict(dataset="breastcancer1", flow=flow, num_coupling_layers=4, num_hidden_units=32,
                                 batch_size=64, lr=1e-3, num_epochs=1000, max_steps=300, out=str(tmp_path / "t")))
    result = train(cfg, progress=False)
    metrics = evaluate(result.checkpoint, ["breastcancer0"], out=tmp_path / "e", progress=False).metrics
    assert metrics.ood["breastcancer0"].auroc > 0.85
    assert json.loads((tmp_path / "e" / "metrics.json").read_text())["in_distribution"]["name"] == "breastcancer1"
