"""OOD scores and detection metrics."""

from flowood.ood.metrics import METRIC_NAMES, aupr, auroc, bootstrap_ci, detection_accuracy, fpr_at_tpr, ood_metrics

__all__ = ["METRIC_NAMES", "aupr", "auroc", "bootstrap_ci", "detection_accuracy", "fpr_at_tpr", "ood_metrics"]
