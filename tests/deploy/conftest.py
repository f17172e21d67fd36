"""Fixtures of the deployment tests: new data to score, as users have it."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image


@pytest.fixture
def new_data(tmp_path, fixtures_dir):
    """A folder of MNIST PNGs (one 16-bit, one RGB, one broken), a FashionMNIST .npz, and a nested folder."""
    with np.load(fixtures_dir / "mnist-small.npz") as f:
        mnist = f["images_test"][:6, 0]
    with np.load(fixtures_dir / "fashionmnist-small.npz") as f:
        fashion = f["images_test"][:4]
    folder = tmp_path / "new"
    (folder / "nested").mkdir(parents=True)
    for i, image in enumerate(mnist[:4]):
        Image.fromarray(image).save(folder / f"mnist{i}.png")
    Image.fromarray(mnist[4].astype(np.uint16) * 257).save(folder / "nested" / "deep16.png")
    Image.fromarray(np.stack([mnist[5]] * 3, -1)).save(folder / "nested" / "rgb.png")
    (folder / "broken.png").write_bytes(b"not an image")
    np.savez(tmp_path / "fashion.npz", images=fashion)
    return folder, tmp_path / "fashion.npz", mnist
