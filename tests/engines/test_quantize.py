"""INT8 exports (flowood.engines.quantize, flowood.engines.quantized): every flow family's st-networks quantize, the
export passes its own check against fp32 and stays an exact density (its log-determinant is the sum of the graph's
own s, and no node of the flow reads a quantized tensor); a broken calibration is refused with nothing kept; the
engines, evaluate and the detector take the INT8 export; a CPU without INT8 instructions is refused."""

from __future__ import annotations

import csv
import json
from collections import defaultdict

import numpy as np
import pytest
import torch

from flowood.cli.main import main
from flowood.data import load_dataset
from flowood.data.adapt import fit_to_shape
from flowood.deploy import fit_detector
from flowood.engines import EXPORT_MANIFEST, DensityGraph, EngineFlow, ExportError, export_flow
from flowood.engines import common as engines_common
from flowood.engines import quantize as quantize_module
from flowood.engines.quantize import (
    OV_QUANTIZED_TYPES,
    conditioner_nodes,
    conditioner_scopes,
    fp32_leaks,
    ov_fp32_leaks,
    ov_fp32_weights,
)
from flowood.engines.quantized import IN_DISTRIBUTION
from flowood.evaluation import evaluate
from flowood.flows import build_flow
from flowood.ood import OODDetector
from flowood.options import ConfigError

onnx = pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")
ov = pytest.importorskip("openvino")
pytest.importorskip("nncf")
pytestmark = pytest.mark.skipif(engines_common.int8_dot_product() is False,
                                reason="this CPU has no INT8 dot-product instructions")

#: one flow per family and coupling layout, on the fixtures' 8x8 images or on 6-dim vectors
FAMILIES = {
    "realnvp-checkerboard": dict(flow="RealNVP", input_shape=(1, 8, 8), mask="checkerboard", num_blocks=1,
                                 num_mid_channels=8),
    "realnvp-horizontal": dict(flow="RealNVP", input_shape=(1, 8, 8), mask="horizontal", num_blocks=1,
                               num_mid_channels=8),
    "realnvp-vertical": dict(flow="RealNVP", input_shape=(1, 8, 8), mask="vertical", num_blocks=1, num_mid_channels=8),
    "realnvp-checkerboard-packed": dict(flow="RealNVP", input_shape=(1, 8, 8), mask="checkerboard_packed",
                                        num_blocks=1, num_mid_channels=8),
    "realnvp-cycle": dict(flow="RealNVP", input_shape=(1, 8, 8), mask="cycle", num_blocks=1, num_mid_channels=8,
                          num_scales=1),
    "glow": dict(flow="Glow", input_shape=(1, 8, 8), num_mid_channels=16, invconv="lu",
                 num_coupling_layers_per_scale=2),
    "realnvp-tabular": dict(flow="RealNVPTabular", input_shape=(6,), num_coupling_layers=3, num_hidden_units=32),
    "maf": dict(flow="MAF", input_shape=(6,), num_coupling_layers=2, num_hidden_units=32),
}


@pytest.fixture(scope="module")
def vectors(tmp_path_factory) -> tuple[str, str]:
    """Two 6-dim vector sets as data-set names: in-distribution (a correlated Gaussian) and OOD (shifted)."""
    rng = np.random.default_rng(0)
    mix = rng.normal(size=(6, 6)) / 3 + np.eye(6)
    folder = tmp_path_factory.mktemp("vectors")
    paths = []
    for name, shift in (("ind", 0.0), ("ood", 1.5)):
        arrays = {f"embeddings_{split}": (rng.normal(size=(n, 6)) @ mix + shift).astype(np.float32)
                  for split, n in (("train", 400), ("test", 200))}
        np.savez(folder / f"{name}.npz", **arrays)
        paths.append(f"npz:{folder / name}.npz")
    return paths[0], paths[1]


def _family(case: str, ind: str) -> torch.nn.Module:
    """The flow, initialised on its data (ActNorm, standardisation), its st-networks' parameters moved off their
    initialisation (Glow's zero-initialised last layer would make s = t = 0 whatever the quantization)."""
    torch.manual_seed(0)
    flow = build_flow(FAMILIES[case]).eval()
    x = fit_to_shape(load_dataset(ind, "train", shape=flow.input_shape).take(64), flow.input_shape)
    with torch.no_grad():
        flow.log_prob(x)
        for scope in conditioner_scopes(flow):
            for p in flow.get_submodule(scope).parameters():
                p.add_(0.05 * torch.randn_like(p))
    return flow


def _sets(case: str, fashionmnist_npz: str, mnist_npz: str, vectors: tuple[str, str]) -> tuple[str, str]:
    return vectors if FAMILIES[case]["flow"] in ("MAF", "RealNVPTabular") else (fashionmnist_npz, mnist_npz)


