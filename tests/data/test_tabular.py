"""Tabular data with OOD by class (flowood.data.tabular): the UCI MINIBOONE/HEPMASS readers, class splits, and the
UCI and scikit-learn sets loaded (and fetched) by class."""

from __future__ import annotations

import gzip

import numpy as np
import pytest
from sklearn.datasets import load_breast_cancer, load_wine
from sklearn.model_selection import train_test_split

from flowood.data import DatasetNotFoundError, fetch_dataset, load_dataset
from flowood.data.tabular import class_split, drop_repeated_minimum_features, read_hepmass, read_miniboone


def write_miniboone(path, n_signal=30, n_background=50, seed=0):
    rng = np.random.default_rng(seed)
    rows = np.concatenate([rng.normal(1.0, 1.0, (n_signal, 50)), rng.normal(-1.0, 1.0, (n_background, 50))])
    with open(path, "w") as f:
        f.write(f" {n_signal} {n_background}\n")
        for row in rows:
            f.write(" ".join(f"{v:.6E}" for v in row) + "\n")
    return rows


def write_hepmass(folder, n_train=60, n_test=40, seed=0):
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    tables = {}
    for split, n in (("train", n_train), ("test", n_test)):
        labels = (np.arange(n) % 2).astype(float)
        features = rng.normal(labels[:, None], 1.0, (n, 5))
        features[:, 3] = np.where(np.arange(n) % 3 == 0, -10.0, rng.normal(size=n))  # minimum repeated: dropped
        table = np.column_stack([labels, features])
        if split == "test":
            table = np.column_stack([table, np.zeros(n)])  # UCI's test file has one extra column
        header = "# label," + ",".join(f"f{i}" for i in range(table.shape[1] - 1))
        text = header + "\n" + "\n".join(",".join(f"{v:.6f}" for v in row) for row in table) + "\n"
        with gzip.open(folder / f"1000_{split}.csv.gz", "wt") as f:
            f.write(text)
        tables[split] = table
    return tables


def test_read_miniboone_balances_classes_like_the_original(tmp_path):
    rows = write_miniboone(tmp_path / "MiniBooNE_PID.txt")
    features, labels = read_miniboone(tmp_path / "MiniBooNE_PID.txt")
    assert features.shape == (60, 50) and labels.tolist() == [1] * 30 + [0] * 30
    np.testing.assert_allclose(features[:30], rows[:30], rtol=1e-6)  # signal first
    np.testing.assert_allclose(features[30:], rows[30:60], rtol=1e-6)  # then as many background events


def test_read_miniboone_refuses_truncated_file(tmp_path):
    write_miniboone(tmp_path / "m.txt")
    lines = (tmp_path / "m.txt").read_text().splitlines()
    (tmp_path / "m.txt").write_text("\n".join(lines[:40]) + "\n")
    with pytest.raises(ValueError, match="incomplete"):
        read_miniboone(tmp_path / "m.txt")


def test_read_hepmass_drops_label_extra_column_and_discrete_features(tmp_path):
    tables = write_hepmass(tmp_path / "hepmass")
    x_train, x_test, y_train, y_test = read_hepmass(tmp_path / "hepmass")
    assert x_train.shape == (60, 4) and x_test.shape == (40, 4)  # 5 features, the repeated-minimum one dropped
    np.testing.assert_array_equal(y_train, tables["train"][:, 0].astype(int))
    np.testing.assert_allclose(x_test[:, :3], tables["test"][:, 1:4], atol=1e-6)


def test_drop_rule_counts_the_smallest_value():
    a = np.array([[0.0, 5.0]] * 6 + [[1.0, 7.0]])
    b = np.array([[0.0, 5.0, ]])
    kept = drop_repeated_minimum_features(a, b)
    assert kept[0].shape == (7, 0) and kept[1].shape == (1, 0)
    c = np.column_stack([np.arange(7.0), [0.0] * 6 + [1.0]])
    assert drop_repeated_minimum_features(c)[0].shape == (7, 1)


def test_class_split_matches_sklearn_train_test_split():
    x, y = load_wine(return_X_y=True)
    expected_train, expected_test = train_test_split(x[y == 1], test_size=0.3, random_state=0)
    np.testing.assert_array_equal(class_split(x, y, 1, "train", 0.3), expected_train)
    np.testing.assert_array_equal(class_split(x, y, 1, "test", 0.3), expected_test)
    with pytest.raises(ValueError, match="classes present"):
        class_split(x, y, 7, "train")


def test_uci_sets_load_by_class_and_cache(tmp_path):
    (tmp_path / "miniboone").mkdir()
    write_miniboone(tmp_path / "miniboone" / "MiniBooNE_PID.txt")
    write_hepmass(tmp_path / "hepmass")
    train = load_dataset("miniboone0", "train", tmp_path)
    test = load_dataset("MINIBOONE0", "test", tmp_path)
    assert len(train) == 27 and len(test) == 3 and train.sample_shape == (50,)  # 30 background, 10% test
    assert set(train.labels.tolist()) == {0} and str(train.data.dtype) == "torch.float32"
    assert (tmp_path / "cache" / "miniboone0-train.npz").exists()
    assert len(load_dataset("miniboone1", "train", tmp_path)) == 27
    hep = load_dataset("hepmass1", "test", tmp_path)
    assert len(hep) == 20 and hep.sample_shape == (4,)
    with pytest.raises(DatasetNotFoundError, match="flowood data fetch hepmass0"):
        load_dataset("hepmass0", "train", tmp_path / "empty")


def test_uci_fetch_downloads_then_loads(tmp_path, monkeypatch):
    import io
    import urllib.request
    source = tmp_path / "src.txt"
    write_miniboone(source)
    urls = []

    def serve(url, timeout):
        urls.append(url)
        return io.BytesIO(source.read_bytes())
    monkeypatch.setattr(urllib.request, "urlopen", serve)
    lines = fetch_dataset("miniboone1", tmp_path / "root")
    assert lines[0].startswith("download: UCI miniboone") and lines[-1].startswith("ok:")
    assert urls and all(url.startswith("https://") for url in urls)

    def offline(url, timeout):
        raise OSError("network is unreachable")
    monkeypatch.setattr(urllib.request, "urlopen", offline)
    lines = fetch_dataset("hepmass0", tmp_path / "root")
    assert "failed" in lines[0] and "1000_train.csv.gz" in lines[0] and lines[-1].startswith("failed")


def test_sklearn_sets_are_real_classes():
    x, y = load_breast_cancer(return_X_y=True)
    train, test = load_dataset("breastcancer0", "train"), load_dataset("breast_cancer0", "test")
    assert len(train) + len(test) == int((y == 0).sum()) and train.sample_shape == (30,)
    assert len(load_dataset("wine2", "train")) + len(load_dataset("wine2", "test")) == 48
