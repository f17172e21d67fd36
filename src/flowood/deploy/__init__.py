"""Deploying a detector: fit it from a trained flow into one file, then score new files, folders, globs and
``.npz`` files with it, one row per input; export a flow's density to ONNX / OpenVINO and score on those engines
(:mod:`flowood.engines.export`, :mod:`flowood.engines.backend`).

Example (with a trained checkpoint)::

    from flowood.deploy import fit_detector, score_inputs, write_scores

    detector = fit_detector("runs/demo/train/checkpoints/last.ckpt", "detector.pt", score="complexity")
    write_scores(score_inputs(detector, ["new_images/"]), "scores.csv")
"""

from flowood.deploy.inputs import expand_inputs, stream_batches
from flowood.deploy.score import (
           FIELDS,
           DetectorOptions,
           ScoreSummary,
           fit_detector,
           is_scores_file,
           score_inputs,
           write_scores,
)
from flowood.engines import BACKENDS, EngineFlow, ExportError, ExportOptions, ExportResult, engine_flow, export_flow

__all__ = ["BACKENDS", "DetectorOptions", "EngineFlow", "ExportError", "ExportOptions", "ExportResult", "FIELDS",
           "ScoreSummary", "engine_flow", "expand_inputs", "export_flow", "fit_detector", "is_scores_file",
           "score_inputs", "stream_batches", "write_scores"]
