"""flowood compare (flowood.evaluation.compare) and classifier-based detectors in flowood evaluate: a pixel flow and an
embedding flow with its classifier's detectors in one ranking, sets matched by the images behind them, mean ± sd
over seeds; the report opens in headless Chromium."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from browser import check_page
from builders import tiny_checkpoint

from flowood.checkpoints import save_flow
from flowood.cli.main import main
from flowood.errors import DataError
from flowood.evaluation import Metrics, evaluate
from flowood.evaluation.compare import compare
from flowood.flows import RealNVPTabular
from flowood.options import ConfigError

pytest.importorskip("pytorch_ood")


def _write_embeddings(folder, seed: int):
    """Embeddings as `flowood embed` writes them: three classes of 6-dim features, a head, MNIST-like OOD features."""
    g = np.random.default_rng(seed)
    centres = g.normal(size=(3, 6)) * 3
    labels = np.repeat(np.arange(3), 60)
    meta = json.dumps({"dataset": "fashionmnist", "flowood_version": "test"})
    ind = folder / "emb.npz"
    np.savez(ind, embeddings_train=(centres[labels] + g.normal(size=(180, 6))).astype(np.float32),
             labels_train=labels, embeddings_test=(centres[labels[:45]] + g.normal(size=(45, 6))).astype(np.float32),
             labels_test=labels[:45], classifier_weight=centres.astype(np.float32),
             classifier_bias=np.zeros(3, np.float32), meta=np.array(meta))
    ood = folder / "emb-mnist.npz"
    np.savez(ood, embeddings_test=(g.normal(size=(40, 6)) * 6).astype(np.float32),
             meta=np.array(json.dumps({"dataset": "mnist", "flowood_version": "test"})))
    return f"npz:{ind}", f"npz:{ood}"


def _embedding_evaluation(folder, seed: int):
    ind, ood = _write_embeddings(folder, seed)
    torch.manual_seed(seed)
    flow = RealNVPTabular(6, num_coupling_layers=2, num_hidden_units=8)
    flow.log_prob(torch.randn(16, 6))
    ckpt = save_flow(flow, folder / "flow.pt", {"dataset": ind})
    return evaluate(ckpt, [ood], out=folder / "eval", progress=False, bootstrap=20)


def test_evaluate_adds_every_classifier_detector_on_embeddings(tmp_path):
    result = _embedding_evaluation(tmp_path, 0)
    m = result.metrics
    assert m.scores_computed[:1] == ["likelihood"]
    assert m.scores_computed[-8:] == ["msp", "energy", "maxlogit", "mahalanobis", "rmd", "knn", "vim", "react"]
    entry = next(iter(m.ood.values()))
    assert entry.dataset == "mnist" and m.in_distribution.dataset == "fashionmnist"
    assert set(entry.scores["knn"].to_dict()) >= {"auroc", "aupr_in", "aupr_out", "fpr95", "auroc_ci"}
    assert entry.scores["mahalanobis"].auroc > 0.9  # far-away features, as their definition says
    with np.load(tmp_path / "emb.npz") as f:
        logits = f["embeddings_test"] @ f["classifier_weight"].T
        assert m.classifier.test_accuracy == pytest.approx(float((logits.argmax(1) == f["labels_test"]).mean()))
    assert {r.family for r in m.ranking} == {"flow", "classifier"}
    assert Metrics.from_json(tmp_path / "eval") == m  # the classifier and ranking round-trip too
    # a subset by name, none, and refusals with the reason
    ood = next(iter(m.ood))
    only = evaluate(tmp_path / "flow.pt", [ood], detectors=["energy"], progress=False)
    assert only.metrics.scores_computed[-1] == "energy" and "msp" not in only.metrics.scores_computed
    none = evaluate(tmp_path / "flow.pt", [ood], detectors=["none"], progress=False)
    assert none.metrics.classifier is None and not set(none.metrics.scores_computed) & {"msp", "knn"}
    with pytest.raises(ConfigError, match="did you mean 'vim'"):
        evaluate(tmp_path / "flow.pt", [ood], detectors=["vin"], progress=False)


def test_compare_ranks_pixel_and_embedding_detectors_over_seeds(tmp_path, chromium, fashionmnist_npz, mnist_npz):
    embedding = []
    for seed in (0, 1):
        folder = tmp_path / f"emb{seed}"
        folder.mkdir()
        _embedding_evaluation(folder, seed)
        embedding.append(folder / "eval")
    pixel = tmp_path / "pixel"
    ckpt = tiny_checkpoint(tmp_path / "p.pt", fashionmnist_npz, init_batch=8, input_shape=(1, 28, 28))
    evaluate(ckpt, [mnist_npz], out=pixel, max_samples=40, scores=["likelihood"], progress=False)
    # the fixtures' npz sets stand for FashionMNIST and MNIST: say so, as `flowood embed`'s meta does
    for run in embedding:
        metrics = json.loads((run / "metrics.json").read_text())
        metrics["in_distribution"]["dataset"] = fashionmnist_npz
        next(iter(metrics["ood"].values()))["dataset"] = mnist_npz
        (run / "metrics.json").write_text(json.dumps(metrics))

    result = compare({"pixel flow": [pixel], "embeddings": embedding}, out=tmp_path / "cmp")
    s = result.summary
    assert s["ood_sets"] == [mnist_npz] and s["groups"]["embeddings"]["runs"] == 2
    rows = {r["detector"]: r for r in s["rows"]}
    assert set(rows) == {"pixel flow: likelihood", *(f"embeddings: {d}" for d in s["groups"]["embeddings"]["scores"])}
    aurocs = [json.loads((run / "metrics.json").read_text()) for run in embedding]
    values = [next(iter(m["ood"].values()))["scores"]["knn"]["auroc"] for m in aurocs]
    cell = rows["embeddings: knn"]["ood"][mnist_npz]["auroc"]
    assert cell["mean"] == pytest.approx(np.mean(values)) and cell["sd"] == pytest.approx(np.std(values, ddof=1))
    assert rows["pixel flow: likelihood"]["ood"][mnist_npz]["auroc"]["sd"] is None  # one run: no sd
    assert [r["mean_auroc"] for r in s["rows"]] == sorted((r["mean_auroc"] for r in s["rows"]), reverse=True)
    accuracy = s["groups"]["embeddings"]["classifier_test_accuracy"]
    assert accuracy["runs"] == 2 and s["groups"]["pixel flow"]["classifier_test_accuracy"] is None
    assert "embeddings: mahalanobis" in (tmp_path / "cmp" / "compare.md").read_text()
    page = check_page(chromium, tmp_path / "cmp" / "report.html")
    assert page["errors"] == [] and page["broken"] == [] and page["images"] == 1

    (tmp_path / "emb2").mkdir()
    _embedding_evaluation(tmp_path / "emb2", 2)  # its meta says fashionmnist, the pixel run's set is the fixture
    with pytest.raises(DataError, match="different in-distribution"):
        compare({"a": [pixel], "b": [tmp_path / "emb2" / "eval"]})


def test_compare_errors_and_cli(tmp_path, capsys, fashionmnist_npz, mnist_npz):
    ckpt = tiny_checkpoint(tmp_path / "p.pt", fashionmnist_npz, init_batch=8, input_shape=(1, 28, 28))
    for seed in (0, 1):
        evaluate(ckpt, [mnist_npz, "noise"], out=tmp_path / f"r{seed}" / "eval", max_samples=30, seed=seed,
                 scores=["likelihood"], progress=False)
    evaluate(ckpt, ["noise"], out=tmp_path / "other", max_samples=30, scores=["likelihood"], progress=False)
    assert main(["compare", "--runs", f"seeds={tmp_path}/r*/eval", "--runs", f"again={tmp_path}/r0/eval",
                 "--out", str(tmp_path / "cmp"), "--no_progress"]) == 0
    printed = capsys.readouterr().out
    assert "seeds: likelihood" in printed and " ± " in printed
    summary = json.loads((tmp_path / "cmp" / "compare.json").read_text())
    assert summary["groups"]["seeds"]["runs"] == 2 and summary["ood_sets"] == [mnist_npz, "noise"]
    assert main(["compare", "--runs", f"a={tmp_path}/r0/eval", f"b={tmp_path}/other", "--out",
                 str(tmp_path / "cmp2")]) == 0  # only the shared set is compared
    assert json.loads((tmp_path / "cmp2" / "compare.json").read_text())["ood_sets"] == ["noise"]
    assert main(["compare", "--runs", f"a={tmp_path}/nothing*", "--out", str(tmp_path / "cmp3")]) == 2
    assert "no folder matches" in capsys.readouterr().err
    assert main(["compare", "--runs", str(tmp_path / "r0"), "--out", str(tmp_path / "cmp3")]) == 2
    assert "LABEL=EVAL_DIR" in capsys.readouterr().err
    assert main(["compare", "--runs", f"a={tmp_path / 'r0'}", "--out", str(tmp_path / "cmp3")]) == 2
    assert "holds no metrics.json" in capsys.readouterr().err
    assert main(["compare", "--runs", f"a={tmp_path / 'r0' / 'eval'}", "--out", str(tmp_path / "cmp")]) == 2
    assert "overwrite" in capsys.readouterr().err
