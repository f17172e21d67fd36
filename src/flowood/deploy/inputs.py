"""New data to score, named the way users have it: image files, folders, glob patterns and ``.npz`` files,
streamed in batches so that a folder of any size is scored with bounded memory.

Each input becomes ``(name, sample)`` pairs: an image file gives one sample named by its path; a folder every
image under it (recursively, in sorted order); a glob pattern every matching file; an ``.npz`` file one sample
per row of its ``images`` or ``embeddings`` array, named ``FILE.npz#ROW``.

An image the model never saw in its format (another colour mode, size or bit depth) is converted to the model's
input and the conversion is said (``adapted``: ``"RGB 512x512 -> gray 28x28"``), or, as the caller chooses, the
input is flagged as OOD or refused: a format the model never saw is itself a sign of OOD.

To score elsewhere (on Ray workers: :mod:`flowood.deploy.ray_scoring`), :func:`list_sources` names every sample
without keeping any (a :class:`Source`: a file, and a row of an ``.npz`` array), and :func:`read_sources` reads
them where they are scored, giving the same :class:`Item` s as :func:`expand_inputs`.
"""

from __future__ import annotations

import glob
import zipfile
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np
import torch
from torch import Tensor

from flowood.data import adapt_images
from flowood.data.sources import IMAGE_SUFFIXES, decode_image
from flowood.errors import DataError, closest
from flowood.options import ConfigError, option

__all__ = ["Item", "expand_inputs", "stream_batches", "Batch", "MISMATCH_POLICIES", "describe_image", "Source",
           "list_sources", "read_sources", "read_image", "read_npz", "mismatch_option"]

#: what happens to an image whose format differs from the model's input: converted (and said), also flagged as
#: OOD, or refused (not scored).
MISMATCH_POLICIES = ("adapt", "flag", "refuse")


def mismatch_option() -> Any:
    """The option of what happens to an image in another format than the detector's input (one definition:
    ``flowood score`` and ``flowood serve`` take it)."""
    return option("adapt", "an image in another format than the detector's input (colour, size, bit depth): adapt "
                  "(convert it, and say so in the adapted column), flag (also decide ood: a format the model never "
                  "saw is itself a sign of OOD) or refuse (do not score it)", choices=MISMATCH_POLICIES)


@dataclass
class Item:
    """One input: its name, and either a sample (uint8 ``[C, H, W]`` or float ``[D]``) or why it was not read.

    Attributes:
        notes: what decoding did to it (``16-bit -> 8-bit``, ``alpha on black``).
    """

    name: str
    sample: np.ndarray | None = None
    error: str | None = None
    notes: list[str] = field(default_factory=list)


@dataclass(frozen=True)
class Source:
    """Where one sample comes from, without the sample: an image file, or one row of an ``.npz`` file's array.

    Attributes:
        name: the sample's name (its row's ``input``): the file, or ``FILE.npz#ROW``.
        path: the file, absolute (a reader elsewhere may work in another folder).
        row: the row of an ``.npz`` file's array (None: an image file).
        error: why an ``.npz`` file gives no samples (then its one source stands for the whole file).
    """

    name: str
    path: str
    row: int | None = None
    error: str | None = None


@dataclass
class Batch:
    """Samples in the model's shape, their names, how each was adapted (empty: not at all), which are flagged for
    their format, and the inputs that could not be read or were refused.

    Attributes:
        failed_at: where each of ``failed`` stands among the batch's inputs (scored and failed, in input order), so
            that rows can follow the inputs' order.
    """

    names: list[str]
    data: Tensor
    failed: list[Item]
    adapted: list[str] = field(default_factory=list)
    flagged: list[bool] = field(default_factory=list)
    failed_at: list[int] = field(default_factory=list)


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


