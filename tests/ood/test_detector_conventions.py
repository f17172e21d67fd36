"""OODDetector follows scikit-learn's outlier-detector conventions, keeps flowood's own names, and is saved and
loaded as one file."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from builders import tiny_realnvp
from sklearn.base import clone
from sklearn.exceptions import NotFittedError

from flowood.checkpoints import CheckpointError
from flowood.ood import OODDetector
from flowood.outputs import OutputError


@pytest.fixture(scope="module")
def data():
    g = torch.Generator().manual_seed(0)
    inliers = torch.randint(0, 100, (96, 1, 8, 8), generator=g, dtype=torch.uint8)
    outliers = torch.randint(150, 256, (16, 1, 8, 8), generator=g, dtype=torch.uint8)
    return inliers, outliers


def tiny_flow():
    torch.manual_seed(0)
    return tiny_realnvp((1, 8, 8), num_scales=1)


@pytest.mark.parametrize("score", ["likelihood", "typicality", "complexity"])
def test_scikit_learn_conventions(data, score):
    inliers, outliers = data
    detector = OODDetector(tiny_flow(), score=score, fpr=0.1)
    assert detector.fit(inliers) is detector
    samples = detector.score_samples(outliers)
    assert np.allclose(samples, -detector.anomaly_score(outliers))  # higher = more normal
    assert np.allclose(detector.decision_function(outliers), samples - detector.offset_)
    predicted = detector.predict(inliers)
    assert set(np.unique(predicted)) <= {-1, 1}
    assert np.array_equal(predicted == -1, detector.is_ood(inliers))
    ref = detector.reference_scores_
    assert detector.threshold_ == pytest.approx(np.quantile(ref, 0.9)) and detector.offset_ == -detector.threshold_
    params = detector.get_params()
    assert params["score"] == score and params["fpr"] == 0.1
    copy = clone(detector)
    assert copy is not detector and copy.get_params()["score"] == score and not hasattr(copy, "offset_")
    assert np.allclose(copy.fit(inliers).score_samples(outliers), samples)
    detector.set_params(fpr=0.3)
    assert detector.fpr == 0.3


def test_unfitted_detectors_say_so(data):
    detector = OODDetector(tiny_flow())
    with pytest.raises(NotFittedError):
        detector.predict(data[0])
    with pytest.raises(NotFittedError):
        detector.threshold()


def test_the_same_input_gets_the_same_score_in_any_batch(data):
    inliers, outliers = data
    detector = OODDetector(tiny_flow(), score="likelihood").fit(inliers)
    alone = detector.anomaly_score(outliers[3:4])
    together = detector.anomaly_score(torch.cat((inliers[:7], outliers[3:4])))[-1]
    assert alone[0] == pytest.approx(together, rel=1e-6)


def test_save_and_load_give_the_same_decisions(data, tmp_path):
    inliers, outliers = data
    detector = OODDetector(tiny_flow(), score="typicality", fpr=0.05).fit(inliers)
    path = detector.save(tmp_path / "detector.pt")
    loaded = OODDetector.load(path)
    both = torch.cat((inliers, outliers))
    assert np.allclose(loaded.anomaly_score(both), detector.anomaly_score(both))
    assert np.array_equal(loaded.predict(both), detector.predict(both))
    assert loaded.threshold_ == detector.threshold_ and loaded.input_shape == (1, 8, 8)
    with pytest.raises(OutputError, match="overwrite=True"):
        detector.save(path)
    (tmp_path / "mine.pt").write_bytes(b"not flowood's")
    with pytest.raises(OutputError, match="flowood did not write it"):
        detector.save(tmp_path / "mine.pt", overwrite=True)
    torch.save({"format": "something else"}, tmp_path / "other.pt")
    with pytest.raises(CheckpointError, match="not a flowood detector"):
        OODDetector.load(tmp_path / "other.pt")


def test_a_fitted_likelihood_ratio_keeps_its_background_in_the_file(data, tmp_path):
    inliers, outliers = data
    detector = OODDetector(tiny_flow(), score="likelihood_ratio",
                           score_options={"background_steps": 5}).fit(inliers)
    loaded = OODDetector.load(detector.save(tmp_path / "lr.pt"))
    assert np.allclose(loaded.anomaly_score(outliers), detector.anomaly_score(outliers))
