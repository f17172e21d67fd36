"""Export a whole detector as one graph, from pixels to anomaly score and decision, checked against PyTorch.

``flowood export --detector D --format onnx|openvino --out DIR`` writes one folder (``model.onnx``, with
``openvino`` also ``model.xml``/``model.bin``, and ``flowood-export.json``). The graph:

* input ``images``: uint8 ``[batch, C, H, W]`` in the detector's input shape (a flow on vectors takes float32
  ``[batch, D]``); flowood's readers adapt other images to it, outside the graph, and say so;
* output ``score``: float32 ``[batch]``, the anomaly score (higher = more anomalous), as the detector computes it in
  PyTorch: preprocessing, the feature extractor, the detector (a flow's score, or a classifier-based detector) and,
  for a flow on the inputs, dequantization at the centre of each 8-bit bin, all inside the graph;
* output ``ood``: bool ``[batch]``, ``score > threshold`` at the threshold of the detector file; the manifest keeps
  the threshold, the false-positive rate and the calibration scores, so a threshold moved later applies to ``score``
  (flowood's own engine scoring does this).

**Parity.** At export the graph runs on every installed engine that reads the folder and the detector runs in
PyTorch (pytorch-ood and scikit-learn for the classifier-based detectors) on the same images: the in-distribution
images the detector file keeps, and noise images. The largest score difference on the in-distribution images, as a
share of the spread (standard deviation) of the calibration scores, must stay below ``score_tolerance`` (default
1e-3), and every decision must agree (but for scores within that tolerance of the threshold); otherwise nothing is
kept. A flow score that needs more than the log-likelihood (``complexity``: a PNG encoder; ``likelihood_ratio``,
``waic``: more flows; typicality of groups) is refused: export the flow alone (``--checkpoint``) and score with
``--backend`` instead.

**INT8.** With ``quantize="int8"`` the checked fp32 graph is then quantized (a pipeline's feature extractor, a pixel
flow's st-networks) and checked against fp32 on held-out and OOD images before it replaces the fp32 graph: see
:mod:`flowood.deploy.quantized`.
"""

from __future__ import annotations

import math
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from flowood import __version__
from flowood.checkpoints import file_sha256
from flowood.deploy.pipeline import FEATURE_FLOW_SCORES, DetectorPipeline, FlowScoreGraph, read_detector
from flowood.deploy.quantized import detector_check_sets, quantize_detector_export, quantized_scopes
from flowood.engines.common import (
    EXPORT_FORMAT_VERSION,
    EXPORT_MANIFEST,
    EngineDensity,
    ExportError,
    ExportOptions,
    check_export_options,
    engines_for,
    read_manifest,
)
from flowood.engines.export import DensityGraph, ExportTarget, check_size, write_checked_export
from flowood.errors import InputError
from flowood.flows import FlowModel
from flowood.flows.capabilities import capabilities
from flowood.flows.preprocessing import dequantize
from flowood.ood.detector import CalibratedDetector, OODDetector, collect_samples
from flowood.options import ConfigError, merge_options

__all__ = ["export_detector", "DetectorExportResult", "detector_graph", "EngineDetector", "ExportedDetector",
           "engine_pipeline", "DETECTOR_NAMES"]

#: the names of an exported detector's input and outputs.
DETECTOR_NAMES = (("images",), ("score", "ood"))


class FlowDetectorGraph(nn.Module):
    """A flow on the inputs and its score (an :class:`~flowood.ood.OODDetector`) as one module: uint8 images
    (dequantized at the centre of each bin, as the detector does) or vectors -> ``(score, ood)``."""

    def __init__(self, flow: FlowModel, score: str, entropy: float | None, threshold: float) -> None:
        super().__init__()
        self.discrete = bool(flow.discrete)
        self.score = FlowScoreGraph(DensityGraph(flow), score, entropy)
        self.register_buffer("threshold", torch.tensor(float(threshold), dtype=torch.float32))

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        if self.discrete:
            x = dequantize(x, noise="center")  # as the detector does: the same score whatever the batch
        score = self.score(x.float()).float()
        return score, score > self.threshold


