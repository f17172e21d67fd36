"""flowood embed (flowood.embed.run): classifier training, weights files, OOD sets, errors; and the paper's
Section 8 finding on real fixture images (a flow on classifier features separates MNIST)."""

from __future__ import annotations

import json
import urllib.error

import numpy as np
import pytest
import torch
import torchvision

from flowood.cli.main import main
from flowood.embed import embed


def test_embed_trains_a_classifier_and_writes_every_set(tmp_path, fashionmnist_npz, mnist_npz):
    out = tmp_path / "emb.npz"
    result = embed(fashionmnist_npz, out, ood=[mnist_npz, "noise"], backbone="smallcnn", train_classifier=True,
                   epochs=1, embedding_dim=16, progress=False)
    with np.load(out) as f:
        assert f["embeddings_train"].shape == (600, 16) and f["embeddings_test"].shape == (200, 16)
        assert f["labels_train"].shape == (600,)
        meta = json.loads(str(f["meta"]))
        first = f["embeddings_test"].copy()
    assert meta["backbone"] == "smallcnn" and meta["weights"] == "trained here"
    assert 0.0 <= result.test_accuracy <= 1.0 and result.dim == 16
    assert set(result.ood_files) == {mnist_npz, "noise"}
    assert result.ood_files["noise"].name == "emb-noise.npz"
    with np.load(result.ood_files[mnist_npz]) as f:
        assert f["embeddings_test"].shape == (200, 16) and "embeddings_train" not in f.files
    # the saved classifier, passed as --weights, embeds the same way
    again = embed(fashionmnist_npz, tmp_path / "again.npz", backbone="smallcnn", weights=str(result.classifier),
                  progress=False)
    with np.load(again.out) as f:
        np.testing.assert_allclose(f["embeddings_test"], first, atol=1e-5)
    with pytest.raises(FileExistsError, match="overwrite=True"):
        embed(fashionmnist_npz, out, backbone="smallcnn", train_classifier=True, epochs=1, progress=False)


def test_embed_torchvision_backbone_trained_here(tmp_path, fashionmnist_npz):
    result = embed(fashionmnist_npz, tmp_path / "r.npz", backbone="resnet18", train_classifier=True, epochs=1,
                   max_train_samples=64, batch_size=32, progress=False)
    assert result.dim == 512
    with np.load(result.out) as f:
        assert f["embeddings_train"].shape == (64, 512) and np.isfinite(f["embeddings_test"]).all()


def test_embed_loads_a_plain_torchvision_state_dict(tmp_path):
    model = torchvision.models.resnet18(num_classes=7)
    torch.save(model.state_dict(), tmp_path / "w.pt")
    result = embed("digits", tmp_path / "d.npz", backbone="resnet18", weights=str(tmp_path / "w.pt"), image_size=32,
                   progress=False)
    assert result.dim == 512
    with pytest.raises(ValueError, match="does not fit"):
        embed("digits", tmp_path / "d34.npz", backbone="resnet34", weights=str(tmp_path / "w.pt"), progress=False)