def _npz_array(source: str | Path | BinaryIO) -> tuple[np.ndarray | None, str | None]:
    """The samples of an ``.npz`` file (a path or an open binary file; images as ``[N, C, H, W]``), or why it
    cannot give any."""
    try:
        with np.load(source, allow_pickle=False) as f:
            key = next((k for k in ("images", "embeddings", "images_test", "embeddings_test", "x") if k in f.files),
                       None)
            if key is None:
                return None, f"no 'images' or 'embeddings' array (it has {sorted(f.files)})"
            array = f[key]
    except (OSError, ValueError, EOFError, zipfile.BadZipFile) as err:
        return None, f"cannot read it as .npz ({err})"
    if key.startswith("images") and array.ndim == 4 and array.shape[-1] in (1, 3) and array.shape[1] not in (1, 3):
        array = array.transpose(0, 3, 1, 2)
    if key.startswith("images") and array.ndim == 3:
        array = array[:, None]
    return array, None


def read_npz(name: str, source: str | Path | BinaryIO) -> Iterator[Item]:
    """One item per row of an ``.npz`` file's ``images`` or ``embeddings`` array, named ``NAME#ROW`` (an unreadable
    file, or one without such an array, gives one failed item named ``NAME``)."""
    array, error = _npz_array(source)
    if array is None:
        yield Item(name, error=error)
        return
    for row, sample in enumerate(array):
        yield Item(f"{name}#{row}", sample)


def read_image(name: str, source: str | Path | BinaryIO) -> Item:
    """An image file (a path or an open binary file) as an item: uint8 ``[C, H, W]``, with what decoding did to it in
    ``notes``; an unreadable image (or one over PIL's decompression-bomb limit) gives a failed item."""
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(source) as im:
            im.load()
            notes = ["16-bit -> 8-bit"] if im.mode.startswith("I") else []
            array, decoded = decode_image(im, name)
    except UnidentifiedImageError:
        return Item(name, error="cannot read the image (not a format PIL can decode: PNG, JPEG, BMP, TIFF, ...)")
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError, DataError) as err:
        return Item(name, error=f"cannot read the image ({err})")
    notes += ["alpha composited on black"] if "alpha" in decoded else []
    return Item(name, np.array(array.transpose(2, 0, 1)), notes=notes)  # a writable copy, [C, H, W]


def expand_inputs(specs: list[str]) -> Iterator[Item]:
    """Every sample the inputs name, one at a time (nothing is loaded ahead); every input is checked first.

    Raises:
        DataError: an input that names nothing (not a file, a folder, nor a pattern with matches), raised here,
            before any sample is read.
    """
    return _items(_expand(specs))


def _expand(specs: list[str]) -> list[Path]:
    return [f for spec in specs for f in _files(spec)]


def list_sources(specs: list[str]) -> list[Source]:
    """Every sample the inputs name, as :class:`Source` s in :func:`expand_inputs`' order: one per image file, one per
    row of an ``.npz`` file (each is read here to count its rows, then let go), one for an ``.npz`` file that gives
    none (with why).

    Raises:
        DataError: an input that names nothing, as :func:`expand_inputs`.
    """
    sources = []
    for path in _expand(specs):
        where = str(path.absolute())
        if path.suffix.lower() != ".npz":
            sources.append(Source(str(path), where))
            continue
        array, error = _npz_array(path)
        if array is None:
            sources.append(Source(str(path), where, error=error))
        else:
            sources += [Source(f"{path}#{row}", where, row) for row in range(len(array))]
    return sources


def read_sources(sources: Iterable[Source]) -> Iterator[Item]:
    """The :class:`Item` of every source, in order, as :func:`expand_inputs` gives them: an image is decoded; an
    ``.npz`` file is read once for its consecutive rows. A file that cannot be read (here) gives an item with
    ``error`` set, one per source, never an exception."""
    path, array, error = None, None, None
    for source in sources:
        if source.error is not None:
            yield Item(source.name, error=source.error)
        elif source.row is None:
            item = read_image(source.name, source.path)  # said as the input named it, not by its absolute path
            yield replace(item, error=item.error and item.error.replace(source.path, source.name))
        else:
            if source.path != path:
                path, (array, error) = source.path, _npz_array(Path(source.path))
            yield _row_item(source, array, error)


def _row_item(source: Source, array: np.ndarray | None, error: str | None) -> Item:
    if array is None:
        return Item(source.name, error=error)
    if source.row >= len(array):
        return Item(source.name, error=f"it has {len(array)} rows, not {source.row + 1}: it changed since it was "
                                       "listed")
    return Item(source.name, array[source.row])


