"""Exported detectors (flowood.deploy.export): one graph from pixels to anomaly score and decision, for every family,
checked against PyTorch on ONNX Runtime and OpenVINO at export, and scored there through flowood's API."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from builders import UserClassifier, export_program, fixture_arrays

from flowood.cli.main import main
from flowood.deploy import fit_detector, load_detector, score_inputs
from flowood.deploy.export import ExportedDetector, export_detector
from flowood.engines import ExportError
from flowood.ood.classifier import CLASSIFIER_DETECTORS

pytest.importorskip("onnxruntime")
pytest.importorskip("openvino")
pytest.importorskip("pytorch_ood")


@pytest.fixture(scope="module")
def mnist_images() -> torch.Tensor:
    return torch.from_numpy(fixture_arrays("mnist", "test")[0][:64])


def _exported_equals_torch(detector_file, folder, images, backend="onnxruntime", rtol=1e-4):
    torch_scores = load_detector(detector_file).anomaly_score(images)
    exported = load_detector(folder, backend=backend)
    assert isinstance(exported, ExportedDetector)
    spread = exported.reference_scores_.std()
    np.testing.assert_allclose(exported.anomaly_score(images), torch_scores, rtol=rtol, atol=1e-3 * spread)
    assert exported.threshold_ == pytest.approx(load_detector(detector_file).threshold_)
    return exported


@pytest.mark.parametrize("method", [*CLASSIFIER_DETECTORS, "flow"])
def test_every_pipeline_exports_as_one_graph_with_parity_on_both_engines(embedded, fashionmnist_npz, mnist_images,
                                                                         method, tmp_path):
    fit_detector(embedded["flow"] if method == "flow" else None, tmp_path / "d.pt", classifier=embedded["classifier"],
                 method=method, dataset=fashionmnist_npz, progress=False)
    result = export_detector(tmp_path / "d.pt", tmp_path / "export")
    manifest = json.loads((tmp_path / "export" / "flowood-export.json").read_text())
    assert manifest["kind"] == "detector" and manifest["input"]["dtype"] == "uint8"
    assert manifest["input"]["shape"] == ["batch", 1, 28, 28] and manifest["outputs"] == ["score", "ood"]
    assert set(manifest["parity"]["per_engine"]) == {"onnxruntime", "openvino"}
    assert result.max_diff_in_spreads <= 1e-3 and manifest["parity"]["in_distribution_inputs"] == 16
    for backend in ("onnxruntime", "openvino"):
        _exported_equals_torch(tmp_path / "d.pt", tmp_path / "export", mnist_images, backend)


def test_a_pixel_flow_detector_exports_with_dequantization_inside(trained_checkpoint, mnist_images, tmp_path):
    for score in ("likelihood", "typicality", "latent_last_scale"):
        fit_detector(trained_checkpoint, tmp_path / f"{score}.pt", score=score, fit_samples=200)
        export_detector(tmp_path / f"{score}.pt", tmp_path / f"export-{score}", format="openvino")
        assert (tmp_path / f"export-{score}" / "model.xml").is_file()
        _exported_equals_torch(tmp_path / f"{score}.pt", tmp_path / f"export-{score}", mnist_images, "openvino")
    fit_detector(trained_checkpoint, tmp_path / "complexity.pt", score="complexity", fit_samples=200)
    with pytest.raises(ExportError, match="needs more than the flow's log-likelihood"):
        export_detector(tmp_path / "complexity.pt", tmp_path / "export-complexity")
    assert not (tmp_path / "export-complexity").exists()


def test_a_users_exported_model_exports_inside_the_detector(fashionmnist_npz, mnist_images, tmp_path):
    export_program(UserClassifier(), tmp_path / "dyn.pt2")
    fit_detector(classifier=tmp_path / "dyn.pt2", out=tmp_path / "d.pt", method="vim", dataset=fashionmnist_npz,
                 progress=False)
    export_detector(tmp_path / "d.pt", tmp_path / "export")
    _exported_equals_torch(tmp_path / "d.pt", tmp_path / "export", mnist_images)
    export_program(UserClassifier(), tmp_path / "one.pt2", dynamic=False)
    fit_detector(classifier=tmp_path / "one.pt2", out=tmp_path / "one.pt", method="knn", dataset=fashionmnist_npz,
                 progress=False)
    with pytest.raises(ExportError, match="fixed batch of 1.*dynamic batch"):
        export_detector(tmp_path / "one.pt", tmp_path / "export-one")


def test_a_pipeline_fitted_in_python_exports_and_engines_refuse_other_inputs(embedded, mnist_images, tmp_path):
    from flowood.deploy import DetectorPipeline
    from flowood.embed.extractors import load_extractor
    from flowood.errors import InputError

    train = torch.from_numpy(fixture_arrays("fashionmnist")[0])
    pipeline = DetectorPipeline(load_extractor(embedded["classifier"], (1, 28, 28)), method="knn").fit(train)
    assert len(pipeline.parity_images_) == 16
    pipeline.save(tmp_path / "d.pt")
    export_detector(tmp_path / "d.pt", tmp_path / "export")
    exported = _exported_equals_torch(tmp_path / "d.pt", tmp_path / "export", mnist_images)
    with pytest.raises(InputError, match="takes uint8 inputs"):
        exported.anomaly_score(mnist_images.float() / 255)
    with pytest.raises(Exception, match="`tolerance` applies to exporting a flow"):
        export_detector(tmp_path / "d.pt", tmp_path / "export2", tolerance=1e-3)
    from flowood.engines import export_flow

    with pytest.raises(Exception, match="`score_tolerance` applies to exporting a detector"):
        export_flow(embedded["flow"], tmp_path / "export3", score_tolerance=1e-2)
    assert not (tmp_path / "export2").exists() and not (tmp_path / "export3").exists()


def test_a_graph_that_disagrees_is_refused_and_nothing_kept(embedded, fashionmnist_npz, monkeypatch, tmp_path):
    from flowood.deploy import pipeline as pipeline_module

    detector = fit_detector(classifier=embedded["classifier"], out=tmp_path / "d.pt", method="energy",
                            dataset=fashionmnist_npz, progress=False)
    spread = float(detector.reference_scores_.std())

    class OffBy(torch.nn.Module):
        def __init__(self, graph):
            super().__init__()
            self.inner = graph

        def forward(self, images):
            score, _ = self.inner(images)
            score = score + 0.01 * spread  # 1% of the spread: ten times the tolerance
            return score, score > self.inner.threshold

    real = pipeline_module.DetectorPipeline.graph
    monkeypatch.setattr(pipeline_module.DetectorPipeline, "graph", lambda self: OffBy(real(self)))
    with pytest.raises(ExportError, match="disagrees with PyTorch on onnxruntime.*nothing was kept"):
        export_detector(tmp_path / "d.pt", tmp_path / "export")
    assert not (tmp_path / "export").exists()


def test_scoring_on_an_engine_for_every_family_from_the_command_line(embedded, fashionmnist_npz, tmp_path, capsys):
    from PIL import Image

    folder = tmp_path / "new"
    folder.mkdir()
    for i, image in enumerate(fixture_arrays("mnist", "test")[0][:6, 0]):
        Image.fromarray(image).save(folder / f"{i}.png")
    fit_detector(classifier=embedded["classifier"], out=tmp_path / "d.pt", method="mahalanobis",
                 dataset=fashionmnist_npz, progress=False)
    rows = {}
    for backend in ("torch", "onnxruntime", "openvino"):
        detector = load_detector(tmp_path / "d.pt", backend=backend)
        rows[backend] = [r["score"] for r in score_inputs(detector, [str(folder)], progress=False)]
    np.testing.assert_allclose(rows["onnxruntime"], rows["torch"], rtol=1e-4)
    np.testing.assert_allclose(rows["openvino"], rows["torch"], rtol=1e-4)
    assert main(["export", "--detector", str(tmp_path / "d.pt"), "--format", "openvino", "--out",
                 str(tmp_path / "export")]) == 0
    assert "of the calibration scores' spread" in capsys.readouterr().out
    assert main(["score", "--detector", str(tmp_path / "export"), str(folder), "--backend", "openvino", "--out", "-",
                 "--no_progress"]) == 0
    assert len(capsys.readouterr().out.splitlines()) == 7
    assert main(["score", "--detector", str(tmp_path / "export"), str(folder), "--out", "-"]) == 2
    assert "export folder: score it on an engine" in capsys.readouterr().err