def _coupling_tensors(graph) -> list[tuple[str, str]]:
    """``(s, log-determinant)`` tensor names of every coupling of an exported density graph: the input of each Exp
    node, and the ReduceSum over it (directly, or over its flattening)."""
    consumers = defaultdict(list)
    for node in graph.graph.node:
        for name in node.input:
            consumers[name].append(node)
    pairs = []
    for exp in (n for n in graph.graph.node if n.op_type == "Exp"):
        s = exp.input[0]
        flat = [c.output[0] for c in consumers[s] if c.op_type == "Reshape"]
        sums = [c for t in (s, *flat) for c in consumers[t] if c.op_type == "ReduceSum"]
        assert len(sums) == 1, f"no single log-determinant sum over {s}"
        pairs.append((s, sums[0].output[0]))
    return pairs


def _run_with_outputs_ort(path, names: list[str], x: np.ndarray) -> list[np.ndarray]:
    graph = onnx.load(str(path))
    del graph.graph.output[:]
    graph.graph.output.extend(onnx.helper.make_tensor_value_info(n, onnx.TensorProto.FLOAT, None) for n in names)
    session = ort.InferenceSession(graph.SerializeToString(), providers=["CPUExecutionProvider"])
    return session.run(None, {"x": x})


def _run_with_outputs_ov(xml, names: list[str], x: np.ndarray) -> list[np.ndarray]:
    model = ov.Core().read_model(str(xml))
    outputs = model.add_outputs(names)
    compiled = ov.Core().compile_model(model, "CPU", {"INFERENCE_PRECISION_HINT": "f32"})
    result = compiled.create_infer_request().infer({0: x})
    return [np.array(result[compiled.output(o.get_any_name())]) for o in outputs]


def _assert_log_det_is_sum_of_s(pairs, values: list[np.ndarray]) -> None:
    for i in range(len(pairs)):
        s, log_det = values[2 * i], values[2 * i + 1]
        np.testing.assert_allclose(log_det.reshape(-1), s.reshape(len(s), -1).sum(1), rtol=1e-5, atol=1e-4)


@pytest.mark.parametrize("case", list(FAMILIES))
def test_every_family_exports_in_int8_passes_its_check_and_stays_an_exact_density(case, tmp_path, fashionmnist_npz,
                                                                                  mnist_npz, vectors):
    ind, ood = _sets(case, fashionmnist_npz, mnist_npz, vectors)
    flow = _family(case, ind)
    result = export_flow(flow, tmp_path / "int8", quantize="int8", dataset=ind, check_ood=[ood], calibration=300,
                         check_held_out=200)
    q = result.quantization
    check = q["check"]["per_engine"]["onnxruntime"]
    assert abs(check["bits_per_dim"][IN_DISTRIBUTION]["mean_shift"]) <= 0.05
    assert abs(check["auroc"][ood]["shift"]) <= 0.005
    assert q["int8_ops"] and q["calibration_data"] == {"dataset": ind, "split": "train", "samples": 300, "seed": 0}
    manifest = json.loads((result.path / EXPORT_MANIFEST).read_text())
    assert manifest["precision"] == "int8" and manifest["quantization"]["check"]["engines"] == ["onnxruntime"]

    # what makes it an exact density: the flow reads no quantized tensor, and each log-det is the sum of its own s
    graph = onnx.load(str(result.path / "model.onnx"))
    inside = {n.name for n in graph.graph.node if n.op_type not in ("QuantizeLinear", "DequantizeLinear")} & \
        conditioner_nodes(onnx.load(str(_fp32_export(flow, tmp_path) / "model.onnx")),
                          conditioner_scopes(DensityGraph(flow)))
    assert sum(n.op_type == "QuantizeLinear" for n in graph.graph.node) > 0
    assert fp32_leaks(graph, inside) == []
    pairs = _coupling_tensors(graph)
    assert len(pairs) == len(conditioner_scopes(flow))
    x = _inputs(flow, ind)
    names = [name for pair in pairs for name in pair]
    values = _run_with_outputs_ort(result.path / "model.onnx", names, x)
    _assert_log_det_is_sum_of_s(pairs, values)
    fp32_values = _run_with_outputs_ort(_fp32_export(flow, tmp_path) / "model.onnx", names, x)
    assert max(np.abs(a - b).max() for a, b in zip(values[::2], fp32_values[::2], strict=True)) > 1e-4  # s moved

    # the engine scores it as the check did
    engine = EngineFlow(result.path, "onnxruntime")
    bpd = -engine.log_prob(torch.from_numpy(x), validate=False).numpy() / (flow.num_dims * np.log(2))
    assert np.all(np.isfinite(bpd))


