"""``OODDetector``: a trained flow and a score, used like a scikit-learn estimator."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor
from torch.utils.data import DataLoader

from flowood.errors import InputError
from flowood.flows import FlowModel
from flowood.ood.scores import OODScore, make_score
from flowood.options import ConfigError

__all__ = ["OODDetector", "collect_samples"]


def collect_samples(data: Any) -> Tensor:
    """A tensor of samples from a tensor, a dataset with ``.data``, or a DataLoader of tensors/(x, y) pairs."""
    if isinstance(data, Tensor):
        return data
    if hasattr(data, "data") and isinstance(data.data, Tensor):
        return data.data
    if isinstance(data, DataLoader) or hasattr(data, "__iter__"):
        parts = [b[0] if isinstance(b, (tuple, list)) else b for b in data]
        if not parts:
            raise InputError("the data loader yielded no batches")
        return torch.cat(parts)
    raise TypeError(f"cannot take samples from {type(data).__name__}; pass a tensor, a dataset or a DataLoader")


class OODDetector:
    """Flag inputs as out-of-distribution with a trained flow and one of flowood's scores.

    Args:
        flow: a trained flow, or the path of a checkpoint written by ``flowood train``.
        score: a score name (``likelihood``, ``likelihood_ratio``, ``complexity``, ``complexity_jp2``,
            ``typicality``, ``latent_last_scale``, ``latent_early_scales``, ``waic``).
        holdout: share of the ``fit`` data kept apart to calibrate thresholds (for scores that learn
            from the fit data; others calibrate on all of it).
        **score_options: passed to :func:`~flowood.ood.scores.make_score` (e.g. ``ensemble=[...]``,
            ``background_steps=2000``).

    Example:
        >>> from flowood.flows import RealNVP
        >>> detector = OODDetector(RealNVP((1, 8, 8), num_blocks=1, num_mid_channels=4), score="likelihood")
        >>> _ = detector.fit(torch.randint(0, 128, (64, 1, 8, 8), dtype=torch.uint8))
        >>> detector.predict(torch.randint(0, 256, (2, 1, 8, 8), dtype=torch.uint8)).dtype
        dtype('bool')
    """

    def __init__(self, flow: FlowModel | str | Path, score: str = "likelihood", holdout: float = 0.2,
                 **score_options: Any) -> None:
        if not isinstance(flow, FlowModel):
            from flowood.checkpoints import load_flow
            flow = load_flow(flow).flow
        if not 0.0 < holdout < 1.0:
            raise ConfigError(f"holdout must be in (0, 1), got {holdout}")
        self.flow = flow.eval()
        self.holdout = holdout
        self.scorer: OODScore = make_score(score, flow, progress=False, **score_options)
        self.reference_scores: np.ndarray | None = None

    @property
    def score_name(self) -> str:
        return self.scorer.name

    def fit(self, data: Any) -> "OODDetector":
        """Fit the score on in-distribution data and keep reference scores for :meth:`threshold`."""
        x = collect_samples(data)
        if len(x) < 2:
            raise InputError(f"fit needs at least 2 in-distribution samples, got {len(x)}")
        if self.scorer.needs_fit:
            perm = torch.randperm(len(x), generator=torch.Generator().manual_seed(self.scorer.seed))
            n_ref = max(1, round(self.holdout * len(x)))
            ref, train = x[perm[:n_ref]], x[perm[n_ref:]]
            self.scorer.fit(train)
        else:
            ref = x
        self.reference_scores = self.scorer.score(ref)
        return self

    def score(self, x: Any) -> np.ndarray:
        """One score per input; higher means more anomalous."""
        if self.scorer.needs_fit and not self.scorer.fitted:
            raise RuntimeError("call fit(in-distribution data) before score()")
        return self.scorer.score(collect_samples(x))

    def threshold(self, fpr: float = 0.05) -> float:
        """The score above which an input is flagged, so that a share ``fpr`` of in-distribution data is."""
        if self.reference_scores is None:
            raise RuntimeError("call fit(in-distribution data) before threshold()")
        if not 0.0 <= fpr <= 1.0:
            raise ConfigError(f"fpr must be in [0, 1], got {fpr}")
        return float(np.quantile(self.reference_scores, 1.0 - fpr))

    def predict(self, x: Any, fpr: float = 0.05) -> np.ndarray:
        """True for inputs flagged as OOD at the threshold for ``fpr``."""
        return self.score(x) > self.threshold(fpr)
