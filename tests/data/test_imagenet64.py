"""ImageNet 64x64 in the registry (flowood.data.registry's ``imagenet64``), on small files written by the test in the
real format of Downsampled ImageNet (Chrabaszcz, Loshchilov and Hutter 2017): ``train_data_batch_K.npz`` and
``val_data.npz``, each with ``data`` (uint8 ``[N, 12288]``, a row = the R plane, then G, then B), ``labels``
(1..1000) and, in training files, the ``mean`` image.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from flowood.data import DatasetNotFoundError, DataWarning, fetch_dataset, load_dataset
from flowood.errors import DataError

SIDE = 64
PLANE = SIDE * SIDE


def write_batch(path, first: int, n: int, mean: bool = True) -> np.ndarray:
    """A file of ``n`` images in the real format; image ``i`` has every pixel ``first + i`` and one marked pixel
    (value 255) at ``marked(first + i)``. Returns the 1-based labels written."""
    rows = np.repeat(np.arange(first, first + n, dtype=np.uint8)[:, None], 3 * PLANE, axis=1)
    for i in range(n):
        c, h, w = marked(first + i)
        rows[i, c * PLANE + h * SIDE + w] = 255  # the flat layout written out by hand: plane c, row h, column w
    labels = [(first + i) % 1000 + 1 for i in range(n)]
    arrays = {"data": rows, "labels": labels}
    if mean:
        arrays["mean"] = rows.mean(0)
    path.parent.mkdir(parents=True, exist_ok=True)
    np.savez(path, **arrays)
    return np.array(labels)


def marked(k: int) -> tuple[int, int, int]:
    return k % 3, (7 * k) % SIDE, (13 * k + 5) % SIDE


@pytest.fixture
def imagenet_root(tmp_path):
    """Two training batches of 5 images (ids 0-4 and 5-9) and a validation file of 4 (ids 20-23)."""
    folder = tmp_path / "imagenet64"
    write_batch(folder / "train_data_batch_1.npz", 0, 5)
    write_batch(folder / "train_data_batch_2.npz", 5, 5)
    write_batch(folder / "val_data.npz", 20, 4, mean=False)
    return tmp_path


def check_images(ds, ids: list[int]) -> None:
    assert ds.data.dtype == torch.uint8 and tuple(ds.data.shape) == (len(ids), 3, SIDE, SIDE)
    for i, k in enumerate(ids):
        image = ds.data[i].clone()
        assert int(image[marked(k)]) == 255  # the pixel written at (c, h, w) comes back there
        image[marked(k)] = k
        assert bool((image == k).all())
    assert ds.labels.tolist() == [k % 1000 for k in ids]  # 0-based: the files' 1..1000 minus one


def test_train_is_every_batch_in_order_and_test_is_the_validation_file(imagenet_root):
    with pytest.warns(DataWarning, match="8 of the 10 files are missing"):
        train = load_dataset("imagenet64", "train", imagenet_root)
    check_images(train, list(range(10)))
    assert train.name == "imagenet64" and "train_data_batch_1.npz, train_data_batch_2.npz" in train.source
    test = load_dataset("ImageNet64", "test", imagenet_root)
    check_images(test, [20, 21, 22, 23])
    assert "val_data.npz" in test.source


def test_later_loads_map_the_cache_and_changed_files_rebuild_it(imagenet_root):
    first = load_dataset("imagenet64", "test", imagenet_root)
    cached = imagenet_root / "cache" / "imagenet64-test.npy"
    assert cached.exists()
    assert isinstance(np.load(cached, mmap_mode="r"), np.memmap)
    again = load_dataset("imagenet64", "test", imagenet_root)
    assert torch.equal(again.data, first.data) and torch.equal(again.labels, first.labels)
    subset = again.take(2, seed=0)  # a subset copies only its own images
    assert len(subset) == 2 and subset.data.is_contiguous()
    write_batch(imagenet_root / "imagenet64" / "val_data.npz", 30, 6, mean=False)  # another file: decoded again
    check_images(load_dataset("imagenet64", "test", imagenet_root), list(range(30, 36)))


def test_files_one_folder_down_are_found(tmp_path):
    """Unzipping an archive may put its files in a folder of their own."""
    write_batch(tmp_path / "imagenet64" / "Imagenet64_val_npz" / "val_data.npz", 40, 3, mean=False)
    check_images(load_dataset("imagenet64", "test", tmp_path), [40, 41, 42])


def test_missing_files_say_where_to_get_them_and_where_to_put_them(tmp_path):
    with pytest.raises(DatasetNotFoundError) as err:
        load_dataset("imagenet64", "test", tmp_path)
    message = str(err.value)
    for part in ("https://image-net.org/download-images.php", "Imagenet64_val_npz.zip",
                 "Imagenet64_train_part1_npz.zip", "Imagenet64_train_part2_npz.zip", str(tmp_path / "imagenet64"),
                 "val_data.npz", "train_data_batch_10.npz", "login"):
        assert part in message
    lines = fetch_dataset("imagenet64", tmp_path)
    assert lines[0].startswith("manual: ") and str(tmp_path / "imagenet64") in lines[0]
    assert "Imagenet64_val_npz.zip" in lines[0] and lines[-1].startswith("failed")


def test_fetch_reports_files_in_place(imagenet_root):
    lines = fetch_dataset("imagenet64", imagenet_root)
    assert "2 of 10 training batches and val_data.npz are in" in lines[0]
    assert lines[-1].startswith("ok: imagenet64:test (4 samples of shape (3, 64, 64)")


def test_files_in_another_format_are_refused(tmp_path):
    folder = tmp_path / "imagenet64"
    folder.mkdir()
    np.savez(folder / "val_data.npz", data=np.zeros((2, 3 * PLANE), np.uint8), labels=[0, 1])
    with pytest.raises(DataError, match="not 1..1000"):
        load_dataset("imagenet64", "test", tmp_path)
    np.savez(folder / "val_data.npz", data=np.zeros((2, 3 * 32 * 32), np.uint8), labels=[1, 2])  # 32x32 files
    with pytest.raises(DataError, match=r"expected uint8 of shape \(2, 12288\)"):
        load_dataset("imagenet64", "test", tmp_path)
    (folder / "val_data.npz").write_bytes(b"not a zip")
    with pytest.raises(DataError, match="download it again"):
        load_dataset("imagenet64", "test", tmp_path)