def _fp32_export(flow, tmp_path):
    folder = tmp_path / "fp32"
    if not (folder / EXPORT_MANIFEST).is_file():
        export_flow(flow, folder)
    return folder


def _inputs(flow, ind: str, n: int = 16) -> np.ndarray:
    x = fit_to_shape(load_dataset(ind, "test", shape=flow.input_shape).take(n), flow.input_shape)
    return (flow.dequantize(x, generator=torch.Generator().manual_seed(0)) if flow.discrete else x).float().numpy()


@pytest.mark.parametrize("case", ["realnvp-fitted", "glow", "maf"])
def test_openvino_int8_export_is_nncf_quantized_and_stays_an_exact_density(case, tmp_path, fashionmnist_npz,
                                                                            mnist_npz, vectors, fitted_flow):
    if case == "realnvp-fitted":  # the 28x28 RealNVP fitted 30 steps (a random 8x8 one moved its AUROC by 0.007)
        flow, (ind, ood) = fitted_flow, (fashionmnist_npz, mnist_npz)
    else:
        ind, ood = _sets(case, fashionmnist_npz, mnist_npz, vectors)
        flow = _family(case, ind)
    result = export_flow(flow, tmp_path / "int8", format="openvino", quantize="int8", dataset=ind, check_ood=[ood],
                         calibration=400, check_held_out=200)
    q = result.quantization
    assert q["engine"] == "openvino" and q["check"]["engines"] == ["openvino"] and q["quantized_tensors"] > 0
    assert abs(q["check"]["worst_bpd_shift"]) <= 0.05 and abs(q["check"]["worst_auroc_shift"]) <= 0.005

    fp32_graph = onnx.load(str(result.path / "model.onnx"))  # the fp32 graph the INT8 model was made from
    model = ov.Core().read_model(str(result.path / "model.xml"))
    assert any(op.get_type_name() == "FakeQuantize" for op in model.get_ordered_ops())
    inside = conditioner_nodes(fp32_graph, conditioner_scopes(DensityGraph(flow)))
    producers = {out: node.name for node in fp32_graph.graph.node for out in node.output}
    inside_ops = {op.get_friendly_name() for op in model.get_ordered_ops()
                  if quantize_module._ov_inside(op, producers, inside)}
    assert ov_fp32_leaks(model, inside_ops) == [] and ov_fp32_weights(model) == []
    # OpenVINO's CPU plugin really runs every st-network multiply-add in INT8 (MAF's masked weights included)
    quantized_layers = sum(op.get_type_name() in OV_QUANTIZED_TYPES and op.get_friendly_name() in inside_ops
                           for op in model.get_ordered_ops())
    runtime = ov.Core().compile_model(model, "CPU").get_runtime_model()
    int8_layers = sum(op.get_rt_info()["layerType"].astype(str) in ("Convolution", "FullyConnected")
                      and op.get_rt_info()["runtimePrecision"].astype(str) in ("i8", "u8")
                      for op in runtime.get_ordered_ops())
    assert quantized_layers > 0 and int8_layers == quantized_layers
    pairs = _coupling_tensors(fp32_graph)
    x = _inputs(flow, ind)
    _assert_log_det_is_sum_of_s(pairs, _run_with_outputs_ov(result.path / "model.xml",
                                                            [n for pair in pairs for n in pair], x))
    with pytest.raises(ConfigError, match="checked against fp32 on openvino, not on onnxruntime"):
        EngineFlow(result.path, "onnxruntime")


def test_a_calibration_that_breaks_the_model_is_refused_with_the_numbers_and_nothing_kept(
        tmp_path, monkeypatch, fashionmnist_npz, mnist_npz, vectors):
    flow = _family("realnvp-checkerboard", fashionmnist_npz)
    real = quantize_module.quantize_density

    def squashed(onnx_path, out_path, scopes, calibration, **options):  # ranges from inputs 1000x too small
        return real(onnx_path, out_path, scopes, calibration * 1e-3, **options)
    monkeypatch.setattr("flowood.engines.quantized.quantize_density", squashed)
    out = tmp_path / "int8"
    with pytest.raises(ExportError, match=r"(?s)moves the mean bits/dim.*onnxruntime, in-distribution.*nothing was "
                                          r"kept") as caught:
        export_flow(flow, out, quantize="int8", dataset=fashionmnist_npz, check_ood=[mnist_npz], calibration=100,
                    check_held_out=100)
    assert "bits/dim" in str(caught.value) and "AUROC" in str(caught.value)
    assert not out.exists() or not any(out.iterdir())


