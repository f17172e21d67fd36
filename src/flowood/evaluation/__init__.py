"""Evaluating trained flows as OOD detectors."""

from flowood.evaluation.likelihood import EvaluationResult, evaluate, markdown_table, score_bits_per_dim

__all__ = ["EvaluationResult", "evaluate", "markdown_table", "score_bits_per_dim"]