def _items(files: list[Path]) -> Iterator[Item]:
    for path in files:
        if path.suffix.lower() == ".npz":
            yield from read_npz(str(path), path)
        else:
            yield read_image(str(path), path)


def describe_image(shape: tuple[int, ...]) -> str:
    """``(3, 512, 640)`` -> ``"RGB 512x640"`` (height x width)."""
    return f"{'gray' if shape[0] == 1 else 'RGB' if shape[0] == 3 else f'{shape[0]}-channel'} {shape[1]}x{shape[2]}"


def _fit(item: Item, input_shape: tuple[int, ...]) -> tuple[Tensor, str]:
    """One sample in the model's shape, and what was done to it (empty: nothing): images converted gray/RGB and
    resized; vectors as they are."""
    sample = item.sample
    if len(input_shape) == 3:
        if sample.dtype != np.uint8 or sample.ndim != 3:
            raise DataError(f"expected an 8-bit image, got an array of shape {sample.shape} ({sample.dtype})")
        notes = list(item.notes)
        if tuple(sample.shape) != tuple(input_shape):
            notes.append(f"{describe_image(sample.shape)} -> {describe_image(input_shape)}")
        return adapt_images(torch.from_numpy(sample)[None], tuple(input_shape))[0], "; ".join(notes)
    vector = torch.as_tensor(sample, dtype=torch.float32).reshape(-1)
    if tuple(vector.shape) != tuple(input_shape):
        raise DataError(f"expected a vector of {input_shape[0]} features, got {vector.numel()}")
    return vector, ""


def stream_batches(items: Iterator[Item], input_shape: tuple[int, ...], batch_size: int = 256,
                   mismatch: str = "adapt") -> Iterator[Batch]:
    """Group the samples into batches in the model's shape; unreadable or ill-shaped inputs are passed on as
    failures, never raised, so one bad file does not stop a folder.

    Args:
        items: from :func:`expand_inputs`.
        input_shape: the model's input shape.
        batch_size: samples per batch (memory stays bounded by it).
        mismatch: an image in another format than the model's: ``adapt`` (converted, and said in ``adapted``),
            ``flag`` (also flagged as OOD) or ``refuse`` (a failure, not scored).

    Raises:
        ConfigError: an unknown ``mismatch``.
    """
    if mismatch not in MISMATCH_POLICIES:
        raise ConfigError(f"unknown mismatch policy {mismatch!r}{closest(mismatch, MISMATCH_POLICIES)}; choose from "
                          f"{', '.join(MISMATCH_POLICIES)}")
    return _batches(items, input_shape, batch_size, mismatch)


def _batches(items: Iterator[Item], input_shape: tuple[int, ...], batch_size: int, mismatch: str
             ) -> Iterator[Batch]:
    batch = Batch([], torch.empty(0), [])
    samples: list[Tensor] = []
    for item in items:
        sample, adapted, failure = _take(item, input_shape, mismatch)
        if failure is not None:
            batch.failed_at.append(len(batch.names) + len(batch.failed))
            batch.failed.append(failure)
        else:
            samples.append(sample)
            batch.names.append(item.name)
            batch.adapted.append(adapted)
            batch.flagged.append(bool(adapted) and mismatch == "flag")
        if len(samples) >= batch_size:
            batch.data = torch.stack(samples)
            yield batch
            batch, samples = Batch([], torch.empty(0), []), []
    if samples or batch.failed:
        batch.data = torch.stack(samples) if samples else torch.empty((0, *input_shape))
        yield batch


def _take(item: Item, input_shape: tuple[int, ...], mismatch: str) -> tuple[Tensor | None, str, Item | None]:
    """``(sample in the model's shape, how it was adapted, None)``, or ``(None, ..., the failure)`` for an input that
    cannot be read, does not fit, or is refused for its format."""
    if item.sample is None:
        return None, "", item
    try:
        sample, adapted = _fit(item, input_shape)
    except DataError as err:
        return None, "", Item(item.name, error=str(err))
    if adapted and mismatch == "refuse":
        return None, adapted, Item(item.name, error=f"refused: {adapted} (the model takes "
                                                    f"{describe_image(input_shape)})", notes=[adapted])
    return sample, adapted, None
