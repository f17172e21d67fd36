"""Data sets named ``PREFIX:VALUE``: one table of sources by prefix, and the one parser of data set names.

``npz:PATH`` (arrays in an ``.npz`` file), ``folder:PATH`` (a folder of images) and ``openood:BENCHMARK/SET``
(:mod:`flowood.data.openood`) are sources in :data:`PREFIXES`; each says how to load a split, which files loading
reads (output folders must stay clear of them), and how to fetch it. Code outside :mod:`flowood.data` asks
:func:`parse_name` instead of slicing names. A new kind of source is one class and one :func:`register_prefix`
call.

Example:
    >>> parse_name("npz:runs/emb.npz").path
    PosixPath('runs/emb.npz')
    >>> parse_name("fashionmnist").prefix is None
    True
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar

import numpy as np
import torch

from flowood.data.arrays import ArrayDataset
from flowood.data.base import DatasetNotFoundError, from_numpy
from flowood.data.openood import fetch_howto, load_openood, openood_folder, openood_inputs
from flowood.data.sources import read_image_folder
from flowood.errors import DataError
from flowood.variants import Registry

__all__ = ["DataName", "PrefixSource", "PREFIXES", "parse_name", "register_prefix", "NpzSource", "FolderSource",
           "OpenOODSource"]


@dataclass(frozen=True)
class DataName:
    """A data set name, parsed.

    Attributes:
        name: as given. prefix: the source's prefix (``npz``, ``folder``, ...), or None for a registered name.
        value: what follows the prefix (the whole name for a registered one).
    """

    name: str
    prefix: str | None
    value: str

    @property
    def source(self) -> PrefixSource | None:
        return PREFIXES.get(self.prefix) if self.prefix is not None else None

    @property
    def path(self) -> Path | None:
        """The file or folder a path-like source names (``npz:``, ``folder:``), else None."""
        return self.source.path(self.value) if self.source is not None else None


class PrefixSource:
    """Base class of a source of data sets named ``PREFIX:VALUE``.

    Subclasses set ``prefix``, ``form`` (as ``flowood data list`` shows it) and ``description``, and implement
    :meth:`load`; :meth:`inputs`, :meth:`fetch` and :meth:`path` have defaults for sources named by a path.
    """

    prefix: ClassVar[str] = ""
    form: ClassVar[str] = ""
    description: ClassVar[str] = ""
    names_a_path: ClassVar[bool] = True

    def load(self, name: DataName, split: str, root: Path, shape: tuple[int, ...] | None) -> ArrayDataset:
        """One split of the set. Raises: DatasetNotFoundError, DataError."""
        raise NotImplementedError  # pragma: no cover - abstract

    def path(self, value: str) -> Path | None:
        return Path(value).expanduser() if self.names_a_path else None

    def inputs(self, name: DataName, root: Path) -> list[Path]:
        """The files and folders loading the set reads."""
        path = self.path(name.value)
        return [path] if path is not None else []

    def fetch(self, name: DataName, root: Path) -> list[str]:
        """What ``flowood data fetch`` does, one line per route."""
        return [f"{name.name} is a local path; nothing to fetch"]


#: every source of ``PREFIX:VALUE`` names, by prefix.
PREFIXES: Registry[PrefixSource] = Registry("data source", "data prefix")


def register_prefix(source: PrefixSource, *, replace: bool = False) -> PrefixSource:
    """Add a source to :data:`PREFIXES` (its ``prefix`` must be new, unless ``replace``)."""
    if not source.prefix or not source.prefix.isidentifier():
        raise ValueError(f"a prefix is a name of letters, digits and underscores, got {source.prefix!r}")
    return PREFIXES.register(source.prefix, source, replace=replace)


def parse_name(name: str) -> DataName:
    """``"npz:runs/emb.npz"`` -> ``DataName(prefix="npz", value="runs/emb.npz")``; a name without a known prefix is
    a registered name (checked when it is loaded)."""
    prefix, sep, value = str(name).partition(":")
    if sep and prefix in PREFIXES:
        return DataName(str(name), prefix, value)
    return DataName(str(name), None, str(name))


class NpzSource(PrefixSource):
    """``npz:PATH``: images (uint8) or embeddings (float) in an ``.npz`` file."""

    prefix, form = "npz", "npz:PATH"
    description = ".npz with 'images' (uint8) or 'embeddings' (float), optional 'labels'"

    def load(self, name: DataName, split: str, root: Path, shape: tuple[int, ...] | None) -> ArrayDataset:
        return _load_npz(self.path(name.value), split)


class FolderSource(PrefixSource):
    """``folder:PATH``: the images in a folder (one subfolder per class, or flat)."""

    prefix, form = "folder", "folder:PATH"
    description = "a folder of images (one subfolder per class, or flat)"

    def load(self, name: DataName, split: str, root: Path, shape: tuple[int, ...] | None) -> ArrayDataset:
        folder = self.path(name.value)
        images, labels, _ = read_image_folder(folder)
        return from_numpy(images, labels, name.name, split, str(folder))


class OpenOODSource(PrefixSource):
    """``openood:BENCHMARK/SET``: a set of an OpenOOD v1.5 benchmark, from OpenOOD's image lists."""

    prefix, form = "openood", "openood:BENCHMARK/SET"
    description = ("a set of an OpenOOD v1.5 benchmark (cifar10, cifar100, imagenet200) from OpenOOD's image "
                   "lists")
    names_a_path = False

    def load(self, name: DataName, split: str, root: Path, shape: tuple[int, ...] | None) -> ArrayDataset:
        return load_openood(name.name, split, root)

    def inputs(self, name: DataName, root: Path) -> list[Path]:
        return openood_inputs(root)

    def fetch(self, name: DataName, root: Path) -> list[str]:
        return [f"{name.name}: manual: {fetch_howto(openood_folder(root))}"]


