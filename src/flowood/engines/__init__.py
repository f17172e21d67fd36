"""Flows beyond PyTorch: export a flow's density to ONNX / OpenVINO, checked against PyTorch
(:mod:`flowood.engines.export`), and score the exported graph on ONNX Runtime or OpenVINO through the API of a
flow (:mod:`flowood.engines.backend`), so flowood's scores, detectors and ``flowood evaluate`` run on either engine.
What both share (the export folder's format, the engine packages, a graph compiled on an engine) is
:mod:`flowood.engines.common`.

Example (with a trained checkpoint)::

    from flowood.engines import EngineFlow, export_flow

    export_flow("runs/demo/train/checkpoints/last.ckpt", "runs/demo/export", format="openvino")
    flow = EngineFlow("runs/demo/export", backend="openvino")
    bits_per_dim = flow.bits_per_dim(images_uint8)
"""

from flowood.engines.backend import BACKENDS, EngineFlow, backend_option, engine_flow
from flowood.engines.common import (
    DEFAULT_TOLERANCE,
    ENGINES,
    EXPORT_FORMATS,
    EXPORT_MANIFEST,
    EngineDensity,
    ExportError,
    ExportOptions,
)
from flowood.engines.export import DensityGraph, ExportResult, export_flow

__all__ = ["BACKENDS", "DEFAULT_TOLERANCE", "DensityGraph", "ENGINES", "EXPORT_FORMATS", "EXPORT_MANIFEST",
           "EngineDensity", "EngineFlow", "ExportError", "ExportOptions", "ExportResult", "backend_option",
           "engine_flow", "export_flow"]
