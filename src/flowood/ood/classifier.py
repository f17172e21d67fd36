"""Classifier-based OOD detectors on the features a flow is trained on, from pytorch-ood.

The paper's Section 8 fits a flow to a classifier's features. The OOD field's standard detectors work on the
same classifier: its logits (MSP, Energy, MaxLogit), its features and the training labels (Mahalanobis,
Relative Mahalanobis), its features alone (KNN), or its features and last linear layer (ViM, ReAct). This
module computes them with `pytorch-ood <https://github.com/kkirchheim/pytorch-ood>`_ (``pip install
flowood[baselines]``), so that flows and classifiers are compared on the same features, data and metrics.

Each detector is a small class in :data:`CLASSIFIER_DETECTORS` with one convention: ``fit`` on the
in-distribution training outputs of the classifier (:class:`ClassifierOutputs`), ``score`` any outputs (higher
means more anomalous, as every flowood score), ``state`` and ``load_state`` to keep the fitted detector as plain
tensors and numbers (a detector file is read without unpickling code), and ``graph`` for an exported graph.
pytorch-ood computes every score; the classes only carry its fitted state in and out.

An embedding is the input of the classifier's last linear layer (see :mod:`flowood.embed`), so the logits
are ``features @ weight.T + bias``.

References:
    Hendrycks & Gimpel 2017 (MSP); Liu et al. 2020 (Energy); Hendrycks et al. 2022 (MaxLogit); Lee et al.
    2018 (Mahalanobis); Ren et al. 2021 (Relative Mahalanobis); Sun et al. 2022 (KNN); Wang et al. 2022 (ViM);
    Sun et al. 2021 (ReAct).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np
import torch
from torch import Tensor, nn

from flowood.errors import DataError
from flowood.options import ConfigError
from flowood.variants import Registry

__all__ = ["CLASSIFIER_DETECTORS", "ClassifierDetector", "ClassifierHead", "ClassifierOutputs", "classifier_scores",
           "make_classifier_detector", "available_detectors",
           "check_detector_names", "classifier_accuracy", "register_detector"]


@dataclass
class ClassifierHead:
    """The classifier's last linear layer: ``logits = features @ weight.T + bias``.

    Attributes:
        weight: ``[C, D]``.
        bias: ``[C]``.
        source: where it was read from.
    """

    weight: Tensor
    bias: Tensor
    source: str = "given"

    def logits(self, features: Tensor) -> Tensor:
        """Logits ``[N, C]`` of features ``[N, D]``."""
        return features.float() @ self.weight.T.float() + self.bias.float()

    @property
    def num_classes(self) -> int:
        return int(self.weight.shape[0])

    def linear(self) -> nn.Linear:
        """The layer as an ``nn.Linear`` (a copy)."""
        layer = nn.Linear(self.weight.shape[1], self.num_classes)
        with torch.no_grad():
            layer.weight.copy_(self.weight.float())
            layer.bias.copy_(self.bias.float())
        return layer


@dataclass
class ClassifierOutputs:
    """What a classifier gives for a batch of inputs.

    Attributes:
        features: ``[N, D]``, the input of its last linear layer.
        logits: ``[N, C]``, or None when the classifier gives none (a feature extractor alone).
    """

    features: Tensor
    logits: Tensor | None = None

    @classmethod
    def of(cls, features: Tensor, head: ClassifierHead | None) -> ClassifierOutputs:
        """Features and, with a head, their logits."""
        features = features.float()
        return cls(features, head.logits(features) if head is not None else None)

    def __len__(self) -> int:
        return len(self.features)

    def select(self, index: Tensor | slice) -> ClassifierOutputs:
        return ClassifierOutputs(self.features[index], self.logits[index] if self.logits is not None else None)

    @staticmethod
    def cat(parts: list[ClassifierOutputs]) -> ClassifierOutputs:
        logits = [p.logits for p in parts]
        return ClassifierOutputs(torch.cat([p.features for p in parts]),
                                 torch.cat(logits) if all(x is not None for x in logits) else None)


def _pytorch_ood():
    try:
        import pytorch_ood.detector as detectors
    except ImportError as err:
        raise ConfigError("classifier-based detectors need pytorch-ood: pip install 'flowood[baselines]'") from err
    return detectors


def _contiguous(labels: Tensor) -> Tensor:
    """Labels renumbered 0..C-1 (pytorch-ood's Mahalanobis needs every class from 0 to C-1 present)."""
    _, inverse = torch.unique(labels, return_inverse=True)
    return inverse


class _Bound(nn.Module):
    """A fitted pytorch-ood scoring function as a module, for ``torch.export``: ``(features, logits) -> score``."""

    def __init__(self, score: Any, on: str) -> None:
        super().__init__()
        self.score, self.on = score, on

    def forward(self, features: Tensor, logits: Tensor) -> Tensor:
        return self.score(logits if self.on == "logits" else features).float()


class ClassifierDetector:
    """Base class: a pytorch-ood detector on a classifier's outputs.

    Subclasses set ``name``, ``needs`` (``logits``, ``features``, ``features + labels`` or ``features + head``),
    ``reference`` and ``pytorch_ood`` (the class that computes the score), and implement ``_fit``, ``_score`` and
    their state.

    Args:
        head: the classifier's last linear layer (needed by the detectors whose ``needs`` names the head).
    """

    name: ClassVar[str] = "detector"
    needs: ClassVar[str] = "features"
    reference: ClassVar[str] = ""
    pytorch_ood: ClassVar[str] = ""

    def __init__(self, head: ClassifierHead | None = None) -> None:
        if self.uses_head and head is None:
            raise DataError(f"the {self.name} detector needs the classifier's last linear layer, which these "
                            "features do not come with; use embeddings written by `flowood embed`, or a classifier "
                            "whose logits are a linear function of its features")
        self.head = head
        self.fitted = False

    @classmethod
    def uses(cls, what: str) -> bool:
        return what in cls.needs

    uses_logits = property(lambda self: self.uses("logits"))
    uses_labels = property(lambda self: self.uses("labels"))
    uses_head = property(lambda self: self.uses("head"))

    def fit(self, train: ClassifierOutputs, labels: Tensor | None = None) -> ClassifierDetector:
        """Fit on in-distribution training outputs (and their class labels, for the detectors that need them).

        Raises:
            DataError: labels needed but not given.
        """
        if self.uses_labels and labels is None:
            raise DataError(f"the {self.name} detector needs the class labels of the training features")
        self._fit(train, labels)
        self.fitted = True
        return self

    def _logits(self, x: ClassifierOutputs) -> Tensor:
        if x.logits is not None:
            return x.logits.float()
        if self.head is not None:
            return self.head.logits(x.features)
        raise DataError(f"the {self.name} detector needs the classifier's logits or its last layer, which these "
                        "features come without; use embeddings written by `flowood embed`, or a feature extractor "
                        "that gives logits, or a detector that needs only features (knn, mahalanobis, rmd, a flow)")

    def score(self, x: ClassifierOutputs) -> np.ndarray:
        """One outlier score per input, float64, higher = more anomalous."""
        if not self.fitted:
            raise DataError(f"the {self.name} detector is not fitted yet: call fit(training outputs) first")
        return torch.as_tensor(self._score(x)).double().cpu().numpy()

    def state(self) -> dict[str, Any]:
        """The fitted detector as tensors and numbers (what :meth:`load_state` takes back)."""
        return {}

    def load_state(self, state: dict[str, Any]) -> ClassifierDetector:
        """Restore a fitted detector from :meth:`state`, without fitting again."""
        self.fitted = True
        return self

    def graph(self) -> nn.Module:
        """The fitted score as a module ``(features, logits) -> score [B]`` of torch operations, for export."""
        on = "logits" if self.uses_logits else "features"
        return _Bound(self._predictor(), on)

    def _fit(self, train: ClassifierOutputs, labels: Tensor | None) -> None:
        pass

    def _score(self, x: ClassifierOutputs) -> Tensor:  # pragma: no cover - abstract
        raise NotImplementedError

    def _predictor(self) -> Any:  # pragma: no cover - abstract
        raise NotImplementedError


class _LogitDetector(ClassifierDetector):
    needs = "logits"

    def _function(self) -> Any:
        return getattr(_pytorch_ood(), self.pytorch_ood).score

    def _score(self, x: ClassifierOutputs) -> Tensor:
        return self._function()(self._logits(x))

    def _predictor(self) -> Any:
        return self._function()


class MSP(_LogitDetector):
    """Maximum softmax probability (negated)."""

    name, reference, pytorch_ood = "msp", "Hendrycks & Gimpel, ICLR 2017", "MaxSoftmax"


class Energy(_LogitDetector):
    """Free energy ``-logsumexp(logits)``."""

    name, reference, pytorch_ood = "energy", "Liu et al., NeurIPS 2020", "EnergyBased"


class MaxLogit(_LogitDetector):
    """The largest logit (negated)."""

    name, reference, pytorch_ood = "maxlogit", "Hendrycks et al., ICML 2022", "MaxLogit"


class Mahalanobis(ClassifierDetector):
    """Half the squared Mahalanobis distance to the closest class mean, with a shared covariance."""

    name, needs, reference, pytorch_ood = "mahalanobis", "features + labels", "Lee et al., NeurIPS 2018", "Mahalanobis"
    _keys: ClassVar[tuple[str, ...]] = ("mu", "precision")

    def _new(self) -> Any:
        return getattr(_pytorch_ood(), self.pytorch_ood)(None)

    def _fit(self, train: ClassifierOutputs, labels: Tensor | None) -> None:
        self.detector = self._new().fit_features(train.features.float(), _contiguous(labels))

    def _score(self, x: ClassifierOutputs) -> Tensor:
        return self.detector.predict_features(x.features.float())

    def state(self) -> dict[str, Any]:
        return {key: getattr(self.detector, key).detach().cpu() for key in self._keys}

    def load_state(self, state: dict[str, Any]) -> ClassifierDetector:
        self.detector = self._new()
        for key in self._keys:
            setattr(self.detector, key, state[key].float())
        return super().load_state(state)

    def graph(self) -> nn.Module:
        # pytorch-ood's Mahalanobis reads ``features.data``, which torch.export cannot trace; the same formula in
        # traceable operations (the export's parity check holds it to pytorch-ood's numbers)
        return _MahalanobisGraph(self.detector.mu, self.detector.precision)


class _MahalanobisGraph(nn.Module):
    def __init__(self, mu: Tensor, precision: Tensor) -> None:
        super().__init__()
        self.register_buffer("mu", mu.detach().float().clone())
        self.register_buffer("precision", precision.detach().float().clone())

    def forward(self, features: Tensor, logits: Tensor) -> Tensor:
        centred = features.float()[:, None, :] - self.mu[None]  # [B, C, D]
        distances = ((centred @ self.precision) * centred).sum(-1)  # [B, C]
        return 0.5 * distances.min(1).values


class RMD(Mahalanobis):
    """Relative Mahalanobis: the class-conditional distance minus the distance under one background Gaussian."""

    name, reference, pytorch_ood = "rmd", "Ren et al., 2021 (Relative Mahalanobis)", "RMD"
    _keys = ("mu", "precision", "background_mu", "background_precision")

    def graph(self) -> nn.Module:
        return _Bound(self.detector.predict_features, "features")


class KNN(ClassifierDetector):
    """Distance to the k-th nearest training feature, features normalised to unit length (k = 50)."""

    name, needs, reference, pytorch_ood = "knn", "features", "Sun et al., ICML 2022 (k = 50, normalised features)", \
        "KNN"

    def _fit(self, train: ClassifierOutputs, labels: Tensor | None) -> None:
        self._fit_features(train.features.float())

    def _fit_features(self, features: Tensor) -> None:
        self.train_features = features.detach().cpu()
        k = min(50, len(features))
        self.detector = _pytorch_ood().KNN(None, k=k).fit_features(features, torch.zeros(len(features),
                                                                                         dtype=torch.long))

    def _score(self, x: ClassifierOutputs) -> Tensor:
        return self.detector.predict_features(x.features.float())

    def state(self) -> dict[str, Any]:
        return {"train_features": self.train_features}

    def load_state(self, state: dict[str, Any]) -> ClassifierDetector:
        self._fit_features(state["train_features"].float())  # the exact search's index is the features themselves
        return super().load_state(state)

    def graph(self) -> nn.Module:
        # pytorch-ood searches with scikit-learn; in a graph the same exact search is a distance matrix and top-k
        return _KNNGraph(self.train_features, self.detector.k)


class _KNNGraph(nn.Module):
    """The exact k-th nearest distance in graph operations: candidates by a distance matrix (fast, but in float32
    the ``|a|^2 + |b|^2 - 2ab`` form loses digits for near neighbours), then their distances computed again from the
    differences themselves."""

    def __init__(self, train: Tensor, k: int, margin: int = 16) -> None:
        super().__init__()
        self.register_buffer("unit_train", _unit(train.float()).clone())
        self.k, self.candidates = k, min(len(train), k + margin)

    def forward(self, features: Tensor, logits: Tensor) -> Tensor:
        unit = _unit(features.float())
        nearest = torch.cdist(unit, self.unit_train).topk(self.candidates, dim=1, largest=False).indices
        exact = (unit[:, None, :] - self.unit_train[nearest]).norm(dim=-1)
        return exact.topk(self.k, dim=1, largest=False).values[:, -1]


def _unit(z: Tensor) -> Tensor:
    return z / z.norm(dim=1, keepdim=True).clamp(min=1e-12)  # pytorch-ood's KNN normalisation


class ViM(ClassifierDetector):
    """Virtual-logit matching: energy minus the scaled norm of the features' residual off the principal subspace."""

    name, needs, reference, pytorch_ood = "vim", "features + head", \
        "Wang et al., CVPR 2022 (principal dimension D // 2)", "ViM"

    def _new(self, dim: int) -> Any:
        return _pytorch_ood().ViM(None, d=max(1, dim // 2), w=self.head.weight.float(), b=self.head.bias.float())

    def _fit(self, train: ClassifierOutputs, labels: Tensor | None) -> None:
        features = train.features.float()
        self.detector = self._new(features.shape[1]).fit_features(features, torch.zeros(len(features),
                                                                                         dtype=torch.long))

    def _score(self, x: ClassifierOutputs) -> Tensor:
        return self.detector.predict_features(x.features.float())

    def state(self) -> dict[str, Any]:
        return {"principal_subspace": self.detector.principal_subspace.detach().cpu(),
                "alpha": float(self.detector.alpha), "d": int(self.detector.d)}

    def load_state(self, state: dict[str, Any]) -> ClassifierDetector:
        self.detector = self._new(2 * int(state["d"]))
        self.detector.d = int(state["d"])
        self.detector.principal_subspace = state["principal_subspace"].float()
        self.detector.alpha = float(state["alpha"])
        return super().load_state(state)

    def _predictor(self) -> Any:
        return self.detector.predict_features


class ReAct(ClassifierDetector):
    """Energy of the logits of features clipped at their 90th percentile on the training data."""

    name, needs, reference, pytorch_ood = "react", "features + head", \
        "Sun et al., NeurIPS 2021 (90th percentile, energy)", "ReAct"

    def _new(self, threshold: float | None = None) -> Any:
        return _pytorch_ood().ReAct(backbone=None, head=self.head.linear(), percentile=0.9, threshold=threshold)

    def _fit(self, train: ClassifierOutputs, labels: Tensor | None) -> None:
        features = train.features.float()
        self.detector = self._new().fit_feature_maps(features, torch.zeros(len(features), dtype=torch.long))

    def _score(self, x: ClassifierOutputs) -> Tensor:
        return self.detector.predict_feature_maps(x.features.float())

    def state(self) -> dict[str, Any]:
        return {"threshold": float(self.detector.threshold)}

    def load_state(self, state: dict[str, Any]) -> ClassifierDetector:
        self.detector = self._new(float(state["threshold"]))
        return super().load_state(state)

    def _predictor(self) -> Any:
        return self.detector.predict_feature_maps


#: every classifier-based detector by name, in the order tables list them (see :func:`register_detector`).
CLASSIFIER_DETECTORS: Registry[type[ClassifierDetector]] = Registry("classifier detector", "classifier detector")


def register_detector(cls: type[ClassifierDetector], *, replace: bool = False) -> type[ClassifierDetector]:
    """Add a :class:`ClassifierDetector` subclass to :data:`CLASSIFIER_DETECTORS` under its ``name`` (a class
    decorator too): ``evaluate``'s `detectors`, ``detector fit``'s `method` and ``detector select`` then offer it."""
    return CLASSIFIER_DETECTORS.register(cls.name, cls, replace=replace)


for _detector in (MSP, Energy, MaxLogit, Mahalanobis, RMD, KNN, ViM, ReAct):
    register_detector(_detector)


def check_detector_names(names: list[str]) -> None:
    """Refuse unknown detector names, suggesting the closest."""
    for name in names:
        CLASSIFIER_DETECTORS[name]


def make_classifier_detector(name: str, head: ClassifierHead | None = None) -> ClassifierDetector:
    """A detector by name (see :data:`CLASSIFIER_DETECTORS`), not fitted.

    Raises:
        ConfigError: an unknown name. DataError: the detector needs a head and none is given.
    """
    check_detector_names([name])
    _pytorch_ood()
    return CLASSIFIER_DETECTORS[name](head)


def available_detectors(has_head: bool, has_labels: bool, has_logits: bool | None = None) -> list[str]:
    """The detectors that the available inputs allow, in :data:`CLASSIFIER_DETECTORS` order.

    Args:
        has_head: the classifier's last linear layer is known.
        has_labels: the training features come with class labels.
        has_logits: the classifier's logits are known (default: when the head is).
    """
    has_logits = has_head if has_logits is None else has_logits
    out = []
    for name, cls in CLASSIFIER_DETECTORS.items():
        if (cls.uses("logits") and not has_logits) or (cls.uses("head") and not has_head):
            continue
        if cls.uses("labels") and not has_labels:
            continue
        out.append(name)
    return out


def classifier_scores(detectors: list[str], train: Tensor, labels: Tensor | None, head: ClassifierHead | None,
                      sets: dict[str, Tensor]) -> dict[str, dict[str, np.ndarray]]:
    """Every detector's outlier score (higher = more anomalous) of every set, ``{detector: {set: [N]}}``.

    Args:
        detectors: names from :data:`CLASSIFIER_DETECTORS`.
        train: in-distribution training features ``[N, D]`` to fit on.
        labels: their class labels (needed by mahalanobis and rmd).
        head: the classifier's last linear layer (needed by msp, energy, maxlogit, vim, react).
        sets: features ``[M, D]`` of each set to score.

    Raises:
        ConfigError: unknown detector names. DataError: a detector lacks what it needs.

    Example:
        >>> head = ClassifierHead(torch.eye(2), torch.zeros(2))
        >>> s = classifier_scores(["msp"], torch.randn(8, 2), None, head, {"a": torch.tensor([[4.0, 0.0], [0.0, 0.0]])})
        >>> bool(s["msp"]["a"][0] < s["msp"]["a"][1])  # a confident prediction is less anomalous
        True
    """
    check_detector_names(detectors)
    fit_outputs = ClassifierOutputs.of(train, head)
    outputs = {name: ClassifierOutputs.of(x, head) for name, x in sets.items()}
    out: dict[str, dict[str, np.ndarray]] = {}
    for name in detectors:
        detector = make_classifier_detector(name, head)
        if detector.uses_logits and head is None:
            detector._logits(fit_outputs)  # raises: these features come without the classifier's head
        detector.fit(fit_outputs, labels)
        out[name] = {s: detector.score(x) for s, x in outputs.items()}
    return out


def classifier_accuracy(head: ClassifierHead, features: Tensor, labels: Tensor) -> float:
    """Accuracy of the classifier's predictions ``argmax(features @ weight.T + bias)`` against ``labels``."""
    return float((head.logits(features).argmax(1) == labels).float().mean())
