"""Evaluating trained flows as OOD detectors: scores, metrics, figures and report.html."""

from flowood.evaluation.evaluate import EvaluationResult, evaluate, markdown_table, scores_table, score_bits_per_dim

__all__ = ["EvaluationResult", "evaluate", "markdown_table", "score_bits_per_dim", "scores_table"]
