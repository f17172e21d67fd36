"""The torchvision-backed loaders (CIFAR-10/100, SVHN), on small files written in torchvision's formats.

These sets cannot be downloaded here, so the test writes real FashionMNIST fixture images, made RGB and
32x32, in each set's on-disk format, skips torchvision's MD5 check (which only real downloads pass), and
loads them through flowood's registry: the same code path a user's downloaded files take.
"""

from __future__ import annotations

import pickle

import numpy as np
import pytest
import torch

from flowood.data import adapt_images, load_dataset


@pytest.fixture
def rgb_images(fixtures_dir):
    with np.load(fixtures_dir / "fashionmnist-small.npz") as f:
        gray = torch.from_numpy(f["images_test"][:40])
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
    from flowood.data import DatasetNotFoundError
    for name in ("cifar100", "svhn", "omniglot", "celeba", "notmnist"):
        with pytest.raises(DatasetNotFoundError, match=f"flowood data fetch {name}"):
            load_dataset(name, "test", root=tmp_path)


def test_omniglot_through_registry(tmp_path, fixtures_dir, monkeypatch):
    """Omniglot's folder layout; images become 28x28 and inverted (white strokes on black)."""
    from PIL import Image
    import torchvision.datasets.omniglot as omniglot
    monkeypatch.setattr(omniglot.Omniglot, "_check_integrity", lambda self: True)
    with np.load(fixtures_dir / "mnist-small.npz") as f:
        digits = f["images_test"][:6, 0]
    for i, img in enumerate(digits):
        d = tmp_path / "omniglot-py" / "images_evaluation" / "Alphabet" / f"character{i % 2 + 1:02d}"
        d.mkdir(parents=True, exist_ok=True)
        Image.fromarray(255 - img).resize((105, 105)).save(d / f"{i:02d}.png")  # black on white, as Omniglot
    ds = load_dataset("omniglot", "test", root=tmp_path)
    assert ds.sample_shape == (1, 28, 28) and len(ds) == 6
    assert set(ds.labels.tolist()) == {0, 1}
    assert ds.data.float().mean() < 128  # inverted back to white-on-black


def test_celeba_through_registry(tmp_path, rgb_images, monkeypatch):
    """CelebA's annotation files and aligned images; images become 32x32 center crops."""
    from PIL import Image
    import torchvision.datasets.celeba as celeba
    monkeypatch.setattr(celeba.CelebA, "_check_integrity", lambda self: True)
    images, _ = rgb_images
    base = tmp_path / "celeba"
    (base / "img_align_celeba").mkdir(parents=True)
    names = [f"{i + 1:06d}.jpg" for i in range(6)]
    for i, name in enumerate(names):
        big = Image.fromarray(images[i].transpose(1, 2, 0)).resize((178, 218))
        big.save(base / "img_align_celeba" / name)
    split = [0, 0, 2, 2, 2, 1]  # 3 test images
    (base / "list_eval_partition.txt").write_text("".join(f"{n} {s}\n" for n, s in zip(names, split)))
    (base / "identity_CelebA.txt").write_text("".join(f"{n} {i}\n" for i, n in enumerate(names)))
    (base / "list_attr_celeba.txt").write_text("6\nSmiling Young\n" + "".join(f"{n} 1 -1\n" for n in names))
    (base / "list_bbox_celeba.txt").write_text("6\nimage_id x_1 y_1 width height\n"
                                               + "".join(f"{n} 1 2 3 4\n" for n in names))
    (base / "list_landmarks_align_celeba.txt").write_text(
        "6\n" + " ".join(f"p{i}" for i in range(10)) + "\n" + "".join(f"{n} " + " ".join(["1"] * 10) + "\n"
                                                                   for n in names))
    ds = load_dataset("celeba", "test", root=tmp_path)
    assert ds.sample_shape == (3, 32, 32) and len(ds) == 3 and ds.labels is None
