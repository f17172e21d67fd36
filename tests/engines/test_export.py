"""Export to ONNX / OpenVINO (flowood.engines.export) and scoring on the engines (flowood.engines.backend): every flow
exports with a dynamic batch and gives PyTorch's log-likelihood on ONNX Runtime and OpenVINO; refused exports
keep nothing; evaluate, detectors and the CLI give torch's numbers on either engine."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
import torch

from flowood.cli.main import main
from flowood.deploy import EngineFlow, ExportError, export_flow, fit_detector, score_inputs
from flowood.engines import DEFAULT_TOLERANCE, EXPORT_MANIFEST, DensityGraph, engine_flow
from flowood.errors import FlowoodError
from flowood.evaluation import evaluate
from flowood.flows import build_flow
from flowood.flows.capabilities import Capabilities, capabilities
from flowood.ood import OODDetector
from flowood.options import ConfigError

#: one small flow per mask, st-network and architecture flowood builds (default initialisations: none is the identity)
CASES = {
    **{f"realnvp-{mask}": dict(flow="RealNVP", input_shape=(1, 8, 8), mask=mask, num_blocks=1, num_mid_channels=4)
       for mask in ("checkerboard", "checkerboard_packed", "horizontal", "vertical", "cycle")},
    **{f"realnvp-{st}": dict(flow="RealNVP", input_shape=(1, 16, 16), st_type=st, num_blocks=2, num_mid_channels=4,
                             num_scales=1, num_coupling_layers_per_scale=2)
       for st in ("resnet_ae", "convnet", "highway", "autoencoder", "conv_bottleneck")},
    "glow-plain-channel": dict(flow="Glow", input_shape=(1, 8, 8), num_mid_channels=8, num_coupling_layers_per_scale=2),
    "glow-lu-checkerboard": dict(flow="Glow", input_shape=(3, 8, 8), num_mid_channels=8, invconv="lu",
                                 mask="checkerboard", num_coupling_layers_per_scale=2),
    "realnvp-tabular": dict(flow="RealNVPTabular", input_shape=(6,), num_coupling_layers=3, actnorm=True),
    "maf": dict(flow="MAF", input_shape=(6,), num_coupling_layers=2),
}


def _flow_and_data(config: dict, n: int = 7) -> tuple[torch.nn.Module, torch.Tensor]:
    """The flow, initialised by one pass on its data (ActNorm, standardisation), and a batch of that data."""
    torch.manual_seed(0)
    flow = build_flow(config).eval()
    if flow.discrete:
        x = torch.randint(0, 256, (n, *flow.input_shape), dtype=torch.uint8)
    else:
        x = torch.randn(n, *flow.input_shape) * 2 + 1
    with torch.no_grad():
        flow.log_prob(x)
    return flow, x


def _same_scores(a, b, x: torch.Tensor) -> float:
    """Largest |bits/dim difference| of two flows on ``x``, dequantized with the same seeded noise."""
    ga, gb = torch.Generator().manual_seed(3), torch.Generator().manual_seed(3)
    with torch.no_grad():
        return float((a.bits_per_dim(x, generator=ga) - b.bits_per_dim(x, generator=gb)).abs().max())


@pytest.mark.parametrize("case", list(CASES))
def test_every_flow_exports_and_onnx_runtime_gives_its_log_likelihood(case, tmp_path):
    flow, x = _flow_and_data(CASES[case])
    result = export_flow(flow, tmp_path / "export")
    assert result.max_abs_diff_bpd <= DEFAULT_TOLERANCE and result.files == ["model.onnx", EXPORT_MANIFEST]
    manifest = json.loads((tmp_path / "export" / EXPORT_MANIFEST).read_text())
    assert manifest["parity"]["max_abs_diff_nats"] == result.max_abs_diff_nats
    assert manifest["scale_dims"] == flow.scale_dims == [p[0].numel() for p in flow.latents_by_scale(x)]
    engine = EngineFlow(result.path, "onnxruntime")
    assert _same_scores(flow, engine, x) <= DEFAULT_TOLERANCE  # batch 7: neither size the check ran
    assert _same_scores(flow, engine, x[:1]) <= DEFAULT_TOLERANCE
    g1, g2 = torch.Generator().manual_seed(1), torch.Generator().manual_seed(1)
    torch.testing.assert_close(engine.log_prior_by_scale(x, generator=g2),
                               flow.log_prior_by_scale(x, generator=g1).detach(), rtol=1e-5, atol=1e-3)


def test_openvino_export_writes_its_own_format_and_scores_in_fp32_and_bf16(tmp_path):
    flow, x = _flow_and_data(CASES["realnvp-checkerboard"])
    result = export_flow(flow, tmp_path / "export", format="openvino")
    assert result.files == ["model.onnx", "model.bin", "model.xml", EXPORT_MANIFEST]
    assert json.loads((result.path / EXPORT_MANIFEST).read_text())["parity"]["engines"] == ["openvino", "onnxruntime"]
    assert _same_scores(flow, EngineFlow(result.path, "openvino"), x) <= DEFAULT_TOLERANCE
    import openvino as ov

    if "BF16" in ov.Core().get_property("CPU", "OPTIMIZATION_CAPABILITIES"):
        bf16 = EngineFlow(result.path, "openvino", precision="bf16")
        assert 0 < _same_scores(flow, bf16, x) < 0.05  # bf16 rounding: close, not equal
    else:
        with pytest.raises(ConfigError, match="no bf16"):
            EngineFlow(result.path, "openvino", precision="bf16")
    with pytest.raises(ConfigError, match="ONNX Runtime scores in fp32"):
        EngineFlow(result.path, "onnxruntime", precision="bf16")


def test_an_engine_that_disagrees_is_caught_and_the_export_refused_leaving_nothing(tmp_path, monkeypatch):
    from flowood.engines.common import EngineDensity

    flow, _ = _flow_and_data(CASES["maf"])
    run = EngineDensity.run
    monkeypatch.setattr(EngineDensity, "run", lambda self, x: (run(self, x)[0] + 0.01, run(self, x)[1]))
    with pytest.raises(ExportError, match=r"by 0.0024\d* bits/dim \(0.01 nats\) on (onnxruntime|openvino), above"):
        export_flow(flow, tmp_path / "export")
    monkeypatch.setattr(EngineDensity, "run", lambda self, x: (run(self, x)[0], run(self, x)[1] * 1.001))
    with pytest.raises(ExportError, match="above the tolerance"):  # the per-scale output is checked too
        export_flow(flow, tmp_path / "export")
    (tmp_path / "mine").mkdir()
    with pytest.raises(ExportError):
        export_flow(flow, tmp_path / "mine")
    assert not (tmp_path / "export").exists() and list((tmp_path / "mine").iterdir()) == []  # an empty folder stays


@pytest.mark.parametrize("case", ["glow-plain-channel", "maf"])
def test_a_saved_and_loaded_checkpoint_exports(case, tmp_path):
    """ActNorm and the standardisation know they are initialised from their saved buffer, not from a forward pass."""
    from flowood.checkpoints import load_flow, save_flow

    flow, x = _flow_and_data(CASES[case])
    save_flow(flow, tmp_path / "flow.pt", {"dataset": "digits"})
    result = export_flow(tmp_path / "flow.pt", tmp_path / "export")
    assert result.max_abs_diff_bpd <= DEFAULT_TOLERANCE
    assert _same_scores(load_flow(tmp_path / "flow.pt").flow, EngineFlow(result.path), x) <= DEFAULT_TOLERANCE


def test_vector_flows_far_from_unit_scale_pass_the_check(tmp_path):
    """Features of mean 100: the check's inputs are the flow's own samples (unit-scale noise would lie 100 standard
    deviations away, where float32 rounding alone moves log-likelihoods of -2e5 nats by 0.2 nats)."""
    flow = build_flow(CASES["maf"]).eval()
    data = 100 + torch.randn(64, 6)
    with torch.no_grad():
        flow.log_prob(data)  # standardisation and ActNorm from these data
    result = export_flow(flow, tmp_path / "export")
    assert result.max_abs_diff_bpd <= DEFAULT_TOLERANCE
    assert _same_scores(flow, EngineFlow(result.path), data[:9]) <= DEFAULT_TOLERANCE


def test_export_folders_are_checked_when_loaded(tmp_path):
    flow, _ = _flow_and_data(CASES["maf"])
    folder = export_flow(flow, tmp_path / "export").path
    manifest = json.loads((folder / EXPORT_MANIFEST).read_text())
    with pytest.warns(UserWarning, match="checked on onnxruntime, not on openvino"):
        manifest["parity"]["engines"] = ["onnxruntime", "openvino"][:1]
        (folder / EXPORT_MANIFEST).write_text(json.dumps(manifest))
        EngineFlow(folder, "openvino")
    (folder / EXPORT_MANIFEST).write_text("{not json")
    with pytest.raises(ConfigError, match="cannot be read"):
        EngineFlow(folder)
    (folder / EXPORT_MANIFEST).write_text(json.dumps({**manifest, "format": "something-else"}))
    with pytest.raises(ConfigError, match="is not a flowood-export-1 manifest"):
        EngineFlow(folder)
    (folder / EXPORT_MANIFEST).write_text(json.dumps(manifest))
    (folder / "model.onnx").unlink()
    with pytest.raises(ConfigError, match="has no model.onnx"):
        EngineFlow(folder)


def test_a_failed_export_leaves_nothing_and_one_too_large_for_onnx_is_refused_first(tmp_path, monkeypatch):
    from flowood.engines import export as export_module

    flow, _ = _flow_and_data(CASES["maf"])
    monkeypatch.setattr(export_module, "MAX_ONNX_BYTES", 1000)
    with pytest.raises(ExportError, match="an ONNX file holds at most 2 GiB"):
        export_flow(flow, tmp_path / "big")
    monkeypatch.undo()

    def broken_exporter(*args, **kwargs):
        raise RuntimeError("an operator the exporter does not know\nand a long trace")
    monkeypatch.setattr(torch.onnx, "export", broken_exporter)
    with pytest.raises(ExportError, match="could not export this model: an operator the exporter does not know$"):
        export_flow(flow, tmp_path / "broken")
    assert not (tmp_path / "big").exists() and not (tmp_path / "broken").exists()


def test_exports_refuse_untrained_lazy_layers_other_models_and_bad_options(tmp_path):
    with pytest.raises(FlowoodError, match="still waiting to initialise"):
        export_flow(build_flow(CASES["maf"]), tmp_path / "a")
    with pytest.raises(ConfigError, match="only flowood flows"):
        export_flow(torch.nn.Linear(2, 2), tmp_path / "b")
    flow, _ = _flow_and_data(CASES["maf"])
    with pytest.raises(ConfigError, match="format"):
        export_flow(flow, tmp_path / "c", format="tflite")
    with pytest.raises(ConfigError, match="not a flowood export folder"):
        EngineFlow(tmp_path, "onnxruntime")
    assert not any((tmp_path / name).exists() for name in "abc")


def test_the_density_graph_is_log_prob_parts_of_an_eager_fp32_copy():
    flow, x = _flow_and_data(CASES["glow-plain-channel"])
    flow.compile_density()
    graph = DensityGraph(flow)
    assert flow.density_compiled and not graph.flow.density_compiled  # the caller's flow is left as it was
    y = flow.dequantize(x, noise="center")
    with torch.no_grad():
        log_prob, scale_log_prior = graph(y)
        parts = flow.log_prob_parts(y)
    torch.testing.assert_close(log_prob, parts.log_prob, rtol=1e-5, atol=1e-4)  # 1x1 log-dets now constants
    torch.testing.assert_close(scale_log_prior, parts.scale_log_prior)


def test_engine_flow_exports_to_a_temporary_folder_kept_as_long_as_the_flow():
    import gc

    flow, x = _flow_and_data(CASES["maf"])
    engine = engine_flow(flow, "onnxruntime")
    folder = Path(engine.temporary.name)
    assert (folder / "export" / EXPORT_MANIFEST).is_file() and _same_scores(flow, engine, x) <= DEFAULT_TOLERANCE
    assert capabilities(engine) == Capabilities(flowood_api=True, exported=True, rebuildable=True,
                                                scale_latents=True)
    assert engine_flow(engine, "onnxruntime") is engine and engine_flow(flow, "torch") is flow
    with pytest.raises(ConfigError, match="this flow is loaded on onnxruntime in fp32, not openvino"):
        engine_flow(engine, "openvino")
    with pytest.raises(ConfigError, match="only flowood flows can be scored on onnxruntime"):
        engine_flow(torch.nn.Linear(2, 2), "onnxruntime")
    del engine
    gc.collect()
    assert not folder.exists()


def test_evaluate_on_both_engines_gives_torchs_scores(trained_checkpoint, mnist_npz, tmp_path):
    options = dict(scores=["likelihood", "typicality", "latent_last_scale", "latent_early_scales", "complexity",
                           "likelihood_ratio", "waic"], ensemble=[str(trained_checkpoint)], background_steps=3,
                   max_samples=48, fit_samples=64, batch_size=20, progress=False)
    reference = evaluate(trained_checkpoint, [mnist_npz], **options)
    for backend in ("onnxruntime", "openvino"):
        result = evaluate(trained_checkpoint, [mnist_npz], backend=backend, **options)
        assert result.metrics.provenance.backend == backend
        assert backend in result.metrics.provenance.engine_parity["engines"]
        assert set(result.score_values) == set(reference.score_values)
        for score, per_set in reference.score_values.items():
            for name, values in per_set.items():
                np.testing.assert_allclose(result.score_values[score][name], values, rtol=0, atol=2e-4,
                                           err_msg=f"{backend} {score} {name}")
    with pytest.raises(ConfigError, match="compile applies to the torch backend"):
        evaluate(trained_checkpoint, [mnist_npz], backend="onnxruntime", compile=True)
    with pytest.raises(ConfigError, match="scores in fp32, not fp16"):
        evaluate(trained_checkpoint, [mnist_npz], backend="onnxruntime", precision="fp16")
    export = export_flow(trained_checkpoint, tmp_path / "export").path
    with pytest.raises(ConfigError, match="an exported flow on onnxruntime; pass backend='onnxruntime'"):
        evaluate(EngineFlow(export), [mnist_npz], dataset=mnist_npz)


def test_cli_exports_evaluates_the_folder_and_scores_with_a_detector_on_an_engine(trained_checkpoint, mnist_npz,
                                                                                 tmp_path, capsys, fixtures_dir):
    export = tmp_path / "export"
    assert main(["export", "--checkpoint", str(trained_checkpoint), "--out", str(export), "--format", "openvino"]) == 0
    assert "parity with PyTorch: max |log-likelihood difference|" in capsys.readouterr().out
    assert main(["export", "--checkpoint", str(trained_checkpoint), "--out", str(export)]) == 2  # no --overwrite
    ev = tmp_path / "eval"
    assert main(["evaluate", "--checkpoint", str(export), "--backend", "openvino", "--ood", mnist_npz, "--out", str(ev),
                 "--max_samples", "32", "--scores", "likelihood", "--no_progress"]) == 0
    metrics = json.loads((ev / "metrics.json").read_text())
    assert metrics["provenance"]["backend"] == "openvino" and metrics["ood"]
    assert main(["evaluate", "--checkpoint", str(export), "--ood", mnist_npz, "--out", str(tmp_path / "e2"),
                 "--no_progress"]) == 2
    assert "is an export folder" in capsys.readouterr().err

    fit_detector(trained_checkpoint, tmp_path / "detector.pt", score="latent_last_scale", fit_samples=64)
    with np.load(fixtures_dir / "mnist-small.npz") as f:
        np.savez(tmp_path / "new.npz", images=f["images_test"][:9])
    rows = {}
    for backend in ("torch", "onnxruntime"):
        out = tmp_path / f"{backend}.csv"
        assert main(["score", "--detector", str(tmp_path / "detector.pt"), str(tmp_path / "new.npz"), "--out",
                     str(out), "--backend", backend, "--no_progress"]) == 0
        rows[backend] = [float(r["score"]) for r in csv.DictReader(out.read_text().splitlines())]
    np.testing.assert_allclose(rows["onnxruntime"], rows["torch"], rtol=0, atol=1e-4)
    loaded = OODDetector.load(tmp_path / "detector.pt", backend="openvino")
    scores = [row["score"] for row in score_inputs(loaded, [str(tmp_path / "new.npz")], progress=False)]
    np.testing.assert_allclose(scores, rows["torch"], rtol=0, atol=1e-4)
