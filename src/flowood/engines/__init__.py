"""Flows beyond PyTorch: export a flow's density to ONNX / OpenVINO, checked against PyTorch
(:mod:`flowood.engines.export`), and score the exported graph on ONNX Runtime or OpenVINO through the API of a
flow (:mod:`flowood.engines.backend`), so flowood's scores, detectors and ``flowood evaluate`` run on either engine.

Example (with a trained checkpoint)::

    from flowood.engines import EngineFlow, export_flow

    export_flow("runs/demo/train/checkpoints/last.ckpt", "runs/demo/export", format="openvino")
    flow = EngineFlow("runs/demo/export", backend="openvino")
    bits_per_dim = flow.bits_per_dim(images_uint8)
"""

from flowood.engines.backend import BACKENDS, ENGINES, EngineDensity, EngineFlow, backend_option, engine_flow
from flowood.engines.export import (
    DEFAULT_TOLERANCE,
    EXPORT_FORMATS,
    EXPORT_MANIFEST,
    DensityGraph,
    ExportError,
    ExportOptions,
    ExportResult,
    export_flow,
)

__all__ = ["BACKENDS", "DEFAULT_TOLERANCE", "DensityGraph", "ENGINES", "EXPORT_FORMATS", "EXPORT_MANIFEST",
           "EngineDensity", "EngineFlow", "ExportError", "ExportOptions", "ExportResult", "backend_option",
           "engine_flow", "export_flow"]
