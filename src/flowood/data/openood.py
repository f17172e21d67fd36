"""OpenOOD v1.5's benchmarks: data sets ``openood:BENCHMARK/SET`` read from OpenOOD's own image lists, and the
near-OOD / far-OOD grouping of each benchmark.

OpenOOD (Zhang et al., 2023, arXiv 2306.09301) defines each benchmark by text files of ``relative/path label``
lines (``benchmark_imglist/<benchmark>/test_<set>.txt``) over images in ``images_classic/`` (the CIFAR
benchmarks) and ``images_largescale/`` (ImageNet). Reading those very lists keeps its subsets exactly (its Tiny
ImageNet without the classes that overlap CIFAR, its Places365 and Textures selections), so flowood's rows
stand beside its published leaderboard. The benchmarks are shipped as ``configs/openood/<name>.yaml``.

Images are decoded faithfully (:func:`flowood.data.sources.decode_image`), made RGB as OpenOOD does, resized
(shorter side to ``pre_size``, bilinear) and centre-cropped to ``image_size``: OpenOOD's test transform. The
decoded arrays are cached under the data root like every other set.
"""

from __future__ import annotations

import ast
import os
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import yaml

from flowood.data.arrays import ArrayDataset
from flowood.data.base import DatasetNotFoundError, cached
from flowood.data.sources import decode_image
from flowood.errors import DataError, closest
from flowood.options import ConfigError

__all__ = ["Benchmark", "benchmark_names", "load_benchmark", "load_openood", "read_imglist", "openood_folder",
           "PREFIX", "MAX_DECODED_BYTES"]

PREFIX = "openood:"
IMAGE_DIRS = ("images_classic", "images_largescale")
#: a list whose decoded images would take more memory than this (ImageNet-200's training list: 2 GiB holds 14,266
#: images at 224 x 224) is decoded as a seeded random subset that fits
MAX_DECODED_BYTES = 2 << 30


@dataclass(frozen=True)
class Benchmark:
    """One OpenOOD benchmark: its in-distribution set, near-OOD and far-OOD sets, and the image transform.

    Attributes:
        name: ``cifar10``, ``cifar100`` or ``imagenet200``.
        near, far: OOD set names (each is the data set ``openood:<name>/<set>``).
        pre_size, image_size: resize the shorter side to ``pre_size``, then centre-crop ``image_size``.
        leaderboard: published numbers recorded with their source (``note``, ``rows``).
    """

    name: str
    title: str
    source: str
    num_classes: int
    in_distribution: str
    pre_size: int
    image_size: int
    near: tuple[str, ...]
    far: tuple[str, ...]
    leaderboard: dict[str, Any] = field(default_factory=dict)

    def dataset(self, set_name: str) -> str:
        """The flowood data-set name of one of the benchmark's sets."""
        return f"{PREFIX}{self.name}/{set_name}"

    @property
    def ood_datasets(self) -> list[str]:
        """Every OOD set's data-set name, near first."""
        return [self.dataset(s) for s in (*self.near, *self.far)]

    def group(self, dataset: str) -> str | None:
        """``near``, ``far``, or None for a data set outside this benchmark's OOD sets."""
        for group, sets in (("near", self.near), ("far", self.far)):
            if dataset in (self.dataset(s) for s in sets):
                return group
        return None


def _benchmarks_dir() -> Path:
    from importlib import resources
    return Path(str(resources.files("flowood") / "configs" / "openood"))


def benchmark_names() -> list[str]:
    """The shipped OpenOOD benchmarks."""
    return sorted(p.stem for p in _benchmarks_dir().glob("*.yaml"))


def load_benchmark(name: str) -> Benchmark:
    """A shipped benchmark by name (``cifar10``; ``openood_cifar10`` is accepted too).

    Raises:
        ConfigError: an unknown name (the message names the closest).
    """
    key = name.lower().removeprefix("openood_").removeprefix(PREFIX)
    path = _benchmarks_dir() / f"{key}.yaml"
    if not path.is_file():
        raise ConfigError(f"unknown OpenOOD benchmark {name!r}{closest(key, benchmark_names())}; choose from "
                          f"{', '.join(benchmark_names())}")
    d = yaml.safe_load(path.read_text())
    return Benchmark(d["name"], d["title"], d["source"], int(d["num_classes"]), d["in_distribution"],
                     int(d["pre_size"]), int(d["image_size"]), tuple(d["near"]), tuple(d["far"]),
                     d.get("leaderboard") or {})


def openood_folder(root: Path) -> Path:
    """Where OpenOOD's data are looked for: ``<data root>/openood`` (``benchmark_imglist/``, ``images_*/``)."""
    return root / "openood"


def fetch_howto(folder: Path) -> str:
    """How to get OpenOOD's data into ``folder`` (flowood cannot download them: OpenOOD's downloader does)."""
    return (f"OpenOOD's benchmark data are not in {folder}. Get them with OpenOOD's own downloader (github.com/"
            "Jingkang50/OpenOOD: python scripts/download/download.py --contents datasets --datasets ood_v1.5 "
            f"--save_dir {folder} --dataset_mode benchmark), so that {folder} holds benchmark_imglist/ and "
            "images_classic/ (and images_largescale/ for ImageNet-200)")


