"""OOD scores, detection metrics, and the OODDetector."""

from flowood.ood.detector import OODDetector
from flowood.ood.metrics import METRIC_NAMES, aupr, auroc, bootstrap_ci, detection_accuracy, fpr_at_tpr, ood_metrics
from flowood.ood.scores import (
                                DEFAULT_SCORES,
                                SCORE_NAMES,
                                SCORES,
                                WAIC,
                                ComplexityCorrected,
                                LikelihoodRatio,
                                NegativeLogLikelihood,
                                OODScore,
                                ScaleLikelihood,
                                ScoreOptions,
                                ScoreSettings,
                                Typicality,
                                compressed_bits_per_dim,
                                make_score,
                                register_score,
)

__all__ = ["ComplexityCorrected", "DEFAULT_SCORES", "LikelihoodRatio", "METRIC_NAMES", "NegativeLogLikelihood",
           "OODDetector", "OODScore", "SCORES", "SCORE_NAMES", "ScaleLikelihood", "ScoreOptions", "ScoreSettings",
           "Typicality", "WAIC", "aupr", "auroc", "bootstrap_ci", "compressed_bits_per_dim", "detection_accuracy",
           "fpr_at_tpr", "make_score", "ood_metrics", "register_score"]
