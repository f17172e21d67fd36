"""Loading flows back from checkpoints, with checks that say what is wrong.

``flowood train`` writes Lightning checkpoints (``.ckpt``) that hold the model weights, the
optimizer state for ``--resume``, and the training configuration (``hyper_parameters``) from
which the flow is rebuilt. :func:`load_flow` accepts those, and also plain files written by
:func:`save_flow` (weights and architecture only).
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from flowood import __version__
from flowood.flows import FlowModel, build_flow

__all__ = ["CheckpointError", "LoadedFlow", "load_flow", "save_flow", "file_sha256"]

FORMAT = "flowood-flow"


class CheckpointError(ValueError):
    """A checkpoint that is missing, corrupt, truncated or not a flowood checkpoint."""


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


def save_flow(flow: FlowModel, path: str | Path, train_config: dict[str, Any] | None = None) -> Path:
    """Write a flow's weights and architecture atomically (temporary file, then rename)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    payload = {"format": FORMAT, "flowood_version": __version__, "flow_config": flow.config,
               "train_config": dict(train_config or {}), "state_dict": flow.state_dict()}
    tmp = path.with_name(path.name + ".tmp")
    torch.save(payload, tmp)
    os.replace(tmp, path)
    return path


def load_flow(path: str | Path, map_location: str | torch.device = "cpu") -> LoadedFlow:
    """Load a flow from a ``flowood train`` checkpoint or a :func:`save_flow` file.

    Raises:
        CheckpointError: the file is missing, unreadable, truncated, or from something else.
    """
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint {path} does not exist")
    try:
        payload = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as err:  # noqa: BLE001 - torch raises many types for bad files
        raise CheckpointError(f"checkpoint {path} is corrupt or truncated and cannot be read "
                              f"({type(err).__name__}: {str(err)[:200]}); use another checkpoint, e.g. an earlier "
                              "epoch's") from err
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
                              "pass a checkpoint written by `flowood train`")
    try:
        flow = build_flow(flow_config)
        flow.load_state_dict(state)
    except (RuntimeError, ValueError, TypeError) as err:
        raise CheckpointError(f"checkpoint {path} does not match its own architecture ({str(err)[:300]})") from err
    flow.eval()
    return LoadedFlow(flow, dict(train_config), path, file_sha256(path), version)