def parse_openood_name(name: str) -> tuple[Benchmark, str]:
    """``openood:cifar10/tin`` -> (the CIFAR-10 benchmark, ``tin``); the set must belong to the benchmark."""
    rest = name[len(PREFIX):]
    bench_name, sep, set_name = rest.partition("/")
    if not sep or not set_name:
        raise DataError(f"{name!r}: write OpenOOD sets as openood:BENCHMARK/SET, e.g. openood:cifar10/tin")
    bench = load_benchmark(bench_name)
    known = [bench.in_distribution, *bench.near, *bench.far]
    if set_name not in known:
        raise DataError(f"{name!r}: the {bench.name} benchmark has no set {set_name!r}{closest(set_name, known)}; "
                        f"its sets: {', '.join(known)}")
    return bench, set_name


def read_imglist(path: Path) -> list[tuple[str, int]]:
    """OpenOOD's image list: one ``relative/path extra`` per line, ``extra`` an integer label or a dict literal
    with ``label`` (OOD sets carry -1). Returns ``[(path, label)]``.

    Raises:
        DataError: a line without a path and a label, or a path that leaves the image folder.
    """
    items = []
    for number, line in enumerate(path.read_text().splitlines(), 1):
        if not line.strip():
            continue
        image, sep, extra = line.strip().partition(" ")
        try:
            value = ast.literal_eval(extra.strip()) if sep else None
            label = int(value["label"] if isinstance(value, dict) else value)
        except (ValueError, SyntaxError, KeyError, TypeError):
            raise DataError(f"{path}:{number}: expected 'relative/path label', got {line!r}") from None
        if image.startswith("/") or ".." in Path(image).parts:
            raise DataError(f"{path}:{number}: image paths must be relative to the image folder, got {image!r}")
        items.append((image, label))
    return items


def _list_file(folder: Path, bench: Benchmark, set_name: str, split: str) -> Path:
    if set_name != bench.in_distribution and split == "train":
        raise DataError(f"{PREFIX}{bench.name}/{set_name} is an OOD set of the benchmark: it has a test split only")
    path = folder / "benchmark_imglist" / bench.name / f"{split}_{set_name}.txt"
    if not path.is_file():
        raise DatasetNotFoundError(f"{path} not found. {fetch_howto(folder)}")
    return path


def _decode(path: Path, pre_size: int, image_size: int) -> np.ndarray:
    """One image as OpenOOD's test transform sees it: RGB, shorter side ``pre_size``, centre crop, uint8 [3,H,W]."""
    from PIL import Image

    with Image.open(path) as im:
        array, _ = decode_image(im, path)
    if array.shape[2] == 1:
        array = np.repeat(array, 3, axis=2)
    im = Image.fromarray(array)
    w, h = im.size
    scale = pre_size / min(w, h)
    im = im.resize((max(image_size, round(w * scale)), max(image_size, round(h * scale))), Image.BILINEAR)
    w, h = im.size
    left, top = (w - image_size) // 2, (h - image_size) // 2
    return np.asarray(im.crop((left, top, left + image_size, top + image_size)), dtype=np.uint8).transpose(2, 0, 1)


def _find_image(folder: Path, rel: str) -> Path:
    for images in IMAGE_DIRS:
        path = folder / images / rel
        if path.is_file():
            return path
    raise DataError(f"image {rel} of an OpenOOD list is missing from {folder}/{'|'.join(IMAGE_DIRS)}; the download "
                    "is incomplete: fetch OpenOOD's images again")


def _build(folder: Path, bench: Benchmark, set_name: str, split: str) -> tuple[np.ndarray, np.ndarray, str]:
    from tqdm.auto import tqdm

    list_file = _list_file(folder, bench, set_name, split)
    items = read_imglist(list_file)
    if not items:
        raise DataError(f"{list_file} lists no images")
    most = MAX_DECODED_BYTES // (3 * bench.image_size ** 2)
    if len(items) > most:
        keep = np.sort(np.random.default_rng(0).choice(len(items), most, replace=False))
        warnings.warn(f"{list_file} lists {len(items)} images; a seeded random subset of {most} is decoded (what "
                      f"fits in {MAX_DECODED_BYTES} bytes at {bench.image_size} x {bench.image_size})",
                      stacklevel=3)
        items = [items[i] for i in keep]
    images = np.empty((len(items), 3, bench.image_size, bench.image_size), np.uint8)
    for i, (rel, _) in enumerate(tqdm(items, desc=f"decoding {bench.name}/{set_name}", unit="img", leave=False)):
        images[i] = _decode(_find_image(folder, rel), bench.pre_size, bench.image_size)
    labels = np.array([label for _, label in items], np.int64)
    return images, labels, f"OpenOOD list {list_file}"


def load_openood(name: str, split: str, root: Path) -> ArrayDataset:
    """The data set ``openood:BENCHMARK/SET`` (its ``test`` list; ``train`` for the in-distribution set)."""
    bench, set_name = parse_openood_name(name)
    folder = openood_folder(root)
    _list_file(folder, bench, set_name, split)  # missing data are reported before any cache is looked at
    cache_name = f"openood-{bench.name}-{set_name}"
    dataset = cached(root, cache_name, split, lambda: _build(folder, bench, set_name, split))
    dataset.name = name
    return dataset


def openood_inputs(root: Path) -> list[Path]:
    """What loading OpenOOD sets reads (output folders must stay clear of it)."""
    return [openood_folder(root)] if os.path.isdir(openood_folder(root)) else [root]
