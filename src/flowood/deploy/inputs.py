"""New data to score, named the way users have it: image files, folders, glob patterns and ``.npz`` files,
streamed in batches so that a folder of any size is scored with bounded memory.

Each input becomes ``(name, sample)`` pairs: an image file gives one sample named by its path; a folder every
image under it (recursively, in sorted order); a glob pattern every matching file; an ``.npz`` file one sample
per row of its ``images`` or ``embeddings`` array, named ``FILE.npz#ROW``.
"""

from __future__ import annotations

import glob
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from flowood.data import adapt_images
from flowood.data.sources import IMAGE_SUFFIXES, decode_image
from flowood.errors import DataError

__all__ = ["Item", "expand_inputs", "stream_batches", "Batch"]


@dataclass
class Item:
    """One input: its name, and either a sample (uint8 ``[C, H, W]`` or float ``[D]``) or why it was not read."""

    name: str
    sample: np.ndarray | None = None
    error: str | None = None


@dataclass
class Batch:
    """Samples in the model's shape, their names, and the inputs that could not be read."""

    names: list[str]
    data: Tensor
    failed: list[Item]


def _files(spec: str) -> list[Path]:
    path = Path(spec).expanduser()
    if path.is_dir():
        return sorted(p for p in path.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES + (".npz",))
    if path.is_file():
        return [path]
    matches = sorted(Path(p) for p in glob.glob(str(path), recursive=True) if Path(p).is_file())
    if not matches:
        raise DataError(f"input {spec} is neither a file, a folder nor a pattern that matches files")
    return matches


def _npz_items(path: Path) -> Iterator[Item]:
    try:
        with np.load(path, allow_pickle=False) as f:
            key = next((k for k in ("images", "embeddings", "images_test", "embeddings_test", "x") if k in f.files),
                       None)
            if key is None:
                yield Item(str(path), error=f"no 'images' or 'embeddings' array (it has {sorted(f.files)})")
                return
            array = f[key]
    except (OSError, ValueError) as err:
        yield Item(str(path), error=f"cannot read it as .npz ({err})")
        return
    if key.startswith("images") and array.ndim == 4 and array.shape[-1] in (1, 3) and array.shape[1] not in (1, 3):
        array = array.transpose(0, 3, 1, 2)
    if key.startswith("images") and array.ndim == 3:
        array = array[:, None]
    for row, sample in enumerate(array):
        yield Item(f"{path}#{row}", sample)


def _image_item(path: Path) -> Item:
    from PIL import Image

    try:
        with Image.open(path) as im:
            im.load()
            array, _ = decode_image(im, path)
    except (OSError, SyntaxError, DataError) as err:
        return Item(str(path), error=f"cannot read the image ({err})")
    return Item(str(path), np.array(array.transpose(2, 0, 1)))  # a writable copy, [C, H, W]


def expand_inputs(specs: list[str]) -> Iterator[Item]:
    """Every sample the inputs name, one at a time (nothing is loaded ahead).

    Raises:
        DataError: an input that names nothing (not a file, a folder, nor a pattern with matches).
    """
    files = [f for spec in specs for f in _files(spec)]  # every spec checked before anything is read
    for path in files:
        if path.suffix.lower() == ".npz":
            yield from _npz_items(path)
        else:
            yield _image_item(path)


def _fit(sample: np.ndarray, input_shape: tuple[int, ...]) -> Tensor:
    """One sample in the model's shape: images converted gray/RGB and resized; vectors as they are."""
    if len(input_shape) == 3:
        if sample.dtype != np.uint8 or sample.ndim != 3:
            raise DataError(f"expected an 8-bit image, got an array of shape {sample.shape} ({sample.dtype})")
        return adapt_images(torch.from_numpy(sample)[None], tuple(input_shape))[0]
    vector = torch.as_tensor(sample, dtype=torch.float32).reshape(-1)
    if tuple(vector.shape) != tuple(input_shape):
        raise DataError(f"expected a vector of {input_shape[0]} features, got {vector.numel()}")
    return vector


def stream_batches(items: Iterator[Item], input_shape: tuple[int, ...], batch_size: int = 256) -> Iterator[Batch]:
    """Group the samples into batches in the model's shape; unreadable or ill-shaped inputs are passed on as
    failures, never raised, so one bad file does not stop a folder."""
    names: list[str] = []
    samples: list[Tensor] = []
    failed: list[Item] = []
    for item in items:
        if item.sample is not None:
            try:
                samples.append(_fit(item.sample, input_shape))
                names.append(item.name)
            except DataError as err:
                failed.append(Item(item.name, error=str(err)))
        else:
            failed.append(item)
        if len(samples) >= batch_size:
            yield Batch(names, torch.stack(samples), failed)
            names, samples, failed = [], [], []
    if samples or failed:
        yield Batch(names, torch.stack(samples) if samples else torch.empty((0, *input_shape)), failed)