def test_int8_options_are_checked_before_any_work(tmp_path, fashionmnist_npz, monkeypatch):
    flow = _family("realnvp-checkerboard", fashionmnist_npz)
    with pytest.raises(ConfigError, match="apply to an INT8 export only"):
        export_flow(flow, tmp_path / "a", calibration=10)
    with pytest.raises(ConfigError, match="unknown quantize .int4. .did you mean .int8"):
        export_flow(flow, tmp_path / "b", quantize="int4")
    with pytest.raises(ConfigError, match="does not say which it is; pass dataset"):
        export_flow(flow, tmp_path / "c", quantize="int8", check_ood=["mnist"])
    with pytest.raises(ConfigError, match="pass check_ood"):
        export_flow(flow, tmp_path / "d", quantize="int8", dataset=fashionmnist_npz)
    monkeypatch.setattr(engines_common, "int8_dot_product", lambda: False)
    with pytest.raises(ConfigError, match="no INT8 dot-product instructions"):
        export_flow(flow, tmp_path / "e", quantize="int8", dataset=fashionmnist_npz, check_ood=["mnist"])
    assert not any((tmp_path / name).exists() and any((tmp_path / name).iterdir()) for name in "abcde")


def test_a_checkpoint_exports_in_int8_from_the_cli_and_evaluate_score_and_the_detector_take_it(
        tmp_path, trained_checkpoint, fashionmnist_npz, mnist_npz, capsys, monkeypatch):
    out = tmp_path / "int8"
    code = main(["export", "--checkpoint", str(trained_checkpoint), "--out", str(out), "--format", "openvino",
                 "--quantize", "int8", "--calibration", "300", "--check_ood", mnist_npz, "--check_held_out", "200"])
    assert code == 0
    printed = capsys.readouterr().out
    assert "INT8 against fp32" in printed and "AUROC" in printed and "within the tolerances" in printed
    check = json.loads((out / EXPORT_MANIFEST).read_text())["quantization"]["check"]
    expected = check["per_engine"]["openvino"]["auroc"][mnist_npz]["int8"]
    # evaluate on the export, on the engine it was checked on, scores the check's inputs: the same AUROC
    result = evaluate(out, [mnist_npz], backend="openvino", max_samples=200, scores=["likelihood"], progress=False)
    assert result.metrics.ood[mnist_npz].auroc == pytest.approx(expected, abs=1e-6)

    # a detector of the same flow scores on the INT8 export, in Python and through flowood score
    fit_detector(trained_checkpoint, tmp_path / "detector.pt", score="likelihood", fit_samples=64, progress=False)
    images = fit_to_shape(load_dataset(mnist_npz, "test").take(16), (1, 28, 28))
    in_torch = OODDetector.load(tmp_path / "detector.pt").anomaly_score(images)
    on_int8 = OODDetector.load(tmp_path / "detector.pt", backend="openvino", flow_export=out).anomaly_score(images)
    assert np.abs(on_int8 - in_torch).max() > 0 and np.abs(on_int8 - in_torch).mean() < 0.05
    np.savez(tmp_path / "new.npz", images=images.numpy())
    assert main(["score", "--detector", str(tmp_path / "detector.pt"), str(tmp_path / "new.npz"), "--out",
                 str(tmp_path / "rows.csv"), "--backend", "openvino", "--flow_export", str(out), "--no_progress"]) == 0
    rows = list(csv.DictReader((tmp_path / "rows.csv").read_text().splitlines()))
    np.testing.assert_allclose([float(r["score"]) for r in rows], on_int8, rtol=1e-6)

    serve = pytest.importorskip("flowood.serve.server")  # flowood serve loads the detector the same way
    metadata = serve.server_metadata(tmp_path / "detector.pt", serve.ServeOptions(backend="openvino",
                                                                               flow_export=str(out)))
    assert metadata["flow_export"] == {"folder": str(out), "precision": "int8"}

    with pytest.raises(ConfigError, match="checked against fp32 on openvino, not on onnxruntime"):
        OODDetector.load(tmp_path / "detector.pt", backend="onnxruntime", flow_export=out)
    with pytest.raises(ConfigError, match="pass backend='onnxruntime' or 'openvino'"):
        OODDetector.load(tmp_path / "detector.pt", flow_export=out)
    other = export_flow(_family("realnvp-checkerboard", fashionmnist_npz), tmp_path / "other").path
    with pytest.raises(ConfigError, match="an export of another flow than this detector's"):
        OODDetector.load(tmp_path / "detector.pt", backend="onnxruntime", flow_export=other)
    monkeypatch.setattr(engines_common, "int8_dot_product", lambda: False)
    with pytest.raises(ConfigError, match="no INT8 dot-product instructions"):
        EngineFlow(out, "openvino")
