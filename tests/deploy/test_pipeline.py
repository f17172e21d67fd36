"""Detector pipelines (flowood.deploy.pipeline, flowood.deploy.fit): raw images -> a classifier's features -> a
flow or a classifier-based detector -> a calibrated threshold, in one file of plain data; equal to what `flowood
evaluate` computes from the same classifier's embeddings."""

from __future__ import annotations

import csv
import json

import numpy as np
import pytest
import torch
from builders import UserClassifier, export_program, fixture_arrays
from PIL import Image

from flowood.cli.main import main
from flowood.data import load_dataset
from flowood.deploy import fit_detector, load_detector, score_inputs, split_fit_calibration, write_scores
from flowood.deploy.pipeline import DetectorPipeline, detector_info, linear_head
from flowood.evaluation import evaluate
from flowood.ood.classifier import CLASSIFIER_DETECTORS, ClassifierOutputs, classifier_scores
from flowood.options import ConfigError

pytest.importorskip("pytorch_ood")


def test_fitting_samples_are_those_evaluate_fits_on():
    for n, fit_samples in ((600, 5000), (600, 200), (10, 8)):
        fit, cal = split_fit_calibration(n, fit_samples, 0.2, seed=3)
        taken = torch.randperm(n, generator=torch.Generator().manual_seed(3))[:len(fit)].sort().values
        assert torch.equal(fit, taken) and not set(fit.tolist()) & set(cal.tolist())
        assert len(fit) + len(cal) <= n and len(cal) >= 1
    assert len(split_fit_calibration(600, 200, 0.2, 0)[1]) == 50  # 0.2 of the 250 used calibrate
    assert [len(i) for i in split_fit_calibration(600, 5000, 0.2, 0)] == [480, 120]  # a small split: 0.2 of it
    with pytest.raises(Exception, match="at least 3"):
        split_fit_calibration(2, 5, 0.2, 0)


@pytest.fixture(scope="module")
def evaluated(embedded):
    """flowood evaluate on the classifier's embeddings: the flow's likelihood and typicality and every classifier-based
    detector, fitted on the 500 training samples a pipeline fits on."""
    n_fit = len(split_fit_calibration(600, 5000, 0.2, 0)[0])
    result = evaluate(embedded["flow"], [f"npz:{embedded['emb_mnist']}"], dataset=f"npz:{embedded['emb']}",
                      scores=["likelihood", "typicality"], detectors=list(CLASSIFIER_DETECTORS), fit_samples=n_fit,
                      progress=False)
    return result.score_values, f"npz:{embedded['emb_mnist']}"


@pytest.fixture(scope="module")
def mnist_images() -> torch.Tensor:
    return torch.from_numpy(fixture_arrays("mnist", "test")[0])


@pytest.mark.parametrize("method", list(CLASSIFIER_DETECTORS))
def test_every_classifier_detector_fits_saves_loads_and_equals_evaluate(embedded, evaluated, mnist_images,
                                                                        fashionmnist_npz, method, tmp_path):
    values, mnist = evaluated
    fitted = fit_detector(classifier=embedded["classifier"], out=tmp_path / "d.pt", method=method,
                          dataset=fashionmnist_npz, progress=False)
    loaded = load_detector(tmp_path / "d.pt")
    assert isinstance(loaded, DetectorPipeline) and loaded.threshold_ == fitted.threshold_
    scores = loaded.anomaly_score(mnist_images)
    np.testing.assert_array_equal(scores, fitted.anomaly_score(mnist_images))
    np.testing.assert_allclose(scores, values[method][mnist], rtol=1e-5, atol=1e-7)
    assert set(loaded.predict(mnist_images[:8]).tolist()) <= {-1, 1}


@pytest.mark.parametrize("score", ["likelihood", "typicality"])
def test_a_flow_on_the_features_equals_evaluate(embedded, evaluated, mnist_images, fashionmnist_npz, score, tmp_path):
    values, mnist = evaluated
    fit_detector(embedded["flow"], tmp_path / "f.pt", classifier=embedded["classifier"], method="flow", score=score,
                 dataset=fashionmnist_npz, progress=False)
    loaded = load_detector(tmp_path / "f.pt")
    np.testing.assert_allclose(loaded.anomaly_score(mnist_images), values[score][mnist], rtol=1e-5)
    info = detector_info(tmp_path / "f.pt")
    assert info["flow"]["sha256"] and info["detector"] == f"RealNVPTabular on the features, {score} score"