def test_embed_errors_are_clear(tmp_path, monkeypatch):
    with pytest.raises(ValueError, match="train_classifier=True"):
        embed("digits", tmp_path / "a.npz", backbone="resnet18", progress=False)
    with pytest.raises(ValueError, match=r"\.npz"):
        embed("digits", tmp_path / "a.pt", backbone="smallcnn", train_classifier=True, progress=False)
    with pytest.raises(ValueError, match="no class labels"):
        embed("noise", tmp_path / "n.npz", backbone="smallcnn", train_classifier=True, progress=False)
    with pytest.raises(ValueError, match="no weights 'IMAGENET9'"):
        embed("digits", tmp_path / "b.npz", backbone="resnet18", weights="IMAGENET9", progress=False)
    (tmp_path / "junk.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(ValueError, match="cannot read weights file"):
        embed("digits", tmp_path / "c.npz", backbone="resnet18", weights=str(tmp_path / "junk.pt"), progress=False)

    def offline(*args, **kwargs):
        raise urllib.error.URLError("network is unreachable")
    monkeypatch.setattr(torch.hub, "load_state_dict_from_url", offline)
    with pytest.raises(ValueError, match="could not download.*train_classifier=True"):
        embed("digits", tmp_path / "d.npz", backbone="resnet18", weights="DEFAULT", progress=False)
    np.savez(tmp_path / "vec.npz", embeddings=np.zeros((4, 3), np.float32))
    with pytest.raises(ValueError, match="vectors, not images"):
        embed(f"npz:{tmp_path}/vec.npz", tmp_path / "e.npz", backbone="smallcnn", train_classifier=True, progress=False)


def test_cli_embed_then_train_and_evaluate_a_flow_on_embeddings(tmp_path, fashionmnist_npz, mnist_npz, capsys):
    """Section 8 on real images: a flow on classifier features flags MNIST, which the pixel flow
    prefers to FashionMNIST (tests/evaluation/test_evaluate.py shows the pixel-space failure on the same fixtures)."""
    out = tmp_path / "emb.npz"
    assert main(["embed", "--dataset", fashionmnist_npz, "--ood", mnist_npz, "--train-classifier",
                 "--epochs", "4", "--embedding-dim", "16", "--out", str(out), "--no_progress"]) == 0
    printed = capsys.readouterr().out
    assert "classifier test accuracy" in printed and "next: flowood train" in printed
    assert main(["train", "--dataset", f"npz:{out}", "--flow", "MAF", "--num_coupling_layers", "3",
                 "--num_hidden_units", "64", "--batch_size", "64", "--max_steps", "250", "--num_epochs", "100",
                 "--out", str(tmp_path / "flow"), "--no_progress"]) == 0
    ood = tmp_path / "emb-mnist-small.npz"
    assert main(["evaluate", "--checkpoint", str(tmp_path / "flow" / "checkpoints" / "last.ckpt"), "--ood",
                 f"npz:{ood}", "--out", str(tmp_path / "eval"), "--no_progress"]) == 0
    printed = capsys.readouterr().out
    metrics = json.loads((tmp_path / "eval" / "metrics.json").read_text())
    assert metrics["ood"][f"npz:{ood}"]["auroc"] > 0.8
    # the classifier-based detectors come beside the flow's scores, on the same features and sets
    detectors = ["msp", "energy", "maxlogit", "mahalanobis", "rmd", "knn", "vim", "react"]
    assert set(detectors) <= set(metrics["scores_computed"])
    assert all(0.0 <= metrics["ood"][f"npz:{ood}"]["scores"][d]["auroc"] <= 1.0 for d in detectors)
    with np.load(out) as f:
        logits = f["embeddings_test"] @ f["classifier_weight"].T + f["classifier_bias"]
        accuracy = float((logits.argmax(1) == f["labels_test"]).mean())
    assert metrics["classifier"]["test_accuracy"] == pytest.approx(accuracy)
    assert f"classifier test accuracy {accuracy:.3f}" in printed and "ranked by mean AUROC" in printed
    ranking = metrics["ranking"]
    assert {r["family"] for r in ranking} == {"flow", "classifier"} and len(ranking) == len(metrics["scores_computed"])
    assert [r["mean_auroc"] for r in ranking] == sorted((r["mean_auroc"] for r in ranking), reverse=True)
    assert next(r for r in ranking if r["detector"] == "mahalanobis")["needs"] == "features + labels"
    assert "Flow scores and classifier-based detectors, ranked" in (tmp_path / "eval" / "report.html").read_text()
    # asked for explicitly on pixels, they are refused with the reason
    assert main(["evaluate", "--checkpoint", str(tmp_path / "flow" / "checkpoints" / "last.ckpt"), "--ood",
                 f"npz:{ood}", "--detectors", "msp", "--dataset", fashionmnist_npz, "--out", str(tmp_path / "eval2"),
                 "--no_progress"]) == 2
    assert "not an embeddings file" in capsys.readouterr().err