def detector_graph(detector: OODDetector | DetectorPipeline) -> nn.Module:
    """The fitted detector as one module ``inputs -> (score, ood)`` of torch operations.

    Raises:
        ExportError: a flow score no graph computes, or a model that is not a flowood flow.
    """
    if isinstance(detector, DetectorPipeline):
        if getattr(detector.extractor, "batch", None) is not None:
            raise ExportError(f"the feature extractor was exported with a fixed batch of {detector.extractor.batch}; "
                              "an exported detector takes any batch: export your model again with a dynamic batch "
                              "(dynamic_shapes={'x': {0: torch.export.Dim('batch')}}) and fit the detector on it")
        return detector.graph()
    detector.check_fitted()
    scorer = detector.scorer_
    flow = scorer.flow
    if not capabilities(flow).traceable:
        raise ExportError(f"only detectors on flowood flows can be exported; this one's model is a "
                          f"{type(flow).__name__}")
    if scorer.name not in FEATURE_FLOW_SCORES:
        raise ExportError(f"the {scorer.name} score needs more than the flow's log-likelihood (a PNG encoder, another "
                          "flow, or groups of inputs), which no graph holds; export the flow alone with `checkpoint` "
                          "and score on the engine with `backend`")
    return FlowDetectorGraph(flow, scorer.name, getattr(scorer, "entropy", None), detector.threshold_)


def _input_spec(detector: Any) -> dict[str, Any]:
    shape = list(detector.input_shape)
    images = len(shape) == 3
    convention = ("8-bit images in the detector's input shape (others are adapted outside the graph)" if images
                  else "feature vectors as the flow takes them")
    return {"name": DETECTOR_NAMES[0][0], "shape": ["batch", *shape], "dtype": "uint8" if images else "float32",
            "convention": convention}


