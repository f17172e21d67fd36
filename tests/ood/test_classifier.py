"""Classifier-based detectors (flowood.ood.classifier): each equals a direct computation from its definition."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from sklearn.neighbors import NearestNeighbors

from flowood.errors import DataError
from flowood.evaluation.embeddings import head_from_embeddings
from flowood.ood.classifier import (
    CLASSIFIER_DETECTORS,
    ClassifierHead,
    ClassifierOutputs,
    available_detectors,
    classifier_accuracy,
    classifier_scores,
    make_classifier_detector,
)
from flowood.options import ConfigError

pytest.importorskip("pytorch_ood")


@pytest.fixture(scope="module")
def problem():
    """Three Gaussian classes in 6 dimensions (classes 2, 5, 7: not contiguous), a head, and two test sets."""
    g = torch.Generator().manual_seed(0)
    centres = torch.randn(3, 6, generator=g) * 3
    labels = torch.tensor([2, 5, 7]).repeat_interleave(100)
    train = centres.repeat_interleave(100, 0) + torch.randn(300, 6, generator=g)
    weight, bias = torch.zeros(8, 6), torch.randn(8, generator=g)
    weight[[2, 5, 7]] = centres
    sets = {"near": centres[0] + torch.randn(20, 6, generator=g), "far": torch.randn(20, 6, generator=g) * 8}
    return train, labels, ClassifierHead(weight, bias), sets


def _direct(name: str, train, labels, head, x) -> np.ndarray:
    """The detector's definition, written out with numpy (double precision)."""
    z, t = x.double().numpy(), train.double().numpy()
    logits = z @ head.weight.double().numpy().T + head.bias.double().numpy()
    if name == "msp":
        p = np.exp(logits - logits.max(1, keepdims=True))
        return -(p / p.sum(1, keepdims=True)).max(1)
    if name == "energy":
        return -np.log(np.exp(logits).sum(1))
    if name == "maxlogit":
        return -logits.max(1)
    groups = [t[labels.numpy() == c] for c in np.unique(labels.numpy())]
    mus = np.stack([g.mean(0) for g in groups])
    scatter = sum((g - m).T @ (g - m) for g, m in zip(groups, mus, strict=True))
    precision = np.linalg.inv(scatter + 1e-6 * np.eye(t.shape[1]))  # pytorch-ood's unnormalised scatter

    def dists(centre, prec):
        d = z - centre
        return np.einsum("nd,de,ne->n", d, prec, d)

    per_class = np.stack([dists(m, precision) for m in mus], 1)
    if name == "mahalanobis":
        return 0.5 * per_class.min(1)
    if name == "rmd":
        mu0 = t.mean(0)
        prec0 = np.linalg.inv((t - mu0).T @ (t - mu0) + 1e-6 * np.eye(t.shape[1]))
        return (per_class - dists(mu0, prec0)[:, None]).min(1)
    if name == "knn":
        unit = t / np.linalg.norm(t, axis=1, keepdims=True)
        dist, _ = NearestNeighbors().fit(unit).kneighbors(z / np.linalg.norm(z, axis=1, keepdims=True), 50)
        return dist[:, -1]
    if name == "react":
        threshold = np.percentile(t, 90)
        clipped = np.minimum(z, threshold) @ head.weight.double().numpy().T + head.bias.double().numpy()
        return -np.log(np.exp(clipped).sum(1))
    if name == "vim":
        w, b = head.weight.double().numpy(), head.bias.double().numpy()
        u = -np.linalg.pinv(w) @ b
        centred = t - u
        _, vecs = np.linalg.eigh(centred.T @ centred / len(t))
        null = vecs[:, : t.shape[1] - t.shape[1] // 2]  # the D - d smallest directions, d = D // 2
        train_logits = t @ w.T + b
        alpha = train_logits.max(1).mean() / np.linalg.norm(centred @ null, axis=1).mean()
        return -(np.log(np.exp(logits).sum(1)) - alpha * np.linalg.norm((z - u) @ null, axis=1))
    raise AssertionError(name)


@pytest.mark.parametrize("name", list(CLASSIFIER_DETECTORS))
def test_each_detector_equals_its_definition(problem, name):
    train, labels, head, sets = problem
    scores = classifier_scores([name], train, labels, head, sets)[name]
    for set_name, x in sets.items():
        np.testing.assert_allclose(scores[set_name], _direct(name, train, labels, head, x), rtol=2e-4, atol=2e-4)


def test_detectors_separate_far_data_and_respect_the_orientation(problem):
    from flowood.ood.metrics import auroc

    train, labels, head, sets = problem
    scores = classifier_scores(["mahalanobis", "knn", "energy"], train, labels, head, sets)
    for name in ("mahalanobis", "knn"):  # higher = more anomalous, as every flowood score
        assert auroc(scores[name]["near"], scores[name]["far"]) > 0.9


def test_accuracy_and_what_each_detector_needs(problem):
    train, labels, head, _ = problem
    assert classifier_accuracy(head, train, labels) == pytest.approx(
        float((head.logits(train).argmax(1) == labels).float().mean()))
    assert available_detectors(has_head=False, has_labels=False) == ["knn"]
    assert available_detectors(has_head=True, has_labels=False) == ["msp", "energy", "maxlogit", "knn", "vim",
                                                                     "react"]
    assert available_detectors(has_head=True, has_labels=True) == list(CLASSIFIER_DETECTORS)
    with pytest.raises(DataError, match="last layer"):
        classifier_scores(["msp"], train, labels, None, {"a": train[:2]})
    with pytest.raises(DataError, match="labels"):
        classifier_scores(["rmd"], train, None, head, {"a": train[:2]})
    with pytest.raises(ConfigError, match="did you mean 'energy'"):
        classifier_scores(["enrgy"], train, labels, head, {"a": train[:2]})


def test_head_is_read_from_embeddings_or_the_classifier_beside_them(tmp_path):
    from flowood.checkpoints import CLASSIFIER_FORMAT
    from flowood.embed.backbones import SmallCNN

    with_head = tmp_path / "a.npz"
    np.savez(with_head, embeddings_train=np.zeros((2, 3), np.float32), classifier_weight=np.ones((4, 3), np.float32),
             classifier_bias=np.arange(4, dtype=np.float32))
    head = head_from_embeddings(f"npz:{with_head}")
    assert head.num_classes == 4 and head.bias.tolist() == [0, 1, 2, 3]
    plain = tmp_path / "b.npz"
    np.savez(plain, embeddings_train=np.zeros((2, 16), np.float32))
    assert head_from_embeddings(f"npz:{plain}") is None and head_from_embeddings("fashionmnist") is None
    model = SmallCNN(1, 10, embedding_dim=16)
    torch.save({"format": CLASSIFIER_FORMAT, "state_dict": model.state_dict()}, tmp_path / "b.classifier.pt")
    head = head_from_embeddings(f"npz:{plain}")
    assert torch.equal(head.weight, model.classifier.weight.detach()) and head.source.endswith("b.classifier.pt")


@pytest.mark.parametrize("name", list(CLASSIFIER_DETECTORS))
def test_each_detector_keeps_its_fitted_state_as_plain_data_and_as_a_graph(problem, name, tmp_path):
    """state() survives a weights-only file and scores exactly as the fitted detector; graph() gives the same numbers
    in torch operations (what an exported pipeline runs)."""
    train, labels, head, sets = problem
    fitted = make_classifier_detector(name, head).fit(ClassifierOutputs.of(train, head), labels)
    torch.save({"state": fitted.state()}, tmp_path / "state.pt")
    state = torch.load(tmp_path / "state.pt", weights_only=True)["state"]
    loaded = make_classifier_detector(name, head).load_state(state)
    graph = fitted.graph()
    for x in sets.values():
        outputs = ClassifierOutputs.of(x, head)
        np.testing.assert_array_equal(loaded.score(outputs), fitted.score(outputs))
        with torch.no_grad():
            np.testing.assert_allclose(graph(outputs.features, outputs.logits).double().numpy(),
                                       fitted.score(outputs), rtol=1e-5, atol=1e-5)


def test_a_detector_says_what_it_lacks(problem):
    train, labels, head, _ = problem
    with pytest.raises(DataError, match="last linear layer"):
        make_classifier_detector("vim", None)
    with pytest.raises(DataError, match="not fitted"):
        make_classifier_detector("knn").score(ClassifierOutputs(train))
    logits_only = ClassifierOutputs(train, head.logits(train))  # a model that gives logits, with no head known
    scores = make_classifier_detector("energy").fit(logits_only).score(logits_only)
    np.testing.assert_allclose(scores, classifier_scores(["energy"], train, labels, head, {"a": train})["energy"]["a"],
                               rtol=1e-6)
    assert available_detectors(has_head=False, has_labels=True, has_logits=True) == ["msp", "energy", "maxlogit",
                                                                                     "mahalanobis", "rmd", "knn"]


def test_a_new_detector_is_one_class_and_one_registry_line():
    """Registered from outside the package, a detector is made by name, listed where its inputs allow it, fitted,
    scored, and exported as a graph."""
    from flowood.ood.classifier import (
        CLASSIFIER_DETECTORS,
        ClassifierDetector,
        ClassifierOutputs,
        available_detectors,
        make_classifier_detector,
        register_detector,
    )

    @register_detector
    class FeatureNorm(ClassifierDetector):
        """The features' Euclidean norm, centred on the training mean's norm."""

        name, needs, reference = "featnorm", "features", "a hand case"

        def _fit(self, train, labels):
            self.centre = float(train.features.norm(dim=1).mean())

        def _score(self, x):
            return (x.features.norm(dim=1) - self.centre).abs()

        def _predictor(self):
            centre = self.centre
            return lambda z: (z.norm(dim=1) - centre).abs()

    try:
        train = ClassifierOutputs(torch.randn(50, 4))
        detector = make_classifier_detector("featnorm").fit(train)
        far = ClassifierOutputs(10 * torch.ones(1, 4))
        assert detector.score(far)[0] > detector.score(train).max()
        assert "featnorm" in available_detectors(has_head=False, has_labels=False)
        torch.testing.assert_close(detector.graph()(far.features, None).double(),
                                   torch.as_tensor(detector.score(far)))
    finally:
        CLASSIFIER_DETECTORS.unregister("featnorm")
    assert "featnorm" not in available_detectors(has_head=False, has_labels=False)
