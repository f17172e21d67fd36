"""The data registry (flowood.data.registry): data sets by name, the offline layouts and npz files it reads,
clear errors for unknown and missing sets, verified downloads; and the torchvision-backed loaders (CIFAR-10/100,
SVHN, Omniglot, CelebA), on small files written in torchvision's formats.

Those sets cannot be downloaded here, so the tests write real FashionMNIST fixture images, made RGB and 32x32, in
each set's on-disk format, skip torchvision's MD5 check (which only real downloads pass), and load them through
flowood's registry: the same code path a user's downloaded files take.
"""

from __future__ import annotations

import pickle

import numpy as np
import pytest
import torch
from builders import fixture_arrays, write_idx

from flowood.data import (
    DatasetNotFoundError,
    UnknownDatasetError,
    adapt_images,
    canonical_name,
    fetch_dataset,
    load_dataset,
)


def make_torchvision_layout(root, folder, images, labels):
    raw = root / folder / "raw"
    raw.mkdir(parents=True)
    for prefix in ("train", "t10k"):
        write_idx(raw / f"{prefix}-images-idx3-ubyte.gz", images[:, 0])
        write_idx(raw / f"{prefix}-labels-idx1-ubyte.gz", labels.astype(np.uint8))


def test_mnist_family_from_torchvision_layout(tmp_path):
    images, labels = fixture_arrays("fashionmnist")
    make_torchvision_layout(tmp_path, "FashionMNIST", images, labels)
    ds = load_dataset("FashionMNIST", "test", root=tmp_path)
    assert ds.name == "fashionmnist" and ds.data.dtype == torch.uint8
    assert ds.data.shape == (len(images), 1, 28, 28)
    assert torch.equal(ds.data[:, 0], torch.from_numpy(images[:, 0]))
    assert torch.equal(ds.labels, torch.from_numpy(labels))


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


def test_npz_images_in_every_layout(tmp_path):
    images, labels = fixture_arrays("mnist", "test")
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


def test_fetch_of_local_and_shipped_sets(tmp_path):
    assert "local path" in fetch_dataset("npz:/x.npz", root=tmp_path)[0]
    assert "nothing to fetch" in fetch_dataset("digits", root=tmp_path)[0]


def test_notmnist_folder_skips_unreadable_files(tmp_path):
    from PIL import Image
    images, _ = fixture_arrays("mnist", "test")
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


@pytest.fixture
def rgb_images():
    gray = torch.from_numpy(fixture_arrays("fashionmnist", "test")[0][:40])
    return adapt_images(gray, (3, 32, 32)).numpy(), np.arange(40) % 10


@pytest.fixture
def no_md5(monkeypatch):
    import torchvision.datasets.cifar as cifar
    import torchvision.datasets.svhn as svhn
    monkeypatch.setattr(cifar, "check_integrity", lambda *a, **k: True)
    monkeypatch.setattr(cifar.CIFAR10, "_check_integrity", lambda self: True)
    monkeypatch.setattr(svhn.SVHN, "_check_integrity", lambda self: True)


@pytest.mark.parametrize("name,folder,label_key,meta", [
    ("cifar10", "cifar-10-batches-py", "labels", ("batches.meta", "label_names")),
    ("cifar100", "cifar-100-python", "fine_labels", ("meta", "fine_label_names")),
])
def test_cifar_through_registry(tmp_path, rgb_images, no_md5, name, folder, label_key, meta):
    images, labels = rgb_images
    d = tmp_path / folder
    d.mkdir()
    batch = {"data": images.reshape(len(images), -1), label_key: labels.tolist()}
    files = ["test_batch"] if name == "cifar10" else ["test"]
    for fname in files:
        with open(d / fname, "wb") as f:
            pickle.dump(batch, f)
    with open(d / meta[0], "wb") as f:
        pickle.dump({meta[1]: [f"c{i}" for i in range(10)]}, f)
    ds = load_dataset(name, "test", root=tmp_path)
    assert ds.sample_shape == (3, 32, 32) and len(ds) == 40
    assert torch.equal(ds.data, torch.from_numpy(images))
    assert torch.equal(ds.labels, torch.from_numpy(labels))
    assert torch.equal(load_dataset(name, "test", root=tmp_path).data, ds.data)  # from the npz cache


