"""Load any detector flowood wrote, in PyTorch or on an inference engine: a detector file (a flow's or a
pipeline's, :func:`~flowood.deploy.pipeline.read_detector`), or a detector export folder
(:class:`~flowood.deploy.export.ExportedDetector`).

Example:
    >>> from flowood.deploy import load_detector
    >>> detector = load_detector("detector.pt")  # doctest: +SKIP
    >>> detector.predict(images)                 # doctest: +SKIP
"""

from __future__ import annotations

from pathlib import Path

from flowood.deploy.export import ExportedDetector, engine_pipeline
from flowood.deploy.pipeline import DetectorPipeline, read_detector
from flowood.engines.backend import engine_device
from flowood.engines.common import EXPORT_MANIFEST
from flowood.ood.detector import OODDetector
from flowood.options import ConfigError

__all__ = ["load_detector"]


def load_detector(path: str | Path, device: str = "cpu", backend: str = "torch",
                  flow_export: str | Path | None = None) -> OODDetector | DetectorPipeline | ExportedDetector:
    """Any detector file flowood wrote, ready to score: a pixel flow's (:class:`~flowood.ood.OODDetector`) or a
    pipeline's (:class:`~flowood.deploy.pipeline.DetectorPipeline`).

    Args:
        path: the detector file, or a folder :func:`~flowood.deploy.export.export_detector` wrote (scored on an
            engine alone).
        device: where a torch model scores (engines score on the CPU; ``auto`` means it for them).
        backend: ``torch``, or ``onnxruntime`` / ``openvino``: the detector is exported (to a temporary folder, checked
            against PyTorch) and scored on that engine.
        flow_export: a flow's detector on an engine ``backend``: an export folder of its flow to score on instead
            (``flowood export --checkpoint``, e.g. INT8).

    Raises:
        CheckpointError: the file is missing, unreadable, unsafe, or not a flowood detector.
    """
    if Path(path).is_dir() and (Path(path) / EXPORT_MANIFEST).is_file():
        if backend == "torch":
            raise ConfigError(f"{path} is an export folder: score it on an engine with backend='onnxruntime' or "
                              "'openvino' (or use the detector file it was exported from with backend='torch')")
        engine_device(backend, device)
        if flow_export is not None:
            raise ConfigError(f"{path} is already an export folder; flow_export applies to a detector file")
        return ExportedDetector(path, backend)
    detector = read_detector(path, device, backend, flow_export)
    if backend != "torch" and isinstance(detector, DetectorPipeline):
        detector.engine_ = engine_pipeline(detector, backend)
    return detector
