"""Evaluating trained flows as OOD detectors: scores, metrics, figures and report.html."""

from flowood.evaluation.evaluate import (
                                         EvaluateOptions,
                                         EvaluationResult,
                                         evaluate,
                                         markdown_table,
                                         ranking_table,
                                         score_bits_per_dim,
                                         scores_table,
)
from flowood.evaluation.metrics_file import DetectorMetrics, Metrics

__all__ = ["EvaluateOptions", "EvaluationResult", "evaluate", "markdown_table", "ranking_table", "score_bits_per_dim",
           "scores_table", "Metrics", "DetectorMetrics"]
