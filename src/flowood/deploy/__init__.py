"""Deploying a detector: fit it into one file (a pixel flow's, or a pipeline from raw images through a classifier's
features to a detector on them), then score new files, folders, globs and ``.npz`` files with it, one row per
input; export a flow's density, or a whole pipeline, to ONNX / OpenVINO and score on those engines
(:mod:`flowood.engines`, :mod:`flowood.deploy.export`).

Example (with a trained checkpoint and a classifier ``flowood embed`` wrote)::

    from flowood.deploy import fit_detector, load_detector, score_files, score_inputs, write_scores

    fit_detector("runs/demo/train/checkpoints/last.ckpt", "pixel.pt", score="complexity")
    fit_detector(classifier="runs/emb/fm.classifier.pt", out="features.pt", method="mahalanobis",
                 dataset="fashionmnist")
    score_files("features.pt", ["new_images/"], "scores.csv")    # what flowood score does
    detector = load_detector("features.pt")
    rows = list(score_inputs(detector, ["new_images/"]))           # the rows as dicts
    write_scores(rows, "scores.jsonl")                             # or to a stream: write_scores(rows, sys.stdout)
"""

from flowood.deploy.fit import DetectorOptions, fit_detector, fit_pipeline, split_fit_calibration
from flowood.deploy.inputs import MISMATCH_POLICIES, expand_inputs, stream_batches
from flowood.deploy.load import load_detector
from flowood.deploy.pipeline import METHODS, DetectorPipeline
from flowood.deploy.score import (
    FIELDS,
    ScoreSummary,
    ScoringOptions,
    is_scores_file,
    score_files,
    score_inputs,
    write_scores,
)
from flowood.engines import BACKENDS, EngineFlow, ExportError, ExportOptions, ExportResult, engine_flow, export_flow

__all__ = ["BACKENDS", "DetectorOptions", "DetectorPipeline", "EngineFlow", "ExportError", "ExportOptions",
           "ExportResult", "FIELDS", "METHODS", "MISMATCH_POLICIES", "ScoringOptions", "ScoreSummary", "engine_flow",
           "expand_inputs", "export_flow", "fit_detector", "fit_pipeline", "is_scores_file", "load_detector",
           "score_files", "score_inputs", "split_fit_calibration", "stream_batches", "write_scores"]
