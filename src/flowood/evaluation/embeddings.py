"""Reading what ``flowood embed`` wrote beside its feature vectors: the classifier's last linear layer, and the
``meta`` record (the backbone, the images behind the features).

An embedding is the input of the classifier's last linear layer, so with that layer the logits are
``features @ weight.T + bias``: the classifier-based detectors (:mod:`flowood.ood.classifier`) that need logits or
the layer are computed from it.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import torch

from flowood.checkpoints import CLASSIFIER_FORMAT, CheckpointError, read_weights_file
from flowood.data import parse_name
from flowood.ood.classifier import ClassifierHead

__all__ = ["head_from_embeddings", "embeddings_meta"]


def _npz(dataset: str) -> Path | None:
    parsed = parse_name(dataset)
    path = parsed.path if parsed.prefix == "npz" else None
    return path if path is not None and path.is_file() else None


def head_from_embeddings(dataset: str) -> ClassifierHead | None:
    """The head of the classifier behind an embeddings set written by ``flowood embed``, or None.

    Read from the file's ``classifier_weight``/``classifier_bias`` arrays, or else from the classifier file
    ``flowood embed`` wrote beside it (``<stem>.classifier.pt``). Anything else (not an ``npz:`` set, features
    from elsewhere) has no known head: the detectors that need logits or the head are then not available.
    """
    path = _npz(dataset)
    if path is None:
        return None
    with np.load(path, allow_pickle=False) as f:
        if "classifier_weight" in f.files and "classifier_bias" in f.files:
            return ClassifierHead(torch.from_numpy(f["classifier_weight"].astype(np.float32)),
                                  torch.from_numpy(f["classifier_bias"].astype(np.float32)), str(path))
    beside = path.with_name(f"{path.stem}.classifier.pt")
    if not beside.is_file():
        return None
    try:
        payload = read_weights_file(beside, what="classifier file")
    except CheckpointError:
        return None
    if isinstance(payload, dict) and payload.get("format") == CLASSIFIER_FORMAT:
        state = payload["state_dict"]
        weights = [k for k, v in state.items() if k.endswith(".weight") and v.dim() == 2]
        if weights:
            key = weights[-1]
            return ClassifierHead(state[key].float(), state[key[:-len("weight")] + "bias"].float(), str(beside))
    return None


def embeddings_meta(dataset: str) -> dict[str, Any]:
    """The ``meta`` record of an embeddings file written by ``flowood embed`` (empty for anything else)."""
    path = _npz(dataset)
    if path is None:
        return {}
    with np.load(path, allow_pickle=False) as f:
        if "meta" not in f.files:
            return {}
        try:
            return json.loads(str(f["meta"]))
        except json.JSONDecodeError:
            return {}