def test_svhn_through_registry(tmp_path, rgb_images, no_md5):
    from scipy.io import savemat
    images, labels = rgb_images
    (tmp_path / "svhn").mkdir()
    svhn_labels = np.where(labels == 0, 10, labels)  # SVHN stores the digit 0 as 10
    savemat(tmp_path / "svhn" / "test_32x32.mat", {"X": images.transpose(2, 3, 1, 0), "y": svhn_labels[:, None]})
    ds = load_dataset("svhn", "test", root=tmp_path)
    assert torch.equal(ds.data, torch.from_numpy(images))
    assert torch.equal(ds.labels, torch.from_numpy(labels))


def test_torchvision_sets_missing_name_the_fetch_command(tmp_path):
    for name in ("cifar100", "svhn", "omniglot", "celeba", "celeba64", "notmnist"):
        with pytest.raises(DatasetNotFoundError, match=f"flowood data fetch {name}"):
            load_dataset(name, "test", root=tmp_path)


def test_omniglot_through_registry(tmp_path, monkeypatch):
    """Omniglot's folder layout; images become 28x28 and inverted (white strokes on black)."""
    import torchvision.datasets.omniglot as omniglot
    from PIL import Image
    monkeypatch.setattr(omniglot.Omniglot, "_check_integrity", lambda self: True)
    digits = fixture_arrays("mnist", "test")[0][:6, 0]
    for i, img in enumerate(digits):
        d = tmp_path / "omniglot-py" / "images_evaluation" / "Alphabet" / f"character{i % 2 + 1:02d}"
        d.mkdir(parents=True, exist_ok=True)
        Image.fromarray(255 - img).resize((105, 105)).save(d / f"{i:02d}.png")  # black on white, as Omniglot
    ds = load_dataset("omniglot", "test", root=tmp_path)
    assert ds.sample_shape == (1, 28, 28) and len(ds) == 6
    assert set(ds.labels.tolist()) == {0, 1}
    assert ds.data.float().mean() < 128  # inverted back to white-on-black


def test_celeba_through_registry(tmp_path, rgb_images, monkeypatch):
    """CelebA's annotation files and aligned images; ``celeba`` makes 32x32 center crops of them and ``celeba64``
    (the OOD set of ImageNet 64x64) 64x64 crops of the same images, in the same order."""
    import torchvision.datasets.celeba as celeba
    from PIL import Image
    monkeypatch.setattr(celeba.CelebA, "_check_integrity", lambda self: True)
    images, _ = rgb_images
    base = tmp_path / "celeba"
    (base / "img_align_celeba").mkdir(parents=True)
    names = [f"{i + 1:06d}.jpg" for i in range(6)]
    for i, name in enumerate(names):
        big = Image.fromarray(images[i].transpose(1, 2, 0)).resize((178, 218))
        big.save(base / "img_align_celeba" / name)
    split = [0, 0, 2, 2, 2, 1]  # 3 test images
    (base / "list_eval_partition.txt").write_text("".join(f"{n} {s}\n" for n, s in zip(names, split, strict=False)))
    (base / "identity_CelebA.txt").write_text("".join(f"{n} {i}\n" for i, n in enumerate(names)))
    (base / "list_attr_celeba.txt").write_text("6\nSmiling Young\n" + "".join(f"{n} 1 -1\n" for n in names))
    (base / "list_bbox_celeba.txt").write_text("6\nimage_id x_1 y_1 width height\n"
                                               + "".join(f"{n} 1 2 3 4\n" for n in names))
    (base / "list_landmarks_align_celeba.txt").write_text(
        "6\n" + " ".join(f"p{i}" for i in range(10)) + "\n" + "".join(f"{n} " + " ".join(["1"] * 10) + "\n"
                                                                   for n in names))
    ds = load_dataset("celeba", "test", root=tmp_path)
    assert ds.sample_shape == (3, 32, 32) and len(ds) == 3 and ds.labels is None
    large = load_dataset("celeba64", "test", root=tmp_path)
    assert large.sample_shape == (3, 64, 64) and len(large) == 3 and large.labels is None
    assert (adapt_images(large.data, (3, 32, 32)).float() - ds.data.float()).abs().mean() < 8  # the same faces
