"""Classifier-based OOD detectors on the features a flow is trained on, from pytorch-ood.

The paper's Section 8 fits a flow to a classifier's features. The OOD field's standard detectors work on the
same classifier: its logits (MSP, Energy, MaxLogit), its features and the training labels (Mahalanobis,
Relative Mahalanobis), its features alone (KNN), or its features and last linear layer (ViM, ReAct). This
module computes them with `pytorch-ood <https://github.com/kkirchheim/pytorch-ood>`_ (``pip install
flowood[baselines]``), so that flows and classifiers are compared on the same features, data and metrics.

An embedding is the input of the classifier's last linear layer (see :mod:`flowood.embed`), so the logits
are ``features @ weight.T + bias`` and every detector needs only the features, the head and, for some, the
labels of the training set. Every score is oriented as flowood's are: higher means more anomalous.

References:
    Hendrycks & Gimpel 2017 (MSP); Liu et al. 2020 (Energy); Hendrycks et al. 2022 (MaxLogit); Lee et al.
    2018 (Mahalanobis); Ren et al. 2021 (Relative Mahalanobis); Sun et al. 2022 (KNN); Wang et al. 2022 (ViM);
    Sun et al. 2021 (ReAct).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from flowood.errors import DataError, closest
from flowood.options import ConfigError

__all__ = ["CLASSIFIER_DETECTORS", "ClassifierHead", "DetectorInfo", "classifier_scores", "head_from_embeddings",
           "embeddings_meta", "available_detectors", "check_detector_names", "classifier_accuracy"]


@dataclass(frozen=True)
class DetectorInfo:
    """What a classifier-based detector needs, and where it comes from.

    Attributes:
        needs: ``logits``, ``features``, ``features + labels`` or ``features + head`` (the last linear layer).
        reference: the paper that defines it.
        pytorch_ood: the pytorch-ood class that computes it.
    """

    needs: str
    reference: str
    pytorch_ood: str


CLASSIFIER_DETECTORS: dict[str, DetectorInfo] = {
    "msp": DetectorInfo("logits", "Hendrycks & Gimpel, ICLR 2017", "MaxSoftmax"),
    "energy": DetectorInfo("logits", "Liu et al., NeurIPS 2020", "EnergyBased"),
    "maxlogit": DetectorInfo("logits", "Hendrycks et al., ICML 2022", "MaxLogit"),
    "mahalanobis": DetectorInfo("features + labels", "Lee et al., NeurIPS 2018", "Mahalanobis"),
    "rmd": DetectorInfo("features + labels", "Ren et al., 2021 (Relative Mahalanobis)", "RMD"),
    "knn": DetectorInfo("features", "Sun et al., ICML 2022 (k = 50, normalised features)", "KNN"),
    "vim": DetectorInfo("features + head", "Wang et al., CVPR 2022 (principal dimension D // 2)", "ViM"),
    "react": DetectorInfo("features + head", "Sun et al., NeurIPS 2021 (90th percentile, energy)", "ReAct"),
}


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


def _npz_path(dataset: str) -> Path | None:
    return Path(dataset[4:]).expanduser() if dataset.startswith("npz:") else None


def head_from_embeddings(dataset: str) -> ClassifierHead | None:
    """The head of the classifier behind an embeddings file written by ``flowood embed``, or None.

    Read from the file's ``classifier_weight``/``classifier_bias`` arrays, or else from the classifier file
    ``flowood embed`` wrote beside it (``<stem>.classifier.pt``). Anything else (not an ``npz:`` set, features
    from elsewhere) has no known head: the detectors that need logits or the head are then not available.
    """
    path = _npz_path(dataset)
    if path is None or not path.is_file():
        return None
    with np.load(path, allow_pickle=False) as f:
        if "classifier_weight" in f.files and "classifier_bias" in f.files:
            return ClassifierHead(torch.from_numpy(f["classifier_weight"].astype(np.float32)),
                                  torch.from_numpy(f["classifier_bias"].astype(np.float32)), str(path))
    beside = path.with_name(f"{path.stem}.classifier.pt")
    if beside.is_file():
        from flowood.checkpoints import CLASSIFIER_FORMAT, read_weights_file

        payload = read_weights_file(beside, what="classifier file")
        if isinstance(payload, dict) and payload.get("format") == CLASSIFIER_FORMAT:
            state = payload["state_dict"]
            weights = [k for k, v in state.items() if k.endswith(".weight") and v.dim() == 2]
            if weights:
                key = weights[-1]
                return ClassifierHead(state[key].float(), state[key[:-len("weight")] + "bias"].float(), str(beside))
    return None


def embeddings_meta(dataset: str) -> dict[str, Any]:
    """The ``meta`` record of an embeddings file written by ``flowood embed`` (empty for anything else)."""
    path = _npz_path(dataset)
    if path is None or not path.is_file():
        return {}
    with np.load(path, allow_pickle=False) as f:
        if "meta" not in f.files:
            return {}
        try:
            return json.loads(str(f["meta"]))
        except json.JSONDecodeError:
            return {}


def available_detectors(has_head: bool, has_labels: bool) -> list[str]:
    """The detectors that the available inputs allow, in :data:`CLASSIFIER_DETECTORS` order."""
    out = []
    for name, info in CLASSIFIER_DETECTORS.items():
        if ("logits" in info.needs or "head" in info.needs) and not has_head:
            continue
        if "labels" in info.needs and not has_labels:
            continue
        out.append(name)
    return out


def check_detector_names(names: list[str]) -> None:
    """Refuse unknown detector names, suggesting the closest."""
    for name in names:
        if name not in CLASSIFIER_DETECTORS:
            raise ConfigError(f"unknown classifier detector {name!r}{closest(name, list(CLASSIFIER_DETECTORS))}; "
                              f"choose from {', '.join(CLASSIFIER_DETECTORS)}")


def _contiguous(labels: Tensor) -> Tensor:
    """Labels renumbered 0..C-1 (pytorch-ood's Mahalanobis needs every class from 0 to C-1 present)."""
    _, inverse = torch.unique(labels, return_inverse=True)
    return inverse


def _pytorch_ood():
    try:
        import pytorch_ood.detector as detectors
    except ImportError as err:
        raise ConfigError("classifier-based detectors need pytorch-ood: pip install 'flowood[baselines]'") from err
    return detectors


def _fitted(name: str, train: Tensor, labels: Tensor | None, head: ClassifierHead | None) -> Any:
    """A pytorch-ood detector fitted on the training features; its ``predict_features`` scores features."""
    d = _pytorch_ood()
    y = _contiguous(labels) if labels is not None else torch.zeros(len(train), dtype=torch.long)
    if name == "mahalanobis":
        return d.Mahalanobis(None).fit_features(train, y)
    if name == "rmd":
        return d.RMD(None).fit_features(train, y)
    if name == "knn":
        return d.KNN(None, k=min(50, len(train))).fit_features(train, y)
    if name == "vim":
        return d.ViM(None, d=max(1, train.shape[1] // 2), w=head.weight, b=head.bias).fit_features(train, y)
    raise AssertionError(name)


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
    d = _pytorch_ood()
    train = train.float()
    out: dict[str, dict[str, np.ndarray]] = {}
    for name in detectors:
        info = CLASSIFIER_DETECTORS[name]
        if head is None and ("logits" in info.needs or "head" in info.needs):
            raise DataError(f"the {name} detector needs the classifier's last layer, which these features do not "
                            "come with; use embeddings written by `flowood embed`")
        if labels is None and "labels" in info.needs:
            raise DataError(f"the {name} detector needs the class labels of the training features")
        if info.needs == "logits":
            score = {"msp": d.MaxSoftmax.score, "energy": d.EnergyBased.score, "maxlogit": d.MaxLogit.score}[name]
            out[name] = {s: score(head.logits(x)).double().numpy() for s, x in sets.items()}
        elif name == "react":
            linear = torch.nn.Linear(head.weight.shape[1], head.num_classes)
            with torch.no_grad():
                linear.weight.copy_(head.weight)
                linear.bias.copy_(head.bias)
            react = d.ReAct(backbone=None, head=linear, percentile=0.9).fit_feature_maps(
                train, torch.zeros(len(train), dtype=torch.long))
            out[name] = {s: react.predict_feature_maps(x.float()).double().numpy() for s, x in sets.items()}
        else:
            fitted = _fitted(name, train, labels, head)
            out[name] = {s: torch.as_tensor(fitted.predict_features(x.float())).double().numpy()
                         for s, x in sets.items()}
    return out


def classifier_accuracy(head: ClassifierHead, features: Tensor, labels: Tensor) -> float:
    """Accuracy of the classifier's predictions ``argmax(features @ weight.T + bias)`` against ``labels``."""
    return float((head.logits(features).argmax(1) == labels).float().mean())
