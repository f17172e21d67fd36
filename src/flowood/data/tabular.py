"""Tabular data with OOD defined by class (the paper's Appendix K): UCI MINIBOONE and HEPMASS in the
preprocessed form of the original code, and small real sets that ship with scikit-learn.

A flow is trained on one class; the other class is the OOD set. Features are returned as they are
(float32): the tabular flows start with a fixed standardisation (:class:`flowood.flows.layers.Standardize`) set
from the *training* class's mean and standard deviation, so the OOD class is measured in the training class's
units, as the original does by normalising every set with the training class's statistics.
"""

from __future__ import annotations

import gzip
from collections import Counter
from pathlib import Path

import numpy as np

from flowood.errors import DataError

__all__ = ["read_miniboone", "read_hepmass", "class_split", "drop_repeated_minimum_features", "SKLEARN_TABULAR"]

#: scikit-learn sets for class-wise OOD on small real data: name -> (loader name, classes, features).
SKLEARN_TABULAR = {"wine": ("load_wine", 3, 13), "breastcancer": ("load_breast_cancer", 2, 30)}


def _open_text(path: Path):
    return gzip.open(path, "rt") if path.suffix == ".gz" else open(path)


def read_miniboone(path: str | Path) -> tuple[np.ndarray, np.ndarray]:
    """Features and labels from UCI's ``MiniBooNE_PID.txt`` (signal = 1, background = 0).

    The file's first line holds the numbers of signal and background events; signal events come
    first. As in the original code, the same number of each is kept (the smaller count), so the two
    classes are balanced.
    """
    path = Path(path)
    with _open_text(path) as f:
        header = f.readline().split()
        if len(header) != 2:
            raise DataError(f"{path}: first line must hold the signal and background counts, got {header!r}")
        n_signal, n_background = int(header[0]), int(header[1])
        data = np.loadtxt(f, dtype=np.float64, ndmin=2)
    if len(data) != n_signal + n_background:
        raise DataError(f"{path}: header promises {n_signal + n_background} events, file has {len(data)}; "
                         "the download is incomplete, fetch it again")
    n = min(n_signal, n_background)
    features = np.concatenate((data[:n], data[n_signal:n_signal + n]))
    labels = np.concatenate((np.ones(n, dtype=np.int64), np.zeros(n, dtype=np.int64)))
    return features, labels


def drop_repeated_minimum_features(train: np.ndarray, *others: np.ndarray) -> list[np.ndarray]:
    """Remove features whose smallest training value occurs more than 5 times (the original's and
    MAF's rule for HEPMASS, which drops near-discrete features), from ``train`` and ``others``."""
    keep = []
    for j in range(train.shape[1]):
        counts = Counter(train[:, j].tolist())
        if counts[min(counts)] <= 5:
            keep.append(j)
    return [a[:, keep] for a in (train, *others)]


def read_hepmass(folder: str | Path) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """``(x_train, x_test, y_train, y_test)`` from UCI's ``1000_train.csv`` and ``1000_test.csv``
    (plain or ``.gz``): the label is the first column; the test file's extra last column is dropped and
    near-discrete features are removed, as in the original code."""
    folder = Path(folder)
    arrays = []
    for split in ("train", "test"):
        path = next((p for p in (folder / f"1000_{split}.csv", folder / f"1000_{split}.csv.gz") if p.exists()), None)
        if path is None:
            raise FileNotFoundError(f"{folder / f'1000_{split}.csv'} (or .csv.gz) not found")
        with _open_text(path) as f:
            f.readline()  # header
            table = np.loadtxt(f, delimiter=",", dtype=np.float64, ndmin=2)
        labels, features = table[:, 0].astype(np.int64), table[:, 1:]
        if split == "test":
            features = features[:, :-1]
        arrays.append((features, labels))
    (x_train, y_train), (x_test, y_test) = arrays
    if x_train.shape[1] != x_test.shape[1]:
        raise DataError(f"{folder}: train has {x_train.shape[1]} features but test {x_test.shape[1]} "
                         "(after dropping the test file's last column); are these UCI's 1000_*.csv files?")
    x_train, x_test = drop_repeated_minimum_features(x_train, x_test)
    return x_train, x_test, y_train, y_test


def class_split(features: np.ndarray, labels: np.ndarray, class_idx: int, split: str, test_size: float = 0.1,
                seed: int = 0) -> np.ndarray:
    """The samples of one class, split into train and test as the original code does
    (``sklearn.model_selection.train_test_split`` with ``random_state=seed``)."""
    from sklearn.model_selection import train_test_split

    chosen = features[labels == class_idx]
    if len(chosen) < 2:
        raise DataError(f"class {class_idx} has {len(chosen)} samples; classes present: {sorted(set(labels.tolist()))}")
    train, test = train_test_split(chosen, test_size=test_size, random_state=seed)
    return train if split == "train" else test


def sklearn_class(name: str, class_idx: int, split: str) -> tuple[np.ndarray, str]:
    """One class of a scikit-learn table (``wine``, ``breastcancer``), with 30% of it held out as test."""
    import sklearn.datasets

    loader = SKLEARN_TABULAR[name][0]
    table = getattr(sklearn.datasets, loader)()
    features = class_split(table.data, table.target, class_idx, split, test_size=0.3)
    return features.astype(np.float32), f"scikit-learn {loader}(), class {class_idx}"
