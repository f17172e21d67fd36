"""flowood embed: backbones, transforms, classifier training, weights files, OOD sets, errors; and the
paper's Section 8 finding on real fixture images (a flow on classifier features separates MNIST)."""

from __future__ import annotations

import json
import urllib.error

import numpy as np
import pytest
import torch
import torchvision

from flowood.cli.main import main
from flowood.embed import Preprocess, SmallCNN, build_backbone, embed, feature_extractor, last_linear
from flowood.embed.backbones import backbone_names


def fm(fixtures_dir):
    return f"npz:{fixtures_dir}/fashionmnist-small.npz"


def mn(fixtures_dir):
    return f"npz:{fixtures_dir}/mnist-small.npz"


@pytest.mark.parametrize("name,dim", [("resnet18", 512), ("efficientnet_b0", 1280), ("mobilenet_v3_small", 1024),
                                      ("smallcnn", 64)])
def test_feature_extractor_returns_the_classifier_input(name, dim):
    model = build_backbone(name, num_classes=10).eval()
    x = torch.rand(2, 3, 32, 32)
    features = feature_extractor(model)(x)
    assert features.shape == (2, dim)
    with torch.no_grad():
        torch.testing.assert_close(last_linear(model)[2](features), model(x))  # the head on them gives the logits


def test_backbone_names_and_unknown_name():
    assert "efficientnet_b4" in backbone_names() and "smallcnn" in backbone_names()
    with pytest.raises(ValueError, match="did you mean 'resnet18'"):
        build_backbone("resnet81")


def test_preprocess_channels_resize_crop_normalise():
    images = torch.full((2, 1, 28, 28), 255, dtype=torch.uint8)
    p = Preprocess(channels=3, size=36, crop=32, mean=(0.5, 0.5, 0.5), std=(0.25, 0.25, 0.25))
    x = p(images)
    assert x.shape == (2, 3, 32, 32)
    torch.testing.assert_close(x, torch.full_like(x, 2.0))  # (1 - 0.5) / 0.25
    assert Preprocess.from_dict(p.to_dict()) == p
    gray = Preprocess(channels=1, mean=(0.0,), std=(1.0,))(torch.zeros(1, 3, 4, 4, dtype=torch.uint8))
    assert gray.shape == (1, 1, 4, 4)


def test_embed_trains_a_classifier_and_writes_every_set(tmp_path, fixtures_dir):
    out = tmp_path / "emb.npz"
    result = embed(fm(fixtures_dir), out, ood=[mn(fixtures_dir), "noise"], backbone="smallcnn", train_classifier=True,
                   epochs=1, embedding_dim=16, progress=False)
    with np.load(out) as f:
        assert f["embeddings_train"].shape == (600, 16) and f["embeddings_test"].shape == (200, 16)
        assert f["labels_train"].shape == (600,)
        meta = json.loads(str(f["meta"]))
        first = f["embeddings_test"].copy()
    assert meta["backbone"] == "smallcnn" and meta["weights"] == "trained here"
    assert 0.0 <= result.test_accuracy <= 1.0 and result.dim == 16
    assert set(result.ood_files) == {mn(fixtures_dir), "noise"}
    assert result.ood_files["noise"].name == "emb-noise.npz"
    with np.load(result.ood_files[mn(fixtures_dir)]) as f:
        assert f["embeddings_test"].shape == (200, 16) and "embeddings_train" not in f.files
    # the saved classifier, passed as --weights, embeds the same way
    again = embed(fm(fixtures_dir), tmp_path / "again.npz", backbone="smallcnn", weights=str(result.classifier), progress=False)
    with np.load(again.out) as f:
        np.testing.assert_allclose(f["embeddings_test"], first, atol=1e-5)
    with pytest.raises(FileExistsError, match="overwrite=True"):
        embed(fm(fixtures_dir), out, backbone="smallcnn", train_classifier=True, epochs=1, progress=False)


def test_embed_torchvision_backbone_trained_here(tmp_path, fixtures_dir):
    result = embed(fm(fixtures_dir), tmp_path / "r.npz", backbone="resnet18", train_classifier=True, epochs=1,
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


def test_embed_errors_are_clear(tmp_path, fixtures_dir, monkeypatch):
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


def test_cli_embed_then_train_and_evaluate_a_flow_on_embeddings(tmp_path, fixtures_dir, capsys):
    """Section 8 on real images: a flow on classifier features flags MNIST, which the pixel flow
    prefers to FashionMNIST (tests/test_scores.py shows the pixel-space failure on the same fixtures)."""
    out = tmp_path / "emb.npz"
    assert main(["embed", "--dataset", fm(fixtures_dir), "--ood", mn(fixtures_dir), "--train-classifier",
                 "--epochs", "4", "--embedding-dim", "16", "--out", str(out), "--no_progress"]) == 0
    printed = capsys.readouterr().out
    assert "classifier test accuracy" in printed and "next: flowood train" in printed
    assert main(["train", "--dataset", f"npz:{out}", "--flow", "MAF", "--num_coupling_layers", "3",
                 "--num_hidden_units", "64", "--batch_size", "64", "--max_steps", "250", "--num_epochs", "100",
                 "--out", str(tmp_path / "flow"), "--no_progress"]) == 0
    ood = tmp_path / "emb-mnist-small.npz"
    assert main(["evaluate", "--checkpoint", str(tmp_path / "flow" / "checkpoints" / "last.ckpt"), "--ood",
                 f"npz:{ood}", "--out", str(tmp_path / "eval"), "--no_progress"]) == 0
    metrics = json.loads((tmp_path / "eval" / "metrics.json").read_text())
    assert metrics["ood"][f"npz:{ood}"]["auroc"] > 0.8


def test_cli_embed_errors_are_one_line(tmp_path, capsys):
    assert main(["embed", "--dataset", "digits", "--backbone", "resnet81", "--out", str(tmp_path / "x.npz"),
                 "--train-classifier"]) == 2
    err = capsys.readouterr().err
    assert "did you mean 'resnet18'" in err and "Traceback" not in err
