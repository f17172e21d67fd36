"""Shape adaptors (flowood.data.adapt): gray and RGB, resizing, on real fixture images."""

from __future__ import annotations

import pytest
import torch
from builders import fixture_arrays

from flowood.data import adapt_images


def test_adapt_images_gray_rgb_resize():
    images, _ = fixture_arrays("mnist", "test")
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
