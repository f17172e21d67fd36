"""INT8 detectors: the feature extractor and a flow's st-networks in INT8, checked against fp32 before anything is kept.

``flowood export --detector D --quantize int8 --check_ood SET [SET ...] [--calibration 1000]`` first writes and
checks the fp32 graph of the detector as every detector export does (:mod:`flowood.deploy.export`), then:

1. **What is quantized.** For a pipeline, the feature extractor (the backbone's convolutions and the ReLUs between
   them, on OpenVINO also its matrix products; its preprocessing is elementwise and stays fp32). The detector on
   the features (Mahalanobis' precision matrix, a kNN's bank, a flow on the features: see :func:`quantized_scopes`
   for why), the score and the threshold stay fp32. For a pixel flow's detector, the flow's st-networks, as
   :mod:`flowood.engines.quantized` does for a flow. Each engine's own tool quantizes
   (:func:`~flowood.engines.quantized.quantize_in_place`): ONNX Runtime's static QDQ quantization for ``onnx``,
   NNCF for ``openvino``.
2. **Calibration.** ``calibration`` training images of the set the detector was fitted on (``dataset``, by default
   the detector file's), adapted to its input as ``flowood score`` adapts images, set the INT8 activation ranges.
3. **The check.** The fp32 and the INT8 graph score ``check_held_out`` test images of that set and as many of each
   ``check_ood`` set on the export's own engine. Recorded per set: the mean anomaly score in fp32 and INT8, the mean
   and largest shift as a share of the spread (standard deviation) of the detector's calibration scores, and the
   share of decisions (at the detector's threshold) that flip; per OOD set the AUROC of the score (OOD positive) in
   both precisions; on the held-out images the false-positive rate at the threshold in both. The export is refused,
   with the numbers printed and nothing kept, when the mean held-out shift exceeds ``max_score_shift`` spreads or an
   AUROC moves by more than ``max_auroc_shift``.
4. ``model.onnx`` (or OpenVINO's ``model.xml``/``.bin``) is replaced by the INT8 graph; the manifest's ``precision``
   says ``int8`` and ``quantization`` keeps the method, the calibration data and the check. The threshold and the
   calibration scores stay the fp32 detector's (the check bounds how far INT8 moves the scores from them).

Scoring needs no option: ``flowood score/serve/evaluate --detector EXPORT --backend`` and
:func:`~flowood.deploy.load_detector` read the INT8 graph, on the engine its check ran on and on a CPU with INT8
dot-product instructions only.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from flowood.data import fit_to_shape, load_dataset
from flowood.deploy.pipeline import PipelineGraph
from flowood.engines.common import EngineDensity, ExportError, ExportOptions, check_int8_cpu
from flowood.engines.quantize import conditioner_scopes
from flowood.engines.quantized import IN_DISTRIBUTION, CheckSets, ood_auroc, quantize_in_place
from flowood.options import ConfigError

#: what ONNX Runtime quantizes in a feature extractor: its convolutions and the ReLUs between them. Its fully connected
#: layers stay fp32: quantizing the test suite's SmallCNN's embedding layer too moved a Mahalanobis detector's held-out
#: scores by 0.17-0.21 of their spread and its AUROC by up to 0.014, against 0.018 and 0.002 without (NNCF, for
#: OpenVINO, quantizes them with a bias correction and moved the scores by 0.02).
ONNXRUNTIME_EXTRACTOR_OPS = ("Conv", "Relu")

__all__ = ["ONNXRUNTIME_EXTRACTOR_OPS", "detector_check_sets", "quantized_scopes",
           "detector_int8_check", "detector_check_table", "quantize_detector_export"]


def _graph_inputs(detector: Any, name: str, split: str, root: str | None, n: int, seed: int) -> np.ndarray:
    """``n`` samples (seeded) of a set's split in the detector's input shape, as the graph takes them."""
    shape = tuple(detector.input_shape)
    x = fit_to_shape(load_dataset(name, split, root, shape=shape).take(n, seed=seed), shape)
    return x.numpy() if x.dtype == torch.uint8 else x.float().numpy()


def detector_check_sets(detector: Any, o: ExportOptions) -> CheckSets:
    """The CPU checked, and the calibration, held-out and OOD inputs of a detector's INT8 export loaded (see the
    module docstring).

    Raises:
        ConfigError: a CPU without INT8 dot-product instructions, no in-distribution set known, or no OOD set given.
        DataError: a set cannot be read or does not fit the detector.
    """
    check_int8_cpu()
    provenance = getattr(detector, "provenance_", None) or {}
    name = o.dataset or provenance.get("dataset")
    if not name:
        raise ConfigError("an INT8 detector is calibrated and checked on its in-distribution data, and this detector "
                          "does not say which it is; pass dataset")
    if not o.check_ood:
        raise ConfigError("an INT8 detector is checked on at least one OOD set; pass check_ood, e.g. "
                          "check_ood=['mnist']")
    root = o.data_root or provenance.get("data_root")
    return CheckSets(name, _graph_inputs(detector, name, "train", root, o.calibration, o.seed),
                     _graph_inputs(detector, name, "test", root, o.check_held_out, o.seed),
                     {n: _graph_inputs(detector, n, "test", root, o.check_held_out, o.seed) for n in o.check_ood})


def quantized_scopes(graph: nn.Module) -> list[str]:
    """The module paths of a detector graph (:func:`~flowood.deploy.export.detector_graph`) that INT8 quantizes: a
    pipeline's feature extractor, or a pixel flow's st-networks. A flow on a pipeline's features stays fp32 with the
    rest of the detector: on the deployment guide's FashionMNIST detector (a RealNVPTabular on 64-dim features) its
    st-networks in INT8 moved the held-out scores by 0.08-0.11 of their spread and the AUROC by up to 0.008 on both
    engines, and the export was refused; with the extractor alone quantized, 0.003-0.03 and 0.0024; and the flow's
    share of the compute is small beside the backbone's.

    Raises:
        ConfigError: nothing to quantize (a pixel flow without st-networks).
    """
    if isinstance(graph, PipelineGraph):
        return ["extractor"]
    return conditioner_scopes(graph)


def detector_int8_check(fp32_folder: Path, int8_folder: Path, engine: str, sets: CheckSets, detector: Any,
                        io: dict[str, Any], o: ExportOptions) -> dict[str, Any]:
    """Score the sets with the fp32 and the INT8 detector graph (``io``: the graph's input and outputs, as the
    manifest states them) on ``engine``, and refuse beyond the tolerances (see the module docstring).

    Returns:
        ``{"engines", "per_engine": {engine: numbers}, "spread", "threshold", "worst_score_shift",
        "worst_auroc_shift", tolerances}``.

    Raises:
        ExportError: beyond a tolerance (the message has the numbers), non-finite scores, or the engine cannot run a
            graph.
    """
    spread = float(np.std(np.asarray(detector.reference_scores_, dtype=np.float64))) or 1.0
    threshold = float(detector.threshold_)
    try:
        fp32, int8 = (EngineDensity(f, engine, manifest=io) for f in (fp32_folder, int8_folder))
    except Exception as err:
        raise ExportError(f"{engine} could not load the INT8 graph: {str(err).splitlines()[0]}") from err
    named = {IN_DISTRIBUTION: sets.held_out, **sets.ood}
    scores = {name: (fp32.run_batches(x, 256), int8.run_batches(x, 256)) for name, x in named.items()}
    for name, (a, b) in scores.items():
        if not (np.isfinite(a).all() and np.isfinite(b).all()):
            raise ExportError(f"the {'INT8' if np.isfinite(a).all() else 'fp32'} graph gives non-finite scores on "
                              f"{name}; nothing was kept")
    ind32, ind8 = scores[IN_DISTRIBUTION]
    result: dict[str, Any] = {
        "scores": {name: {"fp32": float(a.mean()), "int8": float(b.mean()),
                          "mean_shift_in_spreads": float((b - a).mean() / spread),
                          "max_abs_shift_in_spreads": float(np.abs(b - a).max() / spread),
                          "decisions_flipped": float(((a > threshold) != (b > threshold)).mean())}
                   for name, (a, b) in scores.items()},
        "auroc": {name: {"fp32": ood_auroc(ind32, scores[name][0]), "int8": ood_auroc(ind8, scores[name][1])}
                  for name in sets.ood},
        "false_positive_rate": {"fp32": float((ind32 > threshold).mean()), "int8": float((ind8 > threshold).mean())}}
    for a in result["auroc"].values():
        a["shift"] = a["int8"] - a["fp32"]
    score_shift = result["scores"][IN_DISTRIBUTION]["mean_shift_in_spreads"]
    auroc_shift = max((a["shift"] for a in result["auroc"].values()), key=abs)
    check = {"engines": [engine], "per_engine": {engine: result}, "held_out_samples": len(sets.held_out),
             "ood_samples": {n: len(x) for n, x in sets.ood.items()}, "spread": spread, "threshold": threshold,
             "worst_score_shift": score_shift, "worst_auroc_shift": auroc_shift, "max_score_shift": o.max_score_shift,
             "max_auroc_shift": o.max_auroc_shift}
    if not abs(score_shift) <= o.max_score_shift or not abs(auroc_shift) <= o.max_auroc_shift:
        raise ExportError(f"the INT8 detector moves the mean score on held-out {sets.dataset} by {score_shift:+.4f} "
                          f"of the calibration scores' spread (tolerance {o.max_score_shift:g}) and the AUROC by up to "
                          f"{auroc_shift:+.4f} (tolerance {o.max_auroc_shift:g}):\n{detector_check_table(check)}\n"
                          "nothing was kept; calibrate on more images (calibration) or export in fp32")
    return check


def detector_check_table(check: dict[str, Any]) -> str:
    """The check's numbers as lines: per engine and set, the mean score fp32 -> INT8, its shift in spreads, the
    decisions that flip, and the AUROC fp32 -> INT8; then the false-positive rate at the threshold."""
    lines = []
    for engine, r in check["per_engine"].items():
        for name, s in r["scores"].items():
            a = r["auroc"].get(name)
            shown = f", AUROC {a['fp32']:.4f} -> {a['int8']:.4f} ({a['shift']:+.4f})" if a else ""
            lines.append(f"  {engine}, {name}: score {s['fp32']:.4g} -> {s['int8']:.4g} (mean shift "
                         f"{s['mean_shift_in_spreads']:+.4f} of the spread, decisions flipped "
                         f"{100 * s['decisions_flipped']:.1f}%){shown}")
        fpr = r["false_positive_rate"]
        lines.append(f"  {engine}, false-positive rate at the threshold on held-out images: {100 * fpr['fp32']:.1f}% "
                     f"-> {100 * fpr['int8']:.1f}%")
    return "\n".join(lines)


def quantize_detector_export(folder: Path, scopes: list[str], sets: CheckSets, format: str, detector: Any,
                             io: dict[str, Any], o: ExportOptions) -> dict[str, Any]:
    """Quantize the checked fp32 detector graph in ``folder``, the parts ``scopes`` names (:func:`quantized_scopes`;
    see the module docstring), check it against fp32 and put it in place. What the manifest records under
    ``quantization``.

    Raises:
        ExportError: quantization failed, or the check refused the INT8 graph.
    """
    done = quantize_in_place(folder, scopes, sets.calibration, format,
                             lambda candidate, engine: detector_int8_check(folder, candidate, engine, sets, detector,
                                                                           io, o),
                             {"extractor": ONNXRUNTIME_EXTRACTOR_OPS} if "extractor" in scopes else None)
    return {**done, "quantized": scopes,
            "calibration_data": {"dataset": sets.dataset, "split": "train", "samples": len(sets.calibration),
                                 "seed": o.seed}}