def detector_parity_inputs(detector: Any, n: int, seed: int) -> tuple[Tensor, Tensor]:
    """``(in-distribution inputs, other inputs)`` of the parity check: the in-distribution images a pipeline file
    keeps (for a flow, samples of the flow), and seeded noise images (for a flow on vectors, samples at temperature
    1.5)."""
    g = torch.Generator().manual_seed(seed)
    shape = tuple(detector.input_shape)
    noise = torch.randint(0, 256, (max(2, n // 2), *shape), generator=g, dtype=torch.uint8)
    kept = getattr(detector, "parity_images_", None)
    if kept is not None and len(kept):
        return kept, noise
    if isinstance(detector, DetectorPipeline):  # fitted from features alone: noise stands in for in-distribution
        return torch.randint(0, 256, (n, *shape), generator=g, dtype=torch.uint8), noise
    flow = detector.scorer_.flow
    with torch.no_grad():
        if len(shape) == 3:
            samples = (flow.sample(n, generator=g).float().cpu().clamp(0, 1) * 255).round().to(torch.uint8)
            return samples, torch.randint(0, 256, (max(2, n // 2), *shape), generator=g, dtype=torch.uint8)
        return (flow.sample(n, generator=g).float().cpu(),
                flow.sample(max(2, n // 2), temperature=1.5, generator=g).float().cpu())


def _run(engine: EngineDensity, x: Tensor) -> np.ndarray:
    """The engine's scores of ``x``, at its batch size and again in batches of 3 (the batch size is dynamic)."""
    return np.concatenate([engine.run_batches(x.numpy(), max(1, len(x))), engine.run_batches(x.numpy(), 3)])


def check_detector_parity(detector: Any, folder: Path, engines: list[str], inside: Tensor, outside: Tensor,
                          tolerance: float, manifest: dict[str, Any]) -> dict[str, Any]:
    """The exported graph on each engine against the detector in PyTorch (see the module docstring).

    Raises:
        ExportError: an engine cannot run the graph, disagrees beyond ``tolerance``, or decides otherwise.
    """
    reference = np.asarray(detector.reference_scores_, dtype=np.float64)
    spread = float(reference.std()) or 1.0
    threshold = float(detector.threshold_)
    expected = {name: np.tile(detector.anomaly_score(x), 2) for name, x in (("in", inside), ("other", outside))}
    report: dict[str, Any] = {"engines": engines, "precision": "fp32", "in_distribution_inputs": len(inside),
                              "other_inputs": len(outside), "spread": spread, "tolerance": tolerance,
                              "per_engine": {}}
    for engine_name in engines:
        try:
            engine = EngineDensity(folder, engine_name, manifest=manifest)
            got = {"in": _run(engine, inside), "other": _run(engine, outside)}
        except Exception as err:
            raise ExportError(f"{engine_name} could not run the exported detector: {str(err).splitlines()[0]}") \
                from err
        diff_in = float(np.max(np.abs(got["in"] - expected["in"]))) if np.isfinite(got["in"]).all() else math.inf
        clear = {k: np.abs(expected[k] - threshold) > tolerance * spread for k in got}
        disagree = sum(int(((got[k] > threshold) != (expected[k] > threshold))[clear[k]].sum()) for k in got)
        relative_other = float(np.max(np.abs(got["other"] - expected["other"]) /
                                      np.maximum(np.abs(expected["other"]), spread)))
        report["per_engine"][engine_name] = {"max_abs_diff": diff_in, "max_diff_in_spreads": diff_in / spread,
                                             "decisions_disagreeing": disagree,
                                             "other_inputs_max_relative_diff": relative_other}
        if not diff_in / spread <= tolerance or disagree:
            raise ExportError(f"the exported detector disagrees with PyTorch on {engine_name}: scores differ by "
                              f"{diff_in:.3g} ({diff_in / spread:.3g} of the calibration scores' spread, tolerance "
                              f"{tolerance:g}) and {disagree} decision(s) differ; nothing was kept")
    worst = max(report["per_engine"].values(), key=lambda r: r["max_diff_in_spreads"])
    report.update(max_abs_diff=worst["max_abs_diff"], max_diff_in_spreads=worst["max_diff_in_spreads"])
    return report


@dataclass
class DetectorExportResult:
    """What :func:`export_detector` wrote and how closely the engines agree with PyTorch.

    Attributes:
        path: the export folder. files: the files written in it.
        max_abs_diff: the largest |score difference| on in-distribution images, in the score's units.
        max_diff_in_spreads: the same as a share of the calibration scores' standard deviation.
        tolerance: the largest share allowed. seconds: time taken.
        quantization: for an INT8 export, what the manifest records of it (method, calibration data, the check
            against fp32, see :mod:`flowood.deploy.quantized`); None in fp32.
    """

    path: Path
    files: list[str]
    max_abs_diff: float
    max_diff_in_spreads: float
    tolerance: float
    seconds: float
    quantization: dict[str, Any] | None = None


def export_detector(detector: str | Path | OODDetector | DetectorPipeline, out: str | Path,
                    options: ExportOptions | None = None, *, overwrite: bool = False, **option_values: Any
                    ) -> DetectorExportResult:
    """Export a fitted detector (a file, or the object) as one graph, checked against PyTorch.

    Args:
        detector: a detector file, or a fitted detector.
        out: the export folder.
        options: an :class:`~flowood.engines.ExportOptions` (``format``, ``score_tolerance``,
            ``check_samples``, ``seed``; ``quantize="int8"`` with ``check_ood`` and the INT8 check's options, see
            :mod:`flowood.deploy.quantized`).
        overwrite: replace an earlier export in ``out``.

    Raises:
        ConfigError: unknown format or missing packages. ExportError: not exportable, or the engines disagree.
        OutputError: ``out`` is unsafe.

    Example:
        >>> result = export_detector("detector.pt", "runs/detector-export", format="openvino")  # doctest: +SKIP
        >>> result.max_diff_in_spreads < 1e-3  # doctest: +SKIP
        True
    """
    o = check_export_options(merge_options(ExportOptions, options, option_values), "detector")
    start = time.perf_counter()
    source = Path(detector) if isinstance(detector, (str, Path)) else None
    fitted = read_detector(source) if source is not None else detector
    graph = detector_graph(fitted).cpu().eval()
    check_size(graph)
    # a detector with nothing to quantize is refused before the data are read
    scopes = quantized_scopes(graph) if o.quantize == "int8" else None
    sets = detector_check_sets(fitted, o) if scopes else None
    inside, outside = detector_parity_inputs(fitted, o.check_samples, o.seed)
    spec = _input_spec(fitted)
    engine_manifest = {"input": spec, "outputs": list(DETECTOR_NAMES[1])}
    engines = engines_for(o.format)

    def check(folder: Path) -> dict[str, Any]:
        parity = check_detector_parity(fitted, folder, engines, inside, outside, o.score_tolerance, engine_manifest)
        if sets is not None:
            parity["quantization"] = quantize_detector_export(folder, scopes, sets, o.format, fitted, engine_manifest,
                                                              o)
        return parity
    path, files, parity = write_checked_export(
        graph, inside[:2], ExportTarget(out, o.format, [source] if source is not None else [], overwrite), check,
        lambda files, parity: _manifest(fitted, source, spec, files, parity), DETECTOR_NAMES)
    return DetectorExportResult(path, files + [EXPORT_MANIFEST], parity["max_abs_diff"],
                                parity["max_diff_in_spreads"], o.score_tolerance, time.perf_counter() - start,
                                parity.get("quantization"))


def _manifest(detector: Any, source: Path | None, spec: dict[str, Any], files: list[str], parity: dict[str, Any]
              ) -> dict[str, Any]:
    quantization = parity.get("quantization")
    parity = {k: v for k, v in parity.items() if k != "quantization"}  # the fp32 graph's parity with PyTorch
    return {"precision": "int8" if quantization else "fp32", "quantization": quantization,
            "format": EXPORT_FORMAT_VERSION, "kind": "detector", "flowood_version": __version__,
            "torch_version": str(torch.__version__), "exported": time.strftime("%Y-%m-%d %H:%M:%S"),
            "source": str(source) if source is not None else "a detector in memory",
            "detector_sha256": file_sha256(source) if source is not None else None, "files": files,
            "input": spec, "outputs": list(DETECTOR_NAMES[1]), "input_shape": list(detector.input_shape),
            "score": detector.score_name, "threshold": float(detector.threshold_), "fpr": float(detector.fpr),
            "reference_scores": [float(v) for v in np.asarray(detector.reference_scores_, dtype=np.float64)],
            "parity": parity}


class EngineDetector:
    """An exported detector compiled on an engine: ``score(inputs) -> anomaly scores`` (float64), in batches.

    Args:
        folder: a detector export folder. backend: ``onnxruntime`` or ``openvino``. precision: ``fp32``, or
        ``bf16`` on OpenVINO. batch_size: inputs per engine call. temporary: the temporary folder ``folder`` lies in,
        if any: kept as long as the object, removed with it.
    """

    def __init__(self, folder: str | Path, backend: str = "onnxruntime", precision: str = "fp32",
                 batch_size: int = 256, temporary: tempfile.TemporaryDirectory | None = None) -> None:
        self.temporary = temporary
        self.manifest = read_manifest(Path(folder))
        if self.manifest.get("kind") != "detector":
            raise ConfigError(f"{folder} holds an exported flow, not a detector; evaluate it as a `checkpoint` on an "
                              "engine `backend`, or export the detector file itself")
        self.engine = EngineDensity(folder, backend, precision, manifest=self.manifest)
        self.batch_size = batch_size
        self.input_shape = tuple(self.manifest["input_shape"])

    def score(self, x: Tensor) -> np.ndarray:
        """Anomaly scores (float64) of a batch in the graph's input dtype and shape.

        Raises:
            InputError: another dtype or shape (the graph would read other values).
        """
        x = collect_samples(x)
        dtype = self.manifest["input"]["dtype"]
        if tuple(x.shape[1:]) != self.input_shape or str(x.dtype).removeprefix("torch.") != dtype:
            raise InputError(f"the exported detector takes {dtype} inputs of shape {self.input_shape}, got "
                             f"{str(x.dtype).removeprefix('torch.')} {tuple(x.shape[1:])}")
        return self.engine.run_batches(x.numpy(), self.batch_size)


def engine_pipeline(pipeline: DetectorPipeline, backend: str, precision: str = "fp32") -> EngineDetector:
    """The pipeline exported to a temporary folder (checked against PyTorch) and compiled on ``backend``; the folder
    lives as long as the returned object."""
    scratch = tempfile.TemporaryDirectory(prefix="flowood-detector-export-")
    folder = Path(scratch.name) / "export"
    try:
        export_detector(pipeline, folder, format="openvino" if backend == "openvino" else "onnx", overwrite=True)
        return EngineDetector(folder, backend, precision, temporary=scratch)
    except BaseException:
        scratch.cleanup()
        raise


class ExportedDetector(CalibratedDetector):
    """A detector export folder scored on an engine alone: no PyTorch model, the threshold and calibration scores
    from its manifest (so :meth:`set_fpr` moves the threshold as on the detector it was exported from).

    Args:
        folder: written by :func:`export_detector`. backend: ``onnxruntime`` or ``openvino``.
    """

    def __init__(self, folder: str | Path, backend: str = "onnxruntime", precision: str = "fp32") -> None:
        self.folder, self.backend, self.precision = folder, backend, precision
        self.engine_ = EngineDetector(folder, backend, precision)
        m = self.engine_.manifest
        self.fpr = float(m["fpr"])
        self.reference_scores_ = np.asarray(m["reference_scores"], dtype=np.float64)
        self.provenance_ = {k: m.get(k) for k in ("source", "detector_sha256", "exported", "flowood_version")}
        self.calibrate()

    @property
    def input_shape(self) -> tuple[int, ...]:
        return self.engine_.input_shape

    @property
    def score_name(self) -> str:
        return str(self.engine_.manifest.get("score"))

    def anomaly_score(self, X: Any) -> np.ndarray:
        return self.engine_.score(collect_samples(X))