for _source in (NpzSource(), FolderSource(), OpenOODSource()):
    register_prefix(_source)


def _load_npz(path: Path, split: str) -> ArrayDataset:
    """``.npz`` with ``images`` (uint8 ``[N,H,W]``, ``[N,H,W,C]`` or ``[N,C,H,W]``) or ``embeddings``
    (float ``[N,D]``), optional ``labels``; keys may carry a split suffix (``images_train``)."""
    if path.is_dir():
        raise DataError(f"npz:{path}: {path} is a folder, not an .npz file; for a folder of images use folder:{path}")
    if not path.exists():
        raise DatasetNotFoundError(f"npz file {path} does not exist")
    try:
        f = np.load(path, allow_pickle=False)
    except (OSError, ValueError) as err:
        raise DataError(f"cannot read {path} as .npz: {err}") from err
    with f:
        keys = set(f.files)
        kind = next((k for k in ("images", "embeddings", "x") if f"{k}_{split}" in keys or k in keys), None)
        if kind is None:
            raise DataError(f"{path} has arrays {sorted(keys)}; expected 'images' (uint8) or 'embeddings' (float), "
                             f"optionally with a split suffix such as 'images_{split}'")
        key = f"{kind}_{split}" if f"{kind}_{split}" in keys else kind
        data = f[key]
        label_key = f"labels_{split}" if f"labels_{split}" in keys else ("labels" if "labels" in keys else None)
        labels = f[label_key].astype(np.int64) if label_key else None
    name = f"npz:{path}"
    if kind == "images":
        if data.dtype != np.uint8:
            raise DataError(f"{path}: 'images' must be uint8 (0-255), got {data.dtype}; store 8-bit images, "
                             "or use the key 'embeddings' for continuous data")
        if data.ndim == 4 and data.shape[-1] in (1, 3) and data.shape[1] not in (1, 3):
            data = data.transpose(0, 3, 1, 2)
        if data.ndim not in (3, 4):
            raise DataError(f"{path}: 'images' must be [N,H,W], [N,H,W,C] or [N,C,H,W], got shape {data.shape}")
        return from_numpy(data, labels, name, split, str(path))
    if data.ndim != 2:
        raise DataError(f"{path}: '{kind}' must be a matrix [N, D], got shape {data.shape}")
    vectors = torch.from_numpy(np.ascontiguousarray(data, dtype=np.float32))
    if not bool(torch.isfinite(vectors).all()):
        raise DataError(f"{path}: '{kind}' contains NaN or Inf values; clean them before training or scoring")
    return ArrayDataset(vectors, torch.from_numpy(labels) if labels is not None else None, name, split, str(path))


# -- fetchers ------------------------------------------------------------------------------------
