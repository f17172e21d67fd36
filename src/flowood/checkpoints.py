"""Loading flows back from checkpoints, with checks that say what is wrong.

``flowood train`` writes Lightning checkpoints (``.ckpt``) that hold the model weights, the
optimizer state for ``--resume``, and the training configuration (``hyper_parameters``) from
which the flow is rebuilt. :func:`load_flow` accepts those, and also plain files written by
:func:`save_flow` (weights and architecture only).
"""

from __future__ import annotations

import hashlib
import pickle
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from flowood import __version__
from flowood.errors import FlowoodError
from flowood.flows import FlowModel, build_flow
from flowood.outputs import atomic_write

__all__ = ["CLASSIFIER_FORMAT", "CheckpointError", "LoadedFlow", "load_flow", "save_flow", "file_sha256",
           "weights_sha256", "read_weights_file", "check_version"]

FORMAT = "flowood-flow"
#: the format tag of a classifier file written by ``flowood embed --train_classifier``
CLASSIFIER_FORMAT = "flowood-classifier-1"
#: the first version whose flows are the original code's networks (checkerboard parity, which half a split keeps,
#: weight-normalised st-networks and rescales); files written before it hold other networks.
FIRST_COMPATIBLE_VERSION = (0, 2)


class CheckpointError(FlowoodError, ValueError):
    """A checkpoint that is missing, corrupt, truncated, unsafe or not a flowood checkpoint."""


def check_version(version: str, path: str | Path, what: str = "checkpoint") -> None:
    """Refuse files from flowood versions whose flows are other networks than this version's.

    Raises:
        CheckpointError: ``version`` (``"major.minor..."``) is older than :data:`FIRST_COMPATIBLE_VERSION`.
    """
    try:
        major_minor = tuple(int(part) for part in str(version).split(".")[:2])
    except ValueError:
        return  # unknown: the architecture check that follows says what does not fit
    if len(major_minor) == 2 and major_minor < FIRST_COMPATIBLE_VERSION:
        raise CheckpointError(f"{what} {path} was written by flowood {version}, whose flows are other networks: "
                              "flowood 0.2 made every flow the original code's network (checkerboard parity, the "
                              "half a split keeps, weight-normalised st-networks). Retrain it with flowood "
                              f"{__version__}, or read it with flowood {version}")


def read_weights_file(path: str | Path, map_location: str | torch.device = "cpu", what: str = "checkpoint") -> Any:
    """``torch.load`` of a file that may hold only tensors and plain containers (never code to run).

    Raises:
        CheckpointError: (naming the file as ``what``) the file is missing, a folder, holds objects that are
            not plain tensors (refused:
            unpickling them could run arbitrary code), or is corrupt or truncated.
    """
    path = Path(path)
    if path.is_dir():
        raise CheckpointError(f"{path} is a folder, not a {what}")
    if not path.is_file():
        raise CheckpointError(f"{what} {path} does not exist")
    try:
        return torch.load(path, map_location=map_location, weights_only=True)
    except Exception as err:
        if isinstance(err, pickle.UnpicklingError) and "global" in str(err).lower():
            # a class or function to import: not a plain container of tensors
            raise CheckpointError(f"{what} {path} was refused: it holds objects that are not plain tensors, and "
                                  "loading those could run code from the file (flowood only loads weights). Use a "
                                  "file written by flowood, or save a plain state_dict") from err
        detail = (str(err).strip().splitlines() or [""])[-1][:200]
        raise CheckpointError(f"cannot read {what} {path}: it is corrupt or truncated ({type(err).__name__}: "
                              f"{detail}); use another file, e.g. an earlier checkpoint") from err


@dataclass
class LoadedFlow:
    """A flow loaded from a checkpoint and what is known about how it was trained.

    Attributes:
        flow: the model, in eval mode.
        train_config: the training configuration (dataset, hyper-parameters), or {} if unknown.
        path: the checkpoint's path.
        sha256: the checkpoint file's hash, recorded in metrics so numbers can be traced.
        version: the flowood version that wrote it.
    """

    flow: FlowModel
    train_config: dict[str, Any]
    path: Path
    sha256: str
    version: str


def file_sha256(path: str | Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def weights_sha256(state_dict: dict[str, torch.Tensor]) -> str:
    """A fingerprint of a model's weights: sha256 over every entry's name, dtype, shape and bytes, in name order. Equal
    for the same weights whichever file holds them (a checkpoint, a detector file, an export's manifest)."""
    h = hashlib.sha256()
    for name in sorted(state_dict):
        tensor = state_dict[name].detach().cpu().contiguous()
        h.update(f"{name}:{tensor.dtype}:{tuple(tensor.shape)}:".encode())
        h.update(tensor.numpy().tobytes() if tensor.dtype != torch.bfloat16 else tensor.float().numpy().tobytes())
    return h.hexdigest()


def save_flow(flow: FlowModel, path: str | Path, train_config: dict[str, Any] | None = None) -> Path:
    """Write a flow's weights and architecture atomically (temporary file, then rename)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    payload = {"format": FORMAT, "flowood_version": __version__, "flow_config": flow.config,
               "train_config": dict(train_config or {}), "state_dict": flow.state_dict()}
    with atomic_write(path) as tmp:
        torch.save(payload, tmp)
    return path


def load_flow(path: str | Path, map_location: str | torch.device = "cpu") -> LoadedFlow:
    """Load a flow from a ``flowood train`` checkpoint or a :func:`save_flow` file.

    Raises:
        CheckpointError: the file is missing, unreadable, truncated, or from something else.
    """
    path = Path(path)
    payload = read_weights_file(path, map_location)
    if not isinstance(payload, dict):
        raise CheckpointError(f"{path} is not a flowood checkpoint (it holds a {type(payload).__name__})")
    if payload.get("format") == FORMAT:
        flow_config, train_config = payload["flow_config"], payload.get("train_config", {})
        state = payload["state_dict"]
        version = payload.get("flowood_version", "unknown")
    elif "state_dict" in payload and isinstance(payload.get("hyper_parameters"), dict) \
            and "flow_config" in payload["hyper_parameters"]:
        hp = payload["hyper_parameters"]
        flow_config, train_config = hp["flow_config"], hp.get("train_config", {})
        state = {k[len("flow."):]: v for k, v in payload["state_dict"].items() if k.startswith("flow.")}
        version = hp.get("flowood_version", "unknown")
    else:
        raise CheckpointError(f"{path} is not a flowood checkpoint (no flow configuration inside); "
                              "pass a checkpoint written by flowood's train")
    check_version(version, path)
    try:
        flow = build_flow(flow_config)
        flow.load_state_dict(state)
    except (RuntimeError, ValueError, TypeError) as err:
        raise CheckpointError(f"checkpoint {path} does not match its own architecture ({str(err)[:300]})") from err
    flow.eval()
    return LoadedFlow(flow, dict(train_config), path, file_sha256(path), version)