def test_a_flow_trained_by_fit_is_kept_with_its_features(embedded, fashionmnist_npz, tmp_path, mnist_images):
    config = tmp_path / "tiny.yaml"
    config.write_text("flow: MAF\nnum_coupling_layers: 2\nnum_hidden_units: 16\nbatch_size: 64\nmax_steps: 15\n"
                      "samples_every_n_epochs: 0\n")
    detector = fit_detector(classifier=embedded["classifier"], out=tmp_path / "d.pt", method="flow",
                            dataset=fashionmnist_npz, flow_config=str(config), flow_out=str(tmp_path / "run"),
                            max_minutes=2, progress=False)
    flow = detector.provenance_["flow"]
    assert flow["steps"] == 15 and flow["flow"] == "MAF" and flow["run"] == str((tmp_path / "run").resolve())
    with np.load(tmp_path / "run" / "features.npz") as f:
        assert f["embeddings_train"].shape == (480, 8) and f["embeddings_test"].shape == (120, 8)
    ckpt = tmp_path / "run" / "train" / "checkpoints" / "last.ckpt"
    again = fit_detector(ckpt, tmp_path / "again.pt", classifier=embedded["classifier"], method="flow",
                         dataset=fashionmnist_npz, progress=False)
    np.testing.assert_array_equal(again.anomaly_score(mnist_images), detector.anomaly_score(mnist_images))
    with pytest.raises(Exception, match="holds an earlier"):  # the kept run is not replaced without overwrite
        fit_detector(classifier=embedded["classifier"], out=tmp_path / "d2.pt", method="flow",
                     dataset=fashionmnist_npz, flow_config=str(config), flow_out=str(tmp_path / "run"),
                     progress=False)


def test_a_users_torch_export_model_is_the_extractor(tmp_path, fashionmnist_npz, mnist_images):
    model = UserClassifier().eval()
    train_images = torch.from_numpy(fixture_arrays("fashionmnist")[0])
    fit_idx, _ = split_fit_calibration(600, 5000, 0.2, 0)
    with torch.no_grad():
        features, logits = model(train_images[fit_idx].float() / 255)
        ood_features, _ = model(mnist_images.float() / 255)
    labels = torch.from_numpy(fixture_arrays("fashionmnist")[1])[fit_idx]
    head, residual = linear_head(ClassifierOutputs(features, logits))
    assert residual < 1e-5 and torch.allclose(head.weight, model.head.weight, atol=1e-4)
    expected = classifier_scores(["vim", "mahalanobis"], features, labels, head, {"mnist": ood_features})
    for name, path in (("dynamic", export_program(model, tmp_path / "dyn.pt2")),
                       ("static", export_program(model, tmp_path / "one.pt2", dynamic=False))):
        for method in ("vim", "mahalanobis"):
            out = tmp_path / f"{name}-{method}.pt"
            fit_detector(classifier=path, out=out, method=method, dataset=fashionmnist_npz, progress=False)
            loaded = load_detector(out)
            np.testing.assert_allclose(loaded.anomaly_score(mnist_images), expected[method]["mnist"], rtol=1e-4,
                                       atol=1e-6)
    assert "torch.export model giving features and logits" in detector_info(tmp_path / "dynamic-vim.pt")["extractor"]
    features_only = export_program(UserClassifier(features_only=True), tmp_path / "features.pt2", size=32)
    with pytest.raises(ConfigError, match="needs the classifier's logits, and this model gives features only"):
        fit_detector(classifier=features_only, out=tmp_path / "x.pt", method="msp", dataset=fashionmnist_npz)
    with pytest.warns(UserWarning, match=r"adapted to the classifier's input \(1x28x28 -> 1x32x32\)"):
        detector = fit_detector(classifier=features_only, out=tmp_path / "k.pt", method="knn",
                                dataset=fashionmnist_npz, progress=False)
    assert detector.input_shape == (1, 32, 32) and detector.provenance_["images_adapted"] == "1x28x28 -> 1x32x32"
    payload = torch.load(tmp_path / "k.pt", weights_only=True)  # the graph is JSON, the weights tensors
    assert payload["extractor"]["graph"].dtype == torch.uint8


