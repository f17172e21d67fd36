"""INT8 detectors (flowood.deploy.quantized): the feature extractor and a flow's st-networks in INT8, checked against
fp32 on held-out and OOD images at export, refused beyond the tolerances, and scored through flowood's API."""

from __future__ import annotations

import csv
import json

import numpy as np
import pytest
import torch
from builders import fixture_arrays

from flowood.cli.main import main
from flowood.deploy import fit_detector, load_detector
from flowood.deploy.export import ExportedDetector, export_detector
from flowood.engines import ExportError
from flowood.engines import common as engines_common
from flowood.engines.common import EXPORT_MANIFEST
from flowood.engines.quantized import IN_DISTRIBUTION
from flowood.options import ConfigError

pytest.importorskip("onnxruntime")
pytest.importorskip("openvino")
pytest.importorskip("nncf")
pytest.importorskip("pytorch_ood")
if engines_common.int8_dot_product() is False:
    pytest.skip("this CPU has no INT8 dot-product instructions", allow_module_level=True)

INT8 = dict(quantize="int8", calibration=300, check_held_out=200)


@pytest.fixture(scope="module")
def mahalanobis(embedded, fashionmnist_npz, tmp_path_factory):
    path = tmp_path_factory.mktemp("int8-detector") / "mahalanobis.pt"
    fit_detector(None, path, classifier=embedded["classifier"], method="mahalanobis", dataset=fashionmnist_npz,
                 progress=False)
    return path


@pytest.fixture(scope="module")
def mnist_images() -> torch.Tensor:
    return torch.from_numpy(fixture_arrays("mnist", "test")[0][:32])


def _onnx_quantized_ops(folder):
    import onnx

    from flowood.engines.quantize import _scopes_of

    graph = onnx.load(str(folder / "model.onnx")).graph
    producers = {out: node for node in graph.node for out in node.output}
    return {(node.op_type, "extractor" in _scopes_of(node)) for node in graph.node
            if any(producers.get(i) is not None and producers[i].op_type == "DequantizeLinear" for i in node.input)
            and node.op_type not in ("QuantizeLinear", "DequantizeLinear")}


@pytest.mark.parametrize("format", ["onnx", "openvino"])
def test_a_pipeline_detector_exports_in_int8_passes_its_check_and_scores_on_its_engine(
        mahalanobis, mnist_npz, mnist_images, format, tmp_path):
    backend = "openvino" if format == "openvino" else "onnxruntime"
    result = export_detector(mahalanobis, tmp_path / "int8", format=format, check_ood=[mnist_npz], **INT8)
    manifest = json.loads((tmp_path / "int8" / EXPORT_MANIFEST).read_text())
    assert manifest["precision"] == "int8" and manifest["parity"]["precision"] == "fp32"
    q = manifest["quantization"]
    assert q == json.loads(json.dumps(result.quantization)) and q["quantized"] == ["extractor"]
    assert q["calibration_data"]["samples"] == 300 and q["check"]["engines"] == [backend]
    numbers = q["check"]["per_engine"][backend]
    assert abs(numbers["scores"][IN_DISTRIBUTION]["mean_shift_in_spreads"]) <= q["check"]["max_score_shift"] == 0.05
    assert abs(numbers["auroc"][mnist_npz]["shift"]) <= 0.005 and numbers["auroc"][mnist_npz]["fp32"] > 0.9
    assert q["check"]["ood_samples"] == {mnist_npz: 200} and q["check"]["held_out_samples"] == 200
    if format == "onnx":  # ONNX Runtime runs the backbone's convolutions in INT8, and nothing outside the extractor
        ops = _onnx_quantized_ops(tmp_path / "int8")
        assert ("Conv", True) in ops and all(inside for _, inside in ops) and ("Gemm", True) not in ops
    else:
        assert "Convolution" in q["int8_ops"] and (tmp_path / "int8" / "model.xml").is_file()

    exported = load_detector(tmp_path / "int8", backend=backend)
    assert isinstance(exported, ExportedDetector)
    in_torch = load_detector(mahalanobis).anomaly_score(mnist_images)
    on_int8 = exported.anomaly_score(mnist_images)
    spread = exported.reference_scores_.std()
    assert np.abs(on_int8 - in_torch).max() > 0 and np.abs(on_int8 - in_torch).mean() < 0.5 * spread
    other = "onnxruntime" if backend == "openvino" else "openvino"
    with pytest.raises(ConfigError, match=f"checked against fp32 on {backend}, not on {other}"):
        load_detector(tmp_path / "int8", backend=other)


