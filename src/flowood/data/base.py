"""What every data source shares: the errors, the data root, and the cache of decoded arrays.

Sources (:mod:`flowood.data.registry`'s named sets, :mod:`flowood.data.prefixes`' ``PREFIX:VALUE`` sets,
:mod:`flowood.data.openood`) import this module and nothing of each other's internals.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

from flowood.data.arrays import ArrayDataset
from flowood.errors import FlowoodError

__all__ = ["DatasetNotFoundError", "UnknownDatasetError", "SPLITS", "data_root", "from_numpy", "cache_path", "cached"]

#: the splits every data set has.
SPLITS = ("train", "test")


class DatasetNotFoundError(FlowoodError, FileNotFoundError):
    """A known data set whose files are not on this machine; the message says how to get them."""


class UnknownDatasetError(FlowoodError, ValueError):
    """A data set name that the registry does not know; the message names the closest ones."""


def data_root(root: str | os.PathLike | None = None) -> Path:
    """The data root: ``root`` if given, else ``$FLOWOOD_DATA``, else ``~/.cache/flowood``."""
    if root:
        return Path(root).expanduser()
    env = os.environ.get("FLOWOOD_DATA")
    return Path(env).expanduser() if env else Path.home() / ".cache" / "flowood"


def from_numpy(images: np.ndarray, labels: np.ndarray | None, name: str, split: str, source: str) -> ArrayDataset:
    """Images ``[N, H, W]`` or ``[N, C, H, W]`` (and labels) as an :class:`ArrayDataset`."""
    data = torch.from_numpy(np.ascontiguousarray(images))
    if data.dim() == 3:
        data = data.unsqueeze(1)
    return ArrayDataset(data, torch.from_numpy(labels).long() if labels is not None else None, name, split, source)


def cache_path(root: Path, name: str, split: str) -> Path:
    """Where the decoded arrays of a set's split are kept."""
    return root / "cache" / f"{name}-{split}.npz"


def cached(root: Path, name: str, split: str, build: Callable[[], tuple[np.ndarray, np.ndarray | None, str]]
            ) -> ArrayDataset:
    """Decode once with ``build`` and keep the arrays as ``.npz`` under the data root."""
    path = cache_path(root, name, split)
    if path.exists():
        try:
            with np.load(path, allow_pickle=False) as f:
                labels = f["labels"] if "labels" in f.files else None
                return from_numpy(f["images"], labels, name, split, str(f["source"]))
        except (OSError, ValueError, KeyError):
            path.unlink(missing_ok=True)  # a broken cache is rebuilt from the source
    images, labels, source = build()
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp.npz")
    arrays = {"images": images, "source": np.array(source)}
    if labels is not None:
        arrays["labels"] = labels
    np.savez(tmp, **arrays)
    os.replace(tmp, path)
    return from_numpy(images, labels, name, split, source)