def test_a_torchvision_architecture_with_a_local_weights_file(tmp_path, fashionmnist_npz, mnist_images):
    import torchvision

    torch.manual_seed(0)
    torch.save(torchvision.models.resnet18(num_classes=10).state_dict(), tmp_path / "resnet18.pth")
    detector = fit_detector(classifier=tmp_path / "resnet18.pth", out=tmp_path / "r.pt", backbone="resnet18",
                            image_size=32, method="energy", dataset=fashionmnist_npz, fit_samples=100,
                            progress=False)
    loaded = load_detector(tmp_path / "r.pt")
    np.testing.assert_array_equal(loaded.anomaly_score(mnist_images[:8]), detector.anomaly_score(mnist_images[:8]))
    assert detector_info(tmp_path / "r.pt")["extractor"].startswith("resnet18 classifier (512-dim features, 10 classes")
    with pytest.raises(Exception, match="say which model it belongs to"):
        fit_detector(classifier=tmp_path / "resnet18.pth", out=tmp_path / "x.pt", dataset=fashionmnist_npz)


def test_requests_that_cannot_work_are_refused(embedded, fashionmnist_npz, trained_checkpoint, tmp_path):
    with pytest.raises(ConfigError, match="did you mean 'mahalanobis'"):
        fit_detector(classifier=embedded["classifier"], out=tmp_path / "d.pt", method="mahalanobiss",
                     dataset=fashionmnist_npz)
    with pytest.raises(ConfigError, match="needs the in-distribution images"):
        fit_detector(classifier=embedded["classifier"], out=tmp_path / "d.pt")
    with pytest.raises(ConfigError, match="a flow on features scores with"):
        fit_detector(classifier=embedded["classifier"], out=tmp_path / "d.pt", method="flow", score="complexity",
                     dataset=fashionmnist_npz)
    unlabeled = tmp_path / "unlabeled.npz"
    np.savez(unlabeled, images=fixture_arrays("fashionmnist")[0][:100])
    with pytest.raises(Exception, match="needs class labels"):
        fit_detector(classifier=embedded["classifier"], out=tmp_path / "d.pt", method="rmd",
                     dataset=f"npz:{unlabeled}", progress=False)
    with pytest.raises(ConfigError, match="`checkpoint` applies to a flow on the features"):
        fit_detector(trained_checkpoint, tmp_path / "d.pt", classifier=embedded["classifier"], method="knn",
                     dataset=fashionmnist_npz)
    with pytest.raises(ConfigError, match="`flow_out`: the flow is given"):
        fit_detector(embedded["flow"], tmp_path / "d.pt", classifier=embedded["classifier"], method="flow",
                     flow_out=str(tmp_path / "run"), dataset=fashionmnist_npz)
    with pytest.raises(ConfigError, match="`typicality_batch` must be 1"):
        fit_detector(embedded["flow"], tmp_path / "d.pt", classifier=embedded["classifier"], method="flow",
                     score="typicality", typicality_batch=4, dataset=fashionmnist_npz)
    with pytest.raises(Exception, match="takes 1x28x28 inputs, and the classifier gives 8-dim features"):
        fit_detector(trained_checkpoint, tmp_path / "d.pt", classifier=embedded["classifier"], method="flow",
                     dataset=fashionmnist_npz, progress=False)
    assert not (tmp_path / "d.pt").exists()


