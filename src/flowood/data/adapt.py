"""Shape adaptors, so any OOD set can be scored under a model's input shape.

The paper scores MNIST under FashionMNIST models (same shape) and SVHN under CelebA models; a
user scoring CIFAR-10 under a FashionMNIST model needs RGB -> gray and 32 -> 28 first.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F
from torch import Tensor

from flowood.errors import DataError

if TYPE_CHECKING:
    from flowood.data.arrays import ArrayDataset

__all__ = ["adapt_images", "fit_to_shape", "to_gray", "to_rgb", "resize"]

_LUMA = (0.299, 0.587, 0.114)  # ITU-R BT.601, as PIL's convert("L")


def to_gray(images: Tensor) -> Tensor:
    """uint8 ``[N, 3, H, W]`` -> ``[N, 1, H, W]`` by luminance."""
    w = torch.tensor(_LUMA, dtype=torch.float32).view(1, 3, 1, 1)
    return torch.round((images.float() * w).sum(1, keepdim=True)).clamp(0, 255).to(torch.uint8)


def to_rgb(images: Tensor) -> Tensor:
    """uint8 ``[N, 1, H, W]`` -> ``[N, 3, H, W]`` by repeating the channel."""
    return images.repeat(1, 3, 1, 1)


def resize(images: Tensor, size: tuple[int, int], batch: int = 4096) -> Tensor:
    """uint8 ``[N, C, H, W]`` -> ``[N, C, *size]`` with antialiased bilinear interpolation."""
    if tuple(images.shape[2:]) == tuple(size):
        return images
    out = []
    for start in range(0, images.shape[0], batch):
        chunk = images[start:start + batch].float()
        chunk = F.interpolate(chunk, size=tuple(size), mode="bilinear", antialias=True, align_corners=False)
        out.append(torch.round(chunk).clamp(0, 255).to(torch.uint8))
    return torch.cat(out) if out else images.new_zeros((0, images.shape[1]) + tuple(size))


def adapt_images(images: Tensor, shape: tuple[int, int, int]) -> Tensor:
    """Convert 8-bit images to ``shape = (C, H, W)``: gray <-> RGB, then resize.

    Args:
        images: uint8 ``[N, C, H, W]`` with C in {1, 3}.
        shape: the model's input shape.

    Example:
        >>> x = torch.randint(0, 256, (2, 3, 32, 32), dtype=torch.uint8)
        >>> tuple(adapt_images(x, (1, 28, 28)).shape)
        (2, 1, 28, 28)
    """
    if images.dtype != torch.uint8 or images.dim() != 4:
        raise DataError(f"adapt_images takes uint8 images [N, C, H, W], got {images.dtype} of shape "
                        f"{tuple(images.shape)}")
    c_in, c_out = images.shape[1], shape[0]
    if c_in != c_out:
        if (c_in, c_out) == (3, 1):
            images = to_gray(images)
        elif (c_in, c_out) == (1, 3):
            images = to_rgb(images)
        else:
            raise DataError(f"cannot convert {c_in}-channel images to {c_out} channels (only gray <-> RGB)")
    return resize(images, (shape[1], shape[2]))


def fit_to_shape(dataset: ArrayDataset, input_shape: tuple[int, ...]) -> Tensor:
    """The samples of ``dataset`` in a model's input shape: images converted gray/RGB and resized; vectors must
    already have the model's dimension. Values a flow cannot handle are refused first.

    Raises:
        DataError: an empty set, huge values (see :meth:`ArrayDataset.check_values`), or vectors of another size.
    """
    if len(dataset) == 0:
        raise DataError(f"{dataset.name}:{dataset.split} is empty: there is nothing to score; check its files")
    dataset.check_values()
    if dataset.is_image and len(input_shape) == 3:
        return adapt_images(dataset.data, tuple(input_shape))
    if tuple(dataset.sample_shape) != tuple(input_shape):
        raise DataError(f"{dataset.name} has samples of shape {dataset.sample_shape} but the model takes "
                        f"{tuple(input_shape)}; vectors cannot be adapted, use data of the model's dimension")
    return dataset.data
