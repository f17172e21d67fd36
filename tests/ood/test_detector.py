"""OODDetector (flowood.ood.detector): fit on in-distribution data, a threshold at a chosen false-positive rate,
and predictions, on a tiny RealNVP fitted to the FashionMNIST fixture."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from sklearn.exceptions import NotFittedError

from flowood import OODDetector


def test_ood_detector_api(fitted_flow, fixture_images):
    fm, mn = fixture_images
    det = OODDetector(fitted_flow, score="complexity")
    with pytest.raises(NotFittedError, match="fit"):
        det.threshold()
    det.fit(torch.utils.data.DataLoader(torch.utils.data.TensorDataset(fm[:300], torch.zeros(300)), batch_size=64))
    thr = det.threshold(fpr=0.05)
    assert np.mean(det.reference_scores_ > thr) <= 0.05 + 1e-9
    flagged = det.is_ood(mn[:100], fpr=0.05)  # flowood's boolean form of predict
    assert flagged.dtype == bool and flagged.mean() > 0.5  # most MNIST digits flagged as OOD
    assert det.anomaly_score(mn[:3]).shape == (3,)
    typ = OODDetector(fitted_flow, score="typicality").fit(fm[:100])
    assert typ.scorer_.fitted and len(typ.reference_scores_) == 20  # 20% held out for calibration
    with pytest.raises(ValueError, match="holdout"):
        OODDetector(fitted_flow, holdout=1.5).fit(fm[:10])  # checked on fit, as scikit-learn does
    with pytest.raises(TypeError):
        det.fit(42)