def test_the_command_line_fits_shows_and_scores_a_folder_of_images(embedded, fashionmnist_npz, tmp_path, capsys):
    folder = tmp_path / "new"
    folder.mkdir()
    mnist = fixture_arrays("mnist", "test")[0][:4, 0]
    for i, image in enumerate(mnist):
        Image.fromarray(image).save(folder / f"m{i}.png")
    Image.fromarray(np.random.default_rng(0).integers(0, 256, (40, 50, 3), dtype=np.uint8)).save(folder / "big.png")
    assert main(["detector", "fit", "--classifier", str(embedded["classifier"]), "--method", "knn", "--dataset",
                 fashionmnist_npz, "--fpr", "0.1", "--out", str(tmp_path / "d.pt"), "--no_progress"]) == 0
    assert "wrote" in capsys.readouterr().out
    assert main(["detector", "info", str(tmp_path / "d.pt"), "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["threshold"]["fpr"] == 0.1 and info["classifier"]["sha256"] and info["data"]["fit_samples"] == 480
    assert main(["score", "--detector", str(tmp_path / "d.pt"), str(folder), "--out", str(tmp_path / "s.csv"),
                 "--no_progress"]) == 0
    rows = {r["input"]: r for r in csv.DictReader((tmp_path / "s.csv").read_text().splitlines())}
    assert rows[str(folder / "big.png")]["adapted"] == "RGB 40x50 -> gray 28x28"
    assert rows[str(folder / "m0.png")]["adapted"] == "" and len(rows) == 5
    assert "1 adapted to the detector's input" in capsys.readouterr().out
    assert main(["score", "--detector", str(tmp_path / "d.pt"), str(folder), "--out", "-", "--mismatch", "refuse"]) == 1
    refused = [r for r in csv.DictReader(capsys.readouterr().out.splitlines()) if r["error"]]
    assert [r["input"] for r in refused] == [str(folder / "big.png")] and refused[0]["error"].startswith("refused")
    detector = load_detector(tmp_path / "d.pt")
    flagged = list(score_inputs(detector, [str(folder)], mismatch="flag", progress=False))
    assert {r["input"]: r["decision"] for r in flagged}[str(folder / "big.png")] == "ood"
    summary = write_scores(iter(flagged), None)
    assert summary.rows == 5 and summary.adapted == 1


def test_a_pipeline_in_python_follows_scikit_learns_conventions(embedded, mnist_images):
    from sklearn.base import clone

    from flowood.embed.extractors import load_extractor

    train = load_dataset(f"npz:{fixture_path('fashionmnist')}", "train")
    extractor = load_extractor(embedded["classifier"], (1, 28, 28))
    detector = DetectorPipeline(extractor, method="mahalanobis", fpr=0.2, holdout=0.25)
    assert detector.fit(train.data, train.labels) is detector
    assert len(detector.reference_scores_) == 150
    decisions = detector.decision_function(mnist_images)
    assert np.array_equal(detector.predict(mnist_images), np.where(decisions < 0, -1, 1))
    assert clone(detector).get_params()["method"] == "mahalanobis"
    assert detector.score_name == "mahalanobis"
    detector.set_fpr(0.5)
    assert np.mean(detector.reference_scores_ > detector.threshold_) == pytest.approx(0.5, abs=0.01)


def fixture_path(name: str):
    from builders import FIXTURES

    return FIXTURES / f"{name}-small.npz"


def test_a_tampered_exported_graph_is_refused_before_pytorch_rebuilds_it(fashionmnist_npz, tmp_path,
                                                                         monkeypatch):
    """PyTorch rebuilds an exported program by evaluating its size expressions (sympy) and looking up its targets;
    a detector file whose graph was edited to run code is refused, and the code does not run."""
    from flowood.checkpoints import CheckpointError
    from flowood.embed.extractors import check_program

    fit_detector(classifier=export_program(UserClassifier(), tmp_path / "dyn.pt2"), out=tmp_path / "d.pt",
                 method="knn", dataset=fashionmnist_npz, progress=False)
    payload = torch.load(tmp_path / "d.pt", weights_only=True)
    graph = json.loads(bytes(payload["extractor"]["graph"].numpy().tobytes()))
    check_program(graph)  # the honest graph passes
    monkeypatch.chdir(tmp_path)
    text = json.dumps(graph)
    attacks = {
        "expression": text.replace("Symbol('s", "__import__('pathlib').Path('ran').touch() or Symbol('s", 1),
        "target": text.replace('"torch.ops.aten.relu.default"', '"builtins.exec"', 1),
        "guards": json.dumps({**graph, "guards_code": ["__import__('pathlib').Path('ran').touch()"]}),
    }
    for name, tampered in attacks.items():
        assert tampered != text, name
        payload["extractor"]["graph"] = torch.frombuffer(bytearray(tampered.encode()), dtype=torch.uint8)
        torch.save(payload, tmp_path / f"{name}.pt")
        with pytest.raises(CheckpointError, match="was refused"):
            load_detector(tmp_path / f"{name}.pt")
        assert not (tmp_path / "ran").exists(), name