def test_a_flow_on_features_stays_fp32_and_a_pixel_flow_quantizes_its_st_networks(
        embedded, trained_checkpoint, fashionmnist_npz, mnist_npz, tmp_path):
    fit_detector(embedded["flow"], tmp_path / "flow.pt", classifier=embedded["classifier"], method="flow",
                 dataset=fashionmnist_npz, progress=False)
    result = export_detector(tmp_path / "flow.pt", tmp_path / "flow-int8", check_ood=[mnist_npz], **INT8)
    assert result.quantization["quantized"] == ["extractor"]
    assert all(inside for _, inside in _onnx_quantized_ops(tmp_path / "flow-int8"))  # the flow reads fp32 only
    fit_detector(trained_checkpoint, tmp_path / "pixels.pt", score="likelihood", fit_samples=200)
    pixels = export_detector(tmp_path / "pixels.pt", tmp_path / "pixels-int8", format="openvino",
                             check_ood=[mnist_npz], **INT8)
    assert pixels.quantization["quantized"] and all(s.startswith("score.density.flow.") and s.endswith(".st_net")
                                                    for s in pixels.quantization["quantized"])
    assert abs(pixels.quantization["check"]["worst_auroc_shift"]) <= 0.005


def test_an_int8_detector_beyond_the_tolerance_is_refused_with_the_numbers_and_nothing_kept(
        mahalanobis, mnist_npz, tmp_path):
    out = tmp_path / "refused"
    with pytest.raises(ExportError, match=r"(?s)moves the mean score.*tolerance 1e-09.*AUROC.*false-positive rate.*"
                                          r"nothing was kept"):
        export_detector(mahalanobis, out, check_ood=[mnist_npz], max_score_shift=1e-9, **INT8)
    assert not out.exists() or not any(out.iterdir())


def test_int8_detector_options_are_checked_before_any_work(mahalanobis, mnist_npz, tmp_path, monkeypatch):
    with pytest.raises(ConfigError, match="pass check_ood"):
        export_detector(mahalanobis, tmp_path / "a", **INT8)
    with pytest.raises(ConfigError, match="`max_bpd_shift` applies to the INT8 check of a flow; a detector's is held "
                                          "to `max_score_shift`"):
        export_detector(mahalanobis, tmp_path / "b", check_ood=[mnist_npz], max_bpd_shift=0.1, **INT8)
    with pytest.raises(ConfigError, match="apply to an INT8 export only"):
        export_detector(mahalanobis, tmp_path / "c", max_score_shift=0.1)
    monkeypatch.setattr(engines_common, "int8_dot_product", lambda: False)
    with pytest.raises(ConfigError, match="no INT8 dot-product instructions"):
        export_detector(mahalanobis, tmp_path / "d", check_ood=[mnist_npz], **INT8)
    assert not any((tmp_path / name).exists() and any((tmp_path / name).iterdir()) for name in "abcd")


def test_an_int8_detector_exports_and_scores_from_the_command_line(mahalanobis, mnist_npz, tmp_path, capsys):
    out = tmp_path / "int8"
    assert main(["export", "--detector", str(mahalanobis), "--out", str(out), "--quantize", "int8",
                 "--calibration", "300", "--check_ood", mnist_npz, "--check_held_out", "200"]) == 0
    printed = capsys.readouterr().out
    assert "INT8 against fp32" in printed and "false-positive rate at the threshold" in printed
    assert "within the tolerances" in printed
    images = fixture_arrays("mnist", "test")[0][:6]
    np.savez(tmp_path / "new.npz", images=images)
    assert main(["score", "--detector", str(out), str(tmp_path / "new.npz"), "--out", str(tmp_path / "rows.csv"),
                 "--backend", "onnxruntime", "--no_progress"]) == 0
    rows = list(csv.DictReader((tmp_path / "rows.csv").read_text().splitlines()))
    expected = load_detector(out, backend="onnxruntime").anomaly_score(torch.from_numpy(images))
    np.testing.assert_allclose([float(r["score"]) for r in rows], expected, rtol=1e-6)

    serve = pytest.importorskip("flowood.serve.server")  # flowood serve loads the folder the same way
    metadata = serve.server_metadata(out, serve.ServeOptions(backend="onnxruntime"))
    assert metadata["detector"]["kind"] == "export folder" and metadata["detector"]["precision"] == "int8"


def test_a_users_exported_model_is_quantized_inside_the_detector(fashionmnist_npz, mnist_npz, tmp_path):
    from builders import UserClassifier, export_program

    export_program(UserClassifier(), tmp_path / "dyn.pt2")
    fit_detector(classifier=tmp_path / "dyn.pt2", out=tmp_path / "d.pt", method="mahalanobis",
                 dataset=fashionmnist_npz, progress=False)
    result = export_detector(tmp_path / "d.pt", tmp_path / "int8", check_ood=[mnist_npz], **INT8)
    assert result.quantization["int8_ops"] == ["Conv"] and ("Conv", True) in _onnx_quantized_ops(tmp_path / "int8")
